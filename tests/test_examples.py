"""The examples and the demo run end to end on small configurations."""
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _run(script, *args, cwd):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *args], capture_output=True, text=True,
                       cwd=cwd, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


def test_generate_example(tmp):
    out = _run("generate.py", "--size", "tiny", "--tokens", "12", "--budget", "200KB", "--cache", str(tmp), cwd=tmp)
    assert "seeded random weights" in out and "12 tokens in" in out and "streaming" in out


def test_generate_example_with_a_model_directory(tmp):
    from litcore import synthetic

    synthetic.make_model_dir(str(tmp / "m"), synthetic.llama_config("tiny"))
    out = _run("generate.py", "--model", str(tmp / "m"), "--tokens", "5", cwd=tmp)
    assert "generated ids" in out and "seeded" not in out


def test_features_example(tmp):
    out = _run("features.py", "--cache", str(tmp), cwd=tmp)
    assert "feature vectors: (4, 128)" in out


def test_demo_small(tmp):
    out = _run("demo.py", "--size", "tiny", "--budget", "150KB", "--tokens", "4", "--cache", str(tmp), cwd=tmp)
    for line in ("load (convert once", "generate:", "peak RSS", "streamed per forward"):
        assert line in out, out


def test_api_reference_is_current(tmp):
    """docs/api.md is generated from the docstrings: regenerate it after changing the API."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "docs", "make_api.py"), str(tmp / "api.md")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(ROOT, "docs", "api.md")) as f:
        assert (tmp / "api.md").read_text() == f.read(), "run: python docs/make_api.py"


def _fails(script, *args, cwd):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *args], capture_output=True, text=True,
                       cwd=cwd, timeout=600)
    assert r.returncode != 0
    return r.stderr


def test_examples_refuse_what_they_cannot_do(tmp):
    import torch

    from litcore import synthetic

    synthetic.make_model_dir(str(tmp / "bert"), synthetic.bert_config(), dtype=torch.float32)
    err = _fails("generate.py", "--model", str(tmp / "bert"), cwd=tmp)
    assert "BertModel" in err and "does not generate text" in err and "Traceback" not in err
    err = _fails("demo.py", "--budget", "abc", "--size", "tiny", "--cache", str(tmp), cwd=tmp)
    assert "--budget" in err and "'abc'" in err and "Traceback" not in err


def test_demo_prints_no_deprecation_warnings(tmp):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "demo.py"), "--size", "tiny", "--budget", "150KB",
                        "--tokens", "2", "--cache", str(tmp)], capture_output=True, text=True, cwd=tmp, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "torch_dtype" not in r.stderr and "deprecated" not in r.stderr.lower(), r.stderr
    assert "text (seeded random weights: gibberish)" in r.stdout
