"""Hugging Face transformers integration: `litcore.from_pretrained`."""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Type

from litcore import dtypes
from litcore.budget import Budget
from litcore.convert import CONFIG_METADATA_KEY, convert
from litcore.dtypes import DTypeLike
from litcore.empty_init import empty_init
from litcore.lit_module import LitModule
from litcore.store import PathLike, Store

__all__ = ["from_pretrained", "config_from_lit", "model_class_for"]

CONVERT_DTYPE_KEY = "litcore.convert_dtype"


def config_from_lit(path: PathLike):
    """The transformers config stored in a .lit file converted from a model directory."""
    from transformers import AutoConfig

    with Store(path) as store:
        raw = store.metadata.get(CONFIG_METADATA_KEY)
    if raw is None:
        raise ValueError(f"litcore: '{os.fspath(path)}' holds no transformers config; pass the model directory, or config=")
    data = json.loads(raw)
    return AutoConfig.for_model(data.pop("model_type"), **data)


def model_class_for(config) -> Type:
    """The model class a config's `architectures` names, else AutoModelForCausalLM's choice."""
    import transformers

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM._model_mapping[type(config)]


def _cached_lit(model_dir: str, cache_dir: Optional[str], dtype: Optional[str]) -> str:
    name = "model" + (f".{dtype}" if dtype else "") + ".lit"
    if cache_dir is None:
        if os.access(model_dir, os.W_OK):
            return os.path.join(model_dir, name)
        cache_dir = os.path.join(os.path.expanduser("~"), ".cache", "litcore")
    os.makedirs(cache_dir, exist_ok=True)
    return os.path.join(cache_dir, os.path.basename(os.path.normpath(model_dir)) + "." + name)


def _is_fresh(lit_path: str, model_dir: str) -> bool:
    if not os.path.exists(lit_path):
        return False
    newest = max(os.path.getmtime(os.path.join(model_dir, f)) for f in os.listdir(model_dir)
                 if f.endswith((".safetensors", ".bin", ".json")))
    return os.path.getmtime(lit_path) >= newest


def from_pretrained(model_dir_or_lit: PathLike, *, dtype: Optional[DTypeLike] = None, cache_dir: Optional[PathLike] = None,
                    memory_budget: Budget = "auto", model_class: Optional[Type] = None, config: Any = None,
                    progress: bool = True, **options: Any) -> LitModule:
    """A ready LitModule for a transformers model directory (config.json + safetensors or
    pytorch_model.bin) or a .lit file converted from one.

    A directory is converted once, in the model's own parameter order, to
    `model[.DTYPE].lit` beside it (or in `cache_dir`, or ~/.cache/litcore when the directory
    is read-only) and reused while it is newer than the source files.
    """
    from transformers import AutoConfig

    src = os.fspath(model_dir_or_lit)
    dtype_name = dtypes.name_of(dtypes.resolve(dtype)) if dtype is not None else None
    if os.path.isdir(src):
        config = config or AutoConfig.from_pretrained(src)
        model_class = model_class or model_class_for(config)
        lit_path = _cached_lit(src, os.fspath(cache_dir) if cache_dir else None, dtype_name)
        if not _is_fresh(lit_path, src):
            with empty_init():
                skeleton = model_class(config)
            order = [n for n, _ in skeleton.state_dict(keep_vars=True).items()]
            del skeleton
            convert(src, lit_path, dtype=dtype, progress=progress, order=order,
                    metadata={CONVERT_DTYPE_KEY: dtype_name or "as-is"})
    else:
        lit_path = src
        config = config or config_from_lit(lit_path)
        model_class = model_class or model_class_for(config)

    return LitModule.from_params(lit_path, lambda: _build(model_class, config), memory_budget=memory_budget, **options)


def _build(model_class: Type, config: Any):
    """The model, without transformers' weight initialisation: every parameter is about to
    be bound to the file, and initialising meta tensors still costs ~0.2 s for 1B params."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        return model_class(config)
    with no_init_weights():  # skips init_weights(), which also ties weights: tie them here
        model = model_class(config)
    model.tie_weights()
    return model
