"""Hugging Face transformers integration: `litcore.from_pretrained` and `plan_pretrained`."""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from typing import Any, Dict, List, Optional, Tuple, Type, Union

from litcore import dtypes
from litcore.binding import unit_spec
from litcore.budget import Budget, resolve_budget
from litcore.convert import CONFIG_METADATA_KEY, _resolve_sources, convert, source_plans, source_sizes
from litcore.dequantize import DEQUANTIZED_METHODS, plain_config, quantization_method
from litcore.dtypes import DTypeLike
from litcore.empty_init import empty_init
from litcore.engine import DEFAULT_VERIFY, check_verify
from litcore.lit_module import LitModule
from litcore.residency import Plan, Unit, make_plan, read_group_bytes
from litcore.store import PathLike, Store

__all__ = ["from_pretrained", "plan_pretrained", "convert_pretrained", "config_from_lit", "model_class_for",
           "model_order", "directory_model", "default_cache_dir"]

CONVERT_DTYPE_KEY = "litcore.convert_dtype"
SOURCE_KEY = "litcore.source_signature"
# Raised when what a conversion of the same source writes changes: caches made before are
# converted again. 2: checkpoint tensors renamed and fused as transformers loads them.
_CONVERSION_VERSION = 2


def default_cache_dir() -> str:
    """Where conversions are cached: $LITCORE_CACHE, else $XDG_CACHE_HOME/litcore, else
    ~/.cache/litcore."""
    if os.environ.get("LITCORE_CACHE"):
        return os.environ["LITCORE_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "litcore")


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


def _cache_path(src: str, cache_dir: Optional[str], dtype: Optional[str]) -> str:
    """One cached conversion per source path and dtype, in the cache directory."""
    src = os.path.abspath(src)
    tag = hashlib.sha256(src.encode()).hexdigest()[:12]
    name = os.path.basename(os.path.normpath(src)).removesuffix(".lit")
    directory = cache_dir or default_cache_dir()
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, f"{name}-{tag}" + (f".{dtype}" if dtype else "") + ".lit")


def _signature(src: str) -> str:
    """What identifies a source: its weight files' and config's names, sizes and mtimes, and
    the conversion's version."""
    kind, files = _resolve_sources(src)
    if os.path.isdir(src) and os.path.exists(os.path.join(src, "config.json")):
        files = files + [os.path.join(src, "config.json")]
    entries = []
    for f in files:
        st = os.stat(f)
        entries.append([os.path.basename(f), st.st_size, st.st_mtime_ns])
    return json.dumps({"conversion": _CONVERSION_VERSION, "files": entries})


def _stamp_path(cached: str) -> str:
    return cached + ".stamp"


def _stamp(cached: str) -> str:
    """The cached file as written: its size and modification time."""
    st = os.stat(cached)
    return json.dumps([st.st_size, st.st_mtime_ns])


def _reusable(cached: str, src: str, verify: str) -> bool:
    """True when `cached` was converted from `src` as it is now and is intact. A cache that
    changed since litcore wrote it (its stamp differs), or any cache when `verify="full"`, is
    checksummed first (unless verify is "none"); a corrupt one is removed with a warning."""
    if not os.path.exists(cached):
        return False
    stamp = _stamp_path(cached)
    written = None
    if os.path.exists(stamp):
        with open(stamp) as f:
            written = f.read()
    check = verify == "full" or (verify != "none" and written != _stamp(cached))
    try:
        with Store(cached) as store:
            if store.metadata.get(SOURCE_KEY) != _signature(src):
                return False
            bad = store.verify() if check else []
    except (ValueError, OSError) as exc:
        bad = [str(exc)]
    if bad:
        warnings.warn(f"litcore: the cached conversion '{cached}' is corrupt ({', '.join(bad[:3])}); "
                      f"converting '{src}' again", stacklevel=3)
        os.unlink(cached)
        return False
    if check:
        with open(stamp, "w") as f:  # checked as it is now
            f.write(_stamp(cached))
    return True


def _converted(src: str, cache_dir: Optional[str], dtype: Optional[DTypeLike], verify: str, progress: bool,
               model: Any = None) -> str:
    """The cached conversion of `src` (with `dtype`, for `model` built empty), made if
    missing, stale or corrupt."""
    dtype_name = dtypes.name_of(dtypes.resolve(dtype)) if dtype is not None else None
    cached = _cache_path(src, cache_dir, dtype_name)
    if not _reusable(cached, src, verify):
        metadata = {CONVERT_DTYPE_KEY: dtype_name or "as-is", SOURCE_KEY: _signature(src)}
        convert(src, cached, dtype=dtype, progress=progress, metadata=metadata, model=model)
        with open(_stamp_path(cached), "w") as f:
            f.write(_stamp(cached))
    return cached


