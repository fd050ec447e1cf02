#include "litcore/engine.h"

#include "litcore/read_groups.h"

#include "litcore/options.h"

#include <algorithm>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>

namespace litcore {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kNoneRead = std::numeric_limits<uint64_t>::max();  // no routed unit streamed yet this pass

Stat count(const char* name, uint64_t v) { return {name, static_cast<double>(v), true}; }
Stat seconds(const char* name, double v) { return {name, v, false}; }

}  // namespace

std::vector<Stat> PassStats::fields() const {
  return {seconds("forward_seconds", forward_seconds),
          count("bytes_read", bytes_read),
          count("prefetch_hits", prefetch_hits),
          count("prefetch_misses", prefetch_misses),
          count("mispredicts", mispredicts),
          seconds("io_wait_seconds", io_wait_seconds),
          seconds("read_seconds", read_seconds),
          seconds("forward_read_seconds", forward_read_seconds),
          count("peak_in_flight_bytes", peak_in_flight_bytes),
          count("resident_bytes", resident_bytes),
          count("streamed_runs", static_cast<uint64_t>(streamed_runs)),
          count("budget_bytes", budget_bytes),
          count("compute_threads", static_cast<uint64_t>(compute_threads)),
          count("expert_cache_hits", expert_cache_hits)};
}

const char* residency_name(Residency r) {
  switch (r) {
    case Residency::Resident: return "resident";
    case Residency::Streamed: return "streamed";
    case Residency::Lookup: return "lookup";
  }
  return "?";
}

std::vector<Unit> units_of(const std::vector<UnitSpec>& specs, const TensorResolver& resolve,
                           std::vector<std::vector<std::string>>* stored) {
  // Units sharing a stored tensor (tied weights) cannot stream: dropping one would drop
  // the other's weights while it runs.
  std::vector<std::vector<std::string>> canonical;
  std::map<std::string, int> users;
  std::map<std::string, uint64_t> bytes;
  for (const auto& spec : specs) {
    std::set<std::string> seen;
    std::vector<std::string> names;
    for (const auto& name : spec.tensors) {
      auto [c, n] = resolve(name);
      bytes[c] = n;
      if (seen.insert(c).second) names.push_back(c);
    }
    for (const auto& n : names) ++users[n];
    canonical.push_back(std::move(names));
  }
  std::vector<Unit> units;
  for (size_t i = 0; i < specs.size(); ++i) {
    Unit u;
    u.name = specs[i].name.empty() ? "<root>" : specs[i].name;
    bool shared = false;
    for (const auto& n : canonical[i]) {
      u.nbytes += bytes[n];
      shared = shared || users[n] > 1;
    }
    u.streamable = specs[i].streamable && !shared;
    u.on_demand = specs[i].lookup;
    // Read by its routing where every tensor splits evenly into its experts' slices.
    int n = specs[i].experts;
    u.routed = n >= 2 && u.streamable && !u.on_demand && !canonical[i].empty();
    for (const auto& name : canonical[i]) u.routed = u.routed && bytes[name] % static_cast<uint64_t>(n) == 0;
    units.push_back(std::move(u));
  }
  if (stored) *stored = std::move(canonical);
  return units;
}

std::vector<Unit> units_of(const Store& store, const std::vector<UnitSpec>& specs,
                           std::vector<std::vector<std::string>>* stored) {
  const FileIndex& index = store.index();
  return units_of(specs, [&](const std::string& name) {
    const TensorInfo& info = store.info(name);
    const TensorInfo& s = info.alias_of >= 0 ? index.tensors[info.alias_of] : info;
    return std::make_pair(s.name, s.nbytes);
  }, stored);
}

