"""A distributed run on one machine: the 1.1B benchmark model split into N stages over gloo on
localhost, each stage a process under its own cgroup memory limit. Reports, per stage, its
bytes, its own time per forward and per generated token (excluding waits on other stages),
and the bytes each hop carries, beside the speed model of docs/distributed.md.

    python benchmarks/stages.py --stages 2 --limit 1200   # MB per stage
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cgroup  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    import litcore.distributed

    config = AutoConfig.from_pretrained(args.model)
    ids = torch.randint(3, config.vocab_size, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    stage = litcore.distributed.from_params(os.path.join(args.model, "model.lit"), lambda: LlamaForCausalLM(config),
                                            memory_budget=args.budget, timeout=600)
    stage(ids)  # the first forward learns the order
    sent_before = stage.stats()["bytes_sent"]
    forwards = []
    for _ in range(args.steady):
        wait = stage.stats()["stage_wait_seconds"]
        started = time.perf_counter()
        stage(ids)
        took = time.perf_counter() - started
        forwards.append((took, took - (stage.stats()["stage_wait_seconds"] - wait), stage.stats()["last"]["io_wait_seconds"]))
    hop = (stage.stats()["bytes_sent"] - sent_before) / args.steady
    wait = stage.stats()["stage_wait_seconds"]
    started = time.perf_counter()
    stage.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
    took = time.perf_counter() - started
    own = took - (stage.stats()["stage_wait_seconds"] - wait)
    print(json.dumps({"rank": stage.rank, "stage_bytes": stage.stage.nbytes, "layers": [stage.stage.first_layer,
                      stage.stage.end_layer], "resident": stage.plan.resident_bytes,
                      "streamed": stage.plan.streamed_bytes, "forward": min(f for f, _, _ in forwards),
                      "own_forward": min(o for _, o, _ in forwards), "io_wait": min(w for _, _, w in forwards),
                      "generate": took, "own_generate": own,
                      "token_seconds": took / args.new_tokens, "own_token_seconds": own / args.new_tokens,
                      "hop_bytes_per_forward": hop}))
    stage.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--limit", type=int, default=1200, help="cgroup memory limit per stage, MB (10^6 bytes)")
    parser.add_argument("--budget", default="auto", help="litcore memory_budget per stage")
    parser.add_argument("--model", default=".cache/bench/llama-1b", help="a directory with config.json and model.lit")
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--steady", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if not os.path.exists(os.path.join(args.model, "model.lit")):
        sys.exit(f"{args.model}/model.lit not found: run benchmarks/run.py once to build the benchmark model")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cgroup.evict([os.path.join(args.model, "model.lit")])
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--model", args.model, "--budget", args.budget,
           "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens), "--steady", str(args.steady)]

    def one(rank: int):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(args.stages), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        return cgroup.run(cmd, args.limit * 10**6, env=env)

    with ThreadPoolExecutor(args.stages) as pool:
        outcomes = list(pool.map(one, range(args.stages)))
    rows = []
    for rank, o in enumerate(outcomes):
        if o.returncode != 0:
            sys.exit(f"stage {rank} failed ({o.returncode}):\n{o.stderr[-3000:]}")
        rows.append(dict(json.loads(o.stdout.strip().splitlines()[-1]), peak=o.peak_bytes))
    flags = sorted({f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split()
                    if f in ("avx512_bf16", "amx_bf16")})
    print(f"{args.stages} stages on one machine, {args.limit} MB limit each, budget {args.budget}; "
          f"CPU flags: {', '.join(flags) or 'no bf16 instructions'}; the stages share 2 cores and one disk")
    print("| stage | layers | bytes (MB) | resident (MB) | streamed / forward (MB) | forward (s) | own part (s) "
          "| its IO wait (s) | s / token | own part (s) | hop (bytes / forward) | peak (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rank']} | {r['layers'][0]}-{r['layers'][1] - 1} | {r['stage_bytes'] / 1e6:.0f} | "
              f"{r['resident'] / 1e6:.0f} | {r['streamed'] / 1e6:.0f} | {r['forward']:.3f} | {r['own_forward']:.3f} | "
              f"{r['io_wait']:.3f} | "
              f"{r['token_seconds']:.3f} | {r['own_token_seconds']:.3f} | {r['hop_bytes_per_forward']:.0f} | "
              f"{r['peak'] / 1e6:.0f} |")


if __name__ == "__main__":
    main()
