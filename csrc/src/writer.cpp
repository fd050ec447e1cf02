#include "litcore/writer.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>

#include "litcore/checksum.h"
#include "litcore/errors.h"

namespace litcore {
namespace {

constexpr char kPartialSuffix[] = ".litcore-partial";

std::string dir_of(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string base_of(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// ".NAME.PID.litcore-partial": hidden, and names the destination and the writer.
std::string partial_prefix(const std::string& path) { return "." + base_of(path) + "."; }

std::string partial_path(const std::string& path) {
  return dir_of(path) + "/" + partial_prefix(path) + std::to_string(getpid()) + kPartialSuffix;
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // durability of the rename is best effort where dirs can't be opened
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

void check_destination(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    throw IOError("litcore: cannot write '" + path + "': it is a directory", EISDIR);
  }
  std::string dir = dir_of(path);
  if (::stat(dir.c_str(), &st) != 0) {
    int err = errno;
    throw IOError(errno_message("litcore: cannot write '" + path + "': its directory", dir, err), err);
  }
  if (!S_ISDIR(st.st_mode)) {
    throw IOError("litcore: cannot write '" + path + "': '" + dir + "' is not a directory", ENOTDIR);
  }
}

AtomicFile::AtomicFile(const std::string& path) : path_(path) {
  check_destination(path);
  remove_stale_partials(path);
  temp_path_ = partial_path(path);
}

AtomicFile::~AtomicFile() { abort(); }

void AtomicFile::abort() {
  if (!done_) ::unlink(temp_path_.c_str());
  done_ = true;
}

void AtomicFile::commit() {
  if (done_) throw Error("litcore: '" + path_ + "' was already committed or aborted");
  int fd = ::open(temp_path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    throw IOError(errno_message("litcore: cannot open", temp_path_, err), err);
  }
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) throw IOError(errno_message("litcore: fsync failed for", temp_path_, err), err);
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    err = errno;
    throw IOError(errno_message("litcore: cannot rename '" + temp_path_ + "' to", path_, err), err);
  }
  done_ = true;
  fsync_dir(dir_of(path_));
}

void remove_stale_partials(const std::string& path) {
  std::string dir = dir_of(path);
  std::string prefix = partial_prefix(path);
  DIR* d = opendir(dir.c_str());
  if (!d) return;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    size_t suffix_len = sizeof(kPartialSuffix) - 1;
    if (name.size() <= prefix.size() + suffix_len || name.compare(0, prefix.size(), prefix) != 0 ||
        name.compare(name.size() - suffix_len, suffix_len, kPartialSuffix) != 0) {
      continue;
    }
    std::string pid_text = name.substr(prefix.size(), name.size() - prefix.size() - suffix_len);
    char* end = nullptr;
    long pid = std::strtol(pid_text.c_str(), &end, 10);
    if (end == pid_text.c_str() || *end != '\0' || pid <= 0) continue;
    if (kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
      ::unlink((dir + "/" + name).c_str());
    }
  }
  closedir(d);
}

Writer::Writer(const std::string& path, const std::vector<TensorSpec>& specs,
               const std::map<std::string, std::string>& metadata)
    : path_(path) {
  try {
    index_ = plan_layout(specs, metadata);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument("litcore: cannot write '" + path + "': " + e.what());
  }
  written_.assign(index_.tensors.size(), false);
  check_destination(path);
  remove_stale_partials(path);
  temp_path_ = partial_path(path);
  fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw IOError(errno_message("litcore: cannot create", temp_path_, errno), errno);
  // Reserve the space now, so a full disk is reported before any data is written.
  int rc = posix_fallocate(fd_, 0, static_cast<off_t>(index_.file_size));
  if (rc == EOPNOTSUPP || rc == EINVAL) {
    if (ftruncate(fd_, static_cast<off_t>(index_.file_size)) != 0) rc = errno; else rc = 0;
  }
  if (rc != 0) {
    abort();
    throw IOError(errno_message("litcore: cannot reserve " + std::to_string(index_.file_size) + " bytes for", path, rc), rc);
  }
}

Writer::~Writer() {
  if (!committed_) abort();
}

void Writer::abort() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (!committed_ && !temp_path_.empty()) ::unlink(temp_path_.c_str());
}

TensorInfo& Writer::unwritten(size_t i) {
  if (fd_ < 0) throw Error("litcore: writer for '" + path_ + "' is closed");
  if (i >= index_.tensors.size()) throw std::out_of_range("litcore: tensor #" + std::to_string(i) + " out of range");
  TensorInfo& t = index_.tensors[i];
  if (t.alias_of >= 0) throw std::invalid_argument("litcore: tensor '" + t.name + "' is an alias and takes no data");
  if (written_[i]) throw std::invalid_argument("litcore: tensor '" + t.name + "' was already written");
  return t;
}

