"""Streaming weights from the file to a CUDA device (device="cuda").

Until the native engine has its CUDA backend (csrc/include/litcore/device_backend.h), this
module is the GPU runtime, in Python: `CudaRuntime` offers the engine's interface (begin,
enter, exit, end, plan, statistics) to the hooks and plans with the same native planner.

Weights that fit the GPU budget are copied to the device once. The others stream through a
small ring of pinned host buffers: the native prefetcher brings a module's pages in from the
file, a feeder thread copies them into a free pinned slot and issues the host-to-device copy
on a dedicated copy stream, recording an event. The module's forward pre-hook only makes the
compute stream wait on that event (no host synchronisation); its forward hook records a
"done" event so the slot is reused only after the kernels that read it have run.

Needs a CUDA build of torch; nothing here runs (or is imported) on CPU-only installs.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, Deque, Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from litcore._native import _C
from litcore.binding import Binding
from litcore.budget import Budget, parse_size
from litcore.residency import Plan, Unit, device_plan, host_plan
from litcore.store import Store

_ALIGN = 256  # device pointers aligned for every dtype and vectorised kernels
RING_SLOTS = 3  # one being read by kernels, one being copied, one being filled on the host

TensorBinding = Tuple[nn.Module, str, str, bool]  # module, attribute, file key, is_parameter


def gpu_auto_budget(device: torch.device) -> int:
    """Free device memory minus max(512 MiB, 10%) for activations and the allocator."""
    free, _ = torch.cuda.mem_get_info(device)
    return max(free - max(512 << 20, free // 10), 0)


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _bind(bindings: Sequence[TensorBinding], tensors: Sequence[torch.Tensor]) -> None:
    for (module, attr, _, is_param), t in zip(bindings, tensors):
        if is_param:
            module._parameters[attr] = nn.Parameter(t, requires_grad=module._parameters[attr].requires_grad)
        else:
            module._buffers[attr] = t


def move_resident(bindings: Sequence[TensorBinding], store: Store, device: torch.device) -> int:
    """Copies weights to the device for good; returns the bytes copied."""
    copied: Dict[str, torch.Tensor] = {}
    total = 0
    for module, attr, key, is_param in bindings:
        if key not in copied:
            copied[key] = store[key].to(device)
            total += copied[key].nbytes
        _bind([(module, attr, key, is_param)], [copied[key]])
    return total


class CudaStreamer:
    """The pinned ring, copy stream and events for streamed units (see the module doc)."""

    def __init__(self, device: torch.device, store: Store, units: Dict[int, List[TensorBinding]], order: Sequence[int],
                 host_prefetcher=None, host_streamed: Set[int] = frozenset(), slots: int = RING_SLOTS) -> None:
        self.device = device
        self.store = store
        self.units = units
        self.host = host_prefetcher  # reads `host_streamed` units from the file; the others stay in host memory
        self.host_streamed = set(host_streamed) if host_prefetcher is not None else set()
        self.layout: Dict[int, List[Tuple[int, int]]] = {}
        slot_bytes = 0
        for uid, bindings in units.items():
            offset, layout = 0, []
            for _, _, key, _ in bindings:
                nbytes = store.info(key).nbytes
                layout.append((offset, nbytes))
                offset = _align(offset + nbytes)
            self.layout[uid] = layout
            slot_bytes = max(slot_bytes, offset)
        self.pinned = [torch.empty(slot_bytes, dtype=torch.uint8, pin_memory=True) for _ in range(slots)]
        self.device_buffers = [torch.empty(slot_bytes, dtype=torch.uint8, device=device) for _ in range(slots)]
        self.copied = [torch.cuda.Event() for _ in range(slots)]
        self.released = [torch.cuda.Event() for _ in range(slots)]
        self.copy_stream = torch.cuda.Stream(device)
        self.cond = threading.Condition()
        self.free: Deque[int] = collections.deque(range(slots))
        self.ready: Deque[Tuple[int, int]] = collections.deque()  # (unit, slot) in feed order
        self.in_use: Dict[int, int] = {}
        self.filling: Optional[int] = None  # the unit the feeder is copying now
        self.order: List[int] = []
        self.stop = False
        self.thread: Optional[threading.Thread] = None
        self.stats = self._no_stats()
        for uid in units:  # until its first forward a streamed module holds no weights (and no host view)
            self._park(uid)
        self.set_order(order)

    # ---- the feeder thread ----------------------------------------------------------

    def set_order(self, order: Sequence[int]) -> None:
        """Feeds units in `order` (cyclic) from now on; the host prefetcher follows the same
        order, changed while the feeder is stopped so that its waits match."""
        self._stop_thread()
        with self.cond:
            for _, slot in self.ready:
                self.free.append(slot)
            self.ready.clear()
            self.order = [u for u in order if u in self.units]
            self.stop = False
        host_order = [u for u in self.order if u in self.host_streamed]
        if host_order:
            self.host.set_order(host_order)
        if self.order:
            self.thread = threading.Thread(target=self._feed, name="litcore-cuda-feeder", daemon=True)
            self.thread.start()

    def _stop_thread(self) -> None:
        if self.thread is not None:
            with self.cond:
                self.stop = True
                self.cond.notify_all()
            self.thread.join()
            self.thread = None

    def _fill(self, uid: int, slot: int) -> None:
        from_file = uid in self.host_streamed
        if from_file:
            self.host.wait(uid)
        self.copied[slot].synchronize()  # the previous copy out of this pinned buffer is done
        pinned = self.pinned[slot]
        end = 0
        for (_, _, key, _), (offset, nbytes) in zip(self.units[uid], self.layout[uid]):
            if nbytes:
                pinned[offset:offset + nbytes].copy_(self.store[key].reshape(-1).view(torch.uint8))
            end = offset + nbytes
        if from_file:
            self.host.done(uid)
        with torch.cuda.stream(self.copy_stream):
            self.copy_stream.wait_event(self.released[slot])  # kernels reading this slot have run
            self.device_buffers[slot][:end].copy_(pinned[:end], non_blocking=True)
            self.copied[slot].record(self.copy_stream)
        self.stats["bytes_copied"] += end

    def _feed(self) -> None:
        torch.cuda.set_device(self.device)
        position = 0
        while True:
            with self.cond:
                while not self.stop and not self.free:
                    self.cond.wait()
                if self.stop:
                    return
                slot = self.free.popleft()
                uid = self.order[position % len(self.order)]
                self.filling = uid
            position += 1
            self._fill(uid, slot)
            with self.cond:
                self.filling = None
                self.ready.append((uid, slot))
                self.cond.notify_all()

    # ---- the hooks ----------------------------------------------------------------------

    def wait(self, uid: int) -> None:
        """Pre-hook: bind `uid`'s weights to its device slot once its copy is queued."""
        if uid not in self.units:
            return
        slot = None
        with self.cond:
            while uid in self.order and not self.stop:
                position = next((i for i, (u, _) in enumerate(self.ready) if u == uid), None)
                if position is not None:
                    # Entries fed for units that did not run (a wrong guess) give their slot back.
                    for _ in range(position):
                        self.free.append(self.ready.popleft()[1])
                    self.stats["mispredicts"] += position
                    slot = self.ready.popleft()[1]
                    self.cond.notify_all()
                    break
                if not self.free and self.filling is None:
                    break  # the feeder is blocked on slots holding other units: not coming soon
                self.cond.wait(timeout=0.5)
        if slot is None:  # not predicted: copy synchronously on the compute stream
            self.stats["misses"] += 1
            keys = [k for _, _, k, _ in self.units[uid]]
            _bind(self.units[uid], [self.store[k].to(self.device) for k in keys])
            if uid in self.host_streamed:
                self.store.release(keys)  # read outside the host prefetcher's window: drop it here
            return
        self.stats["hits"] += 1
        torch.cuda.current_stream(self.device).wait_event(self.copied[slot])
        buffer = self.device_buffers[slot]
        tensors = []
        for (_, _, key, _), (offset, nbytes) in zip(self.units[uid], self.layout[uid]):
            info = self.store.info(key)
            tensors.append(buffer[offset:offset + nbytes].view(info.dtype).view(info.shape))
        _bind(self.units[uid], tensors)
        self.in_use[uid] = slot

    def done(self, uid: int) -> None:
        """Forward hook: the slot is free once the kernels queued so far have run."""
        if uid not in self.units:
            return
        slot = self.in_use.pop(uid, None)
        self._park(uid)
        if slot is not None:
            self.released[slot].record(torch.cuda.current_stream(self.device))
            with self.cond:
                self.free.append(slot)
                self.cond.notify_all()

    def _park(self, uid: int) -> None:
        """Binds empty device tensors: the module's weights exist only during its forward."""
        _bind(self.units[uid], [torch.empty(0, dtype=self.store.info(k).dtype, device=self.device)
                                for _, _, k, _ in self.units[uid]])

    def take_stats(self) -> Dict[str, int]:
        """The figures since the last call (one forward's, when called per forward)."""
        stats, self.stats = self.stats, self._no_stats()
        return stats

    @staticmethod
    def _no_stats() -> Dict[str, int]:
        return {"bytes_copied": 0, "hits": 0, "misses": 0, "mispredicts": 0}

    def close(self) -> None:
        self._stop_thread()
        self.copy_stream.synchronize()  # no copy may still write a buffer about to be freed


