"""transformers architectures beyond the suite's Llama, GPT-J, GPT-2 and BERT, each saved by
transformers' own save_pretrained and run through `litcore.from_pretrained` with part of it
streamed: outputs and generated tokens `torch.equal` to the same model loaded by transformers
with its weights in memory.

The suite runs one of each kind of mechanism the others do not exercise (state-space layers
beside attention and experts, an encoder-decoder speech model, a weight-normed convolution,
linear attention beside shared experts, a convolutional vision model); the whole list (45
architectures: MoE, hybrid, multimodal, encoder-decoder, vision, audio) runs with
`LITCORE_ALL_ARCHITECTURES=1 pytest tests/test_architectures.py` after a transformers upgrade."""
import os

import pytest
import torch

import litcore
from models import in_memory

transformers = pytest.importorskip("transformers")

S = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
         vocab_size=256, max_position_embeddings=128)
V = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
MOE = dict(num_local_experts=4, num_experts_per_tok=2)


def ids(n=10):
    return dict(input_ids=torch.randint(3, 200, (1, n), generator=torch.Generator().manual_seed(0)))


def noise(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def image():
    return dict(pixel_values=noise(1, 3, 32, 32))


def audio():
    return dict(input_values=noise(1, 800))


WAV = dict(V, vocab_size=32, conv_dim=(32, 32), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
           num_conv_pos_embedding_groups=4)

# name: (model class, config class, config, inputs, generates); the first entries run by default.
CASES = {
    "jamba": ("JambaForCausalLM", "JambaConfig", dict(S, num_experts=4, num_experts_per_tok=2, attn_layer_period=2,
                                                      attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
                                                      mamba_d_state=8, mamba_dt_rank=8), ids, True),
    "whisper": ("WhisperForConditionalGeneration", "WhisperConfig",
                dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                     encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=256, num_mel_bins=16, max_source_positions=32,
                     max_target_positions=64, decoder_start_token_id=1, pad_token_id=0, eos_token_id=2),
                lambda: dict(input_features=noise(1, 16, 64), decoder_input_ids=torch.tensor([[1, 5, 6]])), True),
    "wav2vec2": ("Wav2Vec2ForCTC", "Wav2Vec2Config", WAV, audio, False),
    "qwen3_next": ("Qwen3NextForCausalLM", "Qwen3NextConfig",
                   dict(S, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32,
                        head_dim=16, linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=16,
                        linear_value_head_dim=16, layer_types=["linear_attention", "full_attention"]), ids, True),
    "convnext": ("ConvNextForImageClassification", "ConvNextConfig",
                 dict(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=5), image, False),
    # LITCORE_ALL_ARCHITECTURES=1 from here on
    "qwen3_moe": ("Qwen3MoeForCausalLM", "Qwen3MoeConfig", dict(S, num_experts=4, num_experts_per_tok=2,
                                                                moe_intermediate_size=32), ids, True),
    "phimoe": ("PhimoeForCausalLM", "PhimoeConfig", dict(S, **MOE), ids, True),
    "gpt_oss": ("GptOssForCausalLM", "GptOssConfig", dict(S, **MOE, head_dim=16,
                                                          layer_types=["sliding_attention", "full_attention"]), ids, True),
    "dbrx": ("DbrxForCausalLM", "DbrxConfig",
             dict(d_model=64, n_heads=4, n_layers=2, max_seq_len=128, vocab_size=256,
                  attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0),
                  ffn_config=dict(ffn_hidden_size=128, moe_num_experts=4, moe_top_k=2)), ids, True),
    "llama4_text": ("Llama4ForCausalLM", "Llama4TextConfig", dict(S, intermediate_size_mlp=128, num_local_experts=4,
                                                                  num_experts_per_tok=1, head_dim=16), ids, True),
    "deepseek_v2": ("DeepseekV2ForCausalLM", "DeepseekV2Config",
                    dict(S, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                         first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=16,
                         qk_rope_head_dim=8, v_head_dim=16, n_shared_experts=1), ids, True),
    "ernie4_5_moe": ("Ernie4_5_MoeForCausalLM", "Ernie4_5_MoeConfig", dict(S, moe_num_experts=4, moe_k=2,
                                                                           moe_intermediate_size=32,
                                                                           moe_layer_start_index=1), ids, True),
    "glm4_moe": ("Glm4MoeForCausalLM", "Glm4MoeConfig", dict(S, n_routed_experts=4, num_experts_per_tok=2,
                                                             moe_intermediate_size=32, first_k_dense_replace=1,
                                                             n_shared_experts=1), ids, True),
    "hunyuan_v1_moe": ("HunYuanMoEV1ForCausalLM", "HunYuanMoEV1Config", dict(S, num_experts=4, moe_topk=2, head_dim=16),
                       ids, True),
    "granitemoehybrid": ("GraniteMoeHybridForCausalLM", "GraniteMoeHybridConfig",
                         dict(S, **MOE, shared_intermediate_size=64, mamba_n_heads=8, mamba_d_head=16, mamba_d_state=8,
                              layer_types=["mamba", "attention"]), ids, True),
    "minimax": ("MiniMaxForCausalLM", "MiniMaxConfig", dict(S, **MOE, head_dim=16, block_size=8,
                                                            layer_types=["linear_attention", "full_attention"]), ids, True),
    "cohere": ("CohereForCausalLM", "CohereConfig", S, ids, True),
    "granite": ("GraniteForCausalLM", "GraniteConfig", S, ids, True),
    "stablelm": ("StableLmForCausalLM", "StableLmConfig", S, ids, True),
    "gemma3_text": ("Gemma3ForCausalLM", "Gemma3TextConfig", dict(S, head_dim=16), ids, True),
    "smollm3": ("SmolLM3ForCausalLM", "SmolLM3Config", dict(S, pad_token_id=0), ids, True),
    "olmo3": ("Olmo3ForCausalLM", "Olmo3Config", S, ids, True),
    "exaone4": ("Exaone4ForCausalLM", "Exaone4Config", S, ids, True),
    "lfm2": ("Lfm2ForCausalLM", "Lfm2Config", dict(S, layer_types=["conv", "full_attention"]), ids, True),
    "mamba2": ("Mamba2ForCausalLM", "Mamba2Config", dict(hidden_size=64, num_hidden_layers=2, vocab_size=256, num_heads=8,
                                                         head_dim=16, state_size=16, n_groups=1, expand=2), ids, True),
    "falcon_mamba": ("FalconMambaForCausalLM", "FalconMambaConfig",
                     dict(hidden_size=64, num_hidden_layers=2, vocab_size=256, state_size=8), ids, True),
    "falcon_h1": ("FalconH1ForCausalLM", "FalconH1Config", dict(S, mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16,
                                                                mamba_d_state=8, head_dim=16), ids, True),
    "bamba": ("BambaForCausalLM", "BambaConfig", dict(S, mamba_n_heads=8, mamba_d_head=16, mamba_d_state=8,
                                                      attn_layer_indices=[1]), ids, True),
    "zamba2": ("Zamba2ForCausalLM", "Zamba2Config",
               dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, vocab_size=256,
                    mamba_d_state=8, mamba_headdim=16, n_mamba_heads=8, layers_block_type=["mamba", "hybrid"],
                    intermediate_size=128, max_position_embeddings=128), ids, True),
    "rwkv": ("RwkvForCausalLM", "RwkvConfig", dict(hidden_size=64, num_hidden_layers=2, vocab_size=256,
                                                   attention_hidden_size=64, intermediate_size=128, context_length=128),
             ids, True),
    "bart": ("BartForConditionalGeneration", "BartConfig",
             dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                  encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=256, max_position_embeddings=128), ids, True),
    "t5gemma": ("T5GemmaForConditionalGeneration", "T5GemmaConfig",
                dict(encoder=dict(S, head_dim=16), decoder=dict(S, head_dim=16), vocab_size=256),
                lambda: dict(ids(), decoder_input_ids=ids(4)["input_ids"]), True),
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLConfig",
                 dict(text_config=dict(S, rope_scaling=dict(type="mrope", mrope_section=[2, 3, 3])),
                      vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, patch_size=14,
                                         spatial_merge_size=2, temporal_patch_size=2)), ids, True),
    "gemma3": ("Gemma3ForConditionalGeneration", "Gemma3Config",
               dict(text_config=dict(S, head_dim=16), vision_config=dict(V, image_size=32, patch_size=8),
                    mm_tokens_per_image=4), ids, True),
    "paligemma": ("PaliGemmaForConditionalGeneration", "PaliGemmaConfig",
                  dict(text_config=dict(S, head_dim=16, model_type="gemma"),
                       vision_config=dict(V, image_size=32, patch_size=8), projection_dim=64), ids, True),
    "idefics3": ("Idefics3ForConditionalGeneration", "Idefics3Config",
                 dict(text_config=dict(S, model_type="llama"), vision_config=dict(V, image_size=32, patch_size=8),
                      scale_factor=2), ids, True),
    "llava_next": ("LlavaNextForConditionalGeneration", "LlavaNextConfig",
                   dict(text_config=dict(S, model_type="llama"),
                        vision_config=dict(V, image_size=32, patch_size=8, model_type="clip_vision_model", projection_dim=32),
                        image_grid_pinpoints=[[32, 32]]), ids, True),
    "clip": ("CLIPModel", "CLIPConfig",
             dict(text_config=dict(V, vocab_size=256), vision_config=dict(V, image_size=32, patch_size=8), projection_dim=32),
             lambda: dict(ids(), **image()), False),
    "vit": ("ViTForImageClassification", "ViTConfig", dict(V, image_size=32, patch_size=8, num_labels=10), image, False),
    "dinov2": ("Dinov2Model", "Dinov2Config", dict(V, image_size=32, patch_size=8), image, False),
    "swin": ("SwinForImageClassification", "SwinConfig", dict(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                                              num_heads=[2, 2], window_size=4, num_labels=5), image, False),
    "segformer": ("SegformerForSemanticSegmentation", "SegformerConfig",
                  dict(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                       num_attention_heads=[1, 2], decoder_hidden_size=32, num_labels=3), image, False),
    "modernbert": ("ModernBertForMaskedLM", "ModernBertConfig",
                   dict(V, vocab_size=256, max_position_embeddings=128, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                        cls_token_id=2, sep_token_id=1), ids, False),
    "hubert": ("HubertForCTC", "HubertConfig", WAV, audio, False),
    "encodec": ("EncodecModel", "EncodecConfig", dict(hidden_size=32, num_filters=8, upsampling_ratios=[4, 2],
                                                      codebook_size=64, codebook_dim=32, num_lstm_layers=1),
                lambda: dict(input_values=noise(1, 1, 800)), False),
}
# Run on text alone, a vision-language model never runs its vision tower, and a module that never
# ran stays resident (its weights might be read outside its own forward): in these two the tower
# is most of the tiny model, so the budget holds nearly all of it.
BUDGET_FRACTION = {"gemma3": 0.95, "paligemma": 0.95}
DEFAULT = ["jamba", "whisper", "wav2vec2", "qwen3_next", "convnext"]
RUN = list(CASES) if os.environ.get("LITCORE_ALL_ARCHITECTURES") == "1" else DEFAULT


