"""Slow, obviously-correct versions of the simulator kernels (pure Python).

Each function mirrors one kernel of ``qkdpost.simulate._kernels`` with plain
loops, exact integers or ``heapq``, and draws its random numbers from the same
SplitMix64 stream in the same order, so results can be compared exactly.
"""

from __future__ import annotations

import heapq
import math
from fractions import Fraction

MASK64 = (1 << 64) - 1


class SplitMix64:
    """SplitMix64 (Steele, Lea, Flood 2014; Vigna's reference splitmix64.c)."""

    def __init__(self, state: int):
        self.state = state & MASK64

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def u01(self) -> float:
        return (self.next_u64() >> 11) * 2.0**-53


def sort_events(t: list[float], key: list[int]) -> tuple[list[float], list[int]]:
    """Stable sort by time."""
    order = sorted(range(len(t)), key=lambda i: t[i])
    return [t[i] for i in order], [key[i] for i in order]


def dead_time(cand_t, cand_k, cutoff, det_par, state, rng: SplitMix64, max_pending: int):
    """Event-driven dead time and afterpulsing with a heap of pending afterpulses.

    Returns (out_t, out_k, lost_per_det, state_last, pending) where pending is
    a list of (time, det) still waiting (>= cutoff).
    """
    n_det = len(det_par)
    last = [state[d][0] for d in range(n_det)]
    heap: list[tuple[float, int]] = []
    for d in range(n_det):
        for x in state[d][1:]:
            if x != math.inf:
                heapq.heappush(heap, (x, d))
    out_t, out_k = [], []
    lost = [0] * n_det
    i = 0
    while True:
        tc = cand_t[i] if i < len(cand_t) else math.inf
        if heap and heap[0][0] < tc and heap[0][0] < cutoff:
            t, d = heapq.heappop(heap)
            key = (-2 << 3) | d
        elif tc < cutoff:
            t, key = tc, cand_k[i]
            d = key & 7
            i += 1
        else:
            break
        dead, p_ap, tau = det_par[d]
        if t - last[d] < dead:
            lost[d] += 1
            continue
        out_t.append(t)
        out_k.append(key)
        last[d] = t
        if p_ap > 0 and rng.u01() < p_ap:
            ta = t + dead - tau * math.log(1.0 - rng.u01())
            if sum(1 for _, dd in heap if dd == d) < max_pending:
                heapq.heappush(heap, (ta, d))
    return out_t, out_k, lost, last, sorted(heap)


def to_ticks_exact(t_local: float, a: Fraction, tick: Fraction, off: Fraction, f: Fraction, d: Fraction) -> int:
    """floor(B(a + t)/tick) with exact rational arithmetic."""
    x = a + Fraction(t_local)
    b = off + x * (1 + f) + d * x * x / 2
    return math.floor(b / tick)


def decode_slot(word: int, z_thr: int, c0: int, c1: int) -> int:
    """Alice's packed slot byte from one 64-bit random word (see decoy_choices)."""
    bit = word & 1
    basis = 0 if ((word >> 1) & 0x7FFFFFFF) < z_thr else 1
    hi = word >> 32
    cls = 0 if hi < c0 else (1 if hi < c1 else 2)
    return bit | (basis << 1) | (cls << 2)


