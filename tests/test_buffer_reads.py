"""Buffer reads (read_mode "buffer", the default on the CPU): streamed weights are read with
direct reads into the prefetch window's own memory, kept and reused for the whole run, and a
module's tensors point there while it runs (their storages' pointers move; the tensors do
not). Checked on a real transformers architecture and real files: bit-exact forwards and
generate, the tensors back on the file's mapping between forwards and after a forward that
raised, autograd reading the weights after their modules ran, and no copy in the page cache.
A file system without direct reads: tests/test_direct_reads.py."""
import pytest
import torch

import litcore
from pagecache import cached_bytes
from test_direct_reads import BUDGET, _check_run, _config, _reference, _takes_direct_reads


def _saved(tmp_path):
    path = tmp_path / "model.lit"
    litcore.save(_reference().state_dict(), path)
    if not _takes_direct_reads(path):
        pytest.skip(f"the file system of {tmp_path} takes no direct reads")
    return path


def test_streamed_modules_run_from_the_windows_buffer(tmp_path):
    path = _saved(tmp_path)
    lit, ref = _check_run(path, read_mode="buffer")
    stats = lit.stats()
    assert stats["buffer_reads"] == 1 and stats["placed_bytes"] == 0
    # The buffer is the window, in whole pages (huge pages where it is that large).
    assert stats["window_bytes"] <= stats["buffer_bytes"] < stats["window_bytes"] + (2 << 20)
    # No copy of streamed weights in the page cache: what is cached is what stays resident.
    assert cached_bytes(str(path)) <= stats["resident_bytes"] + stats["lookup_bytes"] + (1 << 20)
    # While a streamed module runs its weight lies in the buffer; before and after, in the mapping.
    streamed = lit.module.get_submodule(lit.plan.streamed_modules[-1])
    mapped = streamed.weight.data_ptr()
    during = []
    hook = streamed.register_forward_pre_hook(lambda m, args: during.append(m.weight.data_ptr()))
    ids = torch.randint(3, 1000, (1, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(lit(ids).logits, ref(ids).logits)
    hook.remove()
    assert during and during[0] != mapped and streamed.weight.data_ptr() == mapped
    want = ref.state_dict()
    for name, tensor in lit.module.state_dict().items():
        assert torch.equal(tensor, want[name]), name
    lit.close()


def test_a_forward_that_raised_leaves_the_weights_on_the_mapping(tmp_path):
    from transformers import LlamaForCausalLM

    path = _saved(tmp_path)
    ref = _reference()
    lit = litcore.LitModule.from_params(path, lambda: LlamaForCausalLM(_config()), memory_budget=BUDGET,
                                        read_mode="buffer")
    ids = torch.randint(3, 1000, (1, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = ref(ids).logits
        assert torch.equal(lit(ids).logits, want)
    mapped = {name: p.data_ptr() for name, p in lit.module.named_parameters()}
    # The last streamed module raises after every module before it entered (and the one
    # raising has its weights in the buffer when its forward runs).
    failing = lit.module.get_submodule(lit.plan.streamed_modules[-1])
    forward = failing.forward

    def raising(*args, **kwargs):
        raise RuntimeError("a module failed")

    failing.forward = raising
    with pytest.raises(RuntimeError, match="a module failed"), torch.no_grad():
        lit(ids)
    failing.forward = forward
    assert {name: p.data_ptr() for name, p in lit.module.named_parameters()} == mapped
    with torch.no_grad():
        assert torch.equal(lit(ids).logits, want)
    lit.close()


def test_autograd_reads_the_weights_after_their_modules_ran(tmp_path):
    """Backward runs after every module has exited: the tensors autograd saved read the
    mapping again (the buffer's blocks hold other modules by then). LitModule's own call runs
    in inference mode; its module, called directly, keeps autograd."""
    layers = 8

    def build():
        torch.manual_seed(0)
        return torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(layers)])

    litcore.save(build().state_dict(), tmp_path / "mlp.lit")
    if not _takes_direct_reads(tmp_path / "mlp.lit"):
        pytest.skip(f"the file system of {tmp_path} takes no direct reads")
    ref = build()
    lit = litcore.LitModule.from_params(tmp_path / "mlp.lit", build, memory_budget=3 * 1024 * 1024, read_mode="buffer")
    assert lit.plan.streams and lit.stats()["buffer_reads"] == 1
    for step in range(2):  # the second forward runs the plan the first one's order made
        x = torch.randn(4, 512, generator=torch.Generator().manual_seed(step), requires_grad=True)
        x_ref = x.detach().clone().requires_grad_(True)
        out, want = lit.module(x), ref(x_ref)
        assert torch.equal(out, want)
        out.sum().backward()
        want.sum().backward()
        assert torch.equal(x.grad, x_ref.grad)
    for (name, p), (_, q) in zip(lit.module.named_parameters(), ref.named_parameters()):
        assert torch.equal(p.grad, q.grad), name
    lit.close()
