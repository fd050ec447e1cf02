#include "litcore/errors.h"

#include <cstring>

namespace litcore {

std::string errno_message(const std::string& what, const std::string& path, int err) {
  return what + " '" + path + "': " + std::strerror(err);
}

}  // namespace litcore
