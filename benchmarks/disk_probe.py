"""How fast the weight file reads the way litcore streams it: `sendfile` of whole tensors,
in file order, into /dev/null, dropping the page cache behind. Run by benchmarks/run.py in the
same memory limit as the system it is the floor for; prints one line `BANDWIDTH <bytes/s>`.

    python benchmarks/disk_probe.py model.lit 1400000000
    python benchmarks/disk_probe.py model.lit --fill
    python benchmarks/disk_probe.py model.lit --ranges ranges.json

--fill measures what a cold start must do instead: the whole file read into the page cache
and kept there, so every page is memory the process has not used before. On a virtual
machine whose host takes freed guest memory back (free page reporting), the first touch of
such memory is what bounds a cold start, not the disk: one reader filled fresh memory at
0.5-0.7 GB/s where the same reads into recycled pages ran at 2.0-2.3. The fill reads into
small folios, as litcore's warm-up does: two readers, readahead off (such a host keeps small
folios backed: 1.0-1.6 GB/s against 0.5-0.95 with readahead), after a pause
as long as a process's start-up, so that the memory the eviction freed is as fresh as when a
system read it.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import List, Optional, Set, Tuple


FILL_READERS = 2
FILL_CHUNK = 32 << 20
STARTUP_PAUSE_S = 3.0


def fill(path: str) -> float:
    """Bytes/s of reading the whole file into the page cache, keeping it, FILL_READERS at a time."""
    time.sleep(STARTUP_PAUSE_S)
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    chunks = list(range(0, size, FILL_CHUNK))

    errors: list = []

    def read(offsets: list) -> None:
        buffer = memoryview(bytearray(FILL_CHUNK))
        try:
            for offset in offsets:
                done, want = 0, min(FILL_CHUNK, size - offset)
                while done < want:
                    n = os.preadv(fd, [buffer[done:want]], offset + done)
                    if n == 0:
                        raise OSError(f"{path}: ends at {offset + done}, before its size {size}")
                    done += n
        except OSError as error:
            errors.append(error)

    readers = [threading.Thread(target=read, args=(chunks[i::FILL_READERS],)) for i in range(FILL_READERS)]
    try:
        started = time.perf_counter()
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        seconds = time.perf_counter() - started
    finally:
        os.close(fd)
    if errors:
        raise errors[0]
    return size / seconds


def tensor_ranges(path: str, modules: Optional[Set[str]] = None) -> List[Tuple[int, int]]:
    """The byte ranges of the file's tensors (of those owned by `modules`, if given), one per
    tensor, in file order: (offset, length) pairs."""
    import litcore

    with litcore.Store(path) as store:
        keys = [k for k in store.keys() if modules is None or k.rpartition(".")[0] in modules]
        return sorted(r for key in keys for r in store.native.byte_ranges([key]))


def streamed_ranges(path: str, nbytes: int) -> List[Tuple[int, int]]:
    """About `nbytes` of whole tensors in file order, starting a tenth into the file (past the
    embedding), as a streamed run of layers does: (offset, length) pairs."""
    ranges = tensor_ranges(path)
    first = next(i for i, (offset, _) in enumerate(ranges) if offset >= os.path.getsize(path) // 10)
    chosen, total = [], 0
    for offset, length in ranges[first:] + ranges[:first]:
        if total >= nbytes:
            break
        chosen.append((offset, length))
        total += length
    return chosen


def stream_seconds(path: str, ranges: List[Tuple[int, int]], evict_first: bool = True) -> float:
    """Seconds to read `ranges` as litcore streams: `sendfile` into /dev/null, in order, the
    page cache dropped behind each tensor. `evict_first`: the file's unmapped page cache is
    dropped before (not beside a running litcore: its reader may hold pages not yet mapped)."""
    fd = os.open(path, os.O_RDONLY)
    sink = os.open(os.devnull, os.O_WRONLY)
    try:
        if evict_first:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        started = time.perf_counter()
        for offset, length in ranges:
            done = 0
            while done < length:
                done += os.sendfile(sink, fd, offset + done, length - done)
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
        return time.perf_counter() - started
    finally:
        os.close(fd)
        os.close(sink)


def main() -> None:
    if sys.argv[2:] == ["--fill"]:
        print(f"BANDWIDTH {fill(sys.argv[1]):.0f}")
        return
    if sys.argv[2] == "--ranges":
        # Beside a running litcore (benchmarks/worker.py): exactly the ranges it streams, its
        # page cache left alone, in a cgroup of its own so that it takes nothing of litcore's limit.
        with open(sys.argv[3]) as f:
            ranges = [tuple(r) for r in json.load(f)]
        print(f"SECONDS {stream_seconds(sys.argv[1], ranges, evict_first=False):.6f}")
        return
    path, nbytes = sys.argv[1], int(sys.argv[2])
    ranges = streamed_ranges(path, nbytes)
    seconds = stream_seconds(path, ranges)
    print(f"BANDWIDTH {sum(length for _, length in ranges) / seconds:.0f}")


if __name__ == "__main__":
    main()
