"""The store: zero-copy tensors, lifetime, copy-on-write, advice, verification."""
import gc
import os

import pytest
import torch

import litcore
import litfile
from conftest import run_python


def _write(tmp, n=4, size=100_000):
    tensors = {f"layer{i}.weight": torch.randn(size, generator=torch.Generator().manual_seed(i)) for i in range(n)}
    litcore.save(tensors, tmp / "w.lit")
    return tensors


def _mappings_of(path):
    real = os.path.realpath(path)
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == real:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append((lo, hi))
    return out


def test_tensors_are_views_of_the_file_mapping(tmp):
    tensors = _write(tmp)
    store = litcore.Store(tmp / "w.lit")
    maps = _mappings_of(tmp / "w.lit")
    assert maps, "the file is not mapped"
    for name, t in tensors.items():
        got = store[name]
        assert torch.equal(got, t)
        ptr = got.data_ptr()
        assert any(lo <= ptr and ptr + got.nbytes <= hi for lo, hi in maps), name
    # Two gets of one name share memory: no copy anywhere.
    assert store["layer0.weight"].data_ptr() == store["layer0.weight"].data_ptr()


def test_opening_a_large_file_and_taking_every_tensor_does_not_read_it(tmp):
    # 1 GiB in 64 MiB tensors, written in a subprocess so its pages are not ours.
    run_python(f"""
        import torch, litcore
        litcore.save({{f"t{{i}}": torch.full((16 << 20,), float(i)) for i in range(16)}}, {str(tmp / 'big.lit')!r})
        """)
    out = run_python(f"""
        import time, torch, litcore
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096
        before = rss()
        t0 = time.perf_counter()
        store = litcore.Store({str(tmp / 'big.lit')!r})
        tensors = [store[n] for n in store]
        took = time.perf_counter() - t0
        print(rss() - before, took, sum(t.nbytes for t in tensors))
        assert float(tensors[5][123]) == 5.0
        """).stdout.split()
    grew, took, total = int(out[0]), float(out[1]), int(out[2])
    assert total == 1 << 30
    assert grew < 32 << 20, f"RSS grew by {grew} bytes for a 1 GiB file"


def test_tensor_outlives_its_store(tmp):
    tensors = _write(tmp)
    store = litcore.Store(tmp / "w.lit")
    t = store["layer2.weight"]
    store.close()
    assert store.closed
    del store
    gc.collect()
    assert torch.equal(t, tensors["layer2.weight"])
    assert _mappings_of(tmp / "w.lit"), "mapping must live while a tensor does"
    del t
    gc.collect()
    assert not _mappings_of(tmp / "w.lit"), "mapping must go with the last tensor"


def test_closed_store_refuses_get(tmp):
    _write(tmp)
    store = litcore.Store(tmp / "w.lit")
    store.close()
    with pytest.raises(RuntimeError, match="closed"):
        store["layer0.weight"]


def test_context_manager_and_container_protocol(tmp):
    tensors = _write(tmp, n=3)
    with litcore.Store(tmp / "w.lit") as store:
        assert len(store) == 3 and list(store) == list(tensors)
        assert "layer1.weight" in store and "nope" not in store and 5 not in store
        assert store.get("nope") is None
        assert store.nbytes == 3 * 400_000
        info = store.info("layer1.weight")
        assert info.dtype == torch.float32 and info.shape == (100_000,) and info.nbytes == 400_000
    assert store.closed


def test_missing_key_names_key_and_file(tmp):
    _write(tmp)
    with litcore.Store(tmp / "w.lit") as store:
        with pytest.raises(KeyError, match=r"layer9\.weight.*w\.lit"):
            store["layer9.weight"]
        with pytest.raises(KeyError, match="nope"):
            store.info("nope")
        with pytest.raises(KeyError, match="nope"):
            store.prefetch(["nope"])


def test_writing_into_a_tensor_never_changes_the_file(tmp):
    tensors = _write(tmp)
    before = (tmp / "w.lit").read_bytes()
    # In a subprocess: a crash (SIGSEGV/SIGBUS) would show as a failed exit.
    run_python(f"""
        import torch, litcore
        store = litcore.Store({str(tmp / 'w.lit')!r})
        t = store["layer1.weight"]
        t.fill_(42.0)
        t.add_(1)
        assert float(t[0]) == 43.0
        other = litcore.Store({str(tmp / 'w.lit')!r})
        assert float(other["layer1.weight"][0]) != 43.0
        """)
    assert (tmp / "w.lit").read_bytes() == before
    with litcore.Store(tmp / "w.lit") as store:
        assert torch.equal(store["layer1.weight"], tensors["layer1.weight"])


def test_prefetch_and_release_keep_values(tmp):
    tensors = _write(tmp)
    with litcore.Store(tmp / "w.lit") as store:
        t = store["layer3.weight"]
        store.prefetch(store.keys())
        assert torch.equal(t, tensors["layer3.weight"])
        store.release(store.keys())
        assert torch.equal(t, tensors["layer3.weight"])  # read again from the file


def _corrupt_data_byte(path, name):
    with litcore.Store(path) as store:
        offset = store.info(name).offset
    with open(path, "r+b") as f:
        f.seek(offset + 10)
        b = f.read(1)
        f.seek(offset + 10)
        f.write(bytes([b[0] ^ 0xFF]))


def test_verify_names_corrupt_tensors(tmp):
    _write(tmp)
    _corrupt_data_byte(tmp / "w.lit", "layer2.weight")
    with litcore.Store(tmp / "w.lit") as store:  # the index is intact: opens
        assert store.verify() == ["layer2.weight"]
    with pytest.raises(litcore.FormatError, match=r"w\.lit.*layer2\.weight"):
        litcore.Store(tmp / "w.lit", verify=True)
    lazy = litcore.Store(tmp / "w.lit", verify="lazy")
    lazy["layer1.weight"]
    with pytest.raises(litcore.FormatError, match=r"layer2\.weight.*checksum"):
        lazy["layer2.weight"]
    with pytest.raises(ValueError, match="verify"):
        litcore.Store(tmp / "w.lit", verify="sometimes")
