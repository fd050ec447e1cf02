#include "litcore/format.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <unordered_set>

#include "litcore/checksum.h"
#include "litcore/errors.h"

namespace litcore {
namespace {

static_assert(sizeof(uint64_t) == 8, "64-bit integers required");
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "format v1 is little-endian; big-endian hosts are not supported"
#endif

// Header field offsets (docs/format.md, "Header").
constexpr size_t kOffVersion = 8;
constexpr size_t kOffAlignment = 12;
constexpr size_t kOffFileSize = 16;
constexpr size_t kOffIndexOffset = 24;
constexpr size_t kOffIndexSize = 32;
constexpr size_t kOffDataOffset = 40;
constexpr size_t kOffDataSize = 48;
constexpr size_t kOffTensorCount = 56;
constexpr size_t kOffMetadataCount = 60;
constexpr size_t kOffIndexChecksum = 64;
constexpr size_t kOffHeaderChecksum = 120;
constexpr size_t kMinTensorRecord = 4 + 1 + 1 + 2 + 4 + 3 * 8;
constexpr size_t kMinMetadataRecord = 4 + 4;

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

template <typename T>
void store(std::vector<uint8_t>& out, size_t at, T v) {
  std::memcpy(out.data() + at, &v, sizeof(T));
}

template <typename T>
void append(std::vector<uint8_t>& out, T v) {
  size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}

void append_bytes(std::vector<uint8_t>& out, const std::string& s) {
  out.insert(out.end(), s.begin(), s.end());
}

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw FormatError("litcore: '" + path + "': " + what);
}

[[noreturn]] void fail_tensor(const std::string& path, const std::string& tensor,
                              const std::string& what) {
  fail(path, "tensor '" + tensor + "': " + what);
}

// Bounds-checked reader over the index section.
class Cursor {
 public:
  Cursor(const uint8_t* data, uint64_t size, const std::string& path)
      : data_(data), size_(size), path_(path) {}

