// The residency plan: which modules' weights stay in memory and which stream from the file
// each forward, within a memory budget. The engine (engine.h) plans with it.
#pragma once

#include <cstdint>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace litcore {

struct Unit {
  std::string name;
  uint64_t nbytes = 0;
  bool streamable = false;  // leaf module, parameters only, no tensor shared with another module
  // Read by row lookup (an embedding): a forward touches a few pages of it, so it is never
  // read ahead nor kept resident when streaming; its pages come in by fault and leave after use.
  bool on_demand = false;
  // Read by its routing (a mixture-of-experts layer's experts, engine.h UnitSpec::experts): a
  // forward reads the slices of the experts its router chose, when the unit is entered, never
  // ahead. It needs room in the window only while it runs, and a byte of it kept resident
  // saves a forward only the chosen share of a byte read.
  bool routed = false;
};

// Measured on recent forwards (LitModule measures them). All zero, the default, means
// unknown: the planner then keeps what streams in one run.
struct PassRates {
  double compute_seconds_per_byte = 0;  // forward time outside IO waits, per weight byte it used
  double read_seconds_per_byte = 0;     // the reader's speed along a contiguous range
  double seek_seconds = 0;              // the extra time of a read that does not continue the last one
  bool known() const { return compute_seconds_per_byte > 0 && read_seconds_per_byte > 0; }
};

struct Plan {
  std::set<int> resident;
  std::vector<int> streamed_order;  // cyclic execution order of streamed units (repeats kept)
  uint64_t window_bytes = 0;
  uint64_t resident_bytes = 0;
  uint64_t streamed_bytes = 0;  // read ahead per forward (on-demand units read only what they touch)
  uint64_t routed_bytes = 0;    // routed units not resident: a forward reads its routing's share of them
  uint64_t lookup_bytes = 0;    // on-demand units not resident: resident + streamed + routed + lookup = total
  uint64_t budget = 0;
  uint64_t total_bytes = 0;
  int runs = 0;                 // separate runs the streamed units form along the order
  double modeled_seconds = 0;   // the pass model's forward time (0: rates unknown)
  bool streams() const { return !streamed_order.empty(); }
};

// What a plan leaves of its budget beside the resident weights and the window, for the rows
// its lookups (embeddings, read by fault) touched to stay cached between forwards: every
// weight but the embedding resident under a 2.4 GB limit, dropping the 32 rows a forward
// touched and reading them again cost 0.009 s of a 0.16 s forward.
uint64_t lookup_cache_bytes(const Plan& plan);
// What the expert cache may hold (expert_cache.h): the same room, and the window's room for
// the largest streamed routed unit of `units`, which it gives back as a layer's experts are
// read; none where no routed unit streams.
uint64_t expert_cache_bytes(const Plan& plan, const std::vector<Unit>& units);
// The largest routed unit of `units` that `plan` streams (0: none).
uint64_t largest_streamed_routed(const Plan& plan, const std::vector<Unit>& units);

// The budget cannot hold what must stay resident plus the largest streamed module.
class BudgetTooSmallError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Plans `units` run in `order` (unit indices, repeats allowed) under `budget` bytes.
// Units that never ran (not in `order` nor `ran`) or are not streamable stay resident.
// Plain LRU over a cyclic pass evicts exactly what is needed next; instead a fixed set stays
// resident: a prefix and a suffix of the execution order (and up to three of the largest
// units, when that shrinks the window enough to pay), so that what streams is one run of
// the order. Files are laid out in that order, so the streamed bytes are one sequential
// range, which the kernel's readahead reads at full speed; gaps in it measured 2-3x slower.
// The window holds two of the largest streamed unit, or it plus `depth - 1` typical ones;
// with read groups, the largest group plus the largest unit (the reader claims a group's
// units in file order as the group before releases them).
//
// Routed units (Unit::routed) are never read ahead, so the window holds the largest of them
// once, beside what the reader reads ahead of the others; and the units read whole every
// forward are kept resident before any routed one (a token reads 2 of 8 experts: a resident
// byte of them saves a quarter of what a resident byte of attention saves).
//
// One run is right when reading through the page cache is the bottleneck (the kernel's
// readahead reads on past the window through the resident part). When compute is (a budget
// that streams a little, a forward over few tokens), one run cannot hide its read: the reader
// can only be a window ahead, so it idles through the resident part and compute then waits
// for the rest.
// With measured `rates`, the planner also tries 2-8 runs spread evenly along the order (each
// read under the compute before it, at the cost of a seek per run) and keeps the layout the
// pass model (pass_model.h) predicts fastest; a layout other than `current_runs` must win by
// 5%, so a plan does not flap between forwards of different shapes. `read_group_bytes`: the
// largest run of units the reader reads as one (read_groups.h). `direct_reads`: the reader
// reads each unit alone past the page cache (ReadMode Direct or Buffer): no readahead runs
// ahead of the window, so spread layouts are weighed where the reads bound the pass too.
Plan make_plan(const std::vector<Unit>& units, const std::vector<int>& order, uint64_t budget,
               const std::set<int>& ran = {}, int depth = 3, const PassRates& rates = {}, int current_runs = 1,
               uint64_t read_group_bytes = 0, bool direct_reads = false);

