// The engine as a TorchScript custom class, torch.classes.litcore.Engine. Programs saved by
// litcore.jit.save hold one: they bind their weights to its store's zero-copy tensors, and
// their generated code calls begin() / enter(unit) / exit(unit) / end() around the root's
// and each streamed module's forward, exactly as the Python hooks do.
#pragma once

#include <torch/custom_class.h>

#include <memory>
#include <string>
#include <vector>

#include "litcore/engine.h"
#include "litcore/store.h"

namespace litcore {

struct ScriptEngine : torch::CustomClassHolder {
  explicit ScriptEngine(const std::string& path) : store(std::make_shared<Store>(path)) {}

  // Starts the engine for the program's units (the stored tensor names each weight-owning
  // module owns, in registration order): `streamable` and `lookup` as in UnitSpec. A unit's
  // name is its module's path, taken from its tensors' names.
  void configure(const std::vector<std::vector<std::string>>& units, const std::vector<bool>& streamable,
                 const std::vector<bool>& lookup, const EngineOptions& options);
  // The engine, or std::logic_error if configure() has not run (a program loaded with
  // torch.jit.load alone, not litcore.jit.load / litcore::load_module). Such a program
  // still runs, with every weight mapped: its begin/enter/exit/end calls do nothing.
  Engine& running() const;

  std::shared_ptr<Store> store;
  std::unique_ptr<Engine> engine;  // not pickled: made by configure() on every load
};

// A unit's module path from the names of the tensors it owns ("layers.0.weight" -> "layers.0").
std::string module_of(const std::vector<std::string>& tensors);

}  // namespace litcore
