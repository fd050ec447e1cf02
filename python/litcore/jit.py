"""TorchScript with weights outside the program: `litcore.jit.save` writes a module's
parameters and persistent buffers to a .lit file and a TorchScript file without them;
the program itself reads its weights through the engine, `torch.classes.litcore.Engine`,
which under a memory budget brings each module's weights in before it runs and drops
them after, learning the execution order as the Python hooks do.

How the saved program is wired (all TorchScript, so it runs the same from C++):
- the root gets `_litcore_engine` (pickled by the weight file's path), `_litcore_bound`,
  `_litcore_units` (stored tensor names per weight-owning module), `_litcore_streamable`
  and `_litcore_lookup` (embeddings: read by lookup, never ahead);
- a generated `_litcore_bind()` method points every parameter and buffer at the store's
  zero-copy tensors (`set_`), once; the root's `forward` calls it, then `engine.begin()`,
  and `engine.end()` before it returns;
- every streamable leaf module gets `_litcore_engine` and `_litcore_unit`, and its
  `forward` graph is wrapped in `engine.enter(unit)` / `engine.exit(unit)`.
"""
from __future__ import annotations

import io
import os
from typing import Dict, List, Tuple, Union

import torch

from litcore._native import _C
from litcore.budget import Budget, resolve_budget
from litcore.engine import DEFAULT_VERIFY, check_threads, check_verify, parse_device
from litcore.save import save as save_weights
from litcore.store import PathLike

__all__ = ["save", "load"]

# Modules that read their weight by row lookup (binding.LOOKUP_MODULES, by TorchScript name).
_LOOKUP_MODULES = ("Embedding", "EmbeddingBag")


def _path_expr(path: str) -> str:
    expr = "self"
    for part in path.split(".") if path else []:
        expr = f'getattr({expr}, "{part}")'
    return expr


