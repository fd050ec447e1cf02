"""The `litcore` command: run a model (generate), plan one (plan), and convert, inspect and
verify weight files."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import List, Optional

from litcore import FormatError, Store, __version__, convert
from litcore.budget import budget_argument
from litcore.convert import ORDER_METADATA_KEY
from litcore.lit_module import resolve_weights_path

DTYPE_HELP = "float32, float16, bfloat16 or float64 (also fp32, fp16, bf16); integer tensors are kept"


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


_ORDER_WORDS = {"model": "in the model's order", "source": "in the source's order", "given": "in the order its writer gave",
                "name": "in name order"}


def _cmd_convert(args: argparse.Namespace) -> int:
    convert(args.src, args.dst, dtype=args.dtype, progress=not args.quiet)
    with Store(args.dst) as store:
        order = _ORDER_WORDS.get(store.metadata.get(ORDER_METADATA_KEY, ""), "")
        print(f"wrote {args.dst}: {len(store)} tensors, {_human(store.nbytes)}" + (f", {order}" if order else ""))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    path = resolve_weights_path(args.file)
    with Store(path) as store:
        infos = store.infos()
        if args.json:
            out = {
                "file": path,
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
    path = resolve_weights_path(args.file)
    with Store(path) as store:
        bad = store.verify(progress=not args.quiet)
    if bad:
        for name in bad:
            print(f"{path}: tensor '{name}': checksum mismatch", file=sys.stderr)
        print(f"{path}: {len(bad)} corrupt tensor(s)", file=sys.stderr)
        return 1
    print(f"{path}: OK, {len(store)} tensors")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from litcore.hf import plan_pretrained, plan_pretrained_stages

    if args.stages is not None:
        split = [int(s) if s.isdigit() else s for s in args.split.split(",")] if args.split else None
        print(plan_pretrained_stages(args.model, args.stages, split=split, memory_budget=args.memory_budget))
        print("(per stage; the first forward learns the execution order and may refine each plan)")
        return 0
    if args.split:
        raise ValueError("--split needs --stages")
    plan = plan_pretrained(args.model, memory_budget=args.memory_budget, dtype=args.dtype)
    print(plan)
    print("(the first forward learns the execution order and may refine this plan)")
    return 0


def _stage_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"invalid stage count '{text}': a positive integer")
    return n


def _tokenizer_dir(model: str, given: Optional[str]) -> str:
    if given:
        return given
    directory = model if os.path.isdir(model) else os.path.dirname(os.path.abspath(model))
    if any(os.path.exists(os.path.join(directory, f)) for f in ("tokenizer.json", "tokenizer.model", "vocab.json",
                                                                 "tokenizer_config.json")):
        return directory
    raise ValueError(f"no tokenizer beside '{model}': pass --tokenizer DIR (a directory with the model's tokenizer)")


def _cmd_generate(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer, TextStreamer

    import litcore

    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_dir(args.model, args.tokenizer))
    lit = litcore.from_pretrained(args.model, memory_budget=args.memory_budget, device=args.device, dtype=args.dtype,
                                  progress=not args.quiet, verify=args.verify)
    module = lit.module
    if not (hasattr(module, "generate") and getattr(module, "can_generate", lambda: False)()):
        raise ValueError(f"'{args.model}' is a {type(module).__name__}, which does not generate text: "
                         "litcore generate needs a causal language model")
    ids = tokenizer(args.prompt, return_tensors="pt").input_ids.to(lit.device)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    print(args.prompt, end="", flush=True)
    started = time.perf_counter()
    out = lit.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False, streamer=streamer,
                       pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    took = time.perf_counter() - started
    new = int(out.shape[1] - ids.shape[1])
    stats = lit.stats()
    total = stats["total"]
    # The reader's speed tells a slow disk from a slow schedule: compare it with the disk's.
    reads = (f", read {_human(total['bytes_read'])} at {total['bytes_read'] / total['read_seconds'] / 2**20:.0f} MiB/s"
             if total["read_seconds"] > 0 else "")
    routed = (f", experts {_human(stats['routed_bytes'])} read by routing"
              f" ({_human(stats['expert_cache_bytes'])} of them cached)" if stats["routed_bytes"] else "")
    print(f"[litcore] {new} tokens in {took:.2f} s ({new / took:.2f} tokens/s); resident "
          f"{_human(stats['resident_bytes'])}, streamed {_human(stats['streamed_bytes_per_forward'])} per forward"
          f"{routed}; waited {total['io_wait_seconds']:.2f} s on IO{reads}", flush=True)
    lit.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="litcore", description="Run PyTorch models that do not fit in memory.")
    parser.add_argument("--version", action="version", version=f"litcore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("generate", help="generate text with a transformers causal LM (directory or .lit file)")
    p.add_argument("model", help="a transformers model directory, or a .lit file converted from one")
    p.add_argument("prompt")
    p.add_argument("--memory-budget", default="auto", type=budget_argument, help="memory for weights: 'auto' (default), bytes, or e.g. 1.5GiB")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--dtype", help=f"convert the weights first: {DTYPE_HELP}")
    p.add_argument("--tokenizer", help="the tokenizer's directory (default: the model's)")
    p.add_argument("--verify", default="none", choices=["none", "lazy", "full"],
                   help="checksums: lazy checks each tensor once, when first read (default: none)")
    p.add_argument("-q", "--quiet", action="store_true", help="no conversion progress bar")
    p.set_defaults(run=_cmd_generate)
    p = sub.add_parser("plan", help="dry run: which modules would stay resident, stream, or be read by lookup")
    p.add_argument("model", help="a transformers model directory, or a .lit file converted from one")
    p.add_argument("--memory-budget", default="auto", type=budget_argument, help="memory for weights: 'auto' (default), bytes, or e.g. 1.5GiB")
    p.add_argument("--dtype", help=f"plan for converted weights: {DTYPE_HELP}")
    p.add_argument("--stages", type=_stage_count, help="plan a distributed run: this many stages, each under "
                   "--memory-budget (docs/distributed.md)")
    p.add_argument("--split", help="with --stages: the first layer of each stage, e.g. 0,11 (default: balanced by bytes)")
    p.set_defaults(run=_cmd_plan)
    p = sub.add_parser("convert", help="convert safetensors / a HF model dir / a .bin state dict / a .lit file to a .lit file")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--dtype", help=f"convert floating-point tensors: {DTYPE_HELP}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_cmd_convert)
    p = sub.add_parser("inspect", help="list tensors, dtypes, shapes, sizes and totals")
    p.add_argument("file", help="a .lit file, or a directory holding one")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_cmd_inspect)
    p = sub.add_parser("verify", help="check every tensor's checksum")
    p.add_argument("file", help="a .lit file, or a directory holding one")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_cmd_verify)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:
        # `litcore inspect f.lit | head`: the reader left; end quietly, like other tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    except (FormatError, OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, KeyError) and exc.args:
            message = str(exc.args[0])
        elif isinstance(exc, OSError) and exc.strerror:
            message = exc.strerror + (f": '{exc.filename}'" if exc.filename else "")
        else:
            message = str(exc)
        print(f"litcore {args.command}: error: {message.removeprefix('litcore: ')}", file=sys.stderr)
        return 2
