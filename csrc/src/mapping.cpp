// POSIX implementation of Mapping (Linux first; advice that is missing elsewhere is skipped).
#include "litcore/mapping.h"

#include <fcntl.h>
#include <sys/sysmacros.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "litcore/errors.h"
#include "litcore/fault_guard.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22  // Linux 5.14; older kernels answer EINVAL and we touch pages
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

namespace litcore {
namespace {

constexpr uint64_t kLargestFolio = 2ull << 20;  // PMD size on x86-64 and arm64 (4 KiB pages)

// The readahead window of the block device holding a file (its read_ahead_kb; a partition
// reads its disk's). 8 MiB, a large setting, where sysfs does not say (a network or
// stacked file system).
uint64_t readahead_window_of(dev_t device) {
  std::string id = std::to_string(major(device)) + ":" + std::to_string(minor(device));
  for (const char* suffix : {"/bdi/read_ahead_kb", "/../bdi/read_ahead_kb"}) {
    std::ifstream f("/sys/dev/block/" + id + suffix);
    uint64_t kb = 0;
    if (f >> kb && kb > 0) return kb << 10;
  }
  return 8ull << 20;
}

uint64_t page_size() {
  static const uint64_t size = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  return size;
}

// Direct reads are cut into requests of this size: long enough for the disk's queue, short
// enough that an error names a narrow range.
constexpr uint64_t kDirectRead = 16ull << 20;

// New anonymous memory of `len` bytes at a huge-page boundary, advised for huge pages: a
// direct read into 2 MiB pages is one long scatter list (2.0 GB/s against 0.8-1.4 into 4 KiB
// pages, same disk). Throws IOError "no memory for `len` bytes of `what` '`path`'".
uint8_t* huge_page_block(uint64_t len, const std::string& what, const std::string& path) {
  void* p = mmap(nullptr, static_cast<size_t>(len + kLargestFolio), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    int err = errno;
    throw IOError(errno_message("litcore: no memory for " + std::to_string(len) + " bytes of " + what, path, err), err);
  }
  auto* raw = static_cast<uint8_t*>(p);
  auto* block = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw) + kLargestFolio - 1) / kLargestFolio *
                                           kLargestFolio);
  if (block > raw) munmap(raw, static_cast<size_t>(block - raw));
  if (raw + kLargestFolio > block) munmap(block + len, static_cast<size_t>(raw + kLargestFolio - block));
#ifdef MADV_HUGEPAGE
  madvise(block, static_cast<size_t>(len), MADV_HUGEPAGE);  // advice only: 4 KiB pages work too
#endif
  return block;
}

void warn(const char* what, const std::string& path, int err) {
  std::fprintf(stderr, "litcore: warning: %s '%s': %s\n", what, path.c_str(), std::strerror(err));
}

}  // namespace

struct Mapping::Impl {
  std::string path;
  int fd = -1;
  uint8_t* addr = nullptr;
  uint64_t size = 0;
  std::atomic<bool> populate_supported{true};
  std::atomic<bool> sendfile_supported{true};
  int null_fd = -1;  // /dev/null, the sink of fill_cache's sendfile
  int exact_fd = -1;  // the file again, readahead off: fill_cache_exact
  uint64_t readahead_window = 8ull << 20;
  std::unique_ptr<FaultGuard> guard;  // survives the file shrinking under the mapping
  int direct_fd = -1;  // the file again, O_DIRECT: place()
  std::atomic<bool> direct_supported{false};
  // Placed ranges: offset -> length.
  mutable std::mutex placed_mu;
  std::map<uint64_t, uint64_t> placed;
  uint64_t placed_total = 0;
  // Memory prepared for a later place(): offset -> (block, page-rounded length). Under placed_mu.
  std::map<uint64_t, std::pair<uint8_t*, uint64_t>> prepared;

  uint8_t* new_block(uint64_t len) const { return huge_page_block(len, "streamed weights of", path); }

  // The page-rounded length place() and prepare() take for [offset, offset + length), or 0
  // where nothing can be placed (no direct reads, an offset off a page or past the end).
  uint64_t placeable_length(uint64_t offset, uint64_t length) const {
    uint64_t ps = page_size();
    if (!direct_supported || length == 0 || offset % ps != 0 || offset >= size) return 0;
    return (std::min(length, size - offset) + ps - 1) / ps * ps;
  }

  // The block prepared for exactly [offset, offset + len), taken out of `prepared`; nullptr
  // when there is none. Under placed_mu.
  uint8_t* take_prepared_locked(uint64_t offset, uint64_t len) {
    auto it = prepared.find(offset);
    if (it == prepared.end()) return nullptr;
    auto [block, length] = it->second;
    prepared.erase(it);
    if (length == len) return block;
    munmap(block, static_cast<size_t>(length));
    return nullptr;
  }

