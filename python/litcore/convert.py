"""`litcore.convert`: safetensors files, Hugging Face model directories and torch state-dict
files to one litcore weight file, streaming: one tensor in memory at a time."""
from __future__ import annotations

import json
import os
import pickle
import re
import struct
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from litcore import dtypes
from litcore._native import FormatError, _C
from litcore.dequantize import dequantized_plans, directory_dequantization, plain_config
from litcore.dtypes import DTypeLike
from litcore.save import TensorPlan, base_metadata, plan_tensors, write_planned
from litcore.store import PathLike, Store

__all__ = ["convert", "natural_key", "open_state_dict", "source_plans", "source_sizes", "CONFIG_METADATA_KEY", "ORDER_METADATA_KEY"]

CONFIG_METADATA_KEY = "transformers.config"
# Which order a conversion wrote the tensors in: "model" (the order the model runs in),
# "source" (a .lit source's own), "given" (the caller's `order`) or "name" (natural name order).
ORDER_METADATA_KEY = "litcore.tensor_order"

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E5M2": torch.float8_e5m2, "F8_E4M3": torch.float8_e4m3fn,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64, "C64": torch.complex64,
}
if hasattr(torch, "float8_e8m0fnu"):
    _SAFETENSORS_DTYPES["F8_E8M0"] = torch.float8_e8m0fnu

_MAX_SAFETENSORS_HEADER = 100 << 20


def natural_key(name: str) -> List:
    """Sort key that puts "layers.10" after "layers.9" (module order for most models)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


class _SafetensorsFile:
    """The header of a .safetensors file: names, dtypes, shapes and absolute byte ranges.

    Parsed here rather than through `safetensors.safe_open`, whose memory map would keep
    every converted byte of the source resident; we stream with pread instead.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise FormatError(f"litcore: '{path}': not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_SAFETENSORS_HEADER or 8 + n > size:
                raise FormatError(f"litcore: '{path}': safetensors header length {n} is invalid for a {size}-byte file")
            try:
                header = json.loads(f.read(n))
            except ValueError as exc:
                raise FormatError(f"litcore: '{path}': safetensors header is not valid JSON ({exc})") from None
        self.metadata: Dict[str, str] = dict(header.pop("__metadata__", None) or {})
        self.entries: Dict[str, Tuple[torch.dtype, Tuple[int, ...], int, int]] = {}
        base = 8 + n
        for name, e in header.items():
            try:
                dtype = _SAFETENSORS_DTYPES[e["dtype"]]
                shape = tuple(int(d) for d in e["shape"])
                begin, end = (int(x) for x in e["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise FormatError(f"litcore: '{path}': tensor '{name}': unsupported or malformed entry {e!r}") from None
            numel = 1
            for d in shape:
                numel *= d
            nbytes = numel * dtype.itemsize
            if min(shape, default=0) < 0 or end - begin != nbytes or begin < 0 or base + end > size:
                raise FormatError(f"litcore: '{path}': tensor '{name}': byte range [{begin}, {end}) does not fit "
                                  f"{e['dtype']} {list(shape)} or the file")
            self.entries[name] = (dtype, shape, base + begin, nbytes)


def _safetensors_plans(files: Sequence[str], dtype: Optional[torch.dtype]) -> Tuple[List[TensorPlan], Dict[str, str], List[int]]:
    plans: List[TensorPlan] = []
    original: Dict[str, str] = {}
    fds: List[int] = []
    names = set()
    for path in files:
        st = _SafetensorsFile(path)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        fds.append(fd)
        for name, (src_dtype, shape, offset, nbytes) in st.entries.items():
            final = dtypes.converted(src_dtype, dtype)

            def read(fd: int = fd, offset: int = offset, nbytes: int = nbytes, src_dtype: torch.dtype = src_dtype,
                     shape: Tuple[int, ...] = shape, path: str = path) -> torch.Tensor:
                raw = torch.empty(nbytes, dtype=torch.uint8)
                got = os.preadv(fd, [raw.numpy()], offset) if nbytes else 0
                if got != nbytes:
                    raise OSError(f"litcore: '{path}' ended early ({got} of {nbytes} bytes)")
                return raw.view(src_dtype).reshape(shape)

            if final == src_dtype:
                def produce(w: "_C.Writer", i: int, fd: int = fd, offset: int = offset, nbytes: int = nbytes, path: str = path) -> None:
                    w.copy_from_fd(i, fd, offset, nbytes, path)
            else:
                original[name] = dtypes.name_of(src_dtype)

                def produce(w: "_C.Writer", i: int, read=read) -> None:
                    w.write(i, read().to(dtype).contiguous())
            if name in names:
                raise FormatError(f"litcore: tensor '{name}' appears in more than one shard ('{path}')")
            names.add(name)
            plans.append(TensorPlan(name, final, shape, produce=produce, read=read))
    return plans, original, fds


def open_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """A torch state-dict file (.bin/.pt) as name -> tensor without reading it whole: the
    tensors are views of the file mapped into memory (torch.load with mmap=True, weights_only),
    so a tensor's bytes are read when first touched. Raises ValueError naming the file when it
    is not a state dict or holds more than tensors (unsafe pickles are refused, not run)."""
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc) and "zip" not in str(exc):
                raise
            warnings.warn(f"'{path}' is in torch's legacy (non-zip) format and cannot be memory-mapped; "
                          "it is loaded whole", stacklevel=3)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, AttributeError, ModuleNotFoundError) as exc:
        # torch's message runs to a page of advice: keep its first line.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"litcore: '{path}' cannot be read as a state dict with weights_only=True "
                         f"(a damaged file, or one holding more than tensors): {reason}") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict) and not any(
            isinstance(v, torch.Tensor) for v in obj.values()):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"litcore: '{path}' does not hold a state dict (a dict of name -> tensor)")
    return obj


