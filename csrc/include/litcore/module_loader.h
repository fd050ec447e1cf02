// Loading TorchScript programs saved by litcore.jit.save, with weights from a .lit file.
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <string>

namespace litcore {

struct Options {
  // Bytes of memory for weights, resident and in flight; 0 means auto_budget().
  int64_t memory_budget = 0;
};

// torch::jit::load(model_path), then points every litcore.Store attribute of the program at
// `weights_path` and plans residency under `options.memory_budget`. Throws
// std::invalid_argument if the program was not saved by litcore.jit.save, IOError/FormatError
// for a bad weight file, BudgetTooSmallError for a budget that cannot run the model.
torch::jit::Module load_module(const std::string& model_path, const std::string& weights_path,
                               const Options& options = {});

}  // namespace litcore