  // Frees the prepared blocks starting in [at, at + len). Under placed_mu.
  void discard_prepared_locked(uint64_t at, uint64_t len) {
    for (auto it = prepared.lower_bound(at); it != prepared.end() && it->first < at + len;) {
      munmap(it->second.first, static_cast<size_t>(it->second.second));
      it = prepared.erase(it);
    }
  }

  // Reads [pos, pos + n) with direct reads into `dst`. Returns false if the file system
  // refused the first one (EINVAL); past the end of the file the rest is zeroed.
  bool read_direct(uint8_t* dst, uint64_t n, uint64_t pos) const {
    uint64_t end = pos + n;
    bool first = true;
    while (pos < end) {
      ssize_t got = ::pread(direct_fd, dst, static_cast<size_t>(std::min(kDirectRead, end - pos)), static_cast<off_t>(pos));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0 && errno == EINVAL && first) return false;
      if (got < 0) read_failed(pos, end, errno);
      first = false;
      if (got == 0 || static_cast<uint64_t>(got) % page_size() != 0) {
        // A short read ends the file: the rest of the last page is the page's padding.
        uint64_t at = pos + static_cast<uint64_t>(got);
        if (at < std::min(end, size)) read_failed(at, end, 0);  // the file shrank: truncated while in use
        std::memset(dst + got, 0, static_cast<size_t>(end - at));
        return true;
      }
      pos += static_cast<uint64_t>(got);
      dst += got;
    }
    return true;
  }

  // Maps the file over a placed range again, in one step: an access there from any thread
  // reads the file's bytes before and after, never a hole or zeros. The placed pages are
  // freed (keeping them for the next read would need a step that leaves the range briefly
  // empty: measured 2.2 GB/s against 1.9, but a concurrent reader could see zeros).
  void unplace_locked(uint64_t offset, uint64_t length) {
    void* back = mmap(addr + offset, static_cast<size_t>(length), PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_NORESERVE | MAP_FIXED, fd, static_cast<off_t>(offset));
    if (back == MAP_FAILED) {
      int err = errno;  // the placed pages stay, holding the same bytes
      throw IOError(errno_message("litcore: cannot map the file again over streamed weights of", path, err), err);
    }
  }

  // Reads [offset, end) of `from` into the page cache with 8 MiB preads into a scratch buffer.
  void pread_range(int from, uint64_t offset, uint64_t end) const {
    constexpr uint64_t kChunk = 8ull << 20;
    static thread_local std::unique_ptr<uint8_t[]> scratch(new uint8_t[kChunk]);
    while (offset < end) {
      ssize_t n = ::pread(from, scratch.get(), static_cast<size_t>(std::min(kChunk, end - offset)),
                          static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) read_failed(offset, end, n < 0 ? errno : 0);
      offset += static_cast<uint64_t>(n);
    }
  }

  [[noreturn]] void read_failed(uint64_t offset, uint64_t end, int err) const {
    if (err == 0) {
      throw IOError("litcore: '" + path + "' ended before byte " + std::to_string(end) + " while reading from byte " +
                    std::to_string(offset) + ": it was truncated while in use", EIO);
    }
    throw IOError(errno_message("litcore: reading bytes " + std::to_string(offset) + "-" + std::to_string(end) +
                                " failed for", path, err), err);
  }

  // Clamps [offset, offset+length) to the mapping and widens it to whole pages.
  bool page_range(uint64_t offset, uint64_t length, uint8_t** start, size_t* len) const {
    if (offset >= size || length == 0) return false;
    if (length > size - offset) length = size - offset;
    uint64_t ps = page_size();
    uint64_t first = offset / ps * ps;
    uint64_t last = (offset + length + ps - 1) / ps * ps;
    *start = addr + first;
    *len = static_cast<size_t>(last - first);
    return true;
  }
};

