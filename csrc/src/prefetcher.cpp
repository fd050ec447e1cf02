#include "litcore/prefetcher.h"

#include "litcore/read_groups.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace litcore {
namespace {

using Clock = std::chrono::steady_clock;

// How far ahead in the order a wait may land and still count as a local reordering (served
// at once, predictions kept) rather than skipped positions (released). A transformer layer
// registers its ~10 modules in another order than it runs them.
constexpr size_t kReorderSpan = 16;

constexpr uint64_t kPage = 4096;  // the format's alignment; Mapping::place checks the OS's
uint64_t page_floor(uint64_t offset) { return offset / kPage * kPage; }
uint64_t page_ceil(uint64_t offset) { return (offset + kPage - 1) / kPage * kPage; }

std::vector<ByteRange> page_runs(std::vector<ByteRange> ranges) {
  sort_by_offset(ranges);
  std::vector<ByteRange> runs;
  for (const auto& r : ranges) {
    if (r.length == 0) continue;
    uint64_t end = page_ceil(r.offset + r.length);
    if (!runs.empty() && r.offset <= runs.back().offset + runs.back().length) {
      runs.back().length = std::max(runs.back().length, end - runs.back().offset);
    } else {
      runs.push_back({r.offset, end - r.offset});
    }
  }
  return runs;
}

// `ranges` without `holes` (both in file order), each piece shrunk to whole pages where it
// meets a hole: a page shared with a hole stays, as the hole's own.
std::vector<ByteRange> without(const std::vector<ByteRange>& ranges, const std::vector<ByteRange>& holes) {
  std::vector<ByteRange> out;
  for (const auto& r : ranges) {
    uint64_t at = r.offset, end = r.offset + r.length;
    bool after_hole = false;
    for (const auto& h : holes) {
      uint64_t h_end = h.offset + h.length;
      if (h_end <= at || h.offset >= end) continue;
      if (h.offset > at) {
        uint64_t first = after_hole ? page_ceil(at) : at;
        uint64_t last = page_floor(h.offset);
        if (last > first) out.push_back({first, last - first});
      }
      at = std::max(at, h_end);
      after_hole = true;
    }
    if (at < end) {
      uint64_t first = after_hole ? page_ceil(at) : at;
      if (end > first) out.push_back({first, end - first});
    }
  }
  return out;
}

}  // namespace

ReadMode resolve_read_mode(ReadMode mode, const Mapping& mapping) {
  if (mode != ReadMode::Auto) return mode;
  return mapping.can_place() ? ReadMode::Direct : ReadMode::Sendfile;
}

Prefetcher::Prefetcher(std::shared_ptr<Mapping> mapping, std::vector<std::vector<ByteRange>> units, Options options)
    : mapping_(std::move(mapping)), units_(std::move(units)), options_(options) {
  bytes_.reserve(units_.size());
  for (const auto& g : units_) {
    uint64_t n = 0;
    for (const auto& r : g) {
      if (r.offset > mapping_->size() || r.length > mapping_->size() - r.offset) {
        throw std::out_of_range("litcore: prefetch range outside '" + mapping_->path() + "'");
      }
      n += r.length;
    }
    bytes_.push_back(n);
  }
  if (!options_.on_demand.empty() && options_.on_demand.size() != units_.size()) {
    throw std::invalid_argument("litcore: prefetcher has " + std::to_string(units_.size()) + " units but " +
                                std::to_string(options_.on_demand.size()) + " on-demand flags");
  }
  options_.on_demand.resize(units_.size(), false);
  if (!options_.deferred.empty() && options_.deferred.size() != units_.size()) {
    throw std::invalid_argument("litcore: prefetcher has " + std::to_string(units_.size()) + " units but " +
                                std::to_string(options_.deferred.size()) + " deferred flags");
  }
  options_.deferred.resize(units_.size(), false);
  options_.read_mode = resolve_read_mode(options_.read_mode, *mapping_);
  read_mode_ = options_.read_mode;
  for (size_t g = 0; g < units_.size(); ++g) {
    cost_.push_back(options_.on_demand[g] ? 0 : bytes_[g]);
    runs_.push_back(page_runs(units_[g]));
    std::vector<uint64_t> packed;
    uint64_t at = 0;
    for (const auto& r : runs_.back()) {
      packed.push_back(at);
      at += r.length;
    }
    packed_.push_back(std::move(packed));
    run_bytes_.push_back(at);
  }
  block_.assign(units_.size(), -1);
  state_.assign(units_.size(), State::Idle);
  kept_.resize(units_.size());
  in_use_.assign(units_.size(), 0);
  streamed_.assign(units_.size(), false);
  unbilled_.assign(units_.size(), false);
  error_.assign(units_.size(), nullptr);
  int threads = std::max(1, options_.threads);
  threads_.emplace_back([this] { claim_loop(); });
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { worker_loop(); });
}

