"""Names, torch dtypes and conversion rules shared by save and convert."""
from __future__ import annotations

from typing import Optional, Union

import torch

DTypeLike = Union[str, torch.dtype]

# Every dtype the format stores, by the name torch gives it (and the native core uses).
_BY_NAME = {
    name: getattr(torch, name)
    for name in (
        "float32", "float16", "bfloat16", "float64", "int8", "int16", "int32", "int64",
        "uint8", "bool", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
        "uint16", "uint32", "uint64", "complex64", "complex128", "float8_e8m0fnu",
    )
    if hasattr(torch, name)
}
_ALIASES = {"float": "float32", "half": "float16", "double": "float64", "fp32": "float32",
            "fp16": "float16", "bf16": "bfloat16", "long": "int64", "int": "int32"}

# The dtypes `dtype=` converts. Integers, bools and float8 (quantised data with their own
# scales) are never cast.
CONVERTIBLE = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def resolve(dtype: Optional[DTypeLike], argument: str = "dtype") -> Optional[torch.dtype]:
    """Turns "bfloat16", "bf16", torch.bfloat16 or None into a torch dtype (or None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if isinstance(dtype, torch.dtype) and dtype not in CONVERTIBLE:
            raise ValueError(f"{argument} must be a floating-point dtype, got {dtype}")
        return dtype
    if isinstance(dtype, str):
        name = dtype.lower().removeprefix("torch.")
        name = _ALIASES.get(name, name)
        if name in _BY_NAME and _BY_NAME[name] in CONVERTIBLE:
            return _BY_NAME[name]
    raise ValueError(
        f"{argument} must be one of float32, float16, bfloat16, float64 (or a torch dtype), got {dtype!r}"
    )


def name_of(dtype: torch.dtype) -> str:
    """The format's name for a torch dtype; ValueError if the format cannot hold it."""
    name = str(dtype).removeprefix("torch.")
    if _BY_NAME.get(name) is not dtype:
        raise ValueError(f"dtype {dtype} cannot be stored in a litcore file")
    return name


def from_name(name: str) -> torch.dtype:
    return _BY_NAME[name]


def converted(src: torch.dtype, dtype: Optional[torch.dtype]) -> torch.dtype:
    """The dtype a tensor of dtype `src` is stored as when saving with `dtype=`."""
    return dtype if dtype is not None and src in CONVERTIBLE else src


def cast(tensor: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    """Casts floating-point tensors to `dtype`; everything else is returned unchanged."""
    target = converted(tensor.dtype, dtype)
    return tensor if target == tensor.dtype else tensor.to(target)
