// The warm-up reader: from loading a model on, reads the resident weights into memory on
// native threads, so that the first forward finds them there.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "litcore/mapping.h"
#include "litcore/prefetcher.h"

namespace litcore {

// Two readers: one waits on the disk while the other maps what it read.
constexpr int kWarmupThreads = 2;

class WarmupReader {
 public:
  // Reads the units in the given order (execution order, or registration order before the
  // first forward), `threads` at a time, each without readahead past it and without a copy
  // (Mapping::fill_and_map_small): the page cache then holds the weights in small folios,
  // which a virtual machine backs at once where large ones come from memory its host has
  // taken back (docs/benchmarks.md). `after_read(i)`, if given, runs after unit
  // i is read (the engine checks checksums there); the first exception it or a read throws
  // stops the readers and is kept for error().
  WarmupReader(std::shared_ptr<Mapping> mapping, std::vector<std::vector<ByteRange>> units,
               std::function<void(size_t)> after_read = {}, int threads = kWarmupThreads);
  // Stops after the units being read, and joins the threads.
  ~WarmupReader();
  WarmupReader(const WarmupReader&) = delete;
  WarmupReader& operator=(const WarmupReader&) = delete;

  // Asks the readers to stop after the units they are reading (a forward that streams has
  // started: another reader beside the prefetch reader would slow both). Does not wait.
  void stop();
  // Blocks until unit `i` is read: a unit no reader has taken yet is read on the calling
  // thread, one being read is waited for. Returns at once when the readers have stopped
  // (the caller's page faults then read what is left).
  void wait(size_t i);
  uint64_t bytes_read() const { return bytes_read_; }
  // Some unit is still to be read and the readers have not stopped: false once wait()
  // returns at once (a reader that read the last unit may still be on its way out).
  bool running() const { return running_ > 0 && !all_done_; }
  // Units read (and checked) completely.
  size_t units_done() const { return units_done_; }
  // What stopped the readers early, once they have stopped (nullptr: nothing).
  std::exception_ptr error() const;

 private:
  enum class State : char { Waiting, Reading, Done };

  void run();
  // Reads unit i (taken: Reading) without the lock, and marks it Done.
  void read_unit(size_t i, std::unique_lock<std::mutex>& lock);

  std::shared_ptr<Mapping> mapping_;
  std::vector<std::vector<ByteRange>> units_;
  std::function<void(size_t)> after_read_;
  std::atomic<bool> stop_{false};
  std::atomic<int> running_{0};
  std::atomic<bool> all_done_{false};
  std::atomic<uint64_t> bytes_read_{0};
  std::atomic<size_t> units_done_{0};
  mutable std::mutex mu_;
  std::condition_variable done_cv_;
  std::vector<State> state_;
  size_t next_ = 0;  // the first unit no one has taken yet, or past it
  std::exception_ptr error_;
  std::vector<std::thread> threads_;
};

}  // namespace litcore
