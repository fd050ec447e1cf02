"""`empty_init()`: build a model without allocating or initialising its weights.

This is PyTorch-LIT's hijack of `torch.nn.Parameter.__new__`, made safe: every parameter
created inside the context is a meta tensor (shape and dtype, no memory), so the model's
random initialisation runs on nothing and costs nothing. Buffers are left alone: values a
model computes in `__init__` (rotary `inv_freq`, `position_ids`) stay real.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

_PARAMETER_NEW = torch.nn.Parameter.__dict__["__new__"]
_lock = threading.RLock()
_depth = 0


def _meta_parameter_new(cls, data=None, requires_grad=True):
    if data is None:
        data = torch.empty(0)
    if data.device.type != "meta":
        # Keep only shape, dtype and strides; the (untouched) allocation is freed now.
        data = torch.empty_strided(data.shape, data.stride(), dtype=data.dtype, device="meta")
    return _PARAMETER_NEW(cls, data, requires_grad)


@contextlib.contextmanager
def empty_init() -> Iterator[None]:
    """Within this context, `nn.Parameter`s are created on the meta device.

    The hijack is undone on exit, also when the body raises; nesting is safe. It is
    process-wide while active: do not build other models on other threads meanwhile.
    """
    global _depth
    with _lock:
        if _depth == 0:
            torch.nn.Parameter.__new__ = _meta_parameter_new
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                torch.nn.Parameter.__new__ = _PARAMETER_NEW


def is_active() -> bool:
    """True while an `empty_init()` context is open."""
    return _depth > 0
