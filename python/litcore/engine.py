"""The native streaming engine (csrc/include/litcore/engine.h) as Python sees it: the
pass interface the hooks call, and the plan and statistics in Python types."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

from litcore._native import _C
from litcore.binding import UnitSpec
from litcore.residency import PassRates, Plan, Unit, plan_from_native
from litcore.store import Store

__all__ = ["Engine", "DEFAULT_VERIFY", "check_threads", "check_verify", "parse_device"]

# No checksums unless asked: "lazy" costs one hash of every weight byte, which this
# project's measurements put well over the 5% it allows a default (docs/benchmarks.md).
DEFAULT_VERIFY = "none"


def check_threads(threads: int) -> int:
    """`threads` as the engine takes it: a whole number from 1 to 64."""
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"litcore: threads must be a whole number, got {threads!r}")
    return _C.check_threads(threads)


def check_verify(verify: object) -> str:
    """`verify` as the engine takes it: "none", "lazy" or "full" (True means "full", False "none")."""
    if verify is True:
        return "full"
    if verify is False or verify is None:
        return "none"
    if verify in ("none", "lazy", "full"):
        return str(verify)
    raise ValueError(f"litcore: verify must be 'none', 'lazy' or 'full' (or True/False), not {verify!r}")


def parse_device(device: str) -> str:
    """`device` as every entry point takes it: "cpu", "cuda" or "cuda:N" (one parser, in C++)."""
    if not isinstance(device, str):
        raise TypeError(f"litcore: device must be a string such as 'cpu' or 'cuda:0', got {device!r}")
    return _C.parse_device(device)


class Engine:
    """Owns the units, the plan, the order, the rates, the warm-up and prefetch readers, and
    the per-forward statistics of one model. `begin`, `enter`, `exit` and `end` are the
    native methods themselves (the hooks call them directly, with the GIL released)."""

    def __init__(self, store: Store, specs: Sequence[UnitSpec], *, memory_budget: int, threads: int = 1,
                 read_mode: str = "buffer", warm_up: bool = True, adapt: bool = True,
                 verify: str = DEFAULT_VERIFY, narrow_compute: bool = False) -> None:
        self.native = _C.Engine(store.native, list(specs), memory_budget, check_threads(threads), read_mode, warm_up,
                                adapt, check_verify(verify), bool(narrow_compute))
        self.units: List[Unit] = [Unit(*u) for u in self.native.units()]
        self.begin = self.native.begin
        self.enter = self.native.enter
        self.enter_experts = self.native.enter_experts
        self.exit = self.native.exit
        self.end = self.native.end

    def plan(self) -> Plan:
        return plan_from_native(self.native.plan(), self.units)

    def hooked_units(self) -> List[int]:
        """Units whose modules need enter/exit hooks: the streamable ones, if anything streams
        or the warm-up is still reading (a cold unit's forward then waits for its read)."""
        hooked = self.native.streams() or self.native.warming_up()
        return [i for i, u in enumerate(self.units) if u.streamable] if hooked else []

    def routed_units(self) -> List[int]:
        """Streamable units read by their routing when they stream (a mixture-of-experts
        layer's experts): their hooks pass the experts each forward chose (`enter_experts`)."""
        return self.native.routed_units()

    def passes(self) -> List[Dict[str, Any]]:
        return self.native.passes()

    def summary(self) -> Dict[str, Any]:
        return self.native.summary()

    def totals(self) -> Dict[str, Any]:
        return self.native.totals()

    def take_warnings(self) -> List[str]:
        return self.native.take_warnings()

    def replan(self, rates: PassRates) -> None:
        """Lays out what streams for `rates` now, instead of measured ones."""
        self.native.replan((rates.compute_seconds_per_byte, rates.read_seconds_per_byte, rates.seek_seconds))

    def close(self) -> None:
        """Stops the reader threads (also done when the engine is collected)."""
        self.native = self.begin = self.enter = self.enter_experts = self.exit = self.end = None  # type: ignore[assignment]

