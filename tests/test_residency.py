"""Budgets and the residency plan."""
import pytest

import litcore
from litcore.budget import auto_budget, parse_size, resolve_budget
from litcore.residency import (BudgetTooSmallError, PassRates, Unit, device_plan, host_plan, make_plan, measure_rates,
                               model_pass_seconds)
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
    # what the cgroup is charged, minus max(128 MiB, 5%) (usage moved a little between the two reads)
    assert headroom - max(128 << 20, headroom // 20) - (16 << 20) <= budget <= headroom - (128 << 20) + (16 << 20)


def _units(sizes, streamable=True):
    return [Unit(f"m{i}", s, streamable) for i, s in enumerate(sizes)]


def test_everything_resident_when_it_fits():
    plan = make_plan(_units([10, 20, 30]), [0, 1, 2], 100)
    assert not plan.streams and plan.resident == {0, 1, 2} and plan.streamed_bytes == 0


def _runs(order, resident):
    """How many separate runs of the (cyclic) order stream."""
    streamed = [i not in resident for i in order]
    return sum(1 for k, s in enumerate(streamed) if s and not streamed[k - 1]) or (1 if all(streamed) else 0)


def test_plan_respects_the_budget_and_streams_one_run_of_the_order():
    sizes = [40, 100, 7, 100, 100, 3, 60] * 4
    order = list(range(len(sizes)))
    for budget in (400, 700, 1000, 1500):
        plan = make_plan(_units(sizes), order, budget)
        assert plan.streams
        assert plan.resident_bytes + plan.window_bytes <= budget
        assert plan.window_bytes >= 2 * max(sizes[i] for i in plan.streamed_order) or plan.window_bytes == budget - plan.resident_bytes
        # residents are a prefix and a suffix: the streamed bytes are one sequential range
        assert _runs(order, plan.resident) == 1, sorted(plan.resident)
        assert plan.streamed_order == [i for i in order if i not in plan.resident]
        assert plan.streamed_bytes == sum(sizes) - plan.resident_bytes
        assert budget - plan.resident_bytes - plan.window_bytes < 100  # the spare left is less than a unit


def test_a_single_huge_unit_stays_resident_when_that_shrinks_the_window():
    units = _units([100] * 20 + [1000])  # an LM head ten times a layer
    plan = make_plan(units, list(range(21)), 2000)
    assert 20 in plan.resident
    assert plan.window_bytes == 300  # two layers... and the third of the default depth
    assert plan.streamed_bytes == 3000 - plan.resident_bytes <= 1300
    assert _runs(list(range(21)), plan.resident) == 1


def test_on_demand_units_stream_by_fault_and_cost_no_window():
    units = [Unit("embed", 1000, True, True)] + _units([100] * 10) + [Unit("head", 100, True)]
    order = list(range(12))
    plan = make_plan(units, order, 700)
    assert 0 in plan.streamed_order and 0 not in plan.resident
    assert plan.window_bytes == 300  # sized by the layers, not by the 1000-byte embedding
    assert plan.streamed_bytes == 2100 - plan.resident_bytes - 1000  # its touched rows only
    assert plan.resident_bytes == 400
    make_plan(units, order, 300)  # the embedding never has to fit the budget
    assert make_plan(units, order, 2100).resident == set(order)  # everything fits: all resident


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


def test_host_plan_for_a_device_keeps_what_fits_in_host_memory():
    units = [Unit(f"layer{i}", 100, True) for i in range(10)]
    device = make_plan(units, list(range(10)), 450)
    assert device.streams and device.resident
    roomy = host_plan(units, device, 10_000)
    # everything streamed to the device stays in host memory; device-resident units cost it nothing
    assert not roomy.streams and roomy.resident_bytes == device.streamed_bytes
    tight = host_plan(units, device, 350)
    assert tight.streams and set(tight.streamed_order) <= set(device.streamed_order)
    assert tight.resident_bytes + tight.window_bytes <= 350
    with pytest.raises(litcore.BudgetTooSmallError, match="layer"):
        host_plan(units, device, 50)


def test_device_plan_counts_the_copy_ring_in_the_budget():
    units = [Unit(f"attn{i}", 60, True) if i % 2 == 0 else Unit(f"mlp{i}", 150, True) for i in range(16)]
    units += [Unit("head", 300, True), Unit("shared", 50, False)]
    order = list(range(18))
    # the plain plan's window (2 of the largest + ...) is smaller than a ring of 3 slots:
    # planned alone, resident weights and the ring would overrun the budget
    plain = make_plan(units, order, 1500, depth=3)
    assert plain.resident_bytes + 3 * (max(units[i].nbytes for i in plain.streamed_order) + 16) > 1500
    plan = device_plan(units, order, 1500, slots=3, slot_overhead=16)
    largest = max(units[i].nbytes for i in plan.streamed_order)
    assert plan.window_bytes == 3 * (largest + 16)  # the ring is the window
    assert plan.resident_bytes + plan.window_bytes <= 1500
    assert 17 in plan.resident  # shared weights are never streamed
    whole = device_plan(units, order, 10_000)
    assert not whole.streams and whole.window_bytes == 0
    with pytest.raises(litcore.BudgetTooSmallError, match="gpu_memory_budget .* 'head'"):
        device_plan(units, order, 400)


MiB = 2**20
# Twenty 10 MiB units under a 150 MiB budget: 80 MiB streams through a 30 MiB window.
LAYERS = [Unit(f"layer{i}", 10 * MiB, True) for i in range(20)]
ORDER = list(range(20))
READ = 1e-3 / MiB  # seconds per byte: 10 ms per unit


def _rates(compute_per_unit, seek=0.0):
    return PassRates(compute_per_unit / (10 * MiB), READ, seek)


def test_without_rates_one_run_streams():
    plan = make_plan(LAYERS, ORDER, 150 * MiB)
    assert plan.runs == 1 and plan.modeled_seconds == 0 and _runs(ORDER, plan.resident) == 1


def test_the_pass_model_on_simple_layouts():
    single = make_plan(LAYERS, ORDER, 150 * MiB)  # 12 resident, 8 streamed, window of 3
    everything = make_plan(LAYERS, ORDER, 200 * MiB)
    assert model_pass_seconds(LAYERS, ORDER, everything, _rates(5e-3)) == pytest.approx(0.100)
    # IO-bound: the reader never rests; one seek a pass (the wrap)
    assert model_pass_seconds(LAYERS, ORDER, single, _rates(1e-3, seek=2e-3)) == pytest.approx(0.082)
    # Window-bound: 80 ms of compute, 80 of reads, yet the reader may run only three units
    # ahead, so it rests through the resident part and the streamed units wait (worked out
    # by hand: the reads of units 15-19 start at 52, 62, 72, 82 and 92 ms)
    assert model_pass_seconds(LAYERS, ORDER, single, _rates(4e-3)) == pytest.approx(0.106)


def test_a_compute_bound_pass_spreads_its_reads():
    # 6 ms of compute per unit (120 ms a pass) against 80 ms of reads: one run stalls, as
    # above; spread, each run is read under the compute before it.
    rates = _rates(6e-3, seek=1e-3)
    spread = make_plan(LAYERS, ORDER, 150 * MiB, rates=rates)
    assert spread.runs > 1 and _runs(ORDER, spread.resident) == spread.runs
    assert spread.resident_bytes + spread.window_bytes <= 150 * MiB
    assert spread.streamed_bytes == 80 * MiB
    single = make_plan(LAYERS, ORDER, 150 * MiB)
    assert spread.modeled_seconds == pytest.approx(model_pass_seconds(LAYERS, ORDER, spread, rates))
    assert spread.modeled_seconds < 0.95 * model_pass_seconds(LAYERS, ORDER, single, rates)


def test_an_io_bound_pass_keeps_one_run():
    plan = make_plan(LAYERS, ORDER, 150 * MiB, rates=_rates(1e-3))  # 20 ms compute, 80 ms reads
    assert plan.runs == 1
    assert plan.modeled_seconds == pytest.approx(0.080, rel=0.1)
    # nor one nearly balanced, though the model would favour spreading (see make_plan)
    balanced = _rates(4e-3)
    assert make_plan(LAYERS, ORDER, 150 * MiB, rates=balanced).runs == 1
    spread = make_plan(LAYERS, ORDER, 150 * MiB, rates=_rates(6e-3))
    assert model_pass_seconds(LAYERS, ORDER, spread, balanced) < model_pass_seconds(
        LAYERS, ORDER, make_plan(LAYERS, ORDER, 150 * MiB), balanced)


def test_an_io_bound_pass_takes_a_spread_layout_back_to_one_run():
    spread = make_plan(LAYERS, ORDER, 150 * MiB, rates=_rates(6e-3, seek=1e-3))
    assert spread.runs > 1
    assert make_plan(LAYERS, ORDER, 150 * MiB, rates=_rates(1e-3), current_runs=spread.runs).runs == 1
    # and while it stays compute-bound, the spread layout stays
    again = make_plan(LAYERS, ORDER, 150 * MiB, rates=_rates(6e-3, seek=1e-3), current_runs=spread.runs)
    assert again.resident == spread.resident


def test_direct_reads_spread_an_io_bound_pass_whose_reader_would_idle():
    # 3 ms of compute per unit (60 ms a pass) against 80 ms of reads: IO-bound. In one run the
    # twelve resident units compute for 36 ms while the reader fills its 30 ms window and
    # waits; spread, the reader reads through every resident stretch.
    rates = _rates(3e-3, seek=0.5e-3)
    single = make_plan(LAYERS, ORDER, 150 * MiB)
    assert model_pass_seconds(LAYERS, ORDER, single, rates) > 0.080 * 1.05
    assert make_plan(LAYERS, ORDER, 150 * MiB, rates=rates).runs == 1  # through the page cache: one run
    spread = make_plan(LAYERS, ORDER, 150 * MiB, rates=rates, direct_reads=True)
    assert spread.runs > 1 and _runs(ORDER, spread.resident) == spread.runs
    assert spread.streamed_bytes == single.streamed_bytes
    assert spread.resident_bytes + spread.window_bytes <= 150 * MiB
    assert spread.modeled_seconds < 0.95 * model_pass_seconds(LAYERS, ORDER, single, rates)
    # Far IO-bound the reader never idles in one run: spreading gains nothing, one run stays.
    assert make_plan(LAYERS, ORDER, 150 * MiB, rates=_rates(1e-3, seek=0.5e-3), direct_reads=True).runs == 1


def test_seeks_dearer_than_the_stall_keep_one_run():
    plan = make_plan(LAYERS, ORDER, 150 * MiB, rates=_rates(6e-3, seek=50e-3))
    assert plan.runs == 1


def test_a_layout_change_must_win_by_five_percent():
    # Far compute-bound: every layout hides its reads, so none beats another by 5%.
    for current in (1, 2):
        plan = make_plan(LAYERS, ORDER, 150 * MiB, rates=_rates(50e-3), current_runs=current)
        assert plan.runs == current


def test_only_lookups_stream_when_the_rest_fits():
    units = [Unit("embed", 50 * MiB, True, on_demand=True)] + [Unit(f"l{i}", 10 * MiB, True) for i in range(5)]
    plan = make_plan(units, list(range(6)), 60 * MiB)  # 50 MiB of layers in 60: no window, nothing read ahead
    assert plan.resident == {1, 2, 3, 4, 5} and plan.streamed_order == [0] and plan.streamed_bytes == 0


def _moe_units(routed=True):
    """An embedding, four layers of attention (40) and routed experts (800), an LM head (200)."""
    units = [Unit("embed", 1000, True, on_demand=True)]
    for i in range(4):
        units += [Unit(f"layers.{i}.attn", 40, True), Unit(f"layers.{i}.experts", 800, True, routed=routed)]
    return units + [Unit("head", 200, True)]


def test_routed_units_stream_first_and_take_the_window_once():
    units, order = _moe_units(), list(range(10))
    experts, rest = {2, 4, 6, 8}, {1, 3, 5, 7, 9}
    plan = make_plan(units, order, 1500)
    # every unit read whole each forward stays resident; only the experts stream, by routing
    assert plan.resident == rest and set(plan.streamed_order) == {0} | experts
    assert plan.streamed_bytes == 0 and plan.routed_bytes == 3200 and plan.lookup_bytes == 1000
    assert plan.resident_bytes + plan.streamed_bytes + plan.routed_bytes + plan.lookup_bytes == plan.total_bytes
    # one experts unit, claimed when it is entered: nothing else streams to read ahead
    assert plan.window_bytes == 800
    # the same units read whole: two experts units in the window, and attention streams
    whole = make_plan(_moe_units(routed=False), order, 1500)
    assert whole.window_bytes > 800 and whole.routed_bytes == 0 and rest - whole.resident
    # room left once the rest is resident keeps whole experts units
    for budget, kept in ((2000, 1), (3000, 2)):
        roomy = make_plan(units, order, budget)
        assert rest <= roomy.resident and len(roomy.resident & experts) == kept
        assert roomy.window_bytes == 800 and roomy.resident_bytes + roomy.window_bytes <= budget
    # attention streaming too: the window holds its read-ahead beside one experts unit
    tight = make_plan(units, order, 1200)
    assert tight.streamed_bytes == 80 and tight.window_bytes == 800 + 3 * 40
    assert tight.resident_bytes + tight.window_bytes <= 1200
    # the device path copies experts whole: it plans them as any unit
    assert device_plan(units, order, 6000, slot_overhead=16) == device_plan(_moe_units(routed=False), order, 6000,
                                                                        slot_overhead=16)


def test_measure_rates_from_a_forward():
    units = [Unit("a", 100, True), Unit("b", 300, True), Unit("e", 1000, True, on_demand=True)]
    stats = {"wait_seconds": 0.5, "timed_bytes": 64 * MiB, "read_seconds": 1.0, "seek_reads": 2,
             "seek_read_bytes": 32 * MiB, "seek_read_seconds": 0.6}
    r = measure_rates(units, [2, 0, 1], 2.5, stats)
    assert r.compute_seconds_per_byte == pytest.approx(2.0 / 400)  # lookups use no weight bytes
    assert r.read_seconds_per_byte == pytest.approx(0.4 / (32 * MiB))
    assert r.seek_seconds == pytest.approx((0.6 - 0.4) / 2)
    # a forward that read nothing keeps what was known about reads
    quiet = {**stats, "timed_bytes": 0, "read_seconds": 0.0, "seek_reads": 0, "seek_read_bytes": 0, "seek_read_seconds": 0.0}
    r2 = measure_rates(units, [0, 1], 1.5, quiet, r)
    assert r2.read_seconds_per_byte == r.read_seconds_per_byte and r2.seek_seconds == r.seek_seconds
    assert measure_rates(units, [0, 1], 1.5, quiet) is None


def _layer_units(names_sizes, file_order):
    """Units (exec order) and their byte ranges laid out in `file_order`, 4096-aligned."""
    offsets, at = {}, 0
    for name in file_order:
        offsets[name] = at
        at += (dict(names_sizes)[name] + 4095) // 4096 * 4096
    units = [Unit(n, b, True) for n, b in names_sizes]
    ranges = [[(offsets[n], b)] for n, b in names_sizes]
    return units, ranges


def test_read_groups_join_a_shuffled_layer_and_ignore_small_steps_back():
    from litcore.residency import read_group_bytes

    MiB = 2**20
    layer = [("in_ln", 4096), ("q", 8 * MiB), ("k", MiB), ("v", MiB), ("o", 8 * MiB), ("post_ln", 4096),
             ("gate", 23 * MiB), ("up", 23 * MiB), ("down", 23 * MiB)]
    whole = sum(b for _, b in layer)
    budget = 10 * whole
    # Name order (a converted safetensors file): the layer is one block, shuffled inside.
    name_order = ["in_ln", "down", "gate", "up", "post_ln", "k", "o", "q", "v"]
    units, ranges = _layer_units(layer, name_order)
    assert read_group_bytes(units, list(range(len(units))), ranges, budget) == whole
    # Model order, norms stored after the MLP (registration order): a few KiB back is no
    # shuffle, every module is read on its own.
    model_order = ["q", "k", "v", "o", "gate", "up", "down", "in_ln", "post_ln"]
    units, ranges = _layer_units(layer, model_order)
    assert read_group_bytes(units, list(range(len(units))), ranges, budget) == 0
    # Two shuffled layers back to back in the file still make one group each.
    two = [(f"{n}{i}", b) for i in range(2) for n, b in layer]
    units, ranges = _layer_units(two, [f"{n}{i}" for i in range(2) for n in name_order])
    assert read_group_bytes(units, list(range(len(units))), ranges, budget) == whole
    # A group never exceeds a quarter of the budget: then smaller blocks are read as groups
    # (here the attention's q, k, v, o; the MLP's 69 MiB is too large too).
    units, ranges = _layer_units(layer, name_order)
    assert read_group_bytes(units, list(range(len(units))), ranges, 2 * whole) == 18 * MiB


def test_the_window_holds_one_read_group_and_the_largest_unit():
    """The reader claims a group's units in file order as the window makes room (the group
    before gives its units back as they compute), so the window holds one group beside the
    largest unit, not two groups: the difference stays resident."""
    MiB = 2**20
    layer = [("in_ln", 4096), ("q", 8 * MiB), ("k", MiB), ("v", MiB), ("o", 8 * MiB), ("post_ln", 4096),
             ("gate", 22 * MiB), ("up", 22 * MiB), ("down", 22 * MiB)]
    units = [Unit(f"{n}{i}", b, True) for i in range(16) for n, b in layer]
    group = sum(b for _, b in layer)
    budget = 600 * MiB
    grouped = make_plan(units, list(range(len(units))), budget, read_group_bytes=group)
    alone = make_plan(units, list(range(len(units))), budget)
    assert alone.window_bytes == 2 * 22 * MiB
    assert grouped.window_bytes == group + 22 * MiB
    assert grouped.resident_bytes + grouped.window_bytes <= budget
