"""GPU benchmark (for a machine with CUDA): a Llama-shaped fp16 model several times larger
than the GPU budget, litcore beside accelerate (device_map offload) and PyTorch-LIT 0.1.7,
with the ratio to the floor = bytes streamed per forward / measured host-to-device bandwidth.

    python benchmarks/gpu_bench.py --size 7b --gpu-budget 4GiB
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

SIZES = {
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32),
}


def h2d_bandwidth() -> float:
    host = torch.empty(1 << 30, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty_like(host, device="cuda")
    dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(5):
        dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    return 5 * host.numel() / (time.perf_counter() - t0)


def run_system(system: str, model_dir: str, gpu_budget: str, pl_dir: str, pl_path, tokens: int) -> dict:
    code = f"""
import json, time, torch
from transformers import AutoConfig, LlamaForCausalLM
system, model_dir = {system!r}, {model_dir!r}
ids = torch.randint(3, 32000, (1, 32), generator=torch.Generator().manual_seed(0)).cuda()
t0 = time.perf_counter()
if system == "litcore":
    import litcore
    import litcore.budget
    model = litcore.from_pretrained(model_dir, device="cuda", gpu_memory_budget={gpu_budget!r}, progress=False).module
elif system == "accelerate":
    budget = {gpu_budget!r}.replace("GiB", "GB")
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float16, device_map="auto",
                                             max_memory={{0: budget, "cpu": "200GB"}}).eval()
else:
    from pytorch_lit import LitModule
    config = AutoConfig.from_pretrained(model_dir)
    torch.set_default_dtype(torch.float16)
    lit = LitModule.from_params({pl_dir!r}, lambda: LlamaForCausalLM(config).eval(), device="cuda")
    model = lit.module
ready = time.perf_counter() - t0
times = []
with torch.no_grad():
    for _ in range(3):
        torch.cuda.synchronize(); t0 = time.perf_counter(); model(ids); torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    out = model.generate(ids[:, :8], max_new_tokens={tokens}, min_new_tokens={tokens}, do_sample=False, pad_token_id=0)
    gen = time.perf_counter() - t0
print("RESULT " + json.dumps({{"ready_s": ready, "forward_s": min(times[1:]), "s_per_token": gen / {tokens}}}))
"""
    env = dict(os.environ)
    if system == "pytorch-lit":
        env["PYTHONPATH"] = pl_path or ""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    line = next((l for l in r.stdout.splitlines() if l.startswith("RESULT ")), None)
    return json.loads(line[7:]) if line else {"error": (r.stderr.strip().splitlines() or ["failed"])[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="7b", choices=list(SIZES))
    parser.add_argument("--gpu-budget", default="4GiB")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--cache", default=".cache/gpu-bench")
    parser.add_argument("--systems", default="litcore,accelerate,pytorch-lit")
    args = parser.parse_args()
    from litcore import synthetic
    import litcore
    import litcore.budget

    model_dir = os.path.join(args.cache, f"llama-{args.size}-fp16")
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        synthetic.make_model_dir(model_dir, synthetic.llama_config("tiny", **SIZES[args.size], vocab_size=32000),
                                 dtype=torch.float16)
    lit = litcore.from_pretrained(model_dir, progress=False)
    gpu_budget = litcore.budget.resolve_budget(args.gpu_budget)
    streamed = max(lit.plan.total_bytes - gpu_budget, 0)
    del lit
    bandwidth = h2d_bandwidth()
    floor = streamed / bandwidth
    print(f"model {lit_size(model_dir):.1f} GB fp16, GPU budget {args.gpu_budget}, H2D {bandwidth / 1e9:.1f} GB/s, "
          f"floor ≈ {floor:.3f} s per forward ({streamed / 1e9:.1f} GB streamed)")
    pl_dir = os.path.join(model_dir, "pytorch-lit-fp16")
    pl_path = None
    if "pytorch-lit" in args.systems:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from run import export_pytorch_lit, pytorch_lit_path

        pl_path = pytorch_lit_path(args.cache)
        if pl_path:
            export_pytorch_lit({"model_dir": model_dir, "pytorch_lit_dir": pl_dir}, pl_path)
    print("| system | ready (s) | forward (s) | s/token | forward / floor |\n|---|---|---|---|---|")
    for system in args.systems.split(","):
        r = run_system(system, model_dir, args.gpu_budget, pl_dir, pl_path, args.tokens)
        if "error" in r:
            print(f"| {system} | {r['error']} | | | |")
        else:
            print(f"| {system} | {r['ready_s']:.2f} | {r['forward_s']:.3f} | {r['s_per_token']:.3f} | "
                  f"{r['forward_s'] / floor if floor else float('nan'):.2f}x |")


def lit_size(model_dir: str) -> float:
    return os.path.getsize(os.path.join(model_dir, "model.safetensors")) / 1e9


if __name__ == "__main__":
    main()
