#include "litcore/module_loader.h"

#include <stdexcept>
#include <vector>

namespace litcore {

torch::jit::Module load_module(const std::string& model_path, const std::string& weights_path, const Options& options) {
  require_device(parse_device(options.device), "TorchScript");  // before any work
  torch::jit::Module module = torch::jit::load(model_path);
  if (!module.hasattr("_litcore_units") || !module.hasattr("_litcore_streamable")) {
    throw std::invalid_argument("litcore: '" + model_path + "' was not saved by litcore.jit.save");
  }
  if (options.memory_budget < 0) {
    throw std::invalid_argument("litcore: memory_budget must be >= 0 (0: auto), got " +
                                std::to_string(options.memory_budget));
  }
  auto engine = c10::make_intrusive<ScriptEngine>(weights_path);
  for (const auto& sub : module.modules()) {
    if (sub.hasattr("_litcore_engine")) torch::jit::Module(sub).setattr("_litcore_engine", engine);
  }
  module.setattr("_litcore_bound", false);
  std::vector<std::vector<std::string>> units;
  for (const auto& g : module.attr("_litcore_units").toList()) {
    std::vector<std::string> names;
    for (const auto& n : g.get().toList()) names.push_back(n.get().toStringRef());
    units.push_back(std::move(names));
  }
  std::vector<bool> streamable, lookup;
  for (bool b : module.attr("_litcore_streamable").toBoolList()) streamable.push_back(b);
  for (bool b : module.attr("_litcore_lookup").toBoolList()) lookup.push_back(b);
  EngineOptions engine_options;
  engine_options.memory_budget = static_cast<uint64_t>(options.memory_budget);
  engine_options.threads = check_threads(options.threads);
  engine_options.verify = options.verify;
  engine->configure(units, streamable, lookup, engine_options);
  return module;
}

Engine& engine_of(const torch::jit::Module& module) {
  if (!module.hasattr("_litcore_engine")) throw std::invalid_argument("litcore: the module has no litcore engine");
  return module.attr("_litcore_engine").toCustomClass<ScriptEngine>()->running();
}

}  // namespace litcore
