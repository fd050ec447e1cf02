// The streaming engine: everything between "this module is about to run" and "its weights
// are in memory". It owns the units (each module's byte ranges), the budget and the
// residency plan, the execution order (learned on the first pass, re-learned after a
// mispredict), the measured rates and the layout choice, the warm-up reader, the prefetch
// reader and the per-pass statistics. Python hooks, TorchScript programs and C++ apps are
// thin callers of the same interface: begin(), enter(unit), exit(unit), end().
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "litcore/compute_threads.h"
#include "litcore/device_backend.h"
#include "litcore/expert_cache.h"
#include "litcore/pass_model.h"
#include "litcore/prefetcher.h"
#include "litcore/residency.h"
#include "litcore/store.h"
#include "litcore/warmup.h"

namespace litcore {

// A unit as a caller describes it: one module and the stored tensors it owns directly.
struct UnitSpec {
  std::string name;                  // the module's name ("layers.0.mlp"); "<root>" for the root
  std::vector<std::string> tensors;  // names in the file (aliases allowed)
  // The caller can stream it: a leaf module (no module under it holds stored tensors) whose
  // tensors are all parameters (the engine also keeps units resident whose tensors another
  // unit shares).
  bool streamable = false;
  bool lookup = false;  // read by row lookup (an embedding): see Unit::on_demand
  // A mixture-of-experts layer's experts: each of its tensors stacks this many experts'
  // weights along its first dimension, and a forward uses those its routing chose
  // (enter(unit, experts) reads only theirs). 0: not routed.
  int experts = 0;
};

struct EngineOptions {
  uint64_t memory_budget = 0;  // bytes for weights, resident and in flight; 0: auto_budget()
  int threads = 1;             // prefetch reader threads
  ReadMode read_mode = ReadMode::Buffer;
  bool warm_up = true;         // read the resident weights in before the first forward
  // Re-lay out what streams from rates measured on each forward.
  bool adapt = true;
  // With `adapt`: compute the streamed modules with one intra-op thread fewer where the
  // reads bound them (compute_threads.h). Off by default: a kernel that splits a reduction
  // across threads sums in another order on fewer threads, so outputs may differ in the
  // last bits from the same model run on the caller's count (an fp32 Llama's logits by
  // 2e-6 on a Xeon with AMX).
  bool narrow_compute = false;
  // Checksums: None; Full, every tensor when the engine starts; Lazy, each tensor the first
  // time its bytes are read: by the warm-up and prefetch readers as they read, and what the
  // first forward faulted in itself at its end, before its result is handed back. A
  // mismatch throws FormatError naming the file and the tensor.
  Verify verify = Verify::None;
};

// One number of the engine's statistics. The names are defined here only: every entry
// point reports these names.
struct Stat {
  std::string name;
  double value = 0;
  bool integer = true;
};

// What one forward did.
struct PassStats {
  double forward_seconds = 0;
  uint64_t bytes_read = 0;       // read from storage by the prefetch reader
  uint64_t prefetch_hits = 0;    // a streamed module found its weights in memory
  uint64_t prefetch_misses = 0;  // it waited for them
  uint64_t mispredicts = 0;      // it was not the module the order predicted
  double io_wait_seconds = 0;    // time the forward waited on reads
  // Time the prefetch reader spent reading since the forward before ended (its reads for
  // the next forward's first modules included; with several reader threads, their sum):
  // bytes_read / read_seconds is the speed the reads ran at.
  double read_seconds = 0;
  // Wall time while this forward ran with at least one read in flight: near
  // forward_seconds, the disk bounds the forward. (read_seconds / forward_seconds can pass
  // 1: it also counts reads between forwards, and sums reads that ran at once.)
  double forward_read_seconds = 0;
  uint64_t peak_in_flight_bytes = 0;
  uint64_t resident_bytes = 0;   // under the plan this forward ran
  int streamed_runs = 0;
  uint64_t budget_bytes = 0;     // the budget the forward ran under
  // Experts of streamed routed units the forward's routing chose and found in the expert
  // cache (expert_cache.h): not read.
  uint64_t expert_cache_hits = 0;
  // Intra-op threads its streamed modules computed with: one fewer than the caller's where
  // the reads bound them (compute_threads.h), the caller's count otherwise.
  int compute_threads = 0;
  std::vector<Stat> fields() const;
};

// Where each module's weights live under a plan.
enum class Residency { Resident, Streamed, Lookup };
const char* residency_name(Residency r);

struct ModulePlacement {
  std::string name;
  uint64_t nbytes = 0;
  Residency residency = Residency::Resident;
};

// The planner's units for `specs`: sizes from the store, streamable only where no other
// unit shares a stored tensor (tied weights). `stored`, if given, gets each unit's stored
// (canonical) tensor names. Throws KeyError for a tensor not in the store.
std::vector<Unit> units_of(const Store& store, const std::vector<UnitSpec>& specs,
                           std::vector<std::vector<std::string>>* stored = nullptr);
// The same for tensors not in a file yet (a dry run): `resolve` gives a tensor's stored
// name (tied tensors share one) and its bytes.
using TensorResolver = std::function<std::pair<std::string, uint64_t>(const std::string&)>;
std::vector<Unit> units_of(const std::vector<UnitSpec>& specs, const TensorResolver& resolve,
                           std::vector<std::vector<std::string>>* stored = nullptr);

class Engine {
 public:
  // Plans `units` in their given (registration) order under the budget and, if anything
  // streams, starts the prefetch reader; starts the warm-up reader. Throws
  // BudgetTooSmallError naming the module that cannot fit, KeyError for a tensor not in
  // the store, std::invalid_argument for bad options.
  Engine(std::shared_ptr<Store> store, const std::vector<UnitSpec>& units, EngineOptions options,
         std::unique_ptr<DeviceBackend> backend = std::make_unique<CpuBackend>());
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // A forward of the root starts (nested calls count once). With `restart`, a pass still
  // open (its forward failed before end()) is abandoned first: for callers that cannot
  // run code on an exception (TorchScript programs).
  void begin(bool restart = false);
  // `unit`'s module is about to run: blocks until its weights are in memory.
  void enter(int unit);
  // The same for a routed unit (UnitSpec::experts) whose routing chose `experts`: where it
  // streams, only those experts' slices are read (ids outside the unit are ignored). For
  // any other unit, as enter(unit).
  void enter(int unit, const std::vector<int64_t>& experts);
  // Units read by their routing when they stream (none with direct reads, which read whole
  // pages in place, or with lazy checks, which hash whole tensors).
  std::vector<int> routed_units() const;
  // `unit`'s module has run: streamed weights leave memory.
  void exit(int unit);
  // The forward ended: records its statistics and, on the first forward or after a
  // mispredict, adopts the order just seen; otherwise measures rates and may re-lay out.
  // With `failed` (it raised), the units it left entered are released and nothing is
  // learned from it. Throws IOError if the forward read a part of the file that is gone.
  void end(bool failed = false);

