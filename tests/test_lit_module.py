"""LitModule on plain nn.Modules: bit-exact outputs, every budget, mismatches, lifetime."""
import gc
import os
import time
import warnings

import pytest
import torch
from torch import nn

import litcore
from models import Awkward, Block, awkward
from pagecache import in_memory_fraction

BUDGETS = [None, "30KB", "50KB"]  # resident, streaming (almost nothing resident), streaming + some resident


@pytest.fixture
def awkward_file(tmp):
    ref = awkward()
    litcore.save(ref.state_dict(), tmp / "awk.lit")
    return ref, tmp / "awk.lit"


def _ids(seed=0, n=12):
    return torch.randint(0, 50, (2, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("budget", BUDGETS)
def test_awkward_model_is_bit_exact(awkward_file, budget):
    ref, path = awkward_file
    lit = litcore.LitModule.from_params(path, Awkward, memory_budget=budget or "auto")
    assert lit.plan.streams == (budget is not None)
    for seed, n in [(0, 12), (1, 5), (2, 16), (0, 12)]:
        with torch.no_grad():
            want = ref(_ids(seed, n))
        assert torch.equal(lit(_ids(seed, n)), want)
    assert lit.module.head.weight is lit.module.embed.weight
    assert torch.equal(lit.module.bn.running_mean, ref.bn.running_mean)
    assert int(lit.module.bn.num_batches_tracked) == 7
    stats = lit.stats()
    assert stats["forwards"] == 4
    if budget is not None:
        assert stats["last"]["bytes_read"] > 0 and stats["streamed_bytes_per_forward"] > 0
        assert stats["last"]["read_seconds"] > 0  # the reader's time, the figure of an IO-bound forward
        assert stats["total"]["read_seconds"] >= stats["last"]["read_seconds"]
    else:
        assert stats["total"]["read_seconds"] == 0  # nothing streams: the reader never reads


def test_warmer_reads_residents_until_the_first_forward(awkward_file):
    ref, path = awkward_file
    lit = litcore.LitModule.from_params(path, Awkward)
    deadline = time.time() + 10
    while lit.stats()["warmup_bytes_read"] < lit.plan.resident_bytes and time.time() < deadline:
        time.sleep(0.01)
    assert lit.stats()["warmup_bytes_read"] >= lit.plan.resident_bytes  # ranges span alignment padding
    with torch.no_grad():
        want = ref(_ids())
    assert torch.equal(lit(_ids()), want)
    deadline = time.time() + 10
    while lit.stats()["warmup_running"] and time.time() < deadline:
        time.sleep(0.01)
    assert not lit.stats()["warmup_running"]  # a forward reads for itself: no second reader beside it


def test_streaming_after_warmup_prefetches(awkward_file):
    ref, path = awkward_file
    lit = litcore.LitModule.from_params(path, Awkward, memory_budget="30KB")
    for _ in range(4):
        lit(_ids())
    last = lit.stats()["last"]
    assert last["mispredicts"] == 0
    assert last["bytes_read"] >= lit.plan.streamed_bytes * 0.9


class Embedded(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(40_000, 64)  # 10 MB: far over the budgets below
        self.layers = nn.Sequential(*[nn.Linear(64, 64) for _ in range(6)])

    def forward(self, ids):
        return self.layers(self.embed(ids))


def test_embeddings_are_read_by_lookup_not_ahead(tmp):
    from pagecache import cached_bytes

    torch.manual_seed(0)
    ref = Embedded().eval()
    litcore.save(ref.state_dict(), tmp / "e.lit")
    ids = torch.tensor([[5, 17_000, 39_999]])
    lit = litcore.LitModule.from_params(tmp / "e.lit", Embedded, memory_budget="60KB")
    assert lit.plan.lookup_modules == ["embed"] and "embed" not in lit.plan.resident_modules
    assert lit.plan.resident_bytes + lit.plan.streamed_bytes + lit.plan.lookup_bytes == lit.plan.total_bytes
    assert lit.plan.streamed_bytes < 6 * 17_000  # the embedding is not read ahead per forward
    for _ in range(3):
        with torch.no_grad():
            assert torch.equal(lit(ids), ref(ids))
    # the layers and the window read ahead for the next forward, never the 10 MB embedding
    assert lit.stats()["last"]["bytes_read"] < 1 << 20
    # its touched rows were dropped after use: no megabytes of read-around stay cached
    assert cached_bytes(str(tmp / "e.lit")) < 1 << 20


def test_rows_a_lookup_touched_stay_cached_within_the_budget(tmp):
    # What the plan leaves of its budget beside the resident weights keeps the touched rows
    # cached between forwards (dropped, each is a random read again the next forward); rows
    # beyond it are dropped after use.
    from pagecache import cached_bytes

    torch.manual_seed(0)
    ref = Embedded().eval()
    litcore.save(ref.state_dict(), tmp / "e.lit")
    lit = litcore.LitModule.from_params(tmp / "e.lit", Embedded, memory_budget="256KB")
    assert lit.plan.lookup_modules == ["embed"] and lit.plan.streamed_bytes == 0
    spare = 256_000 - lit.plan.resident_bytes
    (offset, length), = lit.store.native.byte_ranges(["embed.weight"])
    few = torch.tensor([[5, 17_000, 39_999]])  # 3 rows, 3 pages
    for _ in range(3):
        with torch.no_grad():
            assert torch.equal(lit(few), ref(few))
    assert 3 * 4096 <= cached_bytes(str(tmp / "e.lit"), offset, length) <= spare
    many = torch.arange(0, 40_000, 64).unsqueeze(0)  # 625 rows, one page each: far more than the spare
    for _ in range(2):
        with torch.no_grad():
            assert torch.equal(lit(many), ref(many))
    assert cached_bytes(str(tmp / "e.lit"), offset, length) <= spare


def test_locally_reordered_modules_are_not_read_twice(tmp):
    class Reordered(nn.Module):  # registers a, b, c, norm; runs norm, a, b, c (like HF decoder layers)
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64)
            self.norm = nn.LayerNorm(64)

        def forward(self, x):
            return self.c(self.b(self.a(self.norm(x))))

    def build():
        return nn.Sequential(*[Reordered() for _ in range(8)])

    torch.manual_seed(0)
    ref = build().eval()
    litcore.save(ref.state_dict(), tmp / "r.lit")
    lit = litcore.LitModule.from_params(tmp / "r.lit", build, memory_budget="100KB")
    x = torch.randn(2, 64)
    guess = lit.plan  # made from the registration order
    with torch.no_grad():
        assert torch.equal(lit(x), ref(x))
    first = lit.stats()["last"]
    assert first["mispredicts"] > 0  # the registration order was a wrong guess...
    # ...that cost no re-reads: what streamed (reads span the alignment padding between a
    # module's tensors), plus the window read ahead for the next forward
    padding = 4096 * len(guess.streamed_order)
    assert first["bytes_read"] <= guess.streamed_bytes + padding + guess.window_bytes
    with torch.no_grad():
        assert torch.equal(lit(x), ref(x))
    assert lit.stats()["last"]["mispredicts"] == 0  # the recorded order is followed from then on


def test_data_dependent_order_stays_correct(tmp):
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(64, 64)
            self.b = nn.Linear(64, 64)
            self.c = nn.Linear(64, 64)

        def forward(self, x, route):
            for name in route:
                x = getattr(self, name)(x)
            return x

    torch.manual_seed(0)
    ref = Branchy().eval()
    litcore.save(ref.state_dict(), tmp / "b.lit")
    lit = litcore.LitModule.from_params(tmp / "b.lit", Branchy, memory_budget="20KB")
    x = torch.randn(3, 64)
    for route in ["abc", "cba", "aac", "b", "abcabc", "ca"]:
        with torch.no_grad():
            want = ref(x, route)
        assert torch.equal(lit(x, route), want), route
    assert lit.stats()["total"]["mispredicts"] > 0


def test_exception_in_forward_leaves_it_usable(awkward_file):
    ref, path = awkward_file
    lit = litcore.LitModule.from_params(path, Awkward, memory_budget="30KB")
    with pytest.raises(IndexError):
        lit(torch.full((1, 3), 999))
    with torch.no_grad():
        assert torch.equal(lit(_ids()), ref(_ids()))


def test_bf16_file_of_fp32_model(tmp):
    def build():
        return nn.Sequential(Block(32), Block(32))

    torch.manual_seed(0)
    ref = build().eval()
    litcore.save(ref.state_dict(), tmp / "bf16.lit", dtype="bfloat16")
    lit = litcore.LitModule.from_params(tmp / "bf16.lit", build)
    assert lit.module[0].fc1.weight.dtype == torch.bfloat16  # the file's dtype wins
    x = torch.randn(2, 5, 32).bfloat16()
    with torch.no_grad():
        assert torch.equal(lit(x), ref.bfloat16()(x))


def test_mixed_dtypes(tmp):
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8).to(torch.float16)
            self.b = nn.Linear(8, 8).to(torch.bfloat16)
            self.c = nn.Linear(8, 8).double()

        def forward(self, x):
            return self.c(self.b(self.a(x.half()).bfloat16()).double())

    torch.manual_seed(0)
    ref = Mixed().eval()
    litcore.save(ref.state_dict(), tmp / "mixed.lit")
    lit = litcore.LitModule.from_params(tmp / "mixed.lit", Mixed)
    x = torch.randn(2, 8)
    with torch.no_grad():
        assert torch.equal(lit(x), ref(x))
    assert lit.module.b.weight.dtype == torch.bfloat16


def test_strict_mismatches_are_listed(tmp):
    ref = awkward()
    sd = ref.state_dict()
    missing = {k: v for k, v in sd.items() if k != "gate.bias"}
    litcore.save(missing, tmp / "missing.lit")
    with pytest.raises(litcore.WeightsMismatchError, match=r"missing from the file: gate\.bias") as info:
        litcore.LitModule.from_params(tmp / "missing.lit", Awkward)
    assert info.value.missing == ["gate.bias"]

    extra = dict(sd, **{"extra.weight": torch.ones(3)})
    litcore.save(extra, tmp / "extra.lit")
    with pytest.raises(litcore.WeightsMismatchError, match=r"not in the model: extra\.weight"):
        litcore.LitModule.from_params(tmp / "extra.lit", Awkward)

    wrong = dict(sd, **{"gate.weight": torch.ones(3, 3)})
    litcore.save(wrong, tmp / "shape.lit")
    with pytest.raises(litcore.WeightsMismatchError, match=r"gate\.weight: model has shape \[32, 32\], file has \[3, 3\]"):
        litcore.LitModule.from_params(tmp / "shape.lit", Awkward)
    with pytest.raises(litcore.WeightsMismatchError, match="shape"):  # shapes are never forgiven
        litcore.LitModule.from_params(tmp / "shape.lit", Awkward, strict=False)

    kind = dict(sd, **{"gate.weight": torch.ones(32, 32, dtype=torch.int32)})
    litcore.save(kind, tmp / "kind.lit")
    with pytest.raises(litcore.WeightsMismatchError, match=r"gate\.weight: model has dtype torch\.float32, file has torch\.int32"):
        litcore.LitModule.from_params(tmp / "kind.lit", Awkward)


def test_non_strict_warns_and_zero_fills(tmp):
    sd = {k: v for k, v in awkward().state_dict().items() if k != "gate.bias"}
    sd["extra"] = torch.ones(2)
    litcore.save(sd, tmp / "m.lit")
    with pytest.warns(UserWarning, match=r"gate\.bias.*extra"):
        lit = litcore.LitModule.from_params(tmp / "m.lit", Awkward, strict=False)
    assert torch.equal(lit.module.gate.bias, torch.zeros(32))
    assert lit(_ids()).shape == (2, 12, 50)


def test_non_persistent_buffers_in_the_file_are_ignored(tmp):
    ref = awkward()
    sd = dict(ref.state_dict(), inv_freq=torch.full((16,), 123.0))
    litcore.save(sd, tmp / "np.lit")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lit = litcore.LitModule.from_params(tmp / "np.lit", Awkward)
    assert torch.equal(lit.module.inv_freq, ref.inv_freq)  # the computed value, not the file's


def _vmas(path):
    real = os.path.realpath(path)
    with open("/proc/self/maps") as f:
        return [line.split() for line in f if line.rstrip().endswith(real)]


def _maps(path):
    """This process's mappings of `path`, one per mmap however madvise split it into VMAs
    (a mapping's later VMAs start at non-zero file offsets); [] only when no VMA is left."""
    vmas = _vmas(path)
    starts = [v for v in vmas if int(v[2], 16) == 0]
    return starts if starts or not vmas else vmas


def test_release_is_deterministic_and_instances_coexist(awkward_file):
    ref, path = awkward_file
    a = litcore.LitModule.from_params(path, Awkward)
    b = litcore.LitModule.from_params(path, Awkward, memory_budget="30KB")
    with torch.no_grad():
        want = ref(_ids())
    assert torch.equal(a(_ids()), want) and torch.equal(b(_ids()), want)
    assert len(_maps(path)) == 2
    del a
    assert len(_maps(path)) == 1  # reference counting alone, no gc pass
    del b
    gc.collect()
    assert _maps(path) == []


def test_close_unmaps_even_if_module_is_held(awkward_file):
    _, path = awkward_file
    lit = litcore.LitModule.from_params(path, Awkward, memory_budget="30KB")
    module = lit.module
    lit(_ids())
    lit.close()
    gc.collect()
    assert _maps(path) == []
    assert module.embed.weight.is_meta


def test_builder_and_path_errors(tmp, awkward_file):
    _, path = awkward_file
    with pytest.raises(TypeError, match="not an nn.Module"):
        litcore.LitModule.from_params(path, lambda: 42)
    (tmp / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="one .lit file"):
        litcore.LitModule.from_params(tmp / "empty", Awkward)
    with pytest.raises(litcore.BudgetTooSmallError, match="too small.*module '.*'"):
        litcore.LitModule.from_params(path, Awkward, memory_budget="1KB")
    with pytest.raises(ValueError, match="memory_budget"):
        litcore.LitModule.from_params(path, Awkward, memory_budget="lots")
    with pytest.raises(ValueError, match="device"):
        litcore.LitModule.from_params(path, Awkward, device="cuda")
    assert nn.Linear(2, 2).weight.device.type == "cpu"  # hijack undone after failures


def test_top_level_parameter_only_model(tmp):
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return x @ self.w

    torch.manual_seed(0)
    ref = Tiny()
    litcore.save(ref.state_dict(), tmp / "t.lit")
    lit = litcore.LitModule.from_params(tmp / "t.lit", Tiny)
    x = torch.randn(2, 4)
    assert torch.equal(lit(x), ref(x).detach())


def test_a_spread_layout_is_bit_exact_and_adopted_cleanly(tmp):
    """The layout a compute-bound forward makes the planner choose (several streamed runs):
    adopted between forwards, outputs unchanged, and the forward after it reads the new plan."""
    from litcore.residency import PassRates

    def build():
        return nn.Sequential(*[nn.Linear(1024, 1024, bias=False) for _ in range(16)])  # 4 MiB units

    torch.manual_seed(0)
    ref = build().eval()
    litcore.save(ref.state_dict(), tmp / "s.lit")
    lit = litcore.LitModule.from_params(tmp / "s.lit", build, memory_budget="52MiB")
    x = torch.randn(4, 1024)
    with torch.no_grad():
        want = ref(x)
    assert torch.equal(lit(x), want) and lit.plan.runs == 1
    unit = 4 << 20
    rates = PassRates(compute_seconds_per_byte=6e-3 / unit, read_seconds_per_byte=10e-3 / unit, seek_seconds=1e-3)
    lit.engine.replan(rates)
    plan = lit.plan
    assert plan.runs > 1 and plan.resident_bytes + plan.window_bytes <= lit.stats()["budget_bytes"]
    for _ in range(4):
        assert torch.equal(lit(x), want)
    after = lit.stats()["per_forward"][1]  # the forward after the switch runs the new plan (it is not re-planned)
    assert after["streamed_runs"] == plan.runs and after["mispredicts"] == 0
    assert after["bytes_read"] >= plan.streamed_bytes - plan.window_bytes


def test_modules_a_new_plan_makes_resident_are_read_in_as_the_forward_ends(tmp):
    """A model that runs its layers in the reverse of the order it registers them: the plan
    made before the first forward keeps the first registered layers resident, the one its
    order makes keeps the last. Those are read in whole as the first forward ends (the build
    before left them to come in page by page as the next forward touched them: 1-6% of their
    pages were in memory then), and the layers that stream now leave memory."""

    class Reversed(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(512, 512, bias=False) for _ in range(8)])  # 1 MiB units

        def forward(self, x):
            for layer in reversed(self.layers):
                x = torch.relu(layer(x))
            return x

    torch.manual_seed(0)
    ref = Reversed().eval()
    litcore.save(ref.state_dict(), tmp / "reversed.lit")
    lit = litcore.LitModule.from_params(tmp / "reversed.lit", Reversed, memory_budget="5MiB")
    before = set(lit.plan.resident_modules)
    x = torch.randn(2, 512)
    with torch.no_grad():
        assert torch.equal(lit(x), ref(x))
    arrived = [m for m in lit.plan.resident_modules if m not in before]
    left = [m for m in before if m not in lit.plan.resident_modules]
    assert arrived and left, (before, lit.plan.resident_modules)
    assert all(in_memory_fraction(lit.module.get_submodule(m).weight) == 1.0 for m in arrived)
    assert all(in_memory_fraction(lit.module.get_submodule(m).weight) == 0.0 for m in left)
    with torch.no_grad():
        assert torch.equal(lit(x), ref(x))


