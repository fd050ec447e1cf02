#include "litcore/dtype.h"

#include <stdexcept>

namespace litcore {
namespace {

struct DTypeRow {
  DType dtype;
  size_t itemsize;
  const char* name;
};

constexpr DTypeRow kRows[] = {
    {DType::Float32, 4, "float32"},
    {DType::Float16, 2, "float16"},
    {DType::BFloat16, 2, "bfloat16"},
    {DType::Float64, 8, "float64"},
    {DType::Int8, 1, "int8"},
    {DType::Int16, 2, "int16"},
    {DType::Int32, 4, "int32"},
    {DType::Int64, 8, "int64"},
    {DType::UInt8, 1, "uint8"},
    {DType::Bool, 1, "bool"},
    {DType::Float8_e4m3fn, 1, "float8_e4m3fn"},
    {DType::Float8_e5m2, 1, "float8_e5m2"},
    {DType::Float8_e4m3fnuz, 1, "float8_e4m3fnuz"},
    {DType::Float8_e5m2fnuz, 1, "float8_e5m2fnuz"},
    {DType::UInt16, 2, "uint16"},
    {DType::UInt32, 4, "uint32"},
    {DType::UInt64, 8, "uint64"},
    {DType::Complex64, 8, "complex64"},
    {DType::Complex128, 16, "complex128"},
    {DType::Float8_e8m0fnu, 1, "float8_e8m0fnu"},
};

const DTypeRow& row(DType dtype) {
  for (const auto& r : kRows) {
    if (r.dtype == dtype) return r;
  }
  throw std::invalid_argument("unknown dtype code " + std::to_string(static_cast<int>(dtype)));
}

}  // namespace

bool dtype_code_valid(uint8_t code) {
  for (const auto& r : kRows) {
    if (static_cast<uint8_t>(r.dtype) == code) return true;
  }
  return false;
}

size_t dtype_itemsize(DType dtype) { return row(dtype).itemsize; }

const char* dtype_name(DType dtype) { return row(dtype).name; }

DType dtype_from_name(const std::string& name) {
  for (const auto& r : kRows) {
    if (name == r.name) return r.dtype;
  }
  throw std::invalid_argument("unsupported dtype '" + name + "'");
}

}  // namespace litcore
