"""`litcore.Store`: an opened weight file handing out zero-copy tensors."""
from __future__ import annotations

import os
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple, Union

import torch

from litcore import dtypes
from litcore._native import _C

PathLike = Union[str, "os.PathLike[str]"]


class TensorInfo(NamedTuple):
    """Where and what a tensor is in the file."""

    dtype: torch.dtype
    shape: Tuple[int, ...]
    offset: int
    nbytes: int
    checksum: int
    alias_of: Optional[str]


def _verify_mode(verify: Union[bool, str]) -> str:
    if verify is True:
        return "full"
    if verify is False or verify is None:
        return "none"
    if verify in ("full", "lazy", "none"):
        return verify
    raise ValueError(f"verify must be True, False, 'full' or 'lazy', got {verify!r}")


class Store:
    """A litcore weight file, memory-mapped copy-on-write.

    `store[name]` is a CPU tensor whose memory is the file's mapping: no copy is made, and
    pages are read from disk when first touched. Tensors stay valid after `close()`.
    Writing into one changes only this process's copy, never the file.
    """

    def __init__(self, path: PathLike, *, verify: Union[bool, str] = False) -> None:
        self._path = os.fspath(path)
        self._native = _C.Store(self._path, _verify_mode(verify))

    @property
    def path(self) -> str:
        return self._path

    @property
    def native(self) -> "_C.Store":
        return self._native

    @property
    def metadata(self) -> Dict[str, str]:
        return dict(self._native.metadata)

    @property
    def closed(self) -> bool:
        return self._native.closed

    def keys(self) -> List[str]:
        """Every tensor's name (aliases included), in file order."""
        return self._native.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self._native.keys())

    def __len__(self) -> int:
        return len(self._native)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._native.contains(name)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._native.get(name)

    def get(self, name: str, default: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        return self._native.get(name) if name in self else default

    def info(self, name: str) -> TensorInfo:
        """`name`'s dtype, shape, offset, size, checksum and the tensor it aliases (if any);
        KeyError naming the tensor and the file if it is not there."""
        return self._make_info(self._native.info(name))

    def infos(self) -> Dict[str, TensorInfo]:
        """Every tensor's info, in file order."""
        return {name: self._make_info(raw) for name, raw in self._native.infos()}

    @staticmethod
    def _make_info(raw: tuple) -> TensorInfo:
        dtype, shape, offset, nbytes, checksum, alias = raw
        return TensorInfo(dtypes.from_name(dtype), tuple(shape), offset, nbytes, checksum, alias)

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data stored (aliases counted once)."""
        return sum(i.nbytes for i in self.infos().values() if i.alias_of is None)

    def prefetch(self, names: Iterable[str]) -> None:
        """Asks the OS to read these tensors ahead (madvise WILLNEED)."""
        self._native.prefetch(list(names))

    def release(self, names: Iterable[str]) -> None:
        """Drops these tensors' pages from memory and page cache; they stay readable."""
        self._native.release(list(names))

    def verify(self, progress: bool = False) -> List[str]:
        """Checks every tensor's checksum; returns the names of the corrupt ones."""
        if not progress:
            return self._native.verify_all(None)
        from tqdm import tqdm

        with tqdm(total=self.nbytes, unit="B", unit_scale=True, desc=f"verify {os.path.basename(self._path)}") as bar:
            return self._native.verify_all(bar.update)

    def close(self) -> None:
        """Unmaps the file once no tensor uses it any more."""
        self._native.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self)} tensors"
        return f"litcore.Store({self._path!r}, {state})"
