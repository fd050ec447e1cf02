// The prefetch window's own memory, for read_mode="buffer": streamed units are read with
// direct reads into blocks of it, and the engine points their tensors there while they run
// (Store::point_at), instead of reading them into the page cache and dropping them after use.
// The memory is the window's size, kept and reused for the whole run: the footprint is the
// plan's by construction, and no page is freed and taken again (docs/benchmarks.md).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "litcore/mapping.h"

namespace litcore {

class WindowBuffer {
 public:
  // Throws IOError when the memory cannot be had, naming `path` (the weight file).
  WindowBuffer(uint64_t bytes, const std::string& path);
  WindowBuffer(const WindowBuffer&) = delete;
  WindowBuffer& operator=(const WindowBuffer&) = delete;

  // A block of `bytes` (rounded up to pages), or -1 when no free stretch is that long (the
  // caller reads that unit through the page cache instead). Blocks over a quarter of the
  // buffer go at the highest offset they fit, the others at the lowest.
  int64_t allocate(uint64_t bytes);
  void free(int64_t block);
  uint8_t* at(int64_t block) const { return memory_.data() + block; }
  uint64_t size() const { return memory_.size(); }
  // Blocks allocated and not freed.
  size_t blocks() const;

 private:
  OwnMemory memory_;
  mutable std::mutex mu_;
  std::map<uint64_t, uint64_t> free_;  // offset -> length, neighbours merged
  std::map<uint64_t, uint64_t> used_;  // offset -> length
};

}  // namespace litcore
