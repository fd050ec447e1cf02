#include "litcore/aten_dtype.h"

#include <stdexcept>
#include <string>

namespace litcore {
namespace {

struct Pair {
  DType dtype;
  c10::ScalarType type;
};

const Pair kPairs[] = {
    {DType::Float32, c10::ScalarType::Float},
    {DType::Float16, c10::ScalarType::Half},
    {DType::BFloat16, c10::ScalarType::BFloat16},
    {DType::Float64, c10::ScalarType::Double},
    {DType::Int8, c10::ScalarType::Char},
    {DType::Int16, c10::ScalarType::Short},
    {DType::Int32, c10::ScalarType::Int},
    {DType::Int64, c10::ScalarType::Long},
    {DType::UInt8, c10::ScalarType::Byte},
    {DType::Bool, c10::ScalarType::Bool},
    {DType::Float8_e4m3fn, c10::ScalarType::Float8_e4m3fn},
    {DType::Float8_e5m2, c10::ScalarType::Float8_e5m2},
    {DType::Float8_e4m3fnuz, c10::ScalarType::Float8_e4m3fnuz},
    {DType::Float8_e5m2fnuz, c10::ScalarType::Float8_e5m2fnuz},
    {DType::UInt16, c10::ScalarType::UInt16},
    {DType::UInt32, c10::ScalarType::UInt32},
    {DType::UInt64, c10::ScalarType::UInt64},
    {DType::Complex64, c10::ScalarType::ComplexFloat},
    {DType::Complex128, c10::ScalarType::ComplexDouble},
    {DType::Float8_e8m0fnu, c10::ScalarType::Float8_e8m0fnu},
};

}  // namespace

c10::ScalarType to_scalar_type(DType dtype) {
  for (const auto& p : kPairs) {
    if (p.dtype == dtype) return p.type;
  }
  throw std::invalid_argument("unknown dtype code " + std::to_string(static_cast<int>(dtype)));
}

DType from_scalar_type(c10::ScalarType type) {
  for (const auto& p : kPairs) {
    if (p.type == type) return p.dtype;
  }
  throw std::invalid_argument(std::string("dtype ") + c10::toString(type) + " is not supported by the litcore format");
}

}  // namespace litcore