// The residency plan on a GPU (device="cuda"), within `budget` bytes of device memory:
// streamed weights pass through a ring of `slots` device buffers, each the size of the
// largest streamed unit plus `slot_overhead` (alignment), so the ring is the plan's window
// and resident weights plus the ring stay within the budget. Throws BudgetTooSmallError
// naming the largest module when no plan fits.
Plan make_device_plan(const std::vector<Unit>& units, const std::vector<int>& order, uint64_t budget, int slots = 3,
                      uint64_t slot_overhead = 4096);
// With a GPU: which of the units streamed to the device (`device_plan`) stay in host memory
// (read from the file once) and which are read from the file on every forward, within the
// host `budget`. Units resident on the device take no host memory.
Plan make_host_plan(const std::vector<Unit>& units, const Plan& device_plan, uint64_t budget);

// "auto": the smaller of (cgroup memory limit - what the cgroup is charged now) and
// MemAvailable, minus max(128 MiB, 5%) for activations and allocator slack; 2^60 (no limit)
// when neither is known.
uint64_t auto_budget();

// What the tightest memory cgroup has left: its limit minus what it is charged now (page
// cache included) plus other files' inactive page cache, at most MemAvailable. `own_cache`:
// the weight file's bytes in page cache. `limit` is 0 when no cgroup limits this process.
struct MemoryRoom {
  uint64_t limit = 0;
  int64_t free = 0;
  uint64_t reclaimable = 0;  // of `free`: other files' inactive page cache
  // Not in `free`: the rest of other files' page cache (active, or mapped: the libraries'
  // code). The kernel reclaims what nobody touches of it once the cgroup needs the room.
  uint64_t other_cache = 0;
};
MemoryRoom memory_room(uint64_t own_cache);

// The tightest memory cgroup's peak charge since reset(), where this process may reset it:
// cgroup v1's memory.max_usage_in_bytes (root), v2's memory.peak (kernel 6.12+: a write
// starts a new peak seen through that open file). What a forward takes and gives back
// before its end (readahead, the window filling, activations) shows in the peak only.
class CgroupPeak {
 public:
  CgroupPeak();
  ~CgroupPeak();
  CgroupPeak(const CgroupPeak&) = delete;
  CgroupPeak& operator=(const CgroupPeak&) = delete;
  bool usable() const { return fd_ >= 0; }
  void reset();
  uint64_t read() const;  // 0 when unreadable

 private:
  int fd_ = -1;
};

// The least an auto budget leaves free in its cgroup once forwards have run (or 1/128 of
// the limit, if more): room for the interpreter's and the activations' growth before the
// next forward's end. Resident weights are clean file pages, so running short costs the
// kernel evicting a few of them (read again on use, as a memory-mapped model is), not an
// out-of-memory kill; the next adaptation then gives the memory back.
constexpr int64_t kAutoReserveFloor = 16ll << 20;

// An auto budget after a forward, given what the cgroup has left then: grown into free
// memory beyond twice the reserve, shrunk when less than half of it is left (what the
// process itself grew by, or another process in the cgroup took), so that the reserve is
// what stays free. `transient`: memory a forward takes and gives back before its end, on
// top of the reserve (while weights stream, what the kernel's readahead reads past a read).
// Unchanged without a cgroup limit: MemAvailable counts the weights' own page cache as
// available and cannot tell how much of it is ours.
uint64_t adapted_budget(uint64_t budget, const MemoryRoom& room, uint64_t transient = 0);

// How far an auto budget may grow when the rest of other files' page cache counts as room
// too, a reserve kept: the engine steps to every weight but the lookups resident (no window,
// nothing read ahead) when that is within it. A model that almost fits is where this
// matters: under a limit a few tens of megabytes short of everything resident once the
// interpreter's libraries are counted, the usual reserve holds it to streaming what a
// memory-mapped model keeps by letting the kernel evict the libraries' cold pages. The
// engine takes this step once, and keeps it while whole_holds().
int64_t room_with_other_cache(const MemoryRoom& room);
// The budget that step leads to from `budget`: all of room_with_other_cache() added, at most
// `total` (every weight), where that reaches `whole` (every weight but the lookups); otherwise
// `budget` itself, as when `budget` already holds `whole`.
uint64_t whole_step(uint64_t budget, uint64_t whole, uint64_t total, const MemoryRoom& room);
// Whether every weight resident still holds: other files' page cache, with what is free,
// covers half the reserve (resident weights the kernel evicted are already out of `free`).
bool whole_holds(const MemoryRoom& room);
uint64_t current_rss();
// The tightest memory limit of this process's cgroups (v1 or v2), or 0 when none.
uint64_t cgroup_limit();

}  // namespace litcore
