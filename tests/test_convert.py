"""convert(): safetensors (single, sharded), HF directories, torch .bin; streaming memory; CLI."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import litcore
from conftest import run_python, same
from litcore.convert import ORDER_METADATA_KEY, natural_key


def _state(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    sd = {f"model.layers.{i}.mlp.weight": torch.randn(64, 32, generator=g) for i in range(n)}
    sd["model.embed.weight"] = torch.randn(100, 32, generator=g).bfloat16()
    sd["model.norm.weight"] = torch.ones(32).half()
    sd["model.position_ids"] = torch.arange(16)
    sd["model.mask"] = torch.tensor([True, False])
    sd["scalar"] = torch.tensor(3.5)
    sd["empty"] = torch.empty(0, 3)
    return sd


def _check(path, sd, dtype=None):
    with litcore.Store(path) as store:
        assert sorted(store.keys()) == sorted(sd)
        for k, v in sd.items():
            want = v.to(dtype) if dtype is not None and v.is_floating_point() else v
            assert same(store[k], want), k
        assert store.verify() == []
        return store.keys(), store.metadata


def test_from_single_safetensors(tmp):
    sd = _state()
    save_file(sd, tmp / "model.safetensors", metadata={"format": "pt"})
    litcore.convert(tmp / "model.safetensors", tmp / "m.lit", progress=False)
    keys, meta = _check(tmp / "m.lit", sd)
    # natural order: layer 2 before layer 10-style ordering, module order kept
    assert keys.index("model.layers.2.mlp.weight") < keys.index("model.layers.5.mlp.weight")
    assert meta["litcore.source_format"] == "safetensors" and meta[ORDER_METADATA_KEY] == "name"


def test_dtype_conversion_during_convert(tmp):
    sd = _state()
    save_file(sd, tmp / "model.safetensors")
    litcore.convert(tmp / "model.safetensors", tmp / "m.lit", dtype="bfloat16", progress=False)
    _, meta = _check(tmp / "m.lit", sd, dtype=torch.bfloat16)
    assert "model.layers.0.mlp.weight" in json.loads(meta["litcore.original_dtypes"])


def test_from_sharded_hf_directory(tmp):
    sd = _state(n=12)
    model_dir = tmp / "hf"
    model_dir.mkdir()
    names = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: sd[k] for k in keys}, model_dir / shard)
        weight_map.update({k: shard for k in keys})
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32}))
    litcore.convert(model_dir, tmp / "m.lit", progress=False)
    _, meta = _check(tmp / "m.lit", sd)
    assert json.loads(meta["transformers.config"])["model_type"] == "llama"


def test_from_torch_bin_keeps_ties(tmp):
    sd = _state()
    sd["lm_head.weight"] = sd["model.embed.weight"]
    torch.save(sd, tmp / "pytorch_model.bin")
    litcore.convert(tmp / "pytorch_model.bin", tmp / "m.lit", progress=False)
    _check(tmp / "m.lit", sd)
    with litcore.Store(tmp / "m.lit") as store:
        assert store.info("lm_head.weight").alias_of == "model.embed.weight"


def test_from_wrapped_checkpoint(tmp):
    sd = _state()
    torch.save({"state_dict": sd}, tmp / "ckpt.pt")
    litcore.convert(tmp / "ckpt.pt", tmp / "m.lit", progress=False)
    _check(tmp / "m.lit", sd)


def test_explicit_order(tmp):
    sd = _state()
    save_file(sd, tmp / "model.safetensors")
    order = ["model.norm.weight", "model.layers.3.mlp.weight"]
    litcore.convert(tmp / "model.safetensors", tmp / "m.lit", order=order, progress=False)
    with litcore.Store(tmp / "m.lit") as store:
        assert store.keys()[:2] == order
        assert store.metadata[ORDER_METADATA_KEY] == "given"
    # Converted again from the CLI (a .lit keeps its order and its record), the line says so.
    r = subprocess.run([sys.executable, "-m", "litcore", "convert", str(tmp / "m.lit"), str(tmp / "again.lit"), "-q"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip().endswith(", in the order its writer gave")


def test_bad_sources(tmp):
    with pytest.raises(FileNotFoundError):
        litcore.convert(tmp / "nope.safetensors", tmp / "m.lit")
    (tmp / "weights.xyz").write_bytes(b"x")
    with pytest.raises(ValueError, match="weights.xyz"):
        litcore.convert(tmp / "weights.xyz", tmp / "m.lit")
    (tmp / "bad.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(litcore.FormatError, match="bad.safetensors"):
        litcore.convert(tmp / "bad.safetensors", tmp / "m.lit")
    header = json.dumps({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}).encode()
    (tmp / "short.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 10)
    with pytest.raises(litcore.FormatError, match="'w'"):
        litcore.convert(tmp / "short.safetensors", tmp / "m.lit")
    torch.save([1, 2, 3], tmp / "list.pt")
    with pytest.raises(ValueError, match="state dict"):
        litcore.convert(tmp / "list.pt", tmp / "m.lit")
    assert not (tmp / "m.lit").exists()
    (tmp / "emptydir").mkdir()
    with pytest.raises(FileNotFoundError, match="emptydir"):
        litcore.convert(tmp / "emptydir", tmp / "m.lit")


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_conversion_streams(tmp, fmt):
    """A 256 MiB conversion grows peak RSS by far less than the file (a few tensors at most)."""
    src = tmp / ("model.safetensors" if fmt == "safetensors" else "model.bin")
    warm = tmp / ("warm.safetensors" if fmt == "safetensors" else "warm.bin")
    run_python(f"""
        import torch
        from safetensors.torch import save_file
        sd = {{f"layer{{i}}.weight": torch.full((4 << 20,), float(i)) for i in range(16)}}  # 16 x 16 MiB
        small = {{"w": torch.ones(16)}}
        if {fmt!r} == "safetensors":
            save_file(sd, {str(src)!r})
            save_file(small, {str(warm)!r})
        else:
            torch.save(sd, {str(src)!r})
            torch.save(small, {str(warm)!r})
        """)
    out = run_python(f"""
        import litcore
        def status(key):
            for line in open("/proc/self/status"):
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        # A small conversion first: what it imports lazily is not the conversion's memory.
        litcore.convert({str(warm)!r}, {str(tmp / 'warm.lit')!r}, dtype="bfloat16", progress=False)
        before = status("VmRSS")
        litcore.convert({str(src)!r}, {str(tmp / 'm.lit')!r}, dtype="bfloat16", progress=False)
        print(status("VmHWM") - before)
        """).stdout
    grew = int(out.split()[-1])
    # A tensor in flight is 16 MiB read + 8 MiB converted; glibc may keep a few freed ones
    # (its mmap threshold grows with freed sizes): 48-97 MiB measured. Loading the file whole
    # would take 256 MiB + 128 MiB.
    assert grew < 128 << 20, f"peak RSS grew by {grew >> 20} MiB converting 256 MiB"
    with litcore.Store(tmp / "m.lit") as store:
        assert float(store["layer7.weight"][-1]) == 7.0


def test_cli_convert_inspect_verify(tmp, litcore_cli):
    sd = _state()
    save_file(sd, tmp / "model.safetensors")
    cli = [sys.executable, "-m", "litcore"]
    r = subprocess.run(cli + ["convert", str(tmp / "model.safetensors"), str(tmp / "m.lit"), "--dtype", "bf16", "-q"],
                       capture_output=True, text=True, check=True)
    assert "wrote" in r.stdout and r.stdout.strip().endswith(", in name order")  # a bare file: no model to order by
    # the other commands in this process (the same code; a subprocess start imports torch again)
    r = litcore_cli("inspect", str(tmp / "m.lit"))
    assert "model.layers.0.mlp.weight" in r.stdout and "bfloat16" in r.stdout and "tensors" in r.stdout
    assert "litcore.tensor_order: name" in r.stdout
    r = litcore_cli("inspect", "--json", str(tmp / "m.lit"))
    assert json.loads(r.stdout)["tensors"]["model.position_ids"]["dtype"] == "int64"
    r = litcore_cli("verify", "-q", str(tmp / "m.lit"))
    assert r.returncode == 0 and "OK" in r.stdout
    with litcore.Store(tmp / "m.lit") as store:
        off = store.info("model.layers.1.mlp.weight").offset
    with open(tmp / "m.lit", "r+b") as f:
        f.seek(off)
        f.write(b"\x12\x34")
    r = litcore_cli("verify", "-q", str(tmp / "m.lit"))
    assert r.returncode == 1 and "model.layers.1.mlp.weight" in r.stderr
    r = litcore_cli("inspect", str(tmp / "missing.lit"))
    assert r.returncode == 2 and "missing.lit" in r.stderr
    r = subprocess.run(["litcore", "--help"], capture_output=True, text=True, env={**os.environ, "PATH": os.path.dirname(sys.executable) + ":" + os.environ["PATH"]})
    assert r.returncode == 0 and "convert" in r.stdout


def _file_order(store):
    """The names of the stored tensors that hold bytes, in the order their bytes lie in the file."""
    infos = store.infos()
    return sorted((k for k, i in infos.items() if i.alias_of is None and i.nbytes), key=lambda k: infos[k].offset)


def test_a_model_directory_converts_in_its_models_order(tmp):
    """`litcore convert DIR` writes what from_pretrained writes: the order the model runs in,
    not the names' order (where `layers.0.mlp` comes before `layers.0.self_attn`)."""
    from litcore import synthetic
    from litcore.hf import convert_pretrained

    synthetic.make_model_dir(str(tmp / "llama"), synthetic.llama_config("tiny"))
    litcore.convert(tmp / "llama", tmp / "convert.lit", progress=False)
    convert_pretrained(tmp / "llama", tmp / "pretrained.lit", progress=False)
    with litcore.Store(tmp / "convert.lit") as converted, litcore.Store(tmp / "pretrained.lit") as pretrained:
        order = _file_order(converted)
        assert order == _file_order(pretrained)
        assert order != sorted(order, key=natural_key)
        assert order.index("model.layers.0.self_attn.q_proj.weight") < order.index("model.layers.0.mlp.gate_proj.weight")
        assert converted.metadata[ORDER_METADATA_KEY] == pretrained.metadata[ORDER_METADATA_KEY] == "model"
    litcore.convert(tmp / "convert.lit", tmp / "bf16.lit", dtype="bfloat16", progress=False)
    with litcore.Store(tmp / "bf16.lit") as again:  # a .lit source passes its order on, and says which
        assert _file_order(again) == order and again.metadata[ORDER_METADATA_KEY] == "model"


