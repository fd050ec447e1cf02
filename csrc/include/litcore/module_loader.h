// Loading TorchScript programs saved by litcore.jit.save, with weights from a .lit file.
#pragma once

#include <torch/script.h>

#include <cstdint>
#include <string>

#include "litcore/engine.h"
#include "litcore/options.h"
#include "litcore/script_engine.h"

namespace litcore {

struct Options {
  // Bytes of memory for weights, resident and in flight; 0 means auto_budget()
  // (parse_budget() reads "1.5GiB"-style text by the same rules as Python).
  int64_t memory_budget = 0;
  int threads = 1;  // prefetch reader threads, 1 to kMaxThreads
  // Checksums (EngineOptions::verify): None (the default, as in Python), Lazy (each tensor
  // when first read) or Full.
  Verify verify = Verify::None;
  // "cpu", or "cuda[:N]": refused with a clear error (require_device) until the native CUDA
  // backend exists.
  std::string device = "cpu";
};

// torch::jit::load(model_path), then points the program's engine at `weights_path` and starts
// it under `options` (the same engine, plan and order learning as Python's LitModule).
// Throws std::invalid_argument if the program was not saved by litcore.jit.save or an option
// is out of range, IOError/FormatError for a bad weight file, BudgetTooSmallError for a
// budget that cannot run the model.
torch::jit::Module load_module(const std::string& model_path, const std::string& weights_path,
                               const Options& options = {});

// The engine of a program returned by load_module: its plan(), placements(), passes()
// (per-forward statistics) and summary().
Engine& engine_of(const torch::jit::Module& module);

}  // namespace litcore
