"""Slow, obviously-correct references for the LDPC kernels (dense matrices, float64).

- ``dense_syndrome``: H x mod 2 with a dense matrix product.
- ``ml_decode``: brute-force maximum-likelihood syndrome decoding on a BSC
  (enumerate every word with the right syndrome; tiny codes only).
- ``flooding_sum_product``: textbook flooding sum-product with the exact
  tanh rule in float64 (Kschischang, Frey, Loeliger, IEEE TIT 47, 498,
  2001, doi:10.1109/18.910572), syndrome signs as in Liveris et al. 2002.
- ``four_cycles``: any two rows of H sharing two columns.
"""

from __future__ import annotations

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
