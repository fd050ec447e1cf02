// The pass model: predicts how long one forward takes under a residency plan, from rates
// measured on earlier forwards, so the planner can choose how to lay out what streams.
#pragma once

#include <cstdint>
#include <set>
#include <vector>

#include "litcore/prefetcher.h"
#include "litcore/residency.h"

namespace litcore {

// Seconds per forward in steady state: one reader reads the streamed units in `order`
// (cyclic), at most `window_bytes` ahead of use, while compute walks the order and
// waits for each streamed unit's read. A read continues the last one when the unit runs
// right after the previously read one (files are laid out in execution order).
// On-demand units cost neither reads nor compute here.
double model_pass_seconds(const std::vector<Unit>& units, const std::vector<int>& order,
                          const std::set<int>& streamed, uint64_t window_bytes, const PassRates& rates);

// The rates from one forward: its time outside IO waits over the weight bytes it used, and
// the prefetch reader's timings. What the forward read too little to tell (under
// `min_read_bytes`) is taken from `previous`; `previous` itself is returned when the forward
// tells nothing (no compute, nothing read ever).
PassRates measure_rates(const std::vector<Unit>& units, const std::vector<int>& order, double forward_seconds,
                        const PrefetchStats& stats, const PassRates& previous = {},
                        uint64_t min_read_bytes = 16ull << 20);

// Whether the streamed modules of a pass compute with one of `threads` fewer
// (compute_threads.h): where their compute, slowed by threads / (threads - 1), is still
// within 80% of their reads; once narrowed (`rates` measured on such a pass), while their
// compute stays under their reads.
bool narrow_streamed_compute(const PassRates& rates, int threads, bool narrowed);

// How many separate runs the streamed units form along the cyclic `order`.
int count_runs(const std::vector<Unit>& units, const std::vector<int>& order, const std::set<int>& streamed);

}  // namespace litcore