Prefetcher::~Prefetcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  claimed_cv_.notify_all();
  ready_cv_.notify_all();
  for (auto& t : threads_) t.join();
  // Memory put in place goes back to the system, and memory prepared for groups never read.
  for (size_t g = 0; g < units_.size(); ++g) {
    if (streamed_[g] && state_[g] == State::Ready) drop(static_cast<int>(g));
  }
  mapping_->discard_prepared();
}

ReadMode Prefetcher::read_mode() const { return read_mode_.load(); }

bool Prefetcher::take_block_locked(int unit) {
  if (!buffered() || !buffer_ || !read_whole(unit) || block_[unit] >= 0) return true;
  block_[unit] = buffer_->allocate(run_bytes_[unit]);
  return block_[unit] >= 0;
}

void Prefetcher::free_block(int unit) {
  if (block_[unit] < 0) return;
  buffer_->free(block_[unit]);
  block_[unit] = -1;
}

uint8_t* Prefetcher::buffer_address(int unit, uint64_t offset) const {
  check_unit(unit);
  std::lock_guard<std::mutex> lock(mu_);
  // Only a streamed unit that a wait() holds is read and keeps its block until done(). A
  // unit a new plan made resident may still hold a block (its read in flight, or its last
  // use not yet done) that is about to be given back and read into again: it reads the
  // mapping instead.
  if (!streamed_[unit] || in_use_[unit] == 0 || state_[unit] != State::Ready) return nullptr;
  int64_t block = block_[unit];
  if (block < 0) return nullptr;
  const auto& runs = runs_[unit];
  for (size_t i = 0; i < runs.size(); ++i) {
    if (offset >= runs[i].offset && offset < runs[i].offset + runs[i].length) {
      return buffer_->at(block) + packed_[unit][i] + (offset - runs[i].offset);
    }
  }
  return nullptr;
}

uint64_t Prefetcher::buffer_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return buffer_ ? buffer_->size() : 0;
}

void Prefetcher::drop(int unit) {
  if (block_[unit] >= 0) {
    // Read into the window's buffer. What the mapping still holds of it (mapped while it was
    // resident under an earlier plan, or read around a resident neighbour's fault) leaves
    // as a page-cache read's would.
    free_block(unit);
    for (const auto& r : units_[unit]) mapping_->release(r.offset, r.length);
    return;
  }
  if (options_.on_demand[unit] && lookup_cache_bytes_ > 0) {
    uint64_t cached = 0;
    try {
      for (size_t g = 0; g < units_.size(); ++g) {
        if (!options_.on_demand[g]) continue;
        for (const auto& r : units_[g]) cached += mapping_->pages_in_memory(r.offset, r.length).bytes(r.offset, r.length);
      }
    } catch (const std::exception&) {
      cached = UINT64_MAX;  // not measured: dropped as before
    }
    // Cached experts take the same room first (a row is a few KiB, an expert megabytes).
    if (cached + kept_bytes_ <= lookup_cache_bytes_) return;
  }
  std::vector<ByteRange> ranges = direct() ? runs_[unit] : units_[unit];
  {
    std::lock_guard<std::mutex> lock(kept_mu_);
    if (!kept_[unit].empty()) {
      sort_by_offset(ranges);
      ranges = without(ranges, kept_[unit]);
    }
  }
  for (const auto& r : ranges) mapping_->release(r.offset, r.length);
}

