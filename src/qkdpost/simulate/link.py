"""The link simulator: BBM92 and decoy BB84 timestamp streams with ground truth.

Generation runs in time slices (about 2**18 events each, fixed by the
configuration so a seed always gives the same events), so memory stays flat
however long the simulated run. Each slice:

1. draws the photons that reach a detector (BBM92: SPDC pairs; decoy: Alice's
   per-slot choices and Bob's clicks) with Numba kernels,
2. adds Gaussian jitter, merges dark counts, and applies non-paralysable dead
   time and afterpulsing per detector (events near the slice end wait for the
   next slice so the output is exactly time-ordered),
3. converts true time to each party's clock and quantises to TDC ticks,
4. tallies the ground truth (true pairs, photon numbers, errors).

Alice's clock is the true time. Bob's clock reads
``B(t) = offset + (1 + f) t + d t**2 / 2`` with ``f = bob_freq_ppm * 1e-6`` and
``d = bob_drift_ppm_per_s * 1e-6``.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np

from .. import __version__
from ..errors import ConfigError, InputError
from ..io.model import Chunk, StreamInfo
from . import _kernels as K
from .config import DETECTOR_ROLES, BBM92Config, DecoyConfig, DetectorConfig

__all__ = [
    "SliceOut",
    "Party",
    "Link",
    "LinkSimulation",
    "simulate",
    "generate",
    "write_link",
    "joint_table",
    "true_pairs",
]

Config = BBM92Config | DecoyConfig

#: Target number of candidate events per slice (both parties together).
_SLICE_EVENTS = 1 << 18
#: Most decoy slots per slice (memory: ~ 27 bytes per slot while generating).
_SLICE_SLOTS = 1 << 21


class SliceOut(NamedTuple):
    """One time slice of both parties' streams.

    ``alice``/``bob`` are :class:`~qkdpost.io.model.Chunk` (``t`` int64 ticks,
    ``ch`` uint8). ``alice_labels``/``bob_labels`` (int64, one per event) are
    ground truth for tests: a pair id (BBM92) or emitting slot (decoy, Bob)
    when >= 0; -1 dark count, -2 afterpulse, -3 sync tick. For a decoy Alice
    log the labels are the slot indices.
    """

    alice: Chunk
    bob: Chunk
    alice_labels: np.ndarray
    bob_labels: np.ndarray


class Party(NamedTuple):
    """One party's whole stream in memory."""

    info: StreamInfo
    t: np.ndarray
    ch: np.ndarray
    labels: np.ndarray


class Link(NamedTuple):
    """A whole simulated link in memory: both parties and the truth dict."""

    alice: Party
    bob: Party
    truth: dict[str, Any]


# ---------------------------------------------------------------------------
# physics tables
# ---------------------------------------------------------------------------
def _db(loss_db: float) -> float:
    """Transmittance of a loss in dB: 10**(-loss/10)."""
    return 10.0 ** (-loss_db / 10.0)


def _bob_bit_prob(al: int, x: int, be: int, y: int, mis: tuple[float, float], intercept: float) -> float:
    """P(Bob reads bit y in basis be | Alice's basis al and bit x).

    Same basis: equal bits up to the misalignment flip; other basis: a fair
    coin. With probability ``intercept`` an eavesdropper first measures the
    photon in a random basis e and resends her result (e, x_e), which Bob
    then reads as an honest photon from (e, x_e): x_e = x if e = al, else a
    fair coin.
    """

    def honest(a: int, xa: int) -> float:
        if a != be:
            return 0.5
        return 1.0 - mis[be] if y == xa else mis[be]

    q = honest(al, x)
    if intercept:
        eve = 0.0
        for e in (0, 1):
            for xe in (0, 1):
                p_xe = (1.0 if xe == x else 0.0) if e == al else 0.5
                eve += 0.5 * p_xe * honest(e, xe)
        q = (1.0 - intercept) * q + intercept * eve
    return q


def joint_table(cfg: BBM92Config) -> np.ndarray:
    """Joint click probabilities of one SPDC pair, before dead time.

    Parameters
    ----------
    cfg : BBM92Config

    Returns
    -------
    float64[5, 5]
        ``P[a + 1, b + 1]`` for Alice's detector ``a`` and Bob's ``b`` in
        -1 (no click), 0..3 (H, V, D, A).

    Notes
    -----
    The source emits |Phi+> = (|HH> + |VV>)/sqrt(2), for which measurements
    in the same basis (Z or X) give equal bits and in different bases
    independent bits (Bennett, Brassard, Mermin, PRL 68, 557 (1992),
    doi:10.1103/PhysRevLett.68.557). Each photon reaches its receiver with the
    arm transmittance, picks the Z analyser with ``p_z`` (passive beam
    splitter), and Bob's bit flips with the basis' misalignment probability;
    then each detector clicks with its efficiency. Alice's marginal bit is
    uniform, so a photon she loses leaves Bob's bit uniform.
    """
    ta, tb = _db(cfg.alice_loss_db), _db(cfg.loss_db)
    ea = np.array(cfg.alice_detectors.efficiency)
    eb = np.array(cfg.bob_detectors.efficiency)
    pa = (cfg.p_z_alice, 1.0 - cfg.p_z_alice)
    pb = (cfg.p_z_bob, 1.0 - cfg.p_z_bob)
    mis = (cfg.misalignment_z, cfg.misalignment_x)
    P = np.zeros((5, 5))
    # Alice's photon: lost (prob 1 - ta) or in basis al with bit x (each 1/2)
    alice_paths = [(None, None, 1.0 - ta)]
    alice_paths += [(al, x, ta * pa[al] * 0.5) for al in (0, 1) for x in (0, 1)]
    for al, x, p_a in alice_paths:
        # Bob's photon distribution over (basis, bit) given Alice's projection
        bob = {None: 1.0 - tb}
        for be in (0, 1):
            for y in (0, 1):
                q = 0.5 if al is None else _bob_bit_prob(al, x, be, y, mis, cfg.intercept_resend)
                bob[(be, y)] = tb * pb[be] * q
        a_det = None if al is None else 2 * al + x
        for bk, p_b in bob.items():
            b_det = None if bk is None else 2 * bk[0] + bk[1]
            w = p_a * p_b
            # detection: clicks with the detector's efficiency
            ca = [(-1, 1.0)] if a_det is None else [(a_det, ea[a_det]), (-1, 1.0 - ea[a_det])]
            cb = [(-1, 1.0)] if b_det is None else [(b_det, eb[b_det]), (-1, 1.0 - eb[b_det])]
            for ai, wa in ca:
                for bi, wb in cb:
                    P[ai + 1, bi + 1] += w * wa * wb
    return P


