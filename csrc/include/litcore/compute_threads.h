// The intra-op threads a forward computes with: one fewer while the streamed modules of a
// pass run, where the reads bound them (narrow_streamed_compute, pass_model.h).
//
// torch's OpenMP workers spin after each operator, waiting for the next one. A forward
// that waits on reads runs short operators between long waits, so its workers spin through
// the waits and every core stays busy. The prefetch reader then shares its core with a
// spinning worker, and on a virtual machine whose disk the host emulates, the host's IO
// work competes with busy virtual CPUs. One thread fewer leaves a core idle between
// operators; the streamed modules compute slower, and still under their reads.
#pragma once

namespace litcore {

// Threads are set on the calling thread (torch's setting is per thread for OpenMP); the
// engine calls these from the forward's thread only.
class ComputeThreads {
 public:
  // A pass starts: the count the caller computes with now is its full count.
  void capture();
  // One thread fewer than the full count (never below 1) until restore().
  void narrow();
  // The full count again, if narrowed.
  void restore();
  bool narrowed() const { return narrowed_; }
  // The full count captured last (the current count before any capture()).
  int full() const;

 private:
  int full_ = 0;
  bool narrowed_ = false;
};

}  // namespace litcore
