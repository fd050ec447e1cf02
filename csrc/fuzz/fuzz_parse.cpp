// libFuzzer target for the header/index parser: every input must either parse or throw
// FormatError; never crash, hang, or allocate unbounded memory. Built by `make fuzz`
// (clang, -fsanitize=fuzzer,address,undefined); torch-free, like the parser itself.
#include <cstddef>
#include <cstdint>

#include "litcore/errors.h"
#include "litcore/format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    litcore::FileIndex index = litcore::parse_file(data, size, "fuzz-input");
    // A parsed index must describe only bytes inside the input.
    for (const auto& t : index.tensors) {
      if (t.offset > size || t.nbytes > size - t.offset) __builtin_trap();
    }
  } catch (const litcore::FormatError&) {
  }
  return 0;
}
