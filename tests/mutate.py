"""Corrupts valid litcore files in many ways and checks each either opens (and every tensor
reads) or raises litcore.FormatError — never another exception, a crash, a hang or unbounded
memory. Run as a subprocess by tests/test_fuzz.py (so a crash is a failed exit, and a
cgroup bounds its memory):

    python tests/mutate.py FILE.lit COUNT SEED        # random mutations of FILE
    python tests/mutate.py --files F1 F2 ...          # check given files (fuzz regressions)
"""
import os
import random
import struct
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import litcore  # noqa: E402
import litfile  # noqa: E402


def check(blob: bytes, workdir: str) -> str:
    path = os.path.join(workdir, "m.lit")
    with open(path, "wb") as f:
        f.write(blob)
    try:
        with litcore.Store(path) as store:
            for name in store:
                t = store[name]
                if t.numel():
                    t.view(-1).view(t.dtype)[-1:].clone()  # touch the last element
            store.verify()
        return "ok"
    except litcore.FormatError:
        return "format-error"


def mutations(blob: bytes, rng: random.Random, count: int):
    raw = litfile.parse(blob)
    index_end = 4096 + raw.index_size
    boundaries = {0, 7, 8, 12, 16, 64, 120, 127, 128, 4095, 4096, index_end - 1, index_end, raw.data_offset,
                  len(blob) - 1}
    for r in raw.records:
        boundaries.update({r.offset, r.offset + r.nbytes})
    for cut in sorted(b for b in boundaries if 0 <= b < len(blob)):
        yield f"truncate@{cut}", blob[:cut]
    for i in range(count):
        kind = rng.choice(["flip-header", "flip-index", "flip-index-fixed", "field", "record-field", "huge"])
        data = bytearray(blob)
        if kind == "flip-header":
            pos = rng.randrange(0, 128)
            data[pos] ^= 1 << rng.randrange(8)
            yield f"{kind}@{pos}", bytes(data)
        elif kind == "flip-index":
            pos = rng.randrange(4096, index_end)
            data[pos] ^= 1 << rng.randrange(8)
            yield f"{kind}@{pos}", bytes(data)
        elif kind == "flip-index-fixed":  # valid checksums over a corrupt index: exercises the parser
            idx = bytearray(litfile.index_bytes(raw))
            if idx:
                pos = rng.randrange(len(idx))
                idx[pos] ^= 1 << rng.randrange(8)
            f = litfile.parse(blob)
            yield f"{kind}@{pos}", litfile.build(f, index=bytes(idx))
        elif kind == "field":
            f = litfile.parse(blob)
            field = rng.choice(["file_size", "index_size", "data_offset", "data_size", "tensor_count", "metadata_count"])
            setattr(f, field, rng.choice([0, 1, 4095, 4096, 2**31, 2**32 - 1, 2**63, 2**64 - 1]) % (2**32 if "count" in field else 2**64))
            yield f"{kind}:{field}", litfile.build(f, fix_counts=False)
        elif kind == "record-field" and raw.records:
            f = litfile.parse(blob)
            r = rng.choice(f.records)
            field = rng.choice(["dtype", "offset", "nbytes", "alias", "shape", "flags"])
            value = {"dtype": rng.randrange(256), "offset": rng.choice([0, 4096, 2**63, 2**64 - 4096, r.offset + 4096]),
                     "nbytes": rng.choice([0, 1, 2**40, 2**64 - 1]), "alias": rng.choice([0, 1, 2**32 - 1, 7]),
                     "shape": rng.choice([[], [2**62, 4], [-3], [0], [1] * 70, [r.nbytes]]), "flags": 1}[field]
            setattr(r, field, value)
            yield f"{kind}:{field}", litfile.build(f)
        else:
            idx = bytearray(litfile.index_bytes(raw))
            if len(idx) >= 4:
                pos = rng.randrange(0, len(idx) - 3)
                idx[pos:pos + 4] = struct.pack("<I", rng.choice([2**32 - 1, 2**31, 10**9, 65537]))
            f = litfile.parse(blob)
            yield f"huge@{pos if len(idx) >= 4 else 0}", litfile.build(f, index=bytes(idx))


def main() -> int:
    counts = {"ok": 0, "format-error": 0}
    with tempfile.TemporaryDirectory() as work:
        if sys.argv[1] == "--files":
            items = [(p, open(p, "rb").read()) for p in sys.argv[2:]]
        else:
            with open(sys.argv[1], "rb") as f:
                blob = f.read()
            items = mutations(blob, random.Random(int(sys.argv[3])), int(sys.argv[2]))
        for label, data in items:
            try:
                counts[check(data, work)] += 1
            except Exception as exc:  # anything but FormatError is a bug
                print(f"FAIL {label}: {type(exc).__name__}: {exc}")
                return 1
    print(counts["ok"], counts["format-error"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
