#include "litcore/read_groups.h"

#include <algorithm>
#include <set>

namespace litcore {
namespace {

uint64_t bytes_of(const std::vector<ByteRange>& ranges) {
  uint64_t n = 0;
  for (const auto& r : ranges) n += r.length;
  return n;
}

// The ranges, sorted, leave no gap wider than a read continues across.
bool one_block(std::vector<ByteRange> ranges) {
  sort_by_offset(ranges);
  uint64_t end = 0;
  for (size_t i = 0; i < ranges.size(); ++i) {
    if (i > 0 && ranges[i].offset > end + kReadContinuesWithin) return false;
    end = std::max(end, ranges[i].offset + ranges[i].length);
  }
  return true;
}

}  // namespace

std::vector<size_t> read_groups(const std::vector<int>& order, const std::vector<std::vector<ByteRange>>& ranges,
                                const std::vector<bool>& on_demand, uint64_t max_bytes) {
  const size_t n = order.size();
  std::vector<size_t> ends(n);
  size_t start = 0;
  while (start < n) {
    size_t best = start + 1;
    int first = order[start];
    if (!on_demand[first]) {
      std::vector<ByteRange> block = ranges[first];
      std::set<int> members = {first};
      uint64_t bytes = bytes_of(ranges[first]);
      // Some unit starts before the one that ran before it ends. Small units (a layer norm,
      // stored after its layer's MLP in a model-ordered file) do not count: a backward step
      // of a few KiB costs nothing, and the kernel reads them with their neighbours anyway.
      bool shuffled = false;
      int last_large = bytes_of(ranges[first]) >= kSmallUnit ? first : -1;
      for (size_t e = start + 1; e < n && e - start < kMaxGroupUnits; ++e) {
        int unit = order[e];
        if (on_demand[unit] || members.count(unit)) break;
        bytes += bytes_of(ranges[unit]);
        if (bytes > max_bytes) break;
        if (bytes_of(ranges[unit]) >= kSmallUnit) {
          ByteRange here = extent_of(ranges[unit]);
          if (last_large >= 0) {
            ByteRange before = extent_of(ranges[last_large]);
            if (here.offset < before.offset + before.length) shuffled = true;
          }
          last_large = unit;
        }
        members.insert(unit);
        block.insert(block.end(), ranges[unit].begin(), ranges[unit].end());
        if (shuffled && one_block(block)) {  // the smallest such run: a layer, not several
          best = e + 1;
          break;
        }
      }
    }
    for (size_t p = start; p < best; ++p) ends[p] = best;
    start = best;
  }
  return ends;
}

uint64_t largest_read_group(const std::vector<int>& order, const std::vector<std::vector<ByteRange>>& ranges,
                            const std::vector<bool>& on_demand, uint64_t max_bytes) {
  std::vector<size_t> ends = read_groups(order, ranges, on_demand, max_bytes);
  uint64_t largest = 0;
  for (size_t start = 0; start < ends.size(); start = ends[start]) {
    if (ends[start] - start < 2) continue;  // a module read alone: the planner sizes for those
    uint64_t bytes = 0;
    for (size_t p = start; p < ends[start]; ++p) {
      if (!on_demand[order[p]]) bytes += bytes_of(ranges[order[p]]);
    }
    largest = std::max(largest, bytes);
  }
  return largest;
}

uint64_t planned_read_group(const std::vector<Unit>& units, const std::vector<int>& order,
                            const std::vector<std::vector<ByteRange>>& ranges, uint64_t budget) {
  std::vector<int> streamable;
  std::vector<bool> on_demand;
  for (const auto& u : units) on_demand.push_back(u.on_demand);
  for (int i : order) {
    if (units.at(static_cast<size_t>(i)).streamable) streamable.push_back(i);
  }
  return largest_read_group(streamable, ranges, on_demand, budget / 4);
}

}  // namespace litcore
