"""Slow, obviously-correct versions of the align/sift/estimate kernels, and a
tiny independent link generator for tests that must not depend on
``qkdpost.simulate``.

Everything here is plain Python loops or plain NumPy, written for clarity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ROLE_BASIS = {"H": 0, "V": 0, "D": 1, "A": 1}
ROLE_BIT = {"H": 0, "V": 1, "D": 0, "A": 1}
DEFAULT_MAP = {0: "H", 1: "V", 2: "D", 3: "A"}


# --------------------------------------------------------------------------- synthetic link


@dataclass
class SynthLink:
    t_a: np.ndarray
    ch_a: np.ndarray
    t_b: np.ndarray
    ch_b: np.ndarray
    tick_a_s: float
    tick_b_s: float
    offset_s: float
    freq: float
    n_pairs_both: int
    pair_err: np.ndarray  # for every pair seen by both: True where same basis and bits differ
    seed: int


def synth_bbm92(
    *,
    duration_s: float = 2.0,
    pair_rate: float = 200e3,
    eta_a: float = 0.5,
    eta_b: float = 0.5,
    bg_rate: float = 50e3,
    qber: float = 0.03,
    offset_s: float = 0.0,
    freq: float = 0.0,
    jitter_s: float = 300e-12,
    tick_a_s: float = 1e-12,
    tick_b_s: float = 1e-12,
    t0_s: float = 0.0,
    seed: int = 1,
) -> SynthLink:
    """Pairs (Poisson), each photon detected with eta; passive 50/50 basis;
    same-basis pairs have correlated bits flipped with probability qber;
    uncorrelated background on each side; Gaussian jitter; Bob's clock reads
    ``T_b = T (1 + freq) + offset_s``. Channels 0..3 = H, V, D, A."""
    rng = np.random.default_rng(seed)
    n = rng.poisson(pair_rate * duration_s)
    T = np.sort(rng.uniform(t0_s, t0_s + duration_s, n))
    det_a = rng.random(n) < eta_a
    det_b = rng.random(n) < eta_b
    basis_a = rng.integers(0, 2, n)
    basis_b = rng.integers(0, 2, n)
    bit_a = rng.integers(0, 2, n)
    flip = rng.random(n) < qber
    same = basis_a == basis_b
    bit_b = np.where(same, bit_a ^ flip, rng.integers(0, 2, n))
    both = det_a & det_b
    pair_err = (same & (bit_a != bit_b))[both]

    nba = rng.poisson(bg_rate * duration_s)
    nbb = rng.poisson(bg_rate * duration_s)
    Ta = np.concatenate([T[det_a], rng.uniform(t0_s, t0_s + duration_s, nba)])
    cha = np.concatenate([(2 * basis_a + bit_a)[det_a], rng.integers(0, 4, nba)]).astype(np.uint8)
    Tb = np.concatenate([T[det_b], rng.uniform(t0_s, t0_s + duration_s, nbb)])
    chb = np.concatenate([(2 * basis_b + bit_b)[det_b], rng.integers(0, 4, nbb)]).astype(np.uint8)
    Ta = Ta + rng.normal(0, jitter_s, Ta.size)
    Tb = Tb + rng.normal(0, jitter_s, Tb.size)
    ta = np.round(Ta / tick_a_s).astype(np.int64)
    tb = np.round((Tb * (1 + freq) + offset_s) / tick_b_s).astype(np.int64)
    oa = np.argsort(ta, kind="stable")
    ob = np.argsort(tb, kind="stable")
    return SynthLink(ta[oa], cha[oa], tb[ob], chb[ob], tick_a_s, tick_b_s, offset_s, freq,
                     int(both.sum()), pair_err, seed)


# --------------------------------------------------------------------------- oracles


def match_oracle(t_a, t_b, window):
    """Greedy in Alice order: each Alice event takes the nearest unused Bob
    event within +-window (ties: the earlier Bob event). Returns index lists."""
    used = [False] * len(t_b)
    ia, ib = [], []
    for i, ta in enumerate(t_a):
        best, bestd = -1, None
        for j, tb in enumerate(t_b):
            d = abs(int(tb) - int(ta))
            if d <= window and not used[j] and (bestd is None or d < bestd):
                best, bestd = j, d
        if best >= 0:
            used[best] = True
            ia.append(i)
            ib.append(best)
    return np.array(ia, dtype=np.int64), np.array(ib, dtype=np.int64)


def detections_oracle(t, ch, channel_map, dead_ticks, mc_ticks):
    """Plain-loop local conditioning of one party's clicks.

    Clicks on channels without an H/V/D/A role are ignored. A detection
    opens at a click; clicks within ``mc_ticks`` after it join it (multi
    click); later clicks within ``dead_ticks`` of the opening click are lost
    to the common dead time. Returns (t, basis, bit, flag, n_dead) with
    flag 0 = single, 1 = multi same basis (bit 255 = to draw), 2 = multi
    cross basis (basis and bit 255)."""
    out_t, out_basis, out_bit, out_flag = [], [], [], []
    n_dead = 0
    open_t = None
    for tt, cc in zip(t.tolist(), ch.tolist()):
        role = channel_map.get(cc)
        if role not in ROLE_BASIS:
            continue
        b, x = ROLE_BASIS[role], ROLE_BIT[role]
        if open_t is not None and tt - open_t <= mc_ticks:
            k = len(out_t) - 1
            if out_flag[k] == 2:
                continue
            if out_basis[k] != b:
                out_basis[k], out_bit[k], out_flag[k] = 255, 255, 2
            elif out_bit[k] != x or out_flag[k] == 1:
                out_bit[k], out_flag[k] = 255, 1
            continue
        if open_t is not None and tt - open_t < dead_ticks:
            n_dead += 1
            continue
        open_t = tt
        out_t.append(tt)
        out_basis.append(b)
        out_bit.append(x)
        out_flag.append(0)
    return (np.array(out_t, np.int64), np.array(out_basis, np.uint8), np.array(out_bit, np.uint8),
            np.array(out_flag, np.uint8), n_dead)


def count_errors_oracle(a, b, cls, n_cls):
    """Errors (a != b) and totals per class label, plain loop."""
    err = [0] * n_cls
    tot = [0] * n_cls
    for x, y, c in zip(a.tolist(), b.tolist(), cls.tolist()):
        tot[c] += 1
        err[c] += int(x != y)
    return np.array(err), np.array(tot)


def map_slots_oracle(t_det, sync_t, sync_idx, delta):
    """Plain loop: slot of each detection from its bracketing sync ticks (-1 if none)."""
    out = []
    for t in t_det.tolist():
        j = None
        for k in range(len(sync_t) - 1):
            if sync_t[k] <= t < sync_t[k + 1]:
                j = k
        if j is None:
            out.append(-1)
            continue
        p = (sync_t[j + 1] - sync_t[j]) / (sync_idx[j + 1] - sync_idx[j])
        out.append(int(sync_idx[j] + np.floor((t - sync_t[j] - delta) / p + 0.5)))
    return np.array(out, dtype=np.int64)


def score_oracle(slots, first, cls, mu, every, kmin, kmax, dmin, dmax):
    """Plain loops: summed intensity and count per candidate offset (k, d)."""
    score = np.zeros((kmax - kmin + 1, dmax - dmin + 1))
    n = np.zeros(score.shape, np.int64)
    for ki, k in enumerate(range(kmin, kmax + 1)):
        for di, d in enumerate(range(dmin, dmax + 1)):
            for s in slots.tolist():
                x = s + k * every + d - first
                if 0 <= x < len(cls):
                    score[ki, di] += mu[cls[x]]
                    n[ki, di] += 1
    return score, n