Engine::Engine(std::shared_ptr<Store> store, const std::vector<UnitSpec>& specs, EngineOptions options,
               std::unique_ptr<DeviceBackend> backend)
    : store_(std::move(store)), options_(options), backend_(std::move(backend)) {
  if (!store_) throw std::invalid_argument("litcore: the engine needs a store");
  check_threads(options_.threads);
  if (!backend_) backend_ = std::make_unique<CpuBackend>();
  // Tensors pointed at the window's buffer are the CPU's own; lazy checks hash what the
  // mapping holds, so they read through it. Settled before the first plan, which sizes the
  // window for the mode the reader will use.
  if (options_.read_mode == ReadMode::Buffer && (backend_->device() != "cpu" || options_.verify == Verify::Lazy)) {
    options_.read_mode = ReadMode::Sendfile;
  }
  units_ = units_of(*store_, specs, &tensors_);
  pointed_.assign(units_.size(), 0);
  tensor_offsets_.resize(units_.size());
  for (size_t i = 0; i < units_.size(); ++i) {
    for (const auto& name : tensors_[i]) {
      const TensorInfo& t = store_->info(name);
      if (t.nbytes > 0) tensor_offsets_[i].emplace_back(name, t.offset);
    }
  }
  for (const auto& names : tensors_) {
    std::vector<ByteRange> ranges;
    for (const auto& [offset, length] : store_->byte_ranges(names)) ranges.push_back({offset, length});
    ranges_.push_back(std::move(ranges));
  }
  // Routed units are read by their routing where the read path reads exact byte ranges
  // through the page cache: direct reads put whole pages in place, and lazy checks hash
  // whole tensors, so there they are read whole, and planned as any unit read ahead.
  bool parts_readable = options_.verify != Verify::Lazy &&
                        resolve_read_mode(options_.read_mode, *store_->mapping()) != ReadMode::Direct;
  experts_.assign(units_.size(), 0);
  expert_tensors_.resize(units_.size());
  for (size_t i = 0; i < units_.size(); ++i) {
    if (!units_[i].routed) continue;
    if (!parts_readable) {
      units_[i].routed = false;
      continue;
    }
    experts_[i] = specs[i].experts;
    // Per tensor: a unit's byte ranges merge tensors stored back to back.
    for (const auto& name : tensors_[i]) {
      const TensorInfo& t = store_->info(name);
      expert_tensors_[i].push_back({t.offset, t.nbytes});
    }
  }
  std::vector<uint64_t> slice_bytes;
  for (size_t i = 0; i < units_.size(); ++i) {
    slice_bytes.push_back(experts_[i] > 0 ? units_[i].nbytes / static_cast<uint64_t>(experts_[i]) : 0);
  }
  expert_cache_ = std::make_unique<ExpertCache>(experts_, slice_bytes);
  chosen_.resize(units_.size());
  chose_all_.assign(units_.size(), false);
  if (options_.verify == Verify::Full) {
    for (const auto& names : tensors_) store_->verify_once(names);
  }
  budget_ = options_.memory_budget > 0 ? options_.memory_budget : auto_budget();
  adapts_budget_ = options_.memory_budget == 0 && options_.adapt;
  if (adapts_budget_) peak_ = std::make_unique<CgroupPeak>();
  if (peak_ && !peak_->usable()) peak_.reset();
  for (size_t i = 0; i < units_.size(); ++i) order_.push_back(static_cast<int>(i));  // until a forward is seen
  set_plan_locked(plan_for(order_, {}, {}, 1));
  if (options_.warm_up) {
    std::vector<int> resident;
    for (int i : order_) {
      if (plan_.resident.count(i)) resident.push_back(i);
    }
    std::function<void(size_t)> check;
    if (options_.verify == Verify::Lazy) check = [this, resident](size_t i) { store_->verify_once(tensors_[resident[i]]); };
    if (!resident.empty()) warmup_ = std::make_unique<WarmupReader>(store_->mapping(), ranges_of(resident), check);
    warmup_slot_.assign(units_.size(), -1);
    for (size_t k = 0; k < resident.size(); ++k) warmup_slot_[resident[k]] = static_cast<int>(k);
  }
  if (plan_.streams()) {
    Prefetcher::Options po;
    po.window_bytes = plan_.window_bytes;
    po.threads = options_.threads;
    po.read_mode = options_.read_mode;
    for (const auto& u : units_) po.on_demand.push_back(u.on_demand);
    for (int n : experts_) po.deferred.push_back(n > 0);
    if (options_.verify == Verify::Lazy) po.after_read = [this](int unit) { store_->verify_once(tensors_[unit]); };
    prefetcher_ = std::make_unique<Prefetcher>(store_->mapping(), ranges_, po);
    prefetcher_->set_lookup_cache(lookup_cache_bytes(plan_));
    prefetcher_->set_order(plan_.streamed_order);
    size_expert_cache_locked();
  }
}