  // Plans again, now, with the known order and `rates` (instead of measured ones): for
  // callers that know their rates, and for tests of the layouts.
  void replan(const PassRates& rates);

  bool streams() const;
  // Nothing streams and the warm-up reader is still reading: enter() waits for the units it
  // reads (callers that skip enter() when nothing streams call it until this turns false).
  bool warming_up() const;
  Plan plan() const;
  std::vector<ModulePlacement> placements() const;
  const std::vector<Unit>& units() const { return units_; }
  std::vector<int> order() const;
  // Bytes for weights now: an auto budget moves after forwards to what the cgroup has left
  // (adapted_budget, residency.h); a given one never changes.
  uint64_t budget() const;
  std::vector<PassStats> passes() const;
  // The plan's figures, the warm-up's, and the reader's (direct_reads: 1 when streamed
  // weights are read past the page cache into memory put in place, placed_bytes of it in
  // place now), by name.
  std::vector<Stat> summary() const;
  // The additive pass statistics summed over every forward.
  std::vector<Stat> totals() const;
  // Messages for the caller to show (a re-plan that could not be made).
  std::vector<std::string> take_warnings();

 private:
  // The plan for `order` under the budget, its window sized for the read groups there.
  Plan plan_for(const std::vector<int>& order, const std::set<int>& ran, const PassRates& rates, int current_runs) const;
  void adopt_order_locked(const std::vector<int>& order);
  // An auto budget moved to what the memory cgroup has left after a forward; true when it
  // changed (and the plan with it). `grow_only`: after the first forward, whose peak holds
  // the cold start's reads: a measure that can only overstate the usage may grow the
  // budget, never shrink it.
  bool adapt_budget_locked(bool grow_only = false);
  // A layout for the rates `measured` on the forward that ran `order`.
  void relayout_locked(const std::vector<int>& order, const PassRates& measured);
  // The next forwards' streamed modules compute on one thread fewer (on the CPU only).
  bool narrows_locked(const PassRates& rates, bool narrowed) const;
  void switch_plan_locked(const Plan& plan);
  // The units plans made resident since the last call that the latest plan keeps resident.
  std::vector<int> take_arriving_locked();
  // Reads `arriving` in whole (readahead-free and mapped, as the warm-up reads; without mu_):
  // a resident unit comes in once, at the disk's speed, instead of page by page as the next
  // forwards touch it. A mixture-of-experts layer's routed experts would otherwise come in a
  // few experts per token, with the read-around of each fault cached and unmapped beside them.
  void bring_in_arriving(const std::vector<int>& arriving);
  void set_plan_locked(const Plan& plan);
  void abandon_locked();
  // Lazy verification, after the first forward: every tensor the readers do not check
  // (all but the units in `streamed`, which the prefetch reader checks as it reads them).
  void verify_unread(const std::vector<int>& streamed);
  std::vector<std::vector<ByteRange>> ranges_of(const std::vector<int>& units) const;
  // Waits for `unit` and, for a routed one, reads the slices of `experts` (all of them
  // where null); then binds it.
  void enter_unit(int unit, const std::vector<int64_t>* experts);
  // The byte ranges of `experts`' slices of routed `unit` (all of its ranges where null).
  std::vector<ByteRange> expert_parts(int unit, const std::vector<int64_t>* experts) const;
  // Routed `unit`'s module ran: the expert cache learns what it chose, and its pages and
  // the evicted experts' are kept or dropped accordingly. Called without mu_.
  void cache_experts(int unit);
  // Points `unit`'s tensors at where the reader read it in the window's buffer, if it did;
  // and back at the mapping as its last entry exits (before its block is given back).
  void point_at_buffer(int unit);
  void point_back(int unit);
  void point_back_locked(int unit);
  // The expert cache takes the plan's room: what no longer fits, or belongs to a unit now
  // resident, leaves it.
  void size_expert_cache_locked();
  // The byte ranges of `unit`'s experts in the expert cache.
  std::vector<ByteRange> cached_ranges_locked(int unit) const;
  // The cache evicted `evicted`: the units they belong to keep only their other cached
  // experts; returns the evicted experts' byte ranges, for the caller to drop from memory.
  std::vector<ByteRange> evict_locked(const std::vector<ExpertCache::Key>& evicted);

