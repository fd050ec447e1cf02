// The options every entry point takes, parsed by one set of rules (Python, TorchScript and
// C++ apps alike). Each throws std::invalid_argument naming the argument and the value.
#pragma once

#include <cstdint>
#include <string>

#include "litcore/prefetcher.h"
#include "litcore/store.h"

namespace litcore {

// "none" | "lazy" | "full" (`verify`).
Verify parse_verify(const std::string& mode);
// "buffer" | "auto" | "direct" | "sendfile" | "pread" | "populate" | "exact" (`read_mode`).
ReadMode parse_read_mode(const std::string& mode);
// A memory budget: bytes ("1200000000") or a size with a unit ("1200MB", "1.5GiB", "800M":
// k/M/G/T are powers of 10, KiB/MiB/GiB/TiB of 2), or "auto" (returns 0). Anything else,
// zero or a negative number is an error naming `argument`.
uint64_t parse_budget(const std::string& text, const std::string& argument = "memory_budget");
// Where a model runs (`device`): "cpu", "cuda" (the current GPU) or "cuda:N".
struct Device {
  bool cuda = false;
  int index = -1;  // N of "cuda:N"; -1: the current device
  std::string str() const;
};
Device parse_device(const std::string& text);
// Throws std::runtime_error, naming the reason, unless this build of torch and `entry_point`
// can run on `device`. On a CPU-only torch "cuda" is refused; TorchScript programs and C++
// apps (`entry_point` "TorchScript") run on the CPU only until litcore's native CUDA
// backend exists (Python's LitModule streams to a GPU with its own runtime).
void require_device(const Device& device, const std::string& entry_point);
// Reader threads: 1 to kMaxThreads.
constexpr int kMaxThreads = 64;
int check_threads(int64_t threads);

}  // namespace litcore
