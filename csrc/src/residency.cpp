#include "litcore/residency.h"

#include "litcore/pass_model.h"
#include "litcore/read_groups.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

namespace litcore {
namespace {

std::string human(uint64_t n) {
  char buf[64];
  if (n >= (1ull << 20)) {
    std::snprintf(buf, sizeof(buf), "%.1f MiB", static_cast<double>(n) / (1 << 20));
  } else {
    std::snprintf(buf, sizeof(buf), "%.1f KiB", static_cast<double>(n) / (1 << 10));
  }
  return buf;
}

constexpr uint64_t kNoLimit = 1ull << 60;

uint64_t read_limit(const std::string& path) {
  std::ifstream f(path);
  std::string text;
  if (!(f >> text) || text == "max") return 0;
  try {
    uint64_t v = std::stoull(text);
    return v >= kNoLimit ? 0 : v;
  } catch (...) {
    return 0;
  }
}

// One way to fill the budget: `forced` (some of the largest units) resident, the window
// sized for the largest unit left streaming, the rest resident where it fits.
struct Fill {
  std::set<int> resident;
  std::set<int> forced;
  uint64_t window = 0;
  uint64_t resident_bytes = 0;
};

// The window for units read ahead of sizes `sizes`, the largest `largest`: two of the
// largest, so the reader can fetch the next one while the current one computes; units the
// reader reads together (read_groups.h) are read in file order as the window makes room: a
// group, and the next one's first unit read while it computes.
uint64_t read_ahead_window(std::vector<uint64_t> sizes, uint64_t largest, int depth, uint64_t read_group) {
  if (sizes.empty()) return 0;
  std::sort(sizes.begin(), sizes.end());
  uint64_t median = sizes[sizes.size() / 2];
  uint64_t window = std::max(2 * largest, largest + static_cast<uint64_t>(std::max(depth - 1, 0)) * median);
  if (read_group > largest) window = std::max(window, read_group + largest);
  return window;
}

// Where routed units stream (Unit::routed), the window they need: the largest of them once
// (claimed when it is entered, never ahead), beside the read-ahead room of the units of `run`
// read whole that are not `resident`. 0 when `run` holds no routed unit.
uint64_t routed_window(const std::vector<Unit>& units, const std::vector<int>& run, const std::set<int>& resident,
                       int depth, uint64_t read_group) {
  std::vector<uint64_t> sizes;
  uint64_t largest = 0, largest_routed = 0;
  for (int i : run) {
    if (units[i].routed) {
      largest_routed = std::max(largest_routed, units[i].nbytes);
    } else if (!resident.count(i)) {
      sizes.push_back(units[i].nbytes);
      largest = std::max(largest, units[i].nbytes);
    }
  }
  return largest_routed > 0 ? largest_routed + read_ahead_window(sizes, largest, depth, read_group) : 0;
}

// The window and the units `forced` leaves to place (in execution order).
Fill start_fill(const std::vector<Unit>& units, const std::vector<int>& candidates, const std::set<int>& forced,
                uint64_t room, int depth, uint64_t read_group, std::vector<int>& rest) {
  Fill f;
  std::vector<uint64_t> sizes;
  uint64_t largest = 0;
  for (int i : candidates) {
    if (forced.count(i)) continue;
    rest.push_back(i);
    sizes.push_back(units[i].nbytes);
    largest = std::max(largest, units[i].nbytes);
  }
  for (int i : forced) f.resident_bytes += units[i].nbytes;
  f.resident = f.forced = forced;
  uint64_t window = read_ahead_window(sizes, largest, depth, read_group);
  if (uint64_t routed = routed_window(units, rest, {}, depth, read_group)) window = std::min(window, routed);
  f.window = std::min(window, room - f.resident_bytes);
  return f;
}

// What streams is one run: a prefix and a suffix of the order stay resident.
Fill fill(const std::vector<Unit>& units, const std::vector<int>& candidates, const std::set<int>& forced,
          uint64_t room, int depth, uint64_t read_group) {
  std::vector<int> rest;
  Fill f = start_fill(units, candidates, forced, room, depth, read_group, rest);
  uint64_t spare = room - f.resident_bytes - f.window;
  // Keeps unit i resident if it fits; false once one does not (the run ends there).
  auto take = [&](int i) {
    if (units[i].nbytes > spare) return false;
    f.resident.insert(i);
    f.resident_bytes += units[i].nbytes;
    spare -= units[i].nbytes;
    return true;
  };
  auto place = [&](const std::vector<int>& run) {
    size_t head = 0;
    while (head < run.size() && take(run[head])) ++head;
    size_t tail = run.size();
    while (tail > head + 1 && take(run[tail - 1])) --tail;
  };
  // Units read whole every forward first: a routed unit kept resident saves only the share
  // of it a forward's routing would have read.
  std::vector<int> whole, routed;
  for (int i : rest) (units[i].routed ? routed : whole).push_back(i);
  place(whole);
  if (routed.empty()) return f;
  // The window was sized before the units read whole found room: it need only hold what
  // still streams, and what it no longer needs may keep routed units resident.
  uint64_t window = routed_window(units, rest, f.resident, depth, read_group);
  if (window < f.window) {
    spare += f.window - window;
    f.window = window;
  }
  place(routed);
  return f;
}

// What streams is `runs` runs spread evenly: the units are cut into `runs` stretches of
// equal bytes and each stretch streams its tail, together at least what must stream.
Fill spread(const std::vector<Unit>& units, const std::vector<int>& candidates, const std::set<int>& forced,
            uint64_t room, int depth, uint64_t read_group, int runs) {
  std::vector<int> rest;
  Fill f = start_fill(units, candidates, forced, room, depth, read_group, rest);
  uint64_t spare = room - f.resident_bytes - f.window;
  uint64_t rest_bytes = 0;
  for (int i : rest) rest_bytes += units[i].nbytes;
  uint64_t need = rest_bytes > spare ? rest_bytes - spare : 0;
  std::vector<char> streams(rest.size(), 0);
  uint64_t streamed = 0, seen = 0;
  size_t begin = 0;
  for (int j = 1; j <= runs; ++j) {
    auto share = [&](uint64_t total) { return static_cast<uint64_t>(static_cast<double>(total) * j / runs); };
    size_t end = begin;
    while (end < rest.size() && (j == runs || seen + units[rest[end]].nbytes <= share(rest_bytes))) {
      seen += units[rest[end++]].nbytes;
    }
    for (size_t k = end; k > begin && streamed < share(need); --k) {
      streams[k - 1] = 1;
      streamed += units[rest[k - 1]].nbytes;
    }
    begin = end;
  }
  for (size_t k = rest.size(); k > 0 && streamed < need; --k) {  // rounding: top up from the end
    if (!streams[k - 1]) {
      streams[k - 1] = 1;
      streamed += units[rest[k - 1]].nbytes;
    }
  }
  for (size_t k = 0; k < rest.size(); ++k) {
    if (streams[k]) continue;
    f.resident.insert(rest[k]);
    f.resident_bytes += units[rest[k]].nbytes;
  }
  return f;
}

}  // namespace

Plan make_plan(const std::vector<Unit>& units, const std::vector<int>& order, uint64_t budget,
               const std::set<int>& ran_before, int depth, const PassRates& rates, int current_runs,
               uint64_t read_group_bytes, bool direct_reads) {
  Plan plan;
  plan.budget = budget;
  for (const auto& u : units) plan.total_bytes += u.nbytes;
  int n = static_cast<int>(units.size());
  for (int i : order) {
    if (i < 0 || i >= n) throw std::out_of_range("litcore: unit " + std::to_string(i) + " out of range");
  }
  if (plan.total_bytes <= budget) {
    for (int i = 0; i < n; ++i) plan.resident.insert(i);
    plan.resident_bytes = plan.total_bytes;
    return plan;
  }
  std::set<int> ran(order.begin(), order.end());
  ran.insert(ran_before.begin(), ran_before.end());
  std::set<int> must;
  uint64_t must_bytes = 0;
  for (int i = 0; i < n; ++i) {
    if (!units[i].streamable || !ran.count(i)) {
      must.insert(i);
      must_bytes += units[i].nbytes;
    }
  }
  // Small units (layer norms) stay resident when together they are a small part of the
  // budget and the file is stored in execution order (no read groups): streamed, each is a
  // read of its own that jumps out of the sequential stream (a model-ordered layer stores
  // its norms after its MLP and runs them first), and the readahead it starts is dropped
  // unused (measured on the 1.1B model: 56 of ~130 reads per forward broke the stream). In
  // a file read in groups they are read inside their layer's block at no cost.
  uint64_t small_bytes = 0;
  std::vector<int> small;
  for (int i = 0; i < n; ++i) {
    if (!must.count(i) && !units[i].on_demand && units[i].nbytes < kSmallUnit) {
      small.push_back(i);
      small_bytes += units[i].nbytes;
    }
  }
  if (read_group_bytes == 0 && small_bytes <= budget / 16) {
    must.insert(small.begin(), small.end());
    must_bytes += small_bytes;
  }
  // Candidates for residency, in execution order; on-demand units always stream (by fault).
  std::vector<int> candidates;
  std::set<int> seen;
  for (int i : order) {
    if (!must.count(i) && seen.insert(i).second && !units[i].on_demand) candidates.push_back(i);
  }
  for (int i : ran) {
    if (!must.count(i) && seen.insert(i).second && !units[i].on_demand) candidates.push_back(i);
  }
  std::vector<int> by_size = candidates;
  std::stable_sort(by_size.begin(), by_size.end(), [&](int a, int b) { return units[a].nbytes > units[b].nbytes; });
  uint64_t largest_bytes = by_size.empty() ? 0 : units[by_size[0]].nbytes;
  if (must_bytes + largest_bytes > budget) {
    std::string detail = by_size.empty() ? "" : "module '" + units[by_size[0]].name + "' needs " + human(largest_bytes);
    throw BudgetTooSmallError("litcore: memory budget " + human(budget) + " is too small: " + human(must_bytes) +
                              " must stay resident (buffers, shared and non-leaf weights) and " + detail +
                              " while it runs; at least " + human(must_bytes + largest_bytes) + " is needed");
  }
  // A single very large unit (an LM head) would size the window for everyone: try keeping
  // the largest few resident instead, and take whichever fill streams the fewest bytes.
  uint64_t room = budget - must_bytes;
  uint64_t candidate_bytes = 0;
  for (int i : candidates) candidate_bytes += units[i].nbytes;
  Fill best;
  if (candidate_bytes <= room) {
    // Only lookups stream (by fault): no window is needed, and a window-sized hole in the
    // resident set would stream a unit for nothing.
    best.resident.insert(candidates.begin(), candidates.end());
    best.resident_bytes = candidate_bytes;
  } else {
    best = fill(units, candidates, {}, room, depth, read_group_bytes);
  }
  // Routed units take the window once whatever their size: only the units read ahead are
  // worth keeping resident to shrink it.
  std::vector<int> read_ahead;
  for (int i : by_size) {
    if (!units[i].routed) read_ahead.push_back(i);
  }
  // Fewest bytes read whole per forward, then fewest routed bytes streaming.
  auto better = [&](const Fill& a, const Fill& b) {
    auto whole = [&](const Fill& f) {
      uint64_t bytes = 0;
      for (int i : f.resident) bytes += units[i].routed ? 0 : units[i].nbytes;
      return bytes;
    };
    uint64_t wa = whole(a), wb = whole(b);
    return wa != wb ? wa > wb : a.resident_bytes > b.resident_bytes;
  };
  std::set<int> forced;
  uint64_t forced_bytes = 0;
  for (size_t k = 0; k < std::min<size_t>(3, read_ahead.size()) && candidate_bytes > room; ++k) {
    forced.insert(read_ahead[k]);
    forced_bytes += units[read_ahead[k]].nbytes;
    uint64_t next = k + 1 < read_ahead.size() ? units[read_ahead[k + 1]].nbytes : 0;
    if (next == units[read_ahead[k]].nbytes) continue;  // the window would not shrink
    if (forced_bytes + 2 * next > room) break;
    Fill f = fill(units, candidates, forced, room, depth, read_group_bytes);
    if (better(f, best)) best = std::move(f);
  }
  auto assemble = [&](const Fill& f) {
    Plan p;
    p.budget = plan.budget;
    p.total_bytes = plan.total_bytes;
    p.window_bytes = f.window;
    p.resident = must;
    p.resident.insert(f.resident.begin(), f.resident.end());
    std::set<int> in_order(order.begin(), order.end());
    for (int i : order) {
      if (!p.resident.count(i)) p.streamed_order.push_back(i);
    }
    for (int i : ran) {
      if (!p.resident.count(i) && !in_order.count(i)) p.streamed_order.push_back(i);
    }
    for (int i : p.resident) p.resident_bytes += units[i].nbytes;
    for (int i = 0; i < n; ++i) {
      if (p.resident.count(i)) continue;
      (units[i].on_demand ? p.lookup_bytes : units[i].routed ? p.routed_bytes : p.streamed_bytes) += units[i].nbytes;
    }
    std::set<int> streamed(p.streamed_order.begin(), p.streamed_order.end());
    p.runs = count_runs(units, order, streamed);
    if (rates.known()) p.modeled_seconds = model_pass_seconds(units, order, streamed, p.window_bytes, rates);
    return p;
  };
  Plan one_run = assemble(best);
  // The pass model knows reads ahead of the compute; a routed unit's are made by the compute
  // thread once its router has run.
  if (!rates.known() || !one_run.streams() || one_run.routed_bytes > 0) return one_run;
  // Compute-bound passes hide reads better spread out. A spread layout must be clearly
  // compute-bound: its reads, seeks included, within 80% of the compute. Nearer IO-bound
  // the model flatters it: one run also reads during the resident compute through the
  // kernel's readahead (which runs ahead of the window), and each gap costs more than the
  // measured seek (readahead restarts small). Measured on the 1.1B model under 1.2 GB,
  // IO-bound generation: 6 runs 1.03 tokens/s, one run 1.14-1.18, where the model favoured 6.
  // Direct reads (`direct_reads`) have neither: nothing reads past the window, so one run
  // leaves the reader idle through the resident stretch, and a gap costs the measured seek
  // and no more. There the model decides, IO-bound too.
  double compute = 0;
  for (int i : order) {
    if (!units[i].on_demand) compute += static_cast<double>(units[i].nbytes) * rates.compute_seconds_per_byte;
  }
  Plan chosen = one_run, current = one_run;
  for (int runs : {2, 3, 4, 6, 8}) {
    Plan p = assemble(spread(units, candidates, best.forced, room, depth, read_group_bytes, runs));
    if (p.resident_bytes + p.window_bytes > budget) continue;
    double reads = static_cast<double>(p.streamed_bytes) * rates.read_seconds_per_byte + p.runs * rates.seek_seconds;
    if (!direct_reads && reads > 0.8 * compute) continue;
    if (p.modeled_seconds < chosen.modeled_seconds) chosen = p;
    if (p.runs == current_runs && current.runs != current_runs) current = p;  // runs may merge: match what ran
  }
  // Another layout than the current one must pay for the reads a change costs.
  return chosen.modeled_seconds < 0.95 * current.modeled_seconds ? chosen : current;
}

Plan make_device_plan(const std::vector<Unit>& units, const std::vector<int>& order, uint64_t budget, int slots,
                      uint64_t slot_overhead) {
  if (slots < 2) throw std::invalid_argument("litcore: a device ring needs at least 2 slots, got " + std::to_string(slots));
  // The device path copies a routed unit whole: it plans as any unit read ahead.
  std::vector<Unit> read_whole = units;
  for (auto& u : read_whole) u.routed = false;
  uint64_t room = budget;
  for (int round = 0; round < 8 && room > 0; ++round) {  // each round keeps less resident
    Plan plan;
    try {
      plan = make_plan(read_whole, order, room, {}, slots);
    } catch (const BudgetTooSmallError&) {
      break;
    }
    uint64_t largest = 0;
    for (int i : plan.streamed_order) largest = std::max(largest, units[i].nbytes);
    uint64_t ring = plan.streams() ? static_cast<uint64_t>(slots) * (largest + slot_overhead) : 0;
    if (plan.resident_bytes + ring <= budget) {
      plan.window_bytes = ring;
      plan.budget = budget;
      return plan;
    }
    uint64_t over = plan.resident_bytes + ring - budget;
    room = room > over ? room - over : 0;
  }
  const Unit* largest = nullptr;
  for (const auto& u : units) {
    if (u.streamable && (!largest || u.nbytes > largest->nbytes)) largest = &u;
  }
  std::string what = largest ? " for module '" + largest->name + "' (" + human(largest->nbytes) + ")" : "";
  throw BudgetTooSmallError("litcore: gpu_memory_budget " + human(budget) +
                            " is too small for the weights that must stay on the device and " + std::to_string(slots) +
                            " copy buffers" + what);
}

Plan make_host_plan(const std::vector<Unit>& units, const Plan& device_plan, uint64_t budget) {
  std::set<int> on_host(device_plan.streamed_order.begin(), device_plan.streamed_order.end());
  std::vector<Unit> host_units = units;
  for (size_t i = 0; i < host_units.size(); ++i) {
    if (!on_host.count(static_cast<int>(i))) host_units[i] = Unit{host_units[i].name, 0, false, false};
    host_units[i].routed = false;  // read whole for the device's copy
  }
  return make_plan(host_units, device_plan.streamed_order, budget);
}

uint64_t current_rss() {
  std::ifstream f("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

namespace {

struct CgroupMemory {
  std::string dir;     // the cgroup's directory
  bool v2 = false;
  uint64_t limit = 0;  // 0: no limit
  uint64_t usage = 0;  // what the cgroup is charged now (page cache included)
  // Page cache on the inactive list: what the kernel reclaims first, once nothing maps it.
  uint64_t inactive_file = 0;
  uint64_t active_file = 0;
};

// A value from a memory.stat file: `key` (v2, or v1's own) or "total_<key>" (v1, with the
// cgroup's descendants: what its limit counts); 0 when absent.
uint64_t memory_stat(const std::string& path, const std::string& key) {
  std::ifstream f(path);
  std::string name;
  uint64_t value = 0, own = 0;
  while (f >> name >> value) {
    if (name == "total_" + key) return value;
    if (name == key) own = value;
  }
  return own;
}

// The tightest memory limit among this process's cgroups (v1 or v2), with its usage.
CgroupMemory tightest_cgroup() {
  std::ifstream f("/proc/self/cgroup");
  std::string line;
  CgroupMemory best;
  while (std::getline(f, line)) {
    auto a = line.find(':');
    auto b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    std::string controllers = line.substr(a + 1, b - a - 1);
    std::string path = line.substr(b + 1);
    std::string dir;
    std::string limit_file, usage_file;
    if (controllers.empty()) {
      dir = "/sys/fs/cgroup" + path;
      limit_file = "/memory.max";
      usage_file = "/memory.current";
    } else {
      std::stringstream ss(controllers);
      std::string c;
      while (std::getline(ss, c, ',')) {
        if (c == "memory") dir = "/sys/fs/cgroup/memory" + path;
      }
      limit_file = "/memory.limit_in_bytes";
      usage_file = "/memory.usage_in_bytes";
    }
    if (dir.empty()) continue;
    uint64_t limit = read_limit(dir + limit_file);
    if (limit && (!best.limit || limit < best.limit)) {
      best.dir = dir;
      best.v2 = controllers.empty();
      best.limit = limit;
      best.usage = read_limit(dir + usage_file);
      best.inactive_file = memory_stat(dir + "/memory.stat", "inactive_file");
      best.active_file = memory_stat(dir + "/memory.stat", "active_file");
    }
  }
  return best;
}

}  // namespace

uint64_t cgroup_limit() { return tightest_cgroup().limit; }

namespace {

// MemAvailable in bytes, or 0 when /proc/meminfo does not say.
uint64_t mem_available() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  uint64_t kb;
  std::string unit;
  while (f >> key >> kb) {
    std::getline(f, unit);
    if (key == "MemAvailable:") return kb * 1024;
  }
  return 0;
}

}  // namespace

uint64_t auto_budget() {
  std::vector<int64_t> candidates;
  CgroupMemory cg = tightest_cgroup();
  if (cg.limit) {
    // What the cgroup is charged, not our RSS: shared libraries already cached elsewhere
    // count in RSS but not against the limit. RSS is the fallback when usage is unreadable.
    uint64_t used = cg.usage ? cg.usage : current_rss();
    // Inactive page cache (files read once before: the libraries' unused pages right after
    // a cold import took 400 MiB of a 1200 MB limit) is the kernel's to reclaim at once.
    if (cg.usage) used -= std::min(cg.inactive_file, used);
    candidates.push_back(static_cast<int64_t>(cg.limit) - static_cast<int64_t>(used));
  }
  if (uint64_t available = mem_available()) candidates.push_back(static_cast<int64_t>(available));
  if (candidates.empty()) return kNoLimit;
  int64_t headroom = std::max<int64_t>(*std::min_element(candidates.begin(), candidates.end()), 0);
  // Measured on a 1.1B model: after the budget is taken the interpreter still grows (lazy
  // imports, allocator caches) and the kernel's readahead runs megabytes past each streamed
  // range: 25-55 MB beyond the budget under 1.2 and 2.4 GB limits. A 64 MiB floor made the
  // cgroup reclaim thousands of times per run; the growth does not scale with the limit,
  // so the margin takes 5% of larger headrooms only (10% kept 240 MB idle under 2.4 GB).
  // After forwards have run, the engine moves an auto budget to what is really left
  // (adapted_budget).
  int64_t margin = std::max<int64_t>(128ll << 20, headroom / 20);
  return static_cast<uint64_t>(std::max<int64_t>(headroom - margin, 0));
}

CgroupPeak::CgroupPeak() {
  CgroupMemory cg = tightest_cgroup();
  if (!cg.limit) return;
  fd_ = open((cg.dir + (cg.v2 ? "/memory.peak" : "/memory.max_usage_in_bytes")).c_str(), O_RDWR | O_CLOEXEC);
  reset();
}

CgroupPeak::~CgroupPeak() {
  if (fd_ >= 0) close(fd_);
}

void CgroupPeak::reset() {
  if (fd_ < 0) return;
  // v1 sets the peak to the usage now; v2 (6.12+) starts a new peak seen through this file.
  if (pwrite(fd_, "0\n", 2, 0) < 0) {
    close(fd_);
    fd_ = -1;  // not ours to reset (an unprivileged v1 process, an older v2 kernel)
  }
}

uint64_t CgroupPeak::read() const {
  if (fd_ < 0) return 0;
  char text[32] = {};
  ssize_t n = pread(fd_, text, sizeof(text) - 1, 0);
  if (n <= 0) return 0;
  return std::strtoull(text, nullptr, 10);
}

MemoryRoom memory_room(uint64_t own_cache) {
  CgroupMemory cg = tightest_cgroup();
  if (!cg.limit || !cg.usage) return {};
  // Other files' inactive page cache is room (the kernel reclaims it first); how much of
  // the inactive list is the weight file's own is not known, so all of `own_cache` counts
  // as inactive: the room is never overstated.
  uint64_t reclaimable = cg.inactive_file - std::min(cg.inactive_file, own_cache);
  int64_t room = static_cast<int64_t>(cg.limit) - static_cast<int64_t>(cg.usage) + static_cast<int64_t>(reclaimable);
  if (uint64_t available = mem_available()) room = std::min(room, static_cast<int64_t>(available));
  uint64_t file = cg.active_file + cg.inactive_file;
  uint64_t others = file - std::min(file, own_cache);
  return {cg.limit, room, reclaimable, others - std::min(others, reclaimable)};
}

namespace {

int64_t auto_reserve(uint64_t limit) { return std::max<int64_t>(kAutoReserveFloor, static_cast<int64_t>(limit / 128)); }

}  // namespace

uint64_t adapted_budget(uint64_t budget, const MemoryRoom& room, uint64_t transient) {
  if (!room.limit) return budget;
  int64_t reserve = auto_reserve(room.limit) + static_cast<int64_t>(transient);
  // Within [reserve / 2, 2 x reserve] the budget stays: a plan does not change for a few
  // megabytes of allocator noise between forwards.
  if (room.free >= reserve / 2 && room.free <= 2 * reserve) return budget;
  return static_cast<uint64_t>(std::max<int64_t>(static_cast<int64_t>(budget) + room.free - reserve, 0));
}

int64_t room_with_other_cache(const MemoryRoom& room) {
  if (!room.limit) return 0;
  return room.free + static_cast<int64_t>(room.other_cache) - auto_reserve(room.limit);
}

uint64_t whole_step(uint64_t budget, uint64_t whole, uint64_t total, const MemoryRoom& room) {
  // Unsigned: a budget past `whole` (grown there the usual way) has no step to take.
  if (budget >= whole) return budget;
  int64_t room_left = room_with_other_cache(room);
  if (room_left < 0 || whole - budget > static_cast<uint64_t>(room_left)) return budget;
  return std::min(total, budget + static_cast<uint64_t>(room_left));
}

bool whole_holds(const MemoryRoom& room) {
  return room.limit && room.free + static_cast<int64_t>(room.other_cache) >= auto_reserve(room.limit) / 2;
}

namespace {
uint64_t spare_bytes(const Plan& plan) {
  uint64_t held = plan.resident_bytes + plan.window_bytes;
  return plan.budget > held ? plan.budget - held : 0;
}
}  // namespace

uint64_t lookup_cache_bytes(const Plan& plan) { return plan.lookup_bytes > 0 ? spare_bytes(plan) : 0; }

uint64_t largest_streamed_routed(const Plan& plan, const std::vector<Unit>& units) {
  uint64_t largest = 0;
  for (int i : plan.streamed_order) {
    if (units[i].routed) largest = std::max(largest, units[i].nbytes);
  }
  return largest;
}

uint64_t expert_cache_bytes(const Plan& plan, const std::vector<Unit>& units) {
  uint64_t largest = largest_streamed_routed(plan, units);
  return largest > 0 ? spare_bytes(plan) + largest : 0;
}

}  // namespace litcore