Engine::~Engine() {
  // Tensors still pointing at the window's buffer (a forward left unfinished) read the
  // mapping again before the buffer goes.
  for (size_t unit = 0; unit < pointed_.size(); ++unit) {
    while (pointed_[unit] > 0) point_back_locked(static_cast<int>(unit));
  }
  warmup_.reset();      // joins its thread
  prefetcher_.reset();  // joins its threads
}

Plan Engine::plan_for(const std::vector<int>& order, const std::set<int>& ran, const PassRates& rates,
                      int current_runs) const {
  // Direct reads have no readahead to keep sequential: each unit is read alone wherever the
  // file stores it, so the window holds no read groups (a name-ordered file plans as a
  // model-ordered one), and nothing is read past the window (make_plan weighs spread layouts).
  ReadMode mode = prefetcher_ ? prefetcher_->read_mode() : resolve_read_mode(options_.read_mode, *store_->mapping());
  bool direct = reads_direct(mode);
  uint64_t group = direct ? 0 : planned_read_group(units_, order, ranges_, budget_);
  return make_plan(units_, order, budget_, ran, 3, rates, current_runs, group, direct);
}

std::vector<std::vector<ByteRange>> Engine::ranges_of(const std::vector<int>& units) const {
  std::vector<std::vector<ByteRange>> out;
  for (int i : units) out.push_back(ranges_[i]);
  return out;
}

void Engine::verify_unread(const std::vector<int>& streamed) {
  std::set<int> read_ahead;  // streamed units: the prefetch reader checks them as it reads them
  std::set<int> lookups;     // streamed lookup units: no reader reads them whole
  for (int i : streamed) (units_[i].on_demand ? lookups : read_ahead).insert(i);
  if (warmup_) {
    warmup_->stop();
    if (auto error = warmup_->error()) std::rethrow_exception(error);
  }
  for (size_t i = 0; i < units_.size(); ++i) {
    if (read_ahead.count(static_cast<int>(i))) continue;
    // A lookup unit that streams is read whole to check it: dropped again as it is hashed,
    // or it would push the resident weights out of a tight memory limit.
    store_->verify_once(tensors_[i], lookups.count(static_cast<int>(i)) > 0);
  }
}

void Engine::begin(bool restart) {
  std::lock_guard<std::mutex> lock(mu_);
  if (restart && depth_ > 0) abandon_locked();
  if (depth_++ > 0) return;
  // A second reader beside the prefetch reader would slow both (one stream reads at the
  // disk's speed, two interleaved at well under half): the warm-up steps aside. When nothing
  // streams it goes on, and enter() waits for what it reads.
  if (warmup_ && prefetcher_) warmup_->stop();
  if (peak_) peak_->reset();
  pass_order_.clear();
  pass_routed_read_ = kNoneRead;
  pass_expert_hits_ = 0;
  open_.clear();
  compute_threads_.capture();
  pass_narrowed_ = false;
  reading_seconds_at_start_ = prefetcher_ ? prefetcher_->stats().reading_seconds : 0;
  started_ = Clock::now();
}

void Engine::enter(int unit) { enter_unit(unit, nullptr); }

void Engine::enter(int unit, const std::vector<int64_t>& experts) { enter_unit(unit, &experts); }

std::vector<int> Engine::routed_units() const {
  std::vector<int> out;
  for (size_t i = 0; i < experts_.size(); ++i) {
    if (experts_[i] > 0) out.push_back(static_cast<int>(i));
  }
  return out;
}

std::vector<ByteRange> Engine::expert_parts(int unit, const std::vector<int64_t>* experts) const {
  if (experts == nullptr) return ranges_[unit];
  int n = experts_[unit];
  std::vector<bool> chosen(static_cast<size_t>(n), false);
  for (int64_t e : *experts) {
    if (e >= 0 && e < n) chosen[static_cast<size_t>(e)] = true;
  }
  // Each tensor stacks the experts along its first dimension: expert e's slice is the e-th
  // of n equal parts. Neighbouring chosen slices are one read.
  std::vector<ByteRange> parts;
  for (const auto& r : expert_tensors_[unit]) {
    uint64_t slice = r.length / static_cast<uint64_t>(n);
    for (int e = 0; e < n; ++e) {
      if (!chosen[static_cast<size_t>(e)]) continue;
      uint64_t offset = r.offset + slice * static_cast<uint64_t>(e);
      if (!parts.empty() && parts.back().offset + parts.back().length == offset) {
        parts.back().length += slice;
      } else {
        parts.push_back({offset, slice});
      }
    }
  }
  return parts;
}

