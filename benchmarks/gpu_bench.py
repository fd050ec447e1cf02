"""GPU benchmark (for a machine with CUDA): a Llama-shaped fp16 model several times larger
than the GPU budget, litcore beside accelerate (device_map offload: what does not fit the
GPU stays in CPU memory and is copied in per module) and PyTorch-LIT 0.1.7, with the whole
model on the GPU as the reference for time and bit-exactness. The floor per forward is the
bytes litcore streams to the GPU divided by the measured pinned host-to-device bandwidth.

    python benchmarks/gpu_bench.py --size 7b --gpu-budget 4GiB
    python benchmarks/gpu_bench.py --size 1b --gpu-budget 512MiB --json out.json

Each system runs in its own process; the table goes to stdout (and --markdown), figures to --json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import export_pytorch_lit, pytorch_lit_path  # noqa: E402

SYSTEMS = ["gpu-resident", "litcore", "accelerate", "pytorch-lit"]
SIZES = ["1b", "7b"]  # litcore.synthetic.LLAMA_SIZES

# Runs one system in a fresh process; prints one RESULT line. Timings exclude imports.
WORKER = r"""
import json, os, sys, time, torch
from transformers import AutoConfig, LlamaForCausalLM
system, model_dir, pl_dir, budget, tokens, logits_out = sys.argv[1:7]
tokens = int(tokens)
extra = {}
if system == "litcore":
    import litcore
elif system == "pytorch-lit":
    from pytorch_lit import LitModule  # the original, from PYTHONPATH
ids = torch.randint(3, 32000, (1, 32), generator=torch.Generator().manual_seed(0)).cuda()
torch.cuda.synchronize()
t0 = time.perf_counter()
if system == "gpu-resident":
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float16, device_map="cuda").eval()
elif system == "litcore":
    model = litcore.from_pretrained(os.path.join(model_dir, "model.lit"), device="cuda", gpu_memory_budget=budget,
                                    progress=False)
elif system == "accelerate":
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float16, device_map="auto",
                                             max_memory={0: budget, "cpu": "200GiB"}).eval()
else:
    config = AutoConfig.from_pretrained(model_dir)
    torch.set_default_dtype(torch.float16)  # PyTorch-LIT builds the model itself: fp16 like its file
    model = LitModule.from_params(pl_dir, lambda: LlamaForCausalLM(config).eval(), device="cuda")
    torch.set_default_dtype(torch.float32)
