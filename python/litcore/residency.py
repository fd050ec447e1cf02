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
native (csrc/src/residency.cpp); the engine (csrc/src/engine.cpp) plans with it for every
entry point. These functions expose it for inspection, tests and the CUDA path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Set, Tuple

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
    routed: bool = False     # a mixture-of-experts layer's experts: a forward reads its router's choice


@dataclass(frozen=True)
class PassRates:
    """What the pass model needs, measured on a forward (LitModule measures it)."""

    compute_seconds_per_byte: float  # forward time outside IO waits, per weight byte used
    read_seconds_per_byte: float     # the reader along a contiguous range
    seek_seconds: float              # extra time of a read that does not continue the last one


@dataclass
class Plan:
    """Where each unit's weights live. Unit indices for the planner's callers; in module
    names through `placements()`, `resident_modules`, `streamed_modules`, `lookup_modules`
    and `str(plan)`. resident + streamed + routed + lookup bytes = total bytes."""

    resident: Set[int]          # unit indices kept in memory
    streamed_order: List[int]   # cyclic execution order of streamed units (repeats kept)
    window_bytes: int           # streamed bytes that may be in memory at once
    resident_bytes: int
    streamed_bytes: int         # bytes read ahead per forward
    lookup_bytes: int           # units read by lookup (embeddings): only touched rows are read
    budget: int
    total_bytes: int
    runs: int = 0                 # separate runs the streamed units form along the order
    modeled_seconds: float = 0.0  # the pass model's forward time (0: no rates given)
    routed_bytes: int = 0         # routed units streamed: a forward reads its routing's share of them
    units: Sequence[Unit] = field(default=(), repr=False, compare=False)

    @property
    def streams(self) -> bool:
        return bool(self.streamed_order)

    def placements(self) -> List[Tuple[str, str, int]]:
        """(module name, "resident" | "streamed" | "lookup", bytes) for every unit."""
        return [(u.name, "resident" if i in self.resident else "lookup" if u.on_demand else "streamed", u.nbytes)
                for i, u in enumerate(self.units)]

    def _named(self, residency: str) -> List[str]:
        return [name for name, where, _ in self.placements() if where == residency]

    @property
    def resident_modules(self) -> List[str]:
        return self._named("resident")

    @property
    def streamed_modules(self) -> List[str]:
        """Streamed modules in the order they are read."""
        names = [self.units[i].name for i in self.streamed_order if not self.units[i].on_demand]
        return list(dict.fromkeys(names))

    @property
    def lookup_modules(self) -> List[str]:
        return self._named("lookup")

    def __str__(self) -> str:
        mib = 2**20
        lines = [f"budget {self.budget / mib:.1f} MiB, weights {self.total_bytes / mib:.1f} MiB: "
                 f"resident {self.resident_bytes / mib:.1f}, streamed {self.streamed_bytes / mib:.1f} "
                 f"per forward in {self.runs} run(s) through a {self.window_bytes / mib:.1f} MiB window, "
                 f"read by lookup {self.lookup_bytes / mib:.1f}"
                 + (f", read by routing {self.routed_bytes / mib:.1f} (the chosen experts' share)"
                    if self.routed_bytes else "")]
        lines += [f"  {where:<8} {nbytes / mib:10.2f} MiB  {name}" for name, where, nbytes in self.placements()]
        return "\n".join(lines)


def plan_from_native(values: tuple, units: Sequence[Unit]) -> Plan:
    """A Plan from the native planner's or engine's tuple."""
    resident, streamed, window, resident_bytes, streamed_bytes, lookup_bytes, budget, total, runs, modeled, routed = values
    return Plan(set(resident), list(streamed), window, resident_bytes, streamed_bytes, lookup_bytes, budget, total,
                runs, modeled, routed, tuple(units))


def _native_units(units: Sequence[Unit]) -> list:
    return [(u.name, u.nbytes, u.streamable, u.on_demand, u.routed) for u in units]


def _native_rates(rates: Optional[PassRates]) -> tuple:
    if rates is None:
        return (0.0, 0.0, 0.0)  # unknown: one streamed run
    return (rates.compute_seconds_per_byte, rates.read_seconds_per_byte, rates.seek_seconds)