void Engine::enter_unit(int unit, const std::vector<int64_t>* experts) {
  if (unit < 0 || static_cast<size_t>(unit) >= units_.size()) {
    throw std::out_of_range("litcore: unit " + std::to_string(unit) + " out of range (" +
                            std::to_string(units_.size()) + " units)");
  }
  if (!prefetcher_) {
    // Everything resident: nothing to stream, nothing to learn. A cold unit is read by the
    // warm-up's readers (or here) rather than by this forward's page faults.
    if (warmup_ && warmup_slot_[unit] >= 0) warmup_->wait(static_cast<size_t>(warmup_slot_[unit]));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (depth_ > 0) pass_order_.push_back(unit);
    open_.push_back(unit);
    // From the first streamed module the reader reads to the last: the resident stretch
    // between passes computes with every thread.
    if (narrow_compute_ && depth_ > 0 && !plan_.resident.count(unit) && !units_[unit].on_demand) {
      compute_threads_.narrow();
      pass_narrowed_ = pass_narrowed_ || compute_threads_.narrowed();
    }
  }
  try {
    prefetcher_->wait(unit);
    // A routed unit's experts are read now that its routing is known (the readers claimed
    // its room in the window and read nothing of it), but those the expert cache holds.
    if (experts_[unit] > 0) {
      std::vector<int64_t> missing;
      uint64_t hits = 0;
      bool streamed = false;
      std::vector<ByteRange> evicted;
      {
        std::lock_guard<std::mutex> lock(mu_);
        streamed = !plan_.resident.count(unit);
        chose_all_[unit] = experts == nullptr;
        chosen_[unit] = experts ? *experts : std::vector<int64_t>{};
        if (streamed) {
          missing = expert_cache_->missing(unit, experts, &hits);
          // The window's room the cache holds is given back for what this unit reads.
          uint64_t need = missing.size() * expert_cache_->slice_bytes(unit);
          uint64_t capacity = expert_cache_->capacity();
          evicted = evict_locked(expert_cache_->make_room(capacity > need ? capacity - need : 0, open_));
        }
      }
      prefetcher_->release_ranges(evicted);
      uint64_t bytes = prefetcher_->read_parts(unit, expert_parts(unit, streamed ? &missing : experts));
      std::lock_guard<std::mutex> lock(mu_);
      if (streamed) {
        pass_routed_read_ = std::min(pass_routed_read_, bytes);
        pass_expert_hits_ += hits;
      }
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::find(open_.rbegin(), open_.rend(), unit);
    if (it != open_.rend()) open_.erase(std::next(it).base());  // never entered: no exit() to pair
    throw;
  }
  point_at_buffer(unit);
  backend_->bind(unit);
}

void Engine::point_at_buffer(int unit) {
  std::lock_guard<std::mutex> lock(mu_);
  if (pointed_[unit] > 0) {
    ++pointed_[unit];  // entered again while it runs: the same block
    return;
  }
  std::vector<uint8_t*> targets;
  for (const auto& [name, offset] : tensor_offsets_[unit]) {
    uint8_t* at = prefetcher_->buffer_address(unit, offset);
    if (!at) return;  // read into the mapping: its tensors are valid as they are
    targets.push_back(at);
  }
  if (targets.empty()) return;
  for (size_t k = 0; k < targets.size(); ++k) store_->point_at(tensor_offsets_[unit][k].first, targets[k]);
  pointed_[unit] = 1;
}

void Engine::point_back(int unit) {
  std::lock_guard<std::mutex> lock(mu_);
  point_back_locked(unit);
}

void Engine::point_back_locked(int unit) {
  if (pointed_[unit] == 0 || --pointed_[unit] > 0) return;
  for (const auto& [name, offset] : tensor_offsets_[unit]) store_->point_back(name);
}

void Engine::exit(int unit) {
  if (unit < 0 || static_cast<size_t>(unit) >= units_.size()) {
    throw std::out_of_range("litcore: unit " + std::to_string(unit) + " out of range (" +
                            std::to_string(units_.size()) + " units)");
  }
  if (!prefetcher_) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::find(open_.rbegin(), open_.rend(), unit);
    if (it == open_.rend()) return;  // not entered (the pass was abandoned meanwhile)
    open_.erase(std::next(it).base());
    if (unit == last_streamed_) compute_threads_.restore();
  }
  backend_->unbind(unit);
  if (experts_[unit] > 0) cache_experts(unit);
  point_back(unit);
  prefetcher_->done(unit);
}

