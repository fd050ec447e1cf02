"""Loads the native extension and checks it was built for the running torch."""
from __future__ import annotations

import torch

try:
    from litcore import _C
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    raise ImportError(
        f"litcore's native extension failed to load ({exc}). Reinstall litcore against this "
        f"torch ({torch.__version__}): pip install --no-build-isolation ."
    ) from exc


def _release(version: str) -> str:
    return version.split("+")[0]


if _release(torch.__version__) != _release(_C.torch_version):
    raise ImportError(
        f"litcore was built for torch {_C.torch_version} but torch {torch.__version__} is "
        "running; rebuild litcore with: pip install --no-build-isolation ."
    )

FormatError = _C.FormatError
FormatError.__module__ = "litcore"
FormatError.__doc__ = "A malformed, truncated or corrupt litcore weight file (a ValueError)."