void Prefetcher::keep(int unit, std::vector<ByteRange> ranges) {
  check_unit(unit);
  sort_by_offset(ranges);
  uint64_t bytes = 0;
  for (const auto& r : ranges) bytes += r.length;
  std::lock_guard<std::mutex> lock(kept_mu_);
  uint64_t before = 0;
  for (const auto& r : kept_[unit]) before += r.length;
  kept_[unit] = std::move(ranges);
  kept_bytes_ += bytes;
  kept_bytes_ -= before;
}

void Prefetcher::release_ranges(const std::vector<ByteRange>& ranges) {
  for (const auto& r : ranges) {
    uint64_t first = page_ceil(r.offset), last = page_floor(r.offset + r.length);
    if (last > first) mapping_->release(first, last - first);
  }
}

void Prefetcher::check_unit(int unit) const {
  if (unit < 0 || static_cast<size_t>(unit) >= units_.size()) {
    throw std::out_of_range("litcore: prefetch unit " + std::to_string(unit) + " out of range");
  }
}

uint64_t Prefetcher::unit_bytes(int unit) const {
  check_unit(unit);
  return bytes_[unit];
}

void Prefetcher::set_order(const std::vector<int>& order) {
  for (int g : order) check_unit(g);
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<bool> streamed(units_.size(), false);
  for (int g : order) streamed[g] = true;
  // Units that stop being streamed keep their pages (they become resident); units that
  // start being streamed are dropped if nobody uses them.
  for (size_t g = 0; g < units_.size(); ++g) {
    if (streamed_[g] && !streamed[g] && state_[g] == State::Ready) {
      bill_locked(static_cast<int>(g));
      state_[g] = State::Idle;
      in_flight_ -= cost_[g];
      // Resident now, its pages come from the mapping; a unit still running from the
      // buffer gives its block back at done().
      if (in_use_[g] == 0) free_block(static_cast<int>(g));
    }
  }
  // Streamed units fault forward-only (read-around would re-read what was just dropped
  // behind the reader); on-demand units fault only the touched pages; the rest as usual.
  for (size_t g = 0; g < units_.size(); ++g) {
    if (streamed[g] == streamed_[g] && !order_.empty()) continue;
    for (const auto& r : units_[g]) {
      if (!streamed[g] && bytes_[g] < kSmallUnit) {
        // A small resident unit (a norm between streamed projections) faults only its own
        // pages: read-around would read megabytes of its streamed neighbours for nothing.
        mapping_->random_access(r.offset, r.length);
        // And its pages sit in page-cache folios of their own: a large folio read ahead
        // across it with its neighbours' bytes could not be dropped while it is mapped.
        try {
          mapping_->release(r.offset, r.length);
          mapping_->fill_cache_exact(r.offset, r.length);
        } catch (const std::exception&) {
          // An unreadable file fails the forward that faults the page, naming the file.
        }
      } else if (!streamed[g]) {
        mapping_->normal_access(r.offset, r.length);
      } else if (options_.on_demand[g]) {
        mapping_->random_access(r.offset, r.length);
      } else if (!direct()) {
        mapping_->sequential_access(r.offset, r.length);
      }
    }
  }
  streamed_ = streamed;
  order_ = order;
  // Direct reads gain nothing from reading a block in file order (no readahead to keep
  // going): each unit is read alone, as soon as it is next. A group fits the window beside
  // the largest unit (the planner sizes it so): one group computes while the next is read.
  uint64_t largest = 0;
  for (int g : order_) largest = std::max(largest, cost_[g]);
  uint64_t max_group = std::max(options_.window_bytes / 2, options_.window_bytes - std::min(largest, options_.window_bytes));
  group_end_ = read_groups(order_, units_, options_.on_demand, direct() ? 0 : max_group);
  taken_.assign(order_.size(), false);
  expected_ = cursor_ = ahead_ = 0;
  for (size_t g = 0; g < units_.size(); ++g) {
    if (streamed_[g] && state_[g] == State::Ready && in_use_[g] == 0) release_locked(static_cast<int>(g));
  }
  // The buffer holds what the readers read ahead: the window less the room a routed unit
  // (read by its caller into the mapping) takes in it. Made again for a new plan once no
  // block of the old one is out.
  uint64_t routed = 0;
  for (int g : order_) {
    if (options_.deferred[g]) routed = std::max(routed, cost_[g]);
  }
  uint64_t wanted = options_.window_bytes - std::min(routed, options_.window_bytes);
  if (buffered() && wanted != buffer_size_ && (!buffer_ || buffer_->blocks() == 0)) {
    buffer_.reset();
    buffer_size_ = wanted;
    if (wanted > 0) buffer_ = std::make_unique<WindowBuffer>(wanted, mapping_->path());
  }
  work_cv_.notify_all();
}