def _mapped_plans(items: List[Tuple[str, torch.Tensor]], dtype: Optional[torch.dtype]) -> Tuple[List[TensorPlan], Dict[str, str]]:
    """Plans tensors that are views of a mapped file: each one's pages are dropped once it
    is written, so a conversion never keeps its source resident. Ties stay ties."""
    plans, original = plan_tensors(items, dtype)
    for plan, (_, t) in zip(plans, items):
        plan.read = lambda t=t: t
        if plan.produce is not None:
            inner = plan.produce

            def produce(w: "_C.Writer", i: int, inner=inner, t: torch.Tensor = t) -> None:
                inner(w, i)
                _C.drop_pages(t)

            plan.produce = produce
    return plans, original


def _torch_plans(files: Sequence[str], dtype: Optional[torch.dtype]) -> Tuple[List[TensorPlan], Dict[str, str]]:
    items: List[Tuple[str, torch.Tensor]] = []
    for path in files:
        items.extend(open_state_dict(path).items())
    return _mapped_plans(items, dtype)


def _lit_plans(path: str, dtype: Optional[torch.dtype]) -> Tuple[List[TensorPlan], Dict[str, str], Store]:
    """A litcore file as a source (to change its dtype, or its order)."""
    store = Store(path)
    plans, original = _mapped_plans([(name, store[name]) for name in store.keys()], dtype)
    return plans, original, store