def _decoy_table(cfg: DecoyConfig) -> np.ndarray:
    """Per packed slot byte (bit | basis << 1 | class << 2): Bob's photon means.

    Returns float64[16, 7]: columns rho_H, rho_V, rho_D, rho_A, lambda = sum,
    mu - lambda (undetected photons), 1 - exp(-lambda). A coherent pulse of
    mean mu through independent losses gives independent Poisson counts.
    """
    tab = np.zeros((16, 7))
    tch = _db(cfg.loss_db)
    eff = np.array(cfg.bob_detectors.efficiency)
    pb = (cfg.p_z_bob, 1.0 - cfg.p_z_bob)
    mis = (cfg.misalignment_z, cfg.misalignment_x)
    for cls, mu in enumerate(cfg.intensities):
        for basis in (0, 1):
            for bit in (0, 1):
                c = bit | (basis << 1) | (cls << 2)
                for be in (0, 1):
                    for y in (0, 1):
                        q = _bob_bit_prob(basis, bit, be, y, mis, cfg.intercept_resend)
                        d = 2 * be + y
                        tab[c, d] = mu * tch * pb[be] * q * eff[d]
                lam = tab[c, :4].sum()
                tab[c, 4] = lam
                tab[c, 5] = max(mu - lam, 0.0)
                tab[c, 6] = -math.expm1(-lam)
    return tab


