"""The peer benchmark: litcore beside the model fully in memory, transformers' mmap model,
accelerate's disk offload and PyTorch-LIT 0.1.7, each in its own process inside a cgroup v1
memory limit that counts page cache, with the weight files evicted from page cache first.

    python benchmarks/run.py                         # 1.1B Llama-shaped bf16 model, limits none/2400/1200 MB
    python benchmarks/run.py --model small --limits none,600
    python benchmarks/run.py --model moe --limits none,800 --prompt-tokens 1   # Mixtral-shaped, 1.58 GB
    python benchmarks/run.py --model tiny --systems litcore,in-memory --no-docs   # smoke test
    python benchmarks/run.py --baseline build/baseline-site --systems litcore,litcore-baseline --limits 2400,1200

--baseline DIR adds the system "litcore-baseline": another litcore build (installed with
`pip install --target DIR`, e.g. an older commit) run by the same worker beside this one.
The system "litcore-lazy" is litcore with verify="lazy" (what lazy checksums cost);
"litcore-direct" is litcore with read_mode="direct" (streamed weights read past the page cache);
"litcore-buffer" with read_mode="buffer" (read past it into the window's own memory);
"litcore-cli-order" runs a file made by `litcore convert model.safetensors` (tensors in
name order: within a layer the MLP before the attention) instead of the model's order.

Writes a table to stdout, results.json and chart.png under --out, and docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import cgroup  # noqa: E402
import report  # noqa: E402

SYSTEMS = ["in-memory", "transformers-mmap", "accelerate", "pytorch-lit", "litcore", "litcore-cli-order",
           "litcore-lazy", "litcore-direct", "litcore-buffer", "litcore-baseline"]
PYTORCH_LIT_VERSION = "0.1.7"
# Kernels limited to AVX2 (oneDNN's matmuls and ATen's own): on a CPU with fast bf16 this is
# the compute of one without it, where a prefill hides the read path.
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def parse_limit(text: str) -> Optional[int]:
    return None if text in ("none", "0", "") else int(float(text) * 10**6)


def family(model: str) -> str:
    """The architecture a --model name stands for: "moe" is Mixtral-shaped, the rest Llama."""
    return "Mixtral" if model == "moe" else "Llama"


def prepare(model: str, cache: str, cli_order: bool = False) -> Dict[str, str]:
    """The model directory (seeded bf16 weights), its litcore file and PyTorch-LIT's export."""
    import litcore
    from litcore import synthetic

    model_dir = os.path.join(cache, f"{family(model).lower()}-{model}")
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        print(f"generating the {model} model in {model_dir} ...", flush=True)
        config = synthetic.mixtral_config(model) if family(model) == "Mixtral" else synthetic.llama_config(model)
        synthetic.make_model_dir(model_dir, config)
    lit = os.path.join(model_dir, "model.lit")
    if not os.path.exists(lit):
        from litcore.hf import convert_pretrained

        convert_pretrained(model_dir, lit, progress=False)  # in the model's order
    cli_order_lit = os.path.join(model_dir, "model.cli-order.lit")
    if cli_order and not os.path.exists(cli_order_lit):
        with open(os.path.join(model_dir, "config.json")) as f:  # the CLI's path, plus the config the worker needs
            litcore.convert(os.path.join(model_dir, "model.safetensors"), cli_order_lit, progress=False,
                            metadata={"transformers.config": f.read()})
    return {"model_dir": model_dir, "lit": lit, "cli_order_lit": cli_order_lit,
            "pytorch_lit_dir": os.path.join(model_dir, "pytorch-lit-fp16"),
            "offload": os.path.join(model_dir, "accelerate-offload")}


def pytorch_lit_path(cache: str) -> Optional[str]:
    """The original PyTorch-LIT, installed beside (never into) the environment: its package
    name is the one litcore's compatibility layer uses."""
    target = os.path.join(cache, "pytorch-lit")
    if not os.path.exists(os.path.join(target, "pytorch_lit", "inference.py")):
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target,
                            f"pytorch-lit=={PYTORCH_LIT_VERSION}"], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"PyTorch-LIT {PYTORCH_LIT_VERSION} could not be installed: {r.stderr.strip()[-300:]}")
            return None
    return target


def export_pytorch_lit(paths: Dict[str, str], pl_path: str) -> None:
    if os.path.exists(os.path.join(paths["pytorch_lit_dir"], "meta.json")):
        return
    code = (f"import torch; from safetensors.torch import load_file; from pytorch_lit.export import prepare_params; "
            f"sd = {{k: v.half() if v.is_floating_point() else v for k, v in load_file({os.path.join(paths['model_dir'], 'model.safetensors')!r}).items()}}; "
            f"prepare_params(sd, {paths['pytorch_lit_dir']!r}, dtype='float16', progress=False)")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=pl_path))


