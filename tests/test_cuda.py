"""device="cuda": resident and streamed weights on the GPU. Runs only where CUDA is available
(the device machine); on CPU-only installs the clear error is what is tested."""
import pytest
import torch
from torch import nn

import litcore
from models import awkward, llama_config, seeded, Awkward

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_cuda_request_without_cuda_is_a_clear_error(tmp):
    ref = awkward()
    litcore.save(ref.state_dict(), tmp / "a.lit")
    with pytest.raises(ValueError, match="CUDA is not available"):
        litcore.LitModule.from_params(tmp / "a.lit", Awkward, device="cuda")
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N', not 'mps'"):
        litcore.LitModule.from_params(tmp / "a.lit", Awkward, device="mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_torchscript_and_cpp_refuse_cuda_on_a_cpu_only_torch(tmp, cpp_app):
    """The same device option and refusal from every entry point, before any work."""
    import subprocess

    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    litcore.jit.save(torch.jit.script(model), tmp / "s.pt", tmp / "s.lit")
    for device in ("cuda", "cuda:1"):
        with pytest.raises(RuntimeError, match=f"device '{device}' requested, but this build of torch .* has no CUDA"):
            litcore.jit.load(tmp / "s.pt", tmp / "s.lit", device=device)
    with pytest.raises(ValueError, match="not 'cuda:'"):
        litcore.jit.load(tmp / "s.pt", tmp / "s.lit", device="cuda:")
    assert torch.equal(litcore.jit.load(tmp / "s.pt", tmp / "s.lit", device="cpu")(torch.ones(2, 8)),
                       model(torch.ones(2, 8)))
    r = subprocess.run([str(cpp_app / "run_model"), str(tmp / "s.pt"), str(tmp / "s.lit"), "--device", "cuda",
                        "--shape", "2,8"], capture_output=True, text=True)
    assert r.returncode == 4 and "device 'cuda' requested, but this build of torch" in r.stderr, r.stderr
    r = subprocess.run([str(cpp_app / "run_model"), str(tmp / "s.pt"), str(tmp / "s.lit"), "--device", "cpu",
                        "--shape", "2,8"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@needs_cuda
@pytest.mark.parametrize("gpu_budget", ["auto", "small"])
def test_llama_on_gpu_matches_the_whole_model_on_gpu(tmp, gpu_budget):
    from transformers import LlamaForCausalLM

    config = llama_config(num_hidden_layers=4)
    ref = seeded(LlamaForCausalLM, config).cuda()
    litcore.save(ref.state_dict(), tmp / "m.lit")
    budget = "auto" if gpu_budget == "auto" else (tmp / "m.lit").stat().st_size // 3
    lit = litcore.LitModule.from_params(tmp / "m.lit", lambda: LlamaForCausalLM(config), device="cuda",
                                        gpu_memory_budget=budget)
    ids = torch.randint(3, config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        want = ref(ids).logits
    for _ in range(3):
        assert torch.equal(lit(ids).logits, want)
    kw = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(lit.generate(ids[:1], **kw), ref.generate(ids[:1], **kw))
    passes = lit.stats()["per_forward"]
    if gpu_budget == "small":
        assert lit.plan.streams
        assert all(p["gpu_bytes_copied"] > 0 for p in passes)
        # after the first forward recorded the order, every streamed module is fed ahead
        assert all(p["gpu_prefetch_misses"] == 0 and p["gpu_mispredicts"] == 0 and p["gpu_prefetch_hits"] > 0
                   for p in passes[1:])
        assert all(p.device.type == "cuda" for p in lit.module.parameters())  # placeholders too
    else:
        assert not lit.plan.streams and all(p.get("gpu_bytes_copied", 0) == 0 for p in passes)


@needs_cuda
def test_data_dependent_order_on_gpu(tmp):
    class Branchy(nn.Module):  # more streamed modules than the ring has slots
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleDict({name: nn.Linear(256, 256) for name in "abcdef"})

        def forward(self, x, route):
            for name in route:
                x = self.layers[name](x)
            return x

    torch.manual_seed(0)
    ref = Branchy().eval().cuda()
    litcore.save(ref.state_dict(), tmp / "b.lit")
    # The ring (3 slots of the largest module, 783 KiB) counts in the budget: nothing else fits.
    lit = litcore.LitModule.from_params(tmp / "b.lit", Branchy, device="cuda", gpu_memory_budget="900KB")
    assert lit.plan.streams
    x = torch.randn(3, 256, device="cuda")
    for route in ["abcdef", "fedcba", "aaf", "b", "abcabc", "eca", "eca"]:
        with torch.no_grad():
            want = ref(x, route)
        assert torch.equal(lit(x, route), want), route
    passes = lit.stats()["per_forward"]
    assert sum(p["gpu_prefetch_misses"] + p["gpu_mispredicts"] for p in passes) > 0
    last = passes[-1]  # "eca" again: the order seen last time was followed
    assert last["gpu_prefetch_misses"] == 0 and last["gpu_mispredicts"] == 0 and last["gpu_prefetch_hits"] == 3


@needs_cuda
def test_awkward_model_on_gpu(tmp):
    # Resident on the GPU: buffers, ties, a top-level parameter. (Streamed GPU weights live on
    # the device only during their own module's forward; see docs/gpu.md.)
    ref = awkward().cuda()
    litcore.save(ref.state_dict(), tmp / "a.lit")
    lit = litcore.LitModule.from_params(tmp / "a.lit", Awkward, device="cuda")
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        want = ref(ids)
    for _ in range(3):
        assert torch.equal(lit(ids), want)
