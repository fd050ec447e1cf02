"""The "auto" budget in a real memory cgroup: it moves to what the cgroup has left once
forwards have run (grows until every weight is resident when that fits, other files' page
cache reclaimed for it, shrinks when the process takes memory back), counts other files'
inactive page cache as room, and a given budget never moves. Outputs stay bit-exact through every change of plan."""
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

CONFIG = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12, num_key_value_heads=4,
              vocab_size=16000)
MiB = 1 << 20

CHILD = own_cgroup.IMPORT + """
import json, os, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
import transformers.models.llama.modeling_llama  # imports are not the model's footprint
import litcore
from own_cgroup import group, read

config = LlamaConfig(**json.loads(sys.argv[1]))
ids = torch.load(sys.argv[3])
torch.ones(64, 64) @ torch.ones(64, 64)  # kernels loaded before the measurement
before = read("memory.usage_in_bytes")
for _ in range(2 if sys.argv[7] else 0):  # another file read twice: active page cache, charged here
    with open(sys.argv[7], "rb") as f:
        while f.read(8 << 20):
            pass
lit = litcore.LitModule.from_params(sys.argv[2], lambda: LlamaForCausalLM(config), memory_budget=sys.argv[4])
logits = [lit(ids).logits for _ in range(5)]
grown = lit.stats()
ballast = None
if int(sys.argv[5]):
    # The process takes memory back: anonymous memory the kernel cannot evict.
    ballast = torch.ones(int(sys.argv[5]) // 4)
    logits += [lit(ids).logits for _ in range(4)]
torch.save(logits, sys.argv[6])
passes = lit.engine.passes()
print(json.dumps({"before": before, "limit": read("memory.limit_in_bytes"), "budgets": [p["budget_bytes"] for p in passes],
                  "grown": grown["streamed_bytes_per_forward"], "resident_grown": grown["resident_bytes"],
                  "streamed": lit.stats()["streamed_bytes_per_forward"], "weights": grown["weight_bytes"],
                  "lookup": grown["lookup_bytes"], "failcnt": read("memory.failcnt")}))
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    tmp = tmp_path_factory.mktemp("auto_budget")
    torch.manual_seed(0)
    ref = LlamaForCausalLM(LlamaConfig(**CONFIG)).eval()
    litcore.save(ref.state_dict(), tmp / "model.lit")
    ids = torch.randint(3, CONFIG["vocab_size"], (1, 16), generator=torch.Generator().manual_seed(1))
    torch.save(ids, tmp / "ids.pt")
    with torch.no_grad():
        want = ref(ids).logits
    return tmp, want


def _run(tmp, budget: str, limit=None, ballast: int = 0, other_file: str = ""):
    cgroup.evict([str(tmp / "model.lit")] + ([other_file] if other_file else []))
    out = cgroup.run([sys.executable, "-c", CHILD, json.dumps(CONFIG), str(tmp / "model.lit"), str(tmp / "ids.pt"),
                      budget, str(ballast), str(tmp / "logits.pt"), other_file], limit)
    assert out.returncode == 0 and not out.oom_killed, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), torch.load(tmp / "logits.pt")


def _limit_just_short_of_resident(tmp):
    """A limit under which "auto" first streams (its first margin is 128 MiB) although every
    weight fits with ~80 MiB to spare once the process has settled: a 2.4 GB limit for a
    2.2 GB model is this case."""
    free, _ = _run(tmp, "1GiB")  # everything resident, no limit: what the process needs
    resident = free["weights"] - free["lookup"]
    return free["before"] + resident + 80 * MiB, resident


def test_auto_grows_until_every_weight_is_resident(model):
    tmp, want = model
    limit, resident = _limit_just_short_of_resident(tmp)
    result, logits = _run(tmp, "auto", limit)
    budgets = result["budgets"]
    assert budgets[0] < resident, result  # the first plan streams...
    assert result["grown"] == 0 and result["resident_grown"] == resident, result  # ...a later one does not
    assert budgets[-1] >= resident and budgets == sorted(budgets), result
    assert result["failcnt"] <= 16, result
    for out in logits:
        assert torch.equal(out, want)


def test_auto_takes_every_weight_resident_into_other_files_page_cache(model):
    # Another file's page cache, read twice (active: not counted as room by the usual rule),
    # holds the memory that every weight resident needs. The kernel reclaims it once the
    # weights need it, as it does for a memory-mapped model; "auto" steps to every weight
    # resident instead of streaming beside it for good.
    tmp, want = model
    free, _ = _run(tmp, "1GiB")
    resident = free["weights"] - free["lookup"]
    other = tmp / "other.bin"
    with open(other, "wb") as f:
        for _ in range(12):
            f.write(os.urandom(8 * MiB))
    limit = free["before"] + resident + 40 * MiB
    result, logits = _run(tmp, "auto", limit, other_file=str(other))
    budgets = result["budgets"]
    whole = result["weights"] - result["lookup"]  # every weight but the embedding (read by lookup)
    assert budgets[0] < whole, result  # the first plan streams...
    assert result["grown"] == 0 and result["resident_grown"] == whole, result  # ...a later one does not
    assert result["streamed"] == 0, result  # and the step was kept
    for out in logits:
        assert torch.equal(out, want)


def test_auto_shrinks_when_the_process_takes_memory_back(model):
    tmp, want = model
    limit, resident = _limit_just_short_of_resident(tmp)
    result, logits = _run(tmp, "auto", limit, ballast=160 * MiB)
    budgets = result["budgets"]
    assert result["grown"] == 0, result
    # The kernel evicted resident weights to make room; the budget gave that memory back.
    assert budgets[-1] <= resident - 64 * MiB and result["streamed"] > 0, result
    for out in logits:
        assert torch.equal(out, want)


def test_a_given_budget_never_moves(model):
    tmp, want = model
    limit, _ = _limit_just_short_of_resident(tmp)
    budget = 96 * MiB
    result, logits = _run(tmp, str(budget), limit)
    assert result["budgets"] == [budget] * len(result["budgets"]), result
    for out in logits:
        assert torch.equal(out, want)


READER = """
import json, os, sys
import litcore
before = litcore.budget.auto_budget()
with open(sys.argv[1], "rb") as f:  # a file read once: inactive page cache, charged here
    while f.read(8 << 20):
        pass
