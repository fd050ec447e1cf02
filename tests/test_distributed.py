"""A model split across processes with torch.distributed (gloo on localhost): each stage in its
own process, under its own cgroup memory limit; logits and generated tokens bit-exact against
the whole model; each stage's footprint covers its slice only; a stage that dies ends the run
with a clear error, not a hang."""
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import litcore
from litcore.stages import plan_stages, split_model

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import cgroup  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "stage_worker.py")
CONFIG = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=8,
              num_key_value_heads=4, vocab_size=8000, tie_word_embeddings=False)
NEW_TOKENS = 6
MARGIN = 64 << 20


def _model(**overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**CONFIG, **overrides})).eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stages")
    model = _model()
    litcore.save(model.state_dict(), tmp / "model.lit")  # float32: the reference runs the same bytes
    ids = torch.randint(3, CONFIG["vocab_size"], (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits
        tokens = model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                pad_token_id=0)
    return tmp, ids, logits, tokens


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp, ids, world_size, limits, **args):
    """Starts every stage at once, each in its own memory cgroup; returns their outcomes."""
    out = tmp / f"run-{time.monotonic_ns()}"
    out.mkdir()
    port = _free_port()
    job = dict(config=CONFIG, ids=ids.tolist(), path=str(tmp / "model.lit"), new_tokens=NEW_TOKENS, out=str(out), **args)
    cgroup.evict([str(tmp / "model.lit")])

    def one(rank):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), LOCAL_RANK=str(rank))
        return cgroup.run([sys.executable, WORKER, json.dumps(job)], limits[rank], env=env, timeout=300)

    with ThreadPoolExecutor(world_size) as pool:
        return list(pool.map(one, range(world_size))), out


def _check(outcomes, out, logits, tokens):
    assert all(o.peak_source == "cgroup" for o in outcomes), "a stage ran outside its own cgroup"
    assert all(o.returncode == 0 and not o.oom_killed for o in outcomes), [
        (rank, o.returncode, o.oom_killed, o.peak_bytes >> 20, o.stderr[-1500:]) for rank, o in enumerate(outcomes)]
    reports = []
    for rank, o in enumerate(outcomes):
        reports.append(json.loads(o.stdout.strip().splitlines()[-1]))
        got = torch.load(out / f"rank{rank}.pt")
        assert torch.equal(got["logits"], logits), rank
        assert torch.equal(got["tokens"], tokens), rank
    return reports


@pytest.mark.skipif(not cgroup.available(), reason="memory cgroups cannot be created here")
def test_two_stages_bit_exact_each_within_its_slice(setup):
    tmp, ids, logits, tokens = setup
    size = os.path.getsize(tmp / "model.lit")
    # The interpreter (~250 MiB here) and a slice of the model fit; the whole model does not.
    # The budget is given: "auto" keeps 128 MiB for activations, more than this limit leaves.
    limit = 400 << 20
    outcomes, out = _launch(tmp, ids, 2, [limit, limit], budgets=[96 << 20] * 2)
    reports = _check(outcomes, out, logits, tokens)
    for r in reports:
        assert r["before"] + size > limit, (r, "the limit would hold the whole model")
        grown = r["peak"] - r["before"]
        # What a stage holds is its slice (weights + page cache), never the whole file.
        assert r["stage_bytes"] < 0.6 * size
        assert grown <= r["stage_bytes"] + MARGIN, (r, grown / 2**20)
        assert r["failcnt"] == 0 or r["failcnt"] < 100, r
    assert reports[0]["modules"][0] == "model.embed_tokens" and reports[1]["modules"][-1] == "lm_head"
    # Only hidden states cross, one per token run: the forward's 12, generate's prefill of 12,
    # then one per new token after the first (float32: 4 bytes per value).
    hidden = CONFIG["hidden_size"] * 4
    assert reports[0]["bytes_sent"] == reports[1]["bytes_received"]
    assert reports[0]["bytes_sent"] == hidden * (2 * ids.shape[1] + NEW_TOKENS - 1)


@pytest.mark.skipif(not cgroup.available(), reason="memory cgroups cannot be created here")
def test_three_stages_streaming_under_their_budgets(setup):
    tmp, ids, logits, tokens = setup
    size = os.path.getsize(tmp / "model.lit")
    budget = size // 6  # each stage streams: its third of the model does not fit
    limits = [(400 << 20) + budget + MARGIN] * 3
    outcomes, out = _launch(tmp, ids, 3, limits, budgets=[budget] * 3)
    reports = _check(outcomes, out, logits, tokens)
    for r in reports:
        assert r["streams"], r
        assert r["peak"] - r["before"] <= budget + MARGIN, r  # r["grown_mib"]: what grew, by kind


