"""`LitModule`: a model whose weights live in a litcore file, brought in as it runs.

LitModule builds, binds, chooses the device, installs the hooks, reports and closes; the
engine (litcore.engine, native) decides everything else."""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Any, Callable, Dict, Iterator, Optional, Union

import torch
from torch import nn

from litcore import dtypes, hooks
from litcore.binding import Binding, bind
from litcore.budget import Budget, resolve_budget
from litcore.empty_init import empty_init
from litcore.engine import DEFAULT_VERIFY, Engine, check_threads, check_verify, parse_device
from litcore.residency import Plan
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


def _file_float_dtype(store: Store) -> Optional[torch.dtype]:
    """The one floating-point dtype of the file's weights, or None (none, or several)."""
    found = {i.dtype for i in store.infos().values() if i.dtype in dtypes.CONVERTIBLE}
    return found.pop() if len(found) == 1 else None


@contextlib.contextmanager
def _default_dtype(dtype: Optional[torch.dtype]) -> Iterator[None]:
    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class LitModule:
    """Runs `module` with its weights in a memory-mapped litcore file.

    Within the memory budget every weight is a zero-copy view of the file and calls cost
    nothing extra. Beyond it, the engine keeps some modules resident and streams the rest:
    native threads read the next modules (in the execution order recorded on the first
    forward) while the current one computes, and drop them right after use.

    Call it as the model (under inference mode); other attributes are the model's
    (`lit.generate(...)`, `lit.config`). `lit.module` is the model, `lit.store` the file,
    `lit.engine` the engine (`replan(rates)`, `passes()`, `summary()`). Made by
    `from_params` or `litcore.from_pretrained`.
    """

    def __init__(self, module: nn.Module, store: Store, binding: Binding, *, memory_budget: Budget = "auto",
                 device: str = "cpu", gpu_memory_budget: Budget = "auto", threads: int = 1,
                 read_mode: str = "buffer", verbose: bool = False, verify: Union[str, bool] = DEFAULT_VERIFY,
                 narrow_compute: bool = False) -> None:
        self.module = module
        self.store = store
        self.verbose = verbose
        self.device = torch.device(device)
        self._handles: Optional[list] = None
        self._unit_handles: list = []
        budget = resolve_budget(memory_budget)
        if self.device.type == "cuda":
            _require_cuda(self.device)
            from litcore.cuda_streaming import CudaRuntime

            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            self.engine = CudaRuntime(module, store, binding, self.device, memory_budget=budget,
                                      gpu_memory_budget=gpu_memory_budget, threads=threads, read_mode=read_mode)
        else:
            # 0 is "auto" to the engine, which then moves the budget to what memory is left.
            auto = memory_budget is None or (isinstance(memory_budget, str) and memory_budget.strip().lower() == "auto")
            self.engine = Engine(store, binding.specs(module), memory_budget=0 if auto else budget, threads=threads,
                                 read_mode=read_mode, verify=verify, narrow_compute=narrow_compute)
        hooked = {i: binding.units[i].module for i in self.engine.hooked_units()}
        # Apart from the pass bounds: removed once nothing needs them (a warm-up that ended).
        # First, so that a root module that is a unit exits before the pass ends.
        routed = self.engine.routed_units() if isinstance(self.engine, Engine) else ()
        self._unit_handles = hooks.install_units(hooked, self.engine, routed)
        self._handles = hooks.install(module, self.engine, self._report)

    @classmethod
    def from_params(cls, path: PathLike, builder: Callable[[], nn.Module], device: str = "cpu", *,
                    memory_budget: Budget = "auto", gpu_memory_budget: Budget = "auto", strict: bool = True,
                    threads: int = 1, read_mode: str = "buffer", verbose: bool = False,
                    verify: Union[str, bool] = DEFAULT_VERIFY, narrow_compute: bool = False) -> "LitModule":
        """Builds the model with `builder()` under empty_init(), binds it to the weights at
        `path` (a .lit file or a prepare_params directory) and returns it ready to run.

        `memory_budget` bounds host memory for weights (bytes, "1.5GiB", or "auto": what
        memory is left, less a margin; under a cgroup limit an "auto" budget then follows
        what the cgroup has left after each forward); with `device="cuda"`,
        `gpu_memory_budget` ("auto": free device memory minus a margin) bounds what stays on
        the GPU, and the rest streams through pinned buffers on a copy stream.
        `read_mode` says how streamed weights are read: "buffer" (default: direct reads past
        the page cache into the prefetch window's own memory, kept for the whole run; a
        module's tensors point there while it runs; the budget is the footprint in any file
        order; on a GPU, with verify="lazy", or where the file system takes no direct reads,
        "sendfile"), "sendfile" (the page cache through the file's readahead, no copy),
        "direct" (past the page cache into new memory moved into place in the mapping),
        "auto" ("direct" where it works, else "sendfile"), "pread" (the page cache with a
        copy), "populate" (page faults) or "exact" (readahead off).
        `threads`: prefetch reader threads (1-64). `verify`: checksums, "none" (default),
        "lazy" (each tensor the first time it is read; the rest after the first forward,
        before its result is returned) or "full" (all, before returning); a mismatch raises
        FormatError naming the tensor. `strict=False` accepts missing (zero-
        filled) and unexpected tensors with a warning. `verbose` prints a line per forward.
        `narrow_compute=True` computes the streamed modules of a forward the reads bound with
        one intra-op thread fewer (on a 2-core virtual machine generation ran 22-27% faster:
        spinning OpenMP workers slowed the reader); off by default because a kernel may then
        sum in another order, so outputs are no longer bit-exact to the in-memory model on
        every CPU."""
        verify = check_verify(verify)
        check_threads(threads)
        device = torch.device(parse_device(str(device)))
        if device.type == "cuda":
            _require_cuda(device)  # before building and binding: fail fast
        store = Store(resolve_weights_path(path), verify="full" if verify == "full" else "none")
        # Built with torch's default dtype set to the file's, as transformers does for
        # torch_dtype: buffers the model computes at construction (a positional table)
        # come out in the weights' dtype, as model.to(dtype) would make them.
        with empty_init(), _default_dtype(_file_float_dtype(store)):
            module = builder()
        if not isinstance(module, nn.Module):
            raise TypeError(f"litcore: the builder returned {type(module).__name__}, not an nn.Module")
        module.eval()
        binding = bind(module, store, strict=strict)
        return cls(module, store, binding, memory_budget=memory_budget, device=str(device),
                   gpu_memory_budget=gpu_memory_budget, threads=threads, read_mode=read_mode, verbose=verbose,
                   verify=verify, narrow_compute=narrow_compute)

    # ---- running ------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode():
            return self.module(*args, **kwargs)

    forward = __call__

    def __getattr__(self, name: str) -> Any:
        # Only reached for names LitModule itself lacks: generate(), config, device...
        if name.startswith("_") or name in ("module", "store", "engine"):
            raise AttributeError(name)
        return getattr(self.module, name)

    def _report(self) -> None:
        """After each forward: the engine's warnings, and a line of figures when verbose."""
        if self._unit_handles and not self.engine.hooked_units():
            # Every weight resident and read in: calls cost nothing extra from now on.
            hooks.remove(self._unit_handles)
            self._unit_handles = []
        for message in self.engine.take_warnings():
            warnings.warn(message, stacklevel=3)
        if not (self.verbose or log.isEnabledFor(logging.INFO)):
            return
        passes = self.engine.passes()
        last = passes[-1]
        msg = (f"litcore: forward {len(passes)}: {last['forward_seconds']:.3f} s, read {last['bytes_read'] / 2**20:.0f} "
               f"MiB in {last['read_seconds']:.3f} s, waited {last['io_wait_seconds']:.3f} s on IO, "
               f"hits {last['prefetch_hits']}/"
               f"{last['prefetch_hits'] + last['prefetch_misses']}, resident {last['resident_bytes'] / 2**20:.0f} MiB, "
               f"{last['compute_threads']} compute threads")
        if self.verbose:
            print(msg, flush=True)
        log.info(msg)

    # ---- introspection and lifetime -----------------------------------------------------

    @property
    def plan(self) -> Plan:
        """Where each module's weights live now (`print(lit.plan)` lists them by name)."""
        return self.engine.plan()

    def stats(self) -> Dict[str, Any]:
        """The engine's figures: the plan's (budget, resident and streamed bytes, window,
        runs), the warm-up's, and per forward the bytes read from storage, prefetch
        hits/misses/mispredicts, the seconds the forward waited on IO, the seconds the reader
        spent reading its weights (`read_seconds`, since the forward before ended) and the
        wall time it ran with a read in flight (`forward_read_seconds`: near
        `forward_seconds`, the disk bounds the forward). For
        mixture-of-experts layers, `routed_bytes` streams by routing, `expert_cache_bytes` of
        their experts stay cached, and each forward counts the chosen experts it found cached
        (`expert_cache_hits`). `last` is the latest forward, `total` the sums. With
        device="cuda", resident and streamed bytes are the device's, `host_*` the host's, and
        each forward adds the bytes copied to the device and the copy stream's hits/misses."""
        passes = self.engine.passes()
        return {
            **self.engine.summary(),
            "last": dict(passes[-1]) if passes else None,
            "per_forward": passes,
            "total": self.engine.totals(),
        }

    def close(self) -> None:
        """Removes the hooks, stops the IO threads and unbinds the weights, so the file is
        unmapped even while someone still holds `.module` (which becomes unusable)."""
        hooks.remove(self._handles)
        hooks.remove(self._unit_handles)
        self._handles = None
        self._unit_handles = []
        self.engine.close()
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
        plan = self.engine.plan()
        mode = "streaming" if plan.streams else "resident"
        return (f"LitModule({type(self.module).__name__}, '{self.store.path}', {mode}, "
                f"resident {plan.resident_bytes / 2**20:.0f} of {plan.total_bytes / 2**20:.0f} MiB)")
