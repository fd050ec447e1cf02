"""Tables, charts and docs/benchmarks.md from benchmark rows."""
from __future__ import annotations

import os
import re
import statistics
from typing import Dict, List, Optional, Tuple


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


def cpu_flags() -> str:
    """The CPU features that decide whether a bf16 prefill is compute-bound: with AVX-512
    bf16 / AMX a 32-token prefill of the 1.1B model computes in ~0.2 s, without in ~3.3 s."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    found = [f for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f in flags]
    return " ".join(found) if found else "none of avx2/avx512/bf16"


def _fmt(value: Optional[float], spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def _ratio(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.2f}x"


# A forward whose reader reads this share of it or more waits on the disk (measured on the
# 1.1B model under 1200 MB: IO-bound forwards 84-93%; computing with AVX2 kernels only, 1.75 s
# per forward, 24%).
READER_BUSY_IO_BOUND = 0.75


def _reader(r: Dict, phase: str) -> str:
    """litcore's reader in a phase: the speed its reads ran at and the share of the time it read."""
    speed, busy = r.get(f"{phase}_reader_bytes_per_s"), r.get(f"{phase}_reader_busy")
    return "—" if speed is None or busy is None else f"{speed / 1e9:.2f}, {busy:.0%}"


def one_line(r: Dict) -> str:
    limit = f"{r['limit_mb']} MB" if r["limit_mb"] else "none"
    if "error" in r:
        return f"{r['system']:>18} | limit {limit:>8} | {r['error']} | peak {r['peak_mb']:.0f} MB"
    return (f"{r['system']:>18} | limit {limit:>8} | ready {r['ready_s']:.2f} s | first {r['first_forward_s']:.2f} s | "
            f"steady {r['steady_forward_s']:.2f} s | {r['generate_tok_s']:.2f} tok/s | peak {r['peak_mb']:.0f} MB")


