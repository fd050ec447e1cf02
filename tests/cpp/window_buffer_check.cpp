// Checks where the prefetch window's buffer (litcore/window_buffer.h) places blocks, on the
// sequence a Llama decoder layer streams: each case prints "ok NAME" or "FAIL NAME: ...";
// exit 1 if any failed.
#include <litcore/window_buffer.h>

#include <cstdint>
#include <iostream>
#include <string>

namespace {

constexpr uint64_t MiB = 1ull << 20;
int failures = 0;

void expect(const std::string& name, bool ok, const std::string& detail = "") {
  if (ok) {
    std::cout << "ok " << name << "\n";
  } else {
    std::cout << "FAIL " << name << (detail.empty() ? "" : ": " + detail) << "\n";
    ++failures;
  }
}

}  // namespace

int main() {
  // A window of two MLP projections (22 MiB each, the largest units), as the planner sizes it.
  litcore::WindowBuffer buffer(44 * MiB, "window_buffer_check");
  // Attention read first (q, k, v, o), then the MLP's gate projection.
  int64_t q = buffer.allocate(8 * MiB), k = buffer.allocate(1 * MiB), v = buffer.allocate(1 * MiB);
  int64_t o = buffer.allocate(8 * MiB);
  int64_t gate = buffer.allocate(22 * MiB);
  expect("attention and gate fit together", q >= 0 && k >= 0 && v >= 0 && o >= 0 && gate >= 0);
  // The attention is used and dropped while the gate computes: the up projection must fit
  // beside the gate now, when the window has 22 MiB free.
  for (int64_t block : {q, k, v, o}) buffer.free(block);
  int64_t up = buffer.allocate(22 * MiB);
  expect("the next large unit fits beside the large one in use", up >= 0,
         "gate at " + std::to_string(gate / MiB) + " MiB left no 22 MiB stretch");
  // The gate is dropped: the down projection takes its place; the window is full.
  buffer.free(gate);
  int64_t down = buffer.allocate(22 * MiB);
  expect("the down projection takes the gate's place", down >= 0);
  expect("a full window has no room", buffer.allocate(1 * MiB) == -1);
  // The next layer's attention fits once the up projection is dropped, and the gate after it
  // once the down projection is too.
  buffer.free(up);
  q = buffer.allocate(8 * MiB), k = buffer.allocate(1 * MiB), v = buffer.allocate(1 * MiB);
  o = buffer.allocate(8 * MiB);
  expect("the next attention fits beside the down projection", q >= 0 && k >= 0 && v >= 0 && o >= 0);
  buffer.free(down);
  gate = buffer.allocate(22 * MiB);
  expect("the next gate fits beside the attention", gate >= 0);
  for (int64_t block : {q, k, v, o, gate}) buffer.free(block);
  expect("every block given back", buffer.blocks() == 0);
  expect("the whole buffer is one stretch again", buffer.allocate(44 * MiB) == 0);

  std::cout << "failures " << failures << "\n";
  return failures ? 1 : 0;
}
