// Element types a weight file can hold, with their on-disk codes (format v1).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace litcore {

// On-disk codes are part of the format: never renumber, only append.
enum class DType : uint8_t {
  Float32 = 1,
  Float16 = 2,
  BFloat16 = 3,
  Float64 = 4,
  Int8 = 5,
  Int16 = 6,
  Int32 = 7,
  Int64 = 8,
  UInt8 = 9,
  Bool = 10,
  Float8_e4m3fn = 11,
  Float8_e5m2 = 12,
  Float8_e4m3fnuz = 13,
  Float8_e5m2fnuz = 14,
  UInt16 = 15,
  UInt32 = 16,
  UInt64 = 17,
  Complex64 = 18,
  Complex128 = 19,
  Float8_e8m0fnu = 20,
};

bool dtype_code_valid(uint8_t code);
size_t dtype_itemsize(DType dtype);
// Name as torch spells it ("bfloat16", "float8_e4m3fn", ...).
const char* dtype_name(DType dtype);
// Inverse of dtype_name; throws std::invalid_argument for an unknown name.
DType dtype_from_name(const std::string& name);

}  // namespace litcore
