"""One benchmark run: load a model with one system, time it, print one JSON line.

Run by benchmarks/run.py inside a memory cgroup; not meant to be run by hand (but can be).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Tuple

HERE = os.path.dirname(os.path.abspath(__file__))


def paired_probe(model, lit_path: str) -> Tuple[int, float]:
    """The floor beside a running litcore: the byte ranges its plan streams now, read in file
    order the floor probe's way by a process in a cgroup of its own (so the reads take
    nothing of this row's limit), right now. Returns (bytes, seconds); (0, 0.0) where
    nothing streams, experts stream by routing (a forward reads only the chosen ones), or an
    older build (a baseline) cannot say which modules its plan streams."""
    import cgroup  # beside this file
    import disk_probe

    plan = model.plan
    if not getattr(plan, "streamed_modules", None) or plan.routed_bytes:
        return 0, 0.0
    ranges = disk_probe.tensor_ranges(lit_path, set(plan.streamed_modules))
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(ranges, f)
        f.flush()
        outcome = cgroup.run([sys.executable, os.path.join(HERE, "disk_probe.py"), lit_path, "--ranges", f.name], None)
    line = next((l for l in outcome.stdout.splitlines() if l.startswith("SECONDS ")), None)
    if line is None:
        raise RuntimeError(f"paired disk probe failed: {outcome.stderr.strip()[-300:]}")
    return sum(length for _, length in ranges), float(line.split()[1])

def _clone_to_ram(model):
    import torch

    for m in model.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
    return model


def load(system: str, args):
    import torch

    if system == "litcore":
        import litcore

        # The LitModule itself, as users call it: it learns the execution order on the first
        # forward and keeps the per-forward figures (its bare .module runs on the first plan).
        # An older litcore (a baseline) may not know every option: pass them only when asked.
        options = {k: v for k, v in (("verify", args.verify), ("read_mode", args.read_mode)) if v}
        return litcore.from_pretrained(args.lit, memory_budget=args.budget or "auto", **options)
    from transformers import AutoConfig, AutoModelForCausalLM

    if system == "in-memory":
        return _clone_to_ram(AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.bfloat16).eval())
    if system == "transformers-mmap":
        return AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.bfloat16).eval()
    if system == "accelerate":
        return AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.bfloat16, device_map="auto",
                                                    max_memory={"cpu": args.accelerate_cpu},
                                                    offload_folder=args.offload).eval()
    if system == "pytorch-lit":
        from pytorch_lit import LitModule  # the original, from PYTHONPATH

        import transformers

        config = AutoConfig.from_pretrained(args.model_dir)
        model_class = getattr(transformers, config.architectures[0])  # built in the default dtype, not the config's
        torch.set_default_dtype(torch.float16)  # PyTorch-LIT has no bf16: its file is fp16
        lit = LitModule.from_params(args.pytorch_lit_dir, lambda: model_class(config).eval(), device="cpu")
        torch.set_default_dtype(torch.float32)
        return _PytorchLitModel(lit)
    raise ValueError(f"unknown system {system}")


class _PytorchLitModel:
    """PyTorch-LIT's LitModule with the two calls the benchmark makes."""

    def __init__(self, lit):
        self.lit = lit

    def __call__(self, *a, **k):
        return self.lit(*a, **k)

    def generate(self, *a, **k):
        import torch

        with torch.no_grad():
            return self.lit.module.generate(*a, **k)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--system", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--lit")
    parser.add_argument("--pytorch-lit-dir")
    parser.add_argument("--offload")
    parser.add_argument("--accelerate-cpu", default="600MiB")
    parser.add_argument("--budget")
    parser.add_argument("--verify", help="litcore's verify option (default: litcore's default)")
    parser.add_argument("--read-mode", help="litcore's read_mode option (default: litcore's default)")
    parser.add_argument("--steady", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=32, help="tokens per timed forward (the prefill)")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--logits-out")
    parser.add_argument("--paired-floor", action="store_true",
                        help="litcore: after each timed forward, and before and after generate, read what the "
                             "plan streams the way the floor probe does (benchmarks/disk_probe.py --ranges)")
    args = parser.parse_args()

    # Imports are excluded from "ready": load every module the systems use first.
    import importlib

    import torch
    from transformers import AutoModelForCausalLM  # noqa: F401

    with open(os.path.join(args.model_dir, "config.json")) as f:
        config = json.load(f)
    importlib.import_module(f"transformers.models.{config['model_type']}.modeling_{config['model_type']}")

    if args.system == "litcore":
        import litcore.hf  # noqa: F401
    if args.system == "accelerate":
        import accelerate  # noqa: F401
    if args.system == "pytorch-lit":
        import pytorch_lit  # noqa: F401
    vocab = config["vocab_size"]
    prefill = torch.randint(3, vocab, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    prompt = prefill[:, :8]

    t0 = time.perf_counter()
    model = load(args.system, args)
    ready = time.perf_counter() - t0
    with torch.inference_mode():
        t0 = time.perf_counter()
        logits = model(prefill).logits
        first = time.perf_counter() - t0
        steady, paired = [], []
        for _ in range(args.steady):
            t0 = time.perf_counter()
            model(prefill)
            steady.append(time.perf_counter() - t0)
            if args.paired_floor:
                paired.append([steady[-1], *paired_probe(model, args.lit)])
    if args.logits_out:
        torch.save(logits.float().clone(), args.logits_out)
    around = [paired_probe(model, args.lit)] if args.paired_floor else []
    t0 = time.perf_counter()
    out = model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                         pad_token_id=0)
    gen = time.perf_counter() - t0
    if args.paired_floor:
        around.append(paired_probe(model, args.lit))
    result = {"ready_s": ready, "first_forward_s": first, "steady_forward_s": statistics.median(steady),
              "generate_tok_s": (out.shape[1] - prompt.shape[1]) / gen, "tokens": out[0].tolist(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if args.system == "litcore":
        stats = model.stats()
        result.update(streamed_bytes_per_forward=stats["streamed_bytes_per_forward"],
                      resident_bytes=stats["resident_bytes"], streamed_runs=stats["streamed_runs"],
                      last_token_bytes_read=stats["last"]["bytes_read"],
                      last_token_io_wait_s=stats["last"]["io_wait_seconds"])
        # Experts streamed by routing: a forward reads the chosen ones' share, which differs
        # between a prompt and a generated token; what the steady forwards read is measured.
        result["routed_bytes"] = stats.get("routed_bytes", 0)  # a baseline build may not have it
        if result["routed_bytes"]:
            result["steady_bytes_read"] = statistics.median(p["bytes_read"]
                                                            for p in stats["per_forward"][1:1 + args.steady])
        # The reader's own figures: how fast its reads ran, and how much of the time it read.
        for name, passes in (("steady", stats["per_forward"][1:1 + args.steady]),
                             ("generate", stats["per_forward"][1 + args.steady:])):
            read_s = sum(p.get("read_seconds", 0.0) for p in passes)  # a baseline build may not have it
            forward_s = sum(p["forward_seconds"] for p in passes)
            # Busy: the share of the forwards the reader read through. read_seconds also counts
            # what it read between forwards; a build before forward_read_seconds reports that.
            during_s = sum(p.get("forward_read_seconds", p.get("read_seconds", 0.0)) for p in passes)
            if read_s > 0 and forward_s > 0:
                result[f"{name}_reader_bytes_per_s"] = sum(p["bytes_read"] for p in passes) / read_s
                result[f"{name}_reader_busy"] = during_s / forward_s
            threads = sorted({p["compute_threads"] for p in passes if "compute_threads" in p})
            if threads:  # the streamed modules' intra-op threads (a baseline build may not have it)
                result[f"{name}_compute_threads"] = "/".join(map(str, threads))
    if any(seconds for _, _, seconds in paired):
        result["paired_forwards"] = paired  # [forward s, bytes the probe read, its seconds] per forward
    if all(seconds for _, seconds in around) and around:
        result["generate_probe_bytes_per_s"] = [probed / seconds for probed, seconds in around]
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
