// plain_jit_load MODEL.pt: only torch::jit::load, no litcore call. The program still finds
// torch.classes.litcore.Store (its weights' path was pickled at save time) because
// linking litcore::litcore keeps liblitcore loaded despite --as-needed.
#include <torch/script.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: plain_jit_load MODEL.pt\n";
    return 2;
  }
  try {
    torch::jit::Module module = torch::jit::load(argv[1]);
    std::cout << "loaded " << module.type()->name()->qualifiedName() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 4;
  }
  return 0;
}
