"""Slow, obviously-correct references for the LDPC kernels (dense matrices, float64).

- ``dense_syndrome``: H x mod 2 with a dense matrix product.
- ``ml_decode``: brute-force maximum-likelihood syndrome decoding on a BSC
  (enumerate every word with the right syndrome; tiny codes only).
- ``flooding_sum_product``: textbook flooding sum-product with the exact
  tanh rule in float64 (Kschischang, Frey, Loeliger, IEEE TIT 47, 498,
  2001, doi:10.1109/18.910572), syndrome signs as in Liveris et al. 2002.
- ``four_cycles``: any two rows of H sharing two columns.
- ``scalar_layered_decode``: the one-frame float32 layered decoder the
  frame-parallel kernel must match bit for bit.
"""

from __future__ import annotations

import numba
import numpy as np


def dense_syndrome(h: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.int64) @ np.asarray(h, dtype=np.int64).T % 2).astype(np.uint8)


def ml_decode(h: np.ndarray, syn: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """The unique word with syndrome ``syn`` nearest to ``y`` in Hamming distance, or None on a tie.

    Enumerates all 2^n words (n <= 22).
    """
    n = h.shape[1]
    assert n <= 22
    words = ((np.arange(2**n, dtype=np.int64)[:, None] >> np.arange(n)) & 1).astype(np.uint8)
    ok = np.all(dense_syndrome(h, words) == np.asarray(syn)[None, :], axis=1)
    cand = words[ok]
    d = np.count_nonzero(cand != np.asarray(y)[None, :], axis=1)
    best = np.flatnonzero(d == d.min())
    return None if best.shape[0] > 1 else cand[best[0]]


def flooding_sum_product(h: np.ndarray, llr: np.ndarray, syn: np.ndarray, max_iter: int) -> tuple[np.ndarray, bool]:
    """Return (hard decision, success) after at most ``max_iter`` flooding iterations."""
    h = np.asarray(h, dtype=bool)
    llr = np.asarray(llr, dtype=np.float64)
    q = np.where(h, llr[None, :], 0.0)
    sign = np.where(np.asarray(syn) == 1, -1.0, 1.0)
    x = (llr < 0).astype(np.uint8)
    if np.array_equal(dense_syndrome(h, x), syn):
        return x, True
    for _ in range(max_iter):
        t = np.where(h, np.tanh(np.clip(q, -40, 40) / 2.0), 1.0)
        r = np.zeros_like(q)
        for j in range(h.shape[0]):
            cols = np.flatnonzero(h[j])
            for c in cols:
                others = np.prod(t[j, cols[cols != c]])
                others = np.clip(others, -1 + 1e-15, 1 - 1e-15)
                r[j, c] = sign[j] * 2.0 * np.arctanh(others)
        post = llr + r.sum(axis=0)
        q = np.where(h, post[None, :] - r, 0.0)
        x = (post < 0).astype(np.uint8)
        if np.array_equal(dense_syndrome(h, x), syn):
            return x, True
    return x, False


def four_cycles(h: np.ndarray) -> bool:
    g = np.asarray(h, dtype=np.int64) @ np.asarray(h, dtype=np.int64).T
    np.fill_diagonal(g, 0)
    return bool(g.max(initial=0) >= 2)


def untainted(h: np.ndarray, punct: np.ndarray) -> bool:
    """Every check has at most one punctured neighbour."""
    return bool(np.asarray(h, dtype=np.int64)[:, punct].sum(axis=1).max(initial=0) <= 1)


# ---------------------------------------------------------------------------
# Scalar layered decoder: one frame at a time, the decoder qkdpost shipped
# before the frame-parallel one. The lane decoder must reproduce it bit for
# bit (same float32 operations in the same order in every lane).
# ---------------------------------------------------------------------------
_PHI_SCALE = np.float32(512.0)
_PHI_XCLAMP = np.float32((8192 - 1) / 512.0)


@numba.njit(cache=True, error_model="numpy")
def _phi(x, lut):
    x = min(max(x, np.float32(0.0)), _PHI_XCLAMP)
    return lut[np.int32(x * _PHI_SCALE)]


@numba.njit(cache=True, error_model="numpy")
def _unsatisfied(row_ptr, col_idx, L, syn):
    u = 0
    for j in range(row_ptr.shape[0] - 1):
        s = np.int32(syn[j])
        for e in range(row_ptr[j], row_ptr[j + 1]):
            s ^= np.int32(L[col_idx[e]] < 0)
        u += s
    return u


@numba.njit(cache=True, error_model="numpy")
def scalar_layered_decode(row_ptr, col_idx, syn, max_iter, patience, L, R, lut):
    """Layered log-tanh sum-product on one frame (float32, phi table); L, R in/out.

    Returns iterations used if decoded (0 if the input already matched), else
    -(iterations used) - 1. ``patience``: give up when the count of
    unsatisfied checks has not reached a new minimum for that many iterations.
    """
    m = row_ptr.shape[0] - 1
    T = np.empty(256, np.float32)
    P = np.empty(256, np.float32)
    SG = np.empty(256, np.int32)
    if _unsatisfied(row_ptr, col_idx, L, syn) == 0:
        return 0
    best = m + 1
    since = 0
    for it in range(max_iter):
        for j in range(m):
            lo = row_ptr[j]
            hi = row_ptr[j + 1]
            neg = np.int32(syn[j])
            S = np.float32(0.0)
            for e in range(lo, hi):
                t = L[col_idx[e]] - R[e]
                T[e - lo] = t
                sg = np.int32(t < 0)
                SG[e - lo] = sg
                neg ^= sg
                p = _phi(abs(t), lut)
                P[e - lo] = p
                S += p
            for e in range(lo, hi):
                r = _phi(S - P[e - lo], lut) * np.float32(1 - 2 * (neg ^ SG[e - lo]))
                R[e] = r
                L[col_idx[e]] = T[e - lo] + r
        u = _unsatisfied(row_ptr, col_idx, L, syn)
        if u == 0:
            return it + 1
        if patience > 0:
            if u < best:
                best = u
                since = 0
            else:
                since += 1
                if since >= patience:
                    return -(it + 1) - 1
    return -max_iter - 1