  template <typename T>
  T read(const char* field) {
    need(sizeof(T), field);
    T v = load<T>(data_ + pos_);
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(uint64_t n, const char* field) {
    need(n, field);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return s;
  }
  uint64_t remaining() const { return size_ - pos_; }

 private:
  void need(uint64_t n, const char* field) {
    if (n > size_ - pos_) {
      fail(path_, std::string("index is truncated while reading ") + field + " (needs " +
                      std::to_string(n) + " bytes at index byte " + std::to_string(pos_) +
                      ", " + std::to_string(size_ - pos_) + " left)");
    }
  }
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string& path_;
};

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// numel * itemsize, or false on overflow / negative dims.
bool checked_nbytes(const std::vector<int64_t>& shape, size_t itemsize, uint64_t* out) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  }
  if (n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
  return !__builtin_mul_overflow(n, static_cast<uint64_t>(itemsize), out);
}

// Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF): names and metadata
// must decode in every binding.
bool valid_utf8(const std::string& s) {
  size_t i = 0, n = s.size();
  while (i < n) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += len;
  }
  return true;
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

const TensorInfo* FileIndex::find(const std::string& name) const {
  auto it = by_name.find(name);
  return it == by_name.end() ? nullptr : &tensors[it->second];
}

uint64_t header_and_index_bytes(const uint8_t* data, uint64_t size) {
  if (size < kOffIndexSize + sizeof(uint64_t)) return std::min(size, kHeaderSize);
  uint64_t index_size = 0;
  std::memcpy(&index_size, data + kOffIndexSize, sizeof index_size);
  return std::min(size, kHeaderSize + std::min(index_size, kMaxIndexBytes));
}

FileIndex parse_file(const uint8_t* data, uint64_t size, const std::string& path) {
  if (size < kHeaderSize) {
    fail(path, "truncated: the file is " + std::to_string(size) + " bytes, the header alone is " +
                   std::to_string(kHeaderSize));
  }
  if (std::memcmp(data, kMagic, sizeof(kMagic)) != 0) {
    fail(path, "not a litcore weight file (bad magic)");
  }
  FileIndex index;
  index.version = load<uint32_t>(data + kOffVersion);
  if (index.version != kFormatVersion) {
    fail(path, "unsupported format version " + std::to_string(index.version) +
                   " (this litcore reads version " + std::to_string(kFormatVersion) + ")");
  }
  if (xxh64(data, kOffHeaderChecksum) != load<uint64_t>(data + kOffHeaderChecksum)) {
    fail(path, "header checksum mismatch (the header is corrupt)");
  }
  uint32_t alignment = load<uint32_t>(data + kOffAlignment);
  if (alignment != kAlignment) {
    fail(path, "unsupported alignment " + std::to_string(alignment));
  }
  index.file_size = load<uint64_t>(data + kOffFileSize);
  if (index.file_size != size) {
    fail(path, (size < index.file_size ? "truncated: " : "size mismatch: ") +
                   std::string("the header says ") + std::to_string(index.file_size) +
                   " bytes, the file has " + std::to_string(size));
  }
  uint64_t index_offset = load<uint64_t>(data + kOffIndexOffset);
  uint64_t index_size = load<uint64_t>(data + kOffIndexSize);
  index.data_offset = load<uint64_t>(data + kOffDataOffset);
  index.data_size = load<uint64_t>(data + kOffDataSize);
  uint32_t tensor_count = load<uint32_t>(data + kOffTensorCount);
  uint32_t metadata_count = load<uint32_t>(data + kOffMetadataCount);
  if (index_offset != kHeaderSize) fail(path, "index offset " + std::to_string(index_offset) + " is not " + std::to_string(kHeaderSize));
  if (index_size > kMaxIndexBytes) {
    fail(path, "index of " + std::to_string(index_size) + " bytes exceeds the limit of " +
                   std::to_string(kMaxIndexBytes));
  }
  if (index_size > size - index_offset) {
    fail(path, "index (" + std::to_string(index_size) + " bytes) runs past the end of the file");
  }
  if (index.data_offset != align_up(index_offset + index_size) || index.data_offset > size) {
    fail(path, "data offset " + std::to_string(index.data_offset) + " is not where the index ends, aligned");
  }
  if (index.data_size != size - index.data_offset) {
    fail(path, "data size " + std::to_string(index.data_size) + " does not match the file");
  }
  if (tensor_count > kMaxTensors) {
    fail(path, std::to_string(tensor_count) + " tensors exceeds the limit of " + std::to_string(kMaxTensors));
  }
  if (metadata_count > kMaxMetadataEntries) {
    fail(path, std::to_string(metadata_count) + " metadata entries exceeds the limit of " +
                   std::to_string(kMaxMetadataEntries));
  }
  if (static_cast<uint64_t>(tensor_count) * kMinTensorRecord +
          static_cast<uint64_t>(metadata_count) * kMinMetadataRecord > index_size) {
    fail(path, "index is too small for " + std::to_string(tensor_count) + " tensors and " +
                   std::to_string(metadata_count) + " metadata entries");
  }
  const uint8_t* index_bytes = data + index_offset;
  if (xxh64(index_bytes, index_size) != load<uint64_t>(data + kOffIndexChecksum)) {
    fail(path, "index checksum mismatch (the index is corrupt)");
  }

  Cursor cur(index_bytes, index_size, path);
  index.tensors.reserve(tensor_count);
  index.by_name.reserve(tensor_count);
  uint64_t end_of_previous = index.data_offset;
  for (uint32_t i = 0; i < tensor_count; ++i) {
    TensorInfo t;
    uint32_t name_len = cur.read<uint32_t>("a tensor name length");
    if (name_len == 0 || name_len > kMaxNameBytes) {
      fail(path, "tensor #" + std::to_string(i) + ": name length " + std::to_string(name_len) +
                     " is outside 1.." + std::to_string(kMaxNameBytes));
    }
    t.name = cur.read_string(name_len, "a tensor name");
    if (!valid_utf8(t.name)) fail(path, "tensor #" + std::to_string(i) + ": name is not valid UTF-8");
    uint8_t code = cur.read<uint8_t>("a dtype");
    uint8_t ndim = cur.read<uint8_t>("a rank");
    uint16_t flags = cur.read<uint16_t>("tensor flags");
    uint32_t alias = cur.read<uint32_t>("an alias");
    if (!dtype_code_valid(code)) fail_tensor(path, t.name, "unknown dtype code " + std::to_string(code));
    if (ndim > kMaxNdim) fail_tensor(path, t.name, "rank " + std::to_string(ndim) + " exceeds " + std::to_string(kMaxNdim));
    if (flags != 0) fail_tensor(path, t.name, "unknown flags " + std::to_string(flags));
    t.dtype = static_cast<DType>(code);
    t.shape.resize(ndim);
    for (auto& d : t.shape) d = cur.read<int64_t>("a dimension");
    t.offset = cur.read<uint64_t>("a data offset");
    t.nbytes = cur.read<uint64_t>("a byte length");
    t.checksum = cur.read<uint64_t>("a checksum");
    if (!index.by_name.emplace(t.name, i).second) fail_tensor(path, t.name, "appears twice in the index");
    uint64_t expected = 0;
    if (!checked_nbytes(t.shape, dtype_itemsize(t.dtype), &expected)) {
      fail_tensor(path, t.name, "shape " + shape_string(t.shape) + " is negative or overflows");
    }
    if (expected != t.nbytes) {
      fail_tensor(path, t.name, "byte length " + std::to_string(t.nbytes) + " does not match " +
                                    dtype_name(t.dtype) + " " + shape_string(t.shape) + " (" +
                                    std::to_string(expected) + " bytes)");
    }
    if (alias != kNoAlias) {
      if (alias >= i) fail_tensor(path, t.name, "alias of tensor #" + std::to_string(alias) + " which does not precede it");
      const TensorInfo& target = index.tensors[alias];
      if (target.alias_of >= 0) fail_tensor(path, t.name, "alias of an alias ('" + target.name + "')");
      if (target.dtype != t.dtype || target.shape != t.shape || target.offset != t.offset ||
          target.nbytes != t.nbytes || target.checksum != t.checksum) {
        fail_tensor(path, t.name, "alias record differs from its target '" + target.name + "'");
      }
      t.alias_of = alias;
    } else {
      if (t.offset % kAlignment != 0) {
        fail_tensor(path, t.name, "data offset " + std::to_string(t.offset) + " is not " +
                                      std::to_string(kAlignment) + "-byte aligned");
      }
      if (t.offset < end_of_previous) {
        fail_tensor(path, t.name, "data offset " + std::to_string(t.offset) +
                                      " overlaps the index or the previous tensor");
      }
      uint64_t end = 0;
      if (__builtin_add_overflow(t.offset, t.nbytes, &end) || end > size) {
        fail_tensor(path, t.name, "data [" + std::to_string(t.offset) + ", +" + std::to_string(t.nbytes) +
                                      ") runs past the end of the file (" + std::to_string(size) + " bytes)");
      }
      end_of_previous = end;
    }
    index.tensors.push_back(std::move(t));
  }
  for (uint32_t i = 0; i < metadata_count; ++i) {
    uint32_t klen = cur.read<uint32_t>("a metadata key length");
    std::string key = cur.read_string(klen, "a metadata key");
    uint32_t vlen = cur.read<uint32_t>("a metadata value length");
    std::string value = cur.read_string(vlen, "a metadata value");
    if (!valid_utf8(key) || !valid_utf8(value)) fail(path, "metadata entry #" + std::to_string(i) + " is not valid UTF-8");
    if (!index.metadata.emplace(std::move(key), std::move(value)).second) {
      fail(path, "metadata key appears twice");
    }
  }
  if (cur.remaining() != 0) {
    fail(path, std::to_string(cur.remaining()) + " unexpected bytes at the end of the index");
  }
  return index;
}

FileIndex plan_layout(const std::vector<TensorSpec>& specs,
                      const std::map<std::string, std::string>& metadata) {
  if (specs.size() > kMaxTensors) throw std::invalid_argument("too many tensors");
  FileIndex index;
  index.metadata = metadata;
  index.tensors.reserve(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& s = specs[i];
    TensorInfo t;
    t.name = s.name;
    t.dtype = s.dtype;
    t.shape = s.shape;
    if (s.name.empty() || s.name.size() > kMaxNameBytes) {
      throw std::invalid_argument("tensor name '" + s.name.substr(0, 80) + "' must be 1.." +
                                  std::to_string(kMaxNameBytes) + " bytes");
    }
    if (s.shape.size() > kMaxNdim) throw std::invalid_argument("tensor '" + s.name + "': rank exceeds 64");
    if (!checked_nbytes(s.shape, dtype_itemsize(s.dtype), &t.nbytes)) {
      throw std::invalid_argument("tensor '" + s.name + "': invalid shape " + shape_string(s.shape));
    }
    if (s.alias_of >= 0) {
      if (static_cast<size_t>(s.alias_of) >= i || specs[s.alias_of].alias_of >= 0) {
        throw std::invalid_argument("tensor '" + s.name + "': alias must name an earlier stored tensor");
      }
      const TensorSpec& target = specs[s.alias_of];
      if (target.dtype != s.dtype || target.shape != s.shape) {
        throw std::invalid_argument("tensor '" + s.name + "': alias of '" + target.name + "' with another dtype or shape");
      }
      t.alias_of = s.alias_of;
    }
    if (!index.by_name.emplace(s.name, i).second) {
      throw std::invalid_argument("tensor name '" + s.name + "' appears twice");
    }
    index.tensors.push_back(std::move(t));
  }
  uint64_t index_size = serialize_index(index).size();
  if (index_size > kMaxIndexBytes) throw std::invalid_argument("index exceeds 256 MiB");
  index.data_offset = align_up(kHeaderSize + index_size);
  uint64_t cursor = index.data_offset;
  for (auto& t : index.tensors) {
    if (t.alias_of >= 0) continue;
    t.offset = align_up(cursor);
    cursor = t.offset + t.nbytes;
  }
  for (auto& t : index.tensors) {
    if (t.alias_of >= 0) t.offset = index.tensors[t.alias_of].offset;
  }
  index.file_size = align_up(cursor);
  index.data_size = index.file_size - index.data_offset;
  return index;
}

std::vector<uint8_t> serialize_index(const FileIndex& index) {
  std::vector<uint8_t> out;
  for (const auto& t : index.tensors) {
    append<uint32_t>(out, static_cast<uint32_t>(t.name.size()));
    append_bytes(out, t.name);
    append<uint8_t>(out, static_cast<uint8_t>(t.dtype));
    append<uint8_t>(out, static_cast<uint8_t>(t.shape.size()));
    append<uint16_t>(out, 0);
    append<uint32_t>(out, t.alias_of >= 0 ? static_cast<uint32_t>(t.alias_of) : kNoAlias);
    for (int64_t d : t.shape) append<int64_t>(out, d);
    append<uint64_t>(out, t.offset);
    append<uint64_t>(out, t.nbytes);
    append<uint64_t>(out, t.checksum);
  }
  for (const auto& kv : index.metadata) {
    append<uint32_t>(out, static_cast<uint32_t>(kv.first.size()));
    append_bytes(out, kv.first);
    append<uint32_t>(out, static_cast<uint32_t>(kv.second.size()));
    append_bytes(out, kv.second);
  }
  return out;
}

std::vector<uint8_t> serialize_header(const FileIndex& index, const std::vector<uint8_t>& index_bytes) {
  std::vector<uint8_t> out(kHeaderSize, 0);
  std::memcpy(out.data(), kMagic, sizeof(kMagic));
  store<uint32_t>(out, kOffVersion, kFormatVersion);
  store<uint32_t>(out, kOffAlignment, static_cast<uint32_t>(kAlignment));
  store<uint64_t>(out, kOffFileSize, index.file_size);
  store<uint64_t>(out, kOffIndexOffset, kHeaderSize);
  store<uint64_t>(out, kOffIndexSize, index_bytes.size());
  store<uint64_t>(out, kOffDataOffset, index.data_offset);
  store<uint64_t>(out, kOffDataSize, index.data_size);
  store<uint32_t>(out, kOffTensorCount, static_cast<uint32_t>(index.tensors.size()));
  store<uint32_t>(out, kOffMetadataCount, static_cast<uint32_t>(index.metadata.size()));
  store<uint64_t>(out, kOffIndexChecksum, xxh64(index_bytes.data(), index_bytes.size()));
  store<uint64_t>(out, kOffHeaderChecksum, xxh64(out.data(), kOffHeaderChecksum));
  return out;
}

}  // namespace litcore
