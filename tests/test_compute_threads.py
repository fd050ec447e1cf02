"""One compute thread fewer while the streamed modules of an IO-bound forward run, where asked
for (`narrow_compute=True`): when the engine narrows, that it covers exactly the streamed
stretch, that the caller's thread count always comes back (after a forward, after one that
raised), and that by default it never narrows."""
import pytest
import torch
from torch import nn

import litcore
from litcore.residency import PassRates, narrow_streamed_compute

UNIT = 1 << 20
IO_BOUND = PassRates(compute_seconds_per_byte=1e-3 / UNIT, read_seconds_per_byte=10e-3 / UNIT, seek_seconds=0.0)
COMPUTE_BOUND = PassRates(compute_seconds_per_byte=10e-3 / UNIT, read_seconds_per_byte=1e-3 / UNIT, seek_seconds=0.0)


def rates(share: float) -> PassRates:
    """Compute per streamed byte at `share` of its read."""
    return PassRates(compute_seconds_per_byte=share * 1e-3 / UNIT, read_seconds_per_byte=1e-3 / UNIT, seek_seconds=0.0)


def test_the_policy_narrows_only_where_the_slower_compute_still_hides():
    assert narrow_streamed_compute(rates(0.1), 2)
    assert narrow_streamed_compute(rates(0.4), 2)        # 0.8 of the reads on one thread
    assert not narrow_streamed_compute(rates(0.45), 2)   # 0.9: too near the reads
    assert narrow_streamed_compute(rates(0.6), 4)        # 0.8 on three threads
    assert not narrow_streamed_compute(rates(0.1), 1)    # nothing to give up
    assert not narrow_streamed_compute(COMPUTE_BOUND, 8)
    # Once narrowed, rates measured on narrowed passes keep it while compute stays under the reads.
    assert narrow_streamed_compute(rates(0.9), 2, narrowed=True)
    assert not narrow_streamed_compute(rates(1.1), 2, narrowed=True)


class Recorder(nn.Linear):
    """A linear layer that notes the intra-op threads each call computed with."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list = []

    def forward(self, x):
        self.seen.append(torch.get_num_threads())
        return super().forward(x)


class Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def build(n: int = 12) -> nn.Sequential:
    return nn.Sequential(*[Recorder(512, 512, bias=False) for _ in range(n)])  # 1 MiB units


@pytest.fixture
def threads_two():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


def _streaming(tmp, narrow_compute: bool):
    """The reference model and the same weights streaming under a budget of 7 of 12 units."""
    torch.manual_seed(0)
    ref = build().eval()
    litcore.save(ref.state_dict(), tmp / "n.lit")
    return ref, litcore.LitModule.from_params(tmp / "n.lit", build, memory_budget="7MiB",
                                              narrow_compute=narrow_compute)


@pytest.fixture
def streaming(tmp):
    return _streaming(tmp, narrow_compute=True)


def _seen(lit) -> list:
    out = [layer.seen[-1] for layer in lit.module]
    for layer in lit.module:
        layer.seen = []
    return out


def test_an_io_bound_forward_narrows_its_streamed_stretch_only(streaming, threads_two):
    ref, lit = streaming
    x = torch.randn(4, 512)
    with torch.no_grad():
        want = ref(x)
        assert torch.equal(lit(x), want)  # learns the order
        lit.engine.replan(IO_BOUND)
        _seen(lit)
        assert torch.equal(lit(x), want)
    where = {name: kind for name, kind, _ in lit.plan.placements()}
    kinds = [where[str(i)] for i in range(len(lit.module))]
    seen = _seen(lit)
    assert "streamed" in kinds and "resident" in kinds
    first, last = kinds.index("streamed"), len(kinds) - 1 - kinds[::-1].index("streamed")
    assert seen[first:last + 1] == [1] * (last + 1 - first)          # the streamed run, one thread fewer
    assert seen[:first] + seen[last + 1:] == [2] * (len(kinds) - (last + 1 - first))  # resident stretch: all
    assert torch.get_num_threads() == 2                              # the caller's count is back
    assert lit.stats()["last"]["compute_threads"] == 1


@pytest.mark.parametrize("narrow_compute, rates", [(False, IO_BOUND), (True, COMPUTE_BOUND)],
                         ids=["io-bound-by-default", "compute-bound"])
def test_every_thread_is_kept_unless_asked_for_and_io_bound(tmp, threads_two, narrow_compute, rates):
    # By default it never narrows: fewer threads may sum a reduction in another order.
    ref, lit = _streaming(tmp, narrow_compute)
    x = torch.randn(4, 512)
    with torch.no_grad():
        lit(x)
        lit.engine.replan(rates)
        _seen(lit)
        assert torch.equal(lit(x), ref(x))
    assert "streamed" in {kind for _, kind, _ in lit.plan.placements()}
    assert _seen(lit) == [2] * len(lit.module)
    assert lit.stats()["last"]["compute_threads"] == 2


def test_the_callers_count_comes_back_after_a_forward_that_raised(tmp, threads_two):
    def build_failing():
        return nn.Sequential(*build(10), Boom())

    torch.manual_seed(0)
    litcore.save(build_failing().state_dict(), tmp / "f.lit")
    lit = litcore.LitModule.from_params(tmp / "f.lit", build_failing, memory_budget="6MiB", narrow_compute=True)
    x = torch.randn(4, 512)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="boom"), torch.no_grad():
            lit(x)
    lit.engine.replan(IO_BOUND)
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad():
        lit(x)
    assert 1 in [layer.seen[-1] for layer in list(lit.module)[:-1]]  # it did narrow
    assert torch.get_num_threads() == 2


def test_a_caller_on_one_thread_is_left_on_one(streaming):
    ref, lit = streaming
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.randn(4, 512)
        with torch.no_grad():
            lit(x)
            lit.engine.replan(IO_BOUND)
            assert torch.equal(lit(x), ref(x))
        assert torch.get_num_threads() == 1 and lit.stats()["last"]["compute_threads"] == 1
    finally:
        torch.set_num_threads(before)
