"""TorchScript programs with weights in a .lit file: Python and C++, resident and streaming."""
import os
import subprocess
import sys
import zipfile

import pytest
import torch
from torch import nn

import litcore
import litcore.jit
from models import Block, awkward


class MLP(nn.Module):
    def __init__(self, dim=64, layers=4):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("scale", torch.full((dim,), 2.0))

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.norm(x) * self.scale


def linspace_input(shape):
    n = 1
    for d in shape:
        n *= d
    return torch.linspace(-1, 1, n).reshape(shape)


def ids_input(shape, vocab):
    n = shape[0] * shape[1]
    return ((torch.arange(n) * 7 + 3) % vocab).reshape(shape)


def _main(out):
    """The first output of a module: a tensor, a tuple's first element, a dict's logits."""
    if isinstance(out, tuple):
        return out[0]
    if isinstance(out, dict):
        return out["logits"]
    return out


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, use_cache=False)
    return LlamaForCausalLM(config).eval()


def _weights_in_zip(path):
    with zipfile.ZipFile(path) as z:
        return sum(i.file_size for i in z.infolist() if "/data/" in i.filename)


def _roundtrip(tmp, scripted, x, budgets=("auto", "small")):
    with torch.no_grad():
        want = scripted(x)
    litcore.jit.save(scripted, tmp / "m.pt", tmp / "m.lit")
    weights = os.path.getsize(tmp / "m.lit")
    assert _weights_in_zip(tmp / "m.pt") < 0.02 * weights, "the program must not carry the weights"
    for budget in budgets:
        b = weights // 3 if budget == "small" else budget
        loaded = litcore.jit.load(tmp / "m.pt", tmp / "m.lit", memory_budget=b)
        with torch.no_grad():  # as for `want`: some modules take another path with autograd on
            got = loaded(x)
        assert torch.equal(_main(got), _main(want)), budget
        assert loaded._litcore_engine.streams() == (budget == "small")
        if budget == "small":
            assert loaded._litcore_engine.passes()[-1]["bytes_read"] > 0
    with torch.no_grad():
        again = scripted(x)
    assert torch.equal(_main(again), _main(want))
    return want


def test_scripted_mlp(tmp):
    torch.manual_seed(0)
    _roundtrip(tmp, torch.jit.script(MLP().eval()), linspace_input((3, 64)))


class Experts(nn.Module):
    """A mixture-of-experts block's experts: one fused weight, an activation as its only child."""

    def __init__(self, dim=64, experts=4):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(experts, dim, dim) / dim ** 0.5)
        self.act = nn.GELU()

    def forward(self, x, expert: int):
        return self.act(x @ self.weight[expert])


class MoE(nn.Module):
    def __init__(self, dim=64, layers=4):
        super().__init__()
        self.layers = nn.ModuleList(Experts(dim) for _ in range(layers))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = x + layer(x, i % 4)
        return x


def test_scripted_experts_stream(tmp):
    torch.manual_seed(0)
    _roundtrip(tmp, torch.jit.script(MoE().eval()), linspace_input((3, 64)))
    loaded = litcore.jit.load(tmp / "m.pt", tmp / "m.lit", memory_budget=os.path.getsize(tmp / "m.lit") // 3)
    loaded(linspace_input((3, 64)))
    assert "streamed" in {where for _, where, _ in loaded._litcore_engine.placements()}


def test_scripted_transformer_block(tmp):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, batch_first=True, dropout=0.0).eval()
    _roundtrip(tmp, torch.jit.script(layer), linspace_input((2, 10, 64)), budgets=("auto",))


def test_traced_blocks(tmp):
    torch.manual_seed(0)
    model = nn.Sequential(*[Block(64) for _ in range(4)]).eval()
    x = linspace_input((2, 5, 64))
    _roundtrip(tmp, torch.jit.trace(model, x), x)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_traced_transformers_llama(tmp):
    model = _tiny_llama()
    ids = ids_input((2, 12), 256)
    traced = torch.jit.trace(model, ids, strict=False)
    want = _roundtrip(tmp, traced, ids)
    program = torch.jit.load(tmp / "m.pt")
    lookups = [names for names, flag in zip(program._litcore_units, program._litcore_lookup) if flag]
    assert lookups == [["model.embed_tokens.weight"]]  # read by row: never read ahead


