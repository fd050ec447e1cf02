"""A model split across processes and machines: each process (a stage) builds the model empty,
binds only its slice of the .lit file, runs it under its own memory budget through the same
engine as a LitModule (resident where it fits, streamed where it does not), and passes the
hidden state to the next stage with torch.distributed (gloo on CPU, NCCL on GPU). The last
stage's output (the logits) is broadcast back, so every rank returns it and `generate` runs
in lockstep on every rank: each keeps its own layers' KV cache, only hidden states and
logits cross.

Launch one process per stage, e.g. `torchrun --nproc-per-node 2 script.py` on one machine or
`torchrun --nnodes 2 --node-rank R --master-addr HOST ...` on two; `from_params` reads
RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT as torchrun sets them. docs/distributed.md."""
from __future__ import annotations

import datetime
import os
import time
from typing import Any, Callable, Dict, Optional, Union

import torch
import torch.distributed as dist
from torch import nn

from litcore.binding import bind
from litcore.budget import Budget
from litcore.empty_init import empty_init
from litcore.engine import DEFAULT_VERIFY
from litcore.lit_module import LitModule, _default_dtype, _file_float_dtype, resolve_weights_path
from litcore.stages import Split, StageSplit, split_model
from litcore.store import PathLike, Store

__all__ = ["LitStage", "StageError", "from_params", "prune_to_stage", "DEFAULT_TIMEOUT"]

# Seconds a stage waits on another before the run fails (a stage that died or hangs).
DEFAULT_TIMEOUT = 300.0


class StageError(RuntimeError):
    """Another stage failed, died or did not answer within the timeout."""


