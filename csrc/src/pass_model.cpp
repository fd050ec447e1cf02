#include "litcore/pass_model.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "litcore/prefetcher.h"

namespace litcore {
namespace {

bool is_read(const std::vector<Unit>& units, const std::set<int>& streamed, int u) {
  return streamed.count(u) && !units[u].on_demand && units[u].nbytes > 0;
}

// For each position of `order`: is it read, and does its read continue the previous one.
void classify(const std::vector<Unit>& units, const std::vector<int>& order, const std::set<int>& streamed,
              std::vector<char>& read, std::vector<char>& continues) {
  for (int i : order) {
    if (i < 0 || static_cast<size_t>(i) >= units.size()) {
      throw std::out_of_range("litcore: unit " + std::to_string(i) + " out of range");
    }
  }
  size_t n = order.size();
  read.assign(n, 0);
  continues.assign(n, 0);
  for (size_t p = 0; p < n; ++p) read[p] = is_read(units, streamed, order[p]);
  for (size_t p = 0; p < n; ++p) {
    if (!read[p]) continue;
    uint64_t skipped = 0;
    for (size_t k = 1; k < n && skipped < kReadContinuesWithin; ++k) {
      size_t q = (p + n - k) % n;
      if (read[q]) {
        continues[p] = 1;
        break;
      }
      skipped += units[order[q]].nbytes;
    }
  }
}

}  // namespace

int count_runs(const std::vector<Unit>& units, const std::vector<int>& order, const std::set<int>& streamed) {
  std::vector<char> read, continues;
  classify(units, order, streamed, read, continues);
  int runs = 0;
  bool any = false;
  for (size_t p = 0; p < order.size(); ++p) {
    any = any || read[p];
    if (read[p] && !continues[p]) ++runs;
  }
  return any ? std::max(runs, 1) : 0;
}

double model_pass_seconds(const std::vector<Unit>& units, const std::vector<int>& order,
                          const std::set<int>& streamed, uint64_t window_bytes, const PassRates& rates) {
  std::vector<char> read, continues;
  classify(units, order, streamed, read, continues);
  // Two passes: the second starts with the reader where the first left it (steady state).
  std::vector<double> done;     // per read, when compute finished with it (it leaves the window)
  std::vector<uint64_t> sizes;  // per read
  size_t oldest = 0;            // reads before it have left the window
  uint64_t in_window = 0;       // bytes of reads [oldest, now)
  double reader_free = 0, compute = 0, first_pass = 0;
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t p = 0; p < order.size(); ++p) {
      const Unit& u = units[order[p]];
      double work = u.on_demand ? 0 : static_cast<double>(u.nbytes) * rates.compute_seconds_per_byte;
      if (!read[p]) {
        compute += work;
        continue;
      }
      // The read may start once the window has room: the oldest reads must be used first
      // (one larger than the window waits for all of them).
      size_t i = done.size();
      while (oldest < i && in_window + u.nbytes > window_bytes) in_window -= sizes[oldest++];
      double start = oldest > 0 ? std::max(reader_free, done[oldest - 1]) : reader_free;
      reader_free = start + static_cast<double>(u.nbytes) * rates.read_seconds_per_byte +
                    (continues[p] ? 0 : rates.seek_seconds);
      compute = std::max(compute, reader_free) + work;
      done.push_back(compute);
      sizes.push_back(u.nbytes);
      in_window += u.nbytes;
    }
    if (pass == 0) first_pass = compute;
  }
  return compute - first_pass;
}

bool narrow_streamed_compute(const PassRates& rates, int threads, bool narrowed) {
  if (threads < 2 || !rates.known()) return false;
  // Per streamed byte: its compute against its read (the bytes cancel).
  double share = rates.compute_seconds_per_byte / rates.read_seconds_per_byte;
  if (narrowed) return share < 1.0;
  return share * threads / (threads - 1) <= 0.8;
}

PassRates measure_rates(const std::vector<Unit>& units, const std::vector<int>& order, double forward_seconds,
                        const PrefetchStats& s, const PassRates& previous, uint64_t min_read_bytes) {
  double used = 0;
  for (int i : order) {
    if (i < 0 || static_cast<size_t>(i) >= units.size()) {
      throw std::out_of_range("litcore: unit " + std::to_string(i) + " out of range");
    }
    if (!units[i].on_demand) used += static_cast<double>(units[i].nbytes);
  }
  double compute = std::max(forward_seconds - s.wait_seconds, 0.0);
  uint64_t read_bytes = s.timed_bytes - std::min(s.seek_read_bytes, s.timed_bytes);
  double read_seconds = std::max(s.read_seconds - s.seek_read_seconds, 0.0);
  double read = previous.read_seconds_per_byte;
  if (read_bytes >= min_read_bytes) {
    read = read_seconds / static_cast<double>(read_bytes);
  } else if (s.timed_bytes >= min_read_bytes) {
    read = s.read_seconds / static_cast<double>(s.timed_bytes);
  }
  double seek = previous.seek_seconds;
  if (s.seek_reads && read > 0) {
    seek = std::max(s.seek_read_seconds - static_cast<double>(s.seek_read_bytes) * read, 0.0) /
           static_cast<double>(s.seek_reads);
  }
  if (used <= 0 || compute <= 0 || read <= 0) return previous;
  return {compute / used, read, seek};
}

}  // namespace litcore