def _lit_needs(path: str, dtype: Optional[DTypeLike]) -> bool:
    """True when the .lit file holds floating-point tensors of another dtype than `dtype`."""
    target = dtypes.resolve(dtype)
    if target is None:
        return False
    with Store(path) as store:
        return any(dtypes.converted(i.dtype, target) != i.dtype for i in store.infos().values())


def from_pretrained(model_dir_or_lit: PathLike, *, dtype: Optional[DTypeLike] = None,
                    cache_dir: Optional[PathLike] = None, memory_budget: Budget = "auto",
                    model_class: Optional[Type] = None, config: Any = None, progress: bool = True,
                    device: str = "cpu", gpu_memory_budget: Budget = "auto", strict: bool = True, threads: int = 1,
                    read_mode: str = "buffer", verbose: bool = False,
                    verify: Union[str, bool, None] = None, narrow_compute: bool = False) -> LitModule:
    """A ready LitModule for a transformers model directory (config.json + safetensors or
    pytorch_model.bin) or a .lit file converted from one.

    A directory is converted once, in the model's own parameter order and layout (its
    checkpoint renamed and fused as transformers loads it: litcore.hf_checkpoint), into `cache_dir`
    (default: `default_cache_dir()`, ~/.cache/litcore) and reused while it matches its
    source (weight files' names, sizes and mtimes). A cache that changed since it was
    written is checksummed before reuse (always with `verify="full"`; never with
    `verify="none"`), and a corrupt one is converted again with a warning.
    `verify` is otherwise LitModule.from_params's (default "none"). `dtype` converts
    floating-point weights (a .lit file of another dtype is converted into the cache too).
    `model_class` and `config` override what config.json names. An FP8 or MXFP4 checkpoint
    is converted to the plain weights transformers dequantizes it into (litcore.dequantize);
    one quantized any other way raises ValueError before anything is converted. The other
    options are LitModule.from_params's.
    """
    check_cache = "full" if verify is None else check_verify(verify)  # a cache is checked unless asked not to
    verify = DEFAULT_VERIFY if verify is None else check_verify(verify)
    src = os.fspath(model_dir_or_lit)
    cache = os.fspath(cache_dir) if cache_dir is not None else None
    if os.path.isdir(src):
        config, model_class = _config_and_class(src, config, model_class)
        lit_path = _converted(src, cache, dtype, check_cache, progress, _skeleton(model_class, config))
    else:
        if not os.path.exists(src):
            raise FileNotFoundError(f"litcore: '{src}' does not exist (expected a model directory or a .lit file)")
        lit_path = _converted(src, cache, dtype, check_cache, progress) if _lit_needs(src, dtype) else src
        config, model_class = _config_and_class(lit_path, config, model_class)

    return LitModule.from_params(lit_path, lambda: _build(model_class, config), memory_budget=memory_budget,
                                 device=device, gpu_memory_budget=gpu_memory_budget, strict=strict, threads=threads,
                                 read_mode=read_mode, verbose=verbose, verify=verify, narrow_compute=narrow_compute)


def _skeleton(model_class: Type, config: Any):
    """The model built empty: its names, shapes, order and transformers' conversion tables."""
    with empty_init():
        return model_class(config)


def model_order(model_class: Type, config: Any) -> List[str]:
    """The model's parameter and buffer names in the order it registers them (roughly the
    order it runs them): the order conversions write tensors in."""
    return list(_skeleton(model_class, config).state_dict(keep_vars=True))


def directory_model(model_dir: PathLike):
    """The model a transformers directory's config.json describes, built empty (what
    `litcore.convert` writes that directory for: in its order, under its names), or None
    where transformers is not installed, cannot build that model, or the checkpoint is
    pre-quantized by a method litcore does not dequantize (litcore.dequantize): the weights
    then convert as the files hold them, in name order under the
    checkpoint's names, and a warning says why where transformers is installed."""
    src = os.fspath(model_dir)
    try:
        from transformers import AutoConfig
    except ImportError:
        return None
    try:
        config = AutoConfig.from_pretrained(src)
        method = quantization_method(config)
        if method is None or method in DEQUANTIZED_METHODS:
            return _skeleton(model_class_for(config), plain_config(config, src))
        reason = f"the checkpoint is pre-quantized (config.json's quantization_config: '{method}')"
    except Exception as exc:  # any failure to build the model: convert what the files hold
        reason = f"transformers could not build the model its config.json describes ({type(exc).__name__}: {exc})"
    warnings.warn(f"litcore: '{src}': tensors written in name order under the checkpoint's names, not the model's: "
                  f"{reason}", stacklevel=4)
    return None


def convert_pretrained(model_dir: PathLike, dst: PathLike, *, dtype: Optional[DTypeLike] = None,
                       progress: bool = True) -> str:
    """Converts a transformers model directory to the .lit file `dst` for the model its
    config.json describes (in its order, under its names), with its config; returns `dst`.
    (`from_pretrained` does this into its cache.)"""
    from transformers import AutoConfig

    src = os.fspath(model_dir)
    config = plain_config(AutoConfig.from_pretrained(src), src)
    return convert(src, dst, dtype=dtype, progress=progress, model=_skeleton(model_class_for(config), config))


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


