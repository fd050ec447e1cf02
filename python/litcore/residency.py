"""The residency plan: which modules' weights stay in memory for the whole run and which
are streamed from the file on every forward, within a memory budget.

Plain LRU over a model's cyclic pass evicts exactly what is needed next (why mmap thrashes
when the model exceeds memory). Instead a fixed set stays resident and the rest streams
through a small window, with the resident set spread evenly over the execution order so
that streaming IO can run ahead while resident modules compute.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Set


@dataclass(frozen=True)
class Unit:
    """One module's directly owned weights, as the plan sees them."""

    name: str
    nbytes: int
    streamable: bool  # leaf module, parameters only, no tensor shared with another module


@dataclass
class Plan:
    resident: Set[int]          # unit indices kept in memory
    streamed_order: List[int]   # cyclic execution order of streamed units (repeats kept)
    window_bytes: int           # streamed bytes that may be in memory at once
    resident_bytes: int
    streamed_bytes: int         # bytes read from storage per forward
    budget: int
    total_bytes: int

    @property
    def streams(self) -> bool:
        return bool(self.streamed_order)


class BudgetTooSmallError(ValueError):
    """The budget cannot hold what must stay resident plus the largest streamed module."""


def _human(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def make_plan(units: Sequence[Unit], order: Sequence[int], budget: int, *, ran: Optional[Set[int]] = None,
              depth: int = 3) -> Plan:
    """Plans residency for `units` run in `order` (unit indices; repeats allowed) under
    `budget` bytes. `ran` is every unit ever seen running (default: those in `order`).
    The streaming window holds the largest module plus `depth - 1` typical ones, so reads
    run ahead of compute."""
    total = sum(u.nbytes for u in units)
    everything = set(range(len(units)))
    if total <= budget:
        return Plan(everything, [], 0, total, 0, budget, total)
    # Units that never ran under their own hooks (their weights are used by a parent, or not
    # at all) cannot be streamed on cue: they stay resident.
    ran = set(order) | (ran or set())
    must = {i for i, u in enumerate(units) if not u.streamable or i not in ran}
    must_bytes = sum(units[i].nbytes for i in must)
    candidates = list(dict.fromkeys([i for i in order if i not in must] + sorted(ran - must)))
    largest = max(candidates, key=lambda i: units[i].nbytes) if candidates else None
    largest_bytes = units[largest].nbytes if largest is not None else 0
    if must_bytes + largest_bytes > budget:
        detail = f"module '{units[largest].name}' needs {_human(largest_bytes)}" if largest is not None else ""
        raise BudgetTooSmallError(
            f"litcore: memory budget {_human(budget)} is too small: {_human(must_bytes)} must stay resident "
            f"(buffers, shared and non-leaf weights) and {detail} while it runs; "
            f"at least {_human(must_bytes + largest_bytes)} is needed")
    # The window holds the module running now plus the next ones being read.
    sizes = sorted(units[i].nbytes for i in candidates)
    median = sizes[len(sizes) // 2] if sizes else 0
    window = min(largest_bytes + (depth - 1) * median, budget - must_bytes)
    spare = budget - must_bytes - window
    streamable_total = sum(units[i].nbytes for i in candidates)
    resident = set(must)
    # Spread the spare budget evenly along the execution order (error diffusion).
    fraction = spare / streamable_total if streamable_total else 0.0
    credit = 0.0
    for i in candidates:
        size = units[i].nbytes
        credit += fraction * size
        if size <= credit and size <= spare:
            resident.add(i)
            credit -= size
            spare -= size
    in_order = set(order)
    streamed_order = [i for i in order if i not in resident] + [i for i in candidates if i not in resident and i not in in_order]
    resident_bytes = sum(units[i].nbytes for i in resident)
    return Plan(resident, streamed_order, window, resident_bytes, total - resident_bytes, budget, total)