void Prefetcher::set_lookup_cache(uint64_t bytes) { lookup_cache_bytes_ = bytes; }

void Prefetcher::set_window(uint64_t window_bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.window_bytes = window_bytes;
}

std::vector<ByteRange> Prefetcher::ranges_to_read(const std::vector<int>& units) const {
  // On-demand units' pages come in by fault, only those touched; deferred units' parts are
  // read by their caller.
  std::vector<ByteRange> ranges;
  for (int unit : units) {
    const auto& own = direct() ? runs_[unit] : units_[unit];
    if (read_whole(unit)) ranges.insert(ranges.end(), own.begin(), own.end());
  }
  // In file order: a group's units, and a unit's own tensors, may be stored in any order.
  sort_by_offset(ranges);
  return ranges;
}

void Prefetcher::read(const std::vector<int>& units) {
  std::vector<int> rest;  // units read the other ways, below
  for (int unit : units) {
    if (block_[unit] < 0 || !read_whole(unit)) {
      rest.push_back(unit);
      continue;
    }
    bool read = buffered();
    for (size_t i = 0; i < runs_[unit].size() && read; ++i) {
      const ByteRange& r = runs_[unit][i];
      read = mapping_->read_direct_into(r.offset, r.length, buffer_->at(block_[unit]) + packed_[unit][i]);
    }
    if (read) continue;
    // The file system refused direct reads: this unit, and every later one, go through the
    // page cache (sendfile).
    read_mode_ = ReadMode::Sendfile;
    free_block(unit);
    rest.push_back(unit);
  }
  if (rest.empty()) return;
  std::vector<ByteRange> ranges = ranges_to_read(rest);
  if (read_mode_ == ReadMode::Direct) {
    size_t placed = 0;
    while (placed < ranges.size() && mapping_->place(ranges[placed].offset, ranges[placed].length)) ++placed;
    if (placed == ranges.size()) return;
    // The file system refused direct reads: the rest of this read, and every later one, go
    // through the page cache (sendfile, below).
    read_mode_ = ReadMode::Sendfile;
    ranges.erase(ranges.begin(), ranges.begin() + static_cast<std::ptrdiff_t>(placed));
  }
  // A unit that found no block in the window's buffer: exactly its bytes, as direct reads.
  read_cached(ranges, buffered());
}

void Prefetcher::read_cached(const std::vector<ByteRange>& ranges, bool exact) {
  for (const auto& r : ranges) {
    // Reads through the file's readahead first, then maps pages already cached: page faults
    // alone read a streamed range at about half the speed (docs/benchmarks.md). Never
    // MADV_WILLNEED: it splits the reads into small requests (0.6 GB/s against 1.8).
    if (exact || options_.read_mode == ReadMode::Exact) {
      mapping_->fill_cache_exact(r.offset, r.length);
    } else if (options_.read_mode != ReadMode::Populate) {
      mapping_->fill_cache(r.offset, r.length, options_.read_mode == ReadMode::Pread);
    }
  }
  for (const auto& r : ranges) mapping_->populate(r.offset, r.length);
}

std::vector<int> Prefetcher::group_at_locked(size_t pos, size_t limit, size_t* covered) const {
  size_t end = std::min(group_end_[pos], pos + std::max<size_t>(limit, 1));
  std::vector<int> units;
  for (size_t p = pos; p < end; ++p) {
    int unit = order_[p];
    if (!taken_[p] && state_[unit] == State::Idle) units.push_back(unit);
  }
  *covered = end - pos;
  return units;
}

