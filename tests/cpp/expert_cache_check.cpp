// Checks the expert cache's policy (litcore/expert_cache.h) on hand-made routings: each case
// prints "ok NAME" or "FAIL NAME: got X, want Y"; exit 1 if any failed.
#include <litcore/expert_cache.h>

#include <cstdint>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

int failures = 0;

template <typename T>
std::string str(const std::vector<T>& v) {
  std::ostringstream out;
  for (const auto& x : v) out << x << " ";
  return out.str();
}

std::string str(const std::vector<litcore::ExpertCache::Key>& v) {
  std::ostringstream out;
  for (const auto& [u, e] : v) out << u << ":" << e << " ";
  return out.str();
}

template <typename T>
void expect(const std::string& name, const T& got, const T& want) {
  if (got == want) {
    std::cout << "ok " << name << "\n";
  } else {
    std::cout << "FAIL " << name << ": got " << str(got) << ", want " << str(want) << "\n";
    ++failures;
  }
}

void expect(const std::string& name, uint64_t got, uint64_t want) {
  expect(name, std::vector<uint64_t>{got}, std::vector<uint64_t>{want});
}

using Ids = std::vector<int64_t>;
using Keys = std::vector<litcore::ExpertCache::Key>;

}  // namespace

int main() {
  // Units 0 and 2 route 4 experts of 10 bytes each; unit 1 is read whole.
  litcore::ExpertCache cache({4, 0, 4}, {10, 0, 10});
  cache.set_capacity(30);
  Ids two{1, 2};
  expect("all missing at first", cache.missing(0, &two), Ids{1, 2});
  expect("fits: nothing evicted", cache.used(0, &two, {}), Keys{});
  expect("kept what fit", cache.cached_experts(0), std::vector<int>{1, 2});
  uint64_t hits = 0;
  Ids three{3, 2, 2, 1, 9, -1};
  expect("cached ones are not read, ids once each, outside ones ignored", cache.missing(0, &three, &hits), Ids{3});
  expect("the hits", hits, uint64_t{2});
  Ids one{0};
  cache.used(2, &one, {});  // full: 0:1 0:2 2:0
  expect("full", cache.bytes(), uint64_t{30});

  // Chosen as often as the least chosen cached expert: not cached (a cycle would churn).
  Ids other{3};
  expect("no replacement at equal counts", cache.used(2, &other, {}), Keys{});
  expect("still cached", cache.cached_experts(2), std::vector<int>{0});
  // Chosen more often than the least chosen: takes its place, at no read.
  expect("replaces the least chosen", cache.used(2, &other, {}), Keys{{0, 1}});
  expect("now cached", cache.cached_experts(2), std::vector<int>{0, 3});
  // Cached now: 0:2 (chosen once), 2:0 (once), 2:3 (twice).
  expect("units in use keep their experts", cache.make_room(10, {0, 2}), Keys{});
  expect("make_room evicts only outside units in use", cache.make_room(20, {2}), Keys{{0, 2}});
  expect("make_room evicts the least chosen", cache.make_room(10, {}), Keys{{2, 0}});
  expect("room made", cache.bytes(), uint64_t{10});
  // Every expert (a prompt, or a caller without ids): all missing but the cached.
  expect("null chooses every expert", cache.missing(2, nullptr), Ids{0, 1, 2});
  cache.forget(2);
  expect("forgotten without eviction", cache.bytes(), uint64_t{0});
  cache.used(0, &two, {});  // 0:1 chosen twice in all, 0:2 three times
  expect("a smaller capacity evicts the least chosen", cache.set_capacity(10), Keys{{0, 1}});
  expect("within it", cache.bytes(), uint64_t{10});
  expect("a slice over the capacity is never cached", litcore::ExpertCache({2}, {50}).used(0, &one, {}), Keys{});

  // Routing that shifts: expert 0 chosen in 8 forwards, then expert 1 in every forward.
  // Counts halving every 4 forwards, expert 1 takes the one place in the 4th forward; never
  // halving, in the 9th (only once chosen more often in all than expert 0 ever was).
  auto forwards_until_replaced = [](uint64_t half_life) {
    litcore::ExpertCache shifting({2}, {10}, half_life);
    shifting.set_capacity(10);
    Ids first{0}, second{1};
    for (int f = 0; f < 8; ++f) {
      shifting.used(0, &first, {});
      shifting.forward_done();
    }
    for (uint64_t f = 1; f <= 100; ++f) {
      bool replaced = !shifting.used(0, &second, {}).empty();
      shifting.forward_done();
      if (replaced) return shifting.cached_experts(0) == std::vector<int>{1} ? f : 0;
    }
    return uint64_t{0};
  };
  expect("halving counts: the new favourite in the 4th forward", forwards_until_replaced(4), uint64_t{4});
  expect("never halving: in the 9th", forwards_until_replaced(0), uint64_t{9});
  litcore::ExpertCache halved({2}, {10}, 1);
  halved.set_capacity(10);
  halved.used(0, &one, {});
  halved.forward_done();
  expect("halving evicts nothing", halved.cached_experts(0), std::vector<int>{0});

  std::cout << "failures " << failures << "\n";
  return failures ? 1 : 0;
}