def test_buffers_computed_at_construction_follow_the_files_dtype(tmp):
    """A positional table computed in the default dtype, used in a matmul with the weights:
    with a bf16 file the model is built as transformers builds one for dtype=bfloat16 (torch's
    default dtype set to it), so the table is bf16 and the forward runs."""

    class Positional(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(16, 16)
            self.register_buffer("table", torch.linspace(-1, 1, 5 * 16).reshape(5, 16), persistent=False)

        def forward(self, x):
            return self.proj(x + self.table) @ self.table.T

    torch.manual_seed(0)
    ref = Positional().eval()
    litcore.save(ref.state_dict(), tmp / "p.lit", dtype="bfloat16")
    lit = litcore.LitModule.from_params(tmp / "p.lit", Positional)
    assert lit.module.table.dtype == torch.bfloat16 and torch.get_default_dtype() == torch.float32
    torch.set_default_dtype(torch.bfloat16)
    try:
        same = Positional().eval()  # the reference, built the same way, with the file's weights
    finally:
        torch.set_default_dtype(torch.float32)
    same.load_state_dict({k: v.bfloat16() for k, v in ref.state_dict().items()})
    x = torch.randn(5, 16).bfloat16()
    with torch.no_grad():
        assert torch.equal(lit(x), same(x))


def _two_large_layers() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 64), nn.ReLU(), nn.Linear(64, 1024),
                         nn.Linear(1024, 1024))


