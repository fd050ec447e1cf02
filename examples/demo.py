"""litcore's main job, end to end (`make demo`): a ~1B-parameter Llama-shaped model (2.2 GB in
bf16) generated once with seeded weights, converted to a litcore file, and run for text
generation under a memory budget smaller than the model, with progress and a summary.

    python examples/demo.py [--size 1b|small|tiny] [--budget 1GiB] [--tokens 16]
"""
from __future__ import annotations

import argparse
import os
import time

import torch

import litcore
from litcore.budget import budget_argument
from litcore import synthetic


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class TokenProgress:
    """A transformers streamer that moves a tqdm bar once per generated token."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="tok", desc="generate")
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        self.bar.update(1)

    def end(self) -> None:
        self.bar.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1b", choices=list(synthetic.LLAMA_SIZES))
    parser.add_argument("--budget", default="1GiB", type=budget_argument,
                        help="memory for weights (the model is 2.2 GB at --size 1b)")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--cache", default=".cache/demo")
    args = parser.parse_args()

    model_dir = os.path.join(args.cache, f"llama-{args.size}")
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        print(f"Generating a Llama-shaped {args.size} model with seeded bf16 weights in {model_dir} (once)...")
        t0 = time.perf_counter()
        synthetic.make_model_dir(model_dir, synthetic.llama_config(args.size))
        print(f"  done in {time.perf_counter() - t0:.1f} s")

    reset_peak_rss()  # generating the model above is not part of the measurement
    t0 = time.perf_counter()
    lit = litcore.from_pretrained(model_dir, memory_budget=args.budget, progress=True)
    ready = time.perf_counter() - t0
    plan = lit.plan
    print(f"ready in {ready:.2f} s: {plan.total_bytes / 2**30:.2f} GiB of weights, budget {plan.budget / 2**30:.2f} GiB, "
          f"{plan.resident_bytes / 2**30:.2f} GiB resident, {plan.streamed_bytes / 2**30:.2f} GiB streamed per forward")

    from transformers import AutoTokenizer

    if not os.path.exists(os.path.join(model_dir, "tokenizer.json")):  # a model made by an older litcore
        synthetic.make_tokenizer(model_dir, lit.config.vocab_size)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = tokenizer("The quick brown fox", return_tensors="pt").input_ids
    t0 = time.perf_counter()
    lit(prompt)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = lit.generate(prompt, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                       pad_token_id=0, streamer=TokenProgress(args.tokens))
    took = time.perf_counter() - t0
    stats = lit.stats()
    last = stats["last"] or {}
    print("\nsummary")
    print(f"  load (convert once, then map + bind): {ready:.2f} s")
    print(f"  first forward ({prompt.shape[1]} tokens):             {first:.2f} s")
    print(f"  generate:                             {args.tokens} tokens in {took:.2f} s "
          f"({took / args.tokens:.2f} s/token, {args.tokens / took:.2f} tokens/s)")
    print(f"  read per forward:                     {last.get('bytes_read', 0) / 2**20:.0f} MiB, "
          f"waited {last.get('io_wait_seconds', 0):.3f} s on IO")
    print(f"  peak RSS:                             {peak_rss() / 2**20:.0f} MiB "
          "(mapped weight pages included; streamed pages are dropped after use)")
    print(f"  generated ids:                        {out[0, prompt.shape[1]:].tolist()}")
    new = out[0, prompt.shape[1]:].tolist()
    beyond = sum(1 for i in new if i >= len(tokenizer))  # the demo tokenizer knows few of the model's ids
    print(f"  text (seeded random weights: gibberish): {tokenizer.decode(out[0], skip_special_tokens=True)!r}"
          + (f" ({beyond} of {len(new)} new ids are past the demo tokenizer's {len(tokenizer)} tokens)" if beyond else ""))


if __name__ == "__main__":
    main()