  std::shared_ptr<Store> store_;
  std::vector<Unit> units_;
  std::vector<std::vector<std::string>> tensors_;  // stored (canonical) names per unit
  std::vector<std::vector<ByteRange>> ranges_;
  std::vector<int> experts_;  // per unit: its experts where it is read by routing, else 0
  std::vector<std::vector<ByteRange>> expert_tensors_;  // a routed unit's tensors, each stacking its experts
  EngineOptions options_;
  std::unique_ptr<DeviceBackend> backend_;
  uint64_t budget_ = 0;
  bool adapts_budget_ = false;  // "auto", with adaptation on
  std::unique_ptr<CgroupPeak> peak_;  // per forward, where the cgroup lets us measure it

  mutable std::mutex mu_;
  Plan plan_;
  std::vector<int> order_;     // the execution order the plan was made for
  std::set<int> ran_;          // every unit ever seen running
  bool recorded_ = false;      // an order was seen
  std::set<int> arriving_;     // units made resident by a new plan, read in as the forward ends
  bool settling_ = false;      // the forward after a layout change: not measured
  bool budget_settling_ = false;  // the same, after a change of budget: its usage is not measured
  bool whole_taken_ = false;      // the budget stepped to every weight resident (room_with_other_cache)
  bool whole_refused_ = false;    // and a later measure took that back: not tried again
  bool unread_verified_ = false;  // lazy checks of what no reader read are done
  PassRates rates_;
  // The streamed modules of the next passes compute with one thread fewer (on the CPU only).
  bool narrow_compute_ = false;
  bool pass_narrowed_ = false;  // this pass narrowed: its rates were measured so
  int last_streamed_ = -1;      // the last unit of the streamed order the reader reads
  ComputeThreads compute_threads_;
  int depth_ = 0;
  std::chrono::steady_clock::time_point started_;
  double reading_seconds_at_start_ = 0;  // the prefetcher's reading_seconds when the forward began
  std::vector<int> pass_order_;  // units entered in this forward
  // The fewest bytes a streamed routed unit read this forward (its chosen experts' slices
  // not in the expert cache).
  uint64_t pass_routed_read_ = 0;
  uint64_t pass_expert_hits_ = 0;
  // The experts of streamed routed units that stay in memory between forwards, and per
  // unit what its routing chose when it was last entered (all: every expert).
  std::unique_ptr<ExpertCache> expert_cache_;
  std::vector<std::vector<int64_t>> chosen_;
  std::vector<bool> chose_all_;
  std::vector<int> open_;        // entered and not yet exited
  // Per unit: how many of its entries run from the window's buffer (read_mode="buffer"): its
  // tensors point there (Store::point_at) until the last of them exits.
  std::vector<int> pointed_;
  // Per unit, its stored tensors that hold bytes, with their offsets in the file: what
  // point_at_buffer() points and point_back() points back.
  std::vector<std::vector<std::pair<std::string, uint64_t>>> tensor_offsets_;
  std::vector<PassStats> passes_;
  std::vector<std::string> warnings_;
  std::unique_ptr<Prefetcher> prefetcher_;
  std::unique_ptr<WarmupReader> warmup_;
  std::vector<int> warmup_slot_;  // per unit, its index in the warm-up's list (-1: not there)
};

}  // namespace litcore
