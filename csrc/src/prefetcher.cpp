#include "litcore/prefetcher.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <string>

namespace litcore {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kPreadChunk = 8ull << 20;

}  // namespace

Prefetcher::Prefetcher(std::shared_ptr<Mapping> mapping, std::vector<std::vector<ByteRange>> groups, Options options)
    : mapping_(std::move(mapping)), groups_(std::move(groups)), options_(options) {
  bytes_.reserve(groups_.size());
  for (const auto& g : groups_) {
    uint64_t n = 0;
    for (const auto& r : g) {
      if (r.offset > mapping_->size() || r.length > mapping_->size() - r.offset) {
        throw std::out_of_range("litcore: prefetch range outside '" + mapping_->path() + "'");
      }
      n += r.length;
    }
    bytes_.push_back(n);
  }
  if (!options_.on_demand.empty() && options_.on_demand.size() != groups_.size()) {
    throw std::invalid_argument("litcore: prefetcher has " + std::to_string(groups_.size()) + " groups but " +
                                std::to_string(options_.on_demand.size()) + " on-demand flags");
  }
  options_.on_demand.resize(groups_.size(), false);
  for (size_t g = 0; g < groups_.size(); ++g) cost_.push_back(options_.on_demand[g] ? 0 : bytes_[g]);
  state_.assign(groups_.size(), State::Idle);
  in_use_.assign(groups_.size(), 0);
  streamed_.assign(groups_.size(), false);
  int threads = std::max(1, options_.threads);
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { worker_loop(); });
}

Prefetcher::~Prefetcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  ready_cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void Prefetcher::check_group(int group) const {
  if (group < 0 || static_cast<size_t>(group) >= groups_.size()) {
    throw std::out_of_range("litcore: prefetch group " + std::to_string(group) + " out of range");
  }
}

uint64_t Prefetcher::group_bytes(int group) const {
  check_group(group);
  return bytes_[group];
}

void Prefetcher::set_order(const std::vector<int>& order) {
  for (int g : order) check_group(g);
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<bool> streamed(groups_.size(), false);
  for (int g : order) streamed[g] = true;
  // Groups that stop being streamed keep their pages (they become resident); groups that
  // start being streamed are dropped if nobody uses them.
  for (size_t g = 0; g < groups_.size(); ++g) {
    if (streamed_[g] && !streamed[g] && state_[g] == State::Ready) {
      state_[g] = State::Idle;
      in_flight_ -= cost_[g];
    }
  }
  // Streamed groups fault forward-only (read-around would re-read what was just dropped
  // behind the reader); on-demand groups fault only the touched pages; the rest as usual.
  for (size_t g = 0; g < groups_.size() && !options_.keep; ++g) {
    if (streamed[g] == streamed_[g] && !order_.empty()) continue;
    for (const auto& r : groups_[g]) {
      if (!streamed[g]) mapping_->normal_access(r.offset, r.length);
      else if (options_.on_demand[g]) mapping_->random_access(r.offset, r.length);
      else mapping_->sequential_access(r.offset, r.length);
    }
  }
  streamed_ = streamed;
  order_ = order;
  expected_ = cursor_ = ahead_ = 0;
  for (size_t g = 0; g < groups_.size(); ++g) {
    if (streamed_[g] && state_[g] == State::Ready && in_use_[g] == 0) release_locked(static_cast<int>(g));
  }
  work_cv_.notify_all();
}

void Prefetcher::load(int group) {
  if (options_.on_demand[group]) return;  // its pages come in by fault, only those touched
  for (const auto& r : groups_[group]) {
    if (options_.read_mode == ReadMode::Pread) {
      // Large sequential reads fill the page cache at full device speed; the populate
      // below then only maps pages that are already there.
      static thread_local std::unique_ptr<uint8_t[]> scratch(new uint8_t[kPreadChunk]);
      for (uint64_t done = 0; done < r.length;) {
        size_t want = static_cast<size_t>(std::min(kPreadChunk, r.length - done));
        ssize_t n = ::pread(mapping_->fd(), scratch.get(), want, static_cast<off_t>(r.offset + done));
        if (n <= 0) break;  // the populate below reports nothing either: the mapping decides
        done += static_cast<uint64_t>(n);
      }
    }
    // No MADV_WILLNEED first: measured, it turns the populate's large readahead into
    // small asynchronous requests (0.6 GB/s against 1.8 GB/s, docs/benchmarks.md).
    mapping_->populate(r.offset, r.length);
  }
}

