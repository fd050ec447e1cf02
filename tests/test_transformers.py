"""transformers end to end: Llama, GPT-J, GPT-2 and BERT from configs with seeded weights,
through litcore (resident and streaming), bit-identical to the in-memory model."""
import json

import pytest
import torch

import litcore
from models import llama_config, seeded, transformers_models

MODELS = transformers_models()


def _inputs(config, seed=0):
    return torch.randint(2, config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(seed))


def _streaming(path, build):
    """A LitModule that streams most weights: the smallest budget of a third, half or two
    thirds of the file that still holds what must stay resident."""
    with litcore.Store(path) as store:
        total = store.nbytes
    for fraction in (1 / 3, 1 / 2, 2 / 3):
        try:
            return litcore.LitModule.from_params(path, build, memory_budget=int(total * fraction))
        except litcore.BudgetTooSmallError:
            continue
    raise AssertionError("no streaming budget fits")


def _lit(path, config, cls, mode):
    """Resident: through from_pretrained (transformers' own init skipped, ties restored);
    streaming: a plain builder, as any nn.Module gets it."""
    if mode == "resident":
        return litcore.from_pretrained(path, config=config, model_class=cls)
    return _streaming(path, lambda: cls(config))


@pytest.fixture(scope="module", params=MODELS, ids=[m[0] for m in MODELS])
def exported(request, tmp_path_factory):
    name, config, cls, kind = request.param
    ref = seeded(cls, config)
    path = tmp_path_factory.mktemp(name) / "model.lit"
    litcore.save(ref.state_dict(), path)
    return name, config, cls, kind, ref, path


@pytest.mark.parametrize("mode", ["resident", "streaming"])
def test_outputs_are_identical(exported, mode):
    name, config, cls, kind, ref, path = exported
    lit = _lit(path, config, cls, mode)
    assert lit.plan.streams == (mode == "streaming")
    for seed in range(3):
        ids = _inputs(config, seed)
        with torch.no_grad():
            want = ref(ids, output_hidden_states=True)
        got = lit(ids, output_hidden_states=True)
        main = "logits" if kind == "causal" else "last_hidden_state"
        assert torch.equal(got[main], want[main]), name
        assert all(torch.equal(a, b) for a, b in zip(got.hidden_states, want.hidden_states))
    if mode == "streaming":
        assert lit.stats()["last"]["bytes_read"] > 0


@pytest.mark.parametrize("mode", ["resident", "streaming"])
def test_generate_is_identical(exported, mode):
    name, config, cls, kind, ref, path = exported
    if kind != "causal":
        pytest.skip("encoder-only")
    lit = _lit(path, config, cls, mode)
    ids = _inputs(config)[:1]
    kw = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        want = ref.generate(ids, **kw)
    got = lit.generate(ids, **kw)
    assert got.shape[1] == ids.shape[1] + 20
    assert torch.equal(got, want)


def test_bf16_export_of_fp32_llama(tmp):
    from transformers import LlamaForCausalLM

    config = llama_config()
    ref = seeded(LlamaForCausalLM, config)
    litcore.save(ref.state_dict(), tmp / "bf16.lit", dtype="bfloat16")
    lit = litcore.LitModule.from_params(tmp / "bf16.lit", lambda: LlamaForCausalLM(config))
    ref16 = seeded(LlamaForCausalLM, config)
    for p in ref16.parameters():  # weights in bf16; computed buffers (inv_freq) stay fp32, as in litcore
        p.data = p.data.bfloat16()
    ids = _inputs(config)
    with torch.no_grad():
        assert torch.equal(lit(ids).logits, ref16(ids).logits)


