"""qkdpost: classical post-processing for quantum key distribution.

Timestamps in, secret keys out: alignment, sifting, parameter estimation,
error correction (Cascade, LDPC), verification, finite-key length and
Toeplitz privacy amplification, as Numba kernels behind a typed API.

Submodules are imported lazily so ``import qkdpost`` stays cheap; heavy stage
packages (and their Numba kernels) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "warmup": ("qkdpost._jit", "warmup"),
    "Session": ("qkdpost.pipeline.session", "Session"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    try:
        return importlib.import_module(f"qkdpost.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"qkdpost.{name}":
            raise AttributeError(f"module 'qkdpost' has no attribute {name!r}") from None
        raise


__all__ = ["__version__", "warmup", "Session"]
