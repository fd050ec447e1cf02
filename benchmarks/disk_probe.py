"""How fast the weight file reads the way litcore streams it: `sendfile` of whole tensors,
in file order, into /dev/null, dropping the page cache behind. Run by benchmarks/run.py in the
same memory limit as the system it is the floor for; prints one line `BANDWIDTH <bytes/s>`.

    python benchmarks/disk_probe.py model.lit 1400000000
"""
from __future__ import annotations

import os
import sys
import time

import litcore


def main() -> None:
    path, nbytes = sys.argv[1], int(sys.argv[2])
    with litcore.Store(path) as store:
        ranges = sorted(r for key in store.keys() for r in store.native.byte_ranges([key]))
    # Start a tenth into the file (past the embedding), as a streamed run of layers does.
    first = next(i for i, (offset, _) in enumerate(ranges) if offset >= os.path.getsize(path) // 10)
    chosen, total = [], 0
    for offset, length in ranges[first:] + ranges[:first]:
        if total >= nbytes:
            break
        chosen.append((offset, length))
        total += length
    fd = os.open(path, os.O_RDONLY)
    sink = os.open(os.devnull, os.O_WRONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        started = time.perf_counter()
        for offset, length in chosen:
            done = 0
            while done < length:
                done += os.sendfile(sink, fd, offset + done, length - done)
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
        seconds = time.perf_counter() - started
    finally:
        os.close(fd)
        os.close(sink)
    print(f"BANDWIDTH {total / seconds:.0f}")


if __name__ == "__main__":
    main()