def source_sizes(src: PathLike, dtype: Optional[DTypeLike] = None) -> Dict[str, Tuple[str, int]]:
    """name -> (stored name, bytes) of every tensor at `src` (a model directory, a
    .safetensors, .bin/.pt or .lit file) as a conversion with `dtype` would store it, from
    the headers alone (nothing is read). Tied tensors in a .lit file share a stored name."""
    src = os.fspath(src)
    target = dtypes.resolve(dtype)
    out: Dict[str, Tuple[str, int]] = {}
    kind, files = _resolve_sources(src)
    if kind == "lit":
        with Store(src) as store:
            for name, info in store.infos().items():
                stored = info.alias_of or name
                size = store.info(stored)
                final = dtypes.converted(size.dtype, target)
                out[name] = (stored, size.nbytes // size.dtype.itemsize * final.itemsize if size.nbytes else 0)
        return out
    return {p.name: (p.name, p.nbytes) for p in source_plans(src, dtype)}


def source_plans(src: PathLike, dtype: Optional[DTypeLike] = None) -> List[TensorPlan]:
    """Every tensor of a model directory or a .safetensors or .bin/.pt file as a conversion
    with `dtype` would plan it (name, dtype, shape) before any model's layout, from the
    headers alone: these plans only describe, they cannot be written."""
    src = os.fspath(src)
    target = dtypes.resolve(dtype)
    kind, files = _resolve_sources(src)
    plans: List[TensorPlan] = []
    for path in files:
        if kind == "safetensors":
            for name, (src_dtype, shape, _, _) in _SafetensorsFile(path).entries.items():
                plans.append(TensorPlan(name, dtypes.converted(src_dtype, target), shape))
        elif kind == "torch":
            for name, t in open_state_dict(path).items():
                plans.append(TensorPlan(name, dtypes.converted(t.dtype, target), t.shape))
        else:
            raise ValueError(f"litcore: '{src}' is a .lit file: its tensors are in the model's layout already")
    dequantize_into = directory_dequantization(src)
    return plans if dequantize_into is None else dequantized_plans(plans, dequantize_into, target)


def _resolve_sources(src: str) -> Tuple[str, List[str]]:
    """('safetensors' | 'torch', files) for a file or a Hugging Face model directory."""
    if os.path.isdir(src):
        for index_name, kind in (("model.safetensors.index.json", "safetensors"), ("pytorch_model.bin.index.json", "torch")):
            index_path = os.path.join(src, index_name)
            if os.path.exists(index_path):
                with open(index_path) as f:
                    weight_map = json.load(f).get("weight_map", {})
                shards = sorted(set(weight_map.values()), key=natural_key)
                return kind, [os.path.join(src, s) for s in shards]
        found = sorted((f for f in os.listdir(src) if f.endswith(".safetensors")), key=natural_key)
        if found:
            return "safetensors", [os.path.join(src, f) for f in found]
        for name in ("pytorch_model.bin", "model.pt", "model.bin"):
            if os.path.exists(os.path.join(src, name)):
                return "torch", [os.path.join(src, name)]
        raise FileNotFoundError(f"litcore: no .safetensors or pytorch_model.bin weights in directory '{src}'")
    if not os.path.exists(src):
        raise FileNotFoundError(f"litcore: '{src}' does not exist")
    if src.endswith(".safetensors"):
        return "safetensors", [src]
    if src.endswith(".lit"):
        return "lit", [src]
    if src.endswith((".bin", ".pt", ".pth", ".ckpt")):
        return "torch", [src]
    raise ValueError(f"litcore: cannot tell the format of '{src}' (expected .safetensors, .bin, .pt, .pth or .lit, "
                     "or a model directory)")


def convert(src: PathLike, dst: PathLike, *, dtype: Optional[DTypeLike] = None, progress: bool = True,
            order: Optional[Sequence[str]] = None, metadata: Optional[Dict[str, str]] = None,
            model: Optional[torch.nn.Module] = None) -> str:
    """Converts weights at `src` to the litcore file `dst`; returns `dst`.

    `src` is a .safetensors file, a Hugging Face model directory (single or sharded
    safetensors, or pytorch_model.bin), a torch state-dict file (.bin/.pt, loaded with
    weights_only=True, mmap=True), or another .lit file (to change its dtype). Tensors are
    written in `order` if given (names not in it follow, in natural name order). Without it a
    model directory is written in its model's order (the order it runs in, so that what
    streams is one range of the file) where transformers can build the model its config.json
    describes, a .lit file keeps its own order, and the rest goes in natural name order. A
    model directory's config.json is kept in the metadata under "transformers.config".

    `model` (built empty: litcore.empty_init or the meta device) is the model the file is
    for: without `order` the file is in its order, and for a transformers model the
    checkpoint's tensors are renamed and fused as transformers does when it loads them
    (litcore.hf_checkpoint), so the file holds the model's names. A model directory gets the
    model its config.json describes.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    target = dtypes.resolve(dtype)
    kind, files = _resolve_sources(src)
    _C.check_destination(dst)  # before any work: a bad destination is named at once
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise ValueError(f"litcore: '{dst}' is the source itself: convert into another file")
    fds: List[int] = []
    source: Optional[Store] = None
    try:
        if kind == "safetensors":
            plans, original, fds = _safetensors_plans(files, target)
        elif kind == "lit":
            plans, original, source = _lit_plans(files[0], target)
        else:
            plans, original = _torch_plans(files, target)
        dequantize_into = directory_dequantization(src)
        if dequantize_into is not None:
            plans = dequantized_plans(plans, dequantize_into, target, original)
        if model is None and source is None:
            model = _directory_model(src)
        if model is not None:
            from litcore.hf_checkpoint import to_model_layout

            plans = to_model_layout(plans, model, target, original)
        order_kind = "given"
        if order is None and model is not None:
            order, order_kind = list(model.state_dict(keep_vars=True)), "model"
        elif order is None:
            order, order_kind = _default_order(source)
        rank = {name: i for i, name in enumerate(order or [])}
        fallback = len(rank)
        plans = _reorder(plans, lambda p: (rank.get(p.name, fallback), natural_key(p.name)))
        meta = {}
        if source is not None:  # a .lit source keeps what it carries (its model's config)
            meta.update({k: v for k, v in source.metadata.items() if not k.startswith("litcore.")})
        meta.update({"litcore.source": os.path.basename(os.path.normpath(src)), "litcore.source_format": kind,
                     ORDER_METADATA_KEY: order_kind})
        config = os.path.join(src, "config.json") if os.path.isdir(src) else None
        if config and os.path.exists(config):
            with open(config) as f:
                meta[CONFIG_METADATA_KEY] = f.read()
            if dequantize_into is not None:  # the file holds plain weights: its model is the plain one
                meta[CONFIG_METADATA_KEY] = json.dumps(plain_config(json.loads(meta[CONFIG_METADATA_KEY]), src), indent=2)
        meta.update(metadata or {})
        write_planned(dst, plans, base_metadata(meta, original), progress=progress,
                      desc=f"convert {os.path.basename(os.path.normpath(src))}")
    finally:
        for fd in fds:
            os.close(fd)
        if source is not None:
            source.close()
    return dst


def _directory_model(src: str) -> Optional[torch.nn.Module]:
    """The model a transformers directory's config.json describes, built empty, or None (no
    such directory, no transformers, or a warning says why it could not be built)."""
    if os.path.isdir(src) and os.path.exists(os.path.join(src, "config.json")):
        from litcore.hf import directory_model

        return directory_model(src)
    return None


def _default_order(source: Optional[Store]) -> Tuple[Optional[Sequence[str]], str]:
    """The order a conversion without a model writes (see `convert`), and its kind for
    ORDER_METADATA_KEY; None: natural name order."""
    if source is not None:
        return source.keys(), source.metadata.get(ORDER_METADATA_KEY, "source")
    return None, "name"


def _reorder(plans: List[TensorPlan], key) -> List[TensorPlan]:
    """Sorts plans, keeping every alias after (and pointing at) its target."""
    order = sorted(range(len(plans)), key=lambda i: key(plans[i]))
    stored = [i for i in order if plans[i].alias_of < 0]
    aliases = [i for i in order if plans[i].alias_of >= 0]
    new_index = {old: new for new, old in enumerate(stored + aliases)}
    out = []
    for old in stored + aliases:
        p = plans[old]
        if p.alias_of >= 0:
            p.alias_of = new_index[p.alias_of]
        out.append(p)
    return out
