"""Numba kernels of the two-party Cascade (no validation; status values, not exceptions).

Layout shared by both parties
-----------------------------
A batch holds N frames of n bits. Pass ``q`` reads the frame in the order of a
permutation ``perm[q]`` (pass 0 is the identity) and cuts it into
``nb[q] = ceil(n / k[q])`` consecutive blocks of ``k[q]`` positions (the last
may be shorter). The binary-search tree of a block is implicit: the root
(heap index 1) covers the block, node ``h`` covering ``[s, e)`` has children
``2h`` on ``[s, m)`` and ``2h + 1`` on ``[m, e)`` with ``m = s + ceil((e-s)/2)``
(the halving of Brassard-Salvail's BINARY, EUROCRYPT '93, Sec. 3).

Pass geometry lives in one int64 array ``geo`` of shape (4, P + 1):
``geo[G_K]`` block size, ``geo[G_NB]`` block count, ``geo[G_STRIDE]`` heap
indices per block (``2 * next_pow2(k)``), ``geo[G_BASE]`` first global node id
of the pass (``geo[G_BASE, P]`` is the total node count M).

Bob's per-frame knowledge is three bitsets over the M nodes, interleaved by
word (``tree[f, w, r]``, so one cache line serves all three): row 0 "Alice's
parity of this node is known" (asked, or inferred for free), row 1 the
*error parity* (Alice's parity XOR Bob's current parity), row 2 "the node is
on the pending list" (to keep it unique).
Every flip of Bob's bit toggles the error parity of all known nodes containing
it; a known node without known children and with odd error parity (a
*frontier odd node*) is exactly a block that still has to be searched. This is
Cascade's "cascade" step and the sub-block reuse of Martinez-Mateo et al.
(QIC 15, 2015, Sec. 4, options 4/7/8) in one structure.

Per-frame scalars live in ``st`` (int64, shape (N, NST)), columns ``S_*``.
``kpos[f, 0]`` is a bitset over positions Bob knows to be correct (a known
leaf, a corrected bit, or peeled); ``kpos[f, 1]`` is the scheduler's scratch
marks and ``kpos[f, 2]`` their summary (bit w set when word w of the marks may
be non-zero; only its first ceil(W / 64) words are used).
For the passes with small blocks (``geo[G_KSLOT, q] = r >= 0``) the
known-correct positions are also kept in the pass's permuted order, in ``kpos[f, 3 + r]``
(bit j = position ``perm[q, j]`` is known), so that "is every / all but one
bit of this small node known?" reads one or two words instead of gathering
each position through the permutation (two cache misses per bit). Pass 0 is
the identity and uses ``kpos[f, 0]`` itself.
The pending list ``pend[f, :st[f, S_NPEND]]`` holds candidate frontier odd
nodes, one row per node with its geometry cached next to its id (columns
``P_V`` global node id, ``P_Q`` pass, ``P_S``/``P_E`` range in the pass's
permuted order, ``P_H`` heap index in its block: the planner, the emitter and
the absorber read it there instead of decoding the id again); after
``bob_plan`` its first ``st[f, S_NSEL]`` rows are the nodes whose left half is
asked this round.

Every kernel here is compiled without Numba's reference-counted runtime
(``kernel(nrt=False)``): none allocates, and the helpers take many arrays, on
which the runtime's atomic reference counts cost ~10 % of the run (perf).
Scratch space is caller-owned.

A party's bits travel as the tuple ``eng = (bits uint8[N, n], packed
uint64[N, ceil(n/64)], pref uint64[N, P, ceil((n+1)/64)], snap int64[N, P],
flips uint64[N, P, ceil(n/64)] (Bob) or [N, 1, 1] (Alice), scratch int64[.])``.
The kernels read and change only ``packed``; ``bits`` is the caller's (Bob
unpacks his corrected bits from ``packed`` when the run ends, so a flip
does not also write a random byte of a 1 MB-per-frame array).
"""

from __future__ import annotations

import numpy as np

from ..._jit import kernel, prefetch, register

register(__name__)

# geometry rows
G_K, G_NB, G_STRIDE, G_BASE, G_KSLOT = 0, 1, 2, 3, 4
NGEO = 5
# passes after the first with blocks up to this size keep a permuted-order copy of kpos
KQ_MAX_K = 4096
# rows of kpos: known-correct positions, scheduler marks, their summary, per-pass copies
KP_KNOWN, KP_MARK, KP_SUMMARY, KP_KQ = 0, 1, 2, 3

# per-frame state columns
S_PASS = 0  # passes started (their top-level parities absorbed)
S_DONE = 1  # 0 running, 1 finished, 2 aborted (pending overflow / round cap)
S_FLIPS = 2  # bits flipped by Bob
S_LEAK = 3  # parities received from Alice
S_ATOT = 4  # Alice's whole-frame parity (known after pass 0)
S_BTOT = 5  # Bob's current whole-frame parity
S_NPEND = 6  # entries in the pending list
S_STREAK = 7  # consecutive clean passes (BICONF stop rule)
S_FLIPS0 = 8  # S_FLIPS when the current pass started
S_NSEL = 9  # range queries selected this round (the first S_NSEL pending entries)
S_ACTION = 10  # 0 nothing to ask, 1 range queries, 2 top-level parities of pass S_PASS
S_TOPCOUNT = 11  # blocks asked when S_ACTION == 2
S_ROUNDS = 12  # rounds in which the frame asked something
S_INFERRED = 13  # parities Bob inferred instead of asking (counted, never sent)
NST = 16

# pending-list row columns: node id, pass, start, end, heap index within its block
P_V, P_Q, P_S, P_E, P_H = 0, 1, 2, 3, 4
NPCOL = 5
# planner scratch columns (``scr`` int64[cap, NSCR], cap >= 65): a copy of the pending
# rows, then each row's level, the level order, the selection flag, the counting
# sort's 65 counters (rows 0..64), the passes after each order index, each row's
# order index, and for pass-1 rows: overlapped by an earlier pass-0 node, and the
# next pass-1 row of the same block (-1 ends; ``heads[b] - 1`` is block b's first)
SC_LV, SC_ORD, SC_SEL, SC_CNT, SC_LATER = NPCOL, NPCOL + 1, NPCOL + 2, NPCOL + 3, NPCOL + 4
SC_RANK, SC_HIT, SC_NEXT = NPCOL + 5, NPCOL + 6, NPCOL + 7
NSCR = NPCOL + 8

# config entries
C_PASSES, C_CLEAN_STOP, C_CLEAN_FROM, C_SLACK, C_MAXROUNDS, C_LOCAL = 0, 1, 2, 3, 4, 5
NCFG = 8

