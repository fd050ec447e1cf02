// The store: an opened weight file handing out zero-copy tensors.
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <string>
#include <vector>

#include "litcore/format.h"
#include "litcore/mapping.h"

namespace litcore {

enum class Verify {
  None,  // header and index checksums only (always checked)
  Full,  // every tensor's checksum on open
  Lazy,  // each tensor's checksum the first time get() returns it
};

class Store {
 public:
  // Opens and validates `path`. Throws IOError or FormatError naming the file.
  explicit Store(const std::string& path, Verify verify = Verify::None);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  const std::string& path() const { return path_; }
  std::vector<std::string> keys() const;
  bool contains(const std::string& name) const;
  size_t size() const;
  // Throws KeyError naming the tensor and the file.
  const TensorInfo& info(const std::string& name) const;
  const FileIndex& index() const { return index_; }
  const std::map<std::string, std::string>& metadata() const { return index_.metadata; }

  // A CPU tensor whose memory is the file's mapping (no copy). It stays valid after the
  // store is closed or destroyed: each tensor holds a reference to the mapping.
  at::Tensor get(const std::string& name) const;

  // While a streamed module runs from the prefetch window's buffer (read_mode="buffer"):
  // every tensor get() has handed out for `name` reads `data` (the same bytes, read there with
  // direct reads) instead of the mapping, until point_back(name). Their storages' pointers
  // move, not the tensors: every view and parameter made from them follows, and autograd's
  // saved tensors read the mapping again once the module has run. Counted: nested calls
  // point back at the last one. Thread-safe.
  void point_at(const std::string& name, uint8_t* data);
  void point_back(const std::string& name);
  // The file byte ranges holding `names` (aliases resolved, each stored tensor once,
  // neighbours merged), in file order.
  std::vector<std::pair<uint64_t, uint64_t>> byte_ranges(const std::vector<std::string>& names) const;

  void prefetch(const std::vector<std::string>& names) const;
  void release(const std::vector<std::string>& names) const;

  // Checks one tensor's checksum; true when it matches.
  bool verify(const std::string& name) const;
  // Checks the checksum of each of `names` not checked before (thread-safe; reads the
  // bytes through the mapping). With `release_behind`, each 8 MiB read is dropped from
  // memory once hashed (for weights that are not meant to stay resident). Throws
  // FormatError naming the file and the first tensor that fails.
  void verify_once(const std::vector<std::string>& names, bool release_behind = false) const;
  // Checks every stored tensor; returns the names that fail. `progress` gets bytes done.
  std::vector<std::string> verify_all(const std::function<void(uint64_t)>& progress = {}) const;

  // Unmaps the file once the last tensor is gone; further get() calls throw.
  void close();
  bool closed() const { return mapping_ == nullptr; }
  // The mapping, for the prefetcher. Throws if closed.
  const std::shared_ptr<Mapping>& mapping() const;

 private:
  // Brings the header and index into the page cache before parse_file() reads them.
  void read_header_and_index();
  void check_lazy(size_t i) const;

  std::string path_;
  std::shared_ptr<Mapping> mapping_;
  FileIndex index_;
  Verify verify_mode_;
  std::unique_ptr<std::atomic<bool>[]> verified_;
  // Per stored tensor: the storages get() handed out (weakly held), and while pointed at a
  // buffer the pointers to the mapping they had.
  struct HandedOut {
    std::vector<c10::weak_intrusive_ptr<c10::StorageImpl>> storages;
    int pointed = 0;
    std::vector<std::pair<c10::intrusive_ptr<c10::StorageImpl>, c10::DataPtr>> saved;
  };
  size_t stored_index(const std::string& name) const;
  mutable std::mutex handed_out_mu_;
  mutable std::vector<HandedOut> handed_out_;
};

}  // namespace litcore
