"""A cold start with every weight resident: the warm-up's readers read the whole file, the
first forward waits for the weights it needs instead of faulting them in, and the page cache
then holds them in small folios (read without readahead)."""
import mmap
import os
import struct
import sys

import pytest
import torch
from torch import nn

import litcore

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import cgroup  # noqa: E402

LAYERS = 12
WIDTH = 1024  # 4 MiB of float32 per layer: 48 MiB, read in well over a forward's compute


class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS))

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


def _seeded_stack() -> Stack:
    torch.manual_seed(0)
    return Stack().eval()


def _unit_hooks(lit) -> int:
    return sum(len(m._forward_pre_hooks) for m in lit.module.modules() if m is not lit.module)


@pytest.fixture
def cold_stack(tmp):
    ref = _seeded_stack()
    path = tmp / "stack.lit"
    litcore.save(ref.state_dict(), path)
    cgroup.evict([str(path)])
    return ref, path


def test_a_cold_first_forward_waits_for_the_warm_up(cold_stack):
    ref, path = cold_stack
    x = torch.randn(4, WIDTH, generator=torch.Generator().manual_seed(1))
    lit = litcore.LitModule.from_params(path, Stack)
    assert not lit.plan.streams
    assert _unit_hooks(lit) == LAYERS  # hooked while the warm-up reads
    got = lit(x)  # at once: the warm-up has barely started
    with torch.no_grad():
        assert torch.equal(got, ref(x))
    stats = lit.stats()
    # The warm-up's readers (or the forward, through them) read every weight: none was left
    # to the forward's page faults.
    assert stats["warmup_bytes_read"] >= lit.plan.resident_bytes
    assert not stats["warmup_running"]
    # Nothing left to wait for: the hooks are gone and calls cost nothing extra.
    assert _unit_hooks(lit) == 0
    with torch.no_grad():
        assert torch.equal(lit(x), ref(x))
    lit.close()


def _large_folio_pages(path) -> int:
    """Pages of this process's mapping of `path` that belong to a large folio (-1: the
    kernel does not tell this process)."""
    path = os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        mapped = [line.split() for line in maps]
    spans = [fields[0] for fields in mapped if len(fields) >= 6 and fields[5] == path]
    assert spans, f"{path} is not mapped"
    start, end = (int(a, 16) for a in spans[0].split("-"))
    page = mmap.PAGESIZE
    try:
        with open("/proc/self/pagemap", "rb") as pagemap, open("/proc/kpageflags", "rb") as flags:
            pagemap.seek(start // page * 8)
            entries = struct.unpack(f"{(end - start) // page}Q", pagemap.read((end - start) // page * 8))
            large = 0
            for entry in entries:
                if not entry >> 63:  # not present
                    continue
                pfn = entry & ((1 << 55) - 1)
                if pfn == 0:  # hidden from this process
                    return -1
                flags.seek(pfn * 8)
                bits = struct.unpack("Q", flags.read(8))[0]
                large += (bits >> 15) & 1 or (bits >> 16) & 1  # KPF_COMPOUND_HEAD / _TAIL
            return large
    except OSError:
        return -1


def test_a_cold_start_reads_into_small_folios(cold_stack):
    """On a kernel whose file system caches in large folios (ext4 from Linux 6.16, xfs), a
    read with readahead fills the page cache with them, and a virtual machine's host backs
    large ones slowly when it has taken free memory back (docs/benchmarks.md): the warm-up
    reads without readahead, and the header is read the same way, so that no readahead
    marks left behind it make the warm-up's reads read ahead."""
    ref, path = cold_stack
    lit = litcore.LitModule.from_params(path, Stack)
    x = torch.randn(4, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(lit(x), ref(x))
    large = _large_folio_pages(path)
    if large < 0:
        pytest.skip("/proc/kpageflags or page frame numbers are not readable here")
    assert large == 0
    lit.close()