def test_from_pretrained_directory_and_lit(tmp):
    from transformers import LlamaForCausalLM

    config = llama_config(tie_word_embeddings=True)
    ref = seeded(LlamaForCausalLM, config)
    ref.save_pretrained(tmp / "hf", safe_serialization=True)
    ids = _inputs(config)
    with torch.no_grad():
        want = ref(ids).logits
    lit = litcore.from_pretrained(tmp / "hf", cache_dir=tmp / "cache", progress=False)
    assert torch.equal(lit(ids).logits, want)
    assert not list((tmp / "hf").glob("*.lit"))  # the model directory is left as it was
    (lit_file,) = (tmp / "cache").glob("hf-*.lit")
    mtime = lit_file.stat().st_mtime_ns
    again = litcore.from_pretrained(tmp / "hf", cache_dir=tmp / "cache", progress=False)  # cached: no reconversion
    assert lit_file.stat().st_mtime_ns == mtime
    assert torch.equal(again(ids).logits, want)
    # The .lit file alone is enough: it carries the config.
    with litcore.Store(lit_file) as store:
        half = store.nbytes // 2
    alone = litcore.from_pretrained(lit_file, memory_budget=half)
    assert alone.plan.streams
    assert torch.equal(alone(ids).logits, want)
    # Module order: the file follows the model's parameter order.
    with litcore.Store(lit_file) as store:
        keys = store.keys()
        assert keys.index("model.embed_tokens.weight") < keys.index("model.layers.0.self_attn.q_proj.weight")
        assert keys.index("model.layers.1.mlp.down_proj.weight") < keys.index("model.norm.weight")
        assert json.loads(store.metadata["transformers.config"])["model_type"] == "llama"
    # A dtype and a cache directory.
    lit16 = litcore.from_pretrained(tmp / "hf", dtype="bfloat16", cache_dir=tmp / "cache", progress=False)
    assert lit16.module.model.embed_tokens.weight.dtype == torch.bfloat16
    assert len(list((tmp / "cache").glob("hf-*.bfloat16.lit"))) == 1


def test_from_pretrained_options_mean_what_they_say(tmp):
    from transformers import LlamaForCausalLM

    config = llama_config()
    ref = seeded(LlamaForCausalLM, config)
    ref.save_pretrained(tmp / "hf", safe_serialization=True)
    ids = _inputs(config)
    with pytest.raises(TypeError, match="from_pretrained.*memory_buget"):
        litcore.from_pretrained(tmp / "hf", memory_buget="1GB")  # a typo is reported against what was called
    lit = litcore.from_pretrained(tmp / "hf", cache_dir=tmp / "cache", progress=False)
    (cached,) = (tmp / "cache").glob("hf-*.lit")
    # a .lit file of another dtype is converted, never loaded as it is
    bf16 = tmp / "bf16.lit"
    litcore.convert(cached, bf16, dtype="bfloat16", progress=False)
    as_fp32 = litcore.from_pretrained(bf16, dtype="float32", cache_dir=tmp / "cache", progress=False)
    assert as_fp32.module.model.layers[0].mlp.up_proj.weight.dtype == torch.float32
    assert litcore.from_pretrained(bf16, progress=False).module.lm_head.weight.dtype == torch.bfloat16
    # a corrupt cache is rebuilt, with a warning, and the answer stays right
    with litcore.Store(cached) as store:
        offset = store.info("model.layers.1.mlp.up_proj.weight").offset
    lit.close()
    with open(cached, "r+b") as f:
        f.seek(offset)
        f.write(b"\x7f\x7f")
    with pytest.warns(UserWarning, match=r"cached conversion .* is corrupt .*model\.layers\.1\.mlp\.up_proj\.weight"):
        again = litcore.from_pretrained(tmp / "hf", cache_dir=tmp / "cache", progress=False)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, ref(ids).logits)
    # a source that changed is converted again (not judged by mtime alone)
    (tmp / "hf" / "config.json").write_text((tmp / "hf" / "config.json").read_text().replace("}", ' , "x_note": 1}', 1))
    before = cached.stat().st_mtime_ns
    litcore.from_pretrained(tmp / "hf", cache_dir=tmp / "cache", progress=False)
    assert cached.stat().st_mtime_ns != before


def test_litcore_jit_after_import_litcore(tmp):
    from conftest import run_python

    out = run_python(f"""
        import litcore, torch
        scripted = torch.jit.script(torch.nn.Linear(4, 4).eval())
        litcore.jit.save(scripted, {str(tmp / 'l.pt')!r}, {str(tmp / 'l.lit')!r})
        print(type(litcore.jit.load({str(tmp / 'l.pt')!r}, {str(tmp / 'l.lit')!r})).__name__)
        """)
    assert "RecursiveScriptModule" in out.stdout
