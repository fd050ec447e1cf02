"""Writes docs/api.md from the public API's signatures and docstrings:
`python docs/make_api.py` (the test suite checks that docs/api.md is current)."""
from __future__ import annotations

import inspect
import os
import sys
from typing import List

import litcore
import litcore.budget
import litcore.distributed
import litcore.hf
import litcore.jit
import litcore.residency
import litcore.stages
import pytorch_lit

# (heading, [(name users call it by, object)]): every public function and class, in reading order.
SECTIONS = [
    ("Loading and running models", [
        ("litcore.LitModule.from_params", litcore.LitModule.from_params),
        ("litcore.from_pretrained", litcore.hf.from_pretrained),
        ("litcore.LitModule", litcore.LitModule),
        ("litcore.LitModule.plan", litcore.LitModule.plan),
        ("litcore.LitModule.stats", litcore.LitModule.stats),
        ("litcore.LitModule.close", litcore.LitModule.close),
        ("litcore.plan_pretrained", litcore.hf.plan_pretrained),
    ]),
    ("Weight files", [
        ("litcore.save", litcore.save),
        ("litcore.convert", litcore.convert),
        ("litcore.hf.convert_pretrained", litcore.hf.convert_pretrained),
        ("litcore.Store", litcore.Store),
        ("litcore.Store.keys", litcore.Store.keys),
        ("litcore.Store.info", litcore.Store.info),
        ("litcore.Store.infos", litcore.Store.infos),
        ("litcore.Store.prefetch", litcore.Store.prefetch),
        ("litcore.Store.release", litcore.Store.release),
        ("litcore.Store.verify", litcore.Store.verify),
        ("litcore.Store.close", litcore.Store.close),
        ("litcore.TensorInfo", litcore.TensorInfo),
    ]),
    ("TorchScript", [("litcore.jit.save", litcore.jit.save), ("litcore.jit.load", litcore.jit.load)]),
    ("Distributed stages (docs/distributed.md)", [
        ("litcore.distributed.from_params", litcore.distributed.from_params),
        ("litcore.distributed.LitStage", litcore.distributed.LitStage),
        ("litcore.distributed.LitStage.generate", litcore.distributed.LitStage.generate),
        ("litcore.distributed.LitStage.stats", litcore.distributed.LitStage.stats),
        ("litcore.distributed.LitStage.close", litcore.distributed.LitStage.close),
        ("litcore.distributed.StageError", litcore.distributed.StageError),
        ("litcore.stages.plan_stages", litcore.stages.plan_stages),
        ("litcore.stages.split_model", litcore.stages.split_model),
        ("litcore.hf.plan_pretrained_stages", litcore.hf.plan_pretrained_stages),
    ]),
    ("Building models without memory", [("litcore.empty_init", litcore.empty_init)]),
    ("Budgets and plans", [
        ("litcore.budget.parse_size", litcore.budget.parse_size),
        ("litcore.budget.auto_budget", litcore.budget.auto_budget),
        ("litcore.budget.cgroup_limit", litcore.budget.cgroup_limit),
        ("litcore.budget.machine_memory", litcore.budget.machine_memory),
        ("litcore.residency.Plan", litcore.residency.Plan),
        ("litcore.residency.make_plan", litcore.residency.make_plan),
        ("litcore.hf.default_cache_dir", litcore.hf.default_cache_dir),
    ]),
    ("Errors", [
        ("litcore.FormatError", litcore.FormatError),
        ("litcore.WeightsMismatchError", litcore.WeightsMismatchError),
        ("litcore.BudgetTooSmallError", litcore.BudgetTooSmallError),
    ]),
    ("PyTorch-LIT compatibility", [
        ("pytorch_lit.LitModule.from_params", pytorch_lit.LitModule.from_params),
        ("pytorch_lit.prepare_params", pytorch_lit.prepare_params),
        ("pytorch_lit.PartialLoader", pytorch_lit.PartialLoader),
        ("pytorch_lit.PartialLoader.read_key", pytorch_lit.PartialLoader.read_key),
    ]),
]

HEADER = """# API reference

Generated from the docstrings by `python docs/make_api.py`; the command line is in the
README (`litcore --help`), the C++ API in [cpp.md](cpp.md), TorchScript in
[torchscript.md](torchscript.md), how a forward runs in [architecture.md](architecture.md).
"""


def _signature(obj) -> str:
    if isinstance(obj, property):
        return ""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    def annotation(a) -> str:
        return a if isinstance(a, str) else inspect.formatannotation(a)

    parts, star = [], False
    for p in sig.parameters.values():
        if p.kind == p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        text = ("**" if p.kind == p.VAR_KEYWORD else "*" if p.kind == p.VAR_POSITIONAL else "") + p.name
        if star is False and p.kind == p.VAR_POSITIONAL:
            star = True
        if p.annotation is not p.empty and not inspect.isclass(obj):
            text += f": {annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}"
        parts.append(text)
    ret = "" if inspect.isclass(obj) or sig.return_annotation is sig.empty else f" -> {annotation(sig.return_annotation)}"
    return "(" + ", ".join(parts) + ")" + ret


def render() -> str:
    lines: List[str] = [HEADER]
    for heading, objects in SECTIONS:
        lines.append(f"## {heading}\n")
        for name, obj in objects:
            kind = "property " if isinstance(obj, property) else "class " if inspect.isclass(obj) else ""
            lines.append(f"### `{kind}{name}{_signature(obj)}`\n")
            doc = inspect.getdoc(obj.fget if isinstance(obj, property) else obj) or "(undocumented)"
            lines.append(doc.strip() + "\n")
    return "\n".join(lines)


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "api.md")
    with open(target, "w") as f:
        f.write(render())
    print(f"wrote {target}")
