#include "litcore/warmup.h"

namespace litcore {

WarmupReader::WarmupReader(std::shared_ptr<Mapping> mapping, std::vector<std::vector<ByteRange>> units,
                           std::function<void(size_t)> after_read)
    : mapping_(std::move(mapping)), units_(std::move(units)), after_read_(std::move(after_read)) {
  thread_ = std::thread([this] { run(); });
}

WarmupReader::~WarmupReader() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void WarmupReader::run() {
  try {
    for (size_t i = 0; i < units_.size() && !stop_; ++i) {
      for (const auto& r : units_[i]) {
        if (stop_) break;
        mapping_->fill_cache(r.offset, r.length, /*copy=*/true);
        mapping_->populate(r.offset, r.length);
        bytes_read_ += r.length;
      }
      if (stop_) break;
      if (after_read_) after_read_(i);
      ++units_done_;
    }
  } catch (...) {
    error_ = std::current_exception();
  }
  running_ = false;
}

}  // namespace litcore
