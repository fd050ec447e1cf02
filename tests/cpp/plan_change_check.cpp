// A unit that a new plan makes resident while the reader is reading it into the window's
// buffer must not be pointed at that buffer: its block is given back when the read ends and
// read into again by the next unit, under a module that may still be computing from it.
// Prints "failures N" and "in use from the buffer: yes|no"; exit 0 = ran.
#include <litcore/litcore.h>

#include <chrono>
#include <iostream>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: plan_change_check FILE.lit\n";
    return 2;
  }
  litcore::Store store(argv[1]);
  std::vector<std::vector<litcore::ByteRange>> units;
  uint64_t largest = 0;
  for (const auto& k : store.keys()) {
    std::vector<litcore::ByteRange> r;
    for (const auto& [off, len] : store.byte_ranges({k})) {
      r.push_back({off, len});
      largest = std::max<uint64_t>(largest, len);
    }
    units.push_back(r);
  }
  litcore::Prefetcher::Options options;
  options.window_bytes = 3 * largest;
  options.read_mode = litcore::ReadMode::Buffer;
  litcore::Prefetcher prefetcher(store.mapping(), units, options);
  std::vector<int> all(units.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int>(i);

  // The reader reads ahead from the first unit; a new order keeps only the first streamed,
  // at moments that catch the reads before, during and after they run.
  int failures = 0;
  for (int round = 0; round < 200; ++round) {
    prefetcher.set_order(all);
    std::this_thread::sleep_for(std::chrono::microseconds(250 * (round % 16)));
    prefetcher.set_order({0});
    for (size_t u = 1; u < units.size(); ++u) {
      if (prefetcher.buffer_address(static_cast<int>(u), units[u][0].offset)) ++failures;
    }
  }
  // A streamed unit in use does run from the buffer (where the file system takes direct
  // reads), so the check above is not passing for want of a buffer.
  prefetcher.set_order(all);
  prefetcher.wait(0);
  bool in_buffer = prefetcher.buffer_address(0, units[0][0].offset) != nullptr;
  prefetcher.done(0);
  std::cout << "read mode " << (prefetcher.read_mode() == litcore::ReadMode::Buffer ? "buffer" : "other") << "\n";
  std::cout << "in use from the buffer: " << (in_buffer ? "yes" : "no") << "\n";
  std::cout << "failures " << failures << "\n";
  return 0;
}
