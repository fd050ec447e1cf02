#include "litcore/expert_cache.h"

#include <algorithm>
#include <stdexcept>

namespace litcore {

ExpertCache::ExpertCache(std::vector<int> experts, std::vector<uint64_t> slice_bytes, uint64_t half_life)
    : experts_(std::move(experts)), slice_bytes_(std::move(slice_bytes)), half_life_(half_life) {
  if (experts_.size() != slice_bytes_.size()) throw std::invalid_argument("litcore: expert cache sizes differ");
  for (int n : experts_) {
    chosen_count_.emplace_back(static_cast<size_t>(std::max(n, 0)), 0);
    cached_.emplace_back(static_cast<size_t>(std::max(n, 0)), false);
  }
}

void ExpertCache::forward_done() {
  if (half_life_ == 0 || ++forwards_ < half_life_) return;
  forwards_ = 0;
  for (auto& counts : chosen_count_) {
    for (auto& c : counts) c /= 2;
  }
}

std::vector<ExpertCache::Key> ExpertCache::set_capacity(uint64_t bytes) {
  capacity_ = bytes;
  return make_room(bytes, {});
}

std::vector<ExpertCache::Key> ExpertCache::make_room(uint64_t bytes, const std::vector<int>& busy) {
  std::vector<Key> evicted;
  while (bytes_ > bytes) {
    Key key = least_used(busy);
    if (key.first < 0) break;
    evict(key);
    evicted.push_back(key);
  }
  return evicted;
}

void ExpertCache::forget(int unit) {
  for (size_t e = 0; e < cached_[unit].size(); ++e) {
    if (cached_[unit][e]) evict({unit, static_cast<int>(e)});
  }
}

std::vector<int64_t> ExpertCache::ids_of(int unit, const std::vector<int64_t>* chosen) const {
  int n = experts_[unit];
  std::vector<bool> seen(static_cast<size_t>(n), false);
  if (chosen == nullptr) seen.assign(static_cast<size_t>(n), true);
  if (chosen != nullptr) {
    for (int64_t e : *chosen) {
      if (e >= 0 && e < n) seen[static_cast<size_t>(e)] = true;
    }
  }
  std::vector<int64_t> ids;
  for (int e = 0; e < n; ++e) {
    if (seen[static_cast<size_t>(e)]) ids.push_back(e);
  }
  return ids;
}

std::vector<int64_t> ExpertCache::missing(int unit, const std::vector<int64_t>* chosen, uint64_t* hits) const {
  std::vector<int64_t> out;
  uint64_t found = 0;
  for (int64_t e : ids_of(unit, chosen)) {
    if (cached_[unit][static_cast<size_t>(e)]) {
      ++found;
    } else {
      out.push_back(e);
    }
  }
  if (hits) *hits = found;
  return out;
}

bool ExpertCache::cached(int unit, int expert) const {
  return expert >= 0 && static_cast<size_t>(expert) < cached_[unit].size() && cached_[unit][static_cast<size_t>(expert)];
}

ExpertCache::Key ExpertCache::least_used(const std::vector<int>& busy) const {
  Key best{-1, -1};
  uint64_t fewest = 0;
  for (size_t u = 0; u < cached_.size(); ++u) {
    if (std::find(busy.begin(), busy.end(), static_cast<int>(u)) != busy.end()) continue;
    for (size_t e = 0; e < cached_[u].size(); ++e) {
      if (!cached_[u][e]) continue;
      if (best.first < 0 || chosen_count_[u][e] < fewest) {
        best = {static_cast<int>(u), static_cast<int>(e)};
        fewest = chosen_count_[u][e];
      }
    }
  }
  return best;
}

void ExpertCache::evict(const Key& key) {
  cached_[key.first][key.second] = false;
  bytes_ -= slice_bytes_[key.first];
}

std::vector<ExpertCache::Key> ExpertCache::used(int unit, const std::vector<int64_t>* chosen,
                                                const std::vector<int>& busy) {
  std::vector<Key> evicted;
  int n = experts_[unit];
  if (n <= 0) return evicted;
  if (chosen == nullptr) {
    for (auto& c : chosen_count_[unit]) ++c;
  } else {
    for (int64_t e : *chosen) {
      if (e >= 0 && e < n) ++chosen_count_[unit][static_cast<size_t>(e)];
    }
  }
  uint64_t slice = slice_bytes_[unit];
  if (slice == 0 || slice > capacity_) return evicted;
  // The most chosen first: where only some fit, they are the ones worth keeping.
  std::vector<int64_t> ids = missing(unit, chosen);
  std::stable_sort(ids.begin(), ids.end(), [&](int64_t a, int64_t b) {
    return chosen_count_[unit][static_cast<size_t>(a)] > chosen_count_[unit][static_cast<size_t>(b)];
  });
  for (int64_t e : ids) {
    uint64_t count = chosen_count_[unit][static_cast<size_t>(e)];
    while (bytes_ + slice > capacity_) {
      Key victim = least_used(busy);
      if (victim.first < 0 || chosen_count_[victim.first][victim.second] >= count) break;
      evict(victim);
      evicted.push_back(victim);
    }
    if (bytes_ + slice > capacity_) break;  // the rest were chosen no more often
    cached_[unit][static_cast<size_t>(e)] = true;
    bytes_ += slice;
  }
  return evicted;
}

std::vector<int> ExpertCache::cached_experts(int unit) const {
  std::vector<int> out;
  for (size_t e = 0; e < cached_[unit].size(); ++e) {
    if (cached_[unit][e]) out.push_back(static_cast<int>(e));
  }
  return out;
}

}  // namespace litcore
