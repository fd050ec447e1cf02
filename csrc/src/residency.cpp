#include "litcore/residency.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>

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

}  // namespace

Plan make_plan(const std::vector<Unit>& units, const std::vector<int>& order, uint64_t budget,
               const std::set<int>& ran_before, int depth) {
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
  std::vector<int> candidates;
  std::set<int> seen;
  for (int i : order) {
    if (!must.count(i) && seen.insert(i).second) candidates.push_back(i);
  }
  for (int i : ran) {
    if (!must.count(i) && seen.insert(i).second) candidates.push_back(i);
  }
  int largest = -1;
  for (int i : candidates) {
    if (largest < 0 || units[i].nbytes > units[largest].nbytes) largest = i;
  }
  uint64_t largest_bytes = largest >= 0 ? units[largest].nbytes : 0;
  if (must_bytes + largest_bytes > budget) {
    std::string detail = largest >= 0 ? "module '" + units[largest].name + "' needs " + human(largest_bytes) : "";
    throw BudgetTooSmallError("litcore: memory budget " + human(budget) + " is too small: " + human(must_bytes) +
                              " must stay resident (buffers, shared and non-leaf weights) and " + detail +
                              " while it runs; at least " + human(must_bytes + largest_bytes) + " is needed");
  }
  std::vector<uint64_t> sizes;
  for (int i : candidates) sizes.push_back(units[i].nbytes);
  std::sort(sizes.begin(), sizes.end());
  uint64_t median = sizes.empty() ? 0 : sizes[sizes.size() / 2];
  plan.window_bytes = std::min(largest_bytes + static_cast<uint64_t>(std::max(depth - 1, 0)) * median, budget - must_bytes);
  uint64_t spare = budget - must_bytes - plan.window_bytes;
  uint64_t streamable_total = 0;
  for (int i : candidates) streamable_total += units[i].nbytes;
  plan.resident = must;
  // Spread the spare budget evenly along the execution order (error diffusion).
  double fraction = streamable_total ? static_cast<double>(spare) / static_cast<double>(streamable_total) : 0.0;
  double credit = 0.0;
  for (int i : candidates) {
    uint64_t size = units[i].nbytes;
    credit += fraction * static_cast<double>(size);
    if (static_cast<double>(size) <= credit && size <= spare) {
      plan.resident.insert(i);
      credit -= static_cast<double>(size);
      spare -= size;
    }
  }
  std::set<int> in_order(order.begin(), order.end());
  for (int i : order) {
    if (!plan.resident.count(i)) plan.streamed_order.push_back(i);
  }
  for (int i : candidates) {
    if (!plan.resident.count(i) && !in_order.count(i)) plan.streamed_order.push_back(i);
  }
  for (int i : plan.resident) plan.resident_bytes += units[i].nbytes;
  plan.streamed_bytes = plan.total_bytes - plan.resident_bytes;
  return plan;
}

uint64_t current_rss() {
  std::ifstream f("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

namespace {

struct CgroupMemory {
  uint64_t limit = 0;  // 0: no limit
  uint64_t usage = 0;  // what the cgroup is charged now (page cache included)
};

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
      best.limit = limit;
      best.usage = read_limit(dir + usage_file);
    }
  }
  return best;
}

}  // namespace

uint64_t cgroup_limit() { return tightest_cgroup().limit; }

uint64_t auto_budget() {
  std::vector<int64_t> candidates;
  CgroupMemory cg = tightest_cgroup();
  if (cg.limit) {
    // What the cgroup is charged, not our RSS: shared libraries already cached elsewhere
    // count in RSS but not against the limit. RSS is the fallback when usage is unreadable.
    uint64_t used = cg.usage ? cg.usage : current_rss();
    candidates.push_back(static_cast<int64_t>(cg.limit) - static_cast<int64_t>(used));
  }
  std::ifstream f("/proc/meminfo");
  std::string key;
  uint64_t kb;
  std::string unit;
  while (f >> key >> kb) {
    std::getline(f, unit);
    if (key == "MemAvailable:") {
      candidates.push_back(static_cast<int64_t>(kb * 1024));
      break;
    }
  }
  if (candidates.empty()) return kNoLimit;
  int64_t headroom = std::max<int64_t>(*std::min_element(candidates.begin(), candidates.end()), 0);
  int64_t margin = std::max<int64_t>(64ll << 20, headroom / 20);
  return static_cast<uint64_t>(std::max<int64_t>(headroom - margin, 0));
}

}  // namespace litcore
