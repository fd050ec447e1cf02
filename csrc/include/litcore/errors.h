// Exceptions thrown by liblitcore. Every message names the file (and the tensor, if any).
#pragma once

#include <stdexcept>
#include <string>

namespace litcore {

// Base of every litcore error.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A weight file that is malformed, truncated, inconsistent or fails its checksums.
class FormatError : public Error {
 public:
  using Error::Error;
};

// An operating-system failure (open, mmap, read, write, rename...) carrying strerror.
class IOError : public Error {
 public:
  explicit IOError(const std::string& what, int err = 0) : Error(what), err_(err) {}
  int code() const { return err_; }  // errno, or 0

 private:
  int err_;
};

// A tensor name that is not in the file.
class KeyError : public std::out_of_range {
 public:
  using std::out_of_range::out_of_range;
};

// "what 'path': strerror(err)"
std::string errno_message(const std::string& what, const std::string& path, int err);

}  // namespace litcore
