"""TorchScript with weights outside the program: `litcore.jit.save` writes a module's
parameters and persistent buffers to a .lit file and a TorchScript file without them;
the program itself reads its weights through `torch.classes.litcore.Store` and, under a
memory budget, brings each module's weights in before it runs and drops them after.

How the saved program is wired (all TorchScript, so it runs the same from C++):
- the root gets `_litcore_store` (a Store, pickled by path), `_litcore_bound`,
  `_litcore_groups` (tensor names per weight-owning module), `_litcore_streamable` and
  `_litcore_on_demand` (embeddings: read by lookup, never ahead);
- a generated `_litcore_bind()` method points every parameter and buffer at the store's
  zero-copy tensors (`set_`), once, and the root's `forward` calls it first;
- every weight-owning leaf module gets `_litcore_store` and `_litcore_group`, and its
  `forward` graph is wrapped in `store.enter(group)` / `store.exit(group)`.
"""
from __future__ import annotations

import io
import os
import tempfile
from typing import Dict, List, Tuple

import torch

from litcore.budget import Budget, parse_size
from litcore.save import save as save_weights
from litcore.store import PathLike

__all__ = ["save", "load"]

# Modules that read their weight by row lookup: a forward touches a few pages of it.
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


def _insert_enter_exit(sub: torch.jit.ScriptModule, store_type) -> None:
    graph = sub._c._get_method("forward").graph
    self_value = next(iter(graph.inputs()))
    first = next(iter(graph.nodes()))
    for where, method in ((first, "enter"), (graph.return_node(), "exit")):
        store = graph.create("prim::GetAttr", [self_value])
        store.s_("name", "_litcore_store")
        store.output().setType(store_type)
        group = graph.create("prim::GetAttr", [self_value])
        group.s_("name", "_litcore_group")
        group.output().setType(torch._C.IntType.get())
        call = graph.create("prim::CallMethod", [store.output(), group.output()])
        call.s_("name", method)
        call.output().setType(torch._C.NoneType.get())
        store.insertBefore(where)
        group.insertBefore(where)
        call.insertBefore(where)


def save(module: torch.jit.ScriptModule, model_path: PathLike, weights_path: PathLike) -> None:
    """Writes `module`'s weights to `weights_path` (a .lit file) and the program without
    them to `model_path`, wired to read its weights from the store (see the module doc)."""
    if not isinstance(module, torch.jit.ScriptModule):
        raise TypeError(f"litcore.jit.save takes a torch.jit.ScriptModule (scripted or traced), got {type(module).__name__}")
    model_path, weights_path = os.fspath(model_path), os.fspath(weights_path)
    save_weights({k: v.detach() for k, v in module.state_dict().items()}, weights_path,
                 metadata={"litcore.source": "litcore.jit.save"})
    program = _copy(module)
    store = torch.classes.litcore.Store(os.path.abspath(weights_path))
    store_type = store._type()
    owned = _owned(program)
    modules = dict(program.named_modules())
    groups: List[List[str]] = []
    streamable: List[bool] = []
    on_demand: List[bool] = []
    bind_lines: List[str] = []
    key_users: Dict[int, int] = {}
    for entries in owned.values():
        for _, _, tensor in entries:
            key_users[id(tensor)] = key_users.get(id(tensor), 0) + 1
    wrapped_types = set()
    for path, entries in owned.items():
        sub = modules[path]
        names = [key for _, key, _ in entries]
        is_leaf = next(iter(sub.children()), None) is None and path != ""
        only_params = all(attr in dict(sub.named_parameters(recurse=False)) for attr, _, _ in entries)
        shared = any(key_users[id(t)] > 1 for _, _, t in entries)
        group = len(groups)
        groups.append(names)
        streamable.append(is_leaf and only_params and not shared)
        on_demand.append(sub.original_name in _LOOKUP_MODULES)
        for attr, key, tensor in entries:
            bind_lines.append(f'        {_path_expr(path)}.{attr}.set_(self._litcore_store.get("{key}"))')
            sub._c.setattr(attr, torch.empty(0, dtype=tensor.dtype).requires_grad_(tensor.requires_grad))
        if path and streamable[-1]:
            sub._c._register_attribute("_litcore_store", store_type, store)
            sub._c._register_attribute("_litcore_group", torch._C.IntType.get(), group)
            type_name = sub._c._type().qualified_name()
            if type_name not in wrapped_types:
                wrapped_types.add(type_name)
                _insert_enter_exit(sub, store_type)
    program._c._register_attribute("_litcore_store", store_type, store)
    program._c._register_attribute("_litcore_bound", torch._C.BoolType.get(), False)
    program._c._register_attribute("_litcore_groups", torch._C.ListType(torch._C.ListType(torch._C.StringType.get())), groups)
    program._c._register_attribute("_litcore_streamable", torch._C.ListType(torch._C.BoolType.get()), streamable)
    program._c._register_attribute("_litcore_on_demand", torch._C.ListType(torch._C.BoolType.get()), on_demand)
    source = "\n".join(["def _litcore_bind(self) -> None:", "    if self._litcore_bound:", "        return",
                        "    with torch.no_grad():", *(bind_lines or ["        pass"]), "    self._litcore_bound = True", ""])
    program.define(source)
    graph = program._c._get_method("forward").graph
    call = graph.create("prim::CallMethod", [next(iter(graph.inputs()))])
    call.s_("name", "_litcore_bind")
    call.output().setType(torch._C.NoneType.get())
    call.insertBefore(next(iter(graph.nodes())))
    # Atomic like every litcore write: a crash never leaves a half-written program.
    directory = os.path.dirname(os.path.abspath(model_path))
    fd, temp = tempfile.mkstemp(prefix="." + os.path.basename(model_path) + ".", suffix=".litcore-partial", dir=directory)
    os.close(fd)
    try:
        torch.jit.save(program, temp)
        os.replace(temp, model_path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def load(model_path: PathLike, weights_path: PathLike, *, memory_budget: Budget = "auto") -> torch.jit.ScriptModule:
    """Loads a program written by `save`, reading its weights from `weights_path` within
    `memory_budget` (bytes, "1.5GiB", or "auto"), with the same plan as LitModule."""
    import litcore  # noqa: F401  registers torch.classes.litcore

    model_path, weights_path = os.fspath(model_path), os.fspath(weights_path)
    program = torch.jit.load(model_path)
    if not hasattr(program, "_litcore_groups"):
        raise ValueError(f"litcore: '{model_path}' was not saved by litcore.jit.save")
    store = torch.classes.litcore.Store(weights_path)
    for sub in program.modules():
        if hasattr(sub, "_litcore_store"):
            sub._c.setattr("_litcore_store", store)
    program._c.setattr("_litcore_bound", False)
    budget = 0 if memory_budget is None or memory_budget == "auto" else parse_size(memory_budget)
    on_demand = list(getattr(program, "_litcore_on_demand", []))  # absent in older programs
    store.configure(program._litcore_groups, program._litcore_streamable, on_demand, budget)
    return program.eval()
