// Reads a litcore file through the public C++ API and prints what it sees, one tensor a
// line, so the Python test can compare with litcore.Store. Exit 3 on FormatError.
#include <litcore/litcore.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: store_check FILE.lit\n";
    return 2;
  }
  try {
    litcore::Store store(argv[1]);
    store.prefetch(store.keys());
    for (const auto& name : store.keys()) {
      at::Tensor t = store.get(name);
      const auto& info = store.info(name);
      std::cout << name << " " << c10::toString(t.scalar_type()) << " [";
      for (int64_t i = 0; i < t.dim(); ++i) std::cout << (i ? "," : "") << t.size(i);
      std::cout << "] " << info.checksum << " " << litcore::xxh64(t.data_ptr(), t.nbytes()) << "\n";
    }
    store.release(store.keys());
  } catch (const litcore::FormatError& e) {
    std::cerr << "FormatError: " << e.what() << "\n";
    return 3;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 4;
  }
  return 0;
}
