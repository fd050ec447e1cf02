"""The residency plan: which modules' weights stay in memory for the whole run and which
are streamed from the file on every forward, within a memory budget.

Plain LRU over a model's cyclic pass evicts exactly what is needed next (why mmap thrashes
when the model exceeds memory). Instead a fixed set stays resident — a prefix and a suffix of
the execution order, plus the largest units when that shrinks the window enough — and the
rest streams through a small window. What streams is then one run of the execution order,
which litcore files store contiguously: one sequential read per forward, at the speed of the
kernel's readahead (gaps measured 2-3x slower). Embeddings are read by row lookup, so they
are never read ahead: their touched pages fault in and leave after use. The planner is
native (csrc/src/residency.cpp), shared with TorchScript programs and C++ applications.
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
    on_demand: bool = False  # read by row lookup (an embedding): never read ahead


@dataclass
class Plan:
    resident: Set[int]          # unit indices kept in memory
    streamed_order: List[int]   # cyclic execution order of streamed units (repeats kept)
    window_bytes: int           # streamed bytes that may be in memory at once
    resident_bytes: int
    streamed_bytes: int         # bytes read ahead per forward (on-demand units: only what they touch)
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
        [(u.name, u.nbytes, u.streamable, u.on_demand) for u in units], list(order), int(budget), set(ran or ()), depth)
    return Plan(set(resident), list(streamed), window, resident_bytes, streamed_bytes, budget, total)


def host_plan(units: Sequence[Unit], device_plan: Plan, budget: int) -> Plan:
    """With device="cuda": which of the units that stream to the device stay in host memory
    (read from the file once, then copied from the page cache) and which are read from the
    file on every forward, within the host `budget`. Units resident on the device take no
    host memory."""
    on_host = set(device_plan.streamed_order)
    host_units = [u if i in on_host else Unit(u.name, 0, False) for i, u in enumerate(units)]
    return make_plan(host_units, device_plan.streamed_order, budget)


def device_plan(units: Sequence[Unit], order: Sequence[int], budget: int, *, slots: int = 3,
                slot_overhead: int = 4096) -> Plan:
    """With device="cuda": the residency plan on the device. Streamed weights pass through a
    ring of `slots` device buffers, each the size of the largest streamed unit (plus
    `slot_overhead` for alignment), so the ring is the plan's window: resident weights and
    the ring together stay within `budget`."""
    room = budget
    for _ in range(8):  # each round keeps less resident; a larger unit may join the streamed
        try:
            plan = make_plan(units, order, room, depth=slots)
        except BudgetTooSmallError:
            break
        streamed = set(plan.streamed_order)
        ring = slots * (max(units[i].nbytes for i in streamed) + slot_overhead) if streamed else 0
        over = plan.resident_bytes + ring - budget
        if over <= 0:
            return Plan(plan.resident, plan.streamed_order, ring, plan.resident_bytes, plan.streamed_bytes, budget,
                        plan.total_bytes)
        room -= over
        if room <= 0:
            break
    largest = max((u for u in units if u.streamable), key=lambda u: u.nbytes, default=None)
    what = f" for module '{largest.name}' ({largest.nbytes / 2**20:.1f} MiB)" if largest else ""
    raise BudgetTooSmallError(f"litcore: gpu_memory_budget {budget / 2**20:.1f} MiB is too small for the weights that "
                              f"must stay on the device and {slots} copy buffers{what}")
