"""Checkpoints that transformers transforms as it loads them: GPT-NeoX's `embed_out` is the
model's `lm_head`; Mixtral's and Qwen2-MoE's per-expert `experts.N.w1/w2/w3` (gate/up/down)
tensors are the model's fused `experts.gate_up_proj` and `experts.down_proj`; HRM-Text's
fused `attn.gqkv_proj` is the model's four attention projections; Llava's
`language_model.model.*` is the model's `model.language_model.*`. A model
directory saved by transformers holds the checkpoint layout; litcore converts it into the
model's, and runs it bit-identical to the model transformers itself loads from it."""
import pytest
import torch

import litcore
import litcore.hf
from models import in_memory, seeded

transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=256, max_position_embeddings=128)
CASES = [
    ("gpt_neox", lambda: transformers.GPTNeoXConfig(**SMALL), transformers.GPTNeoXForCausalLM),
    ("mixtral", lambda: transformers.MixtralConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2),
     transformers.MixtralForCausalLM),
    ("qwen2_moe", lambda: transformers.Qwen2MoeConfig(**SMALL, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                                      shared_expert_intermediate_size=64), transformers.Qwen2MoeForCausalLM),
    # One checkpoint tensor split into several of the model's: `attn.gqkv_proj` into the
    # attention's gate, q, k and v projections, `mlp.gate_up_proj` into gate and up.
    ("hrm_text", lambda: transformers.HrmTextConfig(**SMALL), getattr(transformers, "HrmTextForCausalLM", None)),
]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def saved(request, tmp_path_factory):
    name, config, cls = request.param
    if cls is None:
        pytest.skip(f"this transformers has no {name}")
    directory = tmp_path_factory.mktemp(name) / "hf"
    seeded(cls, config()).save_pretrained(directory)
    reference = in_memory(cls.from_pretrained(directory))  # transformers' own conversion
    return name, cls, directory, reference


def _checkpoint_names(directory):
    from safetensors import safe_open

    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        return set(f.keys())


def test_the_file_holds_the_models_tensors(saved, tmp_path):
    name, cls, directory, reference = saved
    wanted = reference.state_dict()
    if set(wanted) <= _checkpoint_names(directory):
        pytest.skip(f"this transformers ({transformers.__version__}) saves {name} in the model's layout")
    litcore.convert(directory, tmp_path / "m.lit", progress=False)
    with litcore.Store(tmp_path / "m.lit") as store:
        assert set(store.keys()) == set(wanted)
        for key, tensor in wanted.items():
            assert torch.equal(store[key], tensor), key
        assert store.metadata["litcore.tensor_order"] == "model"


