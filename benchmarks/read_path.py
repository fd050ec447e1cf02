"""The read path: how fast the native prefetcher streams a model's weights under a cgroup
memory limit, for each read mode, with the streamed modules contiguous in the file (how the
residency plan lays them out) or with gaps between them (every other module resident).

Each case runs in its own process inside the limit, after evicting the file from the page
cache; it streams every unit three times through `wait`/`done` (no compute) and reports
throughput and the CPU time the process spent.

    python benchmarks/read_path.py                        # the 1.1B model of run.py, 1200 MB
    python benchmarks/read_path.py --lit model.lit --limit 800 --passes 2
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import cgroup  # noqa: E402

MODES = ["sendfile", "pread", "populate", "exact"]

CHILD = r"""
import json, resource, sys, time
import litcore
from litcore._native import _C

path, mode, layout, passes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
store = litcore.Store(path)
# One unit per module: the tensors sharing a name prefix, in file order.
modules = {}
for name in store.keys():
    modules.setdefault(name.rpartition(".")[0], []).append(name)
units = [store.native.byte_ranges(names) for names in modules.values()]
sizes = [sum(n for _, n in u) for u in units]
streamed = list(range(len(units))) if layout == "contiguous" else list(range(0, len(units), 2))
window = 2 * max(sizes[u] for u in streamed)
pf = _C.Prefetcher(store.native, units, window, 1, mode)
pf.set_order(streamed)
nbytes = sum(sizes[u] for u in streamed)
rates = []
before = resource.getrusage(resource.RUSAGE_SELF)
for _ in range(passes):
    t0 = time.perf_counter()
    for u in streamed:
        pf.wait(u)
        pf.done(u)
    rates.append(nbytes / (time.perf_counter() - t0))
after = resource.getrusage(resource.RUSAGE_SELF)
print("RESULT " + json.dumps({"gb": nbytes / 1e9, "gb_s": sorted(rates)[len(rates) // 2] / 1e9,
                              "sys_s": (after.ru_stime - before.ru_stime) / passes,
                              "user_s": (after.ru_utime - before.ru_utime) / passes}))
"""


def run_case(lit: str, mode: str, layout: str, limit_mb: int, passes: int) -> dict:
    cgroup.evict([lit])
    out = cgroup.run([sys.executable, "-c", CHILD, lit, mode, layout, str(passes)], limit_mb * 10**6)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        return {"mode": mode, "layout": layout, "error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return {"mode": mode, "layout": layout, "peak_mb": out.peak_bytes / 1e6, **json.loads(line[len("RESULT "):])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lit", default=".cache/bench/llama-1b/model.lit")
    parser.add_argument("--limit", type=int, default=1200, help="MB (10^6 bytes)")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    if not os.path.exists(args.lit):
        sys.exit(f"{args.lit} does not exist: run benchmarks/run.py once (it makes the model), or pass --lit")
    if not cgroup.available():
        print("memory cgroups cannot be created here: running without a limit")
    print(f"{args.lit}, limit {args.limit} MB, median of {args.passes} passes\n")
    print("| read mode | streamed modules | GB per pass | throughput (GB/s) | CPU sys / user per pass (s) |")
    print("|---|---|---|---|---|")
    for layout in ("contiguous", "gaps"):
        for mode in MODES:
            r = run_case(args.lit, mode, layout, args.limit, args.passes)
            if "error" in r:
                print(f"| {mode} | {layout} | — | {r['error'][-80:]} | — |", flush=True)
            else:
                print(f"| {mode} | {layout} | {r['gb']:.2f} | {r['gb_s']:.2f} | {r['sys_s']:.2f} / {r['user_s']:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
