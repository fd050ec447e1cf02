"""A mixture-of-experts layer's experts, streamed, are read by their routing: a forward
reads only the slices of the experts its tokens were sent to, and stays `torch.equal` to
the model in memory. Read modes that read whole tensors (direct reads, lazy checks) read
every expert, as before."""

import pytest
import torch

import litcore
import litcore.hf

transformers = pytest.importorskip("transformers")

from models import in_memory, seeded  # noqa: E402
from pagecache import in_memory_fraction  # noqa: E402

EXPERTS, CHOSEN = 8, 2
CONFIG = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=512, max_position_embeddings=128, num_local_experts=EXPERTS, num_experts_per_tok=CHOSEN)


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    directory = tmp_path_factory.mktemp("routed") / "mixtral"
    seeded(transformers.MixtralForCausalLM, transformers.MixtralConfig(**CONFIG)).save_pretrained(directory)
    reference = in_memory(transformers.MixtralForCausalLM.from_pretrained(directory))
    lit_path = litcore.hf.convert_pretrained(directory, directory.parent / "mixtral.lit", progress=False)
    return directory, lit_path, reference


def _load(mixtral, share=4, **options):
    """The model under 1/`share` of its weights' bytes: 1/4 leaves no room for the expert
    cache beside the window, 1/2 room for 6 experts."""
    directory, lit_path, _ = mixtral
    budget = litcore.plan_pretrained(directory, memory_budget="1GiB").total_bytes // share
    return litcore.from_pretrained(lit_path, memory_budget=budget, progress=False, **options)


def _expected_reads(lit, chosen_per_layer: int) -> int:
    """The bytes a forward whose tokens chose `chosen_per_layer` experts in every layer reads:
    every streamed unit whole, but the experts' units their share, less the experts it found
    in the expert cache."""
    routed = set(lit.engine.routed_units())
    whole = sum(unit.nbytes * chosen_per_layer // EXPERTS if i in routed else unit.nbytes
                for i, unit in enumerate(lit.engine.units) if unit.name in lit.plan.streamed_modules)
    slice_bytes = max(lit.engine.units[i].nbytes for i in routed) // EXPERTS if routed else 0
    return whole - lit.stats()["last"]["expert_cache_hits"] * slice_bytes


def test_a_token_reads_only_its_experts(mixtral):
    lit = _load(mixtral)
    reference = mixtral[2]
    routed = [lit.engine.units[i].name for i in lit.engine.routed_units()]
    assert routed == [f"model.layers.{i}.mlp.experts" for i in range(CONFIG["num_hidden_layers"])]
    assert any(name in lit.plan.streamed_modules for name in routed)
    prompt = torch.randint(3, 500, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(lit(prompt).logits, reference(prompt).logits)  # the first forward learns the order
        for seed in range(3):
            token = torch.randint(3, 500, (1, 1), generator=torch.Generator().manual_seed(seed))
            assert torch.equal(lit(token).logits, reference(token).logits)
            # one token goes to exactly CHOSEN experts in each layer
            assert lit.stats()["last"]["bytes_read"] == _expected_reads(lit, CHOSEN)
        assert torch.equal(lit(prompt).logits, reference(prompt).logits)
        want = reference.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(lit.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0), want)