def _config_and_class(src: str, config: Any, model_class: Optional[Type]) -> Tuple[Any, Type]:
    """The model's config (given, from a model directory, or from a .lit file's metadata) and
    its transformers class."""
    if config is None:
        if os.path.isdir(src):
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(src)
        else:
            config = config_from_lit(src)
    return plain_config(config, src), model_class or model_class_for(config)


def plan_pretrained(model_dir_or_lit: PathLike, *, memory_budget: Budget = "auto", dtype: Optional[DTypeLike] = None,
                    model_class: Optional[Type] = None, config: Any = None) -> Plan:
    """A dry run: the plan `from_pretrained` would start with under `memory_budget` (which
    modules stay resident, stream, or are read by lookup, with bytes), from the weight
    files' headers and the model's structure; nothing is converted or read. The first
    forward may refine it (it learns the execution order)."""
    src = os.fspath(model_dir_or_lit)
    config, model_class = _config_and_class(src, config, model_class)
    with empty_init():
        skeleton = _build(model_class, config)
    if os.path.isdir(src):  # the names and sizes a conversion for this model stores
        from litcore.hf_checkpoint import to_model_layout

        plans = to_model_layout(source_plans(src, dtype), skeleton, dtypes.resolve(dtype))
        sizes = {p.name: (p.name, p.nbytes) for p in plans}
    else:
        sizes = source_sizes(src, dtype)
    specs, tensors = _skeleton_units(skeleton, sizes)
    from litcore._native import _C

    units = [Unit(*u) for u in _C.units_of_tensors(specs, tensors)]
    budget = resolve_budget(memory_budget)
    order = list(range(len(units)))
    layout = _layout(src, dtype, skeleton, tensors)
    ranges = [[layout[tensors[k][0]] for k in spec[1]] for spec in specs]
    return make_plan(units, order, budget, read_group_bytes=read_group_bytes(units, order, ranges, budget))


def _layout(src: str, dtype: Optional[DTypeLike], skeleton, tensors: Dict[str, Tuple[str, int]]) -> Dict[str, Tuple[int, int]]:
    """Stored name -> (offset, bytes) in the file from_pretrained would run: the .lit file
    itself, or a conversion, which lays tensors out in the model's order, 4096-aligned."""
    if src.endswith(".lit") and not _lit_needs(src, dtype):
        with Store(src) as store:
            infos = store.infos()
            return {stored: (infos[stored].offset, infos[stored].nbytes) for stored, _ in tensors.values()}
    layout: Dict[str, Tuple[int, int]] = {}
    offset = 0
    for name in skeleton.state_dict(keep_vars=True):
        if name in tensors and tensors[name][0] not in layout:
            nbytes = tensors[name][1]
            layout[tensors[name][0]] = (offset, nbytes)
            offset += (nbytes + 4095) // 4096 * 4096
    return layout


def plan_pretrained_stages(model_dir_or_lit: PathLike, stages: int, *, split=None, memory_budget: Budget = "auto",
                           model_class: Optional[Type] = None, config: Any = None):
    """A dry run of a distributed run in `stages` stages (litcore.stages.plan_stages) for a
    transformers model directory or a .lit file converted from one: each stage's layers,
    modules, bytes and plan under `memory_budget`."""
    from litcore.stages import plan_stages

    src = os.fspath(model_dir_or_lit)
    config, model_class = _config_and_class(src, config, model_class)
    return plan_stages(src, lambda: _build(model_class, config), stages, split=split, memory_budget=memory_budget)


def _skeleton_units(root, sizes: Dict[str, Tuple[str, int]]) -> Tuple[list, Dict[str, Tuple[str, int]]]:
    """The engine's units for a model built empty, with each tensor's stored name and size
    from `sizes` (tied parameters resolve to the name the file stores)."""
    stored: Dict[int, str] = {}  # tensor identity -> the name its bytes are stored under
    for name, t in root.state_dict(keep_vars=True).items():
        if name in sizes and id(t) not in stored:
            stored[id(t)] = sizes[name][0]
    specs, tensors = [], {}
    for prefix, module in root.named_modules():
        keys, has_buffers = [], False
        owned = list(module._parameters.items()) + [(n, b) for n, b in module._buffers.items()
                                                     if n not in module._non_persistent_buffers_set]
        for attr, t in owned:
            if t is None or id(t) not in stored:
                continue
            key = f"{prefix}.{attr}" if prefix else attr
            canonical = stored[id(t)]
            tensors[key] = (canonical, sizes[canonical][1])
            keys.append(key)
            has_buffers = has_buffers or attr in module._buffers
        if keys:
            specs.append(unit_spec(root, prefix, module, keys, has_buffers))
    return specs, tensors
