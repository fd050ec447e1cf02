"""The `litcore` command: convert, inspect and verify weight files."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from litcore import FormatError, Store, convert


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def _cmd_convert(args: argparse.Namespace) -> int:
    convert(args.src, args.dst, dtype=args.dtype, progress=not args.quiet)
    with Store(args.dst) as store:
        print(f"wrote {args.dst}: {len(store)} tensors, {_human(store.nbytes)}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    with Store(args.file) as store:
        infos = store.infos()
        if args.json:
            out = {
                "file": args.file,
                "metadata": store.metadata,
                "tensors": {n: {"dtype": str(i.dtype).removeprefix("torch."), "shape": list(i.shape), "offset": i.offset,
                                "nbytes": i.nbytes, "checksum": f"{i.checksum:016x}", "alias_of": i.alias_of}
                            for n, i in infos.items()},
            }
            json.dump(out, sys.stdout, indent=2)
            print()
            return 0
        width = max((len(n) for n in infos), default=4)
        print(f"{'name':<{width}}  {'dtype':<14} {'shape':<22} {'size':>11}  offset")
        by_dtype: dict = {}
        params = 0
        for name, i in infos.items():
            dt = str(i.dtype).removeprefix("torch.")
            shape = "x".join(map(str, i.shape)) or "()"
            if i.alias_of is not None:
                print(f"{name:<{width}}  {dt:<14} {shape:<22} {'':>11}  = {i.alias_of}")
                continue
            print(f"{name:<{width}}  {dt:<14} {shape:<22} {_human(i.nbytes):>11}  {i.offset}")
            by_dtype[dt] = by_dtype.get(dt, 0) + i.nbytes
            numel = 1
            for d in i.shape:
                numel *= d
            params += numel
        aliases = sum(1 for i in infos.values() if i.alias_of is not None)
        print(f"\n{len(infos)} tensors ({aliases} aliases), {params:,} elements, {_human(store.nbytes)} of data")
        for dt, n in sorted(by_dtype.items()):
            print(f"  {dt}: {_human(n)}")
        for k, v in store.metadata.items():
            print(f"  metadata {k}: {v if len(v) <= 80 else v[:77] + '...'}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    with Store(args.file) as store:
        bad = store.verify(progress=not args.quiet)
    if bad:
        for name in bad:
            print(f"{args.file}: tensor '{name}': checksum mismatch", file=sys.stderr)
        print(f"{args.file}: {len(bad)} corrupt tensor(s)", file=sys.stderr)
        return 1
    print(f"{args.file}: OK, {len(store)} tensors")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="litcore", description="litcore weight files")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("convert", help="convert safetensors / a HF model dir / a .bin state dict to a .lit file")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--dtype", help="convert floating-point tensors to this dtype (float32, float16, bfloat16)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_cmd_convert)
    p = sub.add_parser("inspect", help="list tensors, dtypes, shapes, sizes and totals")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_cmd_inspect)
    p = sub.add_parser("verify", help="check every tensor's checksum")
    p.add_argument("file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_cmd_verify)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (FormatError, OSError, ValueError, KeyError) as exc:
        print(f"litcore {args.command}: error: {exc}", file=sys.stderr)
        return 2
