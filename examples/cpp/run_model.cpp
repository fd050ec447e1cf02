// run_model MODEL.pt WEIGHTS.lit [--budget SIZE] [--shape 2,64] [--ids VOCAB] [--repeat N] [--threads N]
//           [--verify none|lazy|full] [--device cpu|cuda[:N]]
//
// Loads a TorchScript program saved by litcore.jit.save with its weights from a .lit file,
// runs it on a fixed input (N times) and prints the output: its shape, its XXH64 (bit-exact
// comparison with Python) and its first values; then the engine's plan, one line per module
// ("plan RESIDENCY BYTES NAME"), and its statistics per forward ("pass I NAME=VALUE...").
// The input is linspace(-1, 1) over the shape, or token ids (i * 7 + 3) % VOCAB with --ids.
#include <litcore/litcore.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

// A whole positive integer, or std::invalid_argument naming the flag.
int64_t parse_count(const std::string& flag, const std::string& text) {
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty() || value < 1) {
    throw std::invalid_argument(flag + " takes a positive whole number, not '" + text + "'");
  }
  return value;
}

std::vector<int64_t> parse_shape(const std::string& text) {
  std::vector<int64_t> shape;
  std::stringstream ss(text);
  std::string part;
  while (std::getline(ss, part, ',')) shape.push_back(parse_count("--shape", part));
  if (shape.empty()) throw std::invalid_argument("--shape takes sizes such as 2,64, not '" + text + "'");
  return shape;
}

at::Tensor first_tensor(const c10::IValue& value) {
  if (value.isTensor()) return value.toTensor();
  if (value.isTuple()) return first_tensor(value.toTupleRef().elements().at(0));
  if (value.isList()) return first_tensor(value.toListRef().at(0));
  if (value.isGenericDict()) return first_tensor(value.toGenericDict().begin()->value());
  throw std::runtime_error("the model returned no tensor");
}

}  // namespace

int main(int argc, char** argv) {
  const char* usage =
      "usage: run_model MODEL.pt WEIGHTS.lit [--budget SIZE] [--shape 2,64] [--ids VOCAB] [--repeat N] [--threads N] "
      "[--verify none|lazy|full] [--device cpu|cuda[:N]]\n";
  if (argc < 3) {
    std::cerr << usage;
    return 2;
  }
  litcore::Options options;
  std::vector<int64_t> shape{2, 64};
  int64_t vocab = 0;
  int64_t repeat = 1;
  try {
    for (int i = 3; i < argc; i += 2) {
      std::string flag = argv[i];
      if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value");
      std::string value = argv[i + 1];
      if (flag == "--budget") options.memory_budget = static_cast<int64_t>(litcore::parse_budget(value, "--budget"));
      else if (flag == "--shape") shape = parse_shape(value);
      else if (flag == "--ids") vocab = parse_count(flag, value);
      else if (flag == "--repeat") repeat = parse_count(flag, value);
      else if (flag == "--threads") options.threads = litcore::check_threads(parse_count(flag, value));
      else if (flag == "--verify") options.verify = litcore::parse_verify(value);
      else if (flag == "--device") options.device = litcore::parse_device(value).str();
      else throw std::invalid_argument("unknown option " + flag);
    }
  } catch (const std::exception& e) {
    std::string message = e.what();
    if (message.rfind("litcore: ", 0) == 0) message = message.substr(9);
    std::cerr << "run_model: " << message << "\n" << usage;
    return 2;
  }
  try {
    torch::jit::Module module = litcore::load_module(argv[1], argv[2], options);
    module.eval();
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    at::Tensor input = vocab > 0 ? (torch::arange(numel, torch::kLong) * 7 + 3).remainder(vocab).reshape(shape)
                                 : torch::linspace(-1, 1, numel).reshape(shape);
    torch::NoGradGuard no_grad;
    at::Tensor out;
    for (int64_t r = 0; r < repeat; ++r) out = first_tensor(module.forward({input})).contiguous();
    std::cout << "shape";
    for (int64_t d : out.sizes()) std::cout << " " << d;
    std::cout << "\nxxh64 " << litcore::xxh64(out.data_ptr(), out.nbytes()) << "\nvalues";
    at::Tensor flat = out.reshape(-1).to(torch::kDouble);
    for (int64_t i = 0; i < std::min<int64_t>(flat.numel(), 4); ++i) std::printf(" %.9g", flat[i].item<double>());
    std::cout << std::endl;
    litcore::Engine& engine = litcore::engine_of(module);
    for (const auto& p : engine.placements()) {
      std::cout << "plan " << litcore::residency_name(p.residency) << " " << p.nbytes << " " << p.name << "\n";
    }
    auto passes = engine.passes();
    for (size_t i = 0; i < passes.size(); ++i) {
      std::cout << "pass " << i;
      for (const auto& s : passes[i].fields()) {
        std::cout << " " << s.name << "=";
        if (s.integer) std::cout << static_cast<uint64_t>(s.value);
        else std::cout << s.value;
      }
      std::cout << "\n";
    }
    std::cout << std::flush;
  } catch (const litcore::FormatError& e) {
    std::cerr << "litcore::FormatError: " << e.what() << "\n";
    return 3;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 4;
  }
  return 0;
}
