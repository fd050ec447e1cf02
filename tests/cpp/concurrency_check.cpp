// Many threads reading one store while others prefetch and release, and a prefetcher driven
// by several threads at once; every tensor's bytes must keep their checksum. Exit 0 = OK.
#include <litcore/litcore.h>

#include <atomic>
#include <iostream>
#include <random>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: concurrency_check FILE.lit\n";
    return 2;
  }
  litcore::Store store(argv[1]);
  auto keys = store.keys();
  std::atomic<int> errors{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] {
      std::mt19937 rng(i);
      for (int step = 0; step < 3000; ++step) {
        const auto& k = keys[rng() % keys.size()];
        at::Tensor t = store.get(k);
        if (litcore::xxh64(t.data_ptr(), t.nbytes()) != store.info(k).checksum) ++errors;
      }
    });
  }
  threads.emplace_back([&] {
    while (!stop) {
      store.prefetch(keys);
      store.release(keys);
    }
  });
  std::vector<std::vector<litcore::ByteRange>> units;
  for (const auto& k : keys) {
    std::vector<litcore::ByteRange> r;
    for (const auto& [off, len] : store.byte_ranges({k})) r.push_back({off, len});
    units.push_back(r);
  }
  // Through the page cache, and with direct reads into memory the claimer made ready (where
  // the file system takes direct reads); afterwards nothing stays placed or prepared. Through
  // the page cache also in an order that runs each pair of units in the other order than the
  // file stores them: read groups of two, claimed a unit at a time when the window is full.
  struct Run {
    litcore::ReadMode mode;
    bool pairs_swapped;
  };
  for (Run run : {Run{litcore::ReadMode::Sendfile, false}, Run{litcore::ReadMode::Sendfile, true},
                  Run{litcore::ReadMode::Direct, false}}) {
    litcore::ReadMode mode = run.mode;
    litcore::Prefetcher::Options options;
    options.window_bytes = 1 << 20;
    options.threads = 2;
    options.read_mode = mode;
    litcore::Prefetcher prefetcher(store.mapping(), units, options);
    std::vector<int> order(units.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(run.pairs_swapped ? (i ^ 1) : i);
    prefetcher.set_order(order);
    std::vector<std::thread> drivers;
    for (int d = 0; d < 4; ++d) {
      drivers.emplace_back([&, d] {
        for (int step = 0; step < 500; ++step) {
          int g = order[(step + d * 3) % static_cast<int>(order.size())];
          prefetcher.wait(g);
          at::Tensor t = store.get(keys[g]);
          if (litcore::xxh64(t.data_ptr(), t.nbytes()) != store.info(keys[g]).checksum) ++errors;
          prefetcher.done(g);
        }
      });
    }
    for (auto& t : drivers) t.join();
    prefetcher.release_all();
    if (mode == litcore::ReadMode::Direct && prefetcher.read_mode() == litcore::ReadMode::Direct) {
      std::cout << "direct reads\n";
    }
  }
  if (store.mapping()->placed_bytes() != 0 || store.mapping()->prepared_bytes() != 0) {
    std::cout << "left placed " << store.mapping()->placed_bytes() << " prepared " << store.mapping()->prepared_bytes()
              << "\n";
    ++errors;
  }
  for (size_t i = 0; i + 1 < threads.size(); ++i) threads[i].join();
  stop = true;
  threads.back().join();
  std::cout << "errors " << errors.load() << "\n";
  return errors == 0 ? 0 : 1;
}
