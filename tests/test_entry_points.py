"""One engine, three callers: a model whose execution order differs from its registration
order (a Llama decoder layer registers its norms after its MLP and runs them before),
run through Python hooks, a TorchScript program loaded from Python and the C++ example app
under the same budget: the same plan, the same order learned, the same bytes read."""
import os
import subprocess
import warnings

import pytest
import torch

import litcore
import litcore.jit

FORWARDS = 3


def _config():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=64, intermediate_size=192, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=256, use_cache=False)


def _build():
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(_config()).eval()


def _ids():
    return ((torch.arange(24) * 7 + 3) % 256).reshape(2, 12)


def _logits(out):
    return out["logits"] if isinstance(out, dict) else out[0] if isinstance(out, tuple) else out.logits


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The reference model, its TorchScript program and weight file, and the budget."""
    tmp = tmp_path_factory.mktemp("entry")
    torch.manual_seed(0)
    ref = _build()
    ids = _ids()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(ref, ids, strict=False)
    with torch.no_grad():
        want = _logits(traced(ids))
        assert torch.equal(_logits(ref(ids)), want)
    litcore.jit.save(traced, tmp / "m.pt", tmp / "m.lit")
    budget = os.path.getsize(tmp / "m.lit") // 3
    return tmp, want, budget


def _bytes_read_after_the_first(passes):
    assert len(passes) == FORWARDS
    assert passes[0]["mispredicts"] > 0  # the registration order was a wrong guess
    for p in passes[1:]:
        assert p["mispredicts"] == 0  # the learned order is followed from the second forward on
        assert p["bytes_read"] > 0
    return [p["bytes_read"] for p in passes[1:]]


def test_python_torchscript_and_cpp_run_the_same_engine(saved, cpp_app):
    tmp, want, budget = saved
    ids = _ids()
    results = {}

    lit = litcore.LitModule.from_params(tmp / "m.lit", _build, memory_budget=budget)
    for _ in range(FORWARDS):
        assert torch.equal(_logits(lit(ids)), want)
    results["python"] = (lit.plan.placements(), lit.stats()["per_forward"])
    largest = max(nbytes for _, where, nbytes in lit.plan.placements() if where == "streamed")

    program = litcore.jit.load(tmp / "m.pt", tmp / "m.lit", memory_budget=budget)
    with torch.no_grad():
        for _ in range(FORWARDS):
            assert torch.equal(_logits(program(ids)), want)
    engine = program._litcore_engine
    results["torchscript"] = ([tuple(p) for p in engine.placements()], engine.passes())

    r = subprocess.run([str(cpp_app / "run_model"), str(tmp / "m.pt"), str(tmp / "m.lit"), "--budget", str(budget),
                        "--shape", "2,12", "--ids", "256", "--repeat", str(FORWARDS)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = [line.split(" ") for line in r.stdout.splitlines()]
    assert int(next(l for l in lines if l[0] == "xxh64")[1]) == litcore._C.tensor_xxh64(want.contiguous())
    placements = [(l[3], l[1], int(l[2])) for l in lines if l[0] == "plan"]
    passes = [{k: float(v) for k, v in (f.split("=") for f in l[2:])} for l in lines if l[0] == "pass"]
    results["c++"] = (placements, passes)

    python_plan = results["python"][0]
    assert any(where == "streamed" for _, where, _ in python_plan)
    assert any(where == "resident" for _, where, _ in python_plan)
    assert any(where == "lookup" for _, where, _ in python_plan)  # the embedding is read by lookup
    read = {}
    for caller, (plan, passes) in results.items():
        # A traced program keeps the rotary embedding's computed (non-persistent) buffer as
        # state, so its file holds it: 64 bytes more, resident, in a unit of its own.
        extra = [p for p in plan if p[0] == "model.rotary_emb"]
        assert extra in ([], [("model.rotary_emb", "resident", 64)]), caller
        plan = [p for p in plan if p not in extra]
        assert plan == python_plan, caller
        read[caller] = _bytes_read_after_the_first(passes)
    for caller, figures in read.items():
        for mine, python in zip(figures, read["python"]):
            assert abs(mine - python) <= largest, (caller, figures, read["python"])


def test_the_plan_speaks_in_module_names(saved):
    tmp, _, budget = saved
    lit = litcore.LitModule.from_params(tmp / "m.lit", _build, memory_budget=budget)
    plan = lit.plan
    assert plan.resident_bytes + plan.streamed_bytes + plan.lookup_bytes == plan.total_bytes
    names = {name for name, _, _ in plan.placements()}
    assert "model.layers.0.mlp.down_proj" in names and "model.embed_tokens" in names
    assert set(plan.resident_modules) | set(plan.streamed_modules) | set(plan.lookup_modules) == names
    text = str(plan)
    assert "model.embed_tokens" in text and "lookup" in text and "streamed" in text
    lit(_ids())
    # after the first forward the streamed modules are listed in execution order: a layer's
    # norm before its attention, its attention before its MLP
    order = lit.plan.streamed_modules
    layer = [n for n in order if n.startswith("model.layers.3.")]
    assert layer == sorted(layer, key=lambda n: ("input_layernorm" not in n, "self_attn" not in n,
                                                 "post_attention_layernorm" not in n)), order