def _copy(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """A deep copy with its own types, so rewriting it never touches the caller's module."""
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


def _owned(module: torch.jit.ScriptModule) -> Dict[str, List[Tuple[str, str, torch.Tensor]]]:
    """module path -> [(attribute, state_dict key, tensor)] for parameters and persistent buffers."""
    state = module.state_dict(keep_vars=True)
    owned: Dict[str, List[Tuple[str, str, torch.Tensor]]] = {}
    for key, tensor in state.items():
        path, _, attr = key.rpartition(".")
        owned.setdefault(path, []).append((attr, key, tensor))
    return owned


def _insert_call(graph, engine_type, method: str, before, unit: bool) -> None:
    """Inserts `self._litcore_engine.<method>(self._litcore_unit)` (or without the unit) before `before`."""
    self_value = next(iter(graph.inputs()))
    engine = graph.create("prim::GetAttr", [self_value])
    engine.s_("name", "_litcore_engine")
    engine.output().setType(engine_type)
    engine.insertBefore(before)
    args = [engine.output()]
    if unit:
        index = graph.create("prim::GetAttr", [self_value])
        index.s_("name", "_litcore_unit")
        index.output().setType(torch._C.IntType.get())
        index.insertBefore(before)
        args.append(index.output())
    call = graph.create("prim::CallMethod", args)
    call.s_("name", method)
    call.output().setType(torch._C.NoneType.get())
    call.insertBefore(before)


def _insert_enter_exit(sub: torch.jit.ScriptModule, engine_type) -> None:
    graph = sub._c._get_method("forward").graph
    _insert_call(graph, engine_type, "enter", next(iter(graph.nodes())), unit=True)
    _insert_call(graph, engine_type, "exit", graph.return_node(), unit=True)


def save(module: torch.jit.ScriptModule, model_path: PathLike, weights_path: PathLike) -> None:
    """Writes `module`'s weights to `weights_path` (a .lit file) and the program without
    them to `model_path`, wired to read its weights from the store (see the module doc)."""
    if not isinstance(module, torch.jit.ScriptModule):
        raise TypeError(f"litcore.jit.save takes a torch.jit.ScriptModule (scripted or traced), got {type(module).__name__}")
    model_path, weights_path = os.fspath(model_path), os.fspath(weights_path)
    _C.check_destination(model_path)  # before writing the weights
    save_weights({k: v.detach() for k, v in module.state_dict().items()}, weights_path,
                 metadata={"litcore.source": "litcore.jit.save"})
    program = _copy(module)
    engine = torch.classes.litcore.Engine(os.path.abspath(weights_path))
    engine_type = engine._type()
    owned = _owned(program)
    modules = dict(program.named_modules())
    units: List[List[str]] = []
    streamable: List[bool] = []
    lookup: List[bool] = []
    bind_lines: List[str] = []
    key_users: Dict[int, int] = {}
    for entries in owned.values():
        for _, _, tensor in entries:
            key_users[id(tensor)] = key_users.get(id(tensor), 0) + 1
    # A module is a leaf for streaming when no module under it holds stored tensors (as in
    # binding.unit_spec): its weights are used while it runs.
    holders_above = {path.rsplit(".", i)[0] for path in owned for i in range(1, path.count(".") + 1)}
    wrapped_types = set()
    for path, entries in owned.items():
        sub = modules[path]
        names = [key for _, key, _ in entries]
        is_leaf = path != "" and path not in holders_above
        only_params = all(attr in dict(sub.named_parameters(recurse=False)) for attr, _, _ in entries)
        shared = any(key_users[id(t)] > 1 for _, _, t in entries)
        unit = len(units)
        units.append(names)
        streamable.append(is_leaf and only_params and not shared)
        lookup.append(sub.original_name in _LOOKUP_MODULES)
        for attr, key, tensor in entries:
            bind_lines.append(f'        {_path_expr(path)}.{attr}.set_(self._litcore_engine.get("{key}"))')
            sub._c.setattr(attr, torch.empty(0, dtype=tensor.dtype).requires_grad_(tensor.requires_grad))
        if path and streamable[-1]:
            sub._c._register_attribute("_litcore_engine", engine_type, engine)
            sub._c._register_attribute("_litcore_unit", torch._C.IntType.get(), unit)
            type_name = sub._c._type().qualified_name()
            if type_name not in wrapped_types:
                wrapped_types.add(type_name)
                _insert_enter_exit(sub, engine_type)
    program._c._register_attribute("_litcore_engine", engine_type, engine)
    program._c._register_attribute("_litcore_bound", torch._C.BoolType.get(), False)
    program._c._register_attribute("_litcore_units", torch._C.ListType(torch._C.ListType(torch._C.StringType.get())), units)
    program._c._register_attribute("_litcore_streamable", torch._C.ListType(torch._C.BoolType.get()), streamable)
    program._c._register_attribute("_litcore_lookup", torch._C.ListType(torch._C.BoolType.get()), lookup)
    source = "\n".join(["def _litcore_bind(self) -> None:", "    if self._litcore_bound:", "        return",
                        "    with torch.no_grad():", *(bind_lines or ["        pass"]), "    self._litcore_bound = True", ""])
    program.define(source)
    graph = program._c._get_method("forward").graph
    first = next(iter(graph.nodes()))
    call = graph.create("prim::CallMethod", [next(iter(graph.inputs()))])
    call.s_("name", "_litcore_bind")
    call.output().setType(torch._C.NoneType.get())
    call.insertBefore(first)
    _insert_call(graph, engine_type, "begin", first, unit=False)
    _insert_call(graph, engine_type, "end", graph.return_node(), unit=False)
    # Through the same atomic writer as weight files: a crash never leaves a half-written
    # program, and a dead writer's partial file is cleaned up by the next save.
    target = _C.AtomicFile(model_path)
    try:
        torch.jit.save(program, target.temp_path)
        target.commit()
    finally:
        target.abort()  # no-op once committed


def load(model_path: PathLike, weights_path: PathLike, *, memory_budget: Budget = "auto", threads: int = 1,
         verify: Union[str, bool] = DEFAULT_VERIFY, device: str = "cpu") -> torch.jit.ScriptModule:
    """Loads a program written by `save`, reading its weights from `weights_path` within
    `memory_budget` (bytes, "1.5GiB", or "auto") through the same engine as LitModule, with
    the same `threads` and `verify` options. `device`: "cpu"; "cuda[:N]" raises a clear
    error until litcore's native CUDA backend exists (LitModule streams to a GPU).
    The engine is `program._litcore_engine`: `summary()`, `passes()` and `placements()`
    give the same statistics and plan as `LitModule.stats()` and `LitModule.plan`."""
    import litcore  # noqa: F401  registers torch.classes.litcore

    verify = check_verify(verify)
    check_threads(threads)
    _C.require_device(parse_device(str(device)), "TorchScript")
    budget = 0 if memory_budget is None or memory_budget == "auto" else resolve_budget(memory_budget)
    model_path, weights_path = os.fspath(model_path), os.fspath(weights_path)
    program = torch.jit.load(model_path)
    if not hasattr(program, "_litcore_units"):
        raise ValueError(f"litcore: '{model_path}' was not saved by litcore.jit.save")
    engine = torch.classes.litcore.Engine(weights_path)
    for sub in program.modules():
        if hasattr(sub, "_litcore_engine"):
            sub._c.setattr("_litcore_engine", engine)
    program._c.setattr("_litcore_bound", False)
    engine.configure(program._litcore_units, program._litcore_streamable, program._litcore_lookup, budget, threads,
                     verify)
    return program.eval()
