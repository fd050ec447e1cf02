"""Binding a model built under empty_init() to a store: every parameter and persistent
buffer becomes a zero-copy view of the file; ties are kept; mismatches are reported."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Collection, Dict, List, Tuple

import torch
from torch import nn

from litcore.store import Store

__all__ = ["WeightsMismatchError", "UnitBinding", "Binding", "UnitSpec", "bind", "unit_spec"]


class WeightsMismatchError(RuntimeError):
    """The model and the weight file disagree (missing, unexpected or mismatched tensors)."""

    def __init__(self, message: str, missing: List[str], unexpected: List[str], mismatched: List[str]) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched


@dataclass
class UnitBinding:
    """One unit: a module and the tensors it owns directly (its own parameters and buffers)."""

    name: str
    module: nn.Module
    file_keys: List[str] = field(default_factory=list)  # stored tensors bound here
    bindings: List[Tuple[str, str, bool]] = field(default_factory=list)  # (attribute, file key, is_parameter)

    @property
    def has_buffers(self) -> bool:
        return any(not is_param for _, _, is_param in self.bindings)


# Modules that read their weight by row lookup: a forward touches a few pages of it.
LOOKUP_MODULES = (nn.Embedding, nn.EmbeddingBag)

# The engine's unit: name, stored tensors, streamable, lookup, experts (routed: see routed_experts).
UnitSpec = Tuple[str, List[str], bool, bool, int]


@dataclass
class Binding:
    units: List[UnitBinding]  # modules owning stored tensors, in registration order
    missing: List[str]
    unexpected: List[str]

    def specs(self, root: nn.Module, *, lookups: bool = True) -> List[UnitSpec]:
        """The units as the engine takes them (see `unit_spec`)."""
        return [unit_spec(root, u.name, u.module, u.file_keys, u.has_buffers, lookups=lookups) for u in self.units]


def _holds_stored_tensors(module: nn.Module) -> bool:
    """True when `module` or a module under it has a parameter or a persistent buffer."""
    return any(next(m.parameters(recurse=False), None) is not None or
               any(b is not None and n not in m._non_persistent_buffers_set for n, b in m._buffers.items())
               for m in module.modules())


def unit_spec(root: nn.Module, name: str, module: nn.Module, keys: List[str], has_buffers: bool, *,
              lookups: bool = True) -> UnitSpec:
    """One module as the engine takes it: a leaf module holding only parameters can stream;
    with `lookups`, embeddings are read by lookup (on a GPU they are copied whole). A module
    whose children hold no stored tensors (a mixture-of-experts block's experts, with their
    activation function as a child) is a leaf here: its weights are used while it runs."""
    leaf = module is not root and not any(_holds_stored_tensors(c) for c in module.children())
    return (name or "<root>", list(keys), leaf and not has_buffers, lookups and isinstance(module, LOOKUP_MODULES),
            routed_experts(module))


def routed_experts(module: nn.Module) -> int:
    """A mixture-of-experts layer's experts as transformers builds them (`num_experts`, and
    its weights stacked per expert: 3-D, the experts first; biases 2-D): their number, for
    the engine to read only the experts a forward's routing chose; 0 for any other module."""
    n = getattr(module, "num_experts", None)
    params = list(module.parameters(recurse=False))
    if not isinstance(n, int) or n < 2 or not params:
        return 0
    stacked = all(p.dim() >= 2 and p.shape[0] == n for p in params) and any(p.dim() >= 3 for p in params)
    return n if stacked else 0


def _kind(dtype: torch.dtype) -> str:
    if dtype.is_floating_point:
        return "float"
    if dtype.is_complex:
        return "complex"
    return "bool" if dtype == torch.bool else "int"