class SkippedLayer(nn.Module):
    """Stands for a layer another stage runs: passes the hidden state through (the next owned
    layer replaces it with the one received) and keeps the KV cache's length right with a
    one-element entry per token, so that positions and masks agree with the whole model."""

    def __init__(self, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        cache = kwargs.get("cache", kwargs.get("past_key_values", kwargs.get("past_key_value")))
        if cache is not None and hasattr(cache, "update"):
            b, s = hidden_states.shape[:2]
            empty = hidden_states.new_zeros(b, 1, s, 1)
            cache.update(empty, empty, self.layer_index)
        return hidden_states


class _EmbeddingStub(nn.Module):
    """An embedding the first stage runs: an output of the right shape (replaced by the
    hidden state received before the first owned layer)."""

    def __init__(self, dim: int, dtype: Optional[torch.dtype]) -> None:
        super().__init__()
        self.dim, self.dtype = dim, dtype

    def forward(self, ids: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.zeros(*ids.shape, self.dim, dtype=self.dtype or torch.get_default_dtype(), device=ids.device)


class _OutputStub(nn.Module):
    """The model's last module on a stage other than the last: its output is the last stage's,
    received by broadcast."""

    def __init__(self, features: Optional[int], dtype: Optional[torch.dtype], link: "_Link") -> None:
        super().__init__()
        self.features, self.dtype, self.link = features, dtype, link

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        shape = (*x.shape[:-1], self.features) if self.features is not None else tuple(x.shape)
        out = torch.empty(shape, dtype=self.dtype or x.dtype, device=x.device)
        self.link.broadcast(out)
        return out


class _Link:
    """The stage's connections: receive from the previous stage, send to the next, the
    output broadcast from the last. Failures name the stage and the peer."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size
        self.bytes_sent = 0
        self.bytes_received = 0
        self.wait_seconds = 0.0  # blocked receiving from the previous stage or on the output

    def _fail(self, what: str, peer: int, error: Exception) -> StageError:
        return StageError(f"litcore: stage {self.rank} of {self.world_size}: {what} stage {peer} failed "
                          f"(did it exit, or take longer than the timeout?): {error}")

    def receive(self, like: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(like, memory_format=torch.contiguous_format)
        started = time.perf_counter()
        try:
            dist.recv(out.view(torch.uint8), src=self.rank - 1)
        except RuntimeError as e:
            raise self._fail("receiving the hidden state from", self.rank - 1, e) from e
        self.wait_seconds += time.perf_counter() - started
        self.bytes_received += out.numel() * out.element_size()
        return out

    def send(self, t: torch.Tensor) -> None:
        t = t.contiguous()
        try:
            dist.send(t.view(torch.uint8), dst=self.rank + 1)
        except RuntimeError as e:
            raise self._fail("sending the hidden state to", self.rank + 1, e) from e
        self.bytes_sent += t.numel() * t.element_size()

    def broadcast(self, t: torch.Tensor) -> None:
        last = self.world_size - 1
        started = time.perf_counter()
        try:
            dist.broadcast(t.view(torch.uint8), src=last)
        except RuntimeError as e:
            raise self._fail("the output broadcast with", last, e) from e
        if self.rank != last:
            self.wait_seconds += time.perf_counter() - started


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _layer_index(layer: nn.Module, position: int) -> int:
    for module in layer.modules():
        index = getattr(module, "layer_idx", None)
        if isinstance(index, int):
            return index
    return position


def prune_to_stage(model: nn.Module, split: StageSplit, rank: int, dtype: Optional[torch.dtype],
                   link: Optional[_Link] = None) -> nn.Module:
    """Replaces in `model` (built empty) what stage `rank` does not run: other stages' layers
    by SkippedLayer, the first stage's embedding by a stand-in of its shape, the last
    stage's modules by pass-throughs (its last one by the output broadcast)."""
    stage = split.stages[rank]
    layers = model.get_submodule(split.layers_name)
    for i in range(len(layers)):
        if not stage.first_layer <= i < stage.end_layer:
            layers[i] = SkippedLayer(_layer_index(layers[i], i))
    # A weight shared with what this stage runs (an LM head tied to the embedding) keeps its
    # module: the stage binds it anyway, and the module stays with its weight.
    shared = {id(p) for name in stage.modules for p in model.get_submodule(name).parameters()}
    if rank != 0:
        for name in split.before:
            module = model.get_submodule(name)
            if any(id(p) in shared for p in module.parameters()):
                continue
            if not isinstance(module, nn.Embedding):
                raise ValueError(f"litcore: stage {rank} cannot stand in for '{name}' ({type(module).__name__}), "
                                 "which runs before the layers; only embeddings are supported there")
            _replace(model, name, _EmbeddingStub(module.embedding_dim, dtype))
    if rank != len(split.stages) - 1:
        for name in split.after[:-1]:
            _replace(model, name, nn.Identity())
        if split.after:
            last = model.get_submodule(split.after[-1])
            features = last.out_features if isinstance(last, nn.Linear) else None
            _replace(model, split.after[-1], _OutputStub(features, dtype, link or _Link(rank, len(split.stages))))
    return model


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


class LitStage:
    """One stage of a distributed model: call it (or `generate`) on every rank with the same
    inputs; every rank returns the whole model's output."""

    def __init__(self, lit: LitModule, split: StageSplit, link: _Link, owns_group: bool) -> None:
        self.lit = lit
        self.split = split
        self.rank = link.rank
        self.world_size = link.world_size
        self._link = link
        self._owns_group = owns_group
        stage = split.stages[self.rank]
        layers = lit.module.get_submodule(split.layers_name)
        self._handles = []
        if self.rank > 0:
            self._handles.append(layers[stage.first_layer].register_forward_pre_hook(self._receive, with_kwargs=True))
        if self.rank < self.world_size - 1:
            self._handles.append(layers[stage.end_layer - 1].register_forward_hook(self._send))
        elif split.after and self.world_size > 1:
            self._handles.append(lit.module.get_submodule(split.after[-1]).register_forward_hook(self._broadcast))

    @property
    def stage(self):
        """This rank's Stage: its layers, modules and bytes."""
        return self.split.stages[self.rank]

    def _receive(self, module: nn.Module, args: tuple, kwargs: dict):
        if args:
            return (self._link.receive(args[0]), *args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = self._link.receive(kwargs["hidden_states"])
        return args, kwargs

    def _send(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._link.send(_first(output))

    def _broadcast(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._link.broadcast(_first(output))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.lit(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """transformers' generate, in lockstep on every rank (give each the same inputs and
        options; sampling needs the same seed on each)."""
        return self.lit.generate(*args, **kwargs)

    def stats(self) -> Dict[str, Any]:
        """The engine's statistics for this stage, with the bytes it sent and received and the
        seconds it waited on other stages (a forward's time minus these is the stage's own)."""
        out = dict(self.lit.stats())
        out["bytes_sent"] = self._link.bytes_sent
        out["bytes_received"] = self._link.bytes_received
        out["stage_wait_seconds"] = self._link.wait_seconds
        return out

    @property
    def plan(self):
        return self.lit.plan

    def close(self) -> None:
        """Removes the hooks, closes the model and, if this stage started the process group,
        ends it."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.lit.close()
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_group = False

    def __enter__(self) -> "LitStage":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _env_int(name: str, given: Optional[int]) -> int:
    if given is not None:
        return int(given)
    if dist.is_initialized():
        return dist.get_rank() if name == "RANK" else dist.get_world_size()
    value = os.environ.get(name)
    if value is None:
        raise ValueError(f"litcore: no {name.lower()} given and ${name} is not set (launch with torchrun, "
                         f"or pass rank= and world_size=)")
    return int(value)


def from_params(path: PathLike, builder: Callable[[], nn.Module], *, rank: Optional[int] = None,
                world_size: Optional[int] = None, split: Split = None,
                memory_budget: Budget = "auto", device: str = "cpu", backend: Optional[str] = None,
                timeout: float = DEFAULT_TIMEOUT, init_method: Optional[str] = None, threads: int = 1,
                read_mode: str = "buffer", verify: Union[str, bool] = DEFAULT_VERIFY,
                verbose: bool = False) -> LitStage:
    """Builds this rank's stage of the model at `path` (a .lit file): the model is built empty
    with `builder()`, cut into `world_size` stages (`split`: the first layer of each, by index
    or name; default balanced by bytes, see litcore.stages), and only this stage's weights
    are bound and run, under `memory_budget`. `rank`/`world_size` default to $RANK and
    $WORLD_SIZE; the process group is started here unless one is (`backend`: "gloo" on CPU,
    "nccl" on CUDA; `timeout` seconds bounds every wait on another stage)."""
    rank, world_size = _env_int("RANK", rank), _env_int("WORLD_SIZE", world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"litcore: rank {rank} is outside world size {world_size}")
    if timeout <= 0:
        raise ValueError(f"litcore: timeout must be positive, got {timeout}")
    owns_group = not dist.is_initialized()
    if owns_group:
        backend = backend or ("nccl" if torch.device(device).type == "cuda" else "gloo")
        dist.init_process_group(backend, init_method=init_method or "env://", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout))
    elif dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise ValueError(f"litcore: the process group is rank {dist.get_rank()} of {dist.get_world_size()}, "
                         f"not {rank} of {world_size}")
    try:
        from litcore.convert import source_sizes

        weights = resolve_weights_path(path)
        store = Store(weights, verify="full" if verify == "full" else "none")
        dtype = _file_float_dtype(store)
        with empty_init(), _default_dtype(dtype):
            model = builder()
        if not isinstance(model, nn.Module):
            raise TypeError(f"litcore: the builder returned {type(model).__name__}, not an nn.Module")
        stage_split = split_model(model, source_sizes(weights), world_size, split)
        link = _Link(rank, world_size)
        prune_to_stage(model, stage_split, rank, dtype, link)
        model.eval()
        others = [m for s in stage_split.stages if s.rank != rank for m in s.modules]
        outside = {k for k in store.keys() if any(k.startswith(m + ".") for m in others)}
        binding = bind(model, store, outside=outside)
        lit = LitModule(model, store, binding, memory_budget=memory_budget, device=device, threads=threads,
                        read_mode=read_mode, verbose=verbose, verify=verify)
        return LitStage(lit, stage_split, link, owns_group)
    except BaseException:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()
        raise
