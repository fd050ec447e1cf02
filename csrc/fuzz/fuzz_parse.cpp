// libFuzzer target for the header/index parser: every input must either parse or throw
// FormatError; never crash, hang, or allocate unbounded memory. Built by `make fuzz`
// (clang, -fsanitize=fuzzer,address,undefined); torch-free, like the parser itself.
//
// Random bytes rarely get past the checksums, so each input is tried twice: as it is, and
// with its index and header checksums made valid, which sends mutations deep into the parser.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "litcore/checksum.h"
#include "litcore/errors.h"
#include "litcore/format.h"

namespace {

void parse(const uint8_t* data, size_t size) {
  try {
    litcore::FileIndex index = litcore::parse_file(data, size, "fuzz-input");
    for (const auto& t : index.tensors) {  // a parsed index describes only bytes of the input
      if (t.offset > size || t.nbytes > size - t.offset) __builtin_trap();
    }
  } catch (const litcore::FormatError&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  parse(data, size);
  if (size < litcore::kHeaderSize) return 0;
  std::vector<uint8_t> fixed(data, data + size);
  uint64_t index_size;
  std::memcpy(&index_size, fixed.data() + 32, 8);
  if (index_size <= size - litcore::kHeaderSize) {
    uint64_t sum = litcore::xxh64(fixed.data() + litcore::kHeaderSize, index_size);
    std::memcpy(fixed.data() + 64, &sum, 8);
  }
  uint64_t header_sum = litcore::xxh64(fixed.data(), 120);
  std::memcpy(fixed.data() + 120, &header_sum, 8);
  parse(fixed.data(), fixed.size());
  return 0;
}
