// Writes a weight file atomically: a temporary file beside the destination, fsync,
// rename. Until commit() succeeds nothing exists at the destination.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "litcore/checksum.h"
#include "litcore/format.h"

namespace litcore {

class Writer {
 public:
  // Plans the layout for `specs` (in order) and creates the temporary file.
  Writer(const std::string& path, const std::vector<TensorSpec>& specs,
         const std::map<std::string, std::string>& metadata);
  // Removes the temporary file unless commit() succeeded.
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  // Writes all of spec `i`'s bytes (its contiguous data). Aliases take no data.
  void write(size_t i, const void* data, uint64_t nbytes);
  // Writes spec `i` by copying `nbytes` from `src_fd` at `src_offset` (no Python,
  // large reads; the source's page cache is dropped behind).
  void copy_from_fd(size_t i, int src_fd, uint64_t src_offset, uint64_t nbytes,
                    const std::string& src_path);
  // Writes the next `nbytes` of spec `i`'s data, after what earlier calls appended: a tensor
  // computed piece by piece (a fused tensor from its sources) is never whole in memory. The
  // spec is written once all its bytes are; commit() refuses a spec left part-written.
  void append(size_t i, const void* data, uint64_t nbytes);
  // Writes index and header, fsyncs, renames over the destination, fsyncs the directory.
  void commit();
  void abort();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }
  const FileIndex& index() const { return index_; }
  // Total bytes the file will have.
  uint64_t file_size() const { return index_.file_size; }

 private:
  // Spec `i`, refused unless the writer is open and it takes data not yet written.
  TensorInfo& unwritten(size_t i);
  void check_writable(size_t i, uint64_t nbytes);
  void pwrite_all(const void* data, uint64_t nbytes, uint64_t offset);

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  FileIndex index_;
  std::vector<bool> written_;
  struct Appending {
    uint64_t done = 0;
    Xxh64 hash;
  };
  std::map<size_t, Appending> appending_;  // specs being appended, by index
  bool committed_ = false;
};

// Removes `.NAME.*.litcore-partial` files beside `path` left by writers that died.
void remove_stale_partials(const std::string& path);

// Throws IOError naming `path` when a file cannot be written there: its directory does not
// exist (or is not a directory), or `path` itself is a directory. Checked before any work.
void check_destination(const std::string& path);

// Any file written atomically, like the weight file: the caller writes `temp_path()`
// (".NAME.PID.litcore-partial" beside `path`, recognised by remove_stale_partials), then
// commit() fsyncs it and renames it over `path`; otherwise the temporary file is removed.
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  const std::string& temp_path() const { return temp_path_; }
  void commit();
  void abort();

 private:
  std::string path_;
  std::string temp_path_;
  bool done_ = false;
};

}  // namespace litcore