void Prefetcher::claim_locked(const std::vector<int>& units) {
  for (int unit : units) {
    state_[unit] = State::Loading;
    in_flight_ += cost_[unit];
    // A unit read at once beside a full window may find no block: it is read into the
    // mapping instead.
    take_block_locked(unit);
  }
  stats_.peak_in_flight_bytes = std::max(stats_.peak_in_flight_bytes, in_flight_);
}

void Prefetcher::load_unlocked(const std::vector<int>& units, std::unique_lock<std::mutex>& lock) {
  uint64_t first = UINT64_MAX, end = 0, cost = 0;  // cost: the bytes this read brings in
  for (int unit : units) {
    if (!read_whole(unit)) continue;
    cost += cost_[unit];
    ByteRange extent = extent_of(units_[unit]);
    first = std::min(first, extent.offset);
    end = std::max(end, extent.offset + extent.length);
  }
  bool continues = first >= last_read_end_ && first - last_read_end_ <= kReadContinuesWithin;
  ByteRange spill;
  if (cost > 0) {
    // The previous read's spill is wasted unless this one reads on into it.
    if (!continues) spill = spill_;
    last_read_end_ = end;
    // Direct and exact reads read nothing past the unit.
    bool spills = !direct() && options_.read_mode != ReadMode::Exact;
    spill_ = spills ? ByteRange{end, mapping_->readahead_reach()} : ByteRange{};
  }
  read_started_locked();
  lock.unlock();  // the read runs without the lock: waits and done() go on meanwhile
  auto start = Clock::now();
  std::exception_ptr error;
  std::vector<std::exception_ptr> errors(units.size());
  try {
    read(units);
    // After this read: the readahead behind the previous one has finished by now (pages
    // still being read cannot be dropped). Pages a unit maps (resident, or read ahead and
    // mapped) are never dropped by this.
    if (spill.length > 0) mapping_->drop_cache(spill.offset, spill.length);
  } catch (...) {
    error = std::current_exception();  // a reader thread must not die: wait() throws it
  }
  for (size_t i = 0; i < units.size() && !error; ++i) {
    try {
      if (options_.after_read && read_whole(units[i])) options_.after_read(units[i]);
    } catch (...) {
      errors[i] = std::current_exception();
    }
  }
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  lock.lock();
  read_ended_locked();
  for (size_t i = 0; i < units.size(); ++i) {
    int unit = units[i];
    if (read_whole(unit)) unbilled_[unit] = true;
    if (!streamed_[unit]) {
      // A new plan made it resident while it was read: its pages stay, and its share of the
      // window is given back (kept, it would shrink the window for good: set_order() only
      // settles units that were ready when it ran).
      bill_locked(unit);
      free_block(unit);
      in_flight_ -= cost_[unit];
      state_[unit] = State::Idle;
      continue;
    }
    error_[unit] = error ? error : errors[i];
    state_[unit] = State::Ready;
  }
  if (cost > 0) {
    stats_.timed_bytes += cost;
    stats_.read_seconds += seconds;
    if (!continues) {
      ++stats_.seek_reads;
      stats_.seek_read_bytes += cost;
      stats_.seek_read_seconds += seconds;
    }
  }
  ready_cv_.notify_all();
}

uint64_t Prefetcher::read_parts(int unit, const std::vector<ByteRange>& parts) {
  check_unit(unit);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!streamed_[unit] || !options_.deferred[unit]) return 0;
  }
  uint64_t bytes = 0;
  for (const auto& r : parts) {
    if (r.offset > mapping_->size() || r.length > mapping_->size() - r.offset) {
      throw std::out_of_range("litcore: a part of unit " + std::to_string(unit) + " lies outside '" +
                              mapping_->path() + "'");
    }
    bytes += r.length;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    read_started_locked();
  }
  auto start = Clock::now();
  std::exception_ptr error;
  try {
    // Through the file's readahead, as the readers read: what it reads past a part lies in
    // the unit's own room (its other experts) and leaves with it. Reads of exactly the parts
    // were slower (docs/benchmarks.md, "Routed experts").
    read_cached(parts);
  } catch (...) {
    error = std::current_exception();  // thrown once the read is counted as ended
  }
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::lock_guard<std::mutex> lock(mu_);
  read_ended_locked();
  if (error) std::rethrow_exception(error);
  stats_.bytes_read += bytes;
  stats_.timed_bytes += bytes;
  stats_.read_seconds += seconds;
  stats_.wait_seconds += seconds;  // the forward waits for its own reads
  return bytes;
}

