// Surviving a weight file that shrinks or becomes unreadable while it is mapped. Touching a
// mapped page the file no longer backs raises SIGBUS, which would kill the process. litcore
// handles SIGBUS for addresses inside its own mappings: the handler maps zeros over the
// faulting page (so the access completes) and records the fault; the next check of that
// mapping (the end of a forward, the next tensor taken from the store) throws IOError naming
// the file. Faults anywhere else go to the handler that was installed before litcore's.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace litcore {

class FaultGuard {
 public:
  // Watches [addr, addr + size), the mapping of `path`. Installs the handler on first use.
  FaultGuard(const void* addr, size_t size, const std::string& path);
  ~FaultGuard();
  FaultGuard(const FaultGuard&) = delete;
  FaultGuard& operator=(const FaultGuard&) = delete;

  // Throws IOError naming the file if a fault hit the range since it was watched. Sticky:
  // the bytes read there were zeros, so every later result is suspect too.
  void check() const;

 private:
  int slot_ = -1;  // -1: not watched (no free slot, or an empty range)
  std::string path_;
};

}  // namespace litcore