Mapping::Mapping(const std::string& path) : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  impl_->fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (impl_->fd < 0) throw IOError(errno_message("litcore: cannot open", path, errno), errno);
  struct stat st;
  if (fstat(impl_->fd, &st) != 0) {
    int err = errno;
    ::close(impl_->fd);
    throw IOError(errno_message("litcore: cannot stat", path, err), err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(impl_->fd);
    throw IOError("litcore: '" + path + "' is not a regular file");
  }
  impl_->size = static_cast<uint64_t>(st.st_size);
  impl_->readahead_window = readahead_window_of(st.st_dev);
  if (impl_->size == 0) return;  // nothing to map; the parser reports the truncation
  // PROT_WRITE + MAP_PRIVATE: a write into a tensor copies the page instead of faulting
  // or reaching the file. MAP_NORESERVE: the mapping is not charged as if every page
  // might be written, so a file larger than RAM + swap still maps under overcommit rules.
  void* p = mmap(nullptr, impl_->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, impl_->fd, 0);
  if (p == MAP_FAILED) {
    int err = errno;
    ::close(impl_->fd);
    throw IOError(errno_message("litcore: cannot mmap", path, err), err);
  }
  impl_->addr = static_cast<uint8_t*>(p);
  impl_->guard = std::make_unique<FaultGuard>(p, impl_->size, path);
  impl_->null_fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  impl_->exact_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (impl_->exact_fd >= 0) posix_fadvise(impl_->exact_fd, 0, 0, POSIX_FADV_RANDOM);
  if (impl_->null_fd < 0) impl_->sendfile_supported = false;
  impl_->direct_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
  impl_->direct_supported = impl_->direct_fd >= 0;
}

Mapping::~Mapping() {
  impl_->guard.reset();  // before the range can be mapped by someone else
  if (impl_->null_fd >= 0) ::close(impl_->null_fd);
  if (impl_->exact_fd >= 0) ::close(impl_->exact_fd);
  if (impl_->direct_fd >= 0) ::close(impl_->direct_fd);
  discard_prepared();
  if (impl_->addr) munmap(impl_->addr, impl_->size);  // placed pages with it
  if (impl_->fd >= 0) ::close(impl_->fd);
}

const std::string& Mapping::path() const { return impl_->path; }
uint8_t* Mapping::addr() const { return impl_->addr; }
uint64_t Mapping::size() const { return impl_->size; }

void Mapping::check_faults() const {
  if (impl_->guard) impl_->guard->check();
}

void Mapping::willneed(uint64_t offset, uint64_t length) const {
  advise(offset, length, MADV_WILLNEED, "madvise(WILLNEED)");
}

void Mapping::advise(uint64_t offset, uint64_t length, int advice, const char* what) const {
  uint8_t* start;
  size_t len;
  if (!impl_->page_range(offset, length, &start, &len)) return;
  if (madvise(start, len, advice) != 0) warn(what, impl_->path, errno);
}

void Mapping::random_access(uint64_t offset, uint64_t length) const {
  advise(offset, length, MADV_RANDOM, "madvise(RANDOM)");
}

void Mapping::sequential_access(uint64_t offset, uint64_t length) const {
  advise(offset, length, MADV_SEQUENTIAL, "madvise(SEQUENTIAL)");
}

void Mapping::normal_access(uint64_t offset, uint64_t length) const {
  advise(offset, length, MADV_NORMAL, "madvise(NORMAL)");
}

void Mapping::fill_cache(uint64_t offset, uint64_t length, bool copy) const {
  if (offset >= impl_->size || length == 0) return;
  length = std::min(length, impl_->size - offset);
  uint64_t end = offset + length;
  if (!copy && impl_->sendfile_supported) {
    off_t pos = static_cast<off_t>(offset);
    while (static_cast<uint64_t>(pos) < end) {
      ssize_t n = sendfile(impl_->null_fd, impl_->fd, &pos, static_cast<size_t>(std::min<uint64_t>(end - pos, 1ull << 30)));
      if (n > 0) continue;
      if (n == 0) impl_->read_failed(static_cast<uint64_t>(pos), end, 0);
      if (errno == EINTR || errno == EAGAIN) continue;
      if (errno != EINVAL && errno != ENOSYS) impl_->read_failed(static_cast<uint64_t>(pos), end, errno);
      impl_->sendfile_supported = false;  // this kernel cannot splice the file: copy instead
      offset = static_cast<uint64_t>(pos);
      break;
    }
    if (impl_->sendfile_supported) return;
  }
  impl_->pread_range(impl_->fd, offset, end);
}

void Mapping::fill_cache_exact(uint64_t offset, uint64_t length) const {
  if (offset >= impl_->size || length == 0) return;
  if (impl_->exact_fd < 0) return fill_cache(offset, length, true);
  length = std::min(length, impl_->size - offset);
  impl_->pread_range(impl_->exact_fd, offset, offset + length);
}

