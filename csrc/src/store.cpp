#include "litcore/store.h"

#include <algorithm>

#include "litcore/aten_dtype.h"
#include "litcore/checksum.h"
#include "litcore/errors.h"

namespace litcore {

Store::Store(const std::string& path, Verify verify)
    : path_(path), mapping_(std::make_shared<Mapping>(path)), verify_mode_(verify) {
  read_header_and_index();
  index_ = parse_file(mapping_->addr(), mapping_->size(), path_);
  verified_.reset(new std::atomic<bool>[index_.tensors.size()]);
  handed_out_.resize(index_.tensors.size());
  for (size_t i = 0; i < index_.tensors.size(); ++i) verified_[i] = false;
  if (verify == Verify::Full) {
    auto bad = verify_all();
    if (!bad.empty()) {
      std::string names;
      for (size_t i = 0; i < bad.size() && i < 20; ++i) names += (i ? ", '" : "'") + bad[i] + "'";
      if (bad.size() > 20) names += ", ...";
      throw FormatError("litcore: '" + path_ + "': checksum mismatch in " + std::to_string(bad.size()) +
                        " tensor(s): " + names);
    }
  }
}

Store::~Store() = default;

void Store::read_header_and_index() {
  // Without readahead: a parse that faults the header in reads megabytes of weights around
  // it in large page-cache folios, marked so that reading on from them keeps reading ahead
  // even through the warm-up's descriptor whose readahead is off (docs/benchmarks.md, "The
  // cold start in small page-cache folios"). parse_file() checks what these bytes say.
  mapping_->fill_cache_exact(0, kHeaderSize);
  uint64_t through = header_and_index_bytes(mapping_->addr(), mapping_->size());
  if (through > kHeaderSize) mapping_->fill_cache_exact(kHeaderSize, through - kHeaderSize);
}

std::vector<std::string> Store::keys() const {
  std::vector<std::string> out;
  out.reserve(index_.tensors.size());
  for (const auto& t : index_.tensors) out.push_back(t.name);
  return out;
}

bool Store::contains(const std::string& name) const { return index_.find(name) != nullptr; }

size_t Store::size() const { return index_.tensors.size(); }

const TensorInfo& Store::info(const std::string& name) const {
  const TensorInfo* t = index_.find(name);
  if (!t) throw KeyError("litcore: no tensor '" + name + "' in '" + path_ + "'");
  return *t;
}

const std::shared_ptr<Mapping>& Store::mapping() const {
  if (!mapping_) throw Error("litcore: store '" + path_ + "' is closed");
  return mapping_;
}

void Store::check_lazy(size_t i) const {
  if (verify_mode_ != Verify::Lazy || verified_[i].load(std::memory_order_acquire)) return;
  const TensorInfo& t = index_.tensors[i];
  if (xxh64(mapping()->addr() + t.offset, t.nbytes) != t.checksum) {
    throw FormatError("litcore: '" + path_ + "': tensor '" + t.name + "': checksum mismatch (the data is corrupt)");
  }
  verified_[i].store(true, std::memory_order_release);
}

at::Tensor Store::get(const std::string& name) const {
  const TensorInfo& t = info(name);
  const auto& m = mapping();
  m->check_faults();
  size_t stored = stored_index(name);
  check_lazy(stored);
  auto options = at::TensorOptions().dtype(to_scalar_type(t.dtype)).device(at::kCPU);
  if (t.nbytes == 0) return at::empty(t.shape, options);
  // The deleter owns a reference to the mapping: the tensor outlives the store.
  std::shared_ptr<Mapping> keep = m;
  at::Tensor tensor = at::from_blob(m->addr() + t.offset, t.shape, [keep](void*) mutable { keep.reset(); }, options);
  std::lock_guard<std::mutex> lock(handed_out_mu_);
  auto& storages = handed_out_[stored].storages;
  storages.erase(std::remove_if(storages.begin(), storages.end(), [](const auto& w) { return w.expired(); }),
                 storages.end());
  storages.push_back(tensor.storage().getWeakStorageImpl());
  return tensor;
}

size_t Store::stored_index(const std::string& name) const {
  const TensorInfo& t = info(name);
  return t.alias_of >= 0 ? static_cast<size_t>(t.alias_of) : index_.by_name.at(name);
}

void Store::point_at(const std::string& name, uint8_t* data) {
  size_t stored = stored_index(name);
  std::lock_guard<std::mutex> lock(handed_out_mu_);
  HandedOut& h = handed_out_[stored];
  if (h.pointed++ > 0) return;
  for (const auto& weak : h.storages) {
    c10::intrusive_ptr<c10::StorageImpl> storage = weak.lock();
    if (!storage) continue;
    c10::DataPtr mapped = storage->set_data_ptr(c10::DataPtr(data, c10::Device(c10::kCPU)));
    h.saved.emplace_back(std::move(storage), std::move(mapped));
  }
}

void Store::point_back(const std::string& name) {
  size_t stored = stored_index(name);
  std::lock_guard<std::mutex> lock(handed_out_mu_);
  HandedOut& h = handed_out_[stored];
  if (h.pointed == 0 || --h.pointed > 0) return;
  for (auto& [storage, mapped] : h.saved) storage->set_data_ptr(std::move(mapped));
  h.saved.clear();
}

std::vector<std::pair<uint64_t, uint64_t>> Store::byte_ranges(const std::vector<std::string>& names) const {
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& n : names) {
    const TensorInfo& t = info(n);
    if (t.nbytes > 0) ranges.emplace_back(t.offset, t.nbytes);
  }
  std::sort(ranges.begin(), ranges.end());
  std::vector<std::pair<uint64_t, uint64_t>> merged;
  for (const auto& [offset, length] : ranges) {
    if (!merged.empty() && offset <= align_up(merged.back().first + merged.back().second)) {
      uint64_t end = std::max(merged.back().first + merged.back().second, offset + length);
      merged.back().second = end - merged.back().first;
    } else {
      merged.emplace_back(offset, length);
    }
  }
  return merged;
}

