"""How much of a file is in the page cache (mincore over a fresh shared mapping), for tests
that check streamed weights really leave memory."""
import ctypes
import mmap
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def cached_bytes(path: str, offset: int = 0, length: int = -1) -> int:
    """Bytes of `path` in the page cache now (mapping it faults nothing in); of the pages
    holding [offset, offset + length) when given."""
    size = os.path.getsize(path)
    if size == 0:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap '{path}'")
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(address, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore '{path}'")
            end = size if length < 0 else offset + length
            return sum(b & 1 for b in vec[offset // mmap.PAGESIZE:(end + mmap.PAGESIZE - 1) // mmap.PAGESIZE]) * mmap.PAGESIZE
        finally:
            _libc.munmap(address, size)
    finally:
        os.close(fd)


def in_memory_fraction(t) -> float:
    """The share of tensor `t`'s pages in memory (mincore over the mapping it views)."""
    start = t.data_ptr() & ~(mmap.PAGESIZE - 1)
    end = t.data_ptr() + t.numel() * t.element_size()
    length = (end - start + mmap.PAGESIZE - 1) & ~(mmap.PAGESIZE - 1)
    pages = (ctypes.c_ubyte * (length // mmap.PAGESIZE))()
    if _libc.mincore(ctypes.c_void_p(start), length, pages) != 0:
        raise OSError(ctypes.get_errno(), "mincore")
    return sum(p & 1 for p in pages) / len(pages)
