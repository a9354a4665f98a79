"""Numba kernels for keyed polynomial hashing over GF(2^128).

Field: GF(2^128) = GF(2)[x] / (x^128 + x^7 + x^2 + x + 1) (the GCM field,
NIST SP 800-38D, but with the plain LSB-first bit order: an element is two
uint64 words ``(lo, hi)``, bit ``i`` of ``lo`` (``hi``) is the coefficient of
``x^i`` (``x^(64+i)``)).

Polynomial hash (Carter-Wegman / den Boer; e.g. Bernstein, "The Poly1305-AES
message-authentication code", FSE 2005, Sec. 3 for the bound): the n-bit
block is cut into L = ceil(n/128) field elements m_1..m_L (zero padded) and a
final length element m_{L+1} = n; with key k,

    H_k(m) = sum_{i=1}^{L+1} m_i k^(L+2-i)        (Horner: h <- (h + m_i) k).

For two different blocks of the same length the difference is a non-zero
polynomial in k of degree <= L+1 without constant term, so a uniformly
random k makes them collide with probability <= (L+1) / 2^128.
"""

from __future__ import annotations

import numpy as np

from .._jit import kernel, register
from ..amplify._kernels import clmul, default_mode

register(__name__)

__all__ = ["gf128_mul", "poly_hash128_batch"]

_R = np.uint64(0x87)  # x^128 = x^7 + x^2 + x + 1


@kernel(None)
def gf128_mul(a0, a1, b0, b1, mode):
    """(a0 + a1 x^64)(b0 + b1 x^64) in GF(2^128): returns (lo, hi)."""
    p00l, p00h = clmul(a0, b0, mode)
    p11l, p11h = clmul(a1, b1, mode)
    p01l, p01h = clmul(a0, b1, mode)
    p10l, p10h = clmul(a1, b0, mode)
    w0 = p00l
    w1 = p00h ^ p01l ^ p10l
    w2 = p11l ^ p01h ^ p10h
    w3 = p11h
    # fold w2, w3 (coefficients of x^128..x^255) with x^128 = 0x87
    r2l, r2h = clmul(w2, _R, mode)
    r3l, r3h = clmul(w3, _R, mode)
    w0 ^= r2l
    w1 ^= r2h ^ r3l
    # r3h < 2^7 is the coefficient word of x^128 again
    r4l, r4h = clmul(r3h, _R, mode)
    w0 ^= r4l
    return w0, w1


@kernel(None)
def poly_hash128_batch(words, nbits, keys, out, mode):
    """Polynomial hash of every row of ``words``.

    Parameters
    ----------
    words : uint64[N, W]
        Packed blocks (``W >= ceil(nbits/64)``; bits >= nbits must be zero).
    nbits : int
        Block length in bits (the same for every row).
    keys : uint64[N, 2]
        Per-block key (lo, hi).
    out : uint64[N, 2]
        Hash values (lo, hi), overwritten.
    mode : uint8 or int8 scalar
        Carry-less product selector (see ``qkdpost.amplify._kernels``).

    Returns
    -------
    int
        0.
    """
    nw = (nbits + 63) >> 6
    for r in range(words.shape[0]):
        k0 = keys[r, 0]
        k1 = keys[r, 1]
        h0 = np.uint64(0)
        h1 = np.uint64(0)
        i = 0
        while i < nw:
            m0 = words[r, i]
            m1 = words[r, i + 1] if i + 1 < nw else np.uint64(0)
            h0, h1 = gf128_mul(h0 ^ m0, h1 ^ m1, k0, k1, mode)
            i += 2
        h0, h1 = gf128_mul(h0 ^ np.uint64(nbits), h1, k0, k1, mode)
        out[r, 0] = h0
        out[r, 1] = h1
    return 0


def _warmup() -> None:
    mode = default_mode()
    w = np.ones((2, 3), np.uint64)
    out = np.zeros((2, 2), np.uint64)
    poly_hash128_batch(w, 150, np.ones((2, 2), np.uint64), out, mode)
    gf128_mul(np.uint64(1), np.uint64(2), np.uint64(3), np.uint64(4), mode)