def test_the_plan_keeps_what_every_token_reads_resident(mixtral):
    """Room for the attention, the norms and the LM head, and for one layer's experts: those
    stay resident, every layer's experts stream by routing through a window of one layer's
    experts, and a token reads nothing but its experts."""
    directory, lit_path, reference = mixtral
    units = litcore.plan_pretrained(directory, memory_budget="1GiB").units
    experts = max(u.nbytes for u in units if u.routed)
    whole = sum(u.nbytes for u in units if not u.routed)
    lit = litcore.from_pretrained(lit_path, memory_budget=whole + experts * 3 // 2, progress=False)
    prompt = torch.randint(3, 500, (1, 12), generator=torch.Generator().manual_seed(0))
    token = prompt[:, -1:]
    with torch.no_grad():
        assert torch.equal(lit(prompt).logits, reference(prompt).logits)
        assert torch.equal(lit(token).logits, reference(token).logits)
    plan = lit.plan
    assert plan.streamed_bytes == 0 and plan.routed_bytes == CONFIG["num_hidden_layers"] * experts
    assert plan.streamed_modules == [f"model.layers.{i}.mlp.experts" for i in range(CONFIG["num_hidden_layers"])]
    assert plan.window_bytes < 2 * experts
    assert lit.stats()["routed_bytes"] == plan.routed_bytes and lit.stats()["streamed_bytes_per_forward"] == 0
    assert lit.stats()["last"]["bytes_read"] == plan.routed_bytes * CHOSEN // EXPERTS


@pytest.mark.parametrize("options", [{"read_mode": "direct"}, {"verify": "lazy"}], ids=["direct", "lazy-checks"])
def test_whole_tensor_read_paths_read_every_expert(mixtral, options):
    lit = _load(mixtral, **options)
    reference = mixtral[2]
    prompt = torch.randint(3, 500, (1, 12), generator=torch.Generator().manual_seed(0))
    token = prompt[:, :1]
    with torch.no_grad():
        assert torch.equal(lit(prompt).logits, reference(prompt).logits)
        assert torch.equal(lit(token).logits, reference(token).logits)
    assert lit.engine.routed_units() == []
    assert lit.stats()["last"]["bytes_read"] == _expected_reads(lit, EXPERTS)


def test_the_chosen_experts_are_in_memory_when_they_compute(mixtral):
    """Each tensor stacks the experts: the slices read are the chosen experts' own, in every
    tensor of the layer (a forward that computed with others would fault them in itself)."""
    lit = _load(mixtral)
    seen = []

    def check(module, args):  # runs after litcore's pre-hook has read the chosen experts
        chosen = sorted(set(args[1].flatten().tolist()))
        seen.append([(e, in_memory_fraction(module.gate_up_proj[e]), in_memory_fraction(module.down_proj[e]))
                     for e in chosen])

    streamed = [m for name, m in lit.module.named_modules() if name in lit.plan.streamed_modules and name.endswith("experts")]
    assert streamed
    for module in streamed:
        module.register_forward_pre_hook(check)
    with torch.no_grad():
        lit(torch.randint(3, 500, (1, 12), generator=torch.Generator().manual_seed(0)))
        seen.clear()
        lit(torch.randint(3, 500, (1, 1), generator=torch.Generator().manual_seed(1)))
    assert len(seen) == len(streamed)
    assert all(gate_up == 1.0 and down == 1.0 for layer in seen for _, gate_up, down in layer), seen


def test_the_experts_chosen_most_stay_cached_between_forwards(mixtral):
    """Under half the model's bytes the budget has room for 6 experts beside the resident
    weights and the window, and the window's room for a layer's 8 experts is left unread by a
    token but for the 2 it chose: the cache holds 14. A token forwarded again and again is
    routed to the same 8 experts (2 in each of 4 layers): they take the cache's places from
    the experts the prompt chose less often, are found there, and are not read again; the
    cached experts' pages stay in memory between forwards and the others' leave. Outputs stay
    `torch.equal`, the prompt's among them (its layers read every expert not cached, the
    cache giving back the room they take)."""
    lit = _load(mixtral, share=2)
    reference = mixtral[2]
    chosen = {}

    def record(module, args):
        chosen[module] = set(args[1].flatten().tolist())

    streamed = [m for name, m in lit.module.named_modules() if name in lit.plan.streamed_modules and name.endswith("experts")]
    assert len(streamed) == CONFIG["num_hidden_layers"]
    for module in streamed:
        module.register_forward_pre_hook(record)
    prompt = torch.randint(3, 500, (1, 12), generator=torch.Generator().manual_seed(0))
    token = prompt[:, -1:]
    slice_bytes = max(lit.engine.units[i].nbytes for i in lit.engine.routed_units()) // EXPERTS
    with torch.no_grad():
        assert torch.equal(lit(prompt).logits, reference(prompt).logits)
        for _ in range(4):
            assert torch.equal(lit(token).logits, reference(token).logits)
            # the experts chosen and not found cached were read, and nothing else of the layers
            stats = lit.stats()
            assert stats["streamed_bytes_per_forward"] == 0
            read = sum(len(c) for c in chosen.values()) * slice_bytes - stats["last"]["expert_cache_hits"] * slice_bytes
            assert stats["last"]["bytes_read"] == read
    room = stats["budget_bytes"] - stats["resident_bytes"] - stats["window_bytes"]
    assert room // slice_bytes == 6
    assert stats["expert_cache_bytes"] == (6 + EXPERTS) * slice_bytes
    assert stats["last"]["expert_cache_hits"] == 8 and stats["last"]["bytes_read"] == 0
    # In memory after the forward: exactly the cached experts, the token's among them.
    in_memory = [(module, e) for module in streamed for e in range(EXPERTS)
                 if in_memory_fraction(module.gate_up_proj[e]) == 1.0 and in_memory_fraction(module.down_proj[e]) == 1.0]
    assert len(in_memory) == 6 + EXPERTS and {(m, e) for m in streamed for e in chosen[m]} <= set(in_memory), in_memory
    # The others left, but for what the page cache holds in a large folio with a cached
    # slice (the kernel drops whole folios; these slices are 64-128 KiB, a real model's MBs).
    left = sum(in_memory_fraction(module.gate_up_proj[e]) * module.gate_up_proj[e].nbytes
               + in_memory_fraction(module.down_proj[e]) * module.down_proj[e].nbytes
               for module in streamed for e in range(EXPERTS) if (module, e) not in in_memory)
    assert left <= len({module for module, _ in in_memory}) * slice_bytes, left
    with torch.no_grad():
        assert torch.equal(lit(prompt).logits, reference(prompt).logits)
        hits = lit.stats()["last"]["expert_cache_hits"]
        assert 0 < hits < 14 and lit.stats()["last"]["bytes_read"] == (sum(len(c) for c in chosen.values()) - hits) * slice_bytes
        want = reference.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(lit.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0), want)
    assert lit.stats()["expert_cache_bytes"] <= room + EXPERTS * slice_bytes


