#include "litcore/window_buffer.h"

#include <iterator>

namespace litcore {
namespace {
constexpr uint64_t kPage = 4096;  // direct reads land at page boundaries
}  // namespace

WindowBuffer::WindowBuffer(uint64_t bytes, const std::string& path)
    : memory_(bytes, "the prefetch window's buffer for", path) {
  if (memory_.size() > 0) free_[0] = memory_.size();
}

int64_t WindowBuffer::allocate(uint64_t bytes) {
  uint64_t need = (bytes + kPage - 1) / kPage * kPage;
  if (need == 0) need = kPage;
  std::lock_guard<std::mutex> lock(mu_);
  // The window holds two of the largest units and smaller ones between them. Placed lowest
  // first, a large unit lands above the small ones read before it, and the next large one
  // finds no stretch long enough while the window has its bytes free: the reader waits for
  // the large one before it to be used. Large blocks therefore go at the top, small ones
  // at the bottom, and the free memory stays one stretch between them.
  if (need > memory_.size() / 4) {
    for (auto it = free_.end(); it != free_.begin();) {
      --it;
      if (it->second < need) continue;
      uint64_t offset = it->first + it->second - need;
      if (it->second == need) {
        free_.erase(it);
      } else {
        it->second -= need;
      }
      used_[offset] = need;
      return static_cast<int64_t>(offset);
    }
    return -1;
  }
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < need) continue;
    uint64_t offset = it->first, length = it->second;
    free_.erase(it);
    if (length > need) free_[offset + need] = length - need;
    used_[offset] = need;
    return static_cast<int64_t>(offset);
  }
  return -1;
}

void WindowBuffer::free(int64_t block) {
  std::lock_guard<std::mutex> lock(mu_);
  auto used = used_.find(static_cast<uint64_t>(block));
  if (used == used_.end()) return;
  uint64_t offset = used->first, length = used->second;
  used_.erase(used);
  auto next = free_.lower_bound(offset);
  if (next != free_.end() && next->first == offset + length) {  // joins the free stretch after it
    length += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto before = std::prev(next);
    if (before->first + before->second == offset) {  // and the one before it
      before->second += length;
      return;
    }
  }
  free_[offset] = length;
}

size_t WindowBuffer::blocks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return used_.size();
}

}  // namespace litcore
