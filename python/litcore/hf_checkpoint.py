"""A transformers checkpoint's tensors under the names, and in the layout, its model has.

transformers (5 and later) transforms a checkpoint as it loads it: it renames tensors (a
GPT-NeoX checkpoint's `embed_out` is the model's `lm_head`), adds or strips the base model's
prefix, and fuses some (a mixture-of-experts layer stores one `w1`/`w3` per expert, the model
one `experts.gate_up_proj` for all of them), and it saves the checkpoint's layout back.
litcore binds a file's tensors to the model by name, so a conversion for a transformers model
applies the same transforms, from transformers' own tables, once: the .lit file then holds
exactly what the model holds, and nothing is transformed while the model runs. Experts
stacked into one tensor (and gate and up concatenated) are written expert by expert, one
source tensor in memory at a time: a Mixtral 8x7B layer's `gate_up_proj` is 1.9 GB in bf16,
a DeepSeek-V3 layer's 15 GB. Other fused or split tensors are computed in memory when they are
written, as transformers computes them when it loads: one converter's sources and results at
a time.
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, List, Optional, Tuple

import torch

from litcore import dtypes
from litcore.save import TensorPlan

__all__ = ["to_model_layout"]


def _transforms(model) -> Optional[tuple]:
    """(renamings, converters, helpers) transformers applies when loading into `model`, or
    None where this transformers has no conversion tables (before 5) or `model` is not one
    of its models."""
    try:
        from transformers import PreTrainedModel
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key
    except ImportError:
        return None
    if not isinstance(model, PreTrainedModel):
        return None
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    return renamings, converters, rename_source_key, dot_natural_key


class _Group:
    """The checkpoint tensors one converter turns into one or more of the model's (`first`,
    the model name the sources were renamed to, and any others it splits into): computed
    once, when the first of its outputs is written, and handed out one by one."""

    def __init__(self, template, model, first: str) -> None:
        self.template = template
        self.model = model
        self.first = first
        self.sources: List[Tuple[TensorPlan, str]] = []  # (a checkpoint tensor, its pattern in the converter)
        self.ready: Dict[str, torch.Tensor] = {}

    def _run(self, read: Callable[[TensorPlan], Callable[[], torch.Tensor]]) -> Dict[str, torch.Tensor]:
        converter = copy.deepcopy(self.template)
        for plan, pattern in self.sources:
            converter.add_tensor(self.first, plan.name, pattern, read(plan))
        out = converter.convert(self.first, model=self.model, config=self.model.config)
        return {k: (v[0] if isinstance(v, list) else v) for k, v in out.items()}

    def shapes(self) -> Dict[str, torch.Tensor]:
        """The outputs on the meta device: their names, dtypes and shapes, nothing read."""
        return self._run(lambda p: (lambda p=p: torch.empty(p.shape, dtype=p.dtype, device="meta")))

    def stacks(self) -> bool:
        """True when the converter stacks each pattern's tensors along a new first dimension
        and, with several patterns, concatenates the stacks along the next one (an MoE
        layer's experts): its one output is then each expert's sources one after another,
        and is written piece by piece (`write_pieces`), never whole in memory."""
        from transformers.core_model_loading import Concatenate, MergeModulelist

        ops = self.template.operations
        if not ops or not isinstance(ops[0], MergeModulelist) or ops[0].dim != 0:
            return False
        if len(ops) == 1:
            return len({pattern for _, pattern in self.sources}) == 1
        return len(ops) == 2 and isinstance(ops[1], Concatenate) and ops[1].dim == 1

    def write_pieces(self, writer, i: int, plan: TensorPlan) -> None:
        """Appends the output's bytes expert by expert: for each expert, each pattern's source
        in the converter's pattern order (what Concatenate keeps), in `plan`'s dtype."""
        by_pattern: Dict[str, List[TensorPlan]] = {}
        for source, pattern in self.sources:
            by_pattern.setdefault(pattern, []).append(source)
        patterns = [p for p in self.template.source_patterns if p in by_pattern]
        experts = {len(v) for v in by_pattern.values()}
        if len(experts) != 1:
            raise ValueError(f"litcore: '{plan.name}': its sources {[s.name for s, _ in self.sources]} differ in number "
                             "per pattern")
        written = 0
        for e in range(experts.pop()):
            for pattern in patterns:
                source = by_pattern[pattern][e]
                self._check_readable(source, plan.name)
                piece = source.read()
                piece = (piece.to(plan.dtype) if piece.dtype != plan.dtype else piece).contiguous()
                writer.append(i, piece)
                written += piece.nbytes
        if written != plan.nbytes:  # the writer refuses to commit a part-written tensor
            raise ValueError(f"litcore: '{plan.name}': its sources hold {written} bytes, not the {plan.nbytes} planned")

    @staticmethod
    def _check_readable(source: TensorPlan, name: str) -> None:
        if source.read is None:
            raise ValueError(f"litcore: checkpoint tensor '{source.name}' cannot be read to compute '{name}'")

    def take(self, name: str, plan: TensorPlan) -> torch.Tensor:
        if not self.ready:
            for source, _ in self.sources:
                self._check_readable(source, name)
            self.ready = self._run(lambda p: p.read)
        t = self.ready.pop(name)
        t = t.to(plan.dtype) if t.dtype != plan.dtype else t
        if tuple(t.shape) != plan.shape:
            raise ValueError(f"litcore: computing '{name}' from {[s.name for s, _ in self.sources]} gave shape "
                             f"{list(t.shape)}, not the {list(plan.shape)} planned")
        return t.contiguous()


def to_model_layout(plans: List[TensorPlan], model, dtype: Optional[torch.dtype],
                    original: Optional[Dict[str, str]] = None) -> List[TensorPlan]:
    """`plans` (a checkpoint's tensors) renamed and fused as transformers does when it loads
    them into `model` (built empty). A tensor the model has no place for keeps its name (the
    binding then names it); without transformers' tables the plans come back as they are.
    Fused tensors are computed when written, in `dtype` (litcore.dtypes.converted): stacked
    experts one source at a time, others one converter's sources at a time. `original`
    (name -> the dtype a tensor had before conversion) follows the renames, in place."""
    found = _transforms(model)
    if found is None:
        return plans
    renamings, converters, rename_source_key, dot_natural_key = found
    by_pattern = {pattern: c for c in converters for pattern in c.source_patterns}
    wanted = model.state_dict(keep_vars=True)
    prefix = getattr(model, "base_model_prefix", None) or None
    renamed: Dict[int, str] = {}  # plan index -> the model's name
    groups: Dict[str, _Group] = {}  # first model name -> its group
    consumed = set()
    # transformers collects a converter's sources in this order (experts 0, 1, ..., 10).
    for i in sorted(range(len(plans)), key=lambda i: dot_natural_key(plans[i].name)):
        name = plans[i].name
        new, pattern = rename_source_key(name, renamings, converters, prefix, wanted)
        if new not in wanted and name in wanted:  # only the prefix may change
            new, pattern = rename_source_key(name, [], [], prefix, wanted)
        if new not in wanted:
            continue
        if pattern is None:
            renamed[i] = new
        else:
            groups.setdefault(new, _Group(by_pattern[pattern], model, new)).sources.append((plans[i], pattern))
            consumed.add(i)
    if not renamed and not groups:
        return plans

    original = original if original is not None else {}
    out: List[TensorPlan] = []
    new_index: Dict[int, int] = {}
    for i, plan in enumerate(plans):
        if i in consumed:
            continue
        if i in renamed:
            if plan.name in original:
                original[renamed[i]] = original.pop(plan.name)
            plan.name = renamed[i]
        new_index[i] = len(out)
        out.append(plan)
    for plan in out:
        if plan.alias_of < 0:
            continue
        if plan.alias_of not in new_index:
            raise ValueError(f"litcore: checkpoint tensor '{plan.name}' is tied to '{plans[plan.alias_of].name}', "
                             "which transformers fuses into another tensor: such a checkpoint cannot be converted")
        plan.alias_of = new_index[plan.alias_of]
    for group in groups.values():
        was = [original.pop(source.name) for source, _ in group.sources if source.name in original]
        outputs = group.shapes()
        for name, t in outputs.items():
            target = TensorPlan(name, dtypes.converted(t.dtype, dtype), t.shape)
            if len(outputs) == 1 and group.stacks():
                target.produce = lambda w, i, group=group, target=target: group.write_pieces(w, i, target)
            else:
                target.produce = lambda w, i, group=group, name=name, target=target: w.write(i, group.take(name, target))
            out.append(target)
            if was:
                original[name] = was[0]
    return out

