"""Writes a seed corpus of valid litcore files for the libFuzzer target (make fuzz)."""
import os
import sys

import torch

import litcore


def main(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    seeds = {
        "empty": {},
        "one": {"w": torch.ones(3)},
        "mixed": {"a.weight": torch.randn(4, 4, generator=g), "b": torch.arange(5), "m": torch.tensor([True]),
                  "e": torch.empty(0, 2), "s": torch.tensor(1.0).bfloat16(), "f8": torch.ones(2).to(torch.float8_e4m3fn)},
        "tied": {"x": torch.ones(8), "y": None},
    }
    seeds["tied"]["y"] = seeds["tied"]["x"]
    for name, tensors in seeds.items():
        litcore.save(tensors, os.path.join(out_dir, f"{name}.lit"), metadata={"k": "v"})


if __name__ == "__main__":
    main(sys.argv[1])
