"""Statistics of the simulated links against the configured physics.

Tolerances are stated per test: 5 sigma of the counting statistics (a fixed
seed makes each test deterministic; 5 sigma keeps a fresh seed failing less
than once in a million runs) plus, where the formula is first-order only, a
stated model margin.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from qkdpost.simulate import BBM92Config, DecoyConfig, DetectorConfig, generate, joint_table, simulate
from qkdpost.simulate import _kernels as K
from qkdpost.simulate.link import _decoy_table


def _within(observed: float, expected: float, sigma: float, margin: float = 0.0) -> bool:
    return abs(observed - expected) <= 5 * sigma + margin


# ---------------------------------------------------------------------------
# BBM92
# ---------------------------------------------------------------------------
RATES_CFG = BBM92Config(
    duration_s=0.2,
    pair_rate_hz=2e6,
    alice_loss_db=0.0,
    loss_db=3.0,
    alice_detectors=DetectorConfig(efficiency=(0.7, 0.5, 0.6, 0.4), dark_rate_hz=1000.0, dead_time_s=1e-6,
                                   afterpulse_prob=0.0),
    bob_detectors=DetectorConfig(efficiency=(0.6, 0.6, 0.45, 0.55), dark_rate_hz=(500, 800, 1000, 2000),
                                 dead_time_s=1e-6, afterpulse_prob=0.0),
    misalignment_z=0.02,
    misalignment_x=0.05,
    bob_offset_s=-0.4,
    bob_freq_ppm=-80.0,
    bob_drift_ppm_per_s=0.01,
)


@pytest.fixture(scope="module")
def rates_link():
    return generate(RATES_CFG, seed=2024)


def test_bbm92_singles_follow_nonparalysable_dead_time(rates_link):
    """Registered rate = lambda / (1 + lambda tau) (Mueller 1973) for Poisson input
    lambda = pair_rate * marginal click probability + dark rate; variance of the
    count ~ lambda T / (1 + lambda tau)**3."""
    cfg = RATES_CFG
    P = joint_table(cfg)
    T = cfg.duration_s
    for party, det, marg in (("alice", cfg.alice_detectors, P[1:, :].sum(axis=1)),
                             ("bob", cfg.bob_detectors, P[:, 1:].sum(axis=0))):
        tau = det.dead_time_s
        for d, role in enumerate("HVDA"):
            lam_ph = cfg.pair_rate_hz * marg[d]
            lam = lam_ph + det.dark_rate_hz[d]
            exp_reg = T * lam / (1 + lam * tau)
            sig = math.sqrt(T * lam / (1 + lam * tau) ** 3)
            got = rates_link.truth[party]["detectors"][role]
            assert _within(got["registered"], exp_reg, sig), (party, role, got, exp_reg)
            exp_dark = T * det.dark_rate_hz[d] / (1 + lam * tau)
            assert _within(got["dark"], exp_dark, math.sqrt(exp_dark)), (party, role, got["dark"], exp_dark)
            # every candidate is either registered or lost
            exp_all = T * lam
            assert _within(got["registered"] + got["lost_dead_time"], exp_all, math.sqrt(exp_all))
            assert got["afterpulse"] == 0


def test_bbm92_dead_time_gaps_hold_exactly(rates_link):
    tick = RATES_CFG.tick_s
    dead_ticks = RATES_CFG.alice_detectors.dead_time_s / tick
    for party, scale in ((rates_link.alice, 1.0), (rates_link.bob, 1 + RATES_CFG.bob_freq_ppm * 1e-6 - 1e-8)):
        for c in range(4):
            t = party.t[party.ch == c]
            assert np.diff(t).min() >= math.floor(dead_ticks * scale) - 1


def test_bbm92_true_pair_qber_and_matrix(rates_link):
    """Truth matrix = pairs joined by label; QBER per basis = the joint table's
    same-basis error fraction (dead time removes clicks independently of bits)."""
    link = rates_link
    la, lb = link.alice.labels, link.bob.labels
    ca = {int(l): int(c) for l, c in zip(la, link.alice.ch) if l >= 0}
    m = np.zeros((4, 4), np.int64)
    for l, c in zip(lb, link.bob.ch):
        if l >= 0 and int(l) in ca:
            m[ca[int(l)], int(c)] += 1
    assert m.tolist() == link.truth["coincidences"]["matrix"]
    P = joint_table(RATES_CFG)
    for b, lo in (("Z", 1), ("X", 3)):
        blk = P[lo : lo + 2, lo : lo + 2]
        e = (blk[0, 1] + blk[1, 0]) / blk.sum()
        got = link.truth["coincidences"][b]
        n = got["sifted"]
        assert n > 5000
        assert _within(got["errors"] / n, e, math.sqrt(e * (1 - e) / n)), (b, got, e)


def test_bbm92_clock_truth_from_true_pairs(rates_link):
    """Bob's tick of a pair photon = Bob's clock model at Alice's tick, up to
    the two jitters (sigma*sqrt(2)) and TDC quantisation."""
    link, cfg = rates_link, RATES_CFG
    ia = {int(l): i for i, l in enumerate(link.alice.labels) if l >= 0}
    pairs = [(ia[int(l)], j) for j, l in enumerate(link.bob.labels) if l >= 0 and int(l) in ia]
    ai = np.array([p[0] for p in pairs])
    bj = np.array([p[1] for p in pairs])
    t = link.alice.t[ai].astype(np.float64) * cfg.tick_s
    clk = link.truth["clock"]
    pred = (clk["offset_s"] + (1 + clk["freq_ppm"] * 1e-6) * t + 0.5 * clk["drift_ppm_per_s"] * 1e-6 * t * t)
    res = link.bob.t[bj] - pred / cfg.tick_s
    sigma = math.sqrt(cfg.alice_detectors.jitter_s**2 + cfg.bob_detectors.jitter_s**2) / cfg.tick_s
    n = res.size
    assert n > 10000
    assert abs(res.mean()) <= 5 * sigma / math.sqrt(n) + 1.0
    assert abs(res.std() / sigma - 1) < 0.05
    assert np.abs(res).max() < 12 * sigma


def test_bbm92_dark_counts_only():
    cfg = BBM92Config(duration_s=0.5, pair_rate_hz=1.0,
                      alice_detectors=DetectorConfig(dark_rate_hz=(3e4, 1e4, 2e4, 5e3), dead_time_s=0.0,
                                                     afterpulse_prob=0.0),
                      bob_detectors=DetectorConfig(dark_rate_hz=100.0, dead_time_s=0.0, afterpulse_prob=0.0))
    link = generate(cfg, seed=9)
    T = cfg.duration_s
    for d, role in enumerate("HVDA"):
        lam = cfg.alice_detectors.dark_rate_hz[d] * T
        got = link.truth["alice"]["detectors"][role]["dark"]
        assert _within(got, lam, math.sqrt(lam))
        t = link.alice.t[link.alice.ch == d] * cfg.tick_s
        first = np.count_nonzero(t < T / 2)
        assert _within(first, t.size / 2, math.sqrt(t.size) / 2)  # uniform in time
    assert np.all(link.alice.labels < 0) or np.count_nonzero(link.alice.labels >= 0) < 5


def test_bbm92_afterpulsing():
    """Afterpulses ~ p_ap per registered click, delayed dead + Exp(tau) after it.
    Margin 3 %: an afterpulse is lost if another click falls within the dead
    time before it (rate x dead ~ 0.5 %) and cascades add p_ap**2."""
    det = DetectorConfig(dead_time_s=100e-9, afterpulse_prob=0.05, afterpulse_tau_s=200e-9, dark_rate_hz=0.0)
    cfg = BBM92Config(duration_s=0.2, pair_rate_hz=5e5, alice_loss_db=0, alice_detectors=det, bob_detectors=det)
    link = generate(cfg, seed=11)
    a = link.truth["alice"]["detectors"]
    reg = sum(v["registered"] for v in a.values())
    ap = sum(v["afterpulse"] for v in a.values())
    exp = 0.05 * reg
    assert _within(ap, exp, math.sqrt(exp), margin=0.03 * exp), (ap, exp)
    gaps = []
    for c in range(4):
        sel = link.alice.ch == c
        t = link.alice.t[sel]
        lab = link.alice.labels[sel]
        idx = np.nonzero(lab[1:] == -2)[0] + 1
        gaps.append(t[idx] - t[idx - 1])
    g = np.concatenate(gaps) * cfg.tick_s
    assert g.min() >= 100e-9 - 2e-12
    mean = g.mean()
    assert abs(mean - 300e-9) < 5 * 200e-9 / math.sqrt(g.size) + 0.03 * 300e-9, mean


@pytest.mark.parametrize("thermal", [True, False])
def test_pair_number_statistics(thermal):
    """Detectable pairs per window with >= 1: Bose-Einstein -> P(n>=2|n>=1) = q =
    mu/(1+mu); Poisson -> (1 - e^-mu - mu e^-mu)/(1 - e^-mu)."""
    mu = 0.5
    rate = 2e6
    prm = np.array([0.01, rate, mu, 1e-12, 1.0 if thermal else 0.0, 0.0])
    cap = 200000
    out_t, out_k = np.empty((2, cap)), np.empty((2, cap), np.int64)
    n_out, stats = np.zeros(2, np.int64), np.zeros(3, np.int64)
    cum = np.array([0.5, 1.0])
    cells = np.array([6, 7], np.int64)
    status, pairs = K.bbm92_pairs(prm, cum, cells, out_t, out_k, n_out, stats, np.array([5], np.uint64))
    assert status == 0
    w, p, multi = (int(x) for x in stats)
    assert _within(w, rate * 0.01, math.sqrt(rate * 0.01))
    if thermal:
        q = mu / (1 + mu)
        mean_n = 1 / (1 - q)
    else:
        q = (1 - math.exp(-mu) - mu * math.exp(-mu)) / (1 - math.exp(-mu))
        mean_n = mu / (1 - math.exp(-mu))
    assert _within(multi / w, q, math.sqrt(q * (1 - q) / w))
    assert abs(p / w - mean_n) < 0.02 * mean_n


# ---------------------------------------------------------------------------
# decoy BB84
# ---------------------------------------------------------------------------
DECOY_CFG = DecoyConfig(
    duration_s=0.01,
    rep_rate_hz=1e8,
    loss_db=3.0,
    p_z_alice=0.5,
    p_z_bob=0.5,
    misalignment_z=0.02,
    misalignment_x=0.04,
    bob_detectors=DetectorConfig(efficiency=0.5, dark_rate_hz=0.0, dead_time_s=0.0, afterpulse_prob=0.0,
                                 jitter_s=30e-12),
    sync_every=1000,
    bob_offset_s=0.3,
    bob_freq_ppm=50.0,
    bob_drift_ppm_per_s=-0.02,
)


@pytest.fixture(scope="module")
def decoy_link():
    return generate(DECOY_CFG, seed=77)


def test_decoy_alice_choices(decoy_link):
    cfg = DECOY_CFG
    ch = decoy_link.alice.ch
    n = ch.size
    assert n == 1_000_000
    z = np.count_nonzero(((ch >> 1) & 1) == 0)
    assert _within(z / n, cfg.p_z_alice, math.sqrt(0.25 / n))
    cls = (ch >> 2) & 3
    for k, p in enumerate(cfg.intensity_probs):
        assert _within(np.count_nonzero(cls == k) / n, p, math.sqrt(p * (1 - p) / n))
    assert _within(np.count_nonzero(ch & 1) / n, 0.5, math.sqrt(0.25 / n))


def test_decoy_detections_and_photon_numbers(decoy_link):
    """Per class and basis: detected slots = sum over slots of 1 - exp(-lambda_c);
    slots with exactly one emitted photon and a click = N mu e^-mu eta_c."""
    cfg = DECOY_CFG
    tab = _decoy_table(cfg)
    emitted = np.bincount(decoy_link.alice.ch, minlength=16)
    for cls, name in enumerate(cfg.intensity_names):
        mu = cfg.intensities[cls]
        for basis, bname in enumerate("ZX"):
            cs = [bit | (basis << 1) | (cls << 2) for bit in (0, 1)]
            got = decoy_link.truth["counts"][name][bname]
            assert got["emitted"] == int(emitted[cs].sum())
            p = np.array([tab[c, 6] for c in cs])
            exp = float((emitted[cs] * p).sum())
            sig = math.sqrt(float((emitted[cs] * p * (1 - p)).sum()))
            assert _within(got["detected"], exp, sig), (name, bname, got["detected"], exp)
            eta = np.array([tab[c, 4] for c in cs]) / mu
            p1 = mu * math.exp(-mu) * eta
            exp1 = float((emitted[cs] * p1).sum())
            got1 = got["by_photon_number"]["1"]["detected"]
            assert _within(got1, exp1, math.sqrt(exp1)), (name, bname, got1, exp1)
            assert got["by_photon_number"]["0"]["detected"] == 0  # no dark counts, no afterpulses


def test_decoy_qber_per_basis(decoy_link):
    cfg = DECOY_CFG
    for b, e in (("Z", cfg.misalignment_z), ("X", cfg.misalignment_x)):
        s = sum(decoy_link.truth["counts"][c][b]["sifted"] for c in cfg.intensity_names)
        err = sum(decoy_link.truth["counts"][c][b]["errors"] for c in cfg.intensity_names)
        # multi-photon clicks in one detector bias the single-click error rate
        # slightly below e (both photons wrong needs e**2): margin 10 % of e
        assert _within(err / s, e, math.sqrt(e * (1 - e) / s), margin=0.1 * e), (b, err / s, e)
        assert abs(decoy_link.truth["qber"][b] - err / s) < 1e-12


def test_decoy_sync_and_photon_times_follow_clock(decoy_link):
    cfg = DECOY_CFG
    bob = decoy_link.bob
    clk = decoy_link.truth["clock"]

    def bob_ticks(t_true):
        return (clk["offset_s"] + (1 + clk["freq_ppm"] * 1e-6) * t_true
                + 0.5 * clk["drift_ppm_per_s"] * 1e-6 * t_true**2) / cfg.tick_s

    period = 1 / cfg.rep_rate_hz
    sync = bob.ch == cfg.sync_channel
    assert np.count_nonzero(sync) == 1000
    slots = np.arange(1000) * 1000
    res = bob.t[sync] - bob_ticks(slots * period)
    assert abs(res.std() - cfg.sync_jitter_s / cfg.tick_s) < 0.15 * cfg.sync_jitter_s / cfg.tick_s
    assert np.all(bob.labels[sync] == -3)
    ph = bob.labels >= 0
    res = bob.t[ph] - bob_ticks(bob.labels[ph] * period)
    sig = cfg.bob_detectors.jitter_s / cfg.tick_s
    assert abs(res.mean()) < 1.0 + 5 * sig / math.sqrt(res.size)
    assert abs(res.std() / sig - 1) < 0.05


def test_decoy_dark_counts_and_dead_time():
    det = DetectorConfig(efficiency=0.5, dark_rate_hz=2e4, dead_time_s=2e-6, afterpulse_prob=0.0)
    cfg = DecoyConfig(duration_s=0.05, rep_rate_hz=1e7, loss_db=10, bob_detectors=det, sync_every=0)
    link = generate(cfg, seed=5)
    T = cfg.duration_s
    tab = _decoy_table(cfg)
    emitted = np.bincount(link.alice.ch, minlength=16)
    for d, role in enumerate("HVDA"):
        lam_ph = float((emitted[:12] * (1 - np.exp(-tab[:12, d]))).sum()) / T
        lam = lam_ph + 2e4
        got = link.truth["bob"]["detectors"][role]
        exp = T * lam / (1 + lam * 2e-6)
        assert _within(got["registered"], exp, math.sqrt(T * lam / (1 + lam * 2e-6) ** 3) + 1, margin=0.01 * exp)
        t = link.bob.t[link.bob.ch == d]
        assert np.diff(t).min() >= math.floor(2e-6 / cfg.tick_s * (1 - 1e-5)) - 1
    assert "sync" not in link.bob.info.channel_map.values()
    zero = sum(link.truth["counts"][c][b]["by_photon_number"]["0"]["detected"] for c in cfg.intensity_names
               for b in "ZX")
    assert zero > 0  # dark counts land in slots where Alice emitted no photon


def test_decoy_truth_inside_lim2014_bounds():
    """Cross-check with the finite-key stage: Lim et al. (PRA 89, 022307, 2014)
    bounds evaluated on the simulated counts enclose the simulator's true
    vacuum and single-photon counts (s0, s1 lower bounds; v1 upper bound)."""
    fk = pytest.importorskip("qkdpost.finitekey")
    cfg = DecoyConfig(duration_s=0.2, rep_rate_hz=1e8, loss_db=3.0, p_z_alice=0.7, p_z_bob=0.7,
                      bob_detectors=DetectorConfig(efficiency=0.6, dark_rate_hz=2e4, dead_time_s=0.0))
    sim = simulate(cfg, seed=31)
    for _ in sim:  # stream: only the truth is kept
        pass
    tr = sim.truth()
    names = cfg.intensity_names

    def kept(c, b, photons=None):
        e = tr["counts"][c][b] if photons is None else tr["counts"][c][b]["by_photon_number"][photons]
        return e["sifted"] + e["double_clicks"]

    n_key = [kept(c, "Z") for c in names]
    n_test = [kept(c, "X") for c in names]
    m_test = [tr["counts"][c]["X"]["errors"] + tr["counts"][c]["X"]["double_clicks"] / 2 for c in names]
    res = fk.lim2014(n_key, n_test, m_test, mu=cfg.intensities, p_mu=cfg.intensity_probs, leak_ec=0.0)
    s0_true = sum(kept(c, "Z", "0") for c in names)
    s1_true = sum(kept(c, "Z", "1") for c in names)
    s1x_true = sum(kept(c, "X", "1") for c in names)
    v1_true = sum(tr["counts"][c]["X"]["by_photon_number"]["1"]["errors"] for c in names)
    assert s1_true > 1000 and s0_true > 0
    assert 0 < res.bounds["s1"] <= s1_true
    assert res.bounds["s0"] <= s0_true
    assert res.bounds["s1_test"] <= s1x_true
    assert res.bounds["v1_test"] >= v1_true


def test_per_detector_delays():
    """Each channel's timestamps are shifted by its fixed delay: pair residuals
    per (Alice, Bob) channel pair centre on delay_b - delay_a; in the decoy
    truth the nearest slot is taken after removing the delay, so a delay
    longer than half a slot period leaves the true QBER unchanged."""
    da = (0.0, 120e-12, -80e-12, 40e-12)
    db = (300e-12, -200e-12, 0.0, 1e-9)
    cfg = BBM92Config(duration_s=0.05, alice_detectors=DetectorConfig(delay_s=da),
                      bob_detectors=DetectorConfig(delay_s=db), bob_freq_ppm=0.0, bob_drift_ppm_per_s=0.0,
                      bob_offset_s=0.0)
    link = generate(cfg, seed=3)
    from qkdpost.simulate import true_pairs

    ia, ib = true_pairs(link.alice.labels, link.bob.labels, topology="bbm92")
    res = (link.bob.t[ib] - link.alice.t[ia]) * cfg.tick_s
    ca, cb = link.alice.ch[ia], link.bob.ch[ib]
    sig = math.sqrt(2) * 50e-12
    checked = 0
    for a in range(4):
        for b in range(4):
            r = res[(ca == a) & (cb == b)]
            if r.size >= 5:
                assert abs(r.mean() - (db[b] - da[a])) < 5 * sig / math.sqrt(r.size) + 2e-12
                checked += 1
    assert checked >= 14
    dcfg = DecoyConfig(duration_s=0.01, loss_db=3.0, rep_rate_hz=1e8, misalignment_z=0.02, misalignment_x=0.02,
                       bob_detectors=DetectorConfig(delay_s=(7e-9, 0.0, -6e-9, 2e-9), dark_rate_hz=0.0,
                                                    afterpulse_prob=0.0, dead_time_s=0.0))
    d = generate(dcfg, seed=4)
    assert abs(d.truth["qber"]["Z"] - 0.02) < 0.004 and abs(d.truth["qber"]["X"] - 0.02) < 0.006
    ph = d.bob.labels >= 0
    t_true = d.bob.labels[ph] * 1e-8
    clk = d.truth["clock"]
    pred = (clk["offset_s"] + (1 + clk["freq_ppm"] * 1e-6) * t_true) / dcfg.tick_s
    for c, delay in enumerate(dcfg.bob_detectors.delay_s):
        sel = d.bob.ch[ph] == c
        r = (d.bob.t[ph][sel] - pred[sel]) * dcfg.tick_s
        assert abs(r.mean() - delay) < 5e-12
