#include "litcore/script_engine.h"

#include <stdexcept>

namespace litcore {

std::string module_of(const std::vector<std::string>& tensors) {
  if (tensors.empty()) return "<root>";
  auto dot = tensors.front().rfind('.');
  return dot == std::string::npos ? "<root>" : tensors.front().substr(0, dot);
}

void ScriptEngine::configure(const std::vector<std::vector<std::string>>& units, const std::vector<bool>& streamable,
                             const std::vector<bool>& lookup, const EngineOptions& options) {
  if (units.size() != streamable.size()) throw std::invalid_argument("litcore: units and streamable differ in length");
  if (!lookup.empty() && units.size() != lookup.size()) {
    throw std::invalid_argument("litcore: units and lookup differ in length");
  }
  std::vector<UnitSpec> specs;
  for (size_t i = 0; i < units.size(); ++i) {
    specs.push_back({module_of(units[i]), units[i], streamable[i], !lookup.empty() && lookup[i]});
  }
  engine.reset();  // a program loaded again: the old engine's threads stop first
  engine = std::make_unique<Engine>(store, specs, options);
}

Engine& ScriptEngine::running() const {
  if (!engine) {
    throw std::logic_error("litcore: the program's engine is not configured for '" + store->path() +
                           "'; load it with litcore.jit.load or litcore::load_module");
  }
  return *engine;
}

}  // namespace litcore