torch.cuda.synchronize()
ready = time.perf_counter() - t0
times = []
with torch.no_grad():
    for i in range(3):
        torch.cuda.synchronize(); t0 = time.perf_counter()
        logits = model(ids).logits
        torch.cuda.synchronize(); times.append(time.perf_counter() - t0)
        if i == 0:
            torch.save(logits.float().cpu(), logits_out)
    generate = model.module.generate if system == "pytorch-lit" else model.generate
    torch.cuda.synchronize(); t0 = time.perf_counter()
    out = generate(ids[:, :8], max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
    torch.cuda.synchronize(); gen = time.perf_counter() - t0
if system == "litcore":
    last = model.stats()["last"]
    extra = {"gpu_bytes_copied": last["gpu_bytes_copied"], "gpu_prefetch_hits": last["gpu_prefetch_hits"],
             "gpu_prefetch_misses": last["gpu_prefetch_misses"], "gpu_mispredicts": last["gpu_mispredicts"], "bytes_read": last["bytes_read"],
             "gpu_resident_bytes": model.plan.resident_bytes,
             "host_resident_bytes": model.stats().get("host_resident_bytes", 0)}
print("RESULT " + json.dumps(dict(ready_s=ready, first_s=times[0], forward_s=min(times[1:]), s_per_token=gen / tokens,
                                  peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20,
                                  tokens=out[0, 8:].tolist(), **extra)))
"""


def pinned_h2d_bandwidth() -> float:
    """Bytes per second from pinned host memory to the device (1 GiB copies, after a warm-up)."""
    host = torch.empty(1 << 30, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty_like(host, device="cuda")
    dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    return 5 * host.numel() / (time.perf_counter() - t0)


def prepare(size: str, layers: Optional[int], cache: str, want_pytorch_lit: bool) -> Dict[str, str]:
    """The fp16 model directory (weights drawn on the GPU), its litcore file and PyTorch-LIT's export."""
    from litcore import synthetic

    config = synthetic.llama_config(size, **({"num_hidden_layers": layers} if layers else {}))
    model_dir = os.path.join(cache, f"llama-{size}-{config.num_hidden_layers}l-fp16")
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        t0 = time.perf_counter()
        synthetic.make_model_dir(model_dir, config, dtype=torch.float16, device="cuda")
        print(f"made {model_dir} in {time.perf_counter() - t0:.0f} s", flush=True)
    if not os.path.exists(os.path.join(model_dir, "model.lit")):
        from litcore.hf import convert_pretrained

        convert_pretrained(model_dir, os.path.join(model_dir, "model.lit"), progress=False)
    paths = {"model_dir": model_dir, "pytorch_lit_dir": os.path.join(model_dir, "pytorch-lit-fp16"), "pl_path": ""}
    if want_pytorch_lit:
        pl = pytorch_lit_path(cache)
        if pl:
            export_pytorch_lit(paths, pl)
            paths["pl_path"] = pl
    return paths


def run_system(system: str, paths: Dict[str, str], budget: str, tokens: int, logits: str, timeout: int) -> Dict:
    env = dict(os.environ)
    if system == "pytorch-lit":
        if not paths["pl_path"]:
            return {"error": "PyTorch-LIT not installed"}
        env["PYTHONPATH"] = paths["pl_path"]
    cmd = [sys.executable, "-c", WORKER, system, paths["model_dir"], paths["pytorch_lit_dir"], budget, str(tokens), logits]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    line = next((l for l in r.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(line[len("RESULT "):])


def table(rows: List[Dict], floor: float) -> str:
    lines = ["| system | ready (s) | first forward (s) | steady forward (s) | s / token | peak GPU (MiB) | bit-exact | forward / floor |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['system']} | {r['error']} | | | | | | |")
            continue
        ratio = f"{r['forward_s'] / floor:.2f}x" if floor and r["system"] != "gpu-resident" else "—"
        lines.append(f"| {r['system']} | {r['ready_s']:.2f} | {r['first_s']:.3f} | {r['forward_s']:.3f} | "
                     f"{r['s_per_token']:.3f} | {r['peak_gpu_mb']:.0f} | {r['bit_exact']} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="7b", choices=SIZES)
    parser.add_argument("--layers", type=int, help="decoder layers (default: the size's own)")
    parser.add_argument("--gpu-budget", default="4GiB")
    parser.add_argument("--tokens", type=int, default=8, help="new tokens to generate")
    parser.add_argument("--cache", default=".cache/bench")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--timeout", type=int, default=300, help="seconds per system")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--markdown", help="write the table here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_bench: needs a CUDA device")
    systems = args.systems.split(",")
    paths = prepare(args.size, args.layers, args.cache, "pytorch-lit" in systems)
    model_bytes = os.path.getsize(os.path.join(paths["model_dir"], "model.safetensors"))
    bandwidth = pinned_h2d_bandwidth()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for system in systems:
            logits = os.path.join(tmp, f"{system}.pt")
            row = {"system": system, **run_system(system, paths, args.gpu_budget, args.tokens, logits, args.timeout)}
            rows.append(row)
            print(f"{system}: {json.dumps({k: v for k, v in row.items() if k != 'tokens'})}", flush=True)
        ref = next((r for r in rows if r["system"] == "gpu-resident" and "error" not in r), None)
        want = torch.load(os.path.join(tmp, "gpu-resident.pt")) if ref else None
        for r in rows:
            if "error" in r:
                continue
            if want is None:
                r["bit_exact"] = "n/a"
            else:
                got = torch.load(os.path.join(tmp, f"{r['system']}.pt"))
                same = torch.equal(got, want) and r["tokens"] == ref["tokens"]
                r["bit_exact"] = "yes" if same else f"no (max diff {(got - want).abs().max().item():.2g})"
    lit = next((r for r in rows if r["system"] == "litcore" and "error" not in r), None)
    streamed = lit["gpu_bytes_copied"] if lit else 0
    floor = streamed / bandwidth
    head = (f"Llama-shaped {args.size} ({paths['model_dir']}), fp16, {model_bytes / 1e9:.1f} GB; GPU budget "
            f"{args.gpu_budget}; {torch.cuda.get_device_name()}; pinned host-to-device {bandwidth / 1e9:.1f} GB/s; "
            f"litcore streams {streamed / 1e9:.2f} GB per forward: floor {floor:.3f} s per forward and per token")
    text = head + "\n\n" + table(rows, floor)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": args.size, "layers": args.layers, "gpu_budget": args.gpu_budget, "model_bytes": model_bytes,
                       "h2d_bytes_per_s": bandwidth, "floor_s": floor, "device": torch.cuda.get_device_name(),
                       "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
