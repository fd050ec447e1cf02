"""`litcore.save`: write a mapping of name -> tensor as one aligned weight file."""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from litcore import dtypes
from litcore._native import _C
from litcore.dtypes import DTypeLike
from litcore.store import PathLike

__all__ = ["save", "TensorPlan", "write_planned"]

PRODUCER_KEY = "litcore.producer"
ORIGINAL_DTYPES_KEY = "litcore.original_dtypes"


class TensorPlan:
    """One entry of a file being written: its name, final dtype and shape, and either a
    way to produce its data or the index of the entry it aliases. `read`, where the source
    can give it, returns the source tensor as stored (before any dtype conversion), for a
    conversion that computes a tensor from several (litcore.hf_checkpoint)."""

    __slots__ = ("name", "dtype", "shape", "alias_of", "produce", "read")

    def __init__(self, name: str, dtype: torch.dtype, shape: Sequence[int], *,
                 alias_of: int = -1, produce: Optional[Callable[["_C.Writer", int], None]] = None,
                 read: Optional[Callable[[], torch.Tensor]] = None) -> None:
        self.name = name
        self.dtype = dtype
        self.shape = tuple(int(d) for d in shape)
        self.alias_of = alias_of
        self.produce = produce
        self.read = read

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


def _tie_key(t: torch.Tensor) -> Optional[Tuple]:
    if t.numel() == 0:
        return None
    storage = t.untyped_storage()
    return (t.device.type, storage.data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _prepare(t: torch.Tensor, dtype: Optional[torch.dtype], name: str) -> torch.Tensor:
    if t.device.type == "meta":
        raise ValueError(f"tensor '{name}' is on the meta device and has no data to save")
    t = dtypes.cast(t.detach(), dtype)
    if t.device.type != "cpu":
        t = t.cpu()
    return t.contiguous()


def write_planned(path: PathLike, plans: Sequence[TensorPlan], metadata: Mapping[str, str], *,
                  progress: bool = False, desc: str = "write") -> None:
    """Writes `plans` in order through the native writer; atomic (temp file + rename)."""
    specs = [(p.name, dtypes.name_of(p.dtype), list(p.shape), p.alias_of) for p in plans]
    writer = _C.Writer(os.fspath(path), specs, {str(k): str(v) for k, v in metadata.items()})
    bar = None
    try:
        if progress:
            from tqdm import tqdm

            total = sum(p.nbytes for p in plans if p.alias_of < 0)
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc)
        for i, plan in enumerate(plans):
            if plan.alias_of >= 0:
                continue
            plan.produce(writer, i)
            if bar is not None:
                bar.update(plan.nbytes)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()


def plan_tensors(tensors: Iterable[Tuple[str, torch.Tensor]], dtype: Optional[torch.dtype]) -> Tuple[List[TensorPlan], Dict[str, str]]:
    """Plans in-memory tensors: ties (same storage, offset, shape, strides) become aliases."""
    plans: List[TensorPlan] = []
    seen: Dict[Tuple, int] = {}
    original: Dict[str, str] = {}
    for name, t in tensors:
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {type(name).__name__} ({name!r})")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"'{name}' is a {type(t).__name__}, not a torch.Tensor")
        key = _tie_key(t)
        if key is not None and key in seen:
            target = plans[seen[key]]
            plans.append(TensorPlan(name, target.dtype, target.shape, alias_of=seen[key]))
            continue
        final = dtypes.converted(t.dtype, dtype)
        dtypes.name_of(t.dtype)  # refuse unsupported dtypes before writing anything
        if final != t.dtype:
            original[name] = dtypes.name_of(t.dtype)

        def produce(writer: "_C.Writer", i: int, t: torch.Tensor = t, name: str = name) -> None:
            writer.write(i, _prepare(t, dtype, name))

        if key is not None:
            seen[key] = len(plans)
        plans.append(TensorPlan(name, final, t.shape, produce=produce))
    return plans, original


def base_metadata(metadata: Optional[Mapping[str, str]], original: Mapping[str, str]) -> Dict[str, str]:
    from litcore import __version__

    out = {PRODUCER_KEY: f"litcore {__version__}"}
    if original:
        out[ORIGINAL_DTYPES_KEY] = json.dumps(dict(original), sort_keys=True)
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"metadata must map str to str, got {k!r}: {type(v).__name__}")
        out[k] = v
    return out


def save(tensors: Mapping[str, torch.Tensor], path: PathLike, *, dtype: Optional[DTypeLike] = None,
         metadata: Optional[Mapping[str, str]] = None, progress: bool = False) -> None:
    """Writes `tensors` (in their iteration order) to `path` atomically.

    `dtype` converts floating-point tensors (float16/32/64, bfloat16) only; integer, bool
    and float8 tensors are stored as they are. Tensors that share storage, offset, shape
    and strides (tied weights) are stored once; the other names become aliases.
    """
    target = dtypes.resolve(dtype)
    plans, original = plan_tensors(tensors.items(), target)
    write_planned(path, plans, base_metadata(metadata, original), progress=progress,
                  desc=f"save {os.path.basename(os.fspath(path))}")
