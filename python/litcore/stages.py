"""Splitting a model into pipeline stages: which layers, and which weights, each process of
a distributed run owns (litcore.distributed runs them).

A model is cut along its list of blocks (a transformers causal LM's decoder layers: the
largest `nn.ModuleList`). Modules with weights registered before the list (the token
embedding) go to the first stage, those registered after it (the final norm, the LM head)
to the last. The default split balances the bytes each stage owns; an explicit split names
the first layer of every stage."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from torch import nn

from litcore.budget import Budget, resolve_budget
from litcore.residency import Plan

__all__ = ["Stage", "StageSplit", "split_model", "plan_stages"]

Split = Optional[Sequence[Union[int, str]]]


@dataclass
class Stage:
    """One stage: its rank, its layers [first_layer, end_layer), the other modules it owns and
    the bytes of every weight it binds."""
    rank: int
    layers_name: str
    first_layer: int
    end_layer: int
    modules: List[str]
    nbytes: int
    plan: Optional[Plan] = None  # filled by plan_stages()

    def __str__(self) -> str:
        mib = 2**20
        layers = f"{self.layers_name}.{self.first_layer}-{self.end_layer - 1}"
        inside = [m.startswith(self.layers_name + ".") for m in self.modules]
        first = inside.index(True)
        last = len(inside) - 1 - inside[::-1].index(True)
        shown = self.modules[:first] + [layers] + self.modules[last + 1:]
        text = (f"stage {self.rank}: layers {self.first_layer}-{self.end_layer - 1}, {self.nbytes / mib:.1f} MiB "
                f"({', '.join(shown)})")
        if self.plan is not None:
            text += (f"\n  under a {self.plan.budget / mib:.1f} MiB budget: {self.plan.resident_bytes / mib:.1f} MiB "
                     f"resident, {self.plan.streamed_bytes / mib:.1f} MiB streamed per forward, "
                     + (f"{self.plan.routed_bytes / mib:.1f} MiB of experts streamed by routing, "
                        if self.plan.routed_bytes else "")
                     + f"{self.plan.lookup_bytes / mib:.1f} MiB read by lookup")
        return text


@dataclass
class StageSplit:
    """How a model is cut: the block list's name and every stage."""
    layers_name: str
    num_layers: int
    before: List[str]  # modules with weights that run before the layers (first stage)
    after: List[str]   # and after them (last stage)
    stages: List[Stage] = field(default_factory=list)

    def owned(self, rank: int) -> List[str]:
        """Names of the modules stage `rank` owns (its layers and its end modules)."""
        return self.stages[rank].modules

    def __str__(self) -> str:
        return "\n".join(str(s) for s in self.stages)


def find_layers(model: nn.Module) -> Tuple[str, nn.ModuleList]:
    """The model's block list: the `nn.ModuleList` holding the most parameters."""
    best: Optional[Tuple[int, str, nn.ModuleList]] = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            count = sum(p.numel() for p in module.parameters())
            if best is None or count > best[0]:
                best = (count, name, module)
    if best is None:
        raise ValueError(f"litcore: {type(model).__name__} has no nn.ModuleList of layers to split into stages")
    return best[1], best[2]


def _end_modules(model: nn.Module, layers_name: str) -> Tuple[List[str], List[str]]:
    """Modules owning weights outside the layers, registered before and after them."""
    before: List[str] = []
    after: List[str] = []
    seen_layers = False
    for name, module in model.named_modules():
        if name == layers_name or name.startswith(layers_name + "."):
            seen_layers = True
            continue
        if any(True for _ in module.parameters(recurse=False)):
            (after if seen_layers else before).append(name)
    return before, after


def _bytes_by_module(model: nn.Module, sizes: Dict[str, Tuple[str, int]]) -> Dict[str, int]:
    """Bytes each module's own stored tensors take (tied tensors counted where first seen)."""
    out: Dict[str, int] = {}
    counted: set = set()
    for prefix, module in model.named_modules():
        total = 0
        for attr in list(module._parameters) + list(module._buffers):
            key = f"{prefix}.{attr}" if prefix else attr
            if key in sizes and sizes[key][0] not in counted:
                counted.add(sizes[key][0])
                total += sizes[key][1]
        out[prefix] = total
    return out