def _describe(names: List[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def bind(model: nn.Module, store: Store, *, strict: bool = True, outside: Collection[str] = ()) -> Binding:
    """Points every parameter and persistent buffer of `model` at `store`'s tensors.
    `outside`: tensors of the file that belong to another part of the model (another
    stage's), not reported as unexpected.

    Floating-point dtypes follow the file (a bf16 file makes a bf16 model, whatever dtype
    the builder used); a float/int/bool kind mismatch or a shape mismatch is an error.
    """
    # Who owns what: (module, attribute) for every name, grouped by tensor identity (ties).
    owners: Dict[int, List[Tuple[str, nn.Module, str, bool]]] = {}
    tensors: Dict[int, torch.Tensor] = {}
    units: Dict[int, UnitBinding] = {}
    non_persistent: set = set()
    for prefix, mod in model.named_modules(remove_duplicate=False):
        unit = units.setdefault(id(mod), UnitBinding(prefix, mod))
        for attr, value in list(mod._parameters.items()) + list(mod._buffers.items()):
            if value is None:
                continue
            key = f"{prefix}.{attr}" if prefix else attr
            is_param = attr in mod._parameters
            if not is_param and attr in mod._non_persistent_buffers_set:
                non_persistent.add(key)
                continue
            owners.setdefault(id(value), []).append((key, mod, attr, is_param))
            tensors[id(value)] = value

    file_keys = set(store.keys())
    used_keys: set = set()
    missing: List[str] = []
    mismatched: List[str] = []
    bound: List[Tuple[List[Tuple[str, nn.Module, str, bool]], str, bool]] = []
    for tid, names in owners.items():
        current = tensors[tid]
        present = [k for k, *_ in names if k in file_keys]
        if not present:
            missing.extend(k for k, *_ in names)
            continue
        used_keys.update(present)
        key = present[0]
        info = store.info(key)
        if tuple(current.shape) != info.shape:
            mismatched.append(f"{key}: model has shape {list(current.shape)}, file has {list(info.shape)}")
            continue
        if _kind(current.dtype) != _kind(info.dtype):
            mismatched.append(f"{key}: model has dtype {current.dtype}, file has {info.dtype}")
            continue
        bound.append((names, key, current.requires_grad))

    unexpected = sorted(k for k in file_keys - used_keys - set(outside) if k not in non_persistent)
    problems = []
    if missing:
        problems.append(f"missing from the file: {_describe(sorted(missing))}")
    if unexpected:
        problems.append(f"not in the model: {_describe(unexpected)}")
    if mismatched:
        problems.append(f"mismatched: {_describe(mismatched)}")
    if problems and (strict or mismatched):
        raise WeightsMismatchError(f"litcore: '{store.path}' does not match the model; " + "; ".join(problems),
                                   sorted(missing), unexpected, mismatched)
    if problems:
        warnings.warn(f"litcore: '{store.path}' does not match the model; " + "; ".join(problems)
                      + (". Missing parameters are zero-filled." if missing else ""), stacklevel=3)

    # Parameters keep the builder's requires_grad: ATen's matmul picks its algorithm (fold
    # to 2-D or not) by it, so changing it would change results in the last bits.
    for names, key, requires_grad in bound:
        value = store[key]
        info = store.info(key)
        is_param = names[0][3]
        new = nn.Parameter(value, requires_grad=requires_grad) if is_param else value
        for _, mod, attr, _ in names:
            if attr in mod._parameters:
                mod._parameters[attr] = new if is_param else nn.Parameter(value, requires_grad=requires_grad)
            else:
                mod._buffers[attr] = value
            unit = units[id(mod)]
            unit.file_keys.append(info.alias_of or key)
            unit.bindings.append((attr, key, attr in mod._parameters))
    # Whatever is still on the meta device (missing, non-strict) gets zeros, never garbage.
    for tid, names in owners.items():
        current = tensors[tid]
        if current.device.type == "meta" and any(k in missing for k, *_ in names):
            filler = torch.zeros(current.shape, dtype=current.dtype)
            for _, mod, attr, is_param in names:
                if is_param:
                    mod._parameters[attr] = nn.Parameter(filler, requires_grad=current.requires_grad)
                else:
                    mod._buffers[attr] = filler
    # Non-persistent buffers a model left on meta (it built them from a meta parameter) would
    # compute garbage: refuse them by name.
    leftovers = [f"{p}.{n}" if p else n for p, m in model.named_modules() for n, b in m.named_buffers(recurse=False)
                 if b is not None and b.device.type == "meta"]
    if leftovers:
        raise WeightsMismatchError(f"litcore: buffers left without values (computed from weights at construction): "
                                   f"{_describe(leftovers)}", leftovers, [], [])
    for unit in units.values():
        unit.file_keys = list(dict.fromkeys(unit.file_keys))
    return Binding([u for u in units.values() if u.file_keys], sorted(missing), unexpected)
