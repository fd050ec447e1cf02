// Read groups: how the prefetch reader cuts the execution order into reads, so that what it
// reads is long and sequential whatever order the file stores the tensors in.
//
// A file laid out by litcore stores each module's weights where the model runs them, and
// the reader reads unit after unit straight along the file. A file in another order (a
// converted safetensors file is in name order: a layer's `mlp.down_proj` before its
// `self_attn.q_proj`, `layers.10` before `layers.2`) stores a layer's units in one block but
// shuffled inside it; read unit by unit in execution order, the reader seeks back and forth
// inside every layer and the kernel's readahead spills past each unit into what runs much
// later. A read group is a run of consecutive units in the order whose bytes together form
// one block of the file, stored in another order than they run: the reader reads the block
// once, in file order, and the units are ready together.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "litcore/prefetcher.h"
#include "litcore/residency.h"

namespace litcore {

// The most units one group takes: a transformer layer has 4-12 leaf modules.
constexpr size_t kMaxGroupUnits = 32;
// Units smaller than this never make a run "shuffled" (a layer norm's few KiB).
constexpr uint64_t kSmallUnit = 64ull << 10;

// For each position of `order` (unit indices into `ranges`), the position one past the end of
// its group: the shortest run from its first position that forms one block. A group is
// never larger than `max_bytes` (one unit always makes a group), never holds an `on_demand`
// unit (read by lookup, never read ahead) nor a unit twice, and is only formed where its
// units are not in file order already (reading those one by one is already sequential, and
// each is ready sooner).
std::vector<size_t> read_groups(const std::vector<int>& order, const std::vector<std::vector<ByteRange>>& ranges,
                                const std::vector<bool>& on_demand, uint64_t max_bytes);

// The bytes of the largest group of two or more units read_groups() makes (0: none): the
// planner sizes the reader's window to hold two (one read while the previous one computes).
uint64_t largest_read_group(const std::vector<int>& order, const std::vector<std::vector<ByteRange>>& ranges,
                            const std::vector<bool>& on_demand, uint64_t max_bytes);

// The read group a plan for `units` run in `order` under `budget` sizes its window for: the
// largest group over the units that can stream (as if all did: the plan decides which do
// after sizing the window), each at most a quarter of the budget (a larger one is read in
// parts: the reader caps groups at half its window). `ranges`: each unit's byte ranges.
uint64_t planned_read_group(const std::vector<Unit>& units, const std::vector<int>& order,
                            const std::vector<std::vector<ByteRange>>& ranges, uint64_t budget);

}  // namespace litcore
