"""litcore: run PyTorch models that do not fit in memory, from one memory-mapped weight file."""
from __future__ import annotations

import os as _os

from litcore._native import FormatError, _C
from litcore.convert import convert
from litcore.save import save
from litcore.store import Store, TensorInfo

__version__ = _C.__version__

# Where CMake finds litcore (`find_package(litcore)`), like torch.utils.cmake_prefix_path.
cmake_prefix_path = _os.path.join(_os.path.dirname(_os.path.abspath(_C.__file__)), "share", "cmake")
# Public headers and the shared library, for other build systems.
include_path = _os.path.join(_os.path.dirname(_os.path.abspath(_C.__file__)), "include")
library_path = _os.path.join(_os.path.dirname(_os.path.abspath(_C.__file__)), "lib")

__all__ = ["FormatError", "Store", "TensorInfo", "convert", "save", "cmake_prefix_path", "include_path", "library_path"]
