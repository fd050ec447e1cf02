// XXH64 (xxHash, 64-bit, seed 0): the per-tensor and index checksum of format v1.
#pragma once

#include <cstddef>
#include <cstdint>

namespace litcore {

// One-shot hash of a byte range.
uint64_t xxh64(const void* data, size_t size, uint64_t seed = 0);

// Incremental hash, for data that arrives in chunks. Gives the same value as xxh64()
// over the concatenation of everything passed to update().
class Xxh64 {
 public:
  explicit Xxh64(uint64_t seed = 0);
  void update(const void* data, size_t size);
  uint64_t digest() const;

 private:
  uint64_t v_[4];
  uint64_t seed_;
  uint64_t total_ = 0;
  unsigned char buffer_[32];
  size_t buffered_ = 0;
};

}  // namespace litcore
