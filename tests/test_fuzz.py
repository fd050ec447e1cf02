"""Randomly corrupted files each load or raise FormatError: never a crash, hang or runaway
allocation (run in a subprocess, under a memory cgroup when available)."""
import glob
import os
import subprocess
import sys

import pytest
import torch

import litcore

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "benchmarks"))
import cgroup  # noqa: E402


def _run(args, limit=768 * 10**6):
    cmd = [sys.executable, os.path.join(HERE, "mutate.py"), *args]
    if cgroup.available():
        out = cgroup.run(cmd, limit, timeout=600)
        return out.returncode, out.stdout, out.stderr
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("seed", [1, 2])
def test_mutations_never_crash(tmp, seed):
    g = torch.Generator().manual_seed(seed)
    tensors = {f"layer{i}.weight": torch.randn(37, 11, generator=g) for i in range(5)}
    tensors.update({"ids": torch.arange(7), "flag": torch.tensor(True), "empty": torch.empty(0, 3),
                    "half": torch.randn(9, generator=g).half()})
    tensors["tied"] = tensors["layer0.weight"]
    litcore.save(tensors, tmp / "seed.lit", metadata={"source": "fuzz"})
    code, out, err = _run([str(tmp / "seed.lit"), "200", str(seed)])
    assert code == 0, out + err[-3000:]
    ok, errors = map(int, out.split())
    assert errors > 150 and ok + errors > 200


def test_fuzz_regressions():
    files = sorted(f for f in glob.glob(os.path.join(HERE, "fuzz_regressions", "*")) if not f.endswith(".md"))
    if not files:
        pytest.skip("no regression inputs yet")
    code, out, err = _run(["--files", *files])
    assert code == 0, out + err[-3000:]