def test_a_lit_file_keeps_its_order_when_its_dtype_changes(tmp):
    g = torch.Generator().manual_seed(0)
    names = ["z.weight", "layers.10.weight", "a.weight", "layers.2.weight"]
    litcore.save({n: torch.randn(8, 8, generator=g) for n in names}, tmp / "m.lit")
    litcore.convert(tmp / "m.lit", tmp / "b.lit", dtype="bfloat16", progress=False)
    with litcore.Store(tmp / "b.lit") as store:
        assert _file_order(store) == names
        assert store.info("a.weight").dtype == torch.bfloat16 and store.metadata[ORDER_METADATA_KEY] == "source"


def test_a_model_directory_transformers_cannot_build_converts_in_name_order(tmp):
    sd = _state()
    (tmp / "hf").mkdir()
    save_file(sd, tmp / "hf" / "model.safetensors")
    (tmp / "hf" / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    with pytest.warns(UserWarning, match="hf': tensors written in name order under the checkpoint's names, not the model's"):
        litcore.convert(tmp / "hf", tmp / "m.lit", progress=False)
    with litcore.Store(tmp / "m.lit") as store:
        assert _file_order(store) == sorted((k for k in sd if sd[k].numel()), key=natural_key)
        assert store.metadata[ORDER_METADATA_KEY] == "name"
