// The store as a TorchScript custom class: torch.classes.litcore.Store.
#pragma once

#include <torch/custom_class.h>

#include <memory>
#include <string>

#include "litcore/store.h"

namespace litcore {

struct ScriptStore : torch::CustomClassHolder {
  explicit ScriptStore(const std::string& path) : store(std::make_shared<Store>(path)) {}
  explicit ScriptStore(std::shared_ptr<Store> s) : store(std::move(s)) {}
  std::shared_ptr<Store> store;
};

}  // namespace litcore
