"""Hidden states as feature vectors (an encoder whose weights live in a litcore file).

    python examples/features.py                 # a small BERT-shaped model, seeded weights
    python examples/features.py --model DIR     # a real transformers encoder directory
"""
from __future__ import annotations

import argparse
import os

import torch

import litcore
from litcore import synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="transformers encoder directory")
    parser.add_argument("--budget", default="auto", help="memory budget for weights, e.g. 200MB")
    parser.add_argument("--cache", default=".cache/examples")
    args = parser.parse_args()

    model_dir = args.model
    if model_dir is None:
        model_dir = os.path.join(args.cache, "bert-small")
        if not os.path.exists(os.path.join(model_dir, "config.json")):
            synthetic.make_model_dir(model_dir, synthetic.bert_config(), dtype=torch.float32)
        print(f"No --model given: using a BERT-shaped model with seeded random weights in {model_dir}.")

    lit = litcore.from_pretrained(model_dir, memory_budget=args.budget, progress=False)
    sentences = torch.randint(5, lit.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    out = lit(sentences, output_hidden_states=True)
    features = out.last_hidden_state.mean(dim=1)  # one vector per sentence
    features = torch.nn.functional.normalize(features, dim=-1)
    print(f"{len(out.hidden_states)} hidden states of shape {tuple(out.hidden_states[-1].shape)}")
    print("feature vectors:", tuple(features.shape))
    print("cosine similarities:\n", (features @ features.T).round(decimals=3))


if __name__ == "__main__":
    main()
