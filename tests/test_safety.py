"""Concurrency, sharing between processes, replacing files under readers, crash-safe and
disk-full-safe export."""
import os
import resource
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
import xxhash

import litcore
from conftest import run_python


def _tensors(n=16, size=50_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"t{i}": torch.randn(size, generator=g) for i in range(n)}


def test_many_threads_read_while_prefetching_and_releasing(tmp):
    tensors = _tensors()
    litcore.save(tensors, tmp / "w.lit")
    store = litcore.Store(tmp / "w.lit")
    expected = {k: xxhash.xxh64_intdigest(v.numpy().tobytes()) for k, v in tensors.items()}
    errors = []
    stop = time.monotonic() + 3

    def reader(seed):
        import random
        rng = random.Random(seed)
        while time.monotonic() < stop:
            k = rng.choice(list(expected))
            if litcore._C.tensor_xxh64(store[k]) != expected[k]:
                errors.append(k)

    def churn():
        keys = list(expected)
        while time.monotonic() < stop:
            store.prefetch(keys)
            store.release(keys)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)] + [threading.Thread(target=churn) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_prefetcher_with_threads_waiting_and_releasing(tmp):
    tensors = _tensors(n=24)
    litcore.save(tensors, tmp / "w.lit")
    store = litcore.Store(tmp / "w.lit")
    units = [store.native.byte_ranges([k]) for k in store]
    pf = litcore._C.Prefetcher(store.native, units, 3 * 200_000, 2, "populate")
    pf.set_order(list(range(len(units))))

    def run(offset):
        for step in range(200):
            g = (step + offset) % len(units)
            pf.wait(g)
            pf.done(g)

    threads = [threading.Thread(target=run, args=(i * 5,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = pf.stats()
    assert stats["hits"] + stats["misses"] == 800
    del pf
    for k, v in tensors.items():
        assert torch.equal(store[k], v)


def test_a_unit_made_resident_while_it_is_read_gives_back_its_window(tmp):
    # A new plan (set_order) can make resident a unit the reader is reading at that moment.
    # Its share of the window must come back when the read ends: kept, it would shrink the
    # window for every later forward (a 1.1B model's reader then waited on each MLP
    # projection in turn).
    litcore.save(_tensors(n=8, size=2 << 20), tmp / "w.lit")  # 8 MiB each
    store = litcore.Store(tmp / "w.lit")
    units = [store.native.byte_ranges([k]) for k in store]
    pf = litcore._C.Prefetcher(store.native, units, 4 * (8 << 20), 1, "sendfile")
    everything = list(range(len(units)))
    for _ in range(20):
        pf.set_order(everything)  # the reader starts on the first units at once
        pf.set_order([])  # every unit resident now, some of them mid-read
        deadline = time.monotonic() + 5
        while pf.stats()["in_flight_bytes"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pf.stats()["in_flight_bytes"] == 0
    # Streamed again, every unit can be waited for and done with, and the window empties.
    pf.set_order(everything)
    for g in everything:
        pf.wait(g)
        pf.done(g)
    pf.set_order([])
    deadline = time.monotonic() + 5
    while pf.stats()["in_flight_bytes"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pf.stats()["in_flight_bytes"] == 0


def test_processes_share_page_cache_and_bytes(tmp):
    tensors = _tensors(n=8, size=1 << 20)  # 32 MiB
    litcore.save(tensors, tmp / "w.lit")
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, litcore
store = litcore.Store({str(tmp / 'w.lit')!r})
ts = [store[k] for k in store]
total = sum(float(t.sum()) for t in ts)
print(repr(total), flush=True)
sys.stdin.read()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        first = holder.stdout.readline().strip()
        out = run_python(f"""
            import litcore
            path = {str(tmp / 'w.lit')!r}
            store = litcore.Store(path)
            ts = [store[k] for k in store]
            print(repr(sum(float(t.sum()) for t in ts)))
            import os
            shared = 0
            in_map = False
            for line in open("/proc/self/smaps"):
                if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                    in_map = line.rstrip().endswith(os.path.realpath(path))
                elif in_map and line.startswith("Shared_Clean:"):
                    shared += int(line.split()[1]) * 1024
            print(shared)
            """).stdout.split()
        assert out[0] == first  # same bytes
        assert int(out[1]) > 30 * 2**20  # the pages are shared with the other process
    finally:
        holder.communicate("")


def test_replacing_the_file_keeps_old_tensors(tmp):
    old = _tensors(seed=1)
    litcore.save(old, tmp / "w.lit")
    store = litcore.Store(tmp / "w.lit")
    held = {k: store[k] for k in store}
    new = _tensors(seed=2)
    litcore.save(new, tmp / "w.lit")  # atomic rename over the mapped file
    for k, t in held.items():
        assert torch.equal(t, old[k])
    with litcore.Store(tmp / "w.lit") as fresh:
        assert torch.equal(fresh["t0"], new["t0"])


SAVER = """
import sys, torch, litcore
g = torch.Generator().manual_seed(int(sys.argv[2]))
tensors = {f"t{i}": torch.randn(1 << 20, generator=g) for i in range(48)}  # 192 MiB
print("ready", flush=True)
litcore.save(tensors, sys.argv[1])
print("saved", flush=True)
"""


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2, 0.5])
def test_killed_save_never_leaves_a_partial_file(tmp, delay):
    dst = tmp / "model.lit"
    litcore.save({"previous": torch.ones(10)}, dst)
    before = dst.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(dst), "3"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    # Either the old file, untouched, or (if the save won the race) a complete new one.
    with litcore.Store(dst) as store:
        if "previous" in store:
            assert dst.read_bytes() == before
        else:
            assert len(store) == 48 and store.verify() == []
    partials = [f for f in os.listdir(tmp) if f.endswith(".litcore-partial")]
    assert all(f.startswith(".model.lit.") for f in partials)  # named so users can tell
    litcore.save({"next": torch.zeros(3)}, dst)  # the next writer cleans up after the dead one
    assert [f for f in os.listdir(tmp) if f.endswith(".litcore-partial")] == []


def test_killed_convert_never_leaves_a_partial_file(tmp):
    from safetensors.torch import save_file

    save_file({f"t{i}": torch.randn(1 << 20) for i in range(48)}, tmp / "src.safetensors")
    for delay in (0.02, 0.1, 0.3):
        proc = subprocess.Popen([sys.executable, "-m", "litcore", "convert", "-q", str(tmp / "src.safetensors"),
                                 str(tmp / "out.lit")])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (tmp / "out.lit").exists():
            with litcore.Store(tmp / "out.lit") as store:
                assert store.verify() == [] and len(store) == 48
            os.remove(tmp / "out.lit")


def test_disk_full_is_a_clear_error(tmp):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))

    code = f"""
import torch, litcore
try:
    litcore.save({{f"t{{i}}": torch.randn(1 << 20) for i in range(8)}}, {str(tmp / 'big.lit')!r})
except OSError as e:
    print("OSError", e)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=limit)
    assert proc.returncode == 0, proc.stderr
    assert "OSError" in proc.stdout and "big.lit" in proc.stdout and "too large" in proc.stdout.lower()
    assert os.listdir(tmp) == []
