// Checks the auto budget's decisions (litcore/residency.h), pure functions of what the
// cgroup has left, on hand-made MemoryRoom figures: each case prints "ok NAME" or
// "FAIL NAME: got X, want Y"; exit 1 if any failed.
#include <litcore/residency.h>

#include <cstdint>
#include <iostream>
#include <string>

namespace {

constexpr int64_t MiB = 1ll << 20;
int failures = 0;

void expect(const std::string& name, int64_t got, int64_t want) {
  if (got == want) {
    std::cout << "ok " << name << "\n";
  } else {
    std::cout << "FAIL " << name << ": got " << got << ", want " << want << "\n";
    ++failures;
  }
}

// A 1200 MiB limit: its reserve is 1/128 of it, under the 16 MiB floor.
litcore::MemoryRoom room(int64_t free, uint64_t other_cache = 0, uint64_t reclaimable = 0) {
  litcore::MemoryRoom r;
  r.limit = 1200 * MiB;
  r.free = free;
  r.reclaimable = reclaimable;
  r.other_cache = other_cache;
  return r;
}

}  // namespace

int main() {
  using litcore::adapted_budget;
  using litcore::whole_holds;
  using litcore::whole_step;
  const int64_t reserve = 16 * MiB;  // max(16 MiB, 1200 MiB / 128)

  // adapted_budget: the reserve is what stays free.
  expect("no limit: unchanged", static_cast<int64_t>(adapted_budget(500 * MiB, litcore::MemoryRoom{})), 500 * MiB);
  expect("free within [reserve/2, 2 x reserve]: unchanged",
         static_cast<int64_t>(adapted_budget(500 * MiB, room(reserve + 3 * MiB))), 500 * MiB);
  expect("free past 2 x reserve: grows by what is free beyond the reserve",
         static_cast<int64_t>(adapted_budget(500 * MiB, room(100 * MiB))), 500 * MiB + 100 * MiB - reserve);
  expect("free under reserve/2: shrinks so the reserve is free",
         static_cast<int64_t>(adapted_budget(500 * MiB, room(2 * MiB))), 500 * MiB + 2 * MiB - reserve);
  expect("over the limit: shrinks by the excess and the reserve",
         static_cast<int64_t>(adapted_budget(500 * MiB, room(-40 * MiB))), 500 * MiB - 40 * MiB - reserve);
  expect("never below zero", static_cast<int64_t>(adapted_budget(10 * MiB, room(-900 * MiB))), 0);
  expect("the transient is kept free on top of the reserve",
         static_cast<int64_t>(adapted_budget(500 * MiB, room(100 * MiB), 20 * MiB)),
         500 * MiB + 100 * MiB - reserve - 20 * MiB);

  // whole_step: every weight resident when other files' cache covers the difference.
  const uint64_t total = 1000 * MiB, whole = 900 * MiB;  // 100 MiB of lookups
  expect("step when other files' cache covers it",
         static_cast<int64_t>(whole_step(800 * MiB, whole, total, room(20 * MiB, 150 * MiB))),
         800 * MiB + 20 * MiB + 150 * MiB - reserve);
  expect("step capped at every weight",
         static_cast<int64_t>(whole_step(800 * MiB, whole, total, room(20 * MiB, 900 * MiB))), static_cast<int64_t>(total));
  expect("no step when the room falls short",
         static_cast<int64_t>(whole_step(800 * MiB, whole, total, room(20 * MiB, 50 * MiB))), 800 * MiB);
  expect("no step into negative room", static_cast<int64_t>(whole_step(800 * MiB, whole, total, room(-300 * MiB))),
         800 * MiB);
  // A budget already past every weight but the lookups, with the cgroup a little over its
  // limit: 50 MiB past `whole` and 36 MiB short of room. Read as a signed difference, -50 MiB
  // is within -36 MiB of room and the step would be taken (to every weight, a growth asked of
  // a cgroup under pressure); there is no step.
  expect("no step from a budget past whole, under pressure",
         static_cast<int64_t>(whole_step(950 * MiB, whole, total, room(-20 * MiB))), 950 * MiB);
  expect("no step from a budget at whole", static_cast<int64_t>(whole_step(whole, whole, total, room(500 * MiB))),
         static_cast<int64_t>(whole));

  // whole_holds: what is free and other files' cache cover half the reserve.
  expect("holds with cache to spare", whole_holds(room(-10 * MiB, 40 * MiB)), 1);
  expect("holds at exactly half the reserve", whole_holds(room(-10 * MiB, 10 * MiB + reserve / 2)), 1);
  expect("gives back below half the reserve", whole_holds(room(-10 * MiB, 10 * MiB + reserve / 2 - 1)), 0);
  expect("never without a limit", whole_holds(litcore::MemoryRoom{}), 0);

  std::cout << "failures " << failures << "\n";
  return failures ? 1 : 0;
}
