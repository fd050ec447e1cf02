"""Memory budgets: parse "1.5GiB"-style sizes and derive the "auto" budget.

"auto" is what this process may still use: the smaller of the cgroup's limit (v2
`memory.max`, v1 `memory.limit_in_bytes`) minus what the cgroup is charged now
(`memory.current` / `memory.usage_in_bytes`, page cache included, less the page cache on
the inactive list, which the kernel reclaims first), and the system's `MemAvailable`; minus
a margin of max(128 MiB, 5%) for activations and allocator slack. Page cache counts against
cgroup limits, which is why litcore budgets mapped weight pages and drops streamed pages
right after use. Under a cgroup limit the engine then moves an "auto" budget after each
forward to what the cgroup has left (see `LitModule.from_params`).
"""
from __future__ import annotations

import os
import warnings
from typing import Optional, Union

from litcore._native import _C

Budget = Union[None, int, float, str]

def parse_size(value: Union[int, float, str], argument: str = "memory_budget") -> int:
    """Bytes from an int, or a string like "1200MB", "1.5GiB", "800M" (k/M/G/T are powers
    of 10, KiB/MiB/GiB/TiB of 2): the rules C++ apps and TorchScript programs use too."""
    if isinstance(value, bool):
        raise TypeError(f"{argument} must be a size, got {value!r}")
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            raise ValueError(f"{argument}: 'auto' is not a size here")
        return _C.parse_budget(value, argument)
    if not isinstance(value, (int, float)):
        raise TypeError(f"{argument} must be bytes, a string like '1.5GiB', or 'auto'; got {type(value).__name__}")
    n = int(value)
    if n <= 0:
        raise ValueError(f"{argument} must be positive, got {value!r}")
    return n


def machine_memory() -> int:
    """What this machine (or this process's cgroup) has in all: the smaller of MemTotal and
    the cgroup limit."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _C.cgroup_limit()
    return min(total, limit) if limit else total


def cgroup_limit() -> Optional[int]:
    """This process's tightest cgroup memory limit (v1 or v2) in bytes, or None."""
    return _C.cgroup_limit() or None


def auto_budget() -> int:
    """The "auto" budget (see the module docstring); computed natively, as C++ apps do."""
    return _C.auto_budget()


def resolve_budget(value: Budget, argument: str = "memory_budget") -> int:
    """Bytes for a `memory_budget` argument: None or "auto" mean auto_budget(). A budget
    larger than the machine (or its cgroup) has is kept, with a warning: going past what
    there is ends in the kernel's OOM killer, not in litcore streaming."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return auto_budget()
    n = parse_size(value, argument)
    machine = machine_memory()
    if n > machine:
        warnings.warn(f"litcore: {argument} {n / 2**30:.2f} GiB is more than this machine has "
                      f"({machine / 2**30:.2f} GiB{' in its cgroup' if _C.cgroup_limit() else ''}); "
                      f"weights beyond what fits will be evicted by the kernel, not streamed", stacklevel=3)
    return n


def budget_argument(text: str) -> str:
    """An argparse `type=` for budget options: 'auto' or a size, checked before any work
    (argparse then reports a bad value against the option)."""
    import argparse

    if text.strip().lower() != "auto":
        try:
            parse_size(text, "memory budget")
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix("litcore: ")) from None
    return text