std::vector<ByteRange> Engine::cached_ranges_locked(int unit) const {
  std::vector<int64_t> ids;
  for (int e : expert_cache_->cached_experts(unit)) ids.push_back(e);
  return ids.empty() ? std::vector<ByteRange>{} : expert_parts(unit, &ids);
}

void Engine::cache_experts(int unit) {
  std::vector<ByteRange> kept, evicted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (plan_.resident.count(unit)) return;
    evicted = evict_locked(expert_cache_->used(unit, chose_all_[unit] ? nullptr : &chosen_[unit], open_));
    kept = cached_ranges_locked(unit);
  }
  prefetcher_->keep(unit, std::move(kept));  // before the unit is dropped
  prefetcher_->release_ranges(evicted);
}

std::vector<ByteRange> Engine::evict_locked(const std::vector<ExpertCache::Key>& evicted) {
  std::set<int> touched;
  std::vector<ByteRange> ranges;
  for (const auto& [u, e] : evicted) {
    std::vector<int64_t> one{e};
    auto parts = expert_parts(u, &one);
    ranges.insert(ranges.end(), parts.begin(), parts.end());
    touched.insert(u);
  }
  for (int u : touched) prefetcher_->keep(u, cached_ranges_locked(u));
  return ranges;
}

void Engine::size_expert_cache_locked() {
  if (!prefetcher_) return;
  for (size_t u = 0; u < units_.size(); ++u) {
    int unit = static_cast<int>(u);
    if (experts_[u] > 0 && plan_.resident.count(unit) && !expert_cache_->cached_experts(unit).empty()) {
      expert_cache_->forget(unit);  // its pages are resident weights now
      prefetcher_->keep(unit, {});
    }
  }
  prefetcher_->release_ranges(evict_locked(expert_cache_->set_capacity(expert_cache_bytes(plan_, units_))));
}

void Engine::abandon_locked() {
  // Units entered by the failed forward would otherwise stay pinned in memory.
  for (int unit : open_) {
    backend_->unbind(unit);
    point_back_locked(unit);
    prefetcher_->done(unit);
  }
  open_.clear();
  depth_ = 0;
  compute_threads_.restore();
}

void Engine::end(bool failed) {
  std::vector<int> verify_streamed;  // set when this is the first forward to finish, under lazy checks
  bool verify_now = false;
  std::vector<int> arriving;  // made resident by this forward's new plans
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (depth_ == 0) return;  // abandoned meanwhile
    if (failed) {
      // A partial order would plan for half a model; the stats it leaves count in the next pass.
      abandon_locked();
      return;
    }
    if (--depth_ > 0) return;
    compute_threads_.restore();
    expert_cache_->forward_done();
    if (options_.verify == Verify::Lazy && !unread_verified_) {
      unread_verified_ = verify_now = true;
      verify_streamed = plan_.streamed_order;  // the plan this forward ran
    }
    PassStats entry;
    entry.budget_bytes = budget_;
    entry.forward_seconds = std::chrono::duration<double>(Clock::now() - started_).count();
    if (prefetcher_) {
      PrefetchStats s = prefetcher_->stats();
      // Taken with the forward's end: the replanning below may read on.
      entry.forward_read_seconds = std::max(s.reading_seconds - reading_seconds_at_start_, 0.0);
      bool mispredicted = s.mispredicts > 0;
      bool steady = recorded_ && !mispredicted;
      // A new budget makes a new plan: its usage and layout are measured once that has
      // settled. The plan the first forward's order made is measured at once: it differs
      // from the one before in what runs, not in how much is resident.
      bool replanned = false;
      if (steady && budget_settling_) {
        budget_settling_ = false;
      } else if (steady) {
        replanned = adapt_budget_locked();
      }
      if (steady && options_.adapt) {
        // Every forward after the first decides the next one's compute threads, also those
        // whose plan is settling: what they read or fault in for new residents only counts
        // as compute, which keeps every thread.
        PassRates seen = measure_rates(units_, pass_order_, entry.forward_seconds, s, rates_);
        narrow_compute_ = narrows_locked(seen, pass_narrowed_);
        if (!replanned) relayout_locked(pass_order_, seen);
      }
      bool first = !recorded_;
      if (!recorded_ || mispredicted) adopt_order_locked(pass_order_);
      // Settled a forward sooner where the first one already shows room to grow into.
      if (first) adapt_budget_locked(/*grow_only=*/true);
      // Taken again after a plan change: what it drops unused was read by this forward.
      s = prefetcher_->stats();
      prefetcher_->reset_stats();
      entry.bytes_read = s.bytes_read;
      entry.prefetch_hits = s.hits;
      entry.prefetch_misses = s.misses;
      entry.mispredicts = s.mispredicts;
      entry.io_wait_seconds = s.wait_seconds;
      entry.read_seconds = s.read_seconds;
      entry.peak_in_flight_bytes = s.peak_in_flight_bytes;
      entry.expert_cache_hits = pass_expert_hits_;
    }
    entry.resident_bytes = plan_.resident_bytes;
    entry.streamed_runs = plan_.runs;
    entry.compute_threads = compute_threads_.full() - (pass_narrowed_ ? 1 : 0);
    passes_.push_back(entry);
    arriving = take_arriving_locked();
  }
  // The tensors no reader checked (resident weights the forward faulted in itself): checked
  // now that they are in memory, before this first forward's result is handed back.
  if (verify_now) verify_unread(verify_streamed);
  bring_in_arriving(arriving);
  // A forward that read zeros where the file was cut short fails here, naming the file.
  store_->mapping()->check_faults();
}