def test_streams_bit_identical_to_transformers(saved, tmp_path):
    name, cls, directory, reference = saved
    with litcore.Store(litcore.convert(directory, tmp_path / "m.lit", progress=False)) as store:
        budget = store.nbytes // 2
    lit = litcore.from_pretrained(directory, memory_budget=budget, cache_dir=tmp_path / "cache")
    if name in ("mixtral", "qwen2_moe"):  # the experts are most of an MoE model: they stream like any leaf
        assert "model.layers.1.mlp.experts" in lit.plan.streamed_modules
    ids = torch.randint(2, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = reference(ids).logits
        want_tokens = reference.generate(ids[:1], max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(lit(ids).logits, want)
    assert torch.equal(lit(ids).logits, want)  # after the first forward's plan
    assert torch.equal(lit.generate(ids[:1], max_new_tokens=6, do_sample=False, pad_token_id=0), want_tokens)
    assert lit.stats()["last"]["bytes_read"] > 0
    # The dry run plans the same units, with the same bytes, from the headers alone.
    dry = litcore.plan_pretrained(directory, memory_budget=budget)
    assert sorted((n, b) for n, _, b in dry.placements()) == sorted((n, b) for n, _, b in lit.plan.placements())


def test_a_vision_language_checkpoint_with_the_old_prefixes(tmp_path):
    """Llava checkpoints store `language_model.model.*`; the model holds `model.language_model.*`."""
    text = transformers.LlamaConfig(**{**SMALL, "num_hidden_layers": 2, "vocab_size": 300})
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                           image_size=32, patch_size=8)
    config = transformers.LlavaConfig(text_config=text, vision_config=vision, image_token_index=299,
                                      vision_feature_layer=-1, vision_feature_select_strategy="full")
    cls = transformers.LlavaForConditionalGeneration
    seeded(cls, config).save_pretrained(tmp_path / "hf")
    assert any(k.startswith("language_model.model.") for k in _checkpoint_names(tmp_path / "hf"))
    reference = in_memory(cls.from_pretrained(tmp_path / "hf"))
    lit = litcore.from_pretrained(tmp_path / "hf", memory_budget=300_000, cache_dir=tmp_path / "cache")
    assert lit.plan.streams
    ids = torch.randint(3, 290, (1, 10), generator=torch.Generator().manual_seed(0))
    ids = torch.cat([ids[:, :2], torch.full((1, 17), 299), ids[:, 2:]], 1)  # 16 patches + the class token
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference(input_ids=ids, pixel_values=pixels).logits
    assert torch.equal(lit(input_ids=ids, pixel_values=pixels).logits, want)
    assert torch.equal(lit(input_ids=ids, pixel_values=pixels).logits, want)


def test_experts_convert_one_expert_at_a_time(tmp_path):
    """A layer's experts (gate_up_proj: 128 MiB here) are written expert by expert: peak RSS
    grows by a few of one expert's 8 MiB tensors (49 MiB measured), not by the fused tensor
    (270 MiB with transformers' own stack-then-concatenate)."""
    from conftest import run_python

    config = dict(SMALL, hidden_size=1024, intermediate_size=2048, num_hidden_layers=1, num_attention_heads=8,
                  num_local_experts=8, num_experts_per_tok=2)
    out = run_python(f"""
        import gc, torch, litcore, litcore.hf_checkpoint
        import transformers.conversion_mapping, transformers.core_model_loading  # imports are not the conversion
        from transformers import MixtralConfig, MixtralForCausalLM
        def status(key):
            for line in open("/proc/self/status"):
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        torch.manual_seed(0)
        MixtralForCausalLM(MixtralConfig(**{config!r})).save_pretrained({str(tmp_path / 'hf')!r})
        gc.collect()
        before = status("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM to the current RSS
        litcore.convert({str(tmp_path / 'hf')!r}, {str(tmp_path / 'm.lit')!r}, progress=False)
        print(status("VmHWM") - before)
        """).stdout
    grew = int(out.split()[-1])
    assert grew < 112 << 20, f"peak RSS grew by {grew >> 20} MiB converting a 128 MiB gate_up_proj"
    with litcore.Store(tmp_path / "m.lit") as store:
        assert store.info("model.layers.0.mlp.experts.gate_up_proj").nbytes == 8 * 2 * 2048 * 1024 * 4


FP8_BLOCK = 32


def _quantize_fp8(tensor: torch.Tensor) -> tuple:
    """Block-wise FP8 as FP8 checkpoints store it: float8_e4m3fn weights and, per 32 x 32
    block, the float32 scale (`weight_scale_inv`) that multiplies them back."""
    *lead, rows, cols = tensor.shape
    blocks = tensor.float().reshape(*lead, rows // FP8_BLOCK, FP8_BLOCK, cols // FP8_BLOCK, FP8_BLOCK)
    scales = blocks.abs().amax(dim=(-3, -1)).clamp(min=1e-12) / torch.finfo(torch.float8_e4m3fn).max
    quantized = (blocks / scales[..., :, None, :, None]).to(torch.float8_e4m3fn).reshape(tensor.shape)
    return quantized, scales


def _save_pre_quantized(model, directory, quantization_config: dict, quantize) -> dict:
    """`model` saved by transformers, then its projections (attention, MLP, experts: 2-D or
    3-D, 32-divisible) rewritten by `quantize` and config.json given `quantization_config`.
    Returns the checkpoint's tensors."""
    import json

    from safetensors.torch import load_file, save_file

    model.save_pretrained(directory)
    tensors = {}
    for name, tensor in load_file(str(directory / "model.safetensors")).items():
        projection = name.endswith(("proj.weight", "proj", ".w1.weight", ".w2.weight", ".w3.weight"))
        if projection and tensor.dim() >= 2 and not tensor.shape[-1] % FP8_BLOCK and not tensor.shape[-2] % FP8_BLOCK:
            tensors[name], tensors[name + "_scale_inv"] = quantize(tensor)
        else:
            tensors[name] = tensor
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    saved = json.loads((directory / "config.json").read_text())
    saved["quantization_config"] = quantization_config
    (directory / "config.json").write_text(json.dumps(saved))
    return tensors


FP8_CASES = [("llama", lambda: transformers.LlamaConfig(**SMALL), transformers.LlamaForCausalLM), CASES[1]]


@pytest.mark.parametrize("name,config,cls", FP8_CASES, ids=[c[0] for c in FP8_CASES])
def test_an_fp8_checkpoint_runs_as_transformers_dequantizes_it(name, config, cls, tmp_path):
    """An FP8 checkpoint (float8 weights, a `weight_scale_inv` per 32 x 32 block, config.json's
    quantization_config "fp8") is converted to the plain weights transformers dequantizes it
    into on a machine without a GPU, in the model's dtype, and then streams `torch.equal` to
    transformers' model; its experts are dequantized expert by expert before they are fused."""
    directory = tmp_path / "fp8"
    model = seeded(cls, config())
    tensors = _save_pre_quantized(model.to(torch.bfloat16), directory, {
        "quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [FP8_BLOCK, FP8_BLOCK]},
        _quantize_fp8)
    assert any(t.dtype == torch.float8_e4m3fn for t in tensors.values())
    reference = in_memory(cls.from_pretrained(directory))  # transformers dequantizes on a CPU-only machine
    assert not hasattr(reference.config, "quantization_config")

    _run_like(reference, directory, tmp_path)


def _run_like(reference, directory, tmp_path) -> None:
    """litcore's run of a pre-quantized `directory`, half of it streamed: the plain weights'
    bytes planned, logits and generated tokens `torch.equal` to `reference`; the converted
    file holds the model's tensors (no scales, none quantized) and a config without
    quantization, and runs the same."""
    state = reference.state_dict()
    plan = litcore.plan_pretrained(directory, memory_budget="1GiB")  # the dry run plans the plain weights' bytes
    assert plan.total_bytes == sum(t.numel() * t.element_size() for t in state.values())
    budget = plan.total_bytes // 2
    lit = litcore.from_pretrained(directory, memory_budget=budget, cache_dir=tmp_path / "cache", progress=False)
    assert lit.plan.streamed_bytes + lit.plan.routed_bytes > 0
    ids = torch.randint(2, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = reference(ids).logits
        want_tokens = reference.generate(ids[:1], max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(lit(ids).logits, want)
    assert torch.equal(lit(ids).logits, want)
    assert torch.equal(lit.generate(ids[:1], max_new_tokens=6, do_sample=False, pad_token_id=0), want_tokens)

    litcore.convert(directory, tmp_path / "m.lit", progress=False)
    with litcore.Store(tmp_path / "m.lit") as store:
        assert set(store.keys()) == set(state)
        assert {store.info(k).dtype for k in store.keys() if store.info(k).dtype.is_floating_point} == {torch.bfloat16}
    assert not hasattr(litcore.hf.config_from_lit(tmp_path / "m.lit"), "quantization_config")
    again = litcore.from_pretrained(tmp_path / "m.lit", memory_budget=budget, progress=False)
    assert torch.equal(again(ids).logits, want)


def test_an_mxfp4_checkpoint_runs_as_transformers_dequantizes_it(tmp_path):
    """gpt-oss's MXFP4 experts (`<name>_blocks`: two 4-bit codes per byte; `<name>_scales`: one
    exponent per 32 values) are converted, one expert at a time, to the bfloat16 experts
    transformers dequantizes them into on a machine without a GPU, in the model's layout."""
    import json

    from safetensors.torch import load_file, save_file

    cls = getattr(transformers, "GptOssForCausalLM", None)
    if cls is None:
        pytest.skip("this transformers has no gpt-oss")
    directory = tmp_path / "mxfp4"
    config = transformers.GptOssConfig(**{**SMALL, "intermediate_size": 64, "head_dim": 16}, num_local_experts=4,
                                       num_experts_per_tok=2)
    seeded(cls, config).to(torch.bfloat16).save_pretrained(directory)
    tensors = load_file(str(directory / "model.safetensors"))
    codes = torch.Generator().manual_seed(1)
    for name in [n for n in tensors if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        experts, inputs, outputs = tensors.pop(name).shape  # the model's [experts, in, out]
        tensors[name + "_blocks"] = torch.randint(0, 256, (experts, outputs, inputs // 32, 16), generator=codes,
                                                  dtype=torch.uint8)
        tensors[name + "_scales"] = torch.randint(118, 130, (experts, outputs, inputs // 32), generator=codes,
                                                  dtype=torch.uint8)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    saved = json.loads((directory / "config.json").read_text())
    saved["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (directory / "config.json").write_text(json.dumps(saved))
    reference = in_memory(cls.from_pretrained(directory))  # transformers dequantizes on a CPU-only machine
    assert not hasattr(reference.config, "quantization_config")
    assert reference.model.layers[0].mlp.experts.gate_up_proj.dtype == torch.bfloat16
    _run_like(reference, directory, tmp_path)


def test_a_float8_weight_without_its_scales_is_named(tmp_path):
    directory = tmp_path / "fp8"
    tensors = _save_pre_quantized(seeded(transformers.LlamaForCausalLM, transformers.LlamaConfig(**SMALL)), directory,
                                  {"quant_method": "fp8", "weight_block_size": [FP8_BLOCK, FP8_BLOCK]}, _quantize_fp8)
    from safetensors.torch import save_file

    del tensors["model.layers.1.mlp.up_proj.weight_scale_inv"]
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="'model.layers.1.mlp.up_proj.weight' is torch.float8_e4m3fn without "
                                         "'model.layers.1.mlp.up_proj.weight_scale_inv'"):
        litcore.from_pretrained(directory, cache_dir=tmp_path / "cache", progress=False)
    assert not [f for f in (tmp_path / "cache").rglob("*") if f.is_file()]  # refused before writing anything


def test_another_pre_quantized_checkpoint_is_refused_before_any_conversion(tmp_path):
    """A checkpoint quantized by a method litcore does not dequantize (GPTQ here: packed
    int32 weights) does not fit the plain layers litcore builds: from_pretrained and the dry
    run say so, naming the directory and the method, before converting anything; a .lit
    converted from it is refused the same way; `litcore.convert` writes what its files hold."""
    directory = tmp_path / "gptq"
    config = transformers.LlamaConfig(**{**SMALL, "num_hidden_layers": 1})

    def pack(tensor: torch.Tensor) -> tuple:  # the shapes of GPTQ's packed weights, not its arithmetic
        return torch.zeros(tensor.shape[-1] // 8, tensor.shape[-2], dtype=torch.int32), torch.ones(1, tensor.shape[-2])

    tensors = _save_pre_quantized(seeded(transformers.LlamaForCausalLM, config), directory,
                                  {"quant_method": "gptq", "bits": 4, "group_size": 32}, pack)
    refusal = f"'{directory}' is a pre-quantized checkpoint .*quant_method 'gptq'"
    with pytest.raises(ValueError, match=refusal):
        litcore.from_pretrained(directory, cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()  # refused before converting
    with pytest.raises(ValueError, match=refusal):
        litcore.plan_pretrained(directory)
    with pytest.raises(ValueError, match=refusal):
        litcore.hf.convert_pretrained(directory, tmp_path / "q.lit")
    with pytest.warns(UserWarning, match="pre-quantized"):
        litcore.convert(directory, tmp_path / "q.lit", progress=False)
    with litcore.Store(tmp_path / "q.lit") as store:
        assert set(store.keys()) == set(tensors)
        assert store.info("model.layers.0.mlp.up_proj.weight").dtype == torch.int32
    with pytest.raises(ValueError, match=f"'{tmp_path / 'q.lit'}' is a pre-quantized checkpoint"):
        litcore.from_pretrained(tmp_path / "q.lit", progress=False)