void Mapping::fill_and_map_small(uint64_t offset, uint64_t length) const {
  if (offset >= impl_->size || length == 0) return;
  length = std::min(length, impl_->size - offset);
  if (impl_->exact_fd < 0) {
    fill_cache_exact(offset, length);
    return populate(offset, length);
  }
  const uint64_t step = std::max<uint64_t>(impl_->readahead_window, 1ull << 20);
  const uint64_t end = offset + length;
  auto queue = [&](uint64_t at) {
    if (at < end) {
      posix_fadvise(impl_->exact_fd, static_cast<off_t>(at), static_cast<off_t>(std::min(step, end - at)),
                    POSIX_FADV_WILLNEED);  // advice: what it does not read, populate() does
    }
  };
  queue(offset);
  for (uint64_t at = offset; at < end; at += step) {
    queue(at + step);
    populate(at, std::min(step, end - at));
  }
}

void Mapping::populate(uint64_t offset, uint64_t length) const {
  uint8_t* start;
  size_t len;
  if (!impl_->page_range(offset, length, &start, &len)) return;
  if (impl_->populate_supported) {
    if (madvise(start, len, MADV_POPULATE_READ) == 0) return;
    int err = errno;
    uint64_t at = static_cast<uint64_t>(start - impl_->addr);
    // EFAULT: part of the range is past the file's end now; EIO/ENOMEM... the read failed.
    if (err == EFAULT) impl_->read_failed(at, at + len, 0);
    if (err == EIO) impl_->read_failed(at, at + len, err);
    if (err == EINVAL) impl_->populate_supported = false;  // an older kernel: touch the pages
  }
  // Fallback: touch one byte per page.
  volatile uint8_t sink = 0;
  for (size_t i = 0; i < len; i += page_size()) sink ^= start[i];
  (void)sink;
}

void Mapping::release(uint64_t offset, uint64_t length) const {
  uint8_t* start;
  size_t len;
  if (!impl_->page_range(offset, length, &start, &len)) return;
  uint64_t at = static_cast<uint64_t>(start - impl_->addr);
  {
    std::lock_guard<std::mutex> lock(impl_->placed_mu);
    uint64_t covered = 0;
    auto it = impl_->placed.lower_bound(at);
    if (it != impl_->placed.begin() && std::prev(it)->first + std::prev(it)->second > at) --it;
    impl_->discard_prepared_locked(at, len);
    while (it != impl_->placed.end() && it->first < at + len) {
      uint64_t first = std::max(it->first, at), last = std::min(it->first + it->second, at + len);
      covered += last - first;
      impl_->unplace_locked(it->first, it->second);
      impl_->placed_total -= it->second;
      it = impl_->placed.erase(it);
    }
    if (covered == len) return;  // no page cache was used for it
    // Under the lock: a placement landing between the check above and this would have its
    // new pages dropped, and read as zeros.
    if (madvise(start, len, MADV_DONTNEED) != 0) warn("madvise(DONTNEED)", impl_->path, errno);
  }
  // Pages a neighbour still maps are never dropped, so widening costs it nothing.
  drop_cache_folios(at, len);
}

void Mapping::drop_cache_folios(uint64_t at, uint64_t len) const {
  uint64_t first = at / kLargestFolio * kLargestFolio;
  uint64_t last = std::min<uint64_t>((at + len + kLargestFolio - 1) / kLargestFolio * kLargestFolio, impl_->size);
  drop_cache(first, last - first);
}

void Mapping::drop_cache(uint64_t offset, uint64_t length) const {
  if (offset >= impl_->size || length == 0) return;
  length = std::min(length, impl_->size - offset);
  int rc = posix_fadvise(impl_->fd, static_cast<off_t>(offset), static_cast<off_t>(length), POSIX_FADV_DONTNEED);
  if (rc != 0) warn("posix_fadvise(DONTNEED)", impl_->path, rc);
}

Mapping::PagesInMemory Mapping::pages_in_memory(uint64_t offset, uint64_t length) const {
  uint64_t ps = page_size();
  uint8_t* start;
  size_t len;
  if (!impl_->page_range(offset, length, &start, &len)) return PagesInMemory({}, ps, 0, impl_->size);
  std::vector<unsigned char> pages(len / ps);
  if (mincore(start, len, pages.data()) != 0) {
    throw IOError(errno_message("litcore: mincore failed on", impl_->path, errno), errno);
  }
  return PagesInMemory(std::move(pages), ps, static_cast<uint64_t>(start - impl_->addr), impl_->size);
}

uint64_t Mapping::PagesInMemory::bytes(uint64_t offset, uint64_t length) const {
  if (offset >= size_ || length == 0) return 0;
  length = std::min(length, size_ - offset);
  uint64_t first = std::max(offset, first_) / page_;
  uint64_t last = std::min((offset + length + page_ - 1) / page_, first_ / page_ + pages_.size());
  uint64_t n = 0;
  for (uint64_t p = first; p < last; ++p) n += pages_[p - first_ / page_] & 1;
  return std::min(n * page_, length);
}