void Engine::adopt_order_locked(const std::vector<int>& order) {
  recorded_ = true;
  if (order.empty()) return;
  ran_.insert(order.begin(), order.end());
  Plan plan;
  try {
    plan = plan_for(order, ran_, rates_, plan_.runs);
  } catch (const BudgetTooSmallError& e) {
    warnings_.push_back(std::string(e.what()) + "; keeping the plan made before the first forward");
    return;
  }
  order_ = order;
  switch_plan_locked(plan);
}

bool Engine::adapt_budget_locked(bool grow_only) {
  if (!adapts_budget_) return false;
  auto mapping = store_->mapping();
  Mapping::PagesInMemory in_memory = mapping->pages_in_memory();
  MemoryRoom room = memory_room(in_memory.bytes(0, mapping->size()));
  if (!room.limit) return false;
  uint64_t peak = peak_ ? peak_->read() : 0;
  if (peak) {
    // The forward's own peak: what it took and gave back before its end included.
    room.free = std::min(room.free, static_cast<int64_t>(room.limit) - static_cast<int64_t>(peak) +
                                        static_cast<int64_t>(room.reclaimable));
  } else {
    // Only the usage now: the part of the window the reader does not hold at this moment
    // fills again.
    // (The window's buffer, with read_mode="buffer", is held whole at every moment.)
    uint64_t held = std::max(prefetcher_->stats().in_flight_bytes, prefetcher_->buffer_bytes());
    room.free -= static_cast<int64_t>(plan_.window_bytes - std::min(held, plan_.window_bytes));
  }
  // Resident weights the kernel has evicted are memory the plan counts on and does not have.
  for (int unit : plan_.resident) {
    for (const auto& r : ranges_[unit]) room.free -= static_cast<int64_t>(r.length - in_memory.bytes(r.offset, r.length));
  }
  if (plan_.routed_bytes > 0) {
    // The usage measured is not the plan's whole footprint where routed units stream: the
    // window's room for a layer's experts held only the chosen ones (a prefill, or a C++
    // app entering without ids, reads them all), and the budget can leave more unused
    // than a unit read whole (a layer's experts that did not fit). Counted as room, the
    // budget would grow by them into the next layer's experts, a forward would then meet
    // the limit, and the budget shrink again, forward after forward.
    uint64_t largest = largest_streamed_routed(plan_, units_);
    uint64_t read = pass_routed_read_ == kNoneRead ? 0 : std::min(pass_routed_read_, largest);
    // What the expert cache holds of that room is in use, and measured.
    uint64_t read_ahead = plan_.window_bytes > largest ? plan_.window_bytes - largest : 0;
    uint64_t held = plan_.resident_bytes + read_ahead + read + expert_cache_->bytes();
    room.free -= static_cast<int64_t>(budget_ > held ? budget_ - held : 0);
  }
  // While anything streams, the kernel's readahead past each read moves the peak from one
  // forward to the next by about its reach: measured or not, that is kept free too.
  uint64_t transient = plan_.streams() ? mapping->readahead_reach() : 0;
  // More than every weight changes nothing.
  uint64_t budget = std::min(adapted_budget(budget_, room, transient), std::max(plan_.total_bytes, budget_));
  if (whole_taken_ && budget < budget_) {
    // At the limit with other files' cache still charged, the usage alone would shrink a
    // step that holds: it is given back only once that cache no longer covers the reserve
    // (the kernel took resident weights instead), and not tried again.
    if (whole_holds(room)) {
      budget = budget_;
    } else {
      whole_taken_ = false;
      whole_refused_ = true;
    }
  }
  uint64_t whole = plan_.total_bytes - plan_.lookup_bytes;
  if (!whole_taken_ && !whole_refused_ && budget < whole) {
    // All of that room: what is left beside the weights keeps the rows lookups touched
    // cached (lookup_cache_bytes).
    uint64_t stepped = whole_step(budget_, whole, plan_.total_bytes, room);
    if (stepped != budget_) {
      budget = stepped;
      whole_taken_ = true;
    }
  }
  if (budget == budget_ || (grow_only && budget < budget_)) return false;
  uint64_t before = budget_;
  budget_ = budget;
  Plan plan;
  try {
    plan = plan_for(order_, ran_, rates_, plan_.runs);
  } catch (const BudgetTooSmallError&) {
    budget_ = before;  // shrinking further leaves no plan: the kernel evicts instead
    return false;
  }
  if (budget > before && plan.resident == plan_.resident) {
    // A budget that buys no residency stays where it was: raised anyway, it would ratchet
    // up forward after forward with nothing to show for it in the usage it is measured by.
    budget_ = before;
    return false;
  }
  switch_plan_locked(plan);
  budget_settling_ = true;
  return true;
}

