"""A TorchScript model whose weights are several times a cgroup memory limit runs to
completion from C++ under that limit, with outputs equal to Python's."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import litcore
import litcore.jit

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import cgroup  # noqa: E402

pytestmark = pytest.mark.skipif(not cgroup.available(), reason="memory cgroups cannot be created here")


class Deep(nn.Module):
    def __init__(self, dim=2048, layers=36):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


def test_cpp_runs_far_over_its_memory_limit(tmp, cpp_app):
    torch.manual_seed(0)
    scripted = torch.jit.script(Deep().eval())
    x = torch.linspace(-1, 1, 4 * 2048).reshape(4, 2048)
    with torch.no_grad():
        want = scripted(x)
    litcore.jit.save(scripted, tmp / "deep.pt", tmp / "deep.lit")
    del scripted
    weights_mb = os.path.getsize(tmp / "deep.lit") / 1e6
    # What the app needs without weights: run it on a tiny model first.
    tiny = torch.jit.script(Deep(dim=8, layers=2).eval())
    litcore.jit.save(tiny, tmp / "tiny.pt", tmp / "tiny.lit")
    base = cgroup.run([str(cpp_app / "run_model"), str(tmp / "tiny.pt"), str(tmp / "tiny.lit"), "--shape", "4,8"], None)
    assert base.returncode == 0, base.stderr
    limit_mb = int(base.peak_bytes / 1e6) + 110
    assert weights_mb > 2.5 * limit_mb, (weights_mb, limit_mb)
    cgroup.evict([str(tmp / "deep.lit")])
    out = cgroup.run([str(cpp_app / "run_model"), str(tmp / "deep.pt"), str(tmp / "deep.lit"), "--budget",
                      str(60 * 10**6), "--shape", "4,2048", "--repeat", "2"], limit_mb * 10**6)
    assert out.returncode == 0 and not out.oom_killed, out.stderr[-2000:]
    assert out.peak_bytes <= limit_mb * 10**6
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert int(lines["xxh64"]) == litcore._C.tensor_xxh64(want.contiguous())
