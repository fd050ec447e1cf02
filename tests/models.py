"""Small real models for the tests: plain nn.Modules with every awkward feature, and
transformers architectures built from configs with seeded weights."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class Awkward(nn.Module):
    """What PyTorch-LIT got wrong: a top-level parameter used by the root (self.pos[:n]),
    tied embedding / head, a child's weight used by its parent outside the child's forward,
    BatchNorm running stats, persistent and non-persistent buffers, an integer buffer."""

    def __init__(self, vocab: int = 50, dim: int = 32, layers: int = 3, max_len: int = 16) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(max_len, dim))
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(layers))
        self.bn = nn.BatchNorm1d(dim)
        self.gate = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("scale", torch.tensor(0.5))
        self.register_buffer("offsets", torch.arange(max_len), persistent=True)
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        x = self.embed(ids) + self.pos[:n] * self.scale
        x = x + torch.sin(self.offsets[:n, None].float() * self.inv_freq.repeat(2)[None, :])
        for block in self.blocks:
            x = block(x)
        x = self.bn(x.transpose(1, 2)).transpose(1, 2)
        x = x * torch.sigmoid(F.linear(x, self.gate.weight))  # child's weight, outside its forward
        return self.head(x)


def awkward(seed: int = 0) -> Awkward:
    torch.manual_seed(seed)
    m = Awkward()
    with torch.no_grad():  # non-trivial running stats
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
        m.bn.num_batches_tracked.fill_(7)
    return m.eval()


def _seeded(cls, config, seed: int):
    torch.manual_seed(seed)
    return cls(config).eval()


def llama_config(**kw):
    from transformers import LlamaConfig

    base = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                vocab_size=256, max_position_embeddings=128)
    base.update(kw)
    return LlamaConfig(**base)


def transformers_models():
    """(name, config, model class, input kind) for the end-to-end tests."""
    from transformers import (BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, GPTJConfig, GPTJForCausalLM,
                              LlamaForCausalLM)

    return [
        ("llama", llama_config(), LlamaForCausalLM, "causal"),
        ("llama-tied", llama_config(tie_word_embeddings=True), LlamaForCausalLM, "causal"),
        ("gptj", GPTJConfig(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, vocab_size=256, n_positions=128,
                            bos_token_id=0, eos_token_id=1), GPTJForCausalLM, "causal"),
        ("gpt2", GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=128, bos_token_id=0,
                            eos_token_id=1), GPT2LMHeadModel, "causal"),
        ("bert", BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                            vocab_size=256, max_position_embeddings=128), BertModel, "encoder"),
    ]


def seeded(cls, config, seed: int = 0):
    return _seeded(cls, config, seed)


def in_memory(model):
    """`model` with its weights copied into memory, in eval mode. transformers' from_pretrained
    leaves the weights views of the safetensors file at unaligned offsets, where some kernels
    round differently (a CLIP model's embeddings moved by an ulp): a reference must not."""
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
    return model.eval()