# smallest nodes for which Bob checks whether a child is made only of
# positions he already knows to be correct (then its parity is not asked)
SMALL_NODE = 16
# nodes up to this size are checked for a single position not known to be correct
PEEL_MAX = 8
PEEL_STACK = 1024
# passes of two blocks with k above this get a packed block-0 mask
BIG_RANGE = 4096

_ONE = np.uint64(1)


# ----------------------------------------------------------------------------
# shared randomness: permutations from the agreed seed


@kernel(nrt=False)
def _splitmix64(state):
    """One SplitMix64 step (Steele, Lea, Flood, OOPSLA 2014, doi:10.1145/2660193.2660195).

    Returns (new_state, output). Public randomness only: permutations are
    disclosed on the channel anyway (their seed is).
    """
    state = state + np.uint64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return state, z


@kernel(nrt=False)
def fill_permutation(seed, q, out):
    """Fisher-Yates shuffle (Knuth TAOCP vol. 2, Alg. 3.4.2P) of ``out`` = 0..n-1.

    Parameters
    ----------
    seed : uint64
        Agreed seed of the batch.
    q : int64
        Pass index; pass 0 gets the identity.
    out : int32[n]
        Filled in place.
    """
    n = out.shape[0]
    for i in range(n):
        out[i] = i
    if q == 0:
        return
    state = seed ^ (np.uint64(q) * np.uint64(0xD1B54A32D192ED03))
    for i in range(n - 1, 0, -1):
        state, r = _splitmix64(state)
        # Lemire's multiply-shift (ACM TOMACS 29, 2019, doi:10.1145/3230636) on 32 bits;
        # bias < n / 2^32, irrelevant for public permutations
        j = np.int64(((r >> np.uint64(32)) * np.uint64(i + 1)) >> np.uint64(32))
        t = out[i]
        out[i] = out[j]
        out[j] = t


@kernel(nrt=False)
def fill_inverse(perm, out):
    """out[perm[j]] = j."""
    for j in range(perm.shape[0]):
        out[perm[j]] = j


@kernel(nrt=False)
def fill_inverse_column(perm, inv, q):
    """inv[perm[j], q] = j: column q of Bob's position-major inverse table."""
    for j in range(perm.shape[0]):
        inv[perm[j], q] = j


@kernel(nrt=False)
def _pass_pos(pi, inv, q, x):
    """Position of bit x in the permuted order of pass q.

    Pass 0 is the identity. Passes below ``inv.shape[1]`` read the
    position-major table ``inv[x, q]`` (all passes of one bit in one cache
    line, since a correction visits every pass of the bit at once); later
    passes the pass-major inverse ``pi[1, q]``.
    """
    if q == 0:
        return x
    if q < inv.shape[1]:
        return np.int64(inv[x, q])
    return np.int64(pi[1, q, x])


# ----------------------------------------------------------------------------
# Alice: parities of ranges of her own bits (she never sees Bob's)


@kernel(inline="always", nrt=False)
def _word_mask(s, e, w):
    """The bits of word w (positions 64w .. 64w + 63) that lie in [s, e), as a mask."""
    lo = max(s, w << 6) - (w << 6)
    hi = min(e, (w + 1) << 6) - (w << 6)
    if hi - lo == 64:
        return ~np.uint64(0)
    return ((_ONE << np.uint64(hi - lo)) - _ONE) << np.uint64(lo)


@kernel(inline="always", nrt=False)
def _word_parity(x):
    x ^= x >> np.uint64(32)
    x ^= x >> np.uint64(16)
    x ^= x >> np.uint64(8)
    x ^= x >> np.uint64(4)
    x ^= x >> np.uint64(2)
    x ^= x >> np.uint64(1)
    return np.uint8(x & _ONE)


