// The warm-up reader: between loading a model and its first forward, reads the resident
// weights into memory on a native thread, so that the first forward finds them there.
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
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
  // `after_read(i)`, if given, runs after unit i is read (the engine checks checksums there);
  // the first exception it or a read throws stops the reader and is kept for error().
  WarmupReader(std::shared_ptr<Mapping> mapping, std::vector<std::vector<ByteRange>> units,
               std::function<void(size_t)> after_read = {});
  // Stops after the unit being read, and joins the thread.
  ~WarmupReader();
  WarmupReader(const WarmupReader&) = delete;
  WarmupReader& operator=(const WarmupReader&) = delete;

  // Asks the thread to stop after the unit it is reading (a forward has started: a second
  // reader beside the forward's own would slow both). Does not wait.
  void stop() { stop_ = true; }
  uint64_t bytes_read() const { return bytes_read_; }
  bool running() const { return running_; }
  // Units read (and checked) completely.
  size_t units_done() const { return units_done_; }
  // What stopped the reader early, once it has stopped (nullptr: nothing).
  std::exception_ptr error() const { return running_ ? nullptr : error_; }

 private:
  void run();

  std::shared_ptr<Mapping> mapping_;
  std::vector<std::vector<ByteRange>> units_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> running_{true};
  std::atomic<uint64_t> bytes_read_{0};
  std::atomic<size_t> units_done_{0};
  std::function<void(size_t)> after_read_;
  std::exception_ptr error_;  // written before running_ turns false
  std::thread thread_;
};

}  // namespace litcore