print(json.dumps({"before": before, "after": litcore.budget.auto_budget()}))
"""


def test_auto_counts_other_files_inactive_page_cache_as_room(tmp):
    path = tmp / "data.bin"
    with open(path, "wb") as f:
        for _ in range(32):
            f.write(os.urandom(8 * MiB))
    cgroup.evict([str(path)])
    out = cgroup.run([sys.executable, "-c", READER, str(path)], 2 << 30)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # 256 MiB more page cache is charged to the cgroup, and the budget hardly moves.
    assert abs(result["before"] - result["after"]) < 32 * MiB, result


MOE_CONFIG = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=4, num_attention_heads=12,
                  num_key_value_heads=4, vocab_size=8000, num_local_experts=8, num_experts_per_tok=2)

MOE_CHILD = own_cgroup.IMPORT + """
import json, os, sys, torch
from transformers import MixtralConfig, MixtralForCausalLM
import transformers.models.mixtral.modeling_mixtral  # imports are not the model's footprint
import litcore
from own_cgroup import group, read

config = MixtralConfig(**json.loads(sys.argv[1]))
torch.ones(64, 64) @ torch.ones(64, 64)  # kernels loaded before the measurement
# The limit: what the process holds now and a fixed room above it.
with open(os.path.join(group(), "memory.limit_in_bytes"), "w") as f:
    f.write(str(read("memory.usage_in_bytes") + int(sys.argv[3])))
lit = litcore.LitModule.from_params(sys.argv[2], lambda: MixtralForCausalLM(config), memory_budget="auto")
g = torch.Generator().manual_seed(0)
prompt = torch.randint(3, config.vocab_size, (1, 16), generator=g)
logits, prefill_failcnt = [], []
with torch.no_grad():
    logits.append(lit(prompt).logits)
    for _ in range(3):
        for _ in range(6):  # generated tokens: each reads 2 experts of 8 in a layer
            lit(torch.randint(3, config.vocab_size, (1, 1), generator=g))
        before = read("memory.failcnt")
        logits.append(lit(prompt).logits)  # a prompt: every expert
        prefill_failcnt.append(read("memory.failcnt") - before)
torch.save(logits, sys.argv[4])
passes = lit.engine.passes()
print(json.dumps({"failcnt": read("memory.failcnt"), "prefill_failcnt": prefill_failcnt,
                  "budgets": [p["budget_bytes"] for p in passes], "resident": [p["resident_bytes"] for p in passes],
                  "routed": lit.stats()["routed_bytes"], "streamed": lit.stats()["streamed_bytes_per_forward"]}))
"""


def test_auto_holds_a_mixture_of_experts_model_under_its_limit(tmp_path):
    """A generated token reads 2 of a layer's 8 experts, a prompt all 8: the usage measured
    after tokens is not what a prompt needs. "auto" keeps room for a whole layer's experts
    (the build before grew into the room tokens left unread, met the limit at the next
    prompt 9,000-28,000 times, and shrank forward after forward to nothing resident), and
    does not count the budget it cannot use as room to grow by."""
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    reference = MixtralForCausalLM(MixtralConfig(**MOE_CONFIG)).eval()
    litcore.save(reference.state_dict(), tmp_path / "moe.lit", dtype="bfloat16")
    with torch.no_grad():  # as the file binds them: the weights in bf16, the rotary buffer as built
        for p in reference.parameters():
            p.data = p.data.to(torch.bfloat16)
    prompt = torch.randint(3, MOE_CONFIG["vocab_size"], (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = reference(prompt).logits
    cgroup.evict([str(tmp_path / "moe.lit")])
    # 255 MiB above the interpreter for a 323 MiB model of 72 MiB layers of experts: the
    # rest of the weights, two layers' experts and the activations.
    out = cgroup.run([sys.executable, "-c", MOE_CHILD, json.dumps(MOE_CONFIG), str(tmp_path / "moe.lit"),
                      str(255 * MiB), str(tmp_path / "logits.pt")], None)
    assert out.returncode == 0 and not out.oom_killed, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["failcnt"] <= 16 and result["prefill_failcnt"] == [0, 0, 0], result
    budgets, resident = result["budgets"], result["resident"]
    # Grows from where it started, and settles: the last 7 forwards (the last prompt among
    # them) ran one budget. On the way it may step back once or twice, never forward after
    # forward.
    assert min(budgets[1:]) >= budgets[0] and len(set(budgets[-7:])) == 1, result
    assert resident[-1] > 0 and result["streamed"] == 0 and result["routed"] > 0, result
    for out in torch.load(tmp_path / "logits.pt"):
        assert torch.equal(out, want)