def test_tracing_a_lit_module(tmp):
    ref = nn.Sequential(*[Block(32) for _ in range(3)]).eval()
    litcore.save(ref.state_dict(), tmp / "w.lit")
    lit = litcore.LitModule.from_params(tmp / "w.lit", lambda: nn.Sequential(*[Block(32) for _ in range(3)]))
    x = linspace_input((2, 4, 32))
    traced = torch.jit.trace(lit.module, x)
    litcore.jit.save(traced, tmp / "t.pt", tmp / "t.lit")
    with torch.no_grad():
        assert torch.equal(litcore.jit.load(tmp / "t.pt", tmp / "t.lit")(x), ref(x))
        assert torch.equal(litcore.jit.load(tmp / "t.pt", tmp / "t.lit", memory_budget="40KB")(x), ref(x))


def test_errors(tmp):
    with pytest.raises(TypeError, match="ScriptModule"):
        litcore.jit.save(MLP(), tmp / "m.pt", tmp / "m.lit")
    plain = torch.jit.script(MLP().eval())
    torch.jit.save(plain, tmp / "plain.pt")
    with pytest.raises(ValueError, match="not saved by litcore"):
        litcore.jit.load(tmp / "plain.pt", tmp / "m.lit")
    litcore.jit.save(plain, tmp / "m.pt", tmp / "m.lit")
    with pytest.raises(Exception, match="missing.lit"):
        litcore.jit.load(tmp / "m.pt", tmp / "missing.lit")
    (tmp / "bad.lit").write_bytes(b"LITCORE\0" + b"\0" * 5000)
    with pytest.raises(Exception, match="bad.lit.*unsupported format version"):
        litcore.jit.load(tmp / "m.pt", tmp / "bad.lit")
    with pytest.raises(Exception, match="too small"):
        litcore.jit.load(tmp / "m.pt", tmp / "m.lit", memory_budget=1000)


def _run_cpp(app, *args):
    return subprocess.run([str(app / "run_model"), *map(str, args)], capture_output=True, text=True)


def _xxh(t):
    return litcore._C.tensor_xxh64(t.contiguous())


def test_cpp_matches_python(tmp, cpp_app):
    torch.manual_seed(0)
    scripted = torch.jit.script(MLP().eval())
    x = linspace_input((3, 64))
    want = _roundtrip(tmp, scripted, x, budgets=("auto",))
    for budget in ("auto", str(os.path.getsize(tmp / "m.lit") // 3)):
        r = _run_cpp(cpp_app, tmp / "m.pt", tmp / "m.lit", "--budget", budget, "--shape", "3,64")
        assert r.returncode == 0, r.stderr
        lines = dict(line.split(" ", 1) for line in r.stdout.strip().splitlines())
        assert lines["shape"] == "3 64"
        assert int(lines["xxh64"]) == _xxh(want)
    r = subprocess.run([str(cpp_app / "plain_jit_load"), str(tmp / "m.pt")], capture_output=True, text=True)
    assert r.returncode == 0 and "loaded" in r.stdout, r.stderr


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_cpp_traced_llama(tmp, cpp_app):
    ids = ids_input((2, 12), 256)
    traced = torch.jit.trace(_tiny_llama(), ids, strict=False)
    with torch.no_grad():
        want = _main(traced(ids))
    litcore.jit.save(traced, tmp / "g.pt", tmp / "g.lit")
    for budget in ("auto", str(os.path.getsize(tmp / "g.lit") // 3)):
        r = _run_cpp(cpp_app, tmp / "g.pt", tmp / "g.lit", "--shape", "2,12", "--ids", "256", "--budget", budget)
        assert r.returncode == 0, r.stderr
        assert int(dict(l.split(" ", 1) for l in r.stdout.splitlines())["xxh64"]) == _xxh(want)


def test_cpp_errors_are_clean(tmp, cpp_app):
    litcore.jit.save(torch.jit.script(MLP().eval()), tmp / "m.pt", tmp / "m.lit")
    r = _run_cpp(cpp_app, tmp / "m.pt", tmp / "missing.lit")
    assert r.returncode == 4 and "missing.lit" in r.stderr and "No such file" in r.stderr
    (tmp / "bad.lit").write_bytes(b"NOTLIT" + b"\0" * 5000)
    r = _run_cpp(cpp_app, tmp / "m.pt", tmp / "bad.lit")
    assert r.returncode == 3 and "bad.lit" in r.stderr and "FormatError" in r.stderr
    r = _run_cpp(cpp_app, tmp / "missing.pt", tmp / "m.lit")
    assert r.returncode == 4 and "missing.pt" in r.stderr
    torch.jit.save(torch.jit.script(MLP().eval()), tmp / "plain.pt")
    r = _run_cpp(cpp_app, tmp / "plain.pt", tmp / "m.lit")
    assert r.returncode == 4 and "not saved by litcore.jit.save" in r.stderr
