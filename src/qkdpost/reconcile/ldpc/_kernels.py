"""Numba kernels for LDPC reconciliation: PEG construction, syndromes, decoding.

Kernels take plain typed arrays, never raise, and report failure as a status
value. Validation lives in the public modules (:mod:`.codes`,
:mod:`.protocol`). A parity-check matrix ``H`` (m x n) is held twice:

- by rows (CSR): ``row_ptr`` (m+1, int64), ``col_idx`` (E, int32): the
  variables of check ``j`` are ``col_idx[row_ptr[j]:row_ptr[j+1]]``;
- by columns: ``col_ptr`` (n+1, int64), ``row_idx`` (E, int32).

LLR convention: ``L = log P(x=0) / P(x=1)``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ..._jit import kernel, register
from ._lanes import LANES, prefetch_row, row_in, row_in_keep, row_out, row_out_all, row_parity

register(__name__)

# ---------------------------------------------------------------------------
# Check-node function phi(x) = -ln tanh(x/2) as a float32 lookup table.
#
# Sum-product in the "log-tanh" form (Gallager 1963; e.g. Ryan & Lin,
# Channel Codes, CUP 2009, Eq. 5.27): the check-to-variable message is
#     R_cv = (-1)^s_c * prod_{u != v} sign(Q_uc) * phi( sum_{u != v} phi(|Q_uc|) )
# with phi its own inverse. The table holds phi at bin centres of width
# 1/PHI_SCALE on [0, PHI_XMAX); larger arguments map to the last bin (phi is
# below 2.3e-7 there). The largest message magnitude is phi(0.5/PHI_SCALE)
# ~ 7.6, i.e. a check never claims more than 1 - 5e-4 certainty.
# ---------------------------------------------------------------------------
PHI_SCALE = 512.0
PHI_XMAX = 16.0
PHI_BINS = int(PHI_SCALE * PHI_XMAX)


def _make_phi_lut() -> np.ndarray:
    x = (np.arange(PHI_BINS, dtype=np.float64) + 0.5) / PHI_SCALE
    return (-np.log(np.tanh(x / 2.0))).astype(np.float32)


PHI_LUT = _make_phi_lut()

# LLR used for positions whose value Bob knows (shortened / revealed bits).
LLR_KNOWN = np.float32(60.0)

PF_DIST = 2
# Lanes still busy when nothing is left to refill, at or below which the
# frames are finished one at a time (_scalar_continue).
SCALAR_TAIL = 2
PHI_SCALE32 = np.float32(PHI_SCALE)
PHI_XCLAMP32 = np.float32((PHI_BINS - 1) / PHI_SCALE)

# Decoder status per frame.
DECODED = 0
NOT_CONVERGED = 1


# ---------------------------------------------------------------------------
# Deterministic PRNG for code construction (xorshift64*, Vigna 2016,
# doi:10.1145/2845077). Platform independent, so the shipped codes
# regenerate bit for bit.
# ---------------------------------------------------------------------------
@kernel(inline="always")
def _xs_next(state):
    x = state[0]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    state[0] = x
    return x * np.uint64(0x2545F4914F6CDD1D)


@kernel(inline="always")
def _bucket_move(c, frm, to, order, pos, bstart):
    """Move check c from bucket frm to bucket to > frm (buckets contiguous in order)."""
    b = frm
    while b < to:
        last = bstart[b + 1] - 1
        other = order[last]
        pc = pos[c]
        order[pc] = other
        pos[other] = pc
        order[last] = c
        pos[c] = last
        bstart[b + 1] -= 1
        b += 1


# Extra edges a check may take beyond its target degree, to avoid a 4-cycle.
PEG_SLACK = 2


@kernel()
def peg_build(var_deg, chk_target, max_reach, seed, vc_out):
    """Progressive edge growth (Hu, Eleftheriou, Arnold, IEEE TIT 51, 386, 2005,
    doi:10.1109/TIT.2004.839541), with a bounded tree search.

    Variables are processed in index order (callers sort them by increasing
    degree, as in the paper). Each new edge of variable ``v`` goes to a check
    of lowest current degree, among those not full (degree < target) and
    farthest from ``v`` in the current graph: the breadth-first tree from
    ``v`` is grown layer by layer until it holds ``max_reach`` checks or
    stops growing; layers 0 and 1 are always complete, so a 4-cycle is only
    made when every non-full check is within distance 1. Ties are broken by
    a seeded xorshift64* generator.

    Parameters
    ----------
    var_deg : int32 (n,)
    chk_target : int32 (m,)   target check degrees, ``sum == var_deg.sum()``
    max_reach : int64         size bound of the search tree, in checks
    seed : uint64             nonzero
    vc_out : int32 (E,)       out: checks of variable v at ``var_ptr[v]:var_ptr[v+1]``

    Returns
    -------
    int64 : number of edges that closed a 4-cycle (0 means girth >= 6), or
    -1 if some edge found no admissible check.
    """
    n = var_deg.shape[0]
    m = chk_target.shape[0]
    var_ptr = np.zeros(n + 1, np.int64)
    for v in range(n):
        var_ptr[v + 1] = var_ptr[v] + var_deg[v]
    chk_ptr = np.zeros(m + 1, np.int64)
    maxd = 0
    for c in range(m):
        chk_ptr[c + 1] = chk_ptr[c] + chk_target[c] + PEG_SLACK
        if chk_target[c] > maxd:
            maxd = chk_target[c]
    cv = np.full(chk_ptr[m], -1, np.int32)
    cdeg = np.zeros(m, np.int32)
    full = maxd + 1
    # buckets 0..maxd by current degree, bucket `full` for saturated checks
    bstart = np.zeros(full + 2, np.int64)
    for b in range(1, full + 2):
        bstart[b] = m
    order = np.arange(m).astype(np.int32)
    state = np.empty(1, np.uint64)
    state[0] = seed
    for i in range(m - 1, 0, -1):  # Fisher-Yates shuffle of the initial order
        j = np.int64(_xs_next(state) % np.uint64(i + 1))
        t = order[i]
        order[i] = order[j]
        order[j] = t
    pos = np.empty(m, np.int32)
    for i in range(m):
        pos[order[i]] = i
    cmark = np.zeros(m, np.int64)
    cdepth = np.zeros(m, np.int32)
    vmark = np.zeros(n, np.int64)
    queue = np.empty(m, np.int32)
    cv[:] = -1
    stamp = np.int64(0)
    four_cycles = np.int64(0)
    for v in range(n):
        for k in range(var_deg[v]):
            stamp += 1
            vmark[v] = stamp
            qlen = 0
            for e in range(var_ptr[v], var_ptr[v] + k):
                c = vc_out[e]
                cmark[c] = stamp
                cdepth[c] = 0
                queue[qlen] = c
                qlen += 1
            depth = 0
            if k > 0:
                lay_start = 0
                lay_end = qlen
                while qlen < m:
                    if depth >= 1 and qlen >= max_reach:
                        break
                    for qi in range(lay_start, lay_end):
                        c = queue[qi]
                        for ee in range(chk_ptr[c], chk_ptr[c] + cdeg[c]):
                            u = cv[ee]
                            if vmark[u] == stamp:
                                continue
                            vmark[u] = stamp
                            for e2 in range(var_ptr[u], var_ptr[u + 1]):
                                c2 = vc_out[e2]
                                if c2 < 0:
                                    break
                                if cmark[c2] != stamp:
                                    cmark[c2] = stamp
                                    cdepth[c2] = depth + 1
                                    queue[qlen] = c2
                                    qlen += 1
                        if depth >= 1 and qlen >= max_reach:
                            break
                    if qlen == lay_end:
                        break
                    lay_start = lay_end
                    lay_end = qlen
                    depth += 1
            # pick: exclude reached checks with depth <= excl, relax excl if
            # needed; at excl == 1 a saturated check (over its target degree)
            # is preferred to closing a 4-cycle.
            chosen = -1
            excl = max(depth, 1)
            while chosen < 0 and excl >= 1:
                top = full if excl > 1 else full + 1
                for b in range(0, top):
                    lo = bstart[b]
                    hi = bstart[b + 1]
                    size = hi - lo
                    if size <= 0:
                        continue
                    off = np.int64(_xs_next(state) % np.uint64(size))
                    for t in range(size):
                        c = order[lo + (off + t) % size]
                        if cmark[c] == stamp and cdepth[c] <= excl:
                            continue
                        if b == full:
                            if cdeg[c] >= chk_target[c] + PEG_SLACK:
                                continue
                            if chosen >= 0 and cdeg[c] >= cdeg[chosen]:
                                continue
                        chosen = c
                        if b < full:
                            break
                    if chosen >= 0:
                        break
                if chosen < 0:
                    excl -= 1
            if chosen < 0:
                # every other check is adjacent to v already
                for c in range(m):
                    if cmark[c] == stamp and cdepth[c] == 0:
                        continue
                    if cdeg[c] >= chk_target[c] + PEG_SLACK:
                        continue
                    if chosen < 0 or cdeg[c] < cdeg[chosen]:
                        chosen = c
            if chosen < 0 or (cmark[chosen] == stamp and cdepth[chosen] == 0):
                return np.int64(-1)
            if cmark[chosen] == stamp and cdepth[chosen] == 1:
                four_cycles += 1
            vc_out[var_ptr[v] + k] = chosen
            cv[chk_ptr[chosen] + cdeg[chosen]] = v
            old = cdeg[chosen]
            cdeg[chosen] = old + 1
            if old >= chk_target[chosen]:
                pass  # already in the saturated bucket
            elif old + 1 >= chk_target[chosen]:
                _bucket_move(chosen, old, full, order, pos, bstart)
            else:
                _bucket_move(chosen, old, old + 1, order, pos, bstart)
    return four_cycles


@kernel()
def untainted_order(col_ptr, row_idx, row_ptr, col_idx, score_order, out):
    """Greedy untainted puncturing set (Elkouss, Martinez-Mateo, Martin, IEEE
    Wireless Commun. Lett. 1, 585, 2012, doi:10.1109/WCL.2012.082712.120531).

    Variables are visited in ``score_order`` (smallest 2-hop neighbourhood
    first); a variable is taken if no check next to it touches an already
    punctured variable, and its 2-hop neighbourhood becomes tainted. Every
    check then has at most one punctured neighbour, so the punctured
    columns of H have disjoint supports (full column rank) and each
    punctured bit is recoverable in one step.

    Returns the number of variables written to ``out`` (int32).
    """
    n = col_ptr.shape[0] - 1
    m = row_ptr.shape[0] - 1
    chk_used = np.zeros(m, np.uint8)
    cnt = 0
    for i in range(n):
        v = score_order[i]
        ok = True
        for e in range(col_ptr[v], col_ptr[v + 1]):
            if chk_used[row_idx[e]]:
                ok = False
                break
        if not ok:
            continue
        for e in range(col_ptr[v], col_ptr[v + 1]):
            chk_used[row_idx[e]] = 1
        out[cnt] = v
        cnt += 1
    return cnt


@kernel()
def parse_ints(buf, out):
    """Whitespace-separated decimal integers of an ASCII text (an alist file) into ``out``.

    buf : uint8 (L,) the text; out : int64, at least L // 2 + 1 long.
    Returns the number of integers written, or -1 if the text holds anything
    else (a byte that is neither a digit, whitespace nor a leading sign, a
    lone sign, or a number of more than 18 digits).
    """
    cnt = 0
    i = 0
    L = buf.shape[0]
    while i < L:
        c = buf[i]
        if c == 32 or (9 <= c <= 13):
            i += 1
            continue
        neg = False
        if c == 45 or c == 43:  # '-' or '+'
            neg = c == 45
            i += 1
        v = np.int64(0)
        nd = 0
        while i < L:
            c = buf[i]
            if 48 <= c <= 57:
                v = v * 10 + np.int64(c - 48)
                nd += 1
                i += 1
            elif c == 32 or (9 <= c <= 13):
                break
            else:
                return np.int64(-1)
        if nd == 0 or nd > 18:
            return np.int64(-1)
        out[cnt] = -v if neg else v
        cnt += 1
    return np.int64(cnt)


@kernel(parallel=True)
def syndrome_batch(row_ptr, col_idx, x, out):
    """out[f, j] = XOR of x[f, col_idx[row_ptr[j]:row_ptr[j+1]]] (H x mod 2).

    x : uint8 (N, n); out : uint8 (N, m).
    """
    nf = x.shape[0]
    m = row_ptr.shape[0] - 1
    for f in prange(nf):
        for j in range(m):
            s = np.uint8(0)
            for e in range(row_ptr[j], row_ptr[j + 1]):
                s ^= x[f, col_idx[e]]
            out[f, j] = s


# ---------------------------------------------------------------------------
# Decoder: layered sum-product, LANES frames at a time (SIMD across frames).
# Messages are laid out [edge][lane] and posteriors [variable][lane] (float32),
# so the update of one edge for all eight frames is one AVX2 register
# operation (the vector steps are in ._lanes). Every lane performs the same
# float32 operations in the same order as a one-frame scalar layered decoder
# (tests/oracles/ldpc.py: scalar_layered_decode), so messages, decisions and
# iteration counts are bit-identical to it; the tests check this.
# ---------------------------------------------------------------------------
@kernel()
def decode_stream(row_ptr, col_idx, syn, limits, L, R, which, iters_out, lut):
    """Layered sum-product decoding of frames ``which`` through LANES lanes, refilled as they finish.

    Syndrome decoding for Slepian-Wolf coding (Liveris, Xiong, Georghiades,
    IEEE Commun. Lett. 6, 440, 2002, doi:10.1109/LCOMM.2002.804244): the
    check-to-variable message of check j is multiplied by (-1)^syn[j].
    Layered schedule: Hocevar, IEEE SIPS 2004, doi:10.1109/SIPS.2004.1363033.
    Check rule in the log-tanh form (Gallager 1963; Ryan & Lin, Channel
    Codes, CUP 2009, Eq. 5.27) with phi from ``lut`` (:data:`PHI_LUT`):
    R_cv = (-1)^s_c prod_{u != v} sign(Q_uc) phi(sum_{u != v} phi(|Q_uc|)).

    Each lane holds one frame (its posteriors, messages and syndrome
    transposed into lane-minor buffers). After every iteration the
    unsatisfied checks of all lanes are counted; a lane whose hard decision
    reproduces its syndrome, whose count has not reached a new minimum for
    ``patience`` iterations (0 = never), or that has run ``max_iter``
    iterations is written back and refilled with the next frame, so lanes
    do not idle while slower frames of the same group finish. A frame's
    hard decision is checked against its syndrome when it is loaded
    (frames that already match are done in 0 iterations), so a loaded lane
    iterates at once; while all lanes iterate the stores are unmasked.
    When nothing is left to refill and at most ``SCALAR_TAIL`` lanes are
    busy, those frames are finished one at a time (:func:`_scalar_continue`).

    Parameters
    ----------
    syn : uint8 (N, m); limits : int64 (2,) = (max_iter, patience)
    L : float32 (N, n) in/out; R : float32 (N, E) in/out
    which : int64 (K,) frames to decode, in order
    iters_out : int64 (K,) out: iterations used if decoded (0 when the
        input already matched), else ``-(iterations used) - 1``
    lut : float32 (PHI_BINS,)
    """
    W = LANES
    max_iter = limits[0]
    patience = limits[1]
    n = L.shape[1]
    E = R.shape[1]
    m = row_ptr.shape[0] - 1
    maxdeg = 0
    for j in range(m):
        d = row_ptr[j + 1] - row_ptr[j]
        if d > maxdeg:
            maxdeg = d
    Lg = np.zeros((n, W), np.float32)
    Rg = np.zeros((E, W), np.float32)
    sg = np.zeros((m, W), np.uint8)
    T = np.empty((maxdeg, W), np.float32)
    P = np.empty((maxdeg, W), np.float32)
    SG = np.empty((maxdeg, W), np.int32)
    LO = np.empty((maxdeg, W), np.float32)
    RO = np.empty((maxdeg, W), np.float32)
    S = np.empty(W, np.float32)
    NEG = np.empty(W, np.int32)
    ACT = np.zeros(W, np.int32)     # lane is iterating
    slot = np.full(W, -1, np.int64)  # index into `which` held by the lane, -1 empty
    it_l = np.zeros(W, np.int64)
    best = np.zeros(W, np.int64)
    since = np.zeros(W, np.int64)
    U = np.empty(W, np.int64)
    acc = np.empty(W, np.int32)
    K = which.shape[0]
    nxt = 0
    busy = 0
    for l in range(W):
        nxt = _skip_decoded(row_ptr, col_idx, L, syn, which, nxt, iters_out)
        if nxt < K:
            _lane_load(L, R, syn, which[nxt], Lg, Rg, sg, l)
            slot[l] = nxt
            ACT[l] = 1
            it_l[l] = 0
            best[l] = m + 1
            since[l] = 0
            nxt += 1
            busy += 1
    while busy > 0:
        if nxt >= K and busy <= SCALAR_TAIL:
            # Nothing left to refill and at most SCALAR_TAIL lanes still busy: finish them one frame at a
            # time (a vector step costs the same with 1 active lane as with 8; the scalar loop is ~3x
            # faster per frame). Same float32 operations, so the results do not change.
            for l in range(W):
                if slot[l] < 0:
                    continue
                f = which[slot[l]]
                _lane_store(Lg, Rg, L, R, f, l)
                iters_out[slot[l]] = _scalar_continue(row_ptr, col_idx, syn[f], L[f], R[f], lut, T[:, 0],
                                                      P[:, 0], SG[:, 0], it_l[l], best[l], since[l],
                                                      max_iter, patience)
                ACT[l] = 0
                slot[l] = -1
            break
        for j in range(m):
            lo = row_ptr[j]
            hi = row_ptr[j + 1]
            for l in range(W):
                NEG[l] = np.int32(sg[j, l])
                S[l] = np.float32(0.0)
            if j + PF_DIST < m:
                for e in range(row_ptr[j + PF_DIST], row_ptr[j + PF_DIST + 1]):
                    prefetch_row(Lg, col_idx[e])
            if busy == W:  # every lane iterating: unmasked stores (the same values)
                row_in(Lg, Rg, T, P, SG, S, NEG, lut, col_idx, lo, hi)
                row_out_all(Lg, Rg, T, P, SG, S, NEG, lut, col_idx, lo, hi)
            else:  # idle lanes keep their old rows (LO, RO)
                row_in_keep(Lg, Rg, T, P, SG, S, NEG, lut, LO, RO, col_idx, lo, hi)
                row_out(Lg, Rg, T, P, SG, S, NEG, lut, ACT, LO, RO, col_idx, lo, hi)
        _unsatisfied_lanes(row_ptr, col_idx, Lg, sg, U, acc)
        for l in range(W):
            if slot[l] < 0:
                continue
            done = False
            it_l[l] += 1
            if U[l] == 0:
                iters_out[slot[l]] = it_l[l]
                done = True
            else:
                if patience > 0:
                    if U[l] < best[l]:
                        best[l] = U[l]
                        since[l] = 0
                    else:
                        since[l] += 1
                        if since[l] >= patience:
                            done = True
                if it_l[l] >= max_iter:
                    done = True
                if done:
                    iters_out[slot[l]] = -it_l[l] - 1
            if done:
                ACT[l] = 0
                _lane_store(Lg, Rg, L, R, which[slot[l]], l)
                slot[l] = -1
                busy -= 1
                nxt = _skip_decoded(row_ptr, col_idx, L, syn, which, nxt, iters_out)
                if nxt < K:
                    _lane_load(L, R, syn, which[nxt], Lg, Rg, sg, l)
                    slot[l] = nxt
                    ACT[l] = 1
                    it_l[l] = 0
                    best[l] = m + 1
                    since[l] = 0
                    nxt += 1
                    busy += 1


@kernel(inline="always")
def _skip_decoded(row_ptr, col_idx, L, syn, which, nxt, iters_out):
    """From position ``nxt`` of ``which``, mark frames whose hard decision already reproduces
    their syndrome as decoded in 0 iterations; return the position of the first frame that is
    not (or K). Counting here, one frame at a time, lets a lane start iterating as soon as it is
    loaded (no masked iteration waiting for its first count)."""
    K = which.shape[0]
    while nxt < K:
        f = which[nxt]
        if _unsatisfied_one(row_ptr, col_idx, L[f], syn[f]) != 0:
            break
        iters_out[nxt] = 0
        nxt += 1
    return nxt


@kernel(inline="always")
def _phi1(x, lut):
    """One-lane phi lookup: the clamp, scale and truncation of ``_lanes._phi_vec``."""
    x = min(max(x, np.float32(0.0)), PHI_XCLAMP32)
    return lut[np.int32(x * PHI_SCALE32)]


@kernel(inline="always")
def _unsatisfied_one(row_ptr, col_idx, L, syn):
    """Number of checks whose parity under the hard decision of L differs from syn."""
    u = 0
    for j in range(row_ptr.shape[0] - 1):
        s = np.int32(syn[j])
        for e in range(row_ptr[j], row_ptr[j + 1]):
            s ^= np.int32(L[col_idx[e]] < 0)
        u += s
    return u


@kernel()
def _scalar_continue(row_ptr, col_idx, syn, L, R, lut, T, P, SG, it, best, since, max_iter, patience):
    """Continue decoding one frame outside the lanes, from a lane's state.

    The layered log-tanh update of :func:`decode_stream` for one frame
    (same float32 operations in the same order, so the same messages and
    decisions), with the lane's counters: ``it`` iterations done, ``best``
    unsatisfied-check minimum, ``since`` iterations without a new minimum.
    Returns the status of :func:`decode_stream`'s ``iters_out``. T, P, SG:
    scratch of at least the largest check degree (strided views are fine).
    """
    m = row_ptr.shape[0] - 1
    while True:
        for j in range(m):
            lo = row_ptr[j]
            hi = row_ptr[j + 1]
            neg = np.int32(syn[j])
            S = np.float32(0.0)
            for e in range(lo, hi):
                t = L[col_idx[e]] - R[e]
                T[e - lo] = t
                sg = np.int32(t < np.float32(0.0))
                SG[e - lo] = sg
                neg ^= sg
                p = _phi1(abs(t), lut)
                P[e - lo] = p
                S += p
            for e in range(lo, hi):
                r = _phi1(S - P[e - lo], lut) * np.float32(1 - 2 * (neg ^ SG[e - lo]))
                R[e] = r
                L[col_idx[e]] = T[e - lo] + r
        u = _unsatisfied_one(row_ptr, col_idx, L, syn)
        it += 1
        if u == 0:
            return np.int64(it)
        if patience > 0:
            if u < best:
                best = u
                since = 0
            else:
                since += 1
                if since >= patience:
                    return np.int64(-it - 1)
        if it >= max_iter:
            return np.int64(-it - 1)


@kernel(inline="always")
def _lane_load(L, R, syn, f, Lg, Rg, sg, l):
    """Copy frame f's posteriors, messages and syndrome into lane l."""
    for v in range(L.shape[1]):
        Lg[v, l] = L[f, v]
    for e in range(R.shape[1]):
        Rg[e, l] = R[f, e]
    for j in range(syn.shape[1]):
        sg[j, l] = syn[f, j]