def run_one(system: str, limit: Optional[int], paths: Dict[str, str], out_dir: str, pl_path: Optional[str],
            steady: int, new_tokens: int, budget: str = "auto", baseline: Optional[str] = None,
            prompt_tokens: int = 32, read_mode: Optional[str] = None, timeout: float = 600,
            paired_floor: bool = False) -> Dict:
    logits = os.path.join(out_dir, f"logits-{system}-{limit or 'none'}.pt")
    worker_system = "litcore" if system.startswith("litcore") else system
    lit = paths["cli_order_lit"] if system == "litcore-cli-order" else paths["lit"]
    cmd = [sys.executable, os.path.join(HERE, "worker.py"), "--system", worker_system, "--model-dir", paths["model_dir"],
           "--lit", lit, "--pytorch-lit-dir", paths["pytorch_lit_dir"], "--offload", paths["offload"],
           "--steady", str(steady), "--new-tokens", str(new_tokens), "--logits-out", logits, "--budget", budget,
           "--prompt-tokens", str(prompt_tokens)]
    if system == "litcore-lazy":  # what checksums cost: the same litcore with verify="lazy"
        cmd += ["--verify", "lazy"]
    if read_mode and system in ("litcore", "litcore-cli-order", "litcore-lazy"):
        cmd += ["--read-mode", read_mode]
    if system in ("litcore-direct", "litcore-buffer"):
        cmd += ["--read-mode", system.split("-")[1]]
    if paired_floor:
        cmd += ["--paired-floor"]
    env = dict(os.environ)
    if system == "pytorch-lit":
        env["PYTHONPATH"] = pl_path
    if system == "litcore-baseline":  # a --target install lies outside torch's tree: its RPATH misses torch/lib
        env["PYTHONPATH"] = baseline
        env["LD_LIBRARY_PATH"] = os.path.join(os.path.dirname(torch.__file__), "lib")
    cgroup.evict([paths["model_dir"]])
    outcome = cgroup.run(cmd, limit, env=env, timeout=timeout)
    row = {"system": system, "limit_mb": limit // 10**6 if limit else None, "peak_mb": outcome.peak_bytes / 10**6,
           "peak_source": outcome.peak_source, "oom_killed": outcome.oom_killed, "returncode": outcome.returncode}
    line = next((l for l in outcome.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line:
        row.update(json.loads(line[len("RESULT "):]))
        row["logits"] = logits
    else:
        if outcome.oom_killed:
            row["error"] = "killed (out of memory)"
        elif outcome.timed_out:  # e.g. a model just over its limit, thrashing the page cache instead of being killed
            row["error"] = f"stopped after {timeout:.0f} s (--row-timeout)"
        else:
            row["error"] = (outcome.stderr.strip().splitlines() or ["failed"])[-1][-200:]
    return row


def disk_bandwidth(paths: Dict[str, str], nbytes: int, limit: Optional[int], probes: int = 2,
                   fill: bool = False) -> List[float]:
    """The weight file's read speed the way litcore streams it (or, with fill, the speed it
    fills the page cache from a cold start), in the same memory limit, next to a litcore run
    (the shared disk drifts over minutes): bytes/s, one per probe."""
    speeds = []
    how = ["--fill"] if fill else [str(nbytes)]
    for _ in range(probes):
        cgroup.evict([paths["lit"]])
        outcome = cgroup.run([sys.executable, os.path.join(HERE, "disk_probe.py"), paths["lit"]] + how, limit)
        line = next((l for l in outcome.stdout.splitlines() if l.startswith("BANDWIDTH ")), None)
        if line is None:
            print(f"disk probe failed: {outcome.stderr.strip()[-300:]}")
            return []
        speeds.append(float(line.split()[1]))
    return speeds


def compare_exactness(rows: List[Dict]) -> None:
    reference = next((r for r in rows if r["system"] == "in-memory" and "logits" in r), None)
    ref = torch.load(reference["logits"]) if reference else None
    for r in rows:
        if "logits" not in r or ref is None:
            r["bit_exact"] = None
        elif r["system"] == "pytorch-lit":
            r["bit_exact"] = None  # fp16 weights: not the same model
        else:
            r["bit_exact"] = bool(torch.equal(torch.load(r["logits"]), ref)) and r["tokens"] == reference["tokens"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="1b", choices=["tiny", "small", "1b", "moe"],
                        help="Llama-shaped, but moe: Mixtral-shaped, 8 experts a layer, 2 chosen per token")
    parser.add_argument("--limits", default="none,2400,1200", help="MB (10^6 bytes), comma-separated; 'none' = no limit")
    parser.add_argument("--systems", default=",".join(s for s in SYSTEMS if s not in ("litcore-baseline",
                                                                                      "litcore-lazy", "litcore-direct",
                                                                                      "litcore-buffer")))
    parser.add_argument("--steady", type=int, default=5,
                        help="forwards timed after the first; their median is reported (of 5, a forward after a "
                             "change of plan, such as the auto budget's first step, is not the middle one)")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=32,
                        help="tokens per timed forward; 1 makes compute cheap, so a read-path regression shows "
                             "even on a CPU where a prefill is compute-bound")
    parser.add_argument("--cpu-isa", choices=["native", "avx2"], default="native",
                        help="avx2: every system computes with AVX2 kernels only, as on a CPU without AVX-512 bf16 "
                             "(the compute-bound regime, measurable on a CPU that has it)")
    parser.add_argument("--litcore-budget", default="auto", help="litcore's memory_budget (default: auto)")
    parser.add_argument("--litcore-read-mode", help="litcore's read_mode (default: litcore's default)")
    parser.add_argument("--baseline", help="a litcore build installed with pip --target: the system litcore-baseline")
    parser.add_argument("--row-timeout", type=float, default=600,
                        help="seconds one system may run in one limit before it is stopped and reported so "
                             "(a model just over its limit can thrash the page cache for many minutes)")
    parser.add_argument("--cache", default=".cache/bench")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--docs", default="docs/benchmarks.md")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()

    systems = args.systems.split(",")
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    if "litcore-baseline" in systems and not args.baseline:
        parser.error("the system litcore-baseline needs --baseline DIR")
    os.makedirs(args.out, exist_ok=True)
    if args.cpu_isa == "avx2":
        os.environ.update(AVX2_ONLY)  # every child inherits it
    if not cgroup.available():
        print("NOTE: memory cgroups cannot be created here: limits are not applied, peak memory is the child's RSS.")
    paths = prepare(args.model, args.cache, cli_order="litcore-cli-order" in systems)
    pl_path = pytorch_lit_path(args.cache) if "pytorch-lit" in systems else None
    if "pytorch-lit" in systems and pl_path is None:
        systems.remove("pytorch-lit")
    if pl_path:
        export_pytorch_lit(paths, pl_path)
    if "in-memory" in systems:  # the reference runs first in every limit
        systems = ["in-memory"] + [s for s in systems if s != "in-memory"]

    rows: List[Dict] = []
    started = time.time()
    for limit_text in args.limits.split(","):
        limit = parse_limit(limit_text)
        for system in systems:
            before: List[float] = []
            if system.startswith("litcore") and limit:
                # The floor's disk speed is measured just before and just after the run, so that a
                # drift during it moves both. Before, the row's streamed bytes are not known yet:
                # the probe reads what the limit leaves no room for (at least a quarter of the file).
                file_bytes = os.path.getsize(paths["lit"])
                before = disk_bandwidth(paths, max(file_bytes - limit, file_bytes // 4), limit, probes=1)
            row = run_one(system, limit, paths, args.out, pl_path, args.steady, args.new_tokens, args.litcore_budget,
                          args.baseline, args.prompt_tokens, args.litcore_read_mode, args.row_timeout,
                          paired_floor=system.startswith("litcore") and bool(limit))
            forward_bytes = report.io_bytes(row)[0]
            if system.startswith("litcore") and limit and forward_bytes:
                after = disk_bandwidth(paths, forward_bytes, limit, probes=1)
                row["disk_bytes_per_s"] = before + after  # a failed probe leaves the other
            elif system.startswith("litcore") and not limit and "error" not in row:
                # The cold start's floors: the whole file at the disk's speed, and at the speed
                # it fills fresh page cache (what a cold start must do).
                row["file_bytes"] = os.path.getsize(paths["lit"])
                row["disk_bytes_per_s"] = disk_bandwidth(paths, row["file_bytes"], None)
                row["fill_bytes_per_s"] = disk_bandwidth(paths, row["file_bytes"], None, fill=True)
            rows.append(row)
            print(report.one_line(row), flush=True)
    compare_exactness(rows)
    meta = {"model": args.model, "family": family(args.model),
            "weights_bytes": os.path.getsize(os.path.join(paths["model_dir"], "model.safetensors")),
            "command": "python benchmarks/run.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d %H:%M"),
            "seconds": time.time() - started, "cpu": report.cpu_name(), "cpu_flags": report.cpu_flags(),
            "prompt_tokens": args.prompt_tokens, "cgroups": cgroup.available(), "cpu_isa": args.cpu_isa}
    for r in rows:
        r.pop("tokens", None)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    table = report.table(rows, meta)
    floors = report.floor_table(rows)
    if floors:
        table += "\n\n" + floors
    paired = report.paired_table(rows)
    if paired:
        table += "\n\n" + paired
    print("\n" + table)
    report.chart(rows, meta, os.path.join(args.out, "chart.png"))
    if not args.no_docs:
        report.write_docs(args.docs, table, meta)
    print(f"\nwrote {os.path.join(args.out, 'results.json')} and chart.png" + ("" if args.no_docs else f", {args.docs}"))


if __name__ == "__main__":
    main()
