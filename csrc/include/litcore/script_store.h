// The store as a TorchScript custom class, torch.classes.litcore.Store: TorchScript
// programs saved by litcore.jit.save read their weights through it and, under a memory
// budget, bring each module's weights in before it runs (enter) and drop them after (exit).
#pragma once

#include <torch/custom_class.h>

#include <memory>
#include <string>
#include <vector>

#include "litcore/prefetcher.h"
#include "litcore/residency.h"
#include "litcore/store.h"

namespace litcore {

struct ScriptStore : torch::CustomClassHolder {
  explicit ScriptStore(const std::string& path) : store(std::make_shared<Store>(path)) {}
  explicit ScriptStore(std::shared_ptr<Store> s) : store(std::move(s)) {}

  // Plans residency for module groups (the tensor names each module owns, in registration
  // order) under `budget_bytes` (<= 0: auto_budget()) and starts streaming if needed.
  // `on_demand` (empty: none) marks groups read by lookup (embeddings): see Unit::on_demand.
  void configure(const std::vector<std::vector<std::string>>& groups, const std::vector<bool>& streamable,
                 const std::vector<bool>& on_demand, int64_t budget_bytes);
  void enter(int64_t group);
  void exit(int64_t group);

  std::shared_ptr<Store> store;
  Plan plan;
  std::unique_ptr<Prefetcher> prefetcher;  // set while streaming; not pickled
};

}  // namespace litcore
