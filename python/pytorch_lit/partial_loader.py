"""`PartialLoader`, with PyTorch-LIT's interface: a torch checkpoint read one tensor at a time."""
from __future__ import annotations

import os
from typing import Dict, KeysView, Optional, Union

import torch

from litcore.convert import open_state_dict


class PartialLoader:
    """A torch `.bin`/`.pt` state-dict file whose tensors are read one at a time, never the
    whole file: the file is memory-mapped (litcore's streaming reader, `open_state_dict`)
    and a tensor's bytes are read when `read_key` returns it. Each tensor keeps its stored
    dtype (mixed floating-point and integer checkpoints stay as they are).

    `prepare_params(PartialLoader(path), save_dir)` converts the file tensor by tensor.
    """

    def __init__(self, path: Union[str, "os.PathLike[str]"]) -> None:
        self.path = os.fspath(path)
        self._tensors: Optional[Dict[str, torch.Tensor]] = open_state_dict(self.path)

    def _open(self) -> Dict[str, torch.Tensor]:
        if self._tensors is None:
            raise ValueError(f"PartialLoader for '{self.path}' is closed")
        return self._tensors

    def keys(self) -> KeysView[str]:
        return self._open().keys()

    def read_key(self, key: str, device: Union[str, torch.device] = "cpu") -> torch.Tensor:
        """The tensor `key`, with its stored dtype, on `device` (a copy: it stays valid
        after `close()`)."""
        tensors = self._open()
        if key not in tensors:
            raise KeyError(f"no tensor '{key}' in '{self.path}'")
        return tensors[key].to(device, copy=True)

    def close(self) -> None:
        """Unmaps the file (tensors already read stay valid)."""
        self._tensors = None

    def __enter__(self) -> "PartialLoader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
