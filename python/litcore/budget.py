"""Memory budgets: parse "1.5GiB"-style sizes and derive the "auto" budget.

"auto" is what this process may still use: the smaller of the cgroup's limit (v2
`memory.max`, v1 `memory.limit_in_bytes`) minus what the cgroup is charged now
(`memory.current` / `memory.usage_in_bytes`, page cache included), and the system's
`MemAvailable`; minus a margin of max(128 MiB, 5%) for activations and allocator slack.
Page cache counts against cgroup limits, which is why litcore budgets mapped weight pages
and drops streamed pages right after use.
"""
from __future__ import annotations

import re
from typing import Optional, Union

from litcore._native import _C

Budget = Union[None, int, float, str]

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(value: Union[int, float, str], argument: str = "memory_budget") -> int:
    """Bytes from an int, or a string like "1200MB", "1.5GiB", "800M"."""
    if isinstance(value, bool):
        raise TypeError(f"{argument} must be a size, got {value!r}")
    if isinstance(value, (int, float)):
        n = int(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"{argument}: cannot parse {value!r} (use bytes or e.g. '1200MB', '1.5GiB')")
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    else:
        raise TypeError(f"{argument} must be bytes, a string like '1.5GiB', or 'auto'; got {type(value).__name__}")
    if n <= 0:
        raise ValueError(f"{argument} must be positive, got {value!r}")
    return n


def cgroup_limit() -> Optional[int]:
    """This process's tightest cgroup memory limit (v1 or v2) in bytes, or None."""
    return _C.cgroup_limit() or None


def auto_budget() -> int:
    """The "auto" budget (see the module docstring); computed natively, as C++ apps do."""
    return _C.auto_budget()


def resolve_budget(value: Budget) -> int:
    """Bytes for a `memory_budget` argument: None or "auto" mean auto_budget()."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return auto_budget()
    return parse_size(value)
