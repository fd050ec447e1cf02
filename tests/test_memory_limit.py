"""Real memory limits: a model several times larger than what the cgroup leaves for
weights runs to completion, bit-exact, and is never killed."""
import json
import os
import sys

import pytest
import torch

import litcore

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import cgroup  # noqa: E402

pytestmark = pytest.mark.skipif(not cgroup.available(), reason="memory cgroups cannot be created here")

CONFIG = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=24, num_attention_heads=8, num_key_value_heads=4,
              vocab_size=8000)

CHILD = """
import json, sys, time, torch
from transformers import LlamaConfig, LlamaForCausalLM
import litcore
sys.path.insert(0, sys.argv[6])
from pagecache import cached_bytes
config = LlamaConfig(**json.loads(sys.argv[1]))
lit = litcore.LitModule.from_params(sys.argv[2], lambda: LlamaForCausalLM(config), memory_budget=sys.argv[3])
ids = torch.load(sys.argv[4])
out = [lit(ids).logits for _ in range(3)]
gen = lit.generate(ids[:1, :6], max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
torch.save({"logits": out[-1], "gen": gen, "stats": lit.stats()["last"]}, sys.argv[5])
print(json.dumps({"plan_streamed": lit.plan.streamed_bytes, "resident": lit.plan.resident_bytes,
                  "window": lit.plan.window_bytes, "cached": cached_bytes(sys.argv[2])}))
"""


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    tmp = tmp_path_factory.mktemp("limit")
    torch.manual_seed(0)
    ref = LlamaForCausalLM(LlamaConfig(**CONFIG)).eval()
    litcore.save(ref.state_dict(), tmp / "model.lit")
    ids = torch.randint(3, CONFIG["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(1))
    torch.save(ids, tmp / "ids.pt")
    with torch.no_grad():
        want = ref(ids).logits
        gen = ref.generate(ids[:1, :6], max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    return tmp, want, gen


def _baseline_mb() -> int:
    """Peak memory of the child's imports alone, in this cgroup setup."""
    code = "import torch, transformers, litcore; from transformers import LlamaForCausalLM; from transformers.models.llama import modeling_llama"
    out = cgroup.run([sys.executable, "-c", code], None)
    assert out.returncode == 0, out.stderr
    return out.peak_bytes // 10**6


def test_runs_under_a_limit_far_below_the_model(big_model):
    tmp, want, gen = big_model
    size_mb = os.path.getsize(tmp / "model.lit") // 10**6
    assert size_mb > 300
    budget_mb = 48
    limit_mb = _baseline_mb() + budget_mb + 110  # activations, allocator, interpreter slack
    assert limit_mb - _baseline_mb() < size_mb / 1.5, "the weights must not fit beside the interpreter"
    cgroup.evict([str(tmp / "model.lit")])
    out = cgroup.run([sys.executable, "-c", CHILD, json.dumps(CONFIG), str(tmp / "model.lit"), f"{budget_mb}MB",
                      str(tmp / "ids.pt"), str(tmp / "out.pt"), os.path.dirname(__file__)], limit_mb * 10**6)
    assert out.returncode == 0 and not out.oom_killed, out.stderr[-2000:]
    assert out.peak_bytes <= limit_mb * 10**6
    result = torch.load(tmp / "out.pt")
    assert torch.equal(result["logits"], want)
    assert torch.equal(result["gen"], gen)
    plan = json.loads(out.stdout)
    assert plan["plan_streamed"] > size_mb * 10**6 * 0.7
    assert result["stats"]["bytes_read"] >= plan["plan_streamed"] * 0.9
    # Streamed pages left the page cache: what remains is the resident set, the window read
    # ahead for the next forward, and the kernel's readahead past it (a few MB).
    assert plan["cached"] <= plan["resident"] + plan["window"] + (24 << 20), plan
