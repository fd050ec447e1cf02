"""empty_init(): no weight memory, no init work, always undone, buffers real."""
import pytest
import torch
from torch import nn

import litcore
from conftest import run_python
from models import Awkward


def test_parameters_are_meta_and_buffers_are_real():
    with litcore.empty_init():
        m = Awkward()
    assert all(p.device.type == "meta" for p in m.parameters())
    assert m.inv_freq.device.type == "cpu" and torch.isfinite(m.inv_freq).all()
    assert torch.equal(m.offsets, torch.arange(16))
    assert m.head.weight is m.embed.weight


def test_hijack_is_undone_when_the_builder_raises():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with litcore.empty_init():
            Boom()
    p = nn.Parameter(torch.ones(2))
    assert p.device.type == "cpu" and torch.equal(p.data, torch.ones(2))
    assert nn.Linear(2, 2).weight.device.type == "cpu"


def test_nested_use():
    with litcore.empty_init():
        with litcore.empty_init():
            a = nn.Linear(4, 4)
        b = nn.Linear(4, 4)  # still inside the outer context
    c = nn.Linear(4, 4)
    assert a.weight.is_meta and b.weight.is_meta and not c.weight.is_meta


def test_llama_7b_shape_builds_fast_in_little_memory():
    out = run_python("""
        import resource, time, torch
        from transformers import LlamaConfig, LlamaForCausalLM
        import litcore
        cfg = LlamaConfig(hidden_size=4096, num_hidden_layers=32, intermediate_size=11008, vocab_size=32000,
                          num_attention_heads=32, num_key_value_heads=32)
        def hwm():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) * 1024
        before = hwm()
        t0 = time.perf_counter()
        with litcore.empty_init():
            model = LlamaForCausalLM(cfg)
        took = time.perf_counter() - t0
        n = sum(p.numel() for p in model.parameters())
        print(took, hwm() - before, n)
        """).stdout.split()
    took, grew, n = float(out[0]), int(out[1]), int(out[2])
    assert n > 6_500_000_000
    assert took < 1.0, f"building took {took:.2f} s"
    assert grew < 100 << 20, f"peak RSS grew by {grew >> 20} MiB"