def _output(out) -> torch.Tensor:
    for key in ("logits", "logits_per_image", "last_hidden_state", "audio_values"):
        if getattr(out, key, None) is not None:
            return getattr(out, key)
    raise AssertionError(f"no output to compare in {type(out).__name__}")


def _saved(name, tmp_path):
    """The model saved by transformers, and the model transformers loads from it with its
    weights copied into memory (its own load leaves them unaligned views of the file)."""
    model_name, config_name, config, _, _ = CASES[name]
    cls, config_cls = getattr(transformers, model_name, None), getattr(transformers, config_name, None)
    if cls is None or config_cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no {model_name}")
    torch.manual_seed(0)
    model = cls(config_cls(**config))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # every weight away from its init (norms at 1, biases at 0...)
            p.copy_(torch.randn(p.shape, generator=g).to(p.dtype) * 0.05)
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf", in_memory(cls.from_pretrained(tmp_path / "hf"))


@pytest.mark.parametrize("name", RUN)
def test_streams_bit_identical(name, tmp_path):
    directory, reference = _saved(name, tmp_path)
    inputs, generates = CASES[name][3](), CASES[name][4]
    size = litcore.plan_pretrained(directory, memory_budget="1GiB").total_bytes
    budget = int(size * BUDGET_FRACTION.get(name, 0.6))  # room for what the first forward finds must stay resident
    lit = litcore.from_pretrained(directory, memory_budget=budget, cache_dir=tmp_path / "cache", progress=False)
    assert lit.plan.streams
    with torch.no_grad():
        want = _output(reference(**inputs))
        if generates:
            want_tokens = reference.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(_output(lit(**inputs)), want)
    assert torch.equal(_output(lit(**inputs)), want)  # after the first forward's plan
    assert lit.stats()["last"]["bytes_read"] > 0
    if generates:
        assert torch.equal(lit.generate(**inputs, max_new_tokens=4, do_sample=False), want_tokens)
