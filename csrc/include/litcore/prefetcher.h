// The prefetch reader: brings units (one module's weights: a few byte ranges) into memory
// on native threads, ahead of use, in a recorded cyclic order, within a byte window; and
// drops them from memory and page cache right after use. Units stored in the file in
// another order than they run are read together, in file order (read_groups.h). One thread
// claims what comes next as the window makes room (and, for direct reads, makes its memory
// ready); the readers read what was claimed, in that order.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "litcore/mapping.h"
#include "litcore/window_buffer.h"

namespace litcore {

// A read starting at most this far past where the previous one ended still rides the
// kernel's readahead (a layer norm's few KiB between two streamed projections). The pass
// model counts continuing reads the same way.
constexpr uint64_t kReadContinuesWithin = 1ull << 20;

struct ByteRange {
  uint64_t offset = 0;
  uint64_t length = 0;
};

// [first byte, end) of `ranges` (empty when they are).
inline ByteRange extent_of(const std::vector<ByteRange>& ranges) {
  uint64_t first = UINT64_MAX, end = 0;
  for (const auto& r : ranges) {
    first = std::min(first, r.offset);
    end = std::max(end, r.offset + r.length);
  }
  return first < end ? ByteRange{first, end - first} : ByteRange{};
}

// In file order.
inline void sort_by_offset(std::vector<ByteRange>& ranges) {
  std::sort(ranges.begin(), ranges.end(), [](const ByteRange& a, const ByteRange& b) { return a.offset < b.offset; });
}

struct PrefetchStats {
  // Bytes read for the units used since the last reset_stats(), counted when a unit is used
  // (or dropped unused): what a pass read for itself, whenever the reader read it ahead.
  uint64_t bytes_read = 0;
  uint64_t hits = 0;          // wait() found the unit already in memory
  uint64_t misses = 0;        // wait() had to wait for, or do, the read
  uint64_t mispredicts = 0;   // wait() for a unit other than the predicted next one
  double wait_seconds = 0;    // time wait() blocked the caller
  double read_seconds = 0;    // time spent reading units (on the readers or in wait())
  // Wall time with at least one read in flight: reads at once (a reader thread's and a
  // waiting caller's own) count once, where read_seconds sums them.
  double reading_seconds = 0;
  uint64_t timed_bytes = 0;   // the bytes those reads brought in
  // Reads that did not continue the previous one (the planner's seek cost comes from these).
  uint64_t seek_reads = 0;
  uint64_t seek_read_bytes = 0;
  double seek_read_seconds = 0;
  uint64_t in_flight_bytes = 0;
  uint64_t peak_in_flight_bytes = 0;
};

// How a unit is read: past the page cache into the window's own memory (WindowBuffer) or
// into new memory put in place (Mapping::place), or into the page cache
// (Mapping::fill_cache, then MADV_POPULATE_READ maps the cached pages).
enum class ReadMode {
  Buffer,    // direct reads into the window's buffer, kept and reused; the engine points the
             // unit's tensors there while it runs (Store::point_at). No page cache, no new memory
  Sendfile,  // sendfile() into /dev/null: the file's readahead, no copy
  Auto,      // Direct where the file system takes direct reads, otherwise Sendfile
  Direct,    // direct reads into new memory moved into place: no page cache, no readahead
  Pread,     // 8 MiB preads into a scratch buffer: the same readahead, plus a copy
  Populate,  // MADV_POPULATE_READ alone: page faults drive the reads (about half as fast)
  Exact,     // 8 MiB preads with readahead off: exactly the module's bytes, nothing past them
};

// The mode Auto stands for on `mapping`; any other mode as it is.
ReadMode resolve_read_mode(ReadMode mode, const Mapping& mapping);
// Direct reads, into new memory or into the window's buffer: each unit's page runs, no
// readahead to keep sequential, so no read groups.
inline bool reads_direct(ReadMode mode) { return mode == ReadMode::Direct || mode == ReadMode::Buffer; }

class Prefetcher {
 public:
  struct Options {
    uint64_t window_bytes = 0;  // streamed bytes allowed in memory at once (loaded or loading)
    int threads = 1;
    ReadMode read_mode = ReadMode::Sendfile;
    // Per unit (empty: none): read by lookup, so never read ahead; its pages come in by
    // fault during use, cost no window, and are dropped by done() like any streamed unit.
    std::vector<bool> on_demand;
    // Per unit (empty: none): read in parts by its caller, after wait(), with read_parts()
    // (a mixture-of-experts layer whose routing picks the experts it reads). It is claimed
    // in the window whole, as any streamed unit, so the footprint stays the plan's; the
    // readers never read it.
    std::vector<bool> deferred;
    // Called on the reading thread right after a unit is read and mapped (the engine checks
    // checksums there); what it throws reaches the unit's wait().
    std::function<void(int)> after_read;
  };

