"""`LitModule`: a model whose weights live in a litcore file, brought in as it runs."""
from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from litcore import hooks
from litcore._native import _C
from litcore.binding import Binding, bind
from litcore.budget import Budget, resolve_budget
from litcore.empty_init import empty_init
from litcore.residency import (BudgetTooSmallError, PassRates, Plan, Unit, device_plan, host_plan, make_plan,
                               measure_rates)
from litcore.store import PathLike, Store

__all__ = ["LitModule", "resolve_weights_path"]

log = logging.getLogger("litcore")


def resolve_weights_path(path: PathLike) -> str:
    """A .lit file, or the directory prepare_params wrote (holding one .lit file)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        found = sorted(f for f in os.listdir(path) if f.endswith(".lit"))
        if len(found) != 1:
            raise FileNotFoundError(f"litcore: expected one .lit file in directory '{path}', found {found or 'none'}")
        return os.path.join(path, found[0])
    return path


def _require_cuda(device: torch.device) -> None:
    if not torch.cuda.is_available():
        raise ValueError(f"litcore: device {device} requested but CUDA is not available "
                         f"(torch {torch.__version__}, cuda {torch.version.cuda})")


class LitModule:
    """Runs `module` with its weights in a memory-mapped litcore file.

    Within the memory budget every weight is a zero-copy view of the file and calls cost
    nothing extra. Beyond it, a residency plan keeps some modules resident and streams the
    rest: native threads read the next modules (in the execution order recorded on the
    first forward) while the current one computes, and drop them right after use.
    """

    def __init__(self, module: nn.Module, store: Store, binding: Binding, *, memory_budget: Budget = "auto",
                 device: str = "cpu", gpu_memory_budget: Budget = "auto", threads: int = 1,
                 read_mode: str = "sendfile", verbose: bool = False) -> None:
        self.module = module
        self.store = store
        self.verbose = verbose
        self.device = torch.device(device)
        self._binding = binding
        self._handles: Optional[list] = None
        self._prefetcher: Optional["_C.Prefetcher"] = None
        self._warmer: Optional["_C.Prefetcher"] = None
        self._cuda = None
        self._host_plan: Optional[Plan] = None  # device="cuda": what stays in host memory
        self._passes: List[Dict[str, Any]] = []
        self._budget = resolve_budget(memory_budget)
        self._units, self._unit_keys, self._unit_modules = self._make_units(
            module, store, binding, lookups_on_demand=self.device.type == "cpu")
        self._order = list(range(len(self._units)))  # registration order until a forward is seen
        self._recorded = False
        self._ran: set = set()
        self._rates: Optional[PassRates] = None
        self._settling = False  # the forward after a plan change reads the new residents: not measured
        recorder = hooks.PassRecorder(self._on_pass, self._on_start)
        if self.device.type == "cuda":
            self._plan = self._setup_cuda(gpu_memory_budget, threads, read_mode)
            streamed = {i: self._unit_modules[i] for i in set(self._plan.streamed_order)}
            self._handles = hooks.install(module, streamed, self._cuda, recorder)
            return
        self._plan = make_plan(self._units, self._order, self._budget)
        self._warmer = self._warm(sorted(self._plan.resident, key=self._order.index))
        streamable = {}
        if self._plan.streams:
            self._prefetcher = self._make_prefetcher(self._plan.window_bytes, threads, read_mode)
            self._prefetcher.set_order(self._plan.streamed_order)
            streamable = {i: self._unit_modules[i] for i, u in enumerate(self._units) if u.streamable}
        self._handles = hooks.install(module, streamable, self._prefetcher, recorder)

    def _warm(self, units: List[int]) -> Optional["_C.Prefetcher"]:
        """Reads the resident weights in on a native thread, in module order, while the model
        waits for its first forward (which then finds them in memory); `ready` stays instant.
        Always with pread: its copy touches every page, and on a virtual machine the first CPU
        touch of freshly read page cache is slow (measured: a first forward after a sendfile
        warm-up took 6.4 s and 2x the CPU, after a pread one 3.6 s; steady 3.3 s)."""
        groups = [self.store.native.byte_ranges(self._unit_keys[i]) for i in units]
        if not groups:
            return None
        warmer = _C.Prefetcher(self.store.native, groups, sum(n for g in groups for _, n in g), 1, "pread", keep=True)
        warmer.set_order(list(range(len(groups))))  # loaded once, never released
        return warmer

    def _make_prefetcher(self, window_bytes: int, threads: int, read_mode: str) -> "_C.Prefetcher":
        groups = [self.store.native.byte_ranges(keys) for keys in self._unit_keys]
        return _C.Prefetcher(self.store.native, groups, window_bytes, threads, read_mode,
                             [u.on_demand for u in self._units])

    def _setup_cuda(self, gpu_memory_budget: Budget, threads: int, read_mode: str) -> Plan:
        """Weights that fit the GPU budget go to the device once; the rest stream through
        pinned buffers and a copy stream (litcore.cuda_streaming)."""
        _require_cuda(self.device)
        from litcore import cuda_streaming

        device = self.device if self.device.index is not None else torch.device("cuda", torch.cuda.current_device())
        self.device = device
        gpu_budget = (cuda_streaming.gpu_auto_budget(device) if gpu_memory_budget in (None, "auto")
                      else resolve_budget(gpu_memory_budget))
        plan = device_plan(self._units, self._order, gpu_budget, slots=cuda_streaming.RING_SLOTS)
        bindings = {i: [(self._unit_modules[i], attr, key, is_param) for attr, key, is_param in slot.bindings]
                    for i, slot in enumerate(self._binding.slots)}
        resident = [b for i in sorted(plan.resident) for b in bindings[i]]
        cuda_streaming.move_resident(resident, self.store, device)
        self.store.release([k for i in plan.resident for k in self._unit_keys[i]])  # host copy no longer needed
        for m in self.module.modules():  # computed buffers (not in the file) follow the model
            for name, b in list(m._buffers.items()):
                if b is not None and b.device.type != "cuda":
                    m._buffers[name] = b.to(device)
        streamed = {i: bindings[i] for i in set(plan.streamed_order)}
        # Host memory: streamed units that fit `memory_budget` are read once and stay in the
        # page cache; the rest are read from the file for every forward and dropped after.
        self._host_plan = host_plan(self._units, plan, self._budget)
        kept = sorted(i for i in self._host_plan.resident if i in streamed)
        self._warmer = self._warm(kept)
        host = None
        if self._host_plan.streams:
            host = self._make_prefetcher(self._host_plan.window_bytes, threads, read_mode)
        self._prefetcher = host
        self._cuda = cuda_streaming.CudaStreamer(device, self.store, streamed, plan.streamed_order, host_prefetcher=host,
                                                 host_streamed=set(self._host_plan.streamed_order))
        return plan

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def from_params(cls, path: PathLike, builder: Callable[[], nn.Module], device: str = "cpu", *,
                    memory_budget: Budget = "auto", gpu_memory_budget: Budget = "auto", strict: bool = True,
                    threads: int = 1, read_mode: str = "sendfile", verbose: bool = False) -> "LitModule":
        """Builds the model with `builder()` under empty_init(), binds it to the weights at
        `path` (a .lit file or a prepare_params directory) and returns it ready to run.

        `memory_budget` bounds host memory for weights; with `device="cuda"`,
        `gpu_memory_budget` ("auto": free device memory minus a margin) bounds what stays on
        the GPU, and the rest streams through pinned buffers on a copy stream.
        `read_mode` says how streamed weights are read: "sendfile" (default; the file's
        readahead with no copy), "pread" (the same with a copy) or "populate" (page faults)."""
        device = torch.device(device)
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"litcore: device {device} is not supported (use 'cpu' or 'cuda[:N]')")
        if device.type == "cuda":
            _require_cuda(device)  # before building and binding: fail fast
        store = Store(resolve_weights_path(path))
        with empty_init():
            module = builder()
        if not isinstance(module, nn.Module):
            raise TypeError(f"litcore: the builder returned {type(module).__name__}, not an nn.Module")
        module.eval()
        binding = bind(module, store, strict=strict)
        return cls(module, store, binding, memory_budget=memory_budget, device=str(device),
                   gpu_memory_budget=gpu_memory_budget, threads=threads, read_mode=read_mode, verbose=verbose)

    @staticmethod
    def _make_units(root: nn.Module, store: Store, binding: Binding, *, lookups_on_demand: bool):
        """One unit per weight-owning module. With `lookups_on_demand`, embeddings stream
        by fault (a lookup touches a few rows); on a GPU they must be copied whole."""
        users: Dict[str, int] = {}
        for slot in binding.slots:
            for k in slot.file_keys:
                users[k] = users.get(k, 0) + 1
        units, keys, modules = [], [], []
        for slot in binding.slots:
            shared = any(users[k] > 1 for k in slot.file_keys)  # tied: several modules bind one stored tensor
            leaf = next(iter(slot.module.children()), None) is None and slot.module is not root
            nbytes = sum(store.info(k).nbytes for k in slot.file_keys)
            lookup = lookups_on_demand and isinstance(slot.module, (nn.Embedding, nn.EmbeddingBag))
            units.append(Unit(slot.name or "<root>", nbytes, leaf and not slot.has_buffers and not shared, lookup))
            keys.append(slot.file_keys)
            modules.append(slot.module)
        return units, keys, modules

    # ---- running ------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode():
            return self.module(*args, **kwargs)

    forward = __call__

    def __getattr__(self, name: str) -> Any:
        # Only reached for names LitModule itself lacks: generate(), config, device...
        if name.startswith("_") or name in ("module", "store"):
            raise AttributeError(name)
        return getattr(self.module, name)

    def _on_start(self) -> None:
        # The warmer reads resident weights while the model waits for work. Once a forward
        # runs, a second reader beside the forward's own would halve both (this disk reads
        # one stream at ~1.7 GB/s, two interleaved at ~0.7): it stops after its current module.
        self._warmer = None

    def _on_pass(self, order: List[int], seconds: float) -> None:
        entry: Dict[str, Any] = {"forward_seconds": seconds}
        mispredicted = False
        if self._prefetcher is not None:
            s = self._prefetcher.stats()
            self._prefetcher.reset_stats()
            entry.update(bytes_read=s["bytes_read"], prefetch_hits=s["hits"], prefetch_misses=s["misses"],
                         mispredicts=s["mispredicts"], io_wait_seconds=s["wait_seconds"],
                         peak_in_flight_bytes=s["peak_in_flight_bytes"])
            mispredicted = s["mispredicts"] > 0
            if self._recorded and not mispredicted and self._cuda is None:
                self._relayout(order, seconds, s)
        else:
            entry.update(bytes_read=0, prefetch_hits=0, prefetch_misses=0, mispredicts=0, io_wait_seconds=0.0,
                         peak_in_flight_bytes=0)
        if self._cuda is not None:  # the host prefetcher follows the feeder: misses show here
            g = self._cuda.take_stats()
            entry.update(gpu_bytes_copied=g["bytes_copied"], gpu_prefetch_hits=g["hits"], gpu_prefetch_misses=g["misses"],
                         gpu_mispredicts=g["mispredicts"])
            mispredicted = mispredicted or g["misses"] + g["mispredicts"] > 0
        streaming = self._prefetcher is not None or self._cuda is not None
        if streaming and (not self._recorded or mispredicted):
            self._adopt_order(order)
        entry["resident_bytes"] = self._plan.resident_bytes
        entry["streamed_runs"] = self._plan.runs
        self._passes.append(entry)
        if self.verbose or log.isEnabledFor(logging.INFO):
            msg = (f"litcore: forward {len(self._passes)}: {seconds:.3f} s, read {entry['bytes_read'] / 2**20:.0f} MiB, "
                   f"waited {entry['io_wait_seconds']:.3f} s on IO, hits {entry['prefetch_hits']}/"
                   f"{entry['prefetch_hits'] + entry['prefetch_misses']}, resident {self._plan.resident_bytes / 2**20:.0f} MiB")
            if self.verbose:
                print(msg, flush=True)
            log.info(msg)

    def _adopt_order(self, order: List[int]) -> None:
        """Re-plans with the execution order just seen (first forward, or after the order
        changed), so prefetch follows what the model really does."""
        self._recorded = True
        if not order:
            return
        if self._cuda is not None:  # device residency stays; only the feed order follows
            if [i for i in order if i in self._cuda.units] != self._cuda.order:
                self._cuda.set_order(order)
            return
        old = self._plan
        self._ran.update(order)
        try:
            plan = make_plan(self._units, order, self._budget, ran=self._ran, rates=self._rates,
                             current_runs=self._plan.runs)
        except BudgetTooSmallError as exc:
            warnings.warn(f"{exc}; keeping the plan made before the first forward", stacklevel=2)
            return
        self._order = list(order)
        self._switch_plan(plan)

    def _relayout(self, order: List[int], seconds: float, prefetch_stats: Dict[str, Any]) -> None:
        """Measures this forward's compute and read rates and lets the planner choose how to
        lay out what streams: one run when reading is the bottleneck, several spread along
        the order when compute is and one run's read would not hide under it."""
        if self._settling:
            self._settling = False
            return
        self._rates = measure_rates(self._units, order, seconds, prefetch_stats, self._rates)
        if self._rates is None or order != self._order:
            return
        try:
            plan = make_plan(self._units, self._order, self._budget, ran=self._ran, rates=self._rates,
                             current_runs=self._plan.runs)
        except BudgetTooSmallError:
            return
        self._switch_plan(plan)

    def _switch_plan(self, plan: Plan) -> None:
        """Adopts `plan`: the prefetcher follows its order, newly streamed weights leave memory
        (newly resident ones come in as they are used); the next forward is not measured."""
        old = self._plan
        if plan.resident == old.resident and plan.streamed_order == old.streamed_order:
            self._plan = plan  # the same layout, newer figures
            return
        self._plan = plan
        self._settling = True
        self._prefetcher.set_order(plan.streamed_order)
        newly_streamed = set(plan.streamed_order) - set(old.streamed_order)
        if newly_streamed:
            self.store.release([k for i in newly_streamed for k in self._unit_keys[i]])
        log.info("litcore: plan: %d streamed run(s), %.0f MiB resident, %.0f MiB streamed per forward%s", plan.runs,
                 plan.resident_bytes / 2**20, plan.streamed_bytes / 2**20,
                 f", modeled {plan.modeled_seconds:.3f} s per forward" if plan.modeled_seconds else "")

    # ---- introspection and lifetime -----------------------------------------------------

    @property
    def plan(self) -> Plan:
        return self._plan

    def stats(self) -> Dict[str, Any]:
        """Per-forward IO figures: bytes read from storage, prefetch hits/misses, seconds
        the forward waited on IO, resident bytes; `last` is the latest forward. With
        device="cuda", resident and streamed bytes are the device's, `host_*` the host's, and
        each forward adds the bytes copied to the device and the copy stream's hits/misses."""
        keys = ["bytes_read", "prefetch_hits", "prefetch_misses", "mispredicts", "io_wait_seconds", "forward_seconds"]
        if self._cuda is not None:
            keys += ["gpu_bytes_copied", "gpu_prefetch_hits", "gpu_prefetch_misses", "gpu_mispredicts"]
        total = {k: sum(p[k] for p in self._passes) for k in keys}
        host = {}
        if self._host_plan is not None:
            host = {"host_resident_bytes": self._host_plan.resident_bytes,
                    "host_streamed_bytes_per_forward": self._host_plan.streamed_bytes}
        return {
            **host,
            "forwards": len(self._passes),
            "budget_bytes": self._budget,
            "weight_bytes": self._plan.total_bytes,
            "resident_bytes": self._plan.resident_bytes,
            "streamed_bytes_per_forward": self._plan.streamed_bytes,
            "window_bytes": self._plan.window_bytes,
            "streamed_runs": self._plan.runs,
            "last": dict(self._passes[-1]) if self._passes else None,
            "per_forward": [dict(p) for p in self._passes],
            "total": total,
        }

    def close(self) -> None:
        """Removes the hooks, stops the IO threads and unbinds the weights, so the file is
        unmapped even while someone still holds `.module` (which becomes unusable)."""
        hooks.remove(self._handles)
        self._handles = None
        if self._cuda is not None:
            self._cuda.close()
            self._cuda = None
        self._prefetcher = None
        self._warmer = None
        for mod in self.module.modules():
            for name, p in list(mod._parameters.items()):
                if p is not None and p.device.type != "meta":
                    mod._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)
            for name, b in list(mod._buffers.items()):
                if b is not None and b.device.type != "meta" and name not in mod._non_persistent_buffers_set:
                    mod._buffers[name] = b.to("meta")
        self.store.close()

    def __enter__(self) -> "LitModule":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "streaming" if self._plan.streams else "resident"
        return (f"LitModule({type(self.module).__name__}, '{self.store.path}', {mode}, "
                f"resident {self._plan.resident_bytes / 2**20:.0f} of {self._plan.total_bytes / 2**20:.0f} MiB)")
