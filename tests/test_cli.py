"""The `litcore` command as a user meets it: generate and plan on a model directory, and the
file commands' edges (destinations, unsafe files, pipes, directories, .lit to .lit)."""
import os
import re
import subprocess
import sys

import pytest
import torch

import litcore
from litcore import synthetic

CLI = [sys.executable, "-m", "litcore"]


def _run(*args, **kwargs):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "llama"
    synthetic.make_model_dir(str(path), synthetic.llama_config("tiny"))
    return path


def test_generate_streams_text_and_ends_with_stats(llama_dir):
    r = _run("generate", llama_dir, "The quick brown fox", "--max-new-tokens", "6", "--memory-budget", "150KB", "-q")
    assert r.returncode == 0, r.stderr
    first, _, rest = r.stdout.partition("[litcore]")
    assert first.startswith("The quick brown fox") and len(first) > len("The quick brown fox")
    assert "6 tokens in" in rest and "tokens/s" in rest and "streamed" in rest and "waited" in rest
    assert " MiB/s" in rest.split("waited")[1]  # the reader's speed: the budget streams weights
    # the same text, token for token, from Python with the model's tokenizer
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    lit = litcore.from_pretrained(llama_dir, progress=False)
    ids = tokenizer("The quick brown fox", return_tensors="pt").input_ids
    out = lit.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert first.strip() == tokenizer.decode(out[0], skip_special_tokens=True).strip()


def test_generate_names_the_experts_read_by_routing(tmp, litcore_cli):
    """A mixture-of-experts model: every weight but the experts resident, the experts
    streamed by their routing, some of them cached, and the stats line says so."""
    synthetic.make_model_dir(str(tmp / "mixtral"), synthetic.mixtral_config("tiny"))
    r = litcore_cli("generate", tmp / "mixtral", "The quick brown fox", "--max-new-tokens", "4",
                    "--memory-budget", "400KB", "-q")
    assert r.returncode == 0, r.stderr
    stats = r.stdout.split("[litcore]")[1]
    assert re.search(r"streamed 0 B per forward, experts 384.00 KiB read by routing \([0-9.]+ [KM]?i?B of them cached\)",
                     stats), stats


def test_generate_refuses_an_encoder_and_bad_options(tmp, litcore_cli):
    synthetic.make_model_dir(str(tmp / "bert"), synthetic.bert_config(), dtype=torch.float32)
    r = _run("generate", tmp / "bert", "hello", "-q")
    assert r.returncode == 2 and "BertModel" in r.stderr and "causal language model" in r.stderr, r.stderr
    r = litcore_cli("generate", tmp / "bert", "hello", "--memory-budget", "abc")
    assert r.returncode == 2 and "--memory-budget" in r.stderr and "'abc'" in r.stderr


def test_plan_is_a_dry_run_in_module_names(llama_dir, tmp):
    before = sorted(os.listdir(llama_dir))
    r = _run("plan", llama_dir, "--memory-budget", "150KB", env={**os.environ, "LITCORE_CACHE": str(tmp / "c")})
    assert r.returncode == 0, r.stderr
    assert "model.embed_tokens" in r.stdout and "lookup" in r.stdout
    assert "resident" in r.stdout and "streamed" in r.stdout and "model.layers.1.mlp.down_proj" in r.stdout
    assert sorted(os.listdir(llama_dir)) == before and not (tmp / "c").exists()  # nothing converted
    # the dry run's plan is the plan from_pretrained starts with
    plan = litcore.plan_pretrained(llama_dir, memory_budget="150KB")
    lit = litcore.from_pretrained(llama_dir, memory_budget="150KB", progress=False)
    assert plan.placements() == lit.plan.placements()


def test_plan_stages_dry_run(llama_dir, litcore_cli):
    r = litcore_cli("plan", llama_dir, "--stages", "2", "--memory-budget", "150KB")
    assert r.returncode == 0, r.stderr
    assert "stage 0: layers 0-" in r.stdout and "model.embed_tokens" in r.stdout
    assert "stage 1: layers" in r.stdout and "lm_head" in r.stdout and "streamed per forward" in r.stdout
    r = litcore_cli("plan", llama_dir, "--stages", "2", "--split", "0,1")
    assert r.returncode == 0 and "stage 1: layers 1-" in r.stdout, r.stderr
    for bad in (["--stages", "0"], ["--stages", "2", "--split", "1,2"], ["--split", "0,1"]):
        r = litcore_cli("plan", llama_dir, *bad)
        assert r.returncode != 0 and "litcore plan: error:" in r.stderr and "Traceback" not in r.stderr, (bad, r.stderr)


def test_file_commands_edges(tmp, litcore_cli):
    weights = {f"layers.{i}.weight": torch.randn(64, 64) for i in range(12)}
    litcore.save(weights, tmp / "m.lit")
    r = _run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"litcore {litcore.__version__}"
    r = litcore_cli("convert", tmp / "m.lit", tmp / "nowhere" / "b.lit", "-q")
    assert r.returncode == 2 and "nowhere/b.lit" in r.stderr and "partial" not in r.stderr, r.stderr
    (tmp / "adir").mkdir()
    r = litcore_cli("convert", tmp / "m.lit", tmp / "adir", "-q")
    assert r.returncode == 2 and "adir': it is a directory" in r.stderr, r.stderr
    assert r.stderr.count("litcore") == 1  # "litcore convert: error: ...", no doubled prefix
    r = litcore_cli("convert", tmp / "m.lit", tmp / "b.lit", "--dtype", "bf16", "-q")
    assert r.returncode == 0, r.stderr
    with litcore.Store(tmp / "b.lit") as store:
        assert store.info("layers.3.weight").dtype == torch.bfloat16
        assert torch.equal(store["layers.3.weight"], weights["layers.3.weight"].bfloat16())
    torch.save({"x": os.system}, tmp / "unsafe.pt")
    r = litcore_cli("convert", tmp / "unsafe.pt", tmp / "u.lit", "-q")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "unsafe.pt" in r.stderr, r.stderr
    r = litcore_cli("convert", "--help")
    assert "bfloat16" in r.stdout and "bf16" in r.stdout
    (tmp / "one").mkdir()
    os.replace(tmp / "b.lit", tmp / "one" / "b.lit")
    for command in ("inspect", "verify"):
        r = litcore_cli(command, tmp / "one")
        assert r.returncode == 0 and "b.lit" in r.stdout or "layers.3.weight" in r.stdout, r.stderr
    r = subprocess.run(" ".join(CLI + ["inspect", str(tmp / "m.lit")]) + " | head -2", shell=True, capture_output=True,
                       text=True)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2 and r.stderr == "", r.stderr