bool Mapping::can_place() const { return impl_->direct_supported; }

namespace {

// Faults [block, block + len) in writable: MADV_POPULATE_WRITE, or a write to each page.
void fault_in_writable(uint8_t* block, uint64_t len) {
  if (madvise(block, static_cast<size_t>(len), MADV_POPULATE_WRITE) == 0) return;
  for (uint64_t i = 0; i < len; i += page_size()) block[i] = 0;
}

}  // namespace

bool Mapping::prepare(uint64_t offset, uint64_t length) const {
  uint64_t len = impl_->placeable_length(offset, length);
  if (len == 0) return false;
  {
    std::lock_guard<std::mutex> lock(impl_->placed_mu);
    if (impl_->prepared.count(offset) || impl_->placed.count(offset)) return true;
  }
  uint8_t* block = impl_->new_block(len);
  fault_in_writable(block, len);
  std::lock_guard<std::mutex> lock(impl_->placed_mu);
  if (!impl_->prepared.emplace(offset, std::make_pair(block, len)).second) munmap(block, static_cast<size_t>(len));
  return true;
}

void Mapping::discard_prepared() const {
  std::lock_guard<std::mutex> lock(impl_->placed_mu);
  impl_->discard_prepared_locked(0, UINT64_MAX);
}

uint64_t Mapping::prepared_bytes() const {
  std::lock_guard<std::mutex> lock(impl_->placed_mu);
  uint64_t n = 0;
  for (const auto& [offset, block] : impl_->prepared) n += block.second;
  return n;
}

bool Mapping::place(uint64_t offset, uint64_t length) const {
  uint64_t len = impl_->placeable_length(offset, length);
  if (len == 0) return false;
  uint8_t* block;
  {
    std::lock_guard<std::mutex> lock(impl_->placed_mu);
    auto it = impl_->placed.find(offset);
    if (it != impl_->placed.end() && it->second >= len) return true;  // in place already
    block = impl_->take_prepared_locked(offset, len);
  }
  if (!block) block = impl_->new_block(len);
  try {
    if (!impl_->read_direct(block, len, offset)) {
      impl_->direct_supported = false;  // this file system takes no direct reads
      munmap(block, static_cast<size_t>(len));
      discard_prepared();
      return false;
    }
  } catch (...) {
    munmap(block, static_cast<size_t>(len));
    throw;
  }
  std::lock_guard<std::mutex> lock(impl_->placed_mu);
  // One step: the range holds the file's bytes before and after it, for any thread.
  if (mremap(block, static_cast<size_t>(len), static_cast<size_t>(len), MREMAP_MAYMOVE | MREMAP_FIXED,
             impl_->addr + offset) == MAP_FAILED) {
    int err = errno;
    munmap(block, static_cast<size_t>(len));
    throw IOError(errno_message("litcore: cannot move streamed weights into the mapping of", impl_->path, err), err);
  }
  impl_->placed_total += len;
  impl_->placed[offset] = len;
  // What the page cache holds of the range (read ahead by faults on resident neighbours, or
  // left from an earlier plan) is a second copy nothing maps (pages a neighbour maps stay).
  drop_cache_folios(offset, len);
  return true;
}

bool Mapping::read_direct_into(uint64_t offset, uint64_t length, uint8_t* into) const {
  uint64_t len = impl_->placeable_length(offset, length);
  if (len == 0) return false;
  if (impl_->read_direct(into, len, offset)) return true;
  impl_->direct_supported = false;  // this file system takes no direct reads
  return false;
}

OwnMemory::OwnMemory(uint64_t bytes, const std::string& what, const std::string& path) {
  // Whole huge pages where the buffer is that large; a small model's window takes pages.
  uint64_t unit = bytes >= kLargestFolio ? kLargestFolio : page_size();
  size_ = (bytes + unit - 1) / unit * unit;
  if (size_ == 0) return;
  data_ = huge_page_block(size_, what, path);
  fault_in_writable(data_, size_);
}

OwnMemory::~OwnMemory() {
  if (data_) munmap(data_, static_cast<size_t>(size_));
}

uint64_t Mapping::placed_bytes() const {
  std::lock_guard<std::mutex> lock(impl_->placed_mu);
  return impl_->placed_total;
}

uint64_t Mapping::readahead_reach() const { return 2 * impl_->readahead_window + kLargestFolio; }

}  // namespace litcore
