"""Hidden states as feature vectors (an encoder whose weights live in a litcore file).

    python examples/features.py                 # a small BERT-shaped model, seeded weights
    python examples/features.py --model DIR "a sentence" "another"   # a real encoder directory
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
    parser.add_argument("sentences", nargs="*", default=["A cat sits on the mat.", "A kitten rests on a rug.",
                                                          "Stock markets fell sharply today.", "The weather is sunny."])
    args = parser.parse_args()

    model_dir = args.model
    if model_dir is None:
        model_dir = os.path.join(args.cache, "bert-small")
        if not os.path.exists(os.path.join(model_dir, "tokenizer.json")):
            synthetic.make_model_dir(model_dir, synthetic.bert_config(), dtype=torch.float32)
        print(f"No --model given: using a BERT-shaped model with seeded random weights in {model_dir} "
              "(its similarities mean nothing; pass --model with a real encoder, e.g. all-MiniLM-L6-v2).")

    from transformers import AutoTokenizer

    lit = litcore.from_pretrained(model_dir, memory_budget=args.budget, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(args.sentences, padding=True, return_tensors="pt")
    out = lit(**batch, output_hidden_states=True)
    mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
    features = (out.last_hidden_state * mask).sum(dim=1) / mask.sum(dim=1)  # mean over real tokens
    features = torch.nn.functional.normalize(features, dim=-1)
    print(f"{len(out.hidden_states)} hidden states of shape {tuple(out.hidden_states[-1].shape)}")
    print("feature vectors:", tuple(features.shape))
    print("cosine similarities:")
    for sentence, row in zip(args.sentences, (features @ features.T).tolist()):
        print("  " + " ".join(f"{v:6.3f}" for v in row) + f"  {sentence}")


if __name__ == "__main__":
    main()
