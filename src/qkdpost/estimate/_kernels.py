"""Numba kernels of parameter estimation: error counting per class."""

from __future__ import annotations

import numpy as np
from numba import int64, types, uint8, void

from .._jit import kernel, register

register(__name__)

ro_u8 = types.Array(types.uint8, 1, "A", readonly=True)


@kernel(void(ro_u8, ro_u8, ro_u8, int64[:], int64[:]))
def count_errors(bits_a, bits_b, cls, out_err, out_tot):
    """``out_tot[c] += 1`` and ``out_err[c] += bits_a != bits_b`` per position of class ``c``.

    Class labels must be below ``len(out_err)`` (the caller checks).
    """
    n = bits_a.shape[0]
    for i in range(n):
        c = cls[i]
        out_tot[c] += 1
        if bits_a[i] != bits_b[i]:
            out_err[c] += 1


def _warmup() -> None:
    a = np.zeros(8, np.uint8)
    count_errors(a, a, a, np.zeros(1, np.int64), np.zeros(1, np.int64))