  // `units[i]` are the byte ranges of unit i in the mapping.
  Prefetcher(std::shared_ptr<Mapping> mapping, std::vector<std::vector<ByteRange>> units, Options options);
  ~Prefetcher();
  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;

  // The cyclic order in which streamed units are expected (repeats allowed). Units that
  // never appear are resident: wait()/done() ignore them. Releases what the old order had.
  // Cuts the order into read groups of at most half the window (direct reads: a unit each).
  void set_order(const std::vector<int>& order);
  // A new window (a new plan); takes effect with the next set_order().
  void set_window(uint64_t window_bytes);
  // What the plan leaves of its budget beside the resident weights and the window: the rows
  // on-demand units (embeddings) touched stay cached between forwards while together they
  // fit in it, instead of being dropped after each use and read again, one random read per
  // row, by the next forward. 0: dropped after each use.
  void set_lookup_cache(uint64_t bytes);
  // Blocks until `unit` is in memory. A unit other than the predicted one is read at
  // once (a wrong guess costs time, never correctness: the mapping is always valid); if it
  // is a few positions ahead the predictions in between stay, otherwise they are dropped.
  // A read that failed (on a reader thread or here) is thrown here, as IOError naming the
  // file; the unit is then not in use, and the next wait() reads it again.
  void wait(int unit);
  // Reads `parts` (byte ranges inside deferred `unit`, which wait() returned for) on the
  // calling thread, the way the readers read (the read mode's path), then maps them.
  // Counted as this pass's reads and as IO wait; returns the bytes read. Nothing for a unit
  // not streamed now (it is resident): 0. Throws IOError naming the file.
  uint64_t read_parts(int unit, const std::vector<ByteRange>& parts);
  // `ranges` (inside deferred `unit`: its cached experts' slices, expert_cache.h) stay in
  // memory when the unit is dropped; replaces what was kept of it before.
  void keep(int unit, std::vector<ByteRange> ranges);
  // Drops `ranges` from memory now (a cached expert evicted): the pages wholly inside them,
  // so that a neighbour still kept loses none of its own.
  void release_ranges(const std::vector<ByteRange>& ranges);
  // The caller is done with `unit`: a streamed unit is dropped from memory.
  void done(int unit);
  // Drops every streamed unit not in use (e.g. between runs).
  void release_all();

  PrefetchStats stats() const;  // reading_seconds includes the reads running now
  void reset_stats();
  // The mode reads use (never Auto); Direct and Buffer turn to Sendfile if the file system
  // refuses direct reads.
  ReadMode read_mode() const;
  // Where the byte at file `offset` of `unit` (a unit wait() returned for, in use) lies in
  // the window's buffer; nullptr when the unit was read into the mapping (any mode but
  // Buffer, or a unit that found no room in the buffer, or read at once out of order), and
  // for a unit that is not streamed under the current order or not in use, whatever its
  // block still holds.
  uint8_t* buffer_address(int unit, uint64_t offset) const;
  // The window's buffer's size (0: none), what read_mode="buffer" holds beside the mapping.
  uint64_t buffer_bytes() const;
  uint64_t unit_bytes(int unit) const;

 private:
  enum class State { Idle, Loading, Ready, Releasing };

