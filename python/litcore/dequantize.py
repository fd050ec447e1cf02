"""A pre-quantized checkpoint's tensors as the plain weights its model holds.

transformers, on a machine without a GPU, loads two kinds of pre-quantized checkpoints by
dequantizing them into the model's dtype and building the model's plain layers, without its
quantization_config: FP8 (quant_method "fp8": each float8 weight beside a per-block
`weight_scale_inv`; DeepSeek-V3, the Qwen3 FP8 releases) and MXFP4 (quant_method "mxfp4":
an MoE layer's experts as `<name>_blocks`, two 4-bit values per byte, and `<name>_scales`,
one power-of-two exponent per 32 values; gpt-oss). litcore does the same, once, when it
converts the checkpoint: the .lit file holds the plain weights (bfloat16 is twice float8's
bytes, four times MXFP4's) under the model's names, and the model runs as transformers runs
it, `torch.equal` to it. Each weight is dequantized as it is written, and MXFP4 experts one
expert at a time, so a conversion holds one layer's quantized tensor in memory at most.
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
DEQUANTIZED_METHODS = ("fp8", "mxfp4")
SCALE_SUFFIX = "_scale_inv"  # FP8: "layers.0.mlp.up_proj.weight" -> "layers.0.mlp.up_proj.weight_scale_inv"
BLOCKS_SUFFIX, EXPONENTS_SUFFIX = "_blocks", "_scales"  # MXFP4: "experts.down_proj" <- "experts.down_proj_blocks"...
# The 16 values of a 4-bit E2M1 code (sign, 2 exponent bits, 1 mantissa bit).
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
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
                         f"converts {' and '.join(repr(m) for m in DEQUANTIZED_METHODS)} checkpoints to them; use "
                         f"the model's unquantized checkpoint")
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
    """`plans` with each float8 tensor that has a `<name>_scale_inv` beside it, and each pair
    `<name>_blocks` + `<name>_scales` (MXFP4), dequantized into `into` (then stored in
    `target`, if given, as any floating-point tensor), their scales and any static activation
    scales dropped. Plans that only describe (no `read`) stay so. `original` (name -> dtype
    before conversion) gets the quantized tensors' dtype. A float8 tensor without scales
    raises ValueError naming it."""
    by_name = {p.name: p for p in plans}
    final = dtypes.converted(into, target)
    out: List[TensorPlan] = []
    for plan in plans:
        if plan.name.endswith(SCALE_SUFFIX) and plan.name[:-len(SCALE_SUFFIX)] in by_name:
            continue
        if plan.name.endswith(DROPPED_SUFFIXES):
            continue
        if plan.name.endswith(EXPONENTS_SUFFIX) and plan.name[:-len(EXPONENTS_SUFFIX)] + BLOCKS_SUFFIX in by_name:
            continue
        if plan.name.endswith(BLOCKS_SUFFIX):
            exponents = by_name.get(plan.name[:-len(BLOCKS_SUFFIX)] + EXPONENTS_SUFFIX)
            if exponents is not None:
                if original is not None:
                    original[plan.name[:-len(BLOCKS_SUFFIX)]] = "mxfp4"
                out.append(_mxfp4_dequantized(plan, exponents, final))
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


def _mxfp4_dequantized(blocks: TensorPlan, exponents: TensorPlan, dtype: torch.dtype) -> TensorPlan:
    name = blocks.name[:-len(BLOCKS_SUFFIX)]
    if len(blocks.shape) != 4 or tuple(exponents.shape) != tuple(blocks.shape[:3]):
        raise ValueError(f"litcore: checkpoint tensors '{blocks.name}' {list(blocks.shape)} and '{exponents.name}' "
                         f"{list(exponents.shape)} are not MXFP4 experts (blocks [experts, rows, groups, 16], "
                         "scales [experts, rows, groups])")
    experts, rows, groups, width = blocks.shape
    shape = (experts, groups * width * 2, rows)  # the model's layout: [experts, in, out]
    if blocks.read is None or exponents.read is None:
        return TensorPlan(name, dtype, shape)

    def read() -> torch.Tensor:
        return dequantize_mxfp4(blocks.read(), exponents.read(), dtype, name)

    def produce(writer, i: int) -> None:
        packed, scales = blocks.read(), exponents.read()
        for e in range(experts):  # one expert's bf16 at a time beside the packed layer
            writer.append(i, dequantize_mxfp4(packed[e:e + 1], scales[e:e + 1], dtype, name))

    return TensorPlan(name, dtype, shape, produce=produce, read=read)


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype, name: str = "tensor") -> torch.Tensor:
    """MXFP4 experts: `blocks` [experts, rows, groups, 16] bytes, each two E2M1 codes (low
    nibble first), `scales` [experts, rows, groups] exponents biased by 127, one per 32
    values; into `dtype` as [experts, groups * 32, rows], the layout of the model's experts,
    as transformers computes it (each value exact: a code times a power of two)."""
    if blocks.dim() != 4 or tuple(blocks.shape[:-1]) != tuple(scales.shape):
        raise ValueError(f"litcore: '{name}': MXFP4 blocks {list(blocks.shape)} do not match scales "
                         f"{list(scales.shape)}")
    codes = blocks.to(torch.uint8).reshape(-1, blocks.shape[-1])
    lut = torch.tensor(FP4_VALUES, dtype=dtype)
    out = torch.empty(codes.shape[0], codes.shape[1] * 2, dtype=dtype)
    out[:, 0::2] = lut[(codes & 0x0F).to(torch.int)]
    out[:, 1::2] = lut[(codes >> 4).to(torch.int)]
    torch.ldexp(out, scales.to(torch.int32).reshape(-1, 1) - 127, out=out)
    experts, rows, groups, width = blocks.shape
    return out.reshape(experts, rows, groups * width * 2).transpose(1, 2).contiguous()
