// The streaming scheduler: brings groups of byte ranges (one module's weights) into memory
// on native threads, ahead of use, in a recorded cyclic order, within a byte window; and
// drops them from memory and page cache right after use.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "litcore/mapping.h"

namespace litcore {

// A read starting at most this far past where the previous one ended still rides the
// kernel's readahead (a layer norm's few KiB between two streamed projections). The pass
// model counts continuing reads the same way.
constexpr uint64_t kReadContinuesWithin = 1ull << 20;

struct ByteRange {
  uint64_t offset = 0;
  uint64_t length = 0;
};

struct PrefetchStats {
  uint64_t bytes_read = 0;    // bytes brought in for streamed groups
  uint64_t hits = 0;          // wait() found the group already in memory
  uint64_t misses = 0;        // wait() had to wait for, or do, the read
  uint64_t mispredicts = 0;   // wait() for a group other than the predicted next one
  double wait_seconds = 0;    // time wait() blocked the caller
  double read_seconds = 0;    // time spent reading groups (on the workers or in wait())
  // Reads that did not continue the previous one (the planner's seek cost comes from these).
  uint64_t seek_reads = 0;
  uint64_t seek_read_bytes = 0;
  double seek_read_seconds = 0;
  uint64_t in_flight_bytes = 0;
  uint64_t peak_in_flight_bytes = 0;
};

// How a group is read (Mapping::fill_cache, then MADV_POPULATE_READ maps the cached pages).
enum class ReadMode {
  Sendfile,  // sendfile() into /dev/null: the file's readahead, no copy (the default)
  Pread,     // 8 MiB preads into a scratch buffer: the same readahead, plus a copy
  Populate,  // MADV_POPULATE_READ alone: page faults drive the reads (about half as fast)
};

class Prefetcher {
 public:
  struct Options {
    uint64_t window_bytes = 0;  // streamed bytes allowed in memory at once (loaded or loading)
    int threads = 1;
    ReadMode read_mode = ReadMode::Sendfile;
    // Groups are read once and kept (warming a resident set): the mapping keeps its normal
    // access advice. Otherwise streamed groups are advised for forward-only readahead.
    bool keep = false;
    // Per group (empty: none): read by lookup, so never read ahead; its pages come in by
    // fault during use, cost no window, and are dropped by done() like any streamed group.
    std::vector<bool> on_demand;
  };

  // `groups[i]` are the byte ranges of group i in the mapping.
  Prefetcher(std::shared_ptr<Mapping> mapping, std::vector<std::vector<ByteRange>> groups, Options options);
  ~Prefetcher();
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;

  // The cyclic order in which streamed groups are expected (repeats allowed). Groups that
  // never appear are resident: wait()/done() ignore them. Releases what the old order had.
  void set_order(const std::vector<int>& order);
  // Blocks until `group` is in memory. A group other than the predicted one is read at
  // once (a wrong guess costs time, never correctness: the mapping is always valid); if it
  // is a few positions ahead the predictions in between stay, otherwise they are dropped.
  void wait(int group);
  // The caller is done with `group`: a streamed group is dropped from memory.
  void done(int group);
  // Drops every streamed group not in use (e.g. between runs).
  void release_all();

  PrefetchStats stats() const;
  void reset_stats();
  uint64_t group_bytes(int group) const;

 private:
  enum class State { Idle, Loading, Ready, Releasing };

  void worker_loop();
  void load(int group);
  // Marks `group` Loading, reads it with `lock` released, marks it Ready.
  void load_unlocked(int group, std::unique_lock<std::mutex>& lock);
  void release_locked(int group);
  // Moves past the front position of the order (consumed), and past any after it that were
  // consumed out of order.
  void advance_locked();
  void check_group(int group) const;

  std::shared_ptr<Mapping> mapping_;
  std::vector<std::vector<ByteRange>> groups_;
  std::vector<uint64_t> bytes_;
  std::vector<uint64_t> cost_;  // what a group takes of the window: 0 for on-demand groups
  Options options_;

  mutable std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable ready_cv_;
  std::vector<State> state_;
  std::vector<int> in_use_;
  std::vector<bool> streamed_;
  std::vector<int> order_;
  std::vector<bool> taken_;  // positions of order_ consumed out of order, ahead of expected_
  size_t expected_ = 0;  // position in order_ of the next wait()
  size_t cursor_ = 0;    // next position the workers will consider
  size_t ahead_ = 0;     // positions between expected_ and cursor_
  uint64_t in_flight_ = 0;
  uint64_t last_read_end_ = 0;  // file offset where the latest read ended
  bool stop_ = false;
  PrefetchStats stats_;
  std::vector<std::thread> threads_;
};

}  // namespace litcore
