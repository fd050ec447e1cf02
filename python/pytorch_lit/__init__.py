"""PyTorch-LIT compatibility: code written for `pip install pytorch-lit` runs on litcore.

    from pytorch_lit.export import prepare_params
from pytorch_lit.partial_loader import PartialLoader
    prepare_params(model.state_dict(), ".models/my-model", dtype="float32")
    from pytorch_lit import LitModule
    model = LitModule.from_params(".models/my-model", lambda: MyModel(), device="cpu")
    from pytorch_lit import PartialLoader
    prepare_params(PartialLoader("pytorch_model.bin"), ".models/my-model", dtype="float16")
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from torch import nn

import litcore
from pytorch_lit.export import prepare_params
from pytorch_lit.partial_loader import PartialLoader


class LitModule(litcore.LitModule):
    """litcore's LitModule with PyTorch-LIT's `from_params` signature."""

    @classmethod
    def from_params(cls, params_path: Any, model_closure: Callable[[], nn.Module], shared_memory_shape: Optional[Any] = None,
                    device: str = "cuda", **options: Any) -> "LitModule":
        """As in PyTorch-LIT. `shared_memory_shape` is accepted and unused: litcore needs no
        shared parameter slot. `device` defaults to "cuda" as it did there."""
        return super().from_params(params_path, model_closure, device=device, **options)


__all__ = ["LitModule", "PartialLoader", "prepare_params"]
