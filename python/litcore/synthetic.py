"""Llama-shaped (and Mixtral- and BERT-shaped) transformers model directories with seeded
random weights, for examples, the demo, tests and benchmarks on machines that cannot download
models."""
from __future__ import annotations

import os
import zlib
from typing import Dict

import torch

__all__ = ["LLAMA_SIZES", "MIXTRAL_SIZES", "llama_config", "mixtral_config", "bert_config", "make_model_dir",
           "make_tokenizer"]

# name -> LlamaConfig arguments. "1b" is a 1.1B Llama shape (TinyLlama's); "7b" is Llama-2-7B's.
LLAMA_SIZES: Dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 vocab_size=512),
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=32000),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
}


def _sized_config(family: str, sizes: Dict[str, dict], size: str, overrides: dict):
    import transformers

    if size not in sizes:
        raise ValueError(f"size must be one of {', '.join(sizes)}, got {size!r}")
    args = dict(sizes[size], max_position_embeddings=2048, architectures=[f"{family}ForCausalLM"])
    args.update(overrides)
    return getattr(transformers, f"{family}Config")(**args)


def llama_config(size: str = "tiny", **overrides):
    """A LlamaConfig of one of LLAMA_SIZES."""
    return _sized_config("Llama", LLAMA_SIZES, size, overrides)


# name -> MixtralConfig arguments. "moe" is a mixture-of-experts model of 1.58 GB in bf16, 1.41
# GB of it experts (8 per layer, 2 chosen per token): a generated token reads a quarter of them.
MIXTRAL_SIZES: Dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, num_local_experts=4, num_experts_per_tok=2),
    "moe": dict(hidden_size=1024, intermediate_size=3584, num_hidden_layers=8, num_attention_heads=16,
                num_key_value_heads=4, vocab_size=32000, num_local_experts=8, num_experts_per_tok=2),
}


def mixtral_config(size: str = "tiny", **overrides):
    """A MixtralConfig of one of MIXTRAL_SIZES."""
    return _sized_config("Mixtral", MIXTRAL_SIZES, size, overrides)


def bert_config(**overrides):
    from transformers import BertConfig

    args = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, vocab_size=1000,
                architectures=["BertModel"])
    args.update(overrides)
    return BertConfig(**args)


def _seeded_tensor(name: str, shape, dtype: torch.dtype, seed: int, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator(device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    if name.endswith("norm.weight") or "LayerNorm.weight" in name or name.endswith("ln_f.weight"):
        return torch.ones(shape, dtype=dtype)
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype)
    return (torch.randn(shape, generator=g, device=device) * 0.02).to(dtype).cpu()


def make_model_dir(path: str, config, *, dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                   device: str = "cpu") -> str:
    """Writes `config` and seeded weights as a transformers model directory
    (config.json + model.safetensors), tensor by tensor; returns `path`. `device` draws the
    random numbers (a GPU makes a 7B model in seconds; its numbers differ from the CPU's)."""
    from safetensors.torch import save_file
    from transformers import AutoModel

    from litcore.empty_init import empty_init
    from litcore.hf import model_class_for

    os.makedirs(path, exist_ok=True)
    cls = model_class_for(config) if getattr(config, "architectures", None) else AutoModel
    with empty_init():
        skeleton = cls(config)
    persistent = skeleton.state_dict(keep_vars=True)
    tensors = {}
    seen = {}
    for name, t in persistent.items():
        if id(t) in seen:  # tied weights are saved once, as transformers does
            continue
        seen[id(t)] = name
        target = dtype if t.dtype.is_floating_point else t.dtype
        tensors[name] = t.detach().clone() if t.device.type != "meta" else _seeded_tensor(name, t.shape, target, seed, device)
    config.dtype = dtype
    config.save_pretrained(path)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    make_tokenizer(path, config.vocab_size)
    return path


_TOKENIZER_TEXT = """The quick brown fox jumps over the lazy dog. litcore runs PyTorch models that do not fit in
memory: it keeps the weights in one file and brings each module's weights in just before it runs.
Once upon a time there was a model larger than the machine, and it ran anyway, one layer at a time."""


def make_tokenizer(path: str, vocab_size: int) -> None:
    """A small byte-level BPE tokenizer (ids below `vocab_size`) saved beside a synthetic
    model, so text goes in and out as with a real one; the model's text is still gibberish."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=min(vocab_size, 400), special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([_TOKENIZER_TEXT], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>").save_pretrained(path)
