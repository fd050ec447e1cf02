// A read-only file mapped copy-on-write into memory, with page advice, and the pages of
// streamed weights read past the page cache into new memory and put in place (place()).
// OS details (mmap, madvise, posix_fadvise, O_DIRECT, mremap) stay in mapping.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace litcore {

class Mapping {
 public:
  // Maps the whole file MAP_PRIVATE: writes into the memory never reach the file and
  // never fault. Throws IOError (with strerror) if the file cannot be opened or mapped.
  explicit Mapping(const std::string& path);
  ~Mapping();
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

  const std::string& path() const;
  uint8_t* addr() const;
  uint64_t size() const;

  // Advice on byte ranges; ranges are widened to whole pages. Failures only warn:
  // advice is an optimisation, never a correctness requirement.
  void willneed(uint64_t offset, uint64_t length) const;
  // Faults on the range bring in only the touched pages, with no read-around (MADV_RANDOM):
  // for tensors read by row lookup, where read-around would read megabytes per row.
  void random_access(uint64_t offset, uint64_t length) const;
  // Faults on the range read ahead only forward (MADV_SEQUENTIAL), not around the fault:
  // read-around would bring back the ranges just dropped behind a streaming reader.
  void sequential_access(uint64_t offset, uint64_t length) const;
  // Undoes random_access / sequential_access (MADV_NORMAL).
  void normal_access(uint64_t offset, uint64_t length) const;
  // Reads the range into the page cache, unmapped, through the file's sequential readahead:
  // sendfile() into /dev/null moves no bytes through user space; with `copy` (or where the
  // kernel refuses that) preads into a scratch buffer do. Throws IOError naming the file
  // when a read fails or the file ends before the range does (truncated while in use).
  void fill_cache(uint64_t offset, uint64_t length, bool copy = false) const;
  // Reads exactly the range into the page cache with large preads through a second file
  // descriptor that has readahead off (POSIX_FADV_RANDOM): nothing past the range is read.
  void fill_cache_exact(uint64_t offset, uint64_t length) const;
  // Reads and maps the range without readahead past it and without a copy: readahead
  // requests through the descriptor whose readahead is off (POSIX_FADV_WILLNEED, each at most
  // the device's readahead size, which the kernel cuts a request to; the next one queued
  // before the current one is waited for), then populate(). The page cache takes small
  // folios, as with fill_cache_exact(), for a third of its CPU time. Throws IOError as
  // populate().
  void fill_and_map_small(uint64_t offset, uint64_t length) const;
  // Faults the range in now (MADV_POPULATE_READ, or touching each page), so that later
  // accesses from the compute thread cost no page faults. Throws IOError as fill_cache.
  void populate(uint64_t offset, uint64_t length) const;
  // Throws IOError naming the file if an access to the mapping faulted because the file
  // no longer backs it (see fault_guard.h).
  void check_faults() const;
  // Drops the range from this process and from the page cache (MADV_DONTNEED +
  // POSIX_FADV_DONTNEED); where pages were put in place, the file is mapped there again.
  // The memory stays valid: a later access reads the file again.
  void release(uint64_t offset, uint64_t length) const;
  // Whether place() can work here: the file system takes direct reads (tmpfs does not).
  bool can_place() const;
  // Reads the whole pages of [offset, offset + length) (`offset` at a page) with direct
  // reads (O_DIRECT) into new memory and moves it over the mapping there (mremap) in one
  // step: the tensors keep their addresses, the bytes at every address stay the file's for
  // any thread, and no page cache is used (what it held of the range is dropped). release()
  // maps the file back and frees the memory. Returns false, having changed nothing, where
  // direct reads are refused (the caller reads through the page cache instead). Throws
  // IOError naming the file as fill_cache does, and when memory cannot be had or moved.
  bool place(uint64_t offset, uint64_t length) const;
  // Makes the memory for a later place() of the same range ready now: allocated and faulted
  // in on the caller's thread, so that the direct reads into it need not stop to have every
  // page zeroed first (a reader thread preparing the next range while the previous one is
  // read streams faster, docs/benchmarks.md). Returns false, preparing nothing, where direct
  // reads are refused. Memory prepared and not placed is freed by discard_prepared(), by
  // release() of a range holding it, or with the mapping.
  bool prepare(uint64_t offset, uint64_t length) const;
  void discard_prepared() const;
  // Reads the whole pages of [offset, offset + length) (`offset` at a page) with direct reads
  // into `into` (page-aligned memory of the caller's, at least that long): no page cache, the
  // mapping untouched. Returns false, having read nothing, where direct reads are refused.
  // Throws IOError naming the file as fill_cache does.
  bool read_direct_into(uint64_t offset, uint64_t length, uint8_t* into) const;
  // Bytes prepared and not yet placed or freed.
  uint64_t prepared_bytes() const;
  // Bytes put in place and not released.
  uint64_t placed_bytes() const;
  // Drops the range from the page cache only (POSIX_FADV_DONTNEED): pages any process maps,
  // in use or read ahead into a unit, stay. For what the kernel's readahead read past a read.
  void drop_cache(uint64_t offset, uint64_t length) const;
  // Which of the file's pages are in memory now: one mincore over the pages holding
  // [offset, offset + length), the whole mapping by default.
  class PagesInMemory {
   public:
    PagesInMemory(std::vector<unsigned char> pages, uint64_t page, uint64_t first, uint64_t size)
        : pages_(std::move(pages)), page_(page), first_(first), size_(size) {}
    // Bytes of [offset, offset + length) in memory (what the kernel has not evicted of it),
    // of the pages looked at.
    uint64_t bytes(uint64_t offset, uint64_t length) const;

   private:
    std::vector<unsigned char> pages_;
    uint64_t page_;
    uint64_t first_;  // the offset of pages_[0]
    uint64_t size_;
  };
  PagesInMemory pages_in_memory(uint64_t offset = 0, uint64_t length = UINT64_MAX) const;
  // How far the kernel's readahead of this file can run past a read: twice the device's
  // readahead window (read_ahead_kb of its block device, 8 MiB where that is unknown), plus
  // a large folio.
  uint64_t readahead_reach() const;

 private:
  void advise(uint64_t offset, uint64_t length, int advice, const char* what) const;
  // drop_cache() over the page range [at, at + len) widened to whole large folios: a folio
  // that straddles the range's edge is not dropped for a partial range.
  void drop_cache_folios(uint64_t at, uint64_t len) const;

  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Memory the process keeps for as long as it lives (anonymous, at a huge-page boundary,
// advised for huge pages, faulted in at once): a buffer that every streamed read reuses. On a
// virtual machine whose host takes freed memory back, memory freed and taken again costs a
// host fault per page at its first touch; kept memory does not (docs/benchmarks.md).
class OwnMemory {
 public:
  // Throws IOError when the memory cannot be had, naming its use (`what`) and `path`.
  OwnMemory(uint64_t bytes, const std::string& what, const std::string& path);
  ~OwnMemory();
  OwnMemory(const OwnMemory&) = delete;
  OwnMemory& operator=(const OwnMemory&) = delete;
  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace litcore