  // Claims the read groups ahead in the order as the window has room for them and, with
  // direct reads, prepares their memory (Mapping::prepare) while the reader reads the group
  // before; queues them for the readers.
  void claim_loop();
  // Reads the claimed groups, in the order they were claimed.
  void worker_loop();
  // The byte ranges a read of `units` brings in, in file order: with direct reads their
  // page runs, on-demand units left out.
  std::vector<ByteRange> ranges_to_read(const std::vector<int>& units) const;
  // Reads `units` (one read group) in file order and maps them.
  void read(const std::vector<int>& units);
  // Reads `ranges` into the page cache the read mode's way and maps them.
  // `exact`: readahead off whatever the mode (what a Buffer read without a block reads).
  void read_cached(const std::vector<ByteRange>& ranges, bool exact = false);
  // Marks `units` Loading: their bytes count in the window from now on.
  void claim_locked(const std::vector<int>& units);
  // Reads claimed `units` with `lock` released, marks them Ready.
  void load_unlocked(const std::vector<int>& units, std::unique_lock<std::mutex>& lock);
  // The units of the group at order position `pos` still to read (not consumed, Idle), at
  // most `limit` positions, and the positions covered.
  std::vector<int> group_at_locked(size_t pos, size_t limit, size_t* covered) const;
  void release_locked(int unit);
  // Drops a unit's pages (memory put in place is freed, the file mapped there again).
  void drop(int unit);
  bool direct() const { return reads_direct(read_mode_.load()); }
  bool buffered() const { return read_mode_.load() == ReadMode::Buffer; }
  // With Buffer reads, a block of the window's buffer for `unit` (true: it has one, or needs
  // none); false where no free stretch is long enough yet: frees come in the order units
  // were claimed, so the claimer waits for one, as it waits for room in the window.
  bool take_block_locked(int unit);
  // Gives back `unit`'s block of the window's buffer, if it has one.
  void free_block(int unit);
  // Read whole by the readers: neither on-demand nor deferred.
  bool read_whole(int unit) const { return !options_.on_demand[unit] && !options_.deferred[unit]; }
  // Counts a read unit's bytes in bytes_read, once per read.
  void bill_locked(int unit);
  void read_started_locked();
  void read_ended_locked();
  // Moves past the front position of the order (consumed), and past any after it that were
  // consumed out of order.
  void advance_locked();
  void check_unit(int unit) const;

  std::shared_ptr<Mapping> mapping_;
  std::vector<std::vector<ByteRange>> units_;
  // Per unit, its ranges widened to whole pages and merged (the padding between a unit's
  // tensors joins them): what direct reads put in place, one block of the file each.
  std::vector<std::vector<ByteRange>> runs_;
  std::atomic<ReadMode> read_mode_{ReadMode::Sendfile};
  // With Buffer reads: the window's memory (the window less a routed unit's room in it; made
  // by set_order(), again when that changed and no block is out), each unit's block of it
  // (-1: none), and where each of the unit's page runs starts in its block.
  std::unique_ptr<WindowBuffer> buffer_;
  uint64_t buffer_size_ = 0;  // what buffer_ was made for
  std::vector<int64_t> block_;
  std::vector<std::vector<uint64_t>> packed_;
  std::vector<uint64_t> run_bytes_;  // per unit, its page runs' bytes: its block's size
  std::vector<uint64_t> bytes_;
  std::vector<uint64_t> cost_;  // what a unit takes of the window: 0 for on-demand units
  Options options_;

  std::atomic<uint64_t> lookup_cache_bytes_{0};
  // Per unit, what drop() leaves in memory (keep()); its own lock, as drop() runs without mu_.
  mutable std::mutex kept_mu_;
  std::vector<std::vector<ByteRange>> kept_;
  std::atomic<uint64_t> kept_bytes_{0};
  mutable std::mutex mu_;
  std::condition_variable work_cv_;   // the claimer: the window or the order changed
  std::condition_variable claimed_cv_;  // the readers: a group was claimed
  std::condition_variable ready_cv_;
  std::vector<State> state_;
  std::vector<int> in_use_;
  std::vector<bool> streamed_;
  std::vector<bool> unbilled_;  // read, and not yet counted in stats_.bytes_read
  std::vector<std::exception_ptr> error_;  // a failed read, for the next wait() to throw
  std::vector<int> order_;
  std::vector<size_t> group_end_;  // per position of order_: one past its read group's end
  std::vector<bool> taken_;  // positions of order_ consumed out of order, ahead of expected_
  std::deque<std::vector<int>> claimed_;  // groups claimed (Loading), not yet being read
  size_t expected_ = 0;  // position in order_ of the next wait()
  size_t cursor_ = 0;    // next position the claimer will consider
  size_t ahead_ = 0;     // positions between expected_ and cursor_
  uint64_t in_flight_ = 0;
  uint64_t last_read_end_ = 0;  // file offset where the latest read ended
  // What the kernel's readahead may have read past the latest read: dropped before the next
  // read unless that read continues into it (a shuffled file's next layer is far away).
  ByteRange spill_;
  bool stop_ = false;
  PrefetchStats stats_;
  int reads_in_flight_ = 0;  // reads running now (stats_.reading_seconds counts their union)
  std::chrono::steady_clock::time_point reading_since_;  // when reads_in_flight_ left 0, or the last reset
  std::vector<std::thread> threads_;  // the claimer, then the readers
};

}  // namespace litcore
