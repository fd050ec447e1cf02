"""`prepare_params`, with PyTorch-LIT's signature, writing a litcore file."""
from __future__ import annotations

import os
from typing import Mapping, Union

import torch

import litcore
from pytorch_lit.partial_loader import PartialLoader

WEIGHTS_FILE = "model.lit"
_METHODS = ("np-memmap", "litcore")


def prepare_params(parameters: Union[Mapping[str, torch.Tensor], PartialLoader], save_dir: Union[str, "os.PathLike[str]"],
                   method: str = "np-memmap", dtype: Union[str, torch.dtype, None] = "float32",
                   progress: bool = True) -> str:
    """Writes `parameters` (a state_dict, or a PartialLoader over a checkpoint file) to the
    directory `save_dir` as one litcore file and returns the file's path. A PartialLoader's
    file is converted one tensor at a time, never loaded whole.

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
    metadata = {"litcore.source": "pytorch_lit.prepare_params"}
    if isinstance(parameters, PartialLoader):
        return litcore.convert(parameters.path, target, dtype=dtype, progress=progress, metadata=metadata)
    if not isinstance(parameters, Mapping):
        raise RuntimeError(f"unsupported parameters type: {type(parameters)}")
    litcore.save(parameters, target, dtype=dtype, progress=progress, metadata=metadata)
    return target
