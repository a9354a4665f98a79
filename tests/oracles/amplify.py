"""Slow, obviously-correct oracles for Toeplitz hashing (explicit matrices)."""

from __future__ import annotations

import numpy as np


def toeplitz_matrix(seed: np.ndarray, m: int, n: int) -> np.ndarray:
    """The m x n matrix T[i, j] = seed[i - j + n - 1] (uint8), built entry by entry."""
    T = np.zeros((m, n), dtype=np.uint8)
    for i in range(m):
        for j in range(n):
            T[i, j] = seed[i - j + n - 1]
    return T


def toeplitz_hash(bits: np.ndarray, seed: np.ndarray, m: int) -> np.ndarray:
    """y = T x over GF(2) by an explicit integer matrix product mod 2."""
    n = bits.size
    T = toeplitz_matrix(seed, m, n).astype(np.int64)
    return ((T @ bits.astype(np.int64)) % 2).astype(np.uint8)


def modified_toeplitz_hash(bits: np.ndarray, seed: np.ndarray, m: int) -> np.ndarray:
    """y = [I_m | T'] x, T' the m x (n-m) Toeplitz matrix of the (n-1)-bit seed."""
    n = bits.size
    T = np.concatenate([np.eye(m, dtype=np.int64), toeplitz_matrix(seed, m, n - m).astype(np.int64)], axis=1)
    return ((T @ bits.astype(np.int64)) % 2).astype(np.uint8)


def toeplitz_hash_galois(bits: np.ndarray, seed: np.ndarray, m: int) -> np.ndarray:
    """Same product through galois GF(2)[z]: y[i] = coeff of z^(i+n-1) in S(z) X(z)."""
    import galois

    GF2 = galois.GF(2)
    n = bits.size
    # galois.Poly takes coefficients in descending order
    S = galois.Poly(GF2(seed[::-1].astype(np.uint8)))
    X = galois.Poly(GF2(bits[::-1].astype(np.uint8)))
    P = S * X
    coeffs = np.asarray(P.coeffs[::-1], dtype=np.uint8)  # ascending
    full = np.zeros(n + m - 1 + n, dtype=np.uint8)
    full[: coeffs.size] = coeffs
    return full[n - 1 : n - 1 + m].copy()


def words_product_oracle(S: np.ndarray, X: np.ndarray, M: int) -> np.ndarray:
    """Word-level (S X)[Nc : Nc+M] using Python big integers as GF(2)[z] polys."""
    def to_int(words):
        v = 0
        for k, w in enumerate(words.tolist()):
            v |= int(w) << (64 * k)
        return v

    def clmul_int(a, b):
        r = 0
        while b:
            low = b & -b
            r ^= a << (low.bit_length() - 1)
            b ^= low
        return r

    Nc = X.size
    p = clmul_int(to_int(S), to_int(X)) >> (64 * Nc)
    out = np.zeros(M, dtype=np.uint64)
    for k in range(M):
        out[k] = (p >> (64 * k)) & ((1 << 64) - 1)
    return out
