"""Long statistical runs of the simulator (``pytest -m slow``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qkdpost.simulate import BBM92Config, DecoyConfig, DetectorConfig, generate, simulate
from qkdpost.simulate.link import _decoy_table

pytestmark = pytest.mark.slow


def test_long_run_clock_stays_exact():
    """60 s with strong drift: pair residuals at the end are still jitter-sized
    (exact rational slice bases), streaming slice by slice."""
    cfg = BBM92Config(duration_s=60.0, pair_rate_hz=5e5, bob_offset_s=0.49, bob_freq_ppm=99.0,
                      bob_drift_ppm_per_s=0.05)
    sim = simulate(cfg, seed=123)
    sig = math.sqrt(2) * 50e-12 / cfg.tick_s
    last_t = None
    worst = 0.0
    for sl in sim:
        a = {int(l): int(t) for l, t in zip(sl.alice_labels, sl.alice.t) if l >= 0}
        res = []
        for l, t in zip(sl.bob_labels, sl.bob.t):
            if l >= 0 and int(l) in a:
                ta = a[int(l)] * cfg.tick_s
                pred = (0.49 + (1 + 99e-6) * ta + 0.5 * 0.05e-6 * ta * ta) / cfg.tick_s
                res.append(t - pred)
        if res:
            r = np.array(res)
            worst = max(worst, abs(r.mean()))
        assert last_t is None or sl.bob.t.size == 0 or sl.bob.t[0] >= last_t
        if sl.bob.t.size:
            last_t = sl.bob.t[-1]
    assert worst < 5 * sig
    assert sim.truth()["clock"]["freq_ppm_at_end"] == pytest.approx(102.0)


def test_decoy_single_photon_sifted_counts_long():
    cfg = DecoyConfig(duration_s=0.2, rep_rate_hz=1e8, loss_db=10.0,
                      bob_detectors=DetectorConfig(efficiency=0.6, dark_rate_hz=0.0, dead_time_s=0.0,
                                                   afterpulse_prob=0.0))
    link = generate(cfg, seed=8)
    tab = _decoy_table(cfg)
    emitted = np.bincount(link.alice.ch, minlength=16)
    for cls, name in enumerate(cfg.intensity_names):
        mu = cfg.intensities[cls]
        for basis, b in enumerate("ZX"):
            cs = [bit | (basis << 1) | (cls << 2) for bit in (0, 1)]
            # one photon emitted, detected in Alice's basis: rho of that basis' two detectors
            p1 = np.array([mu * math.exp(-mu) * (tab[c, 2 * basis] + tab[c, 2 * basis + 1]) / mu for c in cs])
            exp = float((emitted[cs] * p1).sum())
            got = link.truth["counts"][name][b]["by_photon_number"]["1"]["sifted"]
            assert abs(got - exp) <= 5 * math.sqrt(exp) + 1, (name, b, got, exp)


def test_bbm92_poisson_vs_thermal_multi_pairs():
    for stats in ("poisson", "thermal"):
        cfg = BBM92Config(duration_s=0.05, pair_rate_hz=5e8, coherence_time_s=1e-9, alice_loss_db=10,
                          loss_db=10, pair_statistics=stats)
        link = generate(cfg, seed=2)
        s = link.truth["source"]
        mu = s["mean_pairs_per_window"] * s["p_pair_detectable"]
        q = mu / (1 + mu) if stats == "thermal" else (1 - math.exp(-mu) - mu * math.exp(-mu)) / -math.expm1(-mu)
        w = s["windows_with_detectable_pairs"]
        assert abs(s["multi_pair_windows"] / w - q) < 5 * math.sqrt(q * (1 - q) / w)
