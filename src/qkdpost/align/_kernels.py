"""Numba kernels of clock alignment: folded histograms and clock mapping.

Plain typed arrays, caller-owned output buffers, no validation (the public
module :mod:`qkdpost.align` validates). Times are int64 ticks; the only float
is the clock rate, applied to a tick *difference* from a reference point so
that float64 keeps sub-tick precision (a difference of 2^52 ticks is 75 min
at 1 ps).
"""

from __future__ import annotations

import numpy as np
from numba import float64, int64, types, void

from .._jit import kernel, register

register(__name__)

# Input-only arrays are typed read-only so memory-mapped (read-only) chunks
# are accepted without a copy; writable arrays convert to them implicitly.
ro_i64 = types.Array(types.int64, 1, "A", readonly=True)


@kernel(void(ro_i64, int64, int64, int64, int64, int64, float64[:]))
def fold_histogram(t, lo, hi, origin, bin_ticks, mask, out):
    """Add events with ``lo <= t < hi`` to ``out[((t - origin) // bin_ticks) & mask]``.

    ``mask + 1`` is the (power-of-two) number of bins, so the histogram is
    folded with period ``(mask + 1) * bin_ticks`` (pfind's folded histogram).
    ``t`` is non-decreasing; ``out`` is accumulated into, not cleared.
    """
    n = t.shape[0]
    for i in range(n):
        x = t[i]
        if x < lo:
            continue
        if x >= hi:
            break
        out[((x - origin) // bin_ticks) & mask] += 1.0


@kernel(void(ro_i64, int64, int64, float64, float64, int64, int64, int64, int64, int64, float64[:]))
def fold_histogram_mapped(t_b, b_ref, a_ref, frac, rate, lo, hi, origin, bin_ticks, mask, out):
    """Fold Bob's events mapped to Alice's clock, ``x = a_ref + floor(frac + (t_b - b_ref) * rate)``.

    Only events with ``lo <= x < hi`` count; bins as in :func:`fold_histogram`.
    """
    n = t_b.shape[0]
    for i in range(n):
        x = a_ref + np.int64(np.floor(frac + (t_b[i] - b_ref) * rate))
        if x < lo or x >= hi:
            continue
        out[((x - origin) // bin_ticks) & mask] += 1.0


@kernel(void(ro_i64, int64, int64, float64, float64, int64[:]))
def map_clock(t_b, b_ref, a_ref, frac, rate, out):
    """``out[i] = a_ref + floor(frac + (t_b[i] - b_ref) * rate + 1/2)``: Bob's ticks to Alice's.

    ``frac`` (|frac| <= 1/2) is the sub-tick part of the reference point.
    Monotone for ``rate > 0``, so a sorted input stays sorted.
    """
    n = t_b.shape[0]
    for i in range(n):
        out[i] = a_ref + np.int64(np.floor(frac + (t_b[i] - b_ref) * rate + 0.5))


@kernel(int64(ro_i64, ro_i64, int64, int64[:], int64[:]))
def pair_residuals(t_a, t_b_mapped, window, out_ta, out_res):
    """Every (Alice, Bob) pair with ``|t_b - t_a| <= window``: Alice time and difference.

    Both inputs are sorted. Writes at most ``len(out_res)`` pairs and returns
    the number of pairs found (which may exceed the buffer: the caller then
    retries with a larger buffer). Used to fit the clock model; unlike sifting
    it does not pair events one to one, so accidentals stay in as background.
    """
    na = t_a.shape[0]
    nb = t_b_mapped.shape[0]
    cap = out_res.shape[0]
    j0 = 0
    k = 0
    for i in range(na):
        ta = t_a[i]
        while j0 < nb and t_b_mapped[j0] < ta - window:
            j0 += 1
        j = j0
        while j < nb and t_b_mapped[j] <= ta + window:
            if k < cap:
                out_ta[k] = ta
                out_res[k] = t_b_mapped[j] - ta
            k += 1
            j += 1
    return k


def _warmup() -> None:
    t = np.arange(64, dtype=np.int64) * 1000
    h = np.zeros(16, dtype=np.float64)
    fold_histogram(t, 0, 64000, 0, 1000, 15, h)
    fold_histogram_mapped(t, 0, 0, 0.0, 1.0, 0, 64000, 0, 1000, 15, h)
    out = np.empty_like(t)
    map_clock(t, 0, 0, 0.0, 1.0, out)
    pair_residuals(t, out, 10, np.empty(8, np.int64), np.empty(8, np.int64))