def make_plan(units: Sequence[Unit], order: Sequence[int], budget: int, *, ran: Optional[Set[int]] = None,
              depth: int = 3, rates: Optional[PassRates] = None, current_runs: int = 1,
              read_group_bytes: int = 0, direct_reads: bool = False) -> Plan:
    """Plans residency for `units` run in `order` (unit indices; repeats allowed) under
    `budget` bytes; `ran` is every unit ever seen running (default: those in `order`).
    With `rates`, what streams may be spread in several runs when the pass model predicts
    it faster; a layout other than `current_runs` runs must win by 5%. `read_group_bytes`:
    the largest read group (read_group_bytes()); the window holds it and the largest unit.
    `direct_reads`: the reader reads each unit alone, past the page cache (read_mode "direct"
    or "buffer"), so a spread layout is weighed even where the reads bound the pass.
    Raises BudgetTooSmallError naming the module that cannot fit."""
    return plan_from_native(_C.make_plan(_native_units(units), list(order), int(budget), set(ran or ()), depth,
                                         _native_rates(rates), current_runs, int(read_group_bytes),
                                         bool(direct_reads)), units)


def read_group_bytes(units: Sequence[Unit], order: Sequence[int], ranges: Sequence[Sequence[Tuple[int, int]]],
                     budget: int) -> int:
    """The largest run of units the engine's reader would read as one block (units stored in
    one block of the file in another order than they run), as the engine sizes its window
    (read_groups.h: over the units that can stream, at most a quarter of `budget`)."""
    return _C.planned_read_group(_native_units(units), list(order), [list(r) for r in ranges], int(budget))


def model_pass_seconds(units: Sequence[Unit], order: Sequence[int], plan: Plan, rates: PassRates) -> float:
    """The pass model's steady forward time for `plan` (csrc/include/litcore/pass_model.h)."""
    return _C.model_pass_seconds(_native_units(units), list(order), set(plan.streamed_order), plan.window_bytes,
                                 _native_rates(rates))


def measure_rates(units: Sequence[Unit], order: Sequence[int], forward_seconds: float, prefetch_stats: dict,
                  previous: Optional[PassRates] = None) -> Optional[PassRates]:
    """The pass model's rates from one forward, as the engine measures them after each
    (csrc/include/litcore/pass_model.h): its time outside IO waits over the weight bytes it
    used, and the prefetch reader's timings (`Prefetcher.stats()`). What the forward read too
    little to tell is taken from `previous`; None when nothing is known yet."""
    r = PassRates(*_C.measure_rates(_native_units(units), list(order), forward_seconds, prefetch_stats,
                                    _native_rates(previous)))
    return r if r.compute_seconds_per_byte > 0 and r.read_seconds_per_byte > 0 else None


def narrow_streamed_compute(rates: PassRates, threads: int, narrowed: bool = False) -> bool:
    """Whether the engine computes a pass's streamed modules with one of `threads` fewer
    (csrc/include/litcore/compute_threads.h): where their compute, so slowed, stays within
    80% of their reads; once narrowed (`rates` measured so), while it stays under them."""
    return _C.narrow_streamed_compute(_native_rates(rates), int(threads), bool(narrowed))


def host_plan(units: Sequence[Unit], device_plan: Plan, budget: int) -> Plan:
    """With device="cuda": which of the units that stream to the device stay in host memory
    (read from the file once, then copied from the page cache) and which are read from the
    file on every forward, within the host `budget`. Units resident on the device take no
    host memory."""
    return plan_from_native(_C.make_host_plan(_native_units(units), list(device_plan.streamed_order), int(budget)),
                            units)


def device_plan(units: Sequence[Unit], order: Sequence[int], budget: int, *, slots: int = 3,
                slot_overhead: int = 4096) -> Plan:
    """With device="cuda": the residency plan on the device. Streamed weights pass through a
    ring of `slots` device buffers, each the size of the largest streamed unit (plus
    `slot_overhead` for alignment), so the ring is the plan's window: resident weights and
    the ring together stay within `budget`."""
    return plan_from_native(_C.make_device_plan(_native_units(units), list(order), int(budget), slots, slot_overhead),
                            units)