def _balanced_starts(weights: List[int], head: int, tail: int, stages: int) -> List[int]:
    """First layer of each stage, contiguous, minimizing the largest stage's bytes (the first
    stage also holds `head` bytes, the last `tail`)."""
    n = len(weights)
    prefix = [0]
    for w in weights:
        prefix.append(prefix[-1] + w)

    def cost(i: int, j: int, k: int) -> int:
        return prefix[j] - prefix[i] + (head if k == 0 else 0) + (tail if k == stages - 1 else 0)

    # best[k][j]: the smallest largest-stage for layers [0, j) cut into stages 0..k.
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(stages)]
    cut = [[0] * (n + 1) for _ in range(stages)]
    for j in range(1, n + 1):
        best[0][j] = cost(0, j, 0)
    for k in range(1, stages):
        for j in range(k + 1, n + 1):
            for i in range(k, j):
                value = max(best[k - 1][i], cost(i, j, k))
                if value < best[k][j]:
                    best[k][j], cut[k][j] = value, i
    starts = [0] * stages
    j = n
    for k in range(stages - 1, 0, -1):
        j = cut[k][j]
        starts[k] = j
    return starts


def _explicit_starts(split: Sequence[Union[int, str]], layers_name: str, n: int, stages: int) -> List[int]:
    starts: List[int] = []
    for s in split:
        if isinstance(s, str):
            prefix = layers_name + "."
            if not s.startswith(prefix) or not s[len(prefix):].isdigit():
                raise ValueError(f"litcore: split point '{s}' is not a layer of '{layers_name}' (e.g. '{prefix}0')")
            s = int(s[len(prefix):])
        starts.append(int(s))
    if len(starts) != stages:
        raise ValueError(f"litcore: split gives {len(starts)} stages, world size is {stages}")
    if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:])) or starts[-1] >= n:
        raise ValueError(f"litcore: split {list(split)} must start at layer 0 and rise strictly below {n} "
                         "(each stage needs at least one layer)")
    return starts


def split_model(model: nn.Module, sizes: Dict[str, Tuple[str, int]], world_size: int, split: Split = None) -> StageSplit:
    """Cuts `model` (built empty) into `world_size` stages; `sizes` (name -> (stored name,
    bytes), litcore.convert.source_sizes) gives the bytes. `split`: the first layer of each
    stage (indices or names like "model.layers.8"); default: balanced by bytes."""
    if world_size < 1:
        raise ValueError(f"litcore: world size must be at least 1, got {world_size}")
    layers_name, layers = find_layers(model)
    n = len(layers)
    if world_size > n:
        raise ValueError(f"litcore: {world_size} stages but the model has only {n} layers in '{layers_name}'")
    before, after = _end_modules(model, layers_name)
    by_module = _bytes_by_module(model, sizes)
    layer_bytes = [sum(v for k, v in by_module.items() if k == f"{layers_name}.{i}" or k.startswith(f"{layers_name}.{i}."))
                   for i in range(n)]
    head = sum(by_module[m] for m in before)
    tail = sum(by_module[m] for m in after)
    starts = (_explicit_starts(split, layers_name, n, world_size) if split is not None
              else _balanced_starts(layer_bytes, head, tail, world_size))
    result = StageSplit(layers_name, n, before, after)
    for rank, first in enumerate(starts):
        end = starts[rank + 1] if rank + 1 < world_size else n
        modules = [f"{layers_name}.{i}" for i in range(first, end)]
        nbytes = sum(layer_bytes[first:end])
        if rank == 0:
            modules = before + modules
            nbytes += head
        if rank == world_size - 1:
            modules = modules + after
            nbytes += tail
        result.stages.append(Stage(rank, layers_name, first, end, modules, nbytes))
    return result


def plan_stages(path: os.PathLike, builder: Callable[[], nn.Module], world_size: int, *, split: Split = None,
                memory_budget: Union[Budget, Sequence[Budget]] = "auto") -> StageSplit:
    """A dry run: the stages a distributed run of the .lit file at `path` would make, their
    modules and bytes, and what each keeps resident under its `memory_budget` (one for all,
    or one per stage); nothing is read but the file's header."""
    from litcore._native import _C
    from litcore.convert import source_sizes
    from litcore.distributed import prune_to_stage
    from litcore.empty_init import empty_init
    from litcore.hf import _skeleton_units
    from litcore.residency import Unit, make_plan

    sizes = source_sizes(path)
    with empty_init():
        model = builder()
    stage_split = split_model(model, sizes, world_size, split)
    budgets = list(memory_budget) if isinstance(memory_budget, (list, tuple)) else [memory_budget] * world_size
    if len(budgets) != world_size:
        raise ValueError(f"litcore: {len(budgets)} memory budgets for {world_size} stages")
    for stage, budget in zip(stage_split.stages, budgets):
        with empty_init():
            skeleton = prune_to_stage(builder(), stage_split, stage.rank, dtype=None)
        specs, tensors = _skeleton_units(skeleton, sizes)
        units = [Unit(*u) for u in _C.units_of_tensors(specs, tensors)]
        stage.plan = make_plan(units, list(range(len(units))), resolve_budget(budget))
    return stage_split
