#include "litcore/warmup.h"

namespace litcore {

WarmupReader::WarmupReader(std::shared_ptr<Mapping> mapping, std::vector<std::vector<ByteRange>> units)
    : mapping_(std::move(mapping)), units_(std::move(units)) {
  thread_ = std::thread([this] { run(); });
}

WarmupReader::~WarmupReader() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void WarmupReader::run() {
  try {
    for (const auto& unit : units_) {
      for (const auto& r : unit) {
        if (stop_) break;
        mapping_->fill_cache(r.offset, r.length, /*copy=*/true);
        mapping_->populate(r.offset, r.length);
        bytes_read_ += r.length;
      }
      if (stop_) break;
    }
  } catch (...) {
    // Warming is an optimisation: a failed read shows again, with its error, when the
    // forward touches those weights.
  }
  running_ = false;
}

}  // namespace litcore
