// Conversion between litcore::DType and ATen's ScalarType.
#pragma once

#include <c10/core/ScalarType.h>

#include "litcore/dtype.h"

namespace litcore {

c10::ScalarType to_scalar_type(DType dtype);
// Throws std::invalid_argument for a ScalarType the format cannot hold.
DType from_scalar_type(c10::ScalarType type);

}  // namespace litcore
