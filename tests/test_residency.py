"""Budgets and the residency plan."""
import pytest

import litcore
from litcore.budget import auto_budget, parse_size, resolve_budget
from litcore.residency import BudgetTooSmallError, Unit, make_plan
from conftest import run_python


@pytest.mark.parametrize("text,expected", [("1200MB", 1_200_000_000), ("1.5GiB", 3 * 2**29), ("800M", 800_000_000),
                                           ("64KiB", 65536), (4096, 4096), ("  2 gb ", 2_000_000_000)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["lots", "-1MB", "1.5XB", 0, ""])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError, match="memory_budget"):
        parse_size(bad)


def test_auto_is_positive_and_below_memory():
    budget = resolve_budget("auto")
    assert budget == resolve_budget(None) or abs(budget - resolve_budget(None)) < 64 << 20
    assert 0 < budget < 1 << 50


def test_auto_follows_the_cgroup_limit():
    import sys
    sys.path.insert(0, "benchmarks")
    import cgroup

    if not cgroup.available():
        pytest.skip("memory cgroups cannot be created here")
    code = ("import litcore.budget as b\n"
            "budget, limit = b.auto_budget(), b.cgroup_limit()\n"
            "path = [l.split(':')[2] for l in open('/proc/self/cgroup').read().splitlines() if 'memory' in l.split(':')[1]][0]\n"
            "usage = int(open('/sys/fs/cgroup/memory' + path + '/memory.usage_in_bytes').read())\n"
            "print(budget, usage, limit)")
    out = cgroup.run([sys.executable, "-c", code], 900 * 10**6)
    budget, usage, limit = map(int, out.stdout.split())
    assert abs(limit - 900 * 10**6) < 4096
    headroom = limit - usage
    # what the cgroup is charged, minus max(64 MiB, 5%) (usage moved a little between the two reads)
    assert headroom - max(64 << 20, headroom // 20) - (16 << 20) <= budget <= headroom - (64 << 20) + (16 << 20)


def _units(sizes, streamable=True):
    return [Unit(f"m{i}", s, streamable) for i, s in enumerate(sizes)]


def test_everything_resident_when_it_fits():
    plan = make_plan(_units([10, 20, 30]), [0, 1, 2], 100)
    assert not plan.streams and plan.resident == {0, 1, 2} and plan.streamed_bytes == 0


def test_plan_respects_the_budget_and_spreads_residents():
    units = _units([100] * 20)
    plan = make_plan(units, list(range(20)), 1200)
    assert plan.streams
    assert plan.resident_bytes + plan.window_bytes <= 1200
    resident = sorted(plan.resident)
    assert len(resident) >= 5
    gaps = [b - a for a, b in zip(resident, resident[1:])]
    assert max(gaps) <= 4, f"residents bunched: {resident}"
    assert plan.streamed_order == [i for i in range(20) if i not in plan.resident]
    assert plan.streamed_bytes == 2000 - plan.resident_bytes


def test_unstreamable_and_unseen_units_stay_resident():
    units = [Unit("root", 50, False), Unit("a", 100, True), Unit("b", 100, True), Unit("c", 30, True)]
    plan = make_plan(units, [1, 2], 400)  # c never ran under its own hooks
    assert {0, 3} <= plan.resident
    assert 3 not in plan.streamed_order


def test_budget_too_small_names_the_module():
    units = [Unit("model.embed", 500, True), Unit("layer", 100, True)]
    with pytest.raises(BudgetTooSmallError, match="module 'model.embed' needs"):
        make_plan(units, [0, 1], 300)
    assert issubclass(BudgetTooSmallError, ValueError)
    assert litcore.BudgetTooSmallError is BudgetTooSmallError