# ---------------------------------------------------------------------------
# detectors of one party
# ---------------------------------------------------------------------------
class _Detectors:
    """Dead time, afterpulsing, dark counts and jitter of one party's receiver."""

    def __init__(self, det: DetectorConfig, sync: tuple[int, float] | None):
        n_det = 5 if sync is not None else 4
        self.n_det = n_det
        self.det_par = np.zeros((n_det, 3))
        self.det_par[:4, 0] = det.dead_time_s
        self.det_par[:4, 1] = det.afterpulse_prob
        self.det_par[:4, 2] = det.afterpulse_tau_s
        if sync is not None:
            self.det_par[4, 2] = 1.0
        # per detector: jitter sigma, fixed delay (s)
        self.det_time = np.zeros((8, 2))
        self.det_time[:4, 0] = det.jitter_s
        self.det_time[:4, 1] = det.delay_s
        self.lut = np.zeros(8, np.uint8)
        self.lut[:4] = det.channels
        if sync is not None:
            self.lut[4] = sync[0]
            self.det_time[4, 0] = sync[1]
        self.dark = np.array(det.dark_rate_hz, dtype=float)
        self.state = np.full((n_det, 1 + K.MAX_PENDING), np.inf)
        self.state[:, 0] = -np.inf
        self.ctr = np.zeros((n_det, 8), np.int64)
        self.carry_t = np.zeros(0)
        self.carry_k = np.zeros(0, np.int64)

    def process(
        self,
        cand_t: np.ndarray,
        cand_k: np.ndarray,
        length: float,
        cutoff: float,
        rng: np.random.Generator,
        rs: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Registered clicks of one slice (local times, keys), in time order."""
        K.add_jitter(cand_t, cand_k, self.det_time, rs)
        if self.carry_t.size:
            cand_t = np.concatenate([self.carry_t, cand_t])
            cand_k = np.concatenate([self.carry_k, cand_k])
        K.insertion_sort(cand_t, cand_k)
        # dark counts: a Poisson process per detector over [0, length)
        n_dark = rng.poisson(self.dark * length)
        tot = int(n_dark.sum())
        if tot:
            dt = rng.random(tot) * length
            dk = np.repeat(np.arange(4, dtype=np.int64), n_dark) | np.int64(K.LABEL_DARK << 3)
            order = np.argsort(dt, kind="stable")
            dt, dk = dt[order], dk[order]
            mt = np.empty(cand_t.size + tot)
            mk = np.empty(cand_t.size + tot, np.int64)
            K.merge_sorted(cand_t, cand_k, dt, dk, mt, mk)
            cand_t, cand_k = mt, mk
        outs_t, outs_k = [], []
        start = 0
        while True:
            cap = cand_t.size - start + 64 + cand_t.size // 16
            ot = np.empty(cap)
            ok = np.empty(cap, np.int64)
            n_o, n_used = K.dead_time(cand_t[start:], cand_k[start:], cutoff, self.det_par, self.state, ot, ok,
                                      self.ctr, rs)
            outs_t.append(ot[:n_o])
            outs_k.append(ok[:n_o])
            start += n_used
            if n_o < cap:
                break
        self.carry_t = cand_t[start:] - length
        self.carry_k = cand_k[start:].copy()
        self.state -= length
        t = outs_t[0] if len(outs_t) == 1 else np.concatenate(outs_t)
        k = outs_k[0] if len(outs_k) == 1 else np.concatenate(outs_k)
        return t, k

    def summary(self, roles: list[str]) -> dict[str, Any]:
        out = {}
        for d, role in enumerate(roles):
            out[role] = {
                "channel": int(self.lut[d]),
                "registered": int(self.ctr[d, K.CTR_REGISTERED]),
                "photon": int(self.ctr[d, K.CTR_PHOTON]),
                "dark": int(self.ctr[d, K.CTR_DARK]),
                "afterpulse": int(self.ctr[d, K.CTR_AFTERPULSE]),
                "lost_dead_time": int(self.ctr[d, K.CTR_LOST]),
                "afterpulses_dropped": int(self.ctr[d, K.CTR_AP_DROPPED]),
            }
        return out


def _reach(det: DetectorConfig) -> float:
    """Largest shift of a timestamp from its true time: 10 sigma jitter + |delay|."""
    return 10.0 * det.jitter_s + max(abs(d) for d in det.delay_s)


class _Clock:
    """A party's clock: exact slice base in ticks plus local linear/quadratic terms."""

    def __init__(self, tick_s: float, offset_s: float = 0.0, freq_ppm: float = 0.0, drift_ppm_per_s: float = 0.0):
        self.tick = Fraction(tick_s)
        self.off = Fraction(offset_s)
        self.f = Fraction(freq_ppm * 1e-6)
        self.d = Fraction(drift_ppm_per_s * 1e-6)

    def convert(self, t_local: np.ndarray, a: Fraction) -> np.ndarray:
        """Ticks of local times ``t_local`` (s) in the slice starting at true time ``a``."""
        b = (self.off + a * (1 + self.f) + self.d * a * a / 2) / self.tick
        base = math.floor(b)
        frac = float(b - base)
        c1 = float((1 + self.f + self.d * a) / self.tick)
        c2 = float(self.d / 2 / self.tick)
        out = np.empty(t_local.size, np.int64)
        K.to_ticks(t_local, frac, c1, c2, base, out)
        return out


class _SliceRng(NamedTuple):
    gen_a: np.random.Generator
    gen_b: np.random.Generator
    src: int
    det_a: np.ndarray
    det_b: np.ndarray


def _rngs(seed: int, k: int) -> _SliceRng:
    """Independent per-slice random streams from (seed, slice index).

    NumPy generators for Alice's and Bob's vectorised draws, a SplitMix64 seed
    for the source kernel and SplitMix64 states for each party's detectors.
    """
    ss = np.random.SeedSequence(seed, spawn_key=(k,))
    a, b, c = ss.spawn(3)
    st = c.generate_state(3, np.uint64)
    return _SliceRng(np.random.default_rng(a), np.random.default_rng(b), int(st[0]), st[1:2].copy(), st[2:3].copy())


def _clock_truth(cfg: Config) -> dict[str, Any]:
    return {
        "model": "t_bob = offset_s + (1 + freq_ppm*1e-6)*t + 0.5*drift_ppm_per_s*1e-6*t**2, t = Alice's (true) time in s",
        "offset_s": cfg.bob_offset_s,
        "offset_ticks": cfg.bob_offset_s / cfg.tick_s,
        "freq_ppm": cfg.bob_freq_ppm,
        "drift_ppm_per_s": cfg.bob_drift_ppm_per_s,
        "freq_ppm_at_end": cfg.bob_freq_ppm + cfg.bob_drift_ppm_per_s * cfg.duration_s,
    }


def _basis_stats(m: np.ndarray, lo: int) -> dict[str, Any]:
    sifted = int(m[lo, lo] + m[lo, lo + 1] + m[lo + 1, lo] + m[lo + 1, lo + 1])
    errors = int(m[lo, lo + 1] + m[lo + 1, lo])
    return {"sifted": sifted, "errors": errors, "qber": errors / sifted if sifted else None}


# ---------------------------------------------------------------------------
# engines
# ---------------------------------------------------------------------------
class _BBM92:
    def __init__(self, cfg: BBM92Config, seed: int):
        self.cfg = cfg
        self.seed = seed
        P = joint_table(cfg)
        self.table = P
        p_any = 1.0 - P[0, 0]
        self.p_any = p_any
        flat = P.ravel().copy()
        flat[0] = 0.0
        order = np.argsort(-flat, kind="stable")
        order = order[flat[order] > 0]
        self.cells = order.astype(np.int64) if order.size else np.array([1], np.int64)
        cum = np.cumsum(flat[order]) / flat[order].sum() if order.size else np.ones(1)
        cum[-1] = 1.0
        self.cum = cum
        mu = cfg.pair_rate_hz * cfg.coherence_time_s
        mu_det = mu * p_any
        tau = cfg.coherence_time_s
        if cfg.pair_statistics == "thermal":
            p_ge1 = mu_det / (1.0 + mu_det)
        else:
            p_ge1 = -math.expm1(-mu_det)
        self.prm = np.array([0.0, p_ge1 / tau, mu_det, tau, 1.0 if cfg.pair_statistics == "thermal" else 0.0, 0.0])
        self.mu = mu
        rate = cfg.pair_rate_hz * p_any * 1.5 + 4 * sum(cfg.alice_detectors.dark_rate_hz) + 1.0
        # how far an event may move from its true time: 10 sigma plus the delay
        guard = max(_reach(cfg.alice_detectors), _reach(cfg.bob_detectors)) + 2 * cfg.tick_s
        slice_s = cfg.slice_s if cfg.slice_s is not None else min(1.0, max(1e-4, _SLICE_EVENTS / rate))
        slice_s = max(slice_s, 8 * guard)
        self.slice_ticks = max(1, int(round(slice_s / cfg.tick_s)))
        self.total_ticks = int(round(cfg.duration_s / cfg.tick_s))
        self.n_slices = max(1, -(-self.total_ticks // self.slice_ticks))
        self.guard = guard
        self.alice_det = _Detectors(cfg.alice_detectors, None)
        self.bob_det = _Detectors(cfg.bob_detectors, None)
        self.alice_clock = _Clock(cfg.tick_s)
        self.bob_clock = _Clock(cfg.tick_s, cfg.bob_offset_s, cfg.bob_freq_ppm, cfg.bob_drift_ppm_per_s)
        self.stats = np.zeros(3, np.int64)
        self.pid = 0
        self.coinc = np.zeros((4, 4), np.int64)
        self.pairs_both_registered = 0
        self._prev: tuple[int, np.ndarray, np.ndarray] | None = None
        self.events = [0, 0]

    def infos(self) -> tuple[StreamInfo, StreamInfo]:
        cfg = self.cfg
        extra = {"simulator": f"qkdpost {__version__}", "topology": "bbm92"}

        def info(party: str, det: DetectorConfig) -> StreamInfo:
            return StreamInfo(tick_s=cfg.tick_s, party=party, device="qkdpost.simulate BBM92",
                              channel_map={c: r for c, r in zip(det.channels, DETECTOR_ROLES)}, extra=extra)

        return info("alice", cfg.alice_detectors), info("bob", cfg.bob_detectors)

    def slices(self) -> Iterator[tuple[float, SliceOut]]:
        cfg = self.cfg
        tick = Fraction(cfg.tick_s)
        for k in range(self.n_slices):
            t0 = k * self.slice_ticks
            n_ticks = min(self.slice_ticks, self.total_ticks - t0)
            length = n_ticks * cfg.tick_s
            last = k == self.n_slices - 1
            cutoff = length + self.guard if last else length - self.guard
            r = _rngs(self.seed, k)
            self.prm[0] = length
            self.prm[5] = float(self.pid)
            cap = int(cfg.pair_rate_hz * self.p_any * length * 1.2 + 64 * math.sqrt(cfg.pair_rate_hz * length + 1) + 256)
            while True:
                out_t = np.empty((2, cap))
                out_k = np.empty((2, cap), np.int64)
                n_out = np.zeros(2, np.int64)
                st = np.zeros(3, np.int64)
                rs = np.array([r.src], np.uint64)
                status, pairs = K.bbm92_pairs(self.prm, self.cum, self.cells, out_t, out_k, n_out, st, rs)
                if status == 0:
                    break
                cap *= 2
            self.stats += st
            pid_lo = self.pid
            self.pid += pairs
            na, nb = int(n_out[0]), int(n_out[1])
            # rows of the fresh per-slice buffers: contiguous views, modified in place
            ta, ka = self.alice_det.process(out_t[0, :na], out_k[0, :na], length, cutoff, r.gen_a, r.det_a)
            tb, kb = self.bob_det.process(out_t[1, :nb], out_k[1, :nb], length, cutoff, r.gen_b, r.det_b)
            self._tally_pairs(pid_lo, self.pid, ka, kb, last)
            a = Fraction(t0) * tick
            alice = Chunk(self.alice_clock.convert(ta, a), self.alice_det.lut[ka & 7])
            bob = Chunk(self.bob_clock.convert(tb, a), self.bob_det.lut[kb & 7])
            self.events[0] += ta.size
            self.events[1] += tb.size
            yield length, SliceOut(alice, bob, ka >> 3, kb >> 3)

    def _tally_pairs(self, lo: int, hi: int, ka: np.ndarray, kb: np.ndarray, last: bool) -> None:
        """Join Alice's and Bob's registered photons by pair id (pairs of the
        previous slice are complete once this slice is processed)."""
        plo = self._prev[0] if self._prev is not None else lo
        n = hi - plo
        da = np.full(n, -1, np.int64)
        db = np.full(n, -1, np.int64)
        if self._prev is not None:
            m = self._prev[1].size
            da[:m] = self._prev[1]
            db[:m] = self._prev[2]
        K.pair_detectors(ka, plo, da)
        K.pair_detectors(kb, plo, db)
        split = lo - plo if not last else n
        K.tally_pairs(da[:split], db[:split], self.coinc)
        self._prev = (lo, da[split:], db[split:]) if not last else None

    def truth(self) -> dict[str, Any]:
        cfg = self.cfg
        m = self.coinc
        dur = cfg.duration_s
        sa = self.events[0] / dur
        sb = self.events[1] / dur
        return {
            "topology": "bbm92",
            "clock": _clock_truth(cfg),
            "source": {
                "pair_rate_hz": cfg.pair_rate_hz,
                "pair_statistics": cfg.pair_statistics,
                "mean_pairs_per_window": self.mu,
                "p_pair_detectable": self.p_any,
                "windows_with_detectable_pairs": int(self.stats[0]),
                "detectable_pairs": int(self.stats[1]),
                "multi_pair_windows": int(self.stats[2]),
            },
            "alice": {"events": self.events[0], "singles_rate_hz": sa,
                      "detectors": self.alice_det.summary(list(DETECTOR_ROLES))},
            "bob": {"events": self.events[1], "singles_rate_hz": sb,
                    "detectors": self.bob_det.summary(list(DETECTOR_ROLES))},
            "coincidences": {
                "description": "pairs whose photons were registered by both parties (rows Alice H,V,D,A; "
                               "columns Bob H,V,D,A); Z/X: same-basis pairs and bit errors among them",
                "matrix": m.tolist(),
                "Z": _basis_stats(m, 0),
                "X": _basis_stats(m, 2),
                "accidentals_per_s_per_ns_window": sa * sb * 1e-9,
            },
        }


class _Decoy:
    def __init__(self, cfg: DecoyConfig, seed: int):
        self.cfg = cfg
        self.seed = seed
        self.tab = _decoy_table(cfg)
        self.period_ticks = cfg.slot_period_ticks
        self.period = self.period_ticks * cfg.tick_s
        self.n_slots = max(1, int(round(cfg.duration_s * cfg.rep_rate_hz)))
        p_max = float(self.tab[:, 6].max())
        self.prm = np.array([self.period, p_max, float(cfg.sync_every), 0.0])
        cum = np.cumsum(cfg.intensity_probs)
        c0 = min(int(round(cum[0] * 2**32)), 2**32)
        c1 = min(int(round(cum[1] * 2**32)), 2**32) if len(cum) > 2 else 2**32
        self.thr = np.array([int(round(cfg.p_z_alice * 2**31)), c0, c1], np.uint64)
        det = cfg.bob_detectors
        sync = (cfg.sync_channel, cfg.sync_jitter_s) if cfg.sync_every > 0 else None
        self.bob_det = _Detectors(det, sync)
        self.guard = max(_reach(det), 10.0 * cfg.sync_jitter_s) + self.period + 2 * cfg.tick_s
        self.delay = np.array(det.delay_s)
        rate = cfg.rep_rate_hz * (p_max + 1e-9) * 2 + sum(det.dark_rate_hz) + 1.0
        slice_s = cfg.slice_s if cfg.slice_s is not None else _SLICE_EVENTS / rate
        slots = int(round(max(slice_s, 8 * self.guard) / self.period))
        self.slice_slots = max(1, min(slots, _SLICE_SLOTS)) if cfg.slice_s is None else max(1, slots)
        if self.slice_slots * self.period < 8 * self.guard:
            self.slice_slots = int(math.ceil(8 * self.guard / self.period))
        self.n_slices = max(1, -(-self.n_slots // self.slice_slots))
        self.bob_clock = _Clock(cfg.tick_s, cfg.bob_offset_s, cfg.bob_freq_ppm, cfg.bob_drift_ppm_per_s)
        self.emitted = np.zeros(16, np.int64)
        self.tally = np.zeros((16, 4, 5), np.int64)
        self.events = [0, 0]
        self.syncs = 0

    def infos(self) -> tuple[StreamInfo, StreamInfo]:
        cfg = self.cfg
        extra = {"simulator": f"qkdpost {__version__}", "topology": "decoy"}
        alice = StreamInfo(
            tick_s=cfg.tick_s, kind="slots", party="alice", device="qkdpost.simulate decoy BB84",
            slot_period_ticks=self.period_ticks,
            extra={**extra, "slot_byte": "bit | basis << 1 | intensity << 2 (basis 0 = Z, 1 = X)",
                   "intensities": json.dumps(list(cfg.intensities)),
                   "intensity_names": json.dumps(list(cfg.intensity_names)),
                   "intensity_probs": json.dumps(list(cfg.intensity_probs))},
        )
        cmap: dict[int, str] = {c: r for c, r in zip(cfg.bob_detectors.channels, DETECTOR_ROLES)}
        bextra = dict(extra)
        if cfg.sync_every > 0:
            cmap[cfg.sync_channel] = "sync"
            bextra["sync_every_slots"] = str(cfg.sync_every)
            bextra["sync_first_slot"] = "0"
        bob = StreamInfo(tick_s=cfg.tick_s, party="bob", device="qkdpost.simulate decoy BB84", channel_map=cmap,
                         extra=bextra)
        return alice, bob

    def slices(self) -> Iterator[tuple[float, SliceOut]]:
        cfg = self.cfg
        tick = Fraction(cfg.tick_s)
        prev_packed = np.zeros(0, np.uint8)
        prev_s0 = 0
        prev_sn = np.zeros((0, 2), np.int64)
        held = None  # clicks of the last (maybe incomplete) slot group
        for k in range(self.n_slices):
            s0 = k * self.slice_slots
            n = min(self.slice_slots, self.n_slots - s0)
            length = n * self.period
            last = k == self.n_slices - 1
            cutoff = length + self.guard if last else length - self.guard
            r = _rngs(self.seed, k)
            x = r.gen_a.bit_generator.random_raw(n)  # PCG64: n uniform 64-bit words
            packed = np.empty(n, np.uint8)
            K.decoy_choices(x, self.thr, packed, self.emitted)
            del x
            cap = int(n * self.prm[1] * 4.5 + 64 * math.sqrt(n * self.prm[1] + 1) + 256)
            if cfg.sync_every > 0:
                cap += n // cfg.sync_every + 2
            while True:
                ct = np.empty(cap)
                ck = np.empty(cap, np.int64)
                sn = np.empty((cap, 2), np.int64)
                rs = np.array([r.src], np.uint64)
                ne, ns = K.decoy_photons(packed, s0, self.tab, self.prm, ct, ck, sn, rs)
                if ne >= 0:
                    break
                cap *= 2
            tb, kb = self.bob_det.process(ct[:ne], ck[:ne], length, cutoff, r.gen_b, r.det_b)
            sn = sn[:ns]
            # ground truth: group Bob's clicks by nearest slot
            held = self._tally(tb, kb, s0, packed, prev_packed, prev_s0, np.concatenate([prev_sn, sn]), held, last,
                               cutoff, r.gen_b)
            prev_packed, prev_s0, prev_sn = packed, s0, sn
            a = Fraction(s0 * self.period_ticks) * tick
            lab = kb >> 3
            self.syncs += int(np.count_nonzero(lab == K.LABEL_SYNC))
            bob = Chunk(self.bob_clock.convert(tb, a), self.bob_det.lut[kb & 7])
            slots = np.arange(s0, s0 + n, dtype=np.int64)
            alice = Chunk(slots, packed)
            self.events[0] += n
            self.events[1] += tb.size
            yield length, SliceOut(alice, bob, slots, lab)

    def _tally(self, tb, kb, s0, packed, prev_packed, prev_s0, sn, held, last, cutoff, rng):  # type: ignore[no-untyped-def]
        """Tally Bob's clicks of one slice by nearest slot; returns the held-back clicks."""
        d = kb & 7
        sel = d < 4
        t = tb[sel]
        det = d[sel]
        # nearest slot after removing each detector's (calibratable) delay
        slot = s0 + np.floor((t - self.delay[det]) / self.period + 0.5).astype(np.int64)
        hist0 = prev_s0 if prev_packed.size else s0
        hist = np.concatenate([prev_packed, packed]) if prev_packed.size else packed
        # Inside the run the guard keeps every nearest slot within the two slices
        # kept here; clicks jittered before slot 0 or after the last slot (only
        # when 10 sigma > half a period) go to the nearest existing slot.
        slot = np.clip(slot, hist0, hist0 + hist.size - 1)
        idx = slot - hist0
        combo = hist[idx].astype(np.int64)
        j = np.searchsorted(sn[:, 0], slot)
        jc = np.minimum(j, max(sn.shape[0] - 1, 0))
        found = (sn.shape[0] > 0) & (sn[jc, 0] == slot) if sn.shape[0] else np.zeros(slot.size, bool)
        nph = np.where(found, sn[jc, 1] if sn.shape[0] else 0, rng.poisson(self.tab[combo, 5]))
        if held is not None:
            slot = np.concatenate([held[0], slot])
            det = np.concatenate([held[1], det])
            combo = np.concatenate([held[2], combo])
            nph = np.concatenate([held[3], nph])
        if slot.size == 0:
            return None
        # group by slot (per-detector delays can reorder slots in time)
        order = np.argsort(slot, kind="stable")
        slot, det, combo, nph = slot[order], det[order], combo[order], nph[order]
        if last:
            cut = slot.size
        else:
            # later clicks have t >= cutoff, so their slots are >= this bound;
            # slots from it on may still gain clicks: hold them for the next slice
            bound = s0 + int(math.floor((cutoff - self.delay.max()) / self.period + 0.5)) - 1
            cut = int(np.searchsorted(slot, bound, side="left"))
        K.decoy_tally(slot[:cut], det[:cut].astype(np.int64), combo[:cut], nph[:cut].astype(np.int64), self.tally)
        if cut == slot.size:
            return None
        return slot[cut:], det[cut:], combo[cut:], nph[cut:]

    def truth(self) -> dict[str, Any]:
        cfg = self.cfg
        names = cfg.intensity_names
        counts: dict[str, Any] = {}
        tot = {b: [0, 0] for b in "ZX"}
        buckets = ("0", "1", "2", "3+")
        for cls, name in enumerate(names):
            counts[name] = {"mu": cfg.intensities[cls], "prob": cfg.intensity_probs[cls]}
            for basis, bname in enumerate("ZX"):
                cs = [bit | (basis << 1) | (cls << 2) for bit in (0, 1)]
                T = self.tally[cs].sum(axis=0)  # [bucket, outcome]
                sifted = int(T[:, 1].sum() + T[:, 2].sum())
                errors = int(T[:, 2].sum())
                tot[bname][0] += sifted
                tot[bname][1] += errors
                counts[name][bname] = {
                    "emitted": int(self.emitted[cs].sum()),
                    "detected": int(T.sum()),
                    "basis_mismatch": int(T[:, 0].sum()),
                    "sifted": sifted,
                    "errors": errors,
                    "qber": errors / sifted if sifted else None,
                    "double_clicks": int(T[:, 3].sum()),
                    "multi_basis": int(T[:, 4].sum()),
                    "by_photon_number": {
                        b: {"detected": int(T[i].sum()), "sifted": int(T[i, 1] + T[i, 2]), "errors": int(T[i, 2]),
                            "double_clicks": int(T[i, 3])}
                        for i, b in enumerate(buckets)
                    },
                }
        return {
            "topology": "decoy",
            "clock": _clock_truth(cfg),
            "slots": self.n_slots,
            "slot_period_s": self.period,
            "slot_period_ticks": self.period_ticks,
            "sync": {"channel": cfg.sync_channel if cfg.sync_every else None, "every_slots": cfg.sync_every,
                     "first_slot": 0, "ticks": self.syncs,
                     "description": "sync tick k marks slot k*every_slots, sent with that pulse"},
            "bob": {"events": self.events[1], "detectors": self.bob_det.summary(list(DETECTOR_ROLES))},
            "qber": {b: (tot[b][1] / tot[b][0] if tot[b][0] else None) for b in "ZX"},
            "counts": counts,
            "counts_description": (
                "per intensity class and Alice's basis, over slots with >= 1 registered click at Bob (nearest "
                "slot in true time): detected = such slots; sifted = Bob's single click in Alice's basis; errors "
                "among them; double_clicks = both detectors of that basis; multi_basis = clicks in both bases; "
                "by_photon_number = by the number of photons Alice emitted in the slot (dark counts included)"
            ),
        }


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------
def _check_cfg(cfg: Any) -> None:
    if not isinstance(cfg, (BBM92Config, DecoyConfig)):
        raise ConfigError(f"cfg={type(cfg).__name__}: must be a qkdpost.simulate.BBM92Config or DecoyConfig")


def _check_seed(seed: Any) -> int:
    if seed is None:
        return secrets.randbits(63)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ConfigError(f"seed={seed!r}: must be a non-negative int (or None for a fresh random seed)")
    return int(seed)


class LinkSimulation:
    """A configured simulation run, iterated slice by slice.

    Parameters
    ----------
    cfg : BBM92Config or DecoyConfig
        What to simulate.
    seed : int or None
        Seed of every random draw (None: drawn from the OS and recorded in
        the truth). The same config and seed give identical streams.

    Attributes
    ----------
    alice_info, bob_info : StreamInfo
        Metadata of both streams.
    n_slices : int
        Number of slices :meth:`__iter__` yields.

    Examples
    --------
    >>> sim = LinkSimulation(BBM92Config(duration_s=0.01), seed=1)
    >>> for sl in sim:            # doctest: +SKIP
    ...     feed(sl.alice, sl.bob)
    >>> sim.truth()["coincidences"]["Z"]["qber"]   # doctest: +SKIP
    """

    def __init__(self, cfg: Config, seed: int | None = None):
        _check_cfg(cfg)
        self.cfg = cfg
        self.seed = _check_seed(seed)
        self._engine = self._new_engine()
        self.alice_info, self.bob_info = self._engine.infos()
        self.n_slices = self._engine.n_slices
        self._done = False
        self.progress: Any = None

    def _new_engine(self) -> _BBM92 | _Decoy:
        return _BBM92(self.cfg, self.seed) if isinstance(self.cfg, BBM92Config) else _Decoy(self.cfg, self.seed)

    def __iter__(self) -> Iterator[SliceOut]:
        self._engine = self._new_engine()
        self._done = False
        for length, out in self._engine.slices():
            if self.progress is not None:
                self.progress(length)
            yield out
        self._done = True

    def truth(self) -> dict[str, Any]:
        """Ground truth of the finished run (JSON-ready dict)."""
        if not self._done:
            raise InputError("truth(): iterate the simulation to the end first (for sl in sim: ...)")
        cfg = self.cfg
        import numba

        head = {
            "simulator": f"qkdpost {__version__}",
            "versions": {"qkdpost": __version__, "numpy": np.__version__, "numba": numba.__version__},
            "seed": self.seed,
            "config": cfg.to_dict(),
            "duration_s": cfg.duration_s,
            "tick_s": cfg.tick_s,
        }
        return {**head, **self._engine.truth()}


def simulate(cfg: Config, seed: int | None = None) -> LinkSimulation:
    """Start a simulation: returns an iterable of :class:`SliceOut` with ``truth()``.

    See :class:`LinkSimulation`.
    """
    return LinkSimulation(cfg, seed)


def generate(cfg: Config, seed: int | None = None) -> Link:
    """Simulate a whole link in memory.

    Parameters
    ----------
    cfg : BBM92Config or DecoyConfig
    seed : int or None

    Returns
    -------
    Link
        ``alice`` and ``bob`` as :class:`Party` (``info``, ``t`` int64 ticks,
        ``ch`` uint8, ``labels`` int64 ground truth per event) and ``truth``.
        For short runs: memory grows with the run (use :func:`write_link` or
        iterate :func:`simulate` for long ones).
    """
    sim = LinkSimulation(cfg, seed)
    parts: list[list[np.ndarray]] = [[], [], [], [], [], []]
    for sl in sim:
        for i, arr in enumerate((sl.alice.t, sl.alice.ch, sl.alice_labels, sl.bob.t, sl.bob.ch, sl.bob_labels)):
            parts[i].append(arr)
    cat = [np.concatenate(p) for p in parts]
    return Link(Party(sim.alice_info, cat[0], cat[1], cat[2]), Party(sim.bob_info, cat[3], cat[4], cat[5]),
                sim.truth())


def true_pairs(alice_labels: np.ndarray, bob_labels: np.ndarray, *, topology: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the events that truly belong together (ground truth for tests).

    Parameters
    ----------
    alice_labels, bob_labels : int64 arrays
        Per-event labels of a whole run (:class:`Party` ``labels`` or the
        ``*_labels.npy`` files written with ``labels=True``).
    topology : {"bbm92", "decoy"}

    Returns
    -------
    (ia, ib) : int64 arrays of equal length, sorted by ``ib``
        BBM92: Alice's and Bob's registered photons of the same pair. Decoy:
        Bob's photon clicks ``ib`` and the index ``ia`` of the slot that
        emitted the photon in Alice's log. Comparing the bits of ``ia`` and
        ``ib`` (in matching bases) gives the true error positions.
    """
    la = np.asarray(alice_labels, dtype=np.int64)
    lb = np.asarray(bob_labels, dtype=np.int64)
    if topology not in ("bbm92", "decoy"):
        raise InputError(f"topology={topology!r}: must be 'bbm92' or 'decoy'")
    ib = np.nonzero(lb >= 0)[0]
    if topology == "decoy":
        pos = np.searchsorted(la, lb[ib])
        ok = (pos < la.size) & (la[np.minimum(pos, max(la.size - 1, 0))] == lb[ib]) if la.size else pos < 0
        return pos[ok].astype(np.int64), ib[ok].astype(np.int64)
    ia_all = np.nonzero(la >= 0)[0]
    common, xa, xb = np.intersect1d(la[ia_all], lb[ib], assume_unique=True, return_indices=True)
    order = np.argsort(ib[xb], kind="stable")
    return ia_all[xa][order].astype(np.int64), ib[xb][order].astype(np.int64)


class _NpyWriter:
    """Append int64 values to a ``.npy`` file whose header is patched on close."""

    _HEADER = 128

    def __init__(self, path: Path):
        from ..io._atomic import AtomicPath

        self.atomic = AtomicPath(path)
        self.f = open(self.atomic.tmp, "wb")
        self.f.write(b"\0" * self._HEADER)
        self.n = 0

    def write(self, a: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(a, dtype="<i8").tobytes())
        self.n += a.size

    def close(self) -> None:
        d = "{'descr': '<i8', 'fortran_order': False, 'shape': (%d,), }" % self.n
        body = d.encode("latin1")
        pad = self._HEADER - 10 - len(body) - 1
        self.f.seek(0)
        self.f.write(b"\x93NUMPY\x01\x00" + (self._HEADER - 10).to_bytes(2, "little") + body + b" " * pad + b"\n")
        self.f.close()
        self.atomic.commit()

    def abort(self) -> None:
        try:
            self.f.close()
        finally:
            self.atomic.abort()


def write_link(
    cfg: Config,
    out_dir: str | os.PathLike[str],
    *,
    seed: int | None = None,
    labels: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Simulate a link and write ``alice.arrow``, ``bob.arrow`` and ``truth.json``.

    Parameters
    ----------
    cfg : BBM92Config or DecoyConfig
    out_dir : path
        Directory (created if missing). On any error no new file is left.
        The outputs are replaced as a set: ``*_labels.npy`` and
        ``truth.json`` of an earlier run in the same directory are removed
        before the new streams are put in place (also with
        ``labels=False``), so no reader pairs new streams with old labels.
    seed : int or None
        Seed (None: a fresh one, recorded in ``truth.json``).
    labels : bool
        Also write ``alice_labels.npy`` and ``bob_labels.npy`` (int64 ground
        truth per event, see :class:`SliceOut`).
    progress : bool
        Show a progress bar (tqdm) in simulated seconds.

    Returns
    -------
    dict
        The truth dict written to ``truth.json``.

    Memory stays flat: streams are written slice by slice with
    :class:`qkdpost.io.StreamWriter`.
    """
    from ..io._atomic import AtomicPath
    from ..io.arrow import StreamWriter

    sim = LinkSimulation(cfg, seed)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"out_dir={str(out_dir)!r}: cannot create the output directory ({exc})") from None
    writers: list[Any] = []
    committed: list[Path] = []
    bar = None
    try:
        wa = StreamWriter(out / "alice.arrow", sim.alice_info)
        writers.append(wa)
        wb = StreamWriter(out / "bob.arrow", sim.bob_info)
        writers.append(wb)
        la = lb = None
        if labels:
            la = _NpyWriter(out / "alice_labels.npy")
            writers.append(la)
            lb = _NpyWriter(out / "bob_labels.npy")
            writers.append(lb)
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.duration_s, desc=f"simulate {sim.cfg.to_dict()['topology']}",
                       bar_format="{l_bar}{bar}| {n:.4g}/{total:.4g} s simulated [{elapsed}<{remaining}]")
            sim.progress = bar.update
        for sl in sim:
            wa.write(sl.alice.t, sl.alice.ch)
            wb.write(sl.bob.t, sl.bob.ch)
            if la is not None and lb is not None:
                la.write(sl.alice_labels)
                lb.write(sl.bob_labels)
        truth = sim.truth()
        truth["files"] = {"alice": "alice.arrow", "bob": "bob.arrow", "alice_events": wa.events,
                          "bob_events": wb.events}
        # The files are one set: labels or a truth.json left by an earlier run
        # would describe other events. Remove them before the first new file
        # goes in place; truth.json is written last.
        for name in ("alice_labels.npy", "bob_labels.npy", "truth.json"):
            try:
                (out / name).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise InputError(f"out_dir={str(out_dir)!r}: cannot remove {name} of an earlier run ({exc}); "
                                 "remove it or choose an empty directory") from None
        for w, name in ((wa, "alice.arrow"), (wb, "bob.arrow"), (la, "alice_labels.npy"), (lb, "bob_labels.npy")):
            if w is not None:
                w.close()
                committed.append(out / name)
        tj = AtomicPath(out / "truth.json")
        try:
            with open(tj.tmp, "w") as f:
                json.dump(truth, f, indent=1, sort_keys=False)
                f.write("\n")
            tj.commit()
        except BaseException:
            tj.abort()
            raise
        return truth
    except BaseException:
        for w in writers:
            try:
                w.abort()
            except Exception:
                pass
        for p in committed:
            try:
                p.unlink()
            except OSError:
                pass
        raise
    finally:
        if bar is not None:
            bar.close()
