"""Foundation benchmark: opening and mapping every tensor of a multi-GB file (should take
milliseconds whatever the size), and convert throughput from safetensors beside `cp`.

    python benchmarks/store_bench.py [--gb 2] [--dir .cache/bench/store]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import torch

import litcore

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cgroup  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--dir", default=".cache/bench/store")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    src = os.path.join(args.dir, "model.safetensors")
    n_tensors = 64
    per = int(args.gb * 1e9 / n_tensors / 2)
    if not os.path.exists(src) or abs(os.path.getsize(src) - n_tensors * per * 2) > 1 << 20:
        from safetensors.torch import save_file

        g = torch.Generator().manual_seed(0)
        save_file({f"layers.{i}.weight": torch.randn(per, generator=g).bfloat16() for i in range(n_tensors)}, src)
    size = os.path.getsize(src)
    lit = os.path.join(args.dir, "model.lit")

    def timed(fn) -> float:
        cgroup.evict([src, lit])
        os.sync()
        t0 = time.perf_counter()
        fn()
        os.sync()
        return time.perf_counter() - t0

    cp_s = timed(lambda: shutil.copyfile(src, os.path.join(args.dir, "copy.safetensors")))
    conv_s = timed(lambda: litcore.convert(src, lit, progress=False))
    cp2_s = timed(lambda: subprocess.run(["cp", src, os.path.join(args.dir, "copy.safetensors")], check=True))
    cp_best = min(cp_s, cp2_s)

    cgroup.evict([lit])
    t0 = time.perf_counter()
    store = litcore.Store(lit)
    tensors = [store[k] for k in store]
    open_s = time.perf_counter() - t0
    store.close()
    del tensors
    # Checksum speed (XXH64, native), on data already in memory.
    buf = torch.randn(64 << 20, generator=torch.Generator().manual_seed(1)).view(torch.uint8)  # 256 MiB
    litcore._C.tensor_xxh64(buf)
    t0 = time.perf_counter()
    for _ in range(4):
        litcore._C.tensor_xxh64(buf)
    xxh_gbs = 4 * buf.numel() / (time.perf_counter() - t0) / 1e9
    with litcore.Store(lit) as s:
        t0 = time.perf_counter()
        s.verify()
        verify_s = time.perf_counter() - t0
    print(f"file: {size / 1e9:.2f} GB, {n_tensors} tensors")
    print(f"XXH64: {xxh_gbs:.1f} GB/s in memory; litcore verify of the whole file (page cache warm or not): {verify_s:.2f} s")
    print(f"open + map every tensor (cold cache): {open_s * 1e3:.1f} ms")
    print(f"cp:        {cp_best:.2f} s ({size / cp_best / 1e9:.2f} GB/s)")
    print(f"convert:   {conv_s:.2f} s ({size / conv_s / 1e9:.2f} GB/s), {conv_s / cp_best:.2f}x cp")
    os.remove(os.path.join(args.dir, "copy.safetensors"))


if __name__ == "__main__":
    main()
