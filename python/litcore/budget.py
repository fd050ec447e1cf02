"""Memory budgets: parse "1.5GiB"-style sizes and derive the "auto" budget.

"auto" is what this process may still use: the smaller of the cgroup's limit (v2
`memory.max`, v1 `memory.limit_in_bytes`) minus what the process already holds, and the
system's `MemAvailable`; minus a margin of max(96 MiB, 10%) for activations and allocator
slack. Page cache counts against cgroup limits, which is why
litcore budgets mapped weight pages and drops streamed pages right after use.
"""
from __future__ import annotations

import os
import re
from typing import Optional, Union

Budget = Union[None, int, float, str]

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_NO_LIMIT = 1 << 60


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


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if text == "max":
        return _NO_LIMIT
    try:
        return int(text)
    except ValueError:
        return None


def cgroup_limit() -> Optional[int]:
    """This process's cgroup memory limit in bytes, or None when there is none."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            limits.append(_read_int(f"/sys/fs/cgroup{path}/memory.max"))
        elif "memory" in controllers.split(","):
            limits.append(_read_int(f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"))
    limits = [x for x in limits if x is not None and x < _NO_LIMIT]
    return min(limits) if limits else None


def mem_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def auto_budget() -> int:
    """The "auto" budget (see the module docstring)."""
    candidates = []
    limit = cgroup_limit()
    if limit is not None:
        candidates.append(limit - current_rss())
    available = mem_available()
    if available is not None:
        candidates.append(available)
    if not candidates:
        return _NO_LIMIT
    headroom = max(min(candidates), 0)
    return max(headroom - max(96 << 20, int(headroom * 0.10)), 0)


def resolve_budget(value: Budget) -> int:
    """Bytes for a `memory_budget` argument: None or "auto" mean auto_budget()."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return auto_budget()
    return parse_size(value)