def test_a_stage_that_dies_fails_every_rank_quickly(setup):
    tmp, ids, _, _ = setup
    start = time.monotonic()
    outcomes, _ = _launch(tmp, ids, 2, [None, None], die=1, timeout=30)
    assert time.monotonic() - start < 120
    assert outcomes[1].returncode == 3
    assert outcomes[0].returncode != 0
    assert "litcore: stage 0 of 2" in outcomes[0].stderr, outcomes[0].stderr[-2000:]


def test_split_is_balanced_by_bytes_and_explicit_splits_are_checked(setup):
    tmp = setup[0]
    from litcore.convert import source_sizes
    from litcore.empty_init import empty_init

    with empty_init():
        model = _model()
    sizes = source_sizes(tmp / "model.lit")
    two = split_model(model, sizes, 2)
    assert [s.first_layer for s in two.stages] == [0, 6]
    assert sum(s.nbytes for s in two.stages) == os.path.getsize(tmp / "model.lit") - _padding(tmp / "model.lit")
    assert max(s.nbytes for s in two.stages) < 0.55 * sum(s.nbytes for s in two.stages)
    explicit = split_model(model, sizes, 3, split=[0, "model.layers.2", 10])
    assert [(s.first_layer, s.end_layer) for s in explicit.stages] == [(0, 2), (2, 10), (10, 12)]
    for bad in ([0, 12], [1, 5], [0, 5, 5], [0, "layers.3"]):
        with pytest.raises(ValueError, match="split"):
            split_model(model, sizes, len(bad), split=bad)
    with pytest.raises(ValueError, match="only 12 layers"):
        split_model(model, sizes, 13)


def _padding(path) -> int:
    with litcore.Store(path) as store:
        return os.path.getsize(path) - store.nbytes


def test_plan_stages_is_a_dry_run_per_stage(setup):
    from transformers import LlamaConfig, LlamaForCausalLM

    tmp = setup[0]
    config = LlamaConfig(**CONFIG)
    stages = plan_stages(tmp / "model.lit", lambda: LlamaForCausalLM(config), 2, memory_budget=["1GB", "60MB"])
    first, second = stages.stages
    assert first.plan.resident_bytes == first.nbytes and not first.plan.streams
    assert second.plan.streams and second.plan.resident_bytes + second.plan.window_bytes <= 60_000_000
    assert second.plan.resident_bytes + second.plan.streamed_bytes + second.plan.lookup_bytes == second.nbytes
    text = str(stages)
    assert "stage 1: layers 6-11" in text and "lm_head" in text and "streamed per forward" in text


TORCHRUN_SCRIPT = """
import json, sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
import litcore.distributed

args = json.loads(sys.argv[1])
config = LlamaConfig(**args["config"])
stage = litcore.distributed.from_params(args["path"], lambda: LlamaForCausalLM(config), timeout=60)
ids = torch.tensor(args["ids"])
tokens = stage.generate(ids, max_new_tokens=args["new_tokens"], min_new_tokens=args["new_tokens"], do_sample=False,
                        pad_token_id=0)
if stage.rank == 0:
    torch.save(tokens, args["out"])
stage.close()
"""


def test_torchrun_launches_stages_and_tied_weights_stay_with_their_module(tmp_path):
    """As a user launches it (torchrun, one process per stage), on a model whose LM head is
    tied to the embedding: the last stage binds the shared weight through the embedding it
    keeps, and the tokens match the whole model."""
    tied = _model(tie_word_embeddings=True)
    litcore.save(tied.state_dict(), tmp_path / "tied.lit")
    ids = torch.randint(3, CONFIG["vocab_size"], (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = tied.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=0)
    (tmp_path / "run.py").write_text(TORCHRUN_SCRIPT)
    job = dict(config={**CONFIG, "tie_word_embeddings": True}, path=str(tmp_path / "tied.lit"), ids=ids.tolist(),
               new_tokens=NEW_TOKENS, out=str(tmp_path / "tokens.pt"))
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    r = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", str(tmp_path / "run.py"), json.dumps(job)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "tokens.pt"), want)
