"""The residency plan: which modules' weights stay in memory for the whole run and which
are streamed from the file on every forward, within a memory budget.

Plain LRU over a model's cyclic pass evicts exactly what is needed next (why mmap thrashes
when the model exceeds memory). Instead a fixed set stays resident — a prefix and a suffix of
the execution order, plus the largest units when that shrinks the window enough — and the
rest streams through a small window. What streams is then one run of the execution order,
which litcore files store contiguously: one sequential read per forward, at the speed of the
kernel's readahead (gaps measured 2-3x slower). When a forward is compute-bound, one run
cannot hide its read (the reader stays only a window ahead); given rates measured on earlier
forwards (`PassRates`), the planner also models 2-8 runs spread along the order and keeps the
fastest layout (csrc/src/pass_model.cpp). Embeddings are read by row lookup, so they
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


@dataclass(frozen=True)
class PassRates:
    """What the pass model needs, measured on a forward (LitModule measures it)."""

    compute_seconds_per_byte: float  # forward time outside IO waits, per weight byte used
    read_seconds_per_byte: float     # the reader along a contiguous range
    seek_seconds: float              # extra time of a read that does not continue the last one


@dataclass
class Plan:
    resident: Set[int]          # unit indices kept in memory
    streamed_order: List[int]   # cyclic execution order of streamed units (repeats kept)
    window_bytes: int           # streamed bytes that may be in memory at once
    resident_bytes: int
    streamed_bytes: int         # bytes read ahead per forward (on-demand units: only what they touch)
    budget: int
    total_bytes: int
    runs: int = 0                 # separate runs the streamed units form along the order
    modeled_seconds: float = 0.0  # the pass model's forward time (0: no rates given)

    @property
    def streams(self) -> bool:
        return bool(self.streamed_order)


def _native_units(units: Sequence[Unit]) -> list:
    return [(u.name, u.nbytes, u.streamable, u.on_demand) for u in units]


def _native_rates(rates: Optional[PassRates]) -> tuple:
    if rates is None:
        return (0.0, 0.0, 0.0)  # unknown: one streamed run
    return (rates.compute_seconds_per_byte, rates.read_seconds_per_byte, rates.seek_seconds)


def make_plan(units: Sequence[Unit], order: Sequence[int], budget: int, *, ran: Optional[Set[int]] = None,
              depth: int = 3, rates: Optional[PassRates] = None, current_runs: int = 1) -> Plan:
    """Plans residency for `units` run in `order` (unit indices; repeats allowed) under
    `budget` bytes; `ran` is every unit ever seen running (default: those in `order`).
    With `rates`, what streams may be spread in several runs when the pass model predicts
    it faster; a layout other than `current_runs` runs must win by 5%.
    Raises BudgetTooSmallError naming the module that cannot fit."""
    resident, streamed, window, resident_bytes, streamed_bytes, budget, total, runs, modeled = _C.make_plan(
        _native_units(units), list(order), int(budget), set(ran or ()), depth, _native_rates(rates), current_runs)
    return Plan(set(resident), list(streamed), window, resident_bytes, streamed_bytes, budget, total, runs, modeled)


def model_pass_seconds(units: Sequence[Unit], order: Sequence[int], plan: Plan, rates: PassRates) -> float:
    """The pass model's steady forward time for `plan` (csrc/include/litcore/pass_model.h)."""
    return _C.model_pass_seconds(_native_units(units), list(order), set(plan.streamed_order), plan.window_bytes,
                                 _native_rates(rates))


def measure_rates(units: Sequence[Unit], order: Sequence[int], forward_seconds: float, prefetch_stats: dict,
                  previous: Optional[PassRates] = None, *, min_read_bytes: int = 16 << 20) -> Optional[PassRates]:
    """The pass model's rates from one forward: its time outside IO waits over the weight
    bytes it used, and the prefetcher's read times (`Prefetcher.stats()`). What the forward
    read too little to tell is taken from `previous`; None when nothing is known yet."""
    s = prefetch_stats
    used = sum(units[i].nbytes for i in order if not units[i].on_demand)
    compute = max(forward_seconds - s["wait_seconds"], 0.0)
    read_bytes, read_seconds = s["bytes_read"] - s["seek_read_bytes"], s["read_seconds"] - s["seek_read_seconds"]
    read = previous.read_seconds_per_byte if previous else 0.0
    if read_bytes >= min_read_bytes:
        read = read_seconds / read_bytes
    elif s["bytes_read"] >= min_read_bytes:
        read = s["read_seconds"] / s["bytes_read"]
    seek = previous.seek_seconds if previous else 0.0
    if s["seek_reads"] and read:
        seek = max(s["seek_read_seconds"] - s["seek_read_bytes"] * read, 0.0) / s["seek_reads"]
    if not used or not compute or not read:
        return previous
    return PassRates(compute / used, read, seek)


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
                        plan.total_bytes, plan.runs)
        room -= over
        if room <= 0:
            break
    largest = max((u for u in units if u.streamable), key=lambda u: u.nbytes, default=None)
    what = f" for module '{largest.name}' ({largest.nbytes / 2**20:.1f} MiB)" if largest else ""
    raise BudgetTooSmallError(f"litcore: gpu_memory_budget {budget / 2**20:.1f} MiB is too small for the weights that "
                              f"must stay on the device and {slots} copy buffers{what}")