def table(rows: List[Dict], meta: Dict) -> str:
    head = ("| system | limit | ready (s) | first forward (s) | steady forward (s) | generate (tok/s) | peak memory (MB) "
            "| bit-exact | vs transformers mmap |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        limit = f"{r['limit_mb']} MB" if r["limit_mb"] else "none"
        peer = next((p for p in rows if p["system"] == "transformers-mmap" and p["limit_mb"] == r["limit_mb"]
                     and "error" not in p), None)
        if "error" in r:
            lines.append(f"| {r['system']} | {limit} | {r['error']} | — | — | — | {r['peak_mb']:.0f} | — | — |")
            continue
        ratio = "—"
        if peer and r["system"] != "transformers-mmap":
            ratio = f"{peer['steady_forward_s'] / r['steady_forward_s']:.2f}x faster"
        exact = {True: "yes", False: "NO", None: "n/a"}[r.get("bit_exact")]
        if r["system"] == "pytorch-lit":
            exact = "n/a (fp16)"
        lines.append(f"| {r['system']} | {limit} | {r['ready_s']:.2f} | {r['first_forward_s']:.2f} | "
                     f"{r['steady_forward_s']:.2f} | {r['generate_tok_s']:.2f} | {r['peak_mb']:.0f} | {exact} | {ratio} |")
    return "\n".join(lines)


def io_bytes(r: Dict) -> Tuple[int, int]:
    """What a litcore row reads from the file per steady forward and per generated token: the
    plan's streamed bytes, or where experts stream by routing (a prompt reads more of them
    than a token) what its forwards and its last token read."""
    if r.get("routed_bytes"):
        return int(r.get("steady_bytes_read", 0)), int(r.get("last_token_bytes_read", 0))
    streamed = int(r.get("streamed_bytes_per_forward") or 0)
    return streamed, streamed


def floor_table(rows: List[Dict]) -> str:
    """litcore under each limit against its floor: max(compute, streamed bytes / the disk's
    speed, the mean of a probe just before it ran and one just after); compute is the
    in-memory model's time, unlimited. And
    litcore's cold start without a limit against the file's bytes at the disk's speed plus
    compute, and at the speed the file fills fresh page cache plus compute."""
    ref = next((r for r in rows if r["system"] == "in-memory" and not r["limit_mb"] and "error" not in r), None)
    compute_forward = ref["steady_forward_s"] if ref else 0.0
    compute_token = 1 / ref["generate_tok_s"] if ref else 0.0
    lines = ["| system | limit | regime | read per forward (GB) | disk, measured before / after (GB/s) | "
             "floor forward (s) | forward (s) | ratio | litcore's reader: speed (GB/s), busy | floor (tok/s) | "
             "tok/s | ratio | reader in generate |", "|" + "---|" * 13]
    cold = ["| system | file (GB) | disk, measured after (GB/s) | fill, measured after (GB/s) | "
            "floor: file / disk + compute (s) | floor: file / fill + compute (s) | ready + first forward (s) | "
            "ratio (disk) | ratio (fill) |", "|" + "---|" * 9]
    for r in rows:
        if not r["system"].startswith("litcore") or "error" in r:
            continue
        speeds = r.get("disk_bytes_per_s") or []
        bandwidth = sum(speeds) / len(speeds) if speeds else 0.0
        shown = " / ".join(f"{v / 1e9:.2f}" for v in speeds) or "—"
        if not r.get("limit_mb"):
            if r.get("file_bytes") and speeds:
                took = r["ready_s"] + r["first_forward_s"]
                floor = r["file_bytes"] / bandwidth + compute_forward
                fills = r.get("fill_bytes_per_s") or []
                fill_floor = r["file_bytes"] / (sum(fills) / len(fills)) + compute_forward if fills else None
                cold.append(f"| {r['system']} | {r['file_bytes'] / 1e9:.2f} | {shown} | "
                            f"{' / '.join(f'{v / 1e9:.2f}' for v in fills) or '—'} | {floor:.2f} | "
                            f"{_fmt(fill_floor)} | {took:.2f} | {_ratio(took / floor)} | "
                            f"{_ratio(None if fill_floor is None else took / fill_floor)} |")
            continue
        forward_bytes, token_bytes = io_bytes(r)
        if forward_bytes and not speeds:
            continue  # the probe failed: no floor to show
        io = forward_bytes / bandwidth if speeds else 0.0
        # Without the in-memory row, a row with nothing streamed has no floor to show.
        floor_forward = max(compute_forward, io) or None
        token_seconds = max(compute_token, token_bytes / bandwidth if speeds else 0.0)
        floor_tok_s = 1 / token_seconds if token_seconds > 0 else None
        busy = r.get("steady_reader_busy")
        if ref is not None:
            regime = "all resident" if io == 0 else "IO-bound" if io > compute_forward else "compute-bound"
        elif busy is not None and io > 0:
            # No compute to compare with: the reader's share of the forward says it instead.
            regime = f"{'IO' if busy >= READER_BUSY_IO_BOUND else 'compute'}-bound (reader)"
        else:
            regime = "—"
        forward_ratio = r["steady_forward_s"] / floor_forward if floor_forward else None
        token_ratio = floor_tok_s / r["generate_tok_s"] if floor_tok_s else None
        lines.append(f"| {r['system']} | {r['limit_mb']} MB | {regime} | {forward_bytes / 1e9:.2f} | "
                     f"{shown} | {_fmt(floor_forward)} | {r['steady_forward_s']:.2f} | {_ratio(forward_ratio)} | "
                     f"{_reader(r, 'steady')} | {_fmt(floor_tok_s)} | {r['generate_tok_s']:.2f} | "
                     f"{_ratio(token_ratio)} | {_reader(r, 'generate')} |")
    out = "\n".join(lines) if len(lines) > 2 else ""
    if len(cold) > 2:
        out += ("\n\nCold start, no limit (weights evicted from the page cache first; compute = the in-memory "
                "model's steady forward; fill = the whole file read into fresh page cache and kept, two "
                "readers, readahead off, `disk_probe.py --fill`):\n\n" + "\n".join(cold))
    return out


def _span(values: List[float], spec: str = ".2f") -> str:
    """The median and, where they differ, the range: `0.61 (0.58-0.66)`."""
    values = sorted(values)
    mid = statistics.median(values)
    if values[0] == values[-1]:
        return format(mid, spec)
    return f"{mid:{spec}} ({values[0]:{spec}}-{values[-1]:{spec}})"


def paired_table(rows: List[Dict]) -> str:
    """litcore under each limit against a floor read beside it: each timed forward against the
    byte ranges its plan streams, read the floor probe's way right after it (worker.py's
    paired_probe); generation against such reads just before and just after it. A virtual
    machine's disk can move by a third between two probes a minute apart (floor_table's
    probes run before and after the whole row): paired, a ratio shows litcore's reads, not
    that drift."""
    ref = next((r for r in rows if r["system"] == "in-memory" and not r["limit_mb"] and "error" not in r), None)
    compute_forward = ref["steady_forward_s"] if ref else 0.0
    compute_token = 1 / ref["generate_tok_s"] if ref else 0.0
    lines = ["| system | limit | forward (s) | probe right after (s) | forward / floor | probes around generate (GB/s) "
             "| floor (tok/s) | tok/s | ratio |", "|" + "---|" * 9]
    for r in rows:
        paired = r.get("paired_forwards") or []
        paired = [p for p in paired if p[2] > 0]
        if "error" in r or not paired:
            continue
        ratios = [forward / max(seconds, compute_forward) for forward, _, seconds in paired]
        speeds = r.get("generate_probe_bytes_per_s") or []
        token_bytes = io_bytes(r)[1]
        floor_tok_s = None
        if speeds:
            token_seconds = max(compute_token, token_bytes / (sum(speeds) / len(speeds)))
            floor_tok_s = 1 / token_seconds if token_seconds > 0 else None
        lines.append(f"| {r['system']} | {r['limit_mb']} MB | {_span([p[0] for p in paired])} | "
                     f"{_span([p[2] for p in paired])} | {_span(ratios)}x | "
                     f"{' / '.join(f'{v / 1e9:.2f}' for v in speeds) or '—'} | {_fmt(floor_tok_s)} | "
                     f"{r['generate_tok_s']:.2f} | {_ratio(floor_tok_s / r['generate_tok_s'] if floor_tok_s else None)} |")
    if len(lines) == 2:
        return ""
    return ("Paired with the floor (each timed forward, then the ranges its plan streams read the floor "
            "probe's way, in file order, by a process in a cgroup of its own; median and range of the "
            "forwards; floor = max(that read, the in-memory model's forward)):\n\n" + "\n".join(lines))


def chart(rows: List[Dict], meta: Dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    limits = sorted({r["limit_mb"] or 0 for r in rows}, reverse=True)
    systems = list(dict.fromkeys(r["system"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(systems), 1)
    for k, (key, title) in enumerate([("steady_forward_s", "steady forward (s, lower is better)"),
                                      ("generate_tok_s", "generate (tokens/s, higher is better)")]):
        ax = axes[k]
        for i, system in enumerate(systems):
            values = []
            for limit in limits:
                r = next((x for x in rows if x["system"] == system and (x["limit_mb"] or 0) == limit), None)
                values.append(r.get(key, 0) if r and "error" not in r else 0)
            ax.bar([j + i * width for j in range(len(limits))], values, width, label=system)
        ax.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(limits))])
        ax.set_xticklabels([f"{l} MB" if l else "no limit" for l in limits])
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{meta['model']} {meta.get('family', 'Llama')}-shaped model, "
                 f"{meta['weights_bytes'] / 1e9:.2f} GB bf16 — {meta['cpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_docs(path: str, table_md: str, meta: Dict) -> None:
    """Replaces the generated section of docs/benchmarks.md, keeping the hand-written rest."""
    section = (f"<!-- generated by benchmarks/run.py -->\n"
               f"Model: `{meta['model']}` {meta.get('family', 'Llama')}-shaped, "
               f"{meta['weights_bytes'] / 1e9:.2f} GB of bf16 weights. "
               f"Machine: {meta['cpu']} (CPU flags: {meta.get('cpu_flags', 'unknown')}"
               f"{'; kernels limited to AVX2' if meta.get('cpu_isa') == 'avx2' else ''}). "
               f"Forward: {meta.get('prompt_tokens', 32)} tokens. Date: {meta['date']}. Memory limits by cgroup v1: "
               f"{'yes' if meta['cgroups'] else 'no (peak = RSS)'}.\n\nCommand: `{meta['command']}`\n\n{table_md}\n"
               f"<!-- end generated -->")
    text = "# Benchmarks\n\n"
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    pattern = re.compile(r"<!-- generated by benchmarks/run.py -->.*?<!-- end generated -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    with open(path, "w") as f:
        f.write(text)