def test_the_readers_time_is_split_at_the_forwards_edges(tmp):
    """read_seconds counts what was read for a forward since the one before ended;
    forward_read_seconds only the wall time the forward ran with a read in flight. Under a
    budget that holds one 4 MiB layer, the first layer can only be read once the last one is
    dropped at the forward's end: each forward after the first has reads before it began,
    and reads never take longer than the forward they ran in, however many ran at once."""
    litcore.save(_two_large_layers().state_dict(), tmp / "two.lit")
    lit = litcore.LitModule.from_params(tmp / "two.lit", _two_large_layers, memory_budget="5MB")
    with torch.no_grad():
        for _ in range(4):
            lit(torch.randn(4, 1024))
            time.sleep(0.05)
    passes = lit.stats()["per_forward"]
    for p in passes:
        assert 0 <= p["forward_read_seconds"] <= p["forward_seconds"] + 1e-3, p
    assert all(p["read_seconds"] > p["forward_read_seconds"] > 0 for p in passes[1:]), passes
    total = lit.stats()["total"]
    assert total["forward_read_seconds"] == pytest.approx(sum(p["forward_read_seconds"] for p in passes))


def test_verbose_prints_each_forward_with_the_readers_time(awkward_file, capsys):
    _, path = awkward_file
    lit = litcore.LitModule.from_params(path, Awkward, memory_budget="30KB", verbose=True)
    with torch.no_grad():
        lit(_ids())
        lit(_ids())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("litcore: forward")]
    assert [line.split(":")[1] for line in lines] == [" forward 1", " forward 2"]
    read_s = lit.stats()["last"]["read_seconds"]
    assert f"MiB in {read_s:.3f} s, waited" in lines[-1]
