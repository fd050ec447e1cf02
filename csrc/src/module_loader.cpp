#include "litcore/module_loader.h"

#include <stdexcept>
#include <vector>

#include "litcore/script_store.h"

namespace litcore {

torch::jit::Module load_module(const std::string& model_path, const std::string& weights_path, const Options& options) {
  torch::jit::Module module = torch::jit::load(model_path);
  if (!module.hasattr("_litcore_groups") || !module.hasattr("_litcore_streamable")) {
    throw std::invalid_argument("litcore: '" + model_path + "' was not saved by litcore.jit.save");
  }
  auto store = c10::make_intrusive<ScriptStore>(weights_path);
  for (const auto& sub : module.modules()) {
    if (sub.hasattr("_litcore_store")) {
      torch::jit::Module(sub).setattr("_litcore_store", store);
    }
  }
  module.setattr("_litcore_bound", false);
  std::vector<std::vector<std::string>> groups;
  for (const auto& g : module.attr("_litcore_groups").toList()) {
    std::vector<std::string> names;
    for (const auto& n : g.get().toList()) names.push_back(n.get().toStringRef());
    groups.push_back(std::move(names));
  }
  std::vector<bool> streamable;
  for (bool b : module.attr("_litcore_streamable").toBoolList()) streamable.push_back(b);
  std::vector<bool> on_demand;  // absent in programs saved before litcore knew lookups
  if (module.hasattr("_litcore_on_demand")) {
    for (bool b : module.attr("_litcore_on_demand").toBoolList()) on_demand.push_back(b);
  }
  store->configure(groups, streamable, on_demand, options.memory_budget);
  return module;
}

}  // namespace litcore
