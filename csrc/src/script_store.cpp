#include "litcore/script_store.h"

namespace litcore {

void ScriptStore::configure(const std::vector<std::vector<std::string>>& groups, const std::vector<bool>& streamable,
                            const std::vector<bool>& on_demand, int64_t budget_bytes) {
  if (groups.size() != streamable.size()) throw std::invalid_argument("litcore: groups and streamable differ in length");
  if (!on_demand.empty() && groups.size() != on_demand.size()) {
    throw std::invalid_argument("litcore: groups and on_demand differ in length");
  }
  std::vector<Unit> units;
  std::vector<std::vector<ByteRange>> ranges;
  std::vector<int> order;
  for (size_t i = 0; i < groups.size(); ++i) {
    Unit u;
    u.name = "group " + std::to_string(i) + (groups[i].empty() ? "" : " ('" + groups[i][0] + "'...)");
    std::vector<ByteRange> r;
    for (const auto& [offset, length] : store->byte_ranges(groups[i])) {
      r.push_back({offset, length});
      u.nbytes += length;
    }
    u.streamable = streamable[i];
    u.on_demand = !on_demand.empty() && on_demand[i];
    units.push_back(std::move(u));
    ranges.push_back(std::move(r));
    order.push_back(static_cast<int>(i));
  }
  uint64_t budget = budget_bytes > 0 ? static_cast<uint64_t>(budget_bytes) : auto_budget();
  plan = make_plan(units, order, budget);
  prefetcher.reset();
  if (plan.streams()) {
    Prefetcher::Options options;
    options.window_bytes = plan.window_bytes;
    for (const auto& u : units) options.on_demand.push_back(u.on_demand);
    prefetcher = std::make_unique<Prefetcher>(store->mapping(), std::move(ranges), options);
    prefetcher->set_order(plan.streamed_order);
  }
}

void ScriptStore::enter(int64_t group) {
  if (prefetcher) prefetcher->wait(static_cast<int>(group));
}

void ScriptStore::exit(int64_t group) {
  if (prefetcher) prefetcher->done(static_cast<int>(group));
}

}  // namespace litcore