void Engine::relayout_locked(const std::vector<int>& order, const PassRates& measured) {
  // One run when reading is the bottleneck; several spread along the order when compute is
  // and one run's read would not hide under it (residency.h).
  if (settling_) {
    settling_ = false;
    return;
  }
  rates_ = measured;
  if (!rates_.known() || order != order_) return;
  Plan plan;
  try {
    plan = plan_for(order_, ran_, rates_, plan_.runs);
  } catch (const BudgetTooSmallError&) {
    return;
  }
  switch_plan_locked(plan);
}

void Engine::replan(const PassRates& rates) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!prefetcher_) return;
  rates_ = rates;
  narrow_compute_ = narrows_locked(rates_, false);
  std::set<int> ran = ran_;
  ran.insert(order_.begin(), order_.end());
  switch_plan_locked(plan_for(order_, ran, rates_, plan_.runs));
}

bool Engine::narrows_locked(const PassRates& rates, bool narrowed) const {
  return options_.narrow_compute && backend_->device() == "cpu" &&
         narrow_streamed_compute(rates, compute_threads_.full(), narrowed);
}

void Engine::set_plan_locked(const Plan& plan) {
  plan_ = plan;
  last_streamed_ = -1;
  for (auto it = plan_.streamed_order.rbegin(); it != plan_.streamed_order.rend(); ++it) {
    if (!units_[*it].on_demand) {
      last_streamed_ = *it;
      break;
    }
  }
}

void Engine::switch_plan_locked(const Plan& plan) {
  Plan old = plan_;
  set_plan_locked(plan);
  prefetcher_->set_lookup_cache(lookup_cache_bytes(plan));
  size_expert_cache_locked();
  if (plan.resident == old.resident && plan.streamed_order == old.streamed_order) return;  // newer figures only
  settling_ = true;
  prefetcher_->set_window(plan.window_bytes);
  prefetcher_->set_order(plan.streamed_order);
  // Newly streamed weights leave memory now; newly resident ones are read in as this
  // forward ends (bring_in_arriving).
  std::set<int> before(old.streamed_order.begin(), old.streamed_order.end());
  std::vector<std::string> leaving;
  for (int i : std::set<int>(plan.streamed_order.begin(), plan.streamed_order.end())) {
    if (!before.count(i)) leaving.insert(leaving.end(), tensors_[i].begin(), tensors_[i].end());
  }
  if (!leaving.empty()) store_->release(leaving);
  for (int i : plan.resident) {
    if (before.count(i)) arriving_.insert(i);
  }
}

