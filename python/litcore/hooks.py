"""Forward hooks: the Python caller of the engine's pass interface. The root's pre-hook
begins a pass and its forward hook ends it; each streamed module's pre-hook enters its unit
(its weights are brought in) and its forward hook exits it (they may leave)."""
from __future__ import annotations

import sys
import weakref
from typing import Callable, Collection, Dict, List, Optional

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def install(root: nn.Module, engine, on_pass: Optional[Callable[[], None]] = None) -> List[RemovableHandle]:
    """Hooks `root` to begin and end a pass (its units: install_units()).

    `engine` has begin/enter/exit/end: the native engine (or the CUDA runtime). The hooks
    hold it and a weak reference to `on_pass` (called after each pass), never the
    LitModule, so dropping the LitModule frees everything by reference counting alone.
    """
    report = weakref.WeakMethod(on_pass) if on_pass is not None else None

    def root_pre(module: nn.Module, args: tuple) -> None:
        engine.begin()

    def root_post(module: nn.Module, args: tuple, output: object) -> None:
        # An always_call hook runs inside torch's `except` when the forward raised.
        if sys.exc_info()[0] is not None:
            engine.end(True)
            return
        engine.end()
        callback = report() if report is not None else None
        if callback is not None:
            callback()

    return [root.register_forward_pre_hook(root_pre, prepend=True),
            root.register_forward_hook(root_post, always_call=True)]


def install_units(units: Dict[int, nn.Module], engine, routed: Collection[int] = ()) -> List[RemovableHandle]:
    """Hooks every module in `units` (unit index -> module) to enter and exit its unit. The
    modules of `routed` units (a mixture-of-experts layer's experts) tell the engine which
    experts their routing chose: the integer tensor among their arguments (transformers'
    `top_k_index`); without one, the unit is entered whole."""
    handles: List[RemovableHandle] = []
    routed = set(routed)
    for uid, module in units.items():
        def pre(module: nn.Module, args: tuple, uid: int = uid) -> None:
            engine.enter(uid)

        def routed_pre(module: nn.Module, args: tuple, kwargs: dict, uid: int = uid) -> None:
            chosen = _chosen_experts(args, kwargs)
            if chosen is None:
                engine.enter(uid)
            else:
                engine.enter_experts(uid, chosen)

        def post(module: nn.Module, args: tuple, output: object, uid: int = uid) -> None:
            engine.exit(uid)

        if uid in routed:
            handles.append(module.register_forward_pre_hook(routed_pre, with_kwargs=True))
        else:
            handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post, always_call=True))
    return handles


def _chosen_experts(args: tuple, kwargs: dict) -> Optional[List[int]]:
    """The distinct expert ids in the first integer tensor among a forward's arguments."""
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor) and not value.is_floating_point() and not value.is_complex() \
                and value.dtype != torch.bool:
            return torch.unique(value).tolist()
    return None


def remove(handles: Optional[List[RemovableHandle]]) -> None:
    for h in handles or []:
        h.remove()