class CudaRuntime:
    """device="cuda": weights that fit `gpu_memory_budget` go to the device once; the rest
    stream through the CudaStreamer's ring. Of those, the ones that fit the host
    `memory_budget` stay in host memory (read once); the others are read from the file on
    every forward by a native prefetch reader. The feed order follows the order recorded on
    the first forward and after a miss or mispredict."""

    def __init__(self, module: nn.Module, store: Store, binding: Binding, device: torch.device, *,
                 memory_budget: int, gpu_memory_budget: Budget, threads: int, read_mode: str) -> None:
        self.store = store
        self.device = device
        self.units: List[Unit] = [Unit(*u) for u in _C.units_of(store.native, binding.specs(module, lookups=False))]
        self.budget = memory_budget
        gpu_budget = (gpu_auto_budget(device) if gpu_memory_budget in (None, "auto")
                      else parse_size(gpu_memory_budget, "gpu_memory_budget"))
        self.device_plan = device_plan(self.units, list(range(len(self.units))), gpu_budget, slots=RING_SLOTS)
        keys = [list(u.file_keys) for u in binding.units]
        bindings = {i: [(u.module, attr, key, is_param) for attr, key, is_param in u.bindings]
                    for i, u in enumerate(binding.units)}
        move_resident([b for i in sorted(self.device_plan.resident) for b in bindings[i]], store, device)
        store.release([k for i in self.device_plan.resident for k in keys[i]])  # host copy no longer needed
        for m in module.modules():  # computed buffers (not in the file) follow the model
            for name, b in list(m._buffers.items()):
                if b is not None and b.device.type != "cuda":
                    m._buffers[name] = b.to(device)
        streamed = {i: bindings[i] for i in set(self.device_plan.streamed_order)}
        self.host_plan = host_plan(self.units, self.device_plan, memory_budget)
        kept = sorted(i for i in self.host_plan.resident if i in streamed)
        self.warmup = _C.WarmupReader(store.native, [store.native.byte_ranges(keys[i]) for i in kept]) if kept else None
        self.host = None
        if self.host_plan.streams:
            self.host = _C.Prefetcher(store.native, [store.native.byte_ranges(k) for k in keys],
                                      self.host_plan.window_bytes, threads, read_mode)
        self.streamer = CudaStreamer(device, store, streamed, self.device_plan.streamed_order, host_prefetcher=self.host,
                                     host_streamed=set(self.host_plan.streamed_order))
        self._passes: List[Dict[str, Any]] = []
        self._order: List[int] = []
        self._recorded = False
        self._depth = 0
        self._started = 0.0
        self._reading_seconds_at_start = 0.0

    # ---- the pass interface -------------------------------------------------------------

    def hooked_units(self) -> List[int]:
        return sorted(set(self.device_plan.streamed_order))

    def begin(self, restart: bool = False) -> None:
        if self._depth == 0:
            if self.warmup is not None:
                self.warmup.stop()
            self._order = []
            self._reading_seconds_at_start = self.host.stats()["reading_seconds"] if self.host is not None else 0.0
            self._started = time.perf_counter()
        self._depth += 1

    def enter(self, unit: int) -> None:
        self._order.append(unit)
        self.streamer.wait(unit)

    def exit(self, unit: int) -> None:
        self.streamer.done(unit)

    def end(self, failed: bool = False) -> None:
        self._depth = 0 if failed else self._depth - 1
        if self._depth > 0 or failed:
            return
        entry: Dict[str, Any] = {"forward_seconds": time.perf_counter() - self._started, "bytes_read": 0,
                                 "prefetch_hits": 0, "prefetch_misses": 0, "mispredicts": 0, "io_wait_seconds": 0.0,
                                 "read_seconds": 0.0, "forward_read_seconds": 0.0, "peak_in_flight_bytes": 0,
                                 "expert_cache_hits": 0}
        if self.host is not None:
            s = self.host.stats()
            self.host.reset_stats()
            entry.update(bytes_read=s["bytes_read"], prefetch_hits=s["hits"], prefetch_misses=s["misses"],
                         mispredicts=s["mispredicts"], io_wait_seconds=s["wait_seconds"],
                         read_seconds=s["read_seconds"],
                         forward_read_seconds=max(s["reading_seconds"] - self._reading_seconds_at_start, 0.0),
                         peak_in_flight_bytes=s["peak_in_flight_bytes"])
        g = self.streamer.take_stats()  # the host prefetcher follows the feeder: misses show here
        entry.update(gpu_bytes_copied=g["bytes_copied"], gpu_prefetch_hits=g["hits"], gpu_prefetch_misses=g["misses"],
                     gpu_mispredicts=g["mispredicts"])
        mispredicted = entry["mispredicts"] + g["misses"] + g["mispredicts"] > 0
        if (not self._recorded or mispredicted) and self._order:
            self._recorded = True  # device residency stays; only the feed order follows
            if [i for i in self._order if i in self.streamer.units] != self.streamer.order:
                self.streamer.set_order(self._order)
        entry["resident_bytes"] = self.device_plan.resident_bytes
        entry["streamed_runs"] = self.device_plan.runs
        entry["budget_bytes"] = self.budget  # the host budget: it does not adapt on this path
        entry["compute_threads"] = torch.get_num_threads()  # the GPU computes: the CPU's threads are left as they are
        self._passes.append(entry)

    # ---- plan and statistics ------------------------------------------------------------

    def plan(self) -> Plan:
        return self.device_plan

    def passes(self) -> List[Dict[str, Any]]:
        return [dict(p) for p in self._passes]

    def summary(self) -> Dict[str, Any]:
        p = self.device_plan
        return {"host_resident_bytes": self.host_plan.resident_bytes,
                "host_streamed_bytes_per_forward": self.host_plan.streamed_bytes,
                "forwards": len(self._passes), "budget_bytes": self.budget, "weight_bytes": p.total_bytes,
                "resident_bytes": p.resident_bytes, "streamed_bytes_per_forward": p.streamed_bytes,
                "routed_bytes": p.routed_bytes, "lookup_bytes": p.lookup_bytes, "window_bytes": p.window_bytes,
                "expert_cache_bytes": 0,  # experts are read whole on this path
                "streamed_runs": p.runs,
                "warmup_bytes_read": self.warmup.bytes_read if self.warmup is not None else 0,
                "warmup_running": int(self.warmup is not None and self.warmup.running)}

    def totals(self) -> Dict[str, Any]:
        keys = ["forward_seconds", "bytes_read", "prefetch_hits", "prefetch_misses", "mispredicts", "io_wait_seconds",
                "read_seconds", "forward_read_seconds", "gpu_bytes_copied", "gpu_prefetch_hits", "gpu_prefetch_misses",
                "gpu_mispredicts"]
        return {k: sum(p[k] for p in self._passes) for k in keys}

    def take_warnings(self) -> List[str]:
        return []

    def close(self) -> None:
        self.streamer.close()
        self.host = None
        self.warmup = None