void Prefetcher::read_started_locked() {
  if (reads_in_flight_++ == 0) reading_since_ = Clock::now();
}

void Prefetcher::read_ended_locked() {
  if (--reads_in_flight_ == 0) {
    stats_.reading_seconds += std::chrono::duration<double>(Clock::now() - reading_since_).count();
  }
}

void Prefetcher::bill_locked(int unit) {
  if (!unbilled_[unit]) return;
  unbilled_[unit] = false;
  stats_.bytes_read += cost_[unit];
}

void Prefetcher::release_locked(int unit) {
  bill_locked(unit);
  error_[unit] = nullptr;
  if (state_[unit] == State::Ready) in_flight_ -= cost_[unit];
  state_[unit] = State::Idle;
  drop(unit);
}

void Prefetcher::worker_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    claimed_cv_.wait(lock, [&] { return stop_ || !claimed_.empty(); });
    if (stop_) return;
    std::vector<int> group = std::move(claimed_.front());
    claimed_.pop_front();
    load_unlocked(group, lock);
  }
}

void Prefetcher::claim_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    std::vector<int> group;
    size_t covered = 0;
    work_cv_.wait(lock, [&] {
      if (stop_) return true;
      if (order_.empty() || ahead_ >= order_.size()) return false;
      int g = order_[cursor_];
      // Consumed out of order already, or loaded for an earlier position: move past it.
      if (taken_[cursor_] || state_[g] != State::Idle) {
        group.clear();
        covered = 1;
        return true;
      }
      // Never past the position being consumed.
      group = group_at_locked(cursor_, order_.size() - ahead_, &covered);
      // A group is read in file order: its units are claimed in that order as the window
      // makes room (the group before releases its units as they compute), the rest later.
      std::sort(group.begin(), group.end(),
                [&](int a, int b) { return extent_of(units_[a]).offset < extent_of(units_[b]).offset; });
      size_t fit = 0;
      uint64_t cost = 0;
      while (fit < group.size() && in_flight_ + cost + cost_[group[fit]] <= options_.window_bytes &&
             take_block_locked(group[fit])) {
        cost += cost_[group[fit++]];
      }
      if (fit == 0 && in_flight_ == 0 && !group.empty()) fit = 1;
      if (fit == 0 && !group.empty()) return false;
      if (fit < group.size()) {
        group.resize(fit);
        covered = 0;  // the claimer comes back to this group for the rest
      }
      return true;
    });
    if (stop_) return;
    cursor_ = (cursor_ + covered) % order_.size();
    ahead_ += covered;
    if (group.empty()) continue;
    claim_locked(group);
    if (read_mode_ == ReadMode::Direct) {
      // The memory is made ready while the readers read the groups before this one. What
      // fails here fails again in the read, which reports it to the unit's wait().
      std::vector<ByteRange> runs = ranges_to_read(group);
      lock.unlock();
      try {
        for (const auto& r : runs) mapping_->prepare(r.offset, r.length);
      } catch (const std::exception&) {
      }
      lock.lock();
    }
    claimed_.push_back(std::move(group));
    claimed_cv_.notify_one();
  }
}

void Prefetcher::advance_locked() {
  size_t n = order_.size();
  // The front position is consumed: the claimer either claimed it already or skips past it.
  for (size_t i = 0; i < n; ++i) {
    if (ahead_ > 0) {
      --ahead_;
    } else {
      cursor_ = (expected_ + 1) % n;
    }
    expected_ = (expected_ + 1) % n;
    if (!taken_[expected_]) return;
    taken_[expected_] = false;  // consumed earlier, out of order
  }
}