void Prefetcher::load_unlocked(int group, std::unique_lock<std::mutex>& lock) {
  state_[group] = State::Loading;
  in_flight_ += cost_[group];
  stats_.peak_in_flight_bytes = std::max(stats_.peak_in_flight_bytes, in_flight_);
  lock.unlock();  // the read runs without the lock: waits and done() go on meanwhile
  load(group);
  lock.lock();
  state_[group] = State::Ready;
  stats_.bytes_read += cost_[group];
  ready_cv_.notify_all();
}

void Prefetcher::release_locked(int group) {
  if (state_[group] == State::Ready) in_flight_ -= cost_[group];
  state_[group] = State::Idle;
  for (const auto& r : groups_[group]) mapping_->release(r.offset, r.length);
}

void Prefetcher::worker_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    work_cv_.wait(lock, [&] {
      if (stop_) return true;
      if (order_.empty() || ahead_ >= order_.size()) return false;
      int g = order_[cursor_];
      return state_[g] != State::Idle || in_flight_ == 0 || in_flight_ + cost_[g] <= options_.window_bytes;
    });
    if (stop_) return;
    size_t pos = cursor_;
    int g = order_[pos];
    cursor_ = (cursor_ + 1) % order_.size();
    ++ahead_;
    if (state_[g] != State::Idle) continue;  // already loaded for an earlier position
    load_unlocked(g, lock);
  }
}

void Prefetcher::wait(int group) {
  check_group(group);
  std::unique_lock<std::mutex> lock(mu_);
  if (!streamed_[group]) return;
  // Where in the order is this call? Usually exactly where we expected.
  size_t n = order_.size();
  size_t k = 0;
  while (k < n && order_[(expected_ + k) % n] != group) ++k;
  size_t pos = (expected_ + k) % n;
  if (k > 0) {
    ++stats_.mispredicts;
    // Positions we skipped were loaded for nothing this time round: free their window.
    for (size_t i = 0; i < k; ++i) {
      int s = order_[(expected_ + i) % n];
      if (s != group && state_[s] == State::Ready && in_use_[s] == 0) release_locked(s);
    }
  }
  size_t consumed = k + 1;
  if (ahead_ >= consumed) {
    ahead_ -= consumed;
  } else {  // the workers are behind: skip them past this position
    ahead_ = 0;
    cursor_ = (pos + 1) % n;
  }
  expected_ = (pos + 1) % n;
  auto start = Clock::now();
  bool hit = state_[group] == State::Ready;
  // Reserve the group first: a done() from another thread must not drop it under us.
  ++in_use_[group];
  while (!stop_ && state_[group] != State::Ready) {
    if (state_[group] == State::Idle) {
      load_unlocked(group, lock);
    } else {
      ready_cv_.wait(lock);
    }
  }
  if (hit) {
    ++stats_.hits;
  } else {
    ++stats_.misses;
    stats_.wait_seconds += std::chrono::duration<double>(Clock::now() - start).count();
  }
  work_cv_.notify_all();
}

void Prefetcher::done(int group) {
  check_group(group);
  std::lock_guard<std::mutex> lock(mu_);
  if (!streamed_[group]) return;
  if (in_use_[group] > 0) --in_use_[group];
  if (in_use_[group] == 0 && state_[group] == State::Ready) release_locked(group);
  work_cv_.notify_all();
}

void Prefetcher::release_all() {
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t g = 0; g < groups_.size(); ++g) {
    if (streamed_[g] && state_[g] == State::Ready && in_use_[g] == 0) release_locked(static_cast<int>(g));
  }
  work_cv_.notify_all();
}

PrefetchStats Prefetcher::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  PrefetchStats s = stats_;
  s.in_flight_bytes = in_flight_;
  return s;
}

void Prefetcher::reset_stats() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_ = PrefetchStats{};
  stats_.peak_in_flight_bytes = in_flight_;
}

}  // namespace litcore
