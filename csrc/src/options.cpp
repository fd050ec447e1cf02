#include "litcore/options.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <stdexcept>

#include <ATen/Context.h>
#include <torch/headeronly/version.h>

namespace litcore {

Verify parse_verify(const std::string& mode) {
  if (mode == "none") return Verify::None;
  if (mode == "lazy") return Verify::Lazy;
  if (mode == "full") return Verify::Full;
  throw std::invalid_argument("litcore: verify must be 'none', 'lazy' or 'full', not '" + mode + "'");
}

ReadMode parse_read_mode(const std::string& mode) {
  if (mode == "auto") return ReadMode::Auto;
  if (mode == "direct") return ReadMode::Direct;
  if (mode == "buffer") return ReadMode::Buffer;
  if (mode == "sendfile") return ReadMode::Sendfile;
  if (mode == "pread") return ReadMode::Pread;
  if (mode == "populate") return ReadMode::Populate;
  if (mode == "exact") return ReadMode::Exact;
  throw std::invalid_argument("litcore: read_mode must be 'auto', 'buffer', 'direct', 'sendfile', 'pread', 'populate' or 'exact', not '" + mode + "'");
}

uint64_t parse_budget(const std::string& text, const std::string& argument) {
  static const std::map<std::string, double> units = {
      {"", 1}, {"b", 1}, {"k", 1e3}, {"kb", 1e3}, {"m", 1e6}, {"mb", 1e6}, {"g", 1e9}, {"gb", 1e9},
      {"t", 1e12}, {"tb", 1e12}, {"kib", 0x1p10}, {"mib", 0x1p20}, {"gib", 0x1p30}, {"tib", 0x1p40}};
  std::string s;
  for (char c : text) {
    if (!std::isspace(static_cast<unsigned char>(c))) s += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  if (s == "auto") return 0;
  size_t digits = 0;
  bool dot = false;
  while (digits < s.size() && (std::isdigit(static_cast<unsigned char>(s[digits])) || (s[digits] == '.' && !dot))) {
    dot = dot || s[digits] == '.';
    ++digits;
  }
  auto unit = units.find(s.substr(digits));
  bool number = digits > 0 && s.substr(0, digits) != ".";
  if (!number || unit == units.end()) {
    throw std::invalid_argument("litcore: " + argument + ": cannot parse '" + text +
                                "' (use 'auto', bytes, or a size such as '1200MB' or '1.5GiB')");
  }
  double bytes = std::stod(s.substr(0, digits)) * unit->second;
  if (!(bytes >= 1) || bytes >= 0x1p62) {
    throw std::invalid_argument("litcore: " + argument + " must be a positive size, not '" + text + "'");
  }
  return static_cast<uint64_t>(bytes);
}

int check_threads(int64_t threads) {
  if (threads < 1 || threads > kMaxThreads) {
    throw std::invalid_argument("litcore: threads must be between 1 and " + std::to_string(kMaxThreads) + ", not " +
                                std::to_string(threads));
  }
  return static_cast<int>(threads);
}

std::string Device::str() const {
  if (!cuda) return "cpu";
  return index < 0 ? "cuda" : "cuda:" + std::to_string(index);
}

Device parse_device(const std::string& text) {
  Device d;
  if (text == "cpu") return d;
  if (text == "cuda") {
    d.cuda = true;
    return d;
  }
  const std::string prefix = "cuda:";
  if (text.size() > prefix.size() && text.compare(0, prefix.size(), prefix) == 0 && text.size() - prefix.size() <= 4 &&
      std::all_of(text.begin() + static_cast<std::ptrdiff_t>(prefix.size()), text.end(),
                  [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; })) {
    d.cuda = true;
    d.index = std::stoi(text.substr(prefix.size()));
    return d;
  }
  throw std::invalid_argument("litcore: device must be 'cpu', 'cuda' or 'cuda:N', not '" + text + "'");
}

void require_device(const Device& device, const std::string& entry_point) {
  if (!device.cuda) return;
  if (!at::hasCUDA()) {
    throw std::runtime_error("litcore: device '" + device.str() + "' requested, but this build of torch (" +
                             TORCH_VERSION + ") has no CUDA support or sees no GPU");
  }
  if (entry_point == "TorchScript") {
    throw std::runtime_error("litcore: device '" + device.str() + "': TorchScript programs and C++ apps run on the CPU "
                             "only until litcore's native CUDA backend exists; use device 'cpu', or Python's "
                             "LitModule, which streams to a GPU");
  }
}

}  // namespace litcore
