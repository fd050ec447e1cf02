"""The residency plan: which modules' weights stay in memory for the whole run and which
are streamed from the file on every forward, within a memory budget.

Plain LRU over a model's cyclic pass evicts exactly what is needed next (why mmap thrashes
when the model exceeds memory). Instead a fixed set stays resident and the rest streams
through a small window, with the resident set spread evenly over the execution order so
that streaming IO can run ahead while resident modules compute. The planner is native
(csrc/src/residency.cpp), shared with TorchScript programs and C++ applications.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Set

from litcore._native import _C

BudgetTooSmallError = _C.BudgetTooSmallError
BudgetTooSmallError.__module__ = "litcore"
BudgetTooSmallError.__doc__ = "The budget cannot hold what must stay resident plus the largest streamed module (a ValueError)."


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


def make_plan(units: Sequence[Unit], order: Sequence[int], budget: int, *, ran: Optional[Set[int]] = None,
              depth: int = 3) -> Plan:
    """Plans residency for `units` run in `order` (unit indices; repeats allowed) under
    `budget` bytes; `ran` is every unit ever seen running (default: those in `order`).
    Raises BudgetTooSmallError naming the module that cannot fit."""
    resident, streamed, window, resident_bytes, streamed_bytes, budget, total = _C.make_plan(
        [(u.name, u.nbytes, u.streamable) for u in units], list(order), int(budget), set(ran or ()), depth)
    return Plan(set(resident), list(streamed), window, resident_bytes, streamed_bytes, budget, total)
