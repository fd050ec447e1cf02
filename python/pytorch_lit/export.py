"""`prepare_params`, as in PyTorch-LIT, writing a litcore file."""
from __future__ import annotations

import os
from typing import Mapping, Union

import torch

import litcore

WEIGHTS_FILE = "model.lit"


def prepare_params(weights: Mapping[str, torch.Tensor], path: Union[str, "os.PathLike[str]"],
                   dtype: Union[str, torch.dtype, None] = "float32") -> str:
    """Writes `weights` (a state_dict) to the directory `path` as one litcore file and
    returns the file's path. `dtype` ("float32", "float16", "bfloat16" or a torch dtype)
    applies to floating-point tensors; integer and bool tensors keep their dtype."""
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    target = os.path.join(path, WEIGHTS_FILE)
    litcore.save(weights, target, dtype=dtype, metadata={"litcore.source": "pytorch_lit.prepare_params"})
    return target
