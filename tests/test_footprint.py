"""The budget is the footprint: with memory_budget=B, what the process's cgroup is charged
above its value just before from_params (page cache included) stays within B plus a small
margin through forwards and generate, for every read mode and both file orders. Measured from
a real cgroup (memory.max_usage_in_bytes, memory.stat).

Read mode "buffer" (the default) reads streamed weights past the page cache into the prefetch
window's own memory; "direct" into memory litcore puts in place. The page-cache modes read through it and drop what they read right after use, and what
the kernel read ahead past a read after the next one. A file in name order (what `litcore
convert` of a safetensors file gives: within a layer the MLP before the attention) is the hard
case for them: its peak grew 92-102 MiB over this 64 MiB budget with "sendfile" and "pread",
against the 128 MiB this test allows (an earlier version reached 128-173 MiB)."""
import functools
import json
import os
import sys

import pytest
import torch

import litcore

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import cgroup  # noqa: E402
import own_cgroup  # noqa: E402

pytestmark = pytest.mark.skipif(not cgroup.available(), reason="memory cgroups cannot be created here")

CONFIG = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=16, num_attention_heads=12, num_key_value_heads=4,
              vocab_size=16000)
BUDGET = 64 << 20

CHILD = own_cgroup.IMPORT + """
import json, os, sys, torch
import transformers
import transformers.models.llama.modeling_llama, transformers.models.mixtral.modeling_mixtral  # not the footprint
import litcore
from own_cgroup import group, read, stat

family = sys.argv[5]  # "Llama" or "Mixtral"
config = getattr(transformers, family + "Config")(**json.loads(sys.argv[1]))
model_class = getattr(transformers, family + "ForCausalLM")
ids = torch.randint(3, config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
torch.ones(64, 64) @ torch.ones(64, 64)  # kernels loaded before the measurement
open(os.path.join(group(), "memory.max_usage_in_bytes"), "w").write("0")
before = read("memory.usage_in_bytes")
lit = litcore.LitModule.from_params(sys.argv[2], lambda: model_class(config), memory_budget=int(sys.argv[3]),
                                    read_mode=sys.argv[4])
for _ in range(3):
    lit(ids)
lit.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
s = stat()
print(json.dumps({"before": before, "peak": read("memory.max_usage_in_bytes"), "failcnt": read("memory.failcnt"),
                  "unmapped_cache": s["cache"] - s["mapped_file"], "bytes_read": lit.stats()["last"]["bytes_read"],
                  "expert_cache_bytes": lit.stats()["expert_cache_bytes"]}))
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The weights in the model's order, and in name order (see the module doc)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tmp = tmp_path_factory.mktemp("footprint")
    torch.manual_seed(0)
    sd = LlamaForCausalLM(LlamaConfig(**CONFIG)).state_dict()
    litcore.save(sd, tmp / "model-order.lit", dtype="bfloat16")
    litcore.save(dict(sorted(sd.items())), tmp / "name-order.lit", dtype="bfloat16")
    return tmp


def _run(path, read_mode, limit=None, family="Llama", config=CONFIG):
    cgroup.evict([str(path)])
    out = cgroup.run([sys.executable, "-c", CHILD, json.dumps(config), str(path), str(BUDGET), read_mode, family], limit)
    assert out.returncode == 0 and not out.oom_killed, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@functools.cache
def _run_unlimited(path, read_mode):
    """The run without a limit, once per file and read mode: both tests below measure it."""
    return _run(path, read_mode)


@pytest.mark.parametrize("order, read_mode", [("model-order", "buffer"), ("name-order", "buffer"),
                                              ("model-order", "direct"), ("name-order", "direct"),
                                              ("model-order", "sendfile"), ("model-order", "pread"),
                                              ("model-order", "populate"), ("model-order", "exact"),
                                              ("name-order", "sendfile"), ("name-order", "pread"),
                                              ("name-order", "populate"), ("name-order", "exact")])
def test_the_budget_is_the_footprint(files, order, read_mode):
    size = os.path.getsize(files / f"{order}.lit")
    assert size > 3.5 * BUDGET
    result = _run_unlimited(files / f"{order}.lit", read_mode)
    margin = max(64 << 20, BUDGET * 3 // 100)
    grown = result["peak"] - result["before"]
    assert grown <= BUDGET + margin, (order, read_mode, grown / 2**20, result)


@pytest.mark.parametrize("order, read_mode", [("model-order", "buffer"), ("name-order", "buffer"),
                                              ("model-order", "direct"), ("name-order", "direct"),
                                              ("model-order", "sendfile"), ("name-order", "sendfile"),
                                              ("name-order", "exact")])
def test_a_hard_limit_just_above_the_budget_is_not_hit(files, order, read_mode):
    """The same run under a cgroup limit of what the unlimited run started from plus the
    budget and the margin: the kernel never has to reclaim to stay under it."""
    free = _run_unlimited(files / f"{order}.lit", read_mode)
    limit = free["before"] + BUDGET + max(64 << 20, BUDGET * 3 // 100)
    limited = _run(files / f"{order}.lit", read_mode, limit)
    assert limited["peak"] <= limit
    assert limited["failcnt"] <= 16, (order, read_mode, limited)


MOE_CONFIG = dict(hidden_size=512, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=8000, num_local_experts=8, num_experts_per_tok=2)


def test_a_mixture_of_experts_model_within_its_budget(tmp_path):
    """Fused experts (25 MiB a layer here, most of the model) stream as one unit each, read
    by their routing, and the budget's room beside the window caches the experts chosen most
    (7 of 48 here): the footprint holds as for a dense model (73 MiB over 64 MiB measured
    with the cache, 59-70 before it)."""
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    litcore.save(MixtralForCausalLM(MixtralConfig(**MOE_CONFIG)).state_dict(), tmp_path / "moe.lit", dtype="bfloat16")
    assert os.path.getsize(tmp_path / "moe.lit") > 2.5 * BUDGET
    result = _run(tmp_path / "moe.lit", "sendfile", family="Mixtral", config=MOE_CONFIG)
    # The experts streamed: the last forward, one generated token, read the 2 experts of 8
    # it was routed to in each layer (the whole layers are 150 MiB).
    assert 0 < result["bytes_read"] < 2 * BUDGET
    assert result["expert_cache_bytes"] > 0, result
    assert result["peak"] - result["before"] <= BUDGET + max(64 << 20, BUDGET * 3 // 100), result