void Prefetcher::wait(int unit) {
  check_unit(unit);
  std::unique_lock<std::mutex> lock(mu_);
  if (!streamed_[unit]) return;
  // Where in the order is this call? Usually exactly where we expected.
  size_t n = order_.size();
  size_t k = 0;
  while (k < n && (order_[(expected_ + k) % n] != unit || taken_[(expected_ + k) % n])) ++k;
  if (k == 0) {
    advance_locked();
  } else if (k < n) {
    ++stats_.mispredicts;
    size_t pos = (expected_ + k) % n;
    if (k <= kReorderSpan) {
      // A local reordering (a model running its modules in another order than registered):
      // serve this one now and keep every prediction in between.
      taken_[pos] = true;
    } else {
      // Positions we skipped were loaded for nothing this time round: free their window.
      for (size_t i = 0; i < k; ++i) {
        size_t p = (expected_ + i) % n;
        int s = order_[p];
        taken_[p] = false;
        if (s != unit && state_[s] == State::Ready && in_use_[s] == 0) release_locked(s);
      }
      if (ahead_ >= k) {
        ahead_ -= k;
      } else {  // the claimer is behind: skip it past this position
        ahead_ = 0;
        cursor_ = pos;
      }
      expected_ = pos;
      advance_locked();
    }
  }
  auto start = Clock::now();
  bool hit = state_[unit] == State::Ready;
  // Reserve the unit first: a done() from another thread must not drop it under us.
  ++in_use_[unit];
  while (!stop_ && streamed_[unit] && state_[unit] != State::Ready) {
    if (state_[unit] == State::Idle) {
      claim_locked({unit});
      load_unlocked({unit}, lock);
    } else {
      ready_cv_.wait(lock);
    }
  }
  if (error_[unit]) {
    std::exception_ptr error = error_[unit];
    error_[unit] = nullptr;
    --in_use_[unit];
    release_locked(unit);  // read again next time
    work_cv_.notify_all();
    std::rethrow_exception(error);
  }
  bill_locked(unit);
  if (hit) {
    ++stats_.hits;
  } else {
    ++stats_.misses;
    stats_.wait_seconds += std::chrono::duration<double>(Clock::now() - start).count();
  }
  work_cv_.notify_all();
}

void Prefetcher::done(int unit) {
  check_unit(unit);
  std::unique_lock<std::mutex> lock(mu_);
  // Counted down for a unit made resident while in use too: streamed again later, a stale
  // count would keep it from ever being dropped.
  if (in_use_[unit] > 0) --in_use_[unit];
  if (!streamed_[unit]) {
    if (in_use_[unit] == 0) free_block(unit);  // made resident while it ran from the buffer
    return;
  }
  if (in_use_[unit] == 0 && state_[unit] == State::Ready) {
    // The drop (unmapping and evicting megabytes) runs without the lock: under it, the
    // reader could not start its next read for as long (measured ~1 ms per 23 MB module).
    // The unit keeps its window share until its pages are gone.
    state_[unit] = State::Releasing;
    lock.unlock();
    drop(unit);
    lock.lock();
    state_[unit] = State::Idle;
    in_flight_ -= cost_[unit];
    ready_cv_.notify_all();
  }
  work_cv_.notify_all();
}

void Prefetcher::release_all() {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t g = 0; g < units_.size(); ++g) {
    if (streamed_[g] && state_[g] == State::Ready && in_use_[g] == 0) release_locked(static_cast<int>(g));
  }
  work_cv_.notify_all();
}

PrefetchStats Prefetcher::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  PrefetchStats s = stats_;
  s.in_flight_bytes = in_flight_;
  if (reads_in_flight_ > 0) s.reading_seconds += std::chrono::duration<double>(Clock::now() - reading_since_).count();
  return s;
}

void Prefetcher::reset_stats() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_ = PrefetchStats{};
  stats_.peak_in_flight_bytes = in_flight_;
  reading_since_ = Clock::now();  // a read running now counts from here on
}

}  // namespace litcore
