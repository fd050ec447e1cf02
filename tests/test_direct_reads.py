"""Direct reads (read_mode "direct", or "auto" where the file system allows): streamed weights
are read past the page cache into pages litcore owns, which are then moved into place in the
file's mapping, so the tensors never change address. Checked on a real transformers
architecture and real files: bit-exact, the weights valid between forwards, no second copy
in the page cache, and a file system that refuses direct reads (tmpfs) falls back to reading
through the page cache."""
import os

import pytest
import torch

import litcore
from pagecache import cached_bytes

CONFIG = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=1000)
BUDGET = 4 << 20  # of ~14 MB of weights: most stream


def _config():
    from transformers import LlamaConfig
    return LlamaConfig(**CONFIG)


def _reference():
    from transformers import LlamaForCausalLM
    torch.manual_seed(0)
    return LlamaForCausalLM(_config()).eval()


def _takes_direct_reads(path) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
        return True
    except OSError:
        return False


def _check_run(path, read_mode="direct"):
    """Runs forwards and generate through litcore and checks them against the model in memory."""
    from transformers import LlamaForCausalLM
    ref = _reference()
    config = _config()
    lit = litcore.LitModule.from_params(path, lambda: LlamaForCausalLM(config), memory_budget=BUDGET, read_mode=read_mode)
    assert lit.plan.streams
    for seed, n in [(0, 12), (1, 3), (0, 12)]:
        ids = torch.randint(3, 1000, (1, n), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            want = ref(ids).logits
        assert torch.equal(lit(ids).logits, want)
    ids = torch.randint(3, 1000, (1, 6), generator=torch.Generator().manual_seed(2))
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(lit.generate(ids, **kwargs), ref.generate(ids, **kwargs))
    return lit, ref


def test_streamed_weights_are_read_past_the_page_cache(tmp_path):
    path = tmp_path / "model.lit"
    litcore.save(_reference().state_dict(), path)
    if not _takes_direct_reads(path):
        pytest.skip(f"the file system of {tmp_path} takes no direct reads")
    lit, ref = _check_run(path)
    stats = lit.stats()
    assert stats["direct_reads"] == 1
    # What streams is in memory litcore put in place: what the reader holds ahead, plus what
    # modules a re-plan made resident kept, all within the budget.
    assert 0 < stats["placed_bytes"] <= stats["budget_bytes"]
    # No second copy of streamed weights in the page cache: what is cached is what stays
    # resident (lookup rows aside), not the file.
    assert cached_bytes(str(path)) <= stats["resident_bytes"] + stats["lookup_bytes"] + (1 << 20)
    assert cached_bytes(str(path)) < os.path.getsize(path) // 2
    # Between forwards every weight, streamed or not, reads as the file's bytes.
    want = ref.state_dict()
    for name, tensor in lit.module.state_dict().items():
        assert torch.equal(tensor, want[name]), name
    lit.close()


def test_a_name_ordered_file_plans_as_a_model_ordered_one(tmp_path):
    """Direct reads read each module alone wherever the file stores it: a file in name order
    (what `litcore convert` writes from a safetensors file) keeps the window and the resident
    weights of a model-ordered one, and runs bit-exact. Through the page cache its window
    must hold read groups (a layer's block, read in file order) and is larger."""
    from transformers import LlamaForCausalLM
    sd = _reference().state_dict()
    litcore.save(sd, tmp_path / "model.lit")
    litcore.save(dict(sorted(sd.items())), tmp_path / "name.lit")
    if not _takes_direct_reads(tmp_path / "name.lit"):
        pytest.skip(f"the file system of {tmp_path} takes no direct reads")
    ids = torch.randint(3, 1000, (1, 12), generator=torch.Generator().manual_seed(0))
    plans = {}
    for order in ("model", "name"):
        for read_mode in ("direct", "sendfile"):
            lit = litcore.LitModule.from_params(tmp_path / f"{order}.lit", lambda: LlamaForCausalLM(_config()),
                                                memory_budget=8 << 20, read_mode=read_mode)
            lit(ids)  # the plan for the order the forward ran in
            stats = lit.stats()
            plans[order, read_mode] = (stats["window_bytes"], stats["resident_bytes"])
            lit.close()
    assert plans["name", "direct"] == plans["model", "direct"]
    assert plans["name", "sendfile"][0] > plans["model", "sendfile"][0]
    _check_run(tmp_path / "name.lit")
    _check_run(tmp_path / "name.lit", read_mode="sendfile")  # read groups claimed in file order


def test_a_file_system_without_direct_reads_falls_back(tmp_path):
    shm = "/dev/shm"
    if not os.path.isdir(shm) or _takes_direct_reads_dir(shm):
        pytest.skip("no tmpfs without direct reads here")
    path = os.path.join(shm, f"litcore-test-{os.getpid()}.lit")
    try:
        litcore.save(_reference().state_dict(), path)
        for read_mode in ("auto", "direct", "buffer"):
            lit, _ = _check_run(path, read_mode)
            stats = lit.stats()
            assert stats["direct_reads"] == 0 and stats["placed_bytes"] == 0, read_mode
            assert stats["buffer_reads"] == 0, read_mode
            lit.close()
    finally:
        if os.path.exists(path):
            os.unlink(path)


def _takes_direct_reads_dir(directory) -> bool:
    probe = os.path.join(directory, f"litcore-probe-{os.getpid()}")
    with open(probe, "wb") as f:
        f.write(b"\0" * 4096)
    try:
        return _takes_direct_reads(probe)
    finally:
        os.unlink(probe)


def test_a_page_cache_read_mode_places_nothing(tmp_path):
    path = tmp_path / "model.lit"
    litcore.save(_reference().state_dict(), path)
    lit, _ = _check_run(path, "sendfile")
    assert lit.stats()["direct_reads"] == 0 and lit.stats()["placed_bytes"] == 0
    lit.close()
