"""litcore: run PyTorch models that do not fit in memory, from one memory-mapped weight file."""
from __future__ import annotations

import os as _os

from litcore._native import FormatError, _C
from litcore.binding import WeightsMismatchError
from litcore.convert import convert
from litcore.empty_init import empty_init
from litcore.lit_module import LitModule
from litcore.residency import BudgetTooSmallError
from litcore.save import save
from litcore.store import Store, TensorInfo

__version__ = _C.__version__

_native_dir = _os.path.dirname(_os.path.abspath(_C.__file__))
# Where CMake finds litcore (`find_package(litcore)`), like torch.utils.cmake_prefix_path.
cmake_prefix_path = _os.path.join(_native_dir, "share", "cmake")
# Public headers and the shared library, for other build systems.
include_path = _os.path.join(_native_dir, "include")
library_path = _os.path.join(_native_dir, "lib")


def from_pretrained(*args, **kwargs):  # noqa: D401 - thin lazy wrapper, transformers is optional
    """See litcore.hf.from_pretrained."""
    from litcore.hf import from_pretrained as _impl

    return _impl(*args, **kwargs)


def plan_pretrained(*args, **kwargs):  # noqa: D401 - thin lazy wrapper, transformers is optional
    """See litcore.hf.plan_pretrained."""
    from litcore.hf import plan_pretrained as _impl

    return _impl(*args, **kwargs)


# `litcore.jit` after `import litcore`, as `torch.jit` after `import torch`.
from litcore import jit  # noqa: E402


__all__ = ["BudgetTooSmallError", "FormatError", "LitModule", "Store", "TensorInfo", "WeightsMismatchError", "convert",
           "empty_init", "from_pretrained", "jit", "plan_pretrained", "save", "cmake_prefix_path", "include_path", "library_path"]