@kernel(nrt=False)
def _build_prefix(packed, perm, pref, f, q):
    """pref[f, q] bit j = parity of bits[f, perm[q, 0..j-1]] for j = 0..n (one gather pass).

    ``packed`` holds the bits as uint64 words (bit i in word i // 64). The
    permuted bits are gathered 64 at a time into a word and turned into
    their running parities with a prefix XOR (x ^= x << 1, << 2, ..., << 32),
    so no bit waits for the parity of the one before it; bits above n stay 0.
    """
    n = perm.shape[1]
    acc = np.uint64(0)  # all ones when the parity of everything before this word is odd
    for w in range(n // 64 + 1):
        lo = w << 6
        hi = min(lo + 64, n)
        g = np.uint64(0)
        for i in range(hi - lo):
            y = perm[q, lo + i]
            g |= ((packed[f, y >> 6] >> np.uint64(y & 63)) & _ONE) << np.uint64(i)
        x = g ^ (g << np.uint64(1))
        x ^= x << np.uint64(2)
        x ^= x << np.uint64(4)
        x ^= x << np.uint64(8)
        x ^= x << np.uint64(16)
        x ^= x << np.uint64(32)
        # x bit i = parity of g bits 0..i; pref needs bits 0..i-1 (exclusive)
        word = (x << np.uint64(1)) ^ acc
        if n - lo < 63:  # last word: bits lo .. n only
            word &= (_ONE << np.uint64(n - lo + 1)) - _ONE
        pref[f, q, w] = word
        acc ^= np.uint64(0) - (x >> np.uint64(63))


@kernel(inline="always", nrt=False)
def _prefix_bit(pref, f, q, j):
    return np.uint8((pref[f, q, j >> 6] >> np.uint64(j & 63)) & _ONE)


@kernel(nrt=False)
def _bitset_range_parity(arr, f, q, s, e):
    """Parity of bits s..e-1 of the bitset ``arr[f, q]`` (uint64 words, LSB first)."""
    return _words_range_parity(arr[f, q], s, e)


@kernel(inline="always", nrt=False)
def _words_range_parity(words, s, e):
    """Parity of bits s..e-1 of the bitset ``words`` (uint64[W], LSB first); O((e - s) / 64)."""
    if e <= s:
        return np.uint8(0)
    ws = s >> 6
    we = (e - 1) >> 6
    x = words[ws] >> np.uint64(s & 63)
    if ws == we:
        nb = e - s
        if nb < 64:
            x &= (_ONE << np.uint64(nb)) - _ONE
        return _word_parity(x)
    for w in range(ws + 1, we):
        x ^= words[w]
    last = words[we]
    nb = e - (we << 6)
    if nb < 64:
        last &= (_ONE << np.uint64(nb)) - _ONE
    return _word_parity(x ^ last)


@kernel(inline="always", nrt=False)
def _par_range(eng, pi, f, q, s, e, track):
    """Parity of ``bits[f, perm[q, s:e]]`` (a party's current bits, permuted order of pass q).

    O(1) from a prefix-parity snapshot of the pass (built on first use, one
    O(n) gather), corrected, when ``track`` (Bob), by the parity of the bits
    flipped since the snapshot inside [s, e): ``eng[4][f, q]`` is a bitset
    over the pass's permuted positions that every flip toggles, so the
    correction costs O((e - s) / 64). Alice's bits never change (``track``
    False). Pass 0 is the identity, so its ranges are read straight from
    the party's packed bits (kept current by every flip), in O((e - s) / 64)
    and from one small array, with no snapshot at all.
    """
    packed = eng[1]
    if q == 0:
        return _words_range_parity(packed[f], s, e)
    pref = eng[2]
    snap = eng[3]
    flips = eng[4]
    if snap[f, q] < 0:
        _build_prefix(packed, pi[0], pref, f, q)
        snap[f, q] = 0
        if track:
            for w in range(flips.shape[2]):
                flips[f, q, w] = np.uint64(0)
    p = _prefix_bit(pref, f, q, e) ^ _prefix_bit(pref, f, q, s)
    if track:
        p ^= _words_range_parity(flips[f, q], s, e)
    return p


@kernel(nrt=False)
def _par_block0(eng, masks, f, q):
    """Parity of block 0 of pass q through its packed membership mask (O(n/64))."""
    packed = eng[1]
    x = np.uint64(0)
    for w in range(packed.shape[1]):
        x ^= packed[f, w] & masks[q, w]
    return _word_parity(x)


@kernel(nrt=False)
def fill_block0_mask(perm, k, out):
    """out = packed membership bitset of perm[0:k] (block 0 of the pass)."""
    for w in range(out.shape[0]):
        out[w] = np.uint64(0)
    for j in range(k):
        x = perm[j]
        out[x >> 6] |= _ONE << np.uint64(x & 63)


# ----------------------------------------------------------------------------
# Bob: bitset helpers and tree walking


@kernel(inline="always", nrt=False)
def _get(tree, f, r, i):
    return (tree[f, i >> 6, r] >> np.uint64(i & 63)) & _ONE


@kernel(inline="always", nrt=False)
def _set(tree, f, r, i, v):
    w = i >> 6
    m = _ONE << np.uint64(i & 63)
    if v:
        tree[f, w, r] |= m
    else:
        tree[f, w, r] &= ~m


@kernel(inline="always", nrt=False)
def _toggle(tree, f, r, i):
    tree[f, i >> 6, r] ^= _ONE << np.uint64(i & 63)


@kernel(inline="always", nrt=False)
def _kpos_get(kpos, f, x):
    return (kpos[f, 0, x >> 6] >> np.uint64(x & 63)) & _ONE


@kernel(inline="always", nrt=False)
def _kpos_set(kpos, f, x):
    kpos[f, 0, x >> 6] |= _ONE << np.uint64(x & 63)


@kernel(nrt=False)
def node_locate(v, geo, n):
    """Global node id -> (pass, start, end, heap index) in the permuted order."""
    P = geo.shape[1] - 1
    q = 0
    while q + 1 < P and geo[G_BASE, q + 1] <= v:
        q += 1
    local = v - geo[G_BASE, q]
    k = geo[G_K, q]
    stride = geo[G_STRIDE, q]
    b = local // stride
    h = local - b * stride
    s = b * k
    e = min(s + k, n)
    depth = 0
    t = h
    while t > 1:
        t >>= 1
        depth += 1
    w = e - s
    if w & (w - 1) == 0 and (w >> depth) > 0:
        # a power-of-two block halves exactly: the node is the (h - 2^depth)-th
        # slice of width w >> depth (what the halving below computes, without its branches)
        w >>= depth
        s += (h - (1 << depth)) * w
        return q, s, s + w, h
    for i in range(depth - 1, -1, -1):
        m = s + (e - s + 1) // 2
        if (h >> i) & 1:
            s = m
        else:
            e = m
    return q, s, e, h


@kernel(inline="always", nrt=False)
def _push(pend, st, f, v, q, s, e, h, tree):
    """Queue node v (pass q, range [s, e), heap index h) unless it is queued already."""
    if _get(tree, f, 2, v) != 0:
        return  # already queued
    _set(tree, f, 2, v, True)
    c = st[f, S_NPEND]
    if c >= pend.shape[1]:
        st[f, S_DONE] = 2
        return
    pend[f, c, P_V] = v
    pend[f, c, P_Q] = q
    pend[f, c, P_S] = s
    pend[f, c, P_E] = e
    pend[f, c, P_H] = h
    st[f, S_NPEND] = c + 1


@kernel(inline="always", nrt=False)
def _mark_known(tree, kpos, pi, f, v, q, s, e, d):
    """Make node v (pass q, range [s, e)) known with error parity d.

    The caller then calls :func:`_after_known` (kept separate so that both
    children of a split are marked before either is used for inference).
    """
    _set(tree, f, 0, v, True)
    _set(tree, f, 1, v, d != 0)


@kernel(nrt=False)
def _kq_row(geo, q):
    """Row of ``kpos`` holding pass q's known positions in its permuted order; -1 if none."""
    if q == 0:
        return 0  # the identity: kpos[f, 0] is already in pass-0 order
    r = geo[G_KSLOT, q]
    return KP_KQ + r if r >= 0 else -1


@kernel(nrt=False)
def _unknown_in_words(words, s, e):
    """(count capped at 2, first index) of the zero bits of ``words`` in [s, e)."""
    z = -1
    c = 0
    w = s >> 6
    while (w << 6) < e and c < 2:
        m = _word_mask(s, e, w)
        u = ~words[w] & m
        if u != 0:
            if z < 0:
                z = (w << 6) + _popcount64((u & (~u + _ONE)) - _ONE)  # index of the lowest set bit
            c += min(_popcount64(u), 2)
        w += 1
    return min(c, 2), z


@kernel(inline="always", nrt=False)
def _popcount64(x):
    """Set bits of a uint64 (SWAR; Warren, Hacker's Delight, 2nd ed., Sec. 5-1)."""
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@kernel(nrt=False)
def _begin_pass(kpos, pi, geo, f, q):
    """Fill pass q's permuted-order copy of the known positions as the pass starts (one O(n) gather)."""
    r = _kq_row(geo, q)
    if r < KP_KQ:
        return
    n = pi.shape[2]
    # branch-free, one word built in a register and stored once per 64 positions:
    # the known bits are close to random here, so a test per bit mispredicts and a
    # read-modify-write of the output word per bit chains stores (perf: 3x slower)
    word = np.uint64(0)
    for j in range(n):
        x = pi[0, q, j]
        word |= ((kpos[f, 0, x >> 6] >> np.uint64(x & 63)) & _ONE) << np.uint64(j & 63)
        if (j & 63) == 63:
            kpos[f, r, j >> 6] = word
            word = np.uint64(0)
    if n & 63:
        kpos[f, r, n >> 6] = word


@kernel(nrt=False)
def _single_unknown(kpos, pi, geo, f, q, s, e):
    """The only position of [s, e) (pass q) not known to be correct; -1 none, -2 several."""
    r = _kq_row(geo, q)
    if r >= 0:
        c, j = _unknown_in_words(kpos[f, r], s, e)
        if c == 0:
            return -1
        if c >= 2:
            return -2
        return np.int64(pi[0, q, j]) if q > 0 else j
    z = -1
    for j in range(s, e):
        y = pi[0, q, j]
        if _kpos_get(kpos, f, y) == 0:
            if z >= 0:
                return -2
            z = y
    return z


@kernel(nrt=False)
def _learn(eng, tree, kpos, pend, st, pi, inv, geo, f, x0, flip0):
    """Bob learns that position x0 is correct once flipped (``flip0``) or as is.

    A flip toggles Bob's bit and the error parity of every known node
    containing it, in every started pass: the deepest known node on each
    pass's root-to-leaf path is a frontier node and goes on the pending list
    if it became odd (Cascade's "cascade" step). The same walk then peels:
    if that deepest known node is small (<= PEEL_MAX) and has exactly one
    position left that is not known to be correct, that position's error is
    the node's error parity, so it is learned too, without asking (the
    erasure "peeling" of LDPC decoding applied to Cascade's disclosed
    parities).
    """
    packed = eng[1]
    flips = eng[4]
    n = eng[0].shape[1]
    stk = eng[5]  # scratch: position, flip flag, position, flip flag, ...
    ninv = inv.shape[1]
    cap = stk.shape[0] // 2
    stk[0] = x0
    stk[1] = 1 if flip0 else 0
    top = 1
    while top > 0:
        top -= 1
        x = stk[2 * top]
        if _kpos_get(kpos, f, x) != 0:
            continue
        flip = stk[2 * top + 1] != 0
        if flip:  # the packed bits only: the caller unpacks them once at the end
            packed[f, x >> 6] ^= _ONE << np.uint64(x & 63)
            st[f, S_FLIPS] += 1
            st[f, S_BTOT] ^= 1
        _kpos_set(kpos, f, x)
        for q in range(st[f, S_PASS]):
            # bit x's place in pass q (as _pass_pos; written out here: a helper call
            # with array arguments costs atomic reference counts per pass and bit)
            if q == 0:
                j = x
            elif q < ninv:
                j = np.int64(inv[x, q])
            else:
                j = np.int64(pi[1, q, x])
            if flip and q > 0:  # pass 0 reads the packed bits, no flip log
                flips[f, q, j >> 6] ^= _ONE << np.uint64(j & 63)
            r = geo[G_KSLOT, q]
            if q > 0 and r >= 0:  # pass q's permuted copy of the known positions
                kpos[f, KP_KQ + r, j >> 6] |= _ONE << np.uint64(j & 63)
            k = geo[G_K, q]
            b = j // k
            s = b * k
            e = min(s + k, n)
            base = geo[G_BASE, q] + b * geo[G_STRIDE, q]
            h = 1
            ds = -1
            de = -1
            dv = -1
            dh = -1
            while _get(tree, f, 0, base + h) != 0:
                if flip:
                    _toggle(tree, f, 1, base + h)
                ds = s
                de = e
                dv = base + h
                dh = h
                if e - s == 1:
                    break
                m = s + (e - s + 1) // 2
                if j < m:
                    e = m
                    h = 2 * h
                else:
                    s = m
                    h = 2 * h + 1
            if dv < 0:
                continue
            odd = _get(tree, f, 1, dv)
            if flip and odd != 0:
                _push(pend, st, f, dv, q, ds, de, dh, tree)
            if 1 < de - ds <= PEEL_MAX and top < cap:
                z = _single_unknown(kpos, pi, geo, f, q, ds, de)
                if z >= 0:
                    stk[2 * top] = z
                    stk[2 * top + 1] = odd
                    top += 1
                    st[f, S_INFERRED] += 1


@kernel(inline="always", nrt=False)
def _after_known(eng, tree, kpos, pend, st, pi, inv, geo, f, v, q, s, e):
    """Use a node that just became known: a leaf teaches its position, a small node may peel."""
    if e - s == 1:
        _learn(eng, tree, kpos, pend, st, pi, inv, geo, f, pi[0, q, s], _get(tree, f, 1, v) != 0)
    elif e - s <= PEEL_MAX:
        z = _single_unknown(kpos, pi, geo, f, q, s, e)
        if z >= 0:
            st[f, S_INFERRED] += 1
            _learn(eng, tree, kpos, pend, st, pi, inv, geo, f, z, _get(tree, f, 1, v) != 0)


@kernel(nrt=False)
def _all_known(kpos, pi, geo, f, q, s, e):
    r = _kq_row(geo, q)
    if r >= 0:
        c, j = _unknown_in_words(kpos[f, r], s, e)
        return c == 0
    for j in range(s, e):
        if _kpos_get(kpos, f, pi[0, q, j]) == 0:
            return False
    return True


@kernel(nrt=False)
def _scratch_test_set_range(kpos, f, s, e, test, mark):
    """Marks of a pass-0 node: True if ``test`` and a bit of s..e-1 of ``kpos[f, 1]`` is
    already set; then, if ``mark``, set them all (and their words' summary bits)."""
    hit = False
    w = s >> 6
    while (w << 6) < e:
        m = _word_mask(s, e, w)
        wd = kpos[f, KP_MARK, w]
        if test and (wd & m):
            hit = True
        if mark:
            kpos[f, KP_MARK, w] = wd | m
            kpos[f, KP_SUMMARY, w >> 6] |= _ONE << np.uint64(w & 63)
        w += 1
    return hit


@kernel(nrt=False)
def _scratch_test_set_perm(kpos, pi, f, q, s, e, test, mark):
    """As :func:`_scratch_test_set_range` for a node of pass q > 0 (positions ``pi[0, q, s:e]``).

    A position's word is read only when the summary says it may hold a
    mark: the marks are sparse, and the summary (n / 4096 words) stays in L1
    while each read of the marks themselves is a likely cache miss.
    """
    hit = False
    for j in range(s, e):
        y = pi[0, q, j]
        wi = y >> 6
        m = _ONE << np.uint64(y & 63)
        if test and not hit:
            if (kpos[f, KP_SUMMARY, wi >> 6] >> np.uint64(wi & 63)) & _ONE:
                if kpos[f, KP_MARK, wi] & m:
                    hit = True
                    if not mark:
                        return True
        if mark:
            kpos[f, KP_MARK, wi] |= m
            kpos[f, KP_SUMMARY, wi >> 6] |= _ONE << np.uint64(wi & 63)
        elif not test:
            return False
    return hit


@kernel(nrt=False)
def _chain_pass1_rows(scr, heads, w, k1, local, link):
    """Chain the local pass-1 rows of ``scr[:w]`` by block (``link``), or empty the chains.

    ``heads[b] - 1`` is the first row of pass-1 block b (0: none); the next
    is ``scr[row, SC_NEXT]``. Unchaining leaves ``heads`` all zero again.
    """
    for i in range(w):
        if scr[i, P_Q] == 1 and scr[i, P_E] - scr[i, P_S] <= local:
            b = scr[i, P_S] // k1
            if link:
                scr[i, SC_NEXT] = heads[b] - 1
                scr[i, SC_HIT] = 0
                heads[b] = i + 1
            else:
                heads[b] = 0


@kernel(nrt=False)
def _pass01_overlaps(scr, heads, pi, k1, sh, t, s, e):
    """The pass-0 node at order index t (positions s..e-1) against the chained pass-1 rows.

    Flags each later pass-1 row holding one of its positions (that row then
    clashes), and returns True if an earlier one does (this node clashes).
    A position's place in pass 1's order is read from the pass-major inverse
    ``pi[1, 1]`` in sequence and its block's chain from the small ``heads``
    table, so neither node's positions are gathered through the permutation
    nor marked in a bitset. ``sh`` = log2(k1) when k1 is a power of two (a
    shift instead of a division), else -1.
    """
    clash = False
    for x in range(s, e):
        j = np.int64(pi[1, 1, x])
        r = heads[j >> sh if sh >= 0 else j // k1] - 1
        while r >= 0:
            if scr[r, P_S] <= j < scr[r, P_E]:
                if scr[r, SC_RANK] > t:
                    scr[r, SC_HIT] = 1
                else:
                    clash = True
            r = scr[r, SC_NEXT]
    return clash


@kernel(nrt=False)
def _level(size):
    """ceil(log2(size)) for size >= 1."""
    lv = 0
    t = 1
    while t < size:
        t <<= 1
        lv += 1
    return lv


# ----------------------------------------------------------------------------
# Bob: one planning step per round


@kernel(nrt=False)
def _start_pass_locally(eng, tree, kpos, pend, st, pi, inv, geo, f):
    """Start pass S_PASS whose only block's parity is implied by the frame parity."""
    n = eng[0].shape[1]
    q = st[f, S_PASS]
    d = st[f, S_ATOT] ^ st[f, S_BTOT]
    v = geo[G_BASE, q] + 1
    _mark_known(tree, kpos, pi, f, v, q, 0, n, d)
    _begin_pass(kpos, pi, geo, f, q)
    st[f, S_PASS] = q + 1
    st[f, S_INFERRED] += 1
    if d:
        _push(pend, st, f, v, q, 0, n, 1, tree)
    _after_known(eng, tree, kpos, pend, st, pi, inv, geo, f, v, q, 0, n)


@kernel(nrt=False)
def _plan_frame(eng, tree, kpos, pend, st, pi, inv, geo, cfg, f, scr, heads):
    n = eng[0].shape[1]
    st[f, S_ACTION] = 0
    st[f, S_NSEL] = 0
    st[f, S_TOPCOUNT] = 0
    for _guard in range(64 * n + 1_000_000):
        if st[f, S_DONE] != 0:
            return
        # 1. compact the pending list to valid frontier odd nodes, deduplicated
        #    (each row carries its node's geometry, so no id is decoded here)
        npend = st[f, S_NPEND]
        w = 0
        for i in range(npend):
            v = pend[f, i, P_V]
            if _get(tree, f, 0, v) == 0 or _get(tree, f, 1, v) == 0:
                _set(tree, f, 2, v, False)
                continue
            # children of heap node h are 2h and 2h + 1, i.e. global ids v + h and v + h + 1
            if pend[f, i, P_E] - pend[f, i, P_S] > 1 and _get(tree, f, 0, v + pend[f, i, P_H]) != 0:
                _set(tree, f, 2, v, False)
                continue  # has known children: not a frontier node any more
            if w != i:
                for c in range(NPCOL):
                    pend[f, w, c] = pend[f, i, c]
            w += 1
        st[f, S_NPEND] = w
        if w == 0:
            # 2. nothing pending: next pass, or done
            q = st[f, S_PASS]
            if cfg[C_CLEAN_STOP] > 0 and q > 0 and q - 1 >= cfg[C_CLEAN_FROM]:
                if st[f, S_FLIPS] == st[f, S_FLIPS0]:
                    st[f, S_STREAK] += 1
                else:
                    st[f, S_STREAK] = 0
                if st[f, S_STREAK] >= cfg[C_CLEAN_STOP]:
                    st[f, S_DONE] = 1
                    return
            if q >= cfg[C_PASSES]:
                st[f, S_DONE] = 1
                return
            st[f, S_FLIPS0] = st[f, S_FLIPS]
            nb = geo[G_NB, q]
            count = nb if q == 0 else nb - 1
            if count == 0:
                _start_pass_locally(eng, tree, kpos, pend, st, pi, inv, geo, f)
                continue
            st[f, S_ACTION] = 2
            st[f, S_TOPCOUNT] = count
            return
        # 3. leaves flip at once; small nodes whose child is all known-correct are
        #    resolved without asking; both can create new pending nodes
        changed = False
        minlv = 1 << 40
        for i in range(w):
            v = pend[f, i, P_V]
            if _get(tree, f, 1, v) == 0:
                continue  # an earlier flip in this loop made it even
            q, s, e, h = pend[f, i, P_Q], pend[f, i, P_S], pend[f, i, P_E], pend[f, i, P_H]
            if e - s > 1 and _get(tree, f, 0, v + h) != 0:
                continue
            if e - s == 1:
                _learn(eng, tree, kpos, pend, st, pi, inv, geo, f, pi[0, q, s], True)
                changed = True
                continue
            m = s + (e - s + 1) // 2
            if e - s <= SMALL_NODE:
                dv = _get(tree, f, 1, v)
                lk = _all_known(kpos, pi, geo, f, q, s, m)
                rk = _all_known(kpos, pi, geo, f, q, m, e)
                if lk or rk:
                    dl = np.uint64(0) if lk else dv
                    vl = v + h
                    _mark_known(tree, kpos, pi, f, vl, q, s, m, dl)
                    _mark_known(tree, kpos, pi, f, vl + 1, q, m, e, dl ^ dv)
                    st[f, S_INFERRED] += 1
                    if dl:
                        _push(pend, st, f, vl, q, s, m, 2 * h, tree)
                    else:
                        _push(pend, st, f, vl + 1, q, m, e, 2 * h + 1, tree)
                    _after_known(eng, tree, kpos, pend, st, pi, inv, geo, f, vl, q, s, m)
                    _after_known(eng, tree, kpos, pend, st, pi, inv, geo, f, vl + 1, q, m, e)
                    changed = True
                    continue
            lv = _level(e - s)
            if lv < minlv:
                minlv = lv
        if changed:
            continue
        # 4. smallest pending nodes first, judged locally: a node (up to
        #    cfg[C_LOCAL] positions) is asked about only if no smaller pending node,
        #    nor an equal one already chosen, shares a position with it (a
        #    correction there could make its search pointless). Larger nodes
        #    wait until they are within `slack` levels of the smallest pending.
        lim = minlv + cfg[C_SLACK]
        # scr rows: a copy of the pending rows, their levels, the order, the selection
        # (one caller-owned buffer, no allocation per frame and round)
        for i in range(w):
            for c in range(NPCOL):
                scr[i, c] = pend[f, i, c]
            scr[i, SC_LV] = _level(pend[f, i, P_E] - pend[f, i, P_S])
            scr[i, SC_SEL] = 0
        # stable counting sort by level (levels < 64): the order of a stable argsort
        for lv in range(65):
            scr[lv, SC_CNT] = 0
        for i in range(w):
            scr[scr[i, SC_LV] + 1, SC_CNT] += 1
        for lv in range(64):
            scr[lv + 1, SC_CNT] += scr[lv, SC_CNT]
        for i in range(w):
            lv = scr[i, SC_LV]
            scr[scr[lv, SC_CNT], SC_ORD] = i
            scr[i, SC_RANK] = scr[lv, SC_CNT]
            scr[lv, SC_CNT] += 1
        # Overlap test by marks: in this order each node (up to cfg[C_LOCAL]
        # bits) marks its positions, and clashes if one is marked already. Valid
        # frontier nodes of one pass never nest, so they are disjoint: a node
        # only has to test if a node of another pass came before it, and to
        # mark only if one of another pass comes after it (the passes that come
        # later are gathered first, as a bit mask per order index).
        # The pair that dominates, pass-0 nodes (the cascade's re-searches: few,
        # small) against pass-1 nodes (many, up to k2 long), is tested the other
        # way: the pass-1 rows are chained by block, and each pass-0 node looks
        # its positions up there (:func:`_pass01_overlaps`); the marks then only
        # serve pairs with a pass >= 2.
        later = np.int64(0)
        for t in range(w - 1, -1, -1):
            i = scr[t, SC_ORD]
            scr[t, SC_LATER] = later
            if scr[i, P_E] - scr[i, P_S] <= cfg[C_LOCAL]:
                later |= np.int64(1) << scr[i, P_Q]
        pair = (later & 3) == 3 and geo[G_NB, 1] <= heads.shape[0]
        k1 = geo[G_K, 1] if pair else 1
        sh = _level(k1) if k1 & (k1 - 1) == 0 else -1
        if pair:
            _chain_pass1_rows(scr, heads, w, k1, cfg[C_LOCAL], True)
        earlier = np.int64(0)
        a = 0
        for t in range(w):
            i = scr[t, SC_ORD]
            q, s, e = scr[i, P_Q], scr[i, P_S], scr[i, P_E]
            if e - s > cfg[C_LOCAL]:
                if scr[i, SC_LV] <= lim:
                    scr[i, SC_SEL] = 1
                continue
            others = ~(np.int64(1) << q)
            if pair and q <= 1:
                others = ~np.int64(3)  # the pass-0/pass-1 pair is not tested by marks
            test = (earlier & others) != 0
            mark = (scr[t, SC_LATER] & others) != 0
            earlier |= np.int64(1) << q
            clash = False
            if pair and q == 1:
                clash = scr[i, SC_HIT] != 0
            elif pair and q == 0:
                clash = _pass01_overlaps(scr, heads, pi, k1, sh, t, s, e)
            if test or mark:
                if q == 0:
                    # pass 0 is the identity: the node is the position range [s, e)
                    clash = _scratch_test_set_range(kpos, f, s, e, test, mark) or clash
                else:
                    clash = _scratch_test_set_perm(kpos, pi, f, q, s, e, test and not clash, mark) or clash
            if not clash:
                scr[i, SC_SEL] = 1
        if pair:
            _chain_pass1_rows(scr, heads, w, k1, cfg[C_LOCAL], False)
        # selected rows first (in pending order), then the others
        for i in range(w):
            if scr[i, SC_SEL]:
                for c in range(NPCOL):
                    pend[f, a, c] = scr[i, c]
                a += 1
        b = a
        for i in range(w):
            if not scr[i, SC_SEL]:
                for c in range(NPCOL):
                    pend[f, b, c] = scr[i, c]
                b += 1
        # clear the marks: the words the summary lists, then the summary
        for cw in range((kpos.shape[2] + 63) >> 6):
            c = kpos[f, KP_SUMMARY, cw]
            while c != 0:
                kpos[f, KP_MARK, (cw << 6) + _popcount64((c & (~c + _ONE)) - _ONE)] = np.uint64(0)
                c &= c - _ONE
            kpos[f, KP_SUMMARY, cw] = np.uint64(0)
        st[f, S_NSEL] = a
        st[f, S_ACTION] = 1
        return
    st[f, S_DONE] = 2  # no progress: inconsistent state, give the frame up


@kernel(nrt=False)
def bob_plan(eng, tree, kpos, pend, st, pi, inv, geo, cfg, scr, heads):
    """Advance every running frame to the point where it must ask Alice something.

    Applies pending flips (leaves) and free inferences, drops stale pending
    nodes, and chooses this round's requests: pending nodes that no smaller
    pending node overlaps (nodes up to ``cfg[C_LOCAL]`` bits), larger ones
    within ``cfg[C_SLACK]`` tree levels of the smallest, or else the
    top-level parities of the next pass. Sets ``st[f, S_ACTION]``;
    ``st[f, S_DONE]`` becomes 1 when the frame is finished, 2 if it had to
    be given up (pending list full, round cap, no progress). ``scr`` is the
    planner's scratch, int64[pend.shape[1], NSCR]; ``heads`` is int32 of at
    least pass 1's block count, all zero (and left so), or shorter to test
    the pass-0/pass-1 pair by marks like the others. The caller has built
    the pass-major inverse of pass 1 (``pi[1, 1]``).
    """
    for f in range(st.shape[0]):
        _plan_one(eng, tree, kpos, pend, st, pi, inv, geo, cfg, f, scr, heads)


@kernel(nrt=False)
def _plan_one(eng, tree, kpos, pend, st, pi, inv, geo, cfg, f, scr, heads):
    if st[f, S_DONE] == 0:
        if st[f, S_ROUNDS] >= cfg[C_MAXROUNDS]:
            st[f, S_DONE] = 2
            st[f, S_ACTION] = 0
            return
        _plan_frame(eng, tree, kpos, pend, st, pi, inv, geo, cfg, f, scr, heads)
    else:
        st[f, S_ACTION] = 0


@kernel(nrt=False)
def bob_layout(st, offs, counts):
    """Lay out this round's answers; returns (range requests, top-level parities, top-level rows, passes).

    ``counts[f]`` (int32, the ``c`` field) is the number of range requests
    of frame f; ``offs[0, f]`` is the index of frame f's first range answer
    and ``offs[1, f]`` of its first top-level answer, counted after all range
    answers (Alice's reply is read as one array). The first three are -1
    when no frame asks anything (every frame is finished); ``passes`` is the
    most passes any frame has started (the permutations the next round needs).
    """
    N = st.shape[0]
    nr = 0
    nt = 0
    rows = 0
    busy = False
    passes = 0
    for f in range(N):
        passes = max(passes, st[f, S_PASS])
        a = st[f, S_ACTION]
        c = st[f, S_NSEL] if a == 1 else 0
        counts[f] = c
        offs[0, f] = nr
        nr += c
        if a != 0:
            busy = True
        if a == 2:
            rows += 1
    offs[0, N] = nr
    if not busy:
        return -1, -1, -1, passes
    for f in range(N):
        offs[1, f] = nr + nt
        if st[f, S_ACTION] == 2:
            nt += st[f, S_TOPCOUNT]
    offs[1, N] = nr + nt
    return nr, nt, rows, passes


@kernel(nrt=False)
def bob_emit(pend, st, geo, roff, out, trows):
    """Write the round's requests as sent: range requests as node ids, top-level requests as rows.

    ``out[roff[f] + i]`` is the global id of the left child of the i-th
    selected node of frame f (heap node h's left child is 2h, i.e. global id
    v + h), whose parity is asked: the ``v`` field of ``cascade.parities``.
    Both parties know the geometry, so the id alone names the range
    (:func:`node_locate`); ``out`` is uint32 when every id fits, else int64.
    ``trows`` gets one row (frame, pass, block size, count) per frame that
    asks for the top-level parities of its next pass: the ``t`` field.
    """
    j = 0
    for f in range(st.shape[0]):
        a = st[f, S_ACTION]
        if a == 1:
            o = roff[f]
            for i in range(st[f, S_NSEL]):
                out[o + i] = pend[f, i, P_V] + pend[f, i, P_H]
        elif a == 2:
            q = st[f, S_PASS]
            trows[j, 0] = f
            trows[j, 1] = q
            trows[j, 2] = geo[G_K, q]
            trows[j, 3] = st[f, S_TOPCOUNT]
            j += 1


# alice_check_requests / alice_answer status values (0: every request is valid and answered)
RQ_COUNTS, RQ_NODE_RANGE, RQ_NODE_EMPTY, RQ_TOP = 1, 2, 3, 4
# alice_answer only: a pass's permutation or a block-0 mask is not built yet (not an error)
RQ_NEED_TABLES = 5


@kernel(nrt=False)
def alice_check_requests(geo, n, counts, nodes, treq, dec, used):
    """Check one ``cascade.parities`` request of Bob's and decode it, before any parity is computed.

    ``counts[f]`` range requests of frame f, in frame order, name nodes by
    global id (``nodes``); ``treq`` rows (f, q, k, c) ask for the first c
    top-level blocks of size k of pass q. Fills the frame, pass, start and
    end of each range request (``dec[0:4, i]``, int64[4, >= len(nodes)]) and
    sets ``used[q]`` (cleared first) for every pass the answers read.

    Returns 0 if everything is valid, else ``RQ_COUNTS`` (a negative count,
    or counts that do not add up to the ids sent), ``RQ_NODE_RANGE`` (an id
    outside the batch's nodes), ``RQ_NODE_EMPTY`` (an id naming no node) or
    ``RQ_TOP`` (a block request out of bounds).
    """
    N = counts.shape[0]
    P = geo.shape[1] - 1
    M = geo[G_BASE, P]
    nr = nodes.shape[0]
    for q in range(used.shape[0]):
        used[q] = 0
    tot = 0
    for f in range(N):
        if counts[f] < 0:
            return RQ_COUNTS
        tot += counts[f]
    if tot != nr:
        return RQ_COUNTS
    i = 0
    for f in range(N):
        for _ in range(counts[f]):
            v = np.int64(nodes[i])
            if v < 0 or v >= M:
                return RQ_NODE_RANGE
            q, s, e, h = node_locate(v, geo, n)
            if h < 1 or e <= s:
                return RQ_NODE_EMPTY
            dec[0, i] = f
            dec[1, i] = q
            dec[2, i] = s
            dec[3, i] = e
            used[q] = 1
            i += 1
    for j in range(treq.shape[0]):
        f, q, k, c = treq[j, 0], treq[j, 1], treq[j, 2], treq[j, 3]
        if f < 0 or f >= N or q < 0 or q >= P or k < 1 or k > n or c < 0 or c > (n + k - 1) // k:
            return RQ_TOP
        used[q] = 1
    return 0


@kernel(nrt=False)
def alice_answer(geo, n, counts, nodes, treq, eng, pi, built, masks, maskk, ask_masks, dec, used, per, rpk, tpk):
    """Check, decode and answer one ``cascade.parities`` request (Alice's whole round in one call).

    Validates the request first (:func:`alice_check_requests`; its status is
    returned and nothing is computed if it is not 0). Returns
    ``RQ_NEED_TABLES``, again before computing anything, if a pass the answers
    read has no permutation yet (``built[q]`` False) or, if ``ask_masks``, a
    single top-level block of more than ``BIG_RANGE`` bits has no membership
    mask for its size: the caller builds them and calls again with
    ``ask_masks`` False (a block whose mask is still missing, e.g. a second
    size asked in the same pass, is then summed as a range). Otherwise writes the parities of
    the range requests into ``rpk`` and those of the top-level blocks (row
    after row) into ``tpk``, bit-packed LSB first (both zeroed by the
    caller, as ``np.packbits(..., bitorder="little")`` would lay them out),
    adds to ``per[f]`` the parities frame f discloses (her leakage count),
    and returns 0.
    """
    status = alice_check_requests(geo, n, counts, nodes, treq, dec, used)
    if status != 0:
        return status
    for q in range(used.shape[0]):
        if used[q] and not built[q]:
            return RQ_NEED_TABLES
    for j in range(treq.shape[0]):
        q, k = treq[j, 1], treq[j, 2]
        if ask_masks and treq[j, 3] == 1 and k > BIG_RANGE and maskk[q] != k:
            return RQ_NEED_TABLES
    for i in range(nodes.shape[0]):
        if _par_range(eng, pi, dec[0, i], dec[1, i], dec[2, i], dec[3, i], False):
            rpk[i >> 3] |= np.uint8(1 << (i & 7))
    o = 0
    for j in range(treq.shape[0]):
        f, q, k, c = treq[j, 0], treq[j, 1], treq[j, 2], treq[j, 3]
        for b in range(c):
            if c == 1 and maskk[q] == k:
                p = _par_block0(eng, masks, f, q)
            else:
                s = b * k
                p = _par_range(eng, pi, f, q, s, min(s + k, n), False)
            if p:
                tpk[o >> 3] |= np.uint8(1 << (o & 7))
            o += 1
        per[f] += c
    for f in range(counts.shape[0]):
        per[f] += counts[f]
    return 0


@kernel(nrt=False)
def bob_absorb_plan(eng, tree, kpos, pend, st, pi, inv, geo, cfg, par, offs, masks, maskk, scr, heads):
    """Take in Alice's parities for this round's requests, then plan each frame's next round.

    ``par`` holds every parity of the round (uint8 0/1); frame f's range
    answers are ``par[offs[0, f] : offs[0, f + 1]]`` and its top-level
    answers ``par[offs[1, f] : offs[1, f + 1]]``. ``eng`` is Bob's tuple
    (bits, packed, pref, snap, flips uint64[N, P, W], scratch); ``masks``/``maskk`` as in
    :func:`alice_answer`. Each frame is planned (as by
    :func:`bob_plan`) right after its answers are absorbed, while its nodes
    are still in cache; frames are independent, so the result is that of
    ``bob_absorb`` for all frames followed by ``bob_plan``. The caller must
    have built the permutations of passes up to ``max(S_PASS) + 1`` (and of
    the one-block passes after it); ``scr`` and ``heads`` as in :func:`bob_plan`.
    """
    for f in range(st.shape[0]):
        if st[f, S_ACTION] != 0:
            _absorb_frame(eng, tree, kpos, pend, st, pi, inv, geo, par, offs, masks, maskk, f)
        _plan_one(eng, tree, kpos, pend, st, pi, inv, geo, cfg, f, scr, heads)


@kernel(nrt=False)
def _prefetch_selected(eng, tree, pend, f, nsel):
    """Cache hints for the words the answers to the first ``nsel`` pending nodes will touch.

    Each answer reads Bob's parity of the asked half (the prefix-parity and
    flip-log words of its pass, or the packed bits for pass 0) and the node
    bitset words of the node and its children: a few random lines per
    answer, which requested together overlap their misses.
    """
    packed = eng[1]
    pref = eng[2]
    flips = eng[4]
    for i in range(nsel):
        v = pend[f, i, P_V]
        q, s, e, h = pend[f, i, P_Q], pend[f, i, P_S], pend[f, i, P_E], pend[f, i, P_H]
        m = s + (e - s + 1) // 2
        prefetch(tree, (f, v >> 6, 0))
        prefetch(tree, (f, (v + h) >> 6, 0))
        if q == 0:
            prefetch(packed, (f, s >> 6))
        else:
            prefetch(pref, (f, q, s >> 6))
            prefetch(pref, (f, q, m >> 6))
            prefetch(flips, (f, q, s >> 6))


@kernel(nrt=False)
def _absorb_frame(eng, tree, kpos, pend, st, pi, inv, geo, par, offs, masks, maskk, f):
    bits = eng[0]
    n = bits.shape[1]
    act = st[f, S_ACTION]
    st[f, S_ROUNDS] += 1
    if act == 1:
        o = offs[0, f]
        nsel = st[f, S_NSEL]
        _prefetch_selected(eng, tree, pend, f, nsel)
        for i in range(nsel):
            v = pend[f, i, P_V]
            q, s, e, h = pend[f, i, P_Q], pend[f, i, P_S], pend[f, i, P_E], pend[f, i, P_H]
            m = s + (e - s + 1) // 2
            dl = np.uint64(par[o + i] ^ _par_range(eng, pi, f, q, s, m, True))
            dv = _get(tree, f, 1, v)
            vl = v + h
            _mark_known(tree, kpos, pi, f, vl, q, s, m, dl)
            _mark_known(tree, kpos, pi, f, vl + 1, q, m, e, dl ^ dv)
            if dl:
                _push(pend, st, f, vl, q, s, m, 2 * h, tree)
            if dl ^ dv:
                _push(pend, st, f, vl + 1, q, m, e, 2 * h + 1, tree)
            _after_known(eng, tree, kpos, pend, st, pi, inv, geo, f, vl, q, s, m)
            _after_known(eng, tree, kpos, pend, st, pi, inv, geo, f, vl + 1, q, m, e)
        st[f, S_LEAK] += nsel
        st[f, S_INFERRED] += nsel  # the sibling of every asked child
    else:
        o = offs[1, f]
        q = st[f, S_PASS]
        count = st[f, S_TOPCOUNT]
        k = geo[G_K, q]
        nb = geo[G_NB, q]
        if q == 0:
            bt = _word_parity(np.uint64(0))
            packed = eng[1]
            for w in range(packed.shape[1]):
                bt ^= _word_parity(packed[f, w])
            at = np.uint8(0)
            for b in range(count):
                at ^= par[o + b]
            st[f, S_BTOT] = bt
            st[f, S_ATOT] = at
        acc = np.uint64(0)
        for b in range(nb):
            s = b * k
            e = min(s + k, n)
            if b < count:
                if count == 1 and maskk[q] == k:
                    bp = _par_block0(eng, masks, f, q)
                else:
                    bp = _par_range(eng, pi, f, q, s, e, True)
                d = np.uint64(par[o + b] ^ bp)
                acc ^= d
            else:
                d = np.uint64(st[f, S_ATOT] ^ st[f, S_BTOT]) ^ acc
                st[f, S_INFERRED] += 1
            v = geo[G_BASE, q] + b * geo[G_STRIDE, q] + 1
            _mark_known(tree, kpos, pi, f, v, q, s, e, d)
            if d:
                _push(pend, st, f, v, q, s, e, 1, tree)
        _begin_pass(kpos, pi, geo, f, q)
        st[f, S_PASS] = q + 1
        st[f, S_LEAK] += count
        if k <= PEEL_MAX:
            for b in range(nb):
                s = b * k
                v = geo[G_BASE, q] + b * geo[G_STRIDE, q] + 1
                _after_known(eng, tree, kpos, pend, st, pi, inv, geo, f, v, q, s, min(s + k, n))


def _warmup() -> None:
    """Compile every kernel on a tiny batch (called by ``qkdpost warmup``)."""
    from .protocol import reconcile_cascade

    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, size=(2, 200), dtype=np.uint8)
    b = a ^ (rng.random((2, 200)) < 0.05).astype(np.uint8)
    reconcile_cascade(a, b, qber=0.05, seed=1, preset="option7")
