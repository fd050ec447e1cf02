"""A pre-quantized checkpoint's tensors as the plain weights its model holds.

transformers, on a machine without a GPU, loads an FP8 checkpoint (quant_method "fp8": each
float8 weight beside a per-block `weight_scale_inv`) by dequantizing it into the model's
dtype and building the model's plain layers, without its quantization_config. litcore does
the same, once, when it converts the checkpoint: the .lit file holds the plain weights (twice
the float8 bytes in bfloat16), under the model's names, and the model runs as transformers
runs it, `torch.equal` to it. Each weight is dequantized on its own as it is written, so an
MoE layer's experts are still converted one at a time.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import torch

from litcore import dtypes
from litcore.save import TensorPlan

__all__ = ["DEQUANTIZED_METHODS", "quantization_method", "plain_config", "dequantized_plans", "directory_dequantization"]

# The quant_methods whose checkpoints litcore converts to plain weights. Others (GPTQ, AWQ,
# bitsandbytes...) are refused before anything is converted.
DEQUANTIZED_METHODS = ("fp8",)
SCALE_SUFFIX = "_scale_inv"  # "layers.0.mlp.up_proj.weight" -> "layers.0.mlp.up_proj.weight_scale_inv"
DROPPED_SUFFIXES = (".activation_scale", ".input_scale")  # static activation scales: a plain layer has none
FLOAT8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
               if hasattr(torch, n))


def quantization_method(config: Any) -> Optional[str]:
    """The method of a pre-quantized checkpoint's config (its quantization_config's
    quant_method: "fp8", "gptq", "awq", "bitsandbytes"...), or None for plain weights. `config`
    is a transformers config or config.json's dict."""
    quantization = config.get("quantization_config") if isinstance(config, dict) else getattr(config, "quantization_config", None)
    if not quantization:
        return None
    method = quantization.get("quant_method") if isinstance(quantization, dict) else getattr(quantization, "quant_method", None)
    return str(getattr(method, "value", method))


def plain_config(config: Any, src: str) -> Any:
    """`config` for the model's plain layers: as it is for plain weights; without its
    quantization_config for a method litcore dequantizes (as transformers leaves it after
    dequantizing); refused, naming `src` and the method, for any other."""
    method = quantization_method(config)
    if method is None:
        return config
    if method not in DEQUANTIZED_METHODS:
        raise ValueError(f"litcore: '{src}' is a pre-quantized checkpoint (its config's quantization_config has "
                         f"quant_method '{method}'): litcore runs plain weights (float32, float16, bfloat16) and "
                         f"converts FP8 ('fp8') checkpoints to them; use the model's unquantized checkpoint")
    if isinstance(config, dict):
        return {k: v for k, v in config.items() if k != "quantization_config"}
    import copy

    plain = copy.deepcopy(config)
    try:
        del plain.quantization_config
    except AttributeError:
        plain.quantization_config = None
    return plain


def directory_dequantization(src: str) -> Optional[torch.dtype]:
    """For a model directory whose config.json describes a checkpoint litcore dequantizes,
    the dtype its weights dequantize into (the model's: config.json's `dtype` or
    `torch_dtype`, bfloat16 where it names none); None for any other directory or file."""
    path = os.path.join(src, "config.json")
    if not (os.path.isdir(src) and os.path.exists(path)):
        return None
    with open(path) as f:
        config = json.load(f)
    if quantization_method(config) not in DEQUANTIZED_METHODS:
        return None
    named = config.get("dtype") or config.get("torch_dtype")
    try:
        into = dtypes.resolve(named) if isinstance(named, str) else None
    except ValueError:
        into = None
    return into or torch.bfloat16


def dequantized_plans(plans: List[TensorPlan], into: torch.dtype, target: Optional[torch.dtype],
                      original: Optional[Dict[str, str]] = None) -> List[TensorPlan]:
    """`plans` with each float8 tensor that has a `<name>_scale_inv` beside it dequantized into
    `into` (then stored in `target`, if given, as any floating-point tensor), its scales and
    any static activation scales dropped. Plans that only describe (no `read`) stay so.
    `original` (name -> dtype before conversion) gets the float8 tensors' dtype. A float8
    tensor without scales raises ValueError naming it."""
    by_name = {p.name: p for p in plans}
    final = dtypes.converted(into, target)
    out: List[TensorPlan] = []
    for plan in plans:
        if plan.name.endswith(SCALE_SUFFIX) and plan.name[:-len(SCALE_SUFFIX)] in by_name:
            continue
        if plan.name.endswith(DROPPED_SUFFIXES):
            continue
        scales = by_name.get(plan.name + SCALE_SUFFIX)
        if scales is None:
            if plan.dtype in FLOAT8:
                raise ValueError(f"litcore: checkpoint tensor '{plan.name}' is {plan.dtype} without "
                                 f"'{plan.name + SCALE_SUFFIX}' beside it: it cannot be dequantized")
            out.append(plan)
            continue
        if original is not None:
            original[plan.name] = dtypes.name_of(plan.dtype)
        out.append(_dequantized(plan, scales, final))
    return out


def _dequantized(weights: TensorPlan, scales: TensorPlan, dtype: torch.dtype) -> TensorPlan:
    if weights.read is None or scales.read is None:
        return TensorPlan(weights.name, dtype, weights.shape)

    def read() -> torch.Tensor:
        return dequantize(weights.read(), scales.read(), dtype, weights.name)

    def produce(writer, i: int) -> None:
        writer.write(i, read())

    return TensorPlan(weights.name, dtype, weights.shape, produce=produce, read=read)


def dequantize(quantized: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype, name: str = "tensor") -> torch.Tensor:
    """Block-wise dequantization: `quantized` (..., rows, cols) times `scales` (..., rows / m,
    cols / n), each scale covering an m x n block, computed in float32 and rounded once into
    `dtype`, as transformers computes it. E8M0 scales stored as uint8 are 2^(byte - 127)."""
    q = quantized.to(torch.float32)
    if q.dim() < 2:
        raise ValueError(f"litcore: '{name}' has shape {list(quantized.shape)}: block scales need 2 dimensions")
    rows, cols = q.shape[-2:]
    s = (scales.to(torch.float32) - 127.0).exp2() if scales.dtype == torch.uint8 else scales.to(torch.float32)
    scale_rows, scale_cols = s.shape[-2:] if s.dim() >= 2 else (1, 1)
    lead = q.numel() // (rows * cols)
    if rows % scale_rows or cols % scale_cols or s.numel() != lead * scale_rows * scale_cols:
        raise ValueError(f"litcore: '{name}': its scales' shape {list(scales.shape)} is no block grid over its "
                         f"shape {list(quantized.shape)}")
    m, n = rows // scale_rows, cols // scale_cols
    blocks = q.reshape(-1, scale_rows, m, scale_cols, n) * s.reshape(-1, scale_rows, 1, scale_cols, 1)
    return blocks.to(dtype).reshape(quantized.shape).contiguous()
