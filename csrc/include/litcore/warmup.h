// The warm-up reader: between loading a model and its first forward, reads the resident
// weights into memory on a native thread, so that the first forward finds them there.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "litcore/mapping.h"
#include "litcore/prefetcher.h"

namespace litcore {

class WarmupReader {
 public:
  // Reads each unit's ranges in turn (`units` in execution order), with pread: its copy
  // touches every page, and on a virtual machine the first CPU touch of page cache filled
  // without one is slow (docs/benchmarks.md, "warm-up").
  WarmupReader(std::shared_ptr<Mapping> mapping, std::vector<std::vector<ByteRange>> units);
  // Stops after the unit being read, and joins the thread.
  ~WarmupReader();
  WarmupReader(const WarmupReader&) = delete;
  WarmupReader& operator=(const WarmupReader&) = delete;

  // Asks the thread to stop after the unit it is reading (a forward has started: a second
  // reader beside the forward's own would slow both). Does not wait.
  void stop() { stop_ = true; }
  uint64_t bytes_read() const { return bytes_read_; }
  bool running() const { return running_; }

 private:
  void run();

  std::shared_ptr<Mapping> mapping_;
  std::vector<std::vector<ByteRange>> units_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> running_{true};
  std::atomic<uint64_t> bytes_read_{0};
  std::thread thread_;
};

}  // namespace litcore
