"""`prepare_params`, with PyTorch-LIT's signature, writing a litcore file."""
from __future__ import annotations

import os
from typing import Mapping, Union

import torch

import litcore

WEIGHTS_FILE = "model.lit"
_METHODS = ("np-memmap", "litcore")


def prepare_params(parameters: Mapping[str, torch.Tensor], save_dir: Union[str, "os.PathLike[str]"],
                   method: str = "np-memmap", dtype: Union[str, torch.dtype, None] = "float32",
                   progress: bool = True) -> str:
    """Writes `parameters` (a state_dict) to the directory `save_dir` as one litcore file
    and returns the file's path.

    `dtype` ("float32", "float16", "bfloat16" or a torch dtype) applies to floating-point
    tensors; integer and bool tensors keep theirs (PyTorch-LIT cast them too). `method` is
    accepted for compatibility: "np-memmap" (PyTorch-LIT's only method) now means litcore's
    aligned format.
    """
    if method not in _METHODS:
        raise RuntimeError(f"Unknown method: {method}")
    save_dir = os.fspath(save_dir)
    os.makedirs(save_dir, exist_ok=True)
    target = os.path.join(save_dir, WEIGHTS_FILE)
    litcore.save(parameters, target, dtype=dtype, progress=progress,
                 metadata={"litcore.source": "pytorch_lit.prepare_params"})
    return target