def decoy_tally(slot, det, combo, nph):
    """Dict {(combo, bucket, outcome): count}, one entry per slot group."""
    groups: dict[int, list[int]] = {}
    first: dict[int, int] = {}
    for i, s in enumerate(slot):
        groups.setdefault(s, []).append(det[i])
        first.setdefault(s, i)
    out: dict[tuple[int, int, int], int] = {}
    for s, dets in groups.items():
        i = first[s]
        c = combo[i]
        a_basis, a_bit = (c >> 1) & 1, c & 1
        bases = {dd // 2 for dd in dets}
        if len(bases) == 2:
            o = 4
        else:
            (b,) = bases
            bits = {dd & 1 for dd in dets}
            if b != a_basis:
                o = 0
            elif len(bits) == 2:
                o = 3
            else:
                o = 1 if next(iter(bits)) == a_bit else 2
        k = (c, min(nph[i], 3), o)
        out[k] = out.get(k, 0) + 1
    return out


def joint_table_closed_form(ta, tb, pa, pb, mis, ea, eb):
    """P(Alice det a, Bob det b) for |Phi+> written out per case (a, b in 0..3; -1 none).

    Same basis: Alice's bit uniform, Bob equal with 1 - e; different bases or
    Alice's photon lost: Bob's bit uniform.
    """
    P = [[0.0] * 5 for _ in range(5)]
    for a in range(4):
        al, x = divmod(a, 2)
        pA = ta * pa[al] * 0.5 * ea[a]
        for b in range(4):
            be, y = divmod(b, 2)
            q = (1 - mis[be] if x == y else mis[be]) if al == be else 0.5
            P[a + 1][b + 1] = pA * tb * pb[be] * q * eb[b]
    # marginals with "no click"
    for a in range(4):
        al = a // 2
        P[a + 1][0] = ta * pa[al] * 0.5 * ea[a] - sum(P[a + 1][1:])
    for b in range(4):
        be = b // 2
        P[0][b + 1] = tb * pb[be] * 0.5 * eb[b] - sum(P[a][b + 1] for a in range(1, 5))
    P[0][0] = 1.0 - sum(sum(r) for r in P)
    return P


def poisson_ge(mu: float, k0: int, u: float) -> int:
    """Inverse CDF of Poisson(mu) conditioned on n >= k0, summing the pmf term by term."""
    if mu <= 0:
        return k0
    norm = 1.0 - math.exp(-mu) if k0 == 1 else 1.0
    k = k0
    cdf = math.exp(-mu) * mu**k / math.factorial(k) / norm
    while u > cdf and k < 10000:
        k += 1
        cdf += math.exp(-mu) * mu**k / math.factorial(k) / norm
    return k


def bbm92_pairs(prm, cum, cells, rng: SplitMix64):
    """Python replica of the pair kernel: list of (party, t, key) and stats."""
    duration, rate, mu, tau, thermal, pid0 = prm
    out = []
    stats = [0, 0, 0]
    pid = int(pid0)
    q = mu / (1 + mu)
    t = 0.0
    while True:
        t -= math.log(1.0 - rng.u01()) * (1.0 / rate)
        if t >= duration:
            break
        u = rng.u01()
        if thermal > 0.5:
            n = 1 + math.floor(math.log(1.0 - u) / math.log(q))
        else:
            n = poisson_ge(mu, 1, u)
        stats[0] += 1
        stats[1] += n
        stats[2] += n >= 2
        for _ in range(n):
            tj = t  # the pairs of one coherence window share its time
            u = rng.u01()
            j = 0
            while j < len(cum) - 1 and u >= cum[j]:
                j += 1
            a, b = cells[j] // 5 - 1, cells[j] % 5 - 1
            if a >= 0:
                out.append((0, tj, (pid << 3) | a))
            if b >= 0:
                out.append((1, tj, (pid << 3) | b))
            pid += 1
    return out, stats


def decoy_photons(packed, slot0, tab, period, pmax, k_sync, rng: SplitMix64):
    """Python replica of the decoy photon kernel (same draws in the same order)."""
    n = len(packed)
    ev, sn = [], []
    syncs = [s for s in range(n) if k_sync > 0 and (slot0 + s) % k_sync == 0]
    s = -1
    while True:
        s += 1 + math.floor(math.log(1.0 - rng.u01()) / math.log1p(-pmax))
        if s >= n:
            break
        c = packed[s] & 15
        if rng.u01() * pmax >= tab[c][6]:
            continue
        lam = tab[c][4]
        m = poisson_ge(lam, 1, rng.u01())
        dets = set()
        for _ in range(m):
            v = rng.u01() * lam
            d, acc = 0, tab[c][0]
            while d < 3 and v >= acc:
                d += 1
                acc += tab[c][d]
            dets.add(d)
        sn.append((slot0 + s, m + poisson_ge(tab[c][5], 0, rng.u01())))
        for d in sorted(dets):
            ev.append((s * period, ((slot0 + s) << 3) | d))
    ev += [(s * period, (-3 << 3) | 4) for s in syncs]
    ev.sort(key=lambda e: (e[0], 0 if e[1] & 7 == 4 else 1))
    return ev, sn
