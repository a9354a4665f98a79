"""Bit-array helpers shared by several stages.

Public boundaries carry key bits as ``uint8`` arrays of 0/1. Kernels that gain
from it work on packed ``uint64`` words, bit ``i`` of the key in word
``i // 64`` at bit position ``i % 64`` (least significant first).
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

__all__ = ["as_bits", "pack_bits", "unpack_bits", "binary_entropy"]


def as_bits(value: object, name: str, *, ndim: tuple[int, ...] = (1,)) -> np.ndarray:
    """Validate a 0/1 array and return it as contiguous uint8 (no copy if already so).

    Raises InputError naming ``name`` if the dtype is not integer/bool, the
    number of dimensions is not in ``ndim``, or a value is not 0 or 1.
    """
    arr = np.asarray(value)
    if arr.dtype != np.bool_ and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name}: dtype {arr.dtype} is not a bit array; pass uint8 0/1 values")
    if arr.ndim not in ndim:
        raise InputError(f"{name}: has {arr.ndim} dimensions, expected one of {ndim}")
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if arr.size and arr.max() > 1:
        bad = int(np.flatnonzero(arr.reshape(-1) > 1)[0])
        raise InputError(f"{name}: value at flat index {bad} is not 0 or 1; bits must be 0/1")
    return arr


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack uint8 0/1 bits (last axis) into uint64 words, LSB first; pads with 0."""
    bits = np.ascontiguousarray(bits, dtype=np.uint8)
    n = bits.shape[-1]
    nwords = (n + 63) // 64
    # packbits zero-fills the last partial byte; only the bytes up to the
    # word boundary need padding (2.7x faster than padding the bits first)
    out = np.zeros(bits.shape[:-1] + (nwords * 8,), dtype=np.uint8)
    out[..., : (n + 7) // 8] = np.packbits(bits, axis=-1, bitorder="little")
    return out.view("<u8").astype(np.uint64, copy=False)


def unpack_bits(words: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``n`` bits as uint8 0/1."""
    w = np.ascontiguousarray(words, dtype="<u8")
    return np.unpackbits(w.view(np.uint8), axis=-1, count=n, bitorder="little")


def binary_entropy(p: float | np.ndarray) -> float | np.ndarray:
    """h(p) = -p log2 p - (1-p) log2 (1-p), with h(0) = h(1) = 0."""
    p_arr = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -p_arr * np.log2(p_arr) - (1 - p_arr) * np.log2(1 - p_arr)
    h = np.where((p_arr <= 0) | (p_arr >= 1), 0.0, h)
    return float(h) if np.ndim(h) == 0 else h
