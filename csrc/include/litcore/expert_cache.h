// The expert cache: which experts of streamed mixture-of-experts layers stay in memory
// between forwards, in the budget's room that neither the resident weights nor the window
// use (a layer's experts that do not fit whole leave up to one layer's worth of it unused),
// and in the window's room for a layer's experts that a forward leaves unread (a generated
// token of Mixtral reads 2 of 8): before a layer's experts are read, the cache gives back
// what they need of it (make_room).
//
// A forward visits the layers in a cycle, so the unit just used is the one needed furthest
// ahead: a cache that admits what it last saw (LRU) would, full, evict what the next layers
// need first. What pays is a stable set of the experts routed to most often: each expert a
// forward chose is counted, and it takes a cached expert's place only when it was chosen
// more often. Replacing costs no read (the new expert was read for this forward anyway).
// The counts halve every `half_life` forwards, all units together (they are compared
// across units): when routing shifts (another request, another language), the new
// favourites displace the old within a few hundred tokens, not only once they were chosen
// more often in all than the old ones ever were.
//
// Policy only: the engine reads what missing() names and keeps or drops the pages.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace litcore {

class ExpertCache {
 public:
  // An expert of a routed unit: (unit, expert index).
  using Key = std::pair<int, int>;

  // A generated reply's length: long enough that one reply's favourites are kept through
  // it, short enough that the next reply's routing is followed.
  static constexpr uint64_t kHalfLife = 256;

  // `experts[u]`: how many experts routed unit u stacks (0: not routed); `slice_bytes[u]`:
  // the bytes of one of them (its slice of every tensor); `half_life`: the forwards after
  // which the counts halve (0: never).
  ExpertCache(std::vector<int> experts, std::vector<uint64_t> slice_bytes, uint64_t half_life = kHalfLife);

  // The bytes the cache may hold. Returns the experts evicted to fit (none while they do).
  std::vector<Key> set_capacity(uint64_t bytes);
  // Evicts the least chosen experts of units not in `busy` until the cache holds at most
  // `bytes` (or only busy units' experts are left); returns them.
  std::vector<Key> make_room(uint64_t bytes, const std::vector<int>& busy);
  // Routed `unit` stops streaming (it became resident, or the plan changed): its cached
  // experts are forgotten without being evicted (their pages are the unit's now).
  void forget(int unit);
  // Of `chosen` (ids outside the unit ignored; null: every expert), those not cached, once
  // each and in order: the ones to read. `hits`, if given, gets how many were cached.
  std::vector<int64_t> missing(int unit, const std::vector<int64_t>* chosen, uint64_t* hits = nullptr) const;
  bool cached(int unit, int expert) const;

  // `unit`'s module ran with `chosen` (null: every expert): counts them, and keeps those
  // that fit or were chosen more often than the least chosen cached expert of a unit not in
  // `busy` (in use now: its pages must stay). Returns the experts evicted for them.
  std::vector<Key> used(int unit, const std::vector<int64_t>* chosen, const std::vector<int>& busy);
  // A forward ended: every `half_life` of them, every count halves (the cache is unchanged).
  void forward_done();

  // The experts of `unit` cached now, in index order.
  std::vector<int> cached_experts(int unit) const;
  uint64_t slice_bytes(int unit) const { return slice_bytes_[unit]; }
  uint64_t bytes() const { return bytes_; }
  uint64_t capacity() const { return capacity_; }

 private:
  std::vector<int64_t> ids_of(int unit, const std::vector<int64_t>* chosen) const;
  // The cached expert chosen least often, outside `busy` ({-1, -1}: none).
  Key least_used(const std::vector<int>& busy) const;
  void evict(const Key& key);

  std::vector<int> experts_;
  std::vector<uint64_t> slice_bytes_;
  std::vector<std::vector<uint64_t>> chosen_count_;  // per unit, per expert: times chosen
  std::vector<std::vector<bool>> cached_;             // per unit, per expert
  uint64_t capacity_ = 0;
  uint64_t bytes_ = 0;
  uint64_t half_life_;
  uint64_t forwards_ = 0;  // since the counts last halved
};

}  // namespace litcore
