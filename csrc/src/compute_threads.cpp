#include "litcore/compute_threads.h"

#include <ATen/Parallel.h>

namespace litcore {

void ComputeThreads::capture() {
  if (!narrowed_) full_ = at::get_num_threads();
}

void ComputeThreads::narrow() {
  if (narrowed_) return;
  if (full_ == 0) capture();
  if (full_ < 2) return;
  at::set_num_threads(full_ - 1);
  narrowed_ = true;
}

void ComputeThreads::restore() {
  if (!narrowed_) return;
  at::set_num_threads(full_);
  narrowed_ = false;
}

int ComputeThreads::full() const { return full_ > 0 ? full_ : at::get_num_threads(); }

}  // namespace litcore
