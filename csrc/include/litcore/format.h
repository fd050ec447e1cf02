// Format v1 of the litcore weight file: constants, the parsed index, and the
// (de)serialisation of header and index. docs/format.md documents the bytes.
// Nothing here knows about torch: the parser is fuzzed on its own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "litcore/dtype.h"

namespace litcore {

constexpr char kMagic[8] = {'L', 'I', 'T', 'C', 'O', 'R', 'E', '\0'};
constexpr uint32_t kFormatVersion = 1;
constexpr uint64_t kAlignment = 4096;   // every tensor's data starts at a multiple of this
constexpr uint64_t kHeaderSize = 4096;  // the header occupies the first page
constexpr size_t kHeaderUsedBytes = 128;

// Limits a reader enforces before allocating anything (documented in docs/format.md).
constexpr uint64_t kMaxIndexBytes = 256ull << 20;  // 256 MiB
constexpr uint32_t kMaxTensors = 1u << 24;
constexpr uint32_t kMaxMetadataEntries = 1u << 20;
constexpr uint32_t kMaxNameBytes = 64u << 10;  // 64 KiB
constexpr uint32_t kMaxNdim = 64;
constexpr uint32_t kNoAlias = 0xFFFFFFFFu;

struct TensorInfo {
  std::string name;
  DType dtype = DType::Float32;
  std::vector<int64_t> shape;
  uint64_t offset = 0;  // absolute byte offset in the file
  uint64_t nbytes = 0;
  uint64_t checksum = 0;          // xxh64 of the nbytes at offset
  int64_t alias_of = -1;          // index of the stored tensor this name shares, or -1
  int64_t numel() const;
};

struct FileIndex {
  uint32_t version = kFormatVersion;
  uint64_t file_size = 0;
  uint64_t data_offset = 0;
  uint64_t data_size = 0;
  std::vector<TensorInfo> tensors;  // in file order
  std::map<std::string, std::string> metadata;
  std::unordered_map<std::string, size_t> by_name;

  const TensorInfo* find(const std::string& name) const;
};

// Parses and validates header + index from the first `size` bytes of a file (the whole
// file, mapped). Trusts nothing: every count, length, offset and shape is checked for
// bounds and overflow before use. Throws FormatError naming `path` (and the tensor).
FileIndex parse_file(const uint8_t* data, uint64_t size, const std::string& path);

// The bytes from the start of a file of `size` bytes that its header and index take, as the
// header at `data` says, within the file and the format's limits (unchecked otherwise:
// parse_file() checks it). Reads only the header's first page.
uint64_t header_and_index_bytes(const uint8_t* data, uint64_t size);

// ---- writing --------------------------------------------------------------------------

// What a writer knows about a tensor before its data arrives.
struct TensorSpec {
  std::string name;
  DType dtype = DType::Float32;
  std::vector<int64_t> shape;
  int64_t alias_of = -1;  // index of an earlier, non-alias spec with the same data
};

// Assigns aligned offsets to the specs (in order) and returns the index with checksums
// still zero. Throws std::invalid_argument for bad specs (duplicate names, bad alias...).
FileIndex plan_layout(const std::vector<TensorSpec>& specs,
                      const std::map<std::string, std::string>& metadata);

// Serialises the index section (tensor records, then metadata records).
std::vector<uint8_t> serialize_index(const FileIndex& index);
// Serialises the 4096-byte header for `index` whose serialized index is `index_bytes`.
std::vector<uint8_t> serialize_header(const FileIndex& index, const std::vector<uint8_t>& index_bytes);

inline uint64_t align_up(uint64_t value, uint64_t alignment = kAlignment) {
  return (value + alignment - 1) / alignment * alignment;
}

}  // namespace litcore