std::vector<int> Engine::take_arriving_locked() {
  std::vector<int> arriving;
  for (int unit : arriving_) {
    if (plan_.resident.count(unit)) arriving.push_back(unit);  // still resident under the latest plan
  }
  arriving_.clear();
  return arriving;
}

void Engine::bring_in_arriving(const std::vector<int>& arriving) {
  if (arriving.empty()) return;
  auto mapping = store_->mapping();
  for (const auto& ranges : ranges_of(arriving)) {
    for (const auto& r : ranges) {
      try {
        mapping->fill_and_map_small(r.offset, r.length);
      } catch (const std::exception&) {
        // Advice: a range that cannot be read fails the forward that faults it in, naming the file.
      }
    }
  }
}

uint64_t Engine::budget() const {
  std::lock_guard<std::mutex> lock(mu_);
  return budget_;
}

bool Engine::warming_up() const { return warmup_ && !prefetcher_ && warmup_->running(); }

bool Engine::streams() const {
  std::lock_guard<std::mutex> lock(mu_);
  return plan_.streams();
}

Plan Engine::plan() const {
  std::lock_guard<std::mutex> lock(mu_);
  return plan_;
}

std::vector<int> Engine::order() const {
  std::lock_guard<std::mutex> lock(mu_);
  return order_;
}

std::vector<PassStats> Engine::passes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return passes_;
}

std::vector<ModulePlacement> Engine::placements() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ModulePlacement> out;
  for (size_t i = 0; i < units_.size(); ++i) {
    Residency r = Residency::Resident;
    if (!plan_.resident.count(static_cast<int>(i))) r = units_[i].on_demand ? Residency::Lookup : Residency::Streamed;
    out.push_back({units_[i].name, units_[i].nbytes, r});
  }
  return out;
}

std::vector<Stat> Engine::summary() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {count("forwards", passes_.size()),
          count("budget_bytes", budget_),
          count("weight_bytes", plan_.total_bytes),
          count("resident_bytes", plan_.resident_bytes),
          count("streamed_bytes_per_forward", plan_.streamed_bytes),
          count("routed_bytes", plan_.routed_bytes),
          count("lookup_bytes", plan_.lookup_bytes),
          count("window_bytes", plan_.window_bytes),
          count("expert_cache_bytes", expert_cache_->bytes()),
          count("streamed_runs", static_cast<uint64_t>(plan_.runs)),
          count("warmup_bytes_read", warmup_ ? warmup_->bytes_read() : 0),
          count("warmup_running", warmup_ && warmup_->running() ? 1 : 0),
          count("direct_reads", prefetcher_ && prefetcher_->read_mode() == ReadMode::Direct ? 1 : 0),
          count("buffer_reads", prefetcher_ && prefetcher_->read_mode() == ReadMode::Buffer ? 1 : 0),
          count("buffer_bytes", prefetcher_ ? prefetcher_->buffer_bytes() : 0),
          count("placed_bytes", store_->mapping()->placed_bytes())};
}

std::vector<Stat> Engine::totals() const {
  std::lock_guard<std::mutex> lock(mu_);
  PassStats sum;
  for (const auto& p : passes_) {
    sum.forward_seconds += p.forward_seconds;
    sum.bytes_read += p.bytes_read;
    sum.prefetch_hits += p.prefetch_hits;
    sum.prefetch_misses += p.prefetch_misses;
    sum.mispredicts += p.mispredicts;
    sum.io_wait_seconds += p.io_wait_seconds;
    sum.read_seconds += p.read_seconds;
    sum.forward_read_seconds += p.forward_read_seconds;
    sum.expert_cache_hits += p.expert_cache_hits;
  }
  std::vector<Stat> out;
  for (const auto& s : sum.fields()) {
    if (s.name != "peak_in_flight_bytes" && s.name != "resident_bytes" && s.name != "streamed_runs" &&
        s.name != "budget_bytes" && s.name != "compute_threads") {
      out.push_back(s);
    }
  }
  return out;
}

std::vector<std::string> Engine::take_warnings() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  out.swap(warnings_);
  return out;
}

}  // namespace litcore