void Store::prefetch(const std::vector<std::string>& names) const {
  const auto& m = mapping();
  for (const auto& n : names) {
    const TensorInfo& t = info(n);
    m->willneed(t.offset, t.nbytes);
  }
}

void Store::release(const std::vector<std::string>& names) const {
  const auto& m = mapping();
  for (const auto& n : names) {
    const TensorInfo& t = info(n);
    m->release(t.offset, t.nbytes);
  }
}

bool Store::verify(const std::string& name) const {
  const TensorInfo& t = info(name);
  return xxh64(mapping()->addr() + t.offset, t.nbytes) == t.checksum;
}

void Store::verify_once(const std::vector<std::string>& names, bool release_behind) const {
  constexpr uint64_t kStep = 8ull << 20;
  const auto& m = mapping();
  for (const auto& name : names) {
    const TensorInfo& t = info(name);
    size_t stored = t.alias_of >= 0 ? static_cast<size_t>(t.alias_of) : index_.by_name.at(name);
    if (verified_[stored].load(std::memory_order_acquire)) continue;
    const TensorInfo& s = index_.tensors[stored];
    Xxh64 h;
    for (uint64_t done = 0; done < s.nbytes; done += kStep) {
      uint64_t step = std::min(kStep, s.nbytes - done);
      // Weights read by lookup fault only the touched page (random-access advice): read
      // them in large requests first, or hashing would fault them in 4 KiB at a time.
      if (release_behind) m->fill_cache(s.offset + done, step);
      h.update(m->addr() + s.offset + done, step);
      if (release_behind) m->release(s.offset + done, step);
    }
    if (h.digest() != s.checksum) {
      throw FormatError("litcore: '" + path_ + "': tensor '" + s.name + "': checksum mismatch (the data is corrupt)");
    }
    verified_[stored].store(true, std::memory_order_release);
  }
}

std::vector<std::string> Store::verify_all(const std::function<void(uint64_t)>& progress) const {
  std::vector<std::string> bad;
  const auto& m = mapping();
  for (size_t i = 0; i < index_.tensors.size(); ++i) {
    const TensorInfo& t = index_.tensors[i];
    if (t.alias_of >= 0) continue;
    // Hash in 64 MiB steps so progress moves and big files are dropped behind.
    Xxh64 h;
    uint64_t done = 0;
    while (done < t.nbytes) {
      uint64_t step = std::min<uint64_t>(t.nbytes - done, 64ull << 20);
      h.update(m->addr() + t.offset + done, step);
      m->release(t.offset + done, step);  // a file larger than memory is checked within it
      done += step;
      if (progress) progress(step);
    }
    if (h.digest() != t.checksum) {
      bad.push_back(t.name);
    } else {
      verified_[i] = true;
    }
  }
  return bad;
}

void Store::close() { mapping_.reset(); }

}  // namespace litcore
