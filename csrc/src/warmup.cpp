#include "litcore/warmup.h"

#include <algorithm>

namespace litcore {

WarmupReader::WarmupReader(std::shared_ptr<Mapping> mapping, std::vector<std::vector<ByteRange>> units,
                           std::function<void(size_t)> after_read, int threads)
    : mapping_(std::move(mapping)),
      units_(std::move(units)),
      after_read_(std::move(after_read)),
      state_(units_.size(), State::Waiting) {
  threads = std::max(1, threads);
  running_ = threads;
  for (int t = 0; t < threads; ++t) threads_.emplace_back([this] { run(); });
}

WarmupReader::~WarmupReader() {
  stop();
  for (auto& t : threads_) t.join();
}

void WarmupReader::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  done_cv_.notify_all();
}

std::exception_ptr WarmupReader::error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return running_ > 0 ? nullptr : error_;
}

void WarmupReader::read_unit(size_t i, std::unique_lock<std::mutex>& lock) {
  lock.unlock();
  std::exception_ptr error;
  try {
    for (const auto& r : units_[i]) {
      mapping_->fill_and_map_small(r.offset, r.length);
      bytes_read_ += r.length;
    }
    if (after_read_) after_read_(i);
    ++units_done_;
  } catch (...) {
    error = std::current_exception();
  }
  lock.lock();
  state_[i] = State::Done;
  if (error) {
    if (!error_) error_ = error;
    stop_ = true;
  }
  if (units_done_ == units_.size()) all_done_ = true;
  done_cv_.notify_all();
}

void WarmupReader::run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    while (next_ < units_.size() && state_[next_] != State::Waiting) ++next_;
    if (next_ == units_.size()) break;
    size_t i = next_++;
    state_[i] = State::Reading;
    read_unit(i, lock);
  }
  --running_;
  done_cv_.notify_all();
}

void WarmupReader::wait(size_t i) {
  if (all_done_ || i >= units_.size()) return;
  std::unique_lock<std::mutex> lock(mu_);
  if (stop_) return;
  if (state_[i] == State::Waiting) {
    // Needed now, out of the readers' order: read here rather than behind the units ahead.
    state_[i] = State::Reading;
    read_unit(i, lock);
    return;
  }
  done_cv_.wait(lock, [&] { return state_[i] == State::Done || stop_; });
}

}  // namespace litcore
