"""Forward hooks that bring a module's weights in before it runs and drop them after,
through the native prefetcher; and the pass recorder that learns the execution order."""
from __future__ import annotations

import time
import weakref
from typing import Callable, Dict, List, Optional

from torch import nn
from torch.utils.hooks import RemovableHandle


class PassRecorder:
    """Records which streamed units run, in order, during each forward of the root module,
    and hands that order and the forward's duration to `on_pass`."""

    def __init__(self, on_pass: Callable[[List[int], float], None],
                 on_start: Optional[Callable[[], None]] = None) -> None:
        # A weak reference: the module holds the hooks, the hooks hold this recorder; a
        # strong reference back to the LitModule would make a cycle that only gc frees.
        self.on_pass = weakref.WeakMethod(on_pass)
        self.on_start = weakref.WeakMethod(on_start) if on_start is not None else None
        self.order: List[int] = []
        self.depth = 0
        self.started = 0.0

    def begin(self) -> None:
        if self.depth == 0:
            self.order = []
            self.started = time.perf_counter()
            callback = self.on_start() if self.on_start is not None else None
            if callback is not None:
                callback()
        self.depth += 1

    def end(self) -> None:
        self.depth -= 1
        if self.depth == 0:
            callback = self.on_pass()
            if callback is not None:
                callback(self.order, time.perf_counter() - self.started)


def install(root: nn.Module, units: Dict[int, nn.Module], streamer, recorder: PassRecorder) -> List[RemovableHandle]:
    """Hooks every unit's module (weights in before, out after) and the root (pass bounds).

    `streamer` has wait(unit) and done(unit): the native prefetcher on CPU, the CUDA
    streamer on GPU. The hooks hold it and the recorder, never the LitModule, so dropping
    the LitModule frees everything by reference counting alone.
    """
    handles: List[RemovableHandle] = []

    def root_pre(module: nn.Module, args: tuple) -> None:
        recorder.begin()

    def root_post(module: nn.Module, args: tuple, output: object) -> None:
        recorder.end()

    handles.append(root.register_forward_pre_hook(root_pre, prepend=True))
    for uid, module in units.items():
        def pre(module: nn.Module, args: tuple, uid: int = uid) -> None:
            recorder.order.append(uid)
            streamer.wait(uid)

        def post(module: nn.Module, args: tuple, output: object, uid: int = uid) -> None:
            streamer.done(uid)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post, always_call=True))
    handles.append(root.register_forward_hook(root_post, always_call=True))
    return handles


def remove(handles: Optional[List[RemovableHandle]]) -> None:
    for h in handles or []:
        h.remove()