@kernel(inline="always")
def _lane_store(Lg, Rg, L, R, f, l):
    """Copy lane l's posteriors and messages back to frame f."""
    for v in range(L.shape[1]):
        L[f, v] = Lg[v, l]
    for e in range(R.shape[1]):
        R[f, e] = Rg[e, l]


@kernel(inline="always")
def _unsatisfied_lanes(row_ptr, col_idx, L, synT, out, acc):
    """out[l] = number of checks whose parity under lane l's hard decision differs from synT[:, l]."""
    W = LANES
    m = row_ptr.shape[0] - 1
    for l in range(W):
        out[l] = 0
    for j in range(m):
        for l in range(W):
            acc[l] = np.int32(synT[j, l])
        row_parity(L, col_idx, row_ptr[j], row_ptr[j + 1], acc)
        for l in range(W):
            out[l] += acc[l]


@kernel(parallel=True)
def decode_batch(row_ptr, col_idx, syn, limits, L, R, which, iters_out, lut):
    """Decode frames ``which`` of a batch, state in caller-owned buffers.

    syn : uint8 (N, m); limits : int64 (2,) or (3,) = (max_iter, patience[, workers]);
    L : float32 (N, n) in/out: posteriors (start: channel LLRs, 0 for
    punctured, +-LLR_KNOWN for known positions; hard decision L < 0 -> 1);
    R : float32 (N, E) in/out: check-to-variable messages in row order
    (start: 0); which : int64 (K,) frame indices; iters_out : int64 (K,)
    out: iterations used if decoded (>= 0, 0 when the input already
    matched the syndrome), else ``-(iterations used) - 1``; lut : float32
    :data:`PHI_LUT` (an argument: Numba does not cache kernels that read
    large global arrays).

    Warm start (blind rounds): add the change of the channel LLR of the
    revealed positions to L and call again; the decoder continues from its
    messages. The frames are split over ``workers`` (default 1, at most
    ``ceil(K / LANES)``) run in ``prange``, each streaming its share through
    LANES lanes with :func:`decode_stream`; callers pass the number of
    threads (``numba.get_num_threads()`` inside the kernel would stop Numba
    from caching it). A frame's result does not depend
    on the other frames (the tests compare with a one-frame scalar decoder,
    bit for bit).
    """
    K = which.shape[0]
    nw = limits[2] if limits.shape[0] > 2 else 1
    nw = max(1, min(nw, (K + LANES - 1) // LANES))
    for w in prange(nw):
        mine = which[w::nw].copy()
        out = np.empty(mine.shape[0], np.int64)
        decode_stream(row_ptr, col_idx, syn, limits, L, R, mine, out, lut)
        for i in range(mine.shape[0]):
            iters_out[w + i * nw] = out[i]


@kernel()
def bsc_llr(bits, qber, known_mask, known_vals, out):
    """Channel LLRs for Bob's frame: log((1-q)/q) * (1 - 2 y) on key positions,
    0 on punctured positions (mask 2), +-LLR_KNOWN on known positions (mask 1).

    bits, known_mask, known_vals : uint8 (n,); out : float32 (n,).
    """
    a = np.float32(math.log((1.0 - qber) / qber))
    for v in range(bits.shape[0]):
        k = known_mask[v]
        if k == 1:
            out[v] = -LLR_KNOWN if known_vals[v] else LLR_KNOWN
        elif k == 2:
            out[v] = np.float32(0.0)
        else:
            out[v] = -a if bits[v] else a


def _warmup() -> None:
    """Compile every kernel on a tiny code."""
    var_deg = np.full(12, 2, np.int32)
    var_deg[8:] = 3
    chk = np.full(7, 4, np.int32)  # 8*2 + 4*3 = 28 = 7*4 edges
    vc = np.full(int(var_deg.sum()), -1, np.int32)
    peg_build(var_deg, chk, np.int64(100), np.uint64(1), vc)
    col_ptr = np.zeros(13, np.int64)
    col_ptr[1:] = np.cumsum(var_deg)
    rows = vc.copy()
    cols = np.repeat(np.arange(12, dtype=np.int32), var_deg)
    o = np.lexsort((cols, rows))
    row_ptr = np.zeros(8, np.int64)
    np.add.at(row_ptr, rows + 1, 1)
    row_ptr = np.cumsum(row_ptr)
    col_idx = cols[o].astype(np.int32)
    untainted_order(col_ptr, rows, row_ptr, col_idx, np.arange(12, dtype=np.int32), np.empty(12, np.int32))
    parse_ints(np.frombuffer(b"3 -1 +7", np.uint8), np.empty(4, np.int64))
    x = np.zeros((2, 12), np.uint8)
    s = np.zeros((2, 7), np.uint8)
    syndrome_batch(row_ptr, col_idx, x, s)
    llr = np.empty((2, 12), np.float32)
    for f in range(2):
        bsc_llr(x[f], 0.05, np.zeros(12, np.uint8), np.zeros(12, np.uint8), llr[f])
    decode_batch(row_ptr, col_idx, s, np.array([5, 0], np.int64), llr, np.zeros((2, col_idx.shape[0]), np.float32),
                 np.arange(2, dtype=np.int64), np.empty(2, np.int64), PHI_LUT)
