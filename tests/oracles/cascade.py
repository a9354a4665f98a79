"""Slow, obviously-correct Cascade and helpers for testing qkdpost's Cascade.

``plain_cascade`` is textbook Cascade (Brassard-Salvail, EUROCRYPT '93,
doi:10.1007/3-540-48285-7_35): for each pass, compare every block's parity;
binary-search every odd block by halving; after each correction re-check the
block containing the flipped bit in every pass done so far. No scheduling,
no sub-block reuse, no inference beyond the halving itself. It reads both
parties' bits directly (it is an oracle, not a protocol) and counts every
parity it would have had to ask.
"""

from __future__ import annotations

import numpy as np


def permutation(seed: int, q: int, n: int) -> np.ndarray:
    """The public permutation of pass q, from qkdpost's own generator (tested separately)."""
    from qkdpost.reconcile.cascade import _kernels as K

    out = np.empty(n, dtype=np.int32)
    K.fill_permutation(np.uint64(seed), np.int64(q), out)
    return out


def parity(bits, idx) -> int:
    return int(sum(int(bits[i]) for i in idx) % 2)


def halves(idx):
    """Split a list of positions as qkdpost does: the left half gets ceil(len/2)."""
    m = (len(idx) + 1) // 2
    return idx[:m], idx[m:]


def plain_cascade(alice, bob, ks, perms):
    """Textbook Cascade on one frame.

    Parameters
    ----------
    alice, bob : sequence of 0/1
    ks : list of int
        Block size per pass.
    perms : list of sequence of int
        Position order of each pass.

    Returns
    -------
    (corrected bob as uint8 array, parities asked, bits flipped)
    """
    alice = [int(x) for x in alice]
    bob = [int(x) for x in bob]
    n = len(alice)
    asked = 0
    flips = 0
    passes = []  # per pass: list of blocks (lists of positions) and position -> block index

    def binary(idx):
        nonlocal asked
        while len(idx) > 1:
            left, right = halves(idx)
            asked += 1
            idx = left if parity(alice, left) != parity(bob, left) else right
        return idx[0]

    for k, perm in zip(ks, perms):
        order = [int(x) for x in perm]
        blocks = [order[s : s + k] for s in range(0, n, k)]
        where = {}
        for bi, blk in enumerate(blocks):
            for x in blk:
                where[x] = bi
        passes.append((blocks, where))
        todo = []
        for blk in blocks:
            asked += 1
            if parity(alice, blk) != parity(bob, blk):
                todo.append(blk)
        while todo:
            blk = todo.pop()
            if parity(alice, blk) == parity(bob, blk):
                continue  # parity of the whole block is already known: no new ask
            x = binary(blk)
            bob[x] ^= 1
            flips += 1
            for blocks_p, where_p in passes:
                b2 = blocks_p[where_p[x]]
                if parity(alice, b2) != parity(bob, b2):
                    todo.append(b2)
    return np.array(bob, dtype=np.uint8), asked, flips


def gf2_rank(rows) -> int:
    """Rank over GF(2) of parity checks given as Python int bitmasks."""
    basis: dict[int, int] = {}
    rank = 0
    for r in rows:
        while r:
            top = r.bit_length() - 1
            if top in basis:
                r ^= basis[top]
            else:
                basis[top] = r
                rank += 1
                break
    return rank


def node_range(k: int, n: int, b: int, h: int) -> tuple[int, int]:
    """Range [s, e) of heap node h of block b (pass block size k), by explicit recursion."""
    s, e = b * k, min(b * k + k, n)
    path = bin(h)[3:]  # bits below the leading 1, most significant first
    for bit in path:
        m = s + (e - s + 1) // 2
        if bit == "0":
            e = m
        else:
            s = m
    return s, e