void Writer::check_writable(size_t i, uint64_t nbytes) {
  const TensorInfo& t = unwritten(i);
  if (appending_.count(i)) throw std::invalid_argument("litcore: tensor '" + t.name + "' is being appended");
  if (nbytes != t.nbytes) {
    throw std::invalid_argument("litcore: tensor '" + t.name + "': got " + std::to_string(nbytes) +
                                " bytes, expected " + std::to_string(t.nbytes));
  }
}

void Writer::pwrite_all(const void* data, uint64_t nbytes, uint64_t offset) {
  auto* p = static_cast<const uint8_t*>(data);
  while (nbytes > 0) {
    size_t step = static_cast<size_t>(std::min<uint64_t>(nbytes, 1ull << 30));
    ssize_t n = ::pwrite(fd_, p, step, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      abort();
      throw IOError(errno_message("litcore: write failed for", path_, err), err);
    }
    p += n;
    offset += static_cast<uint64_t>(n);
    nbytes -= static_cast<uint64_t>(n);
  }
}

void Writer::write(size_t i, const void* data, uint64_t nbytes) {
  check_writable(i, nbytes);
  TensorInfo& t = index_.tensors[i];
  t.checksum = xxh64(data, nbytes);
  pwrite_all(data, nbytes, t.offset);
  written_[i] = true;
}

void Writer::append(size_t i, const void* data, uint64_t nbytes) {
  TensorInfo& t = unwritten(i);
  Appending& a = appending_[i];
  if (nbytes > t.nbytes - a.done) {
    throw std::invalid_argument("litcore: tensor '" + t.name + "': appending " + std::to_string(nbytes) + " bytes after " +
                                std::to_string(a.done) + " passes its " + std::to_string(t.nbytes));
  }
  a.hash.update(data, static_cast<size_t>(nbytes));
  pwrite_all(data, nbytes, t.offset + a.done);
  a.done += nbytes;
  if (a.done == t.nbytes) {
    t.checksum = a.hash.digest();
    written_[i] = true;
    appending_.erase(i);
  }
}

void Writer::copy_from_fd(size_t i, int src_fd, uint64_t src_offset, uint64_t nbytes,
                          const std::string& src_path) {
  check_writable(i, nbytes);
  TensorInfo& t = index_.tensors[i];
  constexpr uint64_t kChunk = 16ull << 20;
  std::unique_ptr<uint8_t[]> buffer(new uint8_t[static_cast<size_t>(std::min(kChunk, std::max<uint64_t>(nbytes, 1)))]);
  Xxh64 h;
  uint64_t done = 0;
  while (done < nbytes) {
    size_t want = static_cast<size_t>(std::min(kChunk, nbytes - done));
    ssize_t n = ::pread(src_fd, buffer.get(), want, static_cast<off_t>(src_offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = n < 0 ? errno : EIO;
      abort();
      if (n == 0) throw IOError("litcore: '" + src_path + "' ended early while reading tensor '" + t.name + "'");
      throw IOError(errno_message("litcore: read failed for", src_path, err), err);
    }
    h.update(buffer.get(), static_cast<size_t>(n));
    pwrite_all(buffer.get(), static_cast<uint64_t>(n), t.offset + done);
    posix_fadvise(src_fd, static_cast<off_t>(src_offset + done), n, POSIX_FADV_DONTNEED);
    done += static_cast<uint64_t>(n);
  }
  t.checksum = h.digest();
  written_[i] = true;
}

void Writer::commit() {
  if (fd_ < 0) throw Error("litcore: writer for '" + path_ + "' is closed");
  for (size_t i = 0; i < index_.tensors.size(); ++i) {
    TensorInfo& t = index_.tensors[i];
    if (t.alias_of >= 0) {
      t.checksum = index_.tensors[t.alias_of].checksum;
    } else if (!written_[i]) {
      auto part = appending_.find(i);
      if (part != appending_.end()) {
        throw std::logic_error("litcore: tensor '" + t.name + "' was only partly written to '" + path_ + "' (" +
                               std::to_string(part->second.done) + " of " + std::to_string(t.nbytes) + " bytes)");
      }
      if (t.nbytes != 0) throw std::logic_error("litcore: tensor '" + t.name + "' was never written to '" + path_ + "'");
      t.checksum = xxh64(nullptr, 0);
    }
  }
  std::vector<uint8_t> index_bytes = serialize_index(index_);
  std::vector<uint8_t> header = serialize_header(index_, index_bytes);
  pwrite_all(index_bytes.data(), index_bytes.size(), kHeaderSize);
  pwrite_all(header.data(), header.size(), 0);
  if (::fsync(fd_) != 0) {
    int err = errno;
    abort();
    throw IOError(errno_message("litcore: fsync failed for", temp_path_, err), err);
  }
  ::close(fd_);
  fd_ = -1;
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    int err = errno;
    ::unlink(temp_path_.c_str());
    throw IOError(errno_message("litcore: cannot rename '" + temp_path_ + "' to", path_, err), err);
  }
  committed_ = true;
  fsync_dir(dir_of(path_));
}

}  // namespace litcore
