"""Text generation with a causal LM whose weights stream from a litcore file.

    python examples/generate.py                      # a small Llama-shaped model, seeded weights
    python examples/generate.py --model DIR          # a real transformers model directory
    python examples/generate.py --budget 500MB       # run under a memory budget
"""
from __future__ import annotations

import argparse
import os
import time

import torch

import litcore
from litcore.budget import budget_argument
from litcore import synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="transformers model directory (config.json + safetensors/bin)")
    parser.add_argument("--size", default="tiny", choices=list(synthetic.LLAMA_SIZES), help="synthetic model size")
    parser.add_argument("--prompt", default="The quick brown fox")
    parser.add_argument("--tokens", type=int, default=20, help="new tokens to generate")
    parser.add_argument("--budget", default="auto", type=budget_argument, help="memory budget for weights, e.g. 1GiB")
    parser.add_argument("--cache", default=".cache/examples", help="where synthetic models are kept")
    args = parser.parse_args()

    model_dir = args.model
    if model_dir is None:
        model_dir = os.path.join(args.cache, f"llama-{args.size}")
        if not os.path.exists(os.path.join(model_dir, "config.json")):
            synthetic.make_model_dir(model_dir, synthetic.llama_config(args.size))
        print(f"No --model given: using a Llama-shaped model ({args.size}) with seeded random weights in {model_dir}; "
              "its text is gibberish, its speed and memory are real.")

    t0 = time.perf_counter()
    lit = litcore.from_pretrained(model_dir, memory_budget=args.budget, progress=True)
    print(f"ready in {time.perf_counter() - t0:.2f} s: {lit}")
    if not lit.module.can_generate():
        raise SystemExit(f"generate.py: '{model_dir}' holds a {type(lit.module).__name__}, which does not generate "
                         "text: pass a causal language model (e.g. a Llama, GPT-2 or Qwen directory)")

    tokenizer = None
    if any(os.path.exists(os.path.join(model_dir, f)) for f in ("tokenizer.json", "tokenizer.model")):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    else:
        ids = torch.tensor([[1] + [(ord(c) % (lit.config.vocab_size - 3)) + 3 for c in args.prompt]])

    t0 = time.perf_counter()
    out = lit.generate(ids, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                       pad_token_id=lit.config.eos_token_id or 0)
    took = time.perf_counter() - t0
    new = out[0, ids.shape[1]:]
    print("generated ids:", new.tolist())
    if tokenizer is not None:
        print("text:", tokenizer.decode(out[0], skip_special_tokens=True))
    print(f"{len(new)} tokens in {took:.2f} s ({len(new) / took:.2f} tokens/s)")


if __name__ == "__main__":
    main()