def test_the_expert_cache_follows_routing_that_shifts(mixtral):
    """A token forwarded 300 times makes its 8 experts the cache's favourites; another token,
    routed to 8 other experts, finds 6 places free and must displace 2 of them. The counts
    halve every 256 forwards, so it does so in under 300 forwards: counts that never halved
    would keep the first token's experts until the second's were chosen 301 times."""
    lit = _load(mixtral, share=2)
    reference = mixtral[2]
    chosen = {}

    def record(module, args):
        chosen[module] = frozenset(args[1].flatten().tolist())

    layers = [m for name, m in reference.named_modules() if name.endswith("mlp.experts")]
    hooks = [module.register_forward_pre_hook(record) for module in layers]
    routing = {}
    with torch.no_grad():
        for token in range(3, 200):
            reference(torch.tensor([[token]]))
            routing[token] = [chosen[module] for module in layers]
    for hook in hooks:
        hook.remove()
    first, second = next((a, b) for a in routing for b in routing
                         if all(not (x & y) for x, y in zip(routing[a], routing[b])))
    with torch.no_grad():
        for _ in range(300):
            lit(torch.tensor([[first]]))
        assert lit.stats()["last"]["bytes_read"] == 0
        token = torch.tensor([[second]])
        for forwards in range(1, 301):
            logits = lit(token).logits
            if lit.stats()["last"]["bytes_read"] == 0:
                break
        assert forwards < 300, "the second token's experts never displaced the first's"
        assert lit.stats()["last"]["expert_cache_hits"] == 8
        assert torch.equal(logits, reference(token).logits)
