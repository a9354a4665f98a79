"""Clock alignment: kernels vs plain NumPy, the clock model, acquisition vs truth."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from oracles.sift import synth_bbm92
from qkdpost.align import AlignConfig, ClockModel, DriftTracker, find_alignment, fit_clock, xcorr_peak
from qkdpost.align import _kernels as K
from qkdpost.errors import AlignmentError, ConfigError, InputError


# --------------------------------------------------------------------------- kernels vs NumPy


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-10**6, 10**6), min_size=0, max_size=200),
    st.integers(-1000, 1000),
    st.integers(1, 5000),
    st.sampled_from([16, 64, 256]),
)
def test_fold_histogram_matches_numpy(values, origin, bin_ticks, nbins):
    t = np.sort(np.array(values, dtype=np.int64))
    lo, hi = -500_000, 700_000
    out = np.zeros(nbins)
    K.fold_histogram(t, lo, hi, origin, bin_ticks, nbins - 1, out)
    sel = t[(t >= lo) & (t < hi)]
    ref = np.bincount(np.mod(np.floor_divide(sel - origin, bin_ticks), nbins), minlength=nbins)
    np.testing.assert_array_equal(out, ref)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 10**9), min_size=0, max_size=200),
    st.floats(0.9, 1.1),
    st.floats(-0.5, 0.5),
    st.integers(-10**6, 10**6),
)
def test_map_clock_matches_float_formula(values, rate, frac, a_ref):
    t = np.sort(np.array(values, dtype=np.int64))
    out = np.empty_like(t)
    K.map_clock(t, 12345, a_ref, frac, rate, out)
    ref = a_ref + np.floor(frac + (t - 12345) * rate + 0.5).astype(np.int64)
    np.testing.assert_array_equal(out, ref)
    assert np.all(np.diff(out) >= 0)  # monotone


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5000), max_size=60), st.lists(st.integers(0, 5000), max_size=60), st.integers(0, 300))
def test_pair_residuals_matches_brute_force(a, b, window):
    ta = np.sort(np.array(a, dtype=np.int64))
    tb = np.sort(np.array(b, dtype=np.int64))
    out_t = np.empty(4000, np.int64)
    out_r = np.empty(4000, np.int64)
    k = K.pair_residuals(ta, tb, window, out_t, out_r)
    ref = sorted((int(x), int(y - x)) for x in ta for y in tb if abs(int(y) - int(x)) <= window)
    got = sorted(zip(out_t[:k].tolist(), out_r[:k].tolist()))
    assert got == ref


def test_pair_residuals_reports_overflow_count():
    t = np.zeros(10, np.int64)
    k = K.pair_residuals(t, t, 0, np.empty(5, np.int64), np.empty(5, np.int64))
    assert k == 100  # the caller retries with a bigger buffer


def test_xcorr_peak_finds_a_planted_shift():
    rng = np.random.default_rng(3)
    a = rng.poisson(3.0, 4096).astype(float)
    b = np.roll(a, 37) + rng.poisson(3.0, 4096)
    lag, sig, _ = xcorr_peak(a, b)
    assert round(lag) == 37 and sig > 20
    lag, _, _ = xcorr_peak(a, np.roll(a, -100))
    assert round(lag) == -100


# --------------------------------------------------------------------------- clock model


@pytest.mark.parametrize("tick_b", [1e-12, 125e-12, 1 / 256 * 1e-9])
def test_clock_model_round_trip(tick_b):
    m = ClockModel.from_offset(0.25, 37e-6, 1e-12, tick_b, at_a=10**12)
    assert m.offset_s(0) == pytest.approx(0.25, abs=1e-12 + tick_b)
    assert m.freq_ppm == pytest.approx(37.0, rel=1e-9)
    # Bob's reading of Alice's t maps back to t within a tick
    for ta in (0, 10**11, 3 * 10**12):
        tb = (ta * 1e-12 * (1 + 37e-6) + 0.25) / tick_b
        back = m.to_alice(np.array([round(tb)], np.int64))[0]
        assert abs(back - ta) <= tick_b / 1e-12 + 1


def test_clock_model_corrected_removes_a_linear_residual():
    m = ClockModel.from_offset(0.0, 0.0, 1e-12, 1e-12)
    tb = np.arange(0, 10**10, 10**8, dtype=np.int64)
    ta_true = tb - (500 + 2e-7 * (tb - 5 * 10**9)).astype(np.int64)  # mapped - true = 500 + 2e-7 (t - t_m)
    m2 = m.corrected(500.0, 2e-7, 5 * 10**9)
    assert np.max(np.abs(m2.to_alice(tb) - ta_true)) <= 2


def test_config_validation():
    with pytest.raises(ConfigError, match="max_offset_s"):
        AlignConfig(max_offset_s=-1)
    with pytest.raises(ConfigError, match="fine_bin_s"):
        AlignConfig(fine_bin_s=1e-3, coarse_bin_s=1e-5)
    with pytest.raises(ConfigError, match="max_freq_ppm"):
        AlignConfig(max_freq_ppm=5000)
    with pytest.raises(ConfigError, match="gain_freq"):
        DriftTracker(ClockModel.from_offset(0, 0, 1e-12, 1e-12), gain_freq=0)


# --------------------------------------------------------------------------- acquisition vs truth


@pytest.mark.parametrize(
    "offset_s, freq, tick_b, seed",
    [
        (0.0, 0.0, 1e-12, 1),
        (0.49, 97e-6, 1e-12, 2),
        (-0.5, -100e-6, 1e-12, 3),
        (0.1234567891, -3.3e-6, 125e-12, 4),  # qcrypto 1/8 ns ticks at Bob
        (-0.2, 55e-6, 1 / 256 * 1e-9, 5),
    ],
)
def test_alignment_recovers_truth_within_jitter(offset_s, freq, tick_b, seed):
    jitter = 300e-12
    link = synth_bbm92(duration_s=2.2, offset_s=offset_s, freq=freq, tick_b_s=tick_b, jitter_s=jitter, seed=seed)
    al = find_alignment(link.t_a, link.t_b, tick_a_s=link.tick_a_s, tick_b_s=link.tick_b_s)
    m = al.model
    # combined jitter of both sides is sqrt(2) * jitter; the fit is far better
    assert abs(m.offset_s(0) - offset_s) < jitter
    assert abs(m.freq - freq) < 1e-9
    assert al.sigma_ticks * link.tick_a_s == pytest.approx(math.sqrt(2) * jitter, rel=0.15)
    assert all(s.significance > 6 for s in al.stages)
    # the model maps Bob's events onto Alice's within the jitter
    assert al.n_pairs > 0.8 * link.n_pairs_both * (2.2 - abs(offset_s)) / 2.2 * 1.5 / 2.2


@pytest.mark.parametrize("offset_s, freq_ppm, drift", [(-0.3141592653, -71.0, 0.05), (0.5, 100.0, 0.001)])
def test_alignment_against_simulator_truth(offset_s, freq_ppm, drift):
    from qkdpost.simulate import BBM92Config, generate

    cfg = BBM92Config(duration_s=2.0, pair_rate_hz=2e6, bob_offset_s=offset_s, bob_freq_ppm=freq_ppm,
                      bob_drift_ppm_per_s=drift)
    link = generate(cfg, seed=11)
    al = find_alignment(link.alice.t, link.bob.t, tick_a_s=cfg.tick_s, tick_b_s=cfg.tick_s)
    m = al.model
    clock = link.truth["clock"]
    # the model is the tangent at its anchor (start of the fit span)
    t_m = m.a_ref * cfg.tick_s
    true_off = clock["offset_s"] + clock["freq_ppm"] * 1e-6 * t_m + 0.5 * clock["drift_ppm_per_s"] * 1e-6 * t_m**2
    jitter = cfg.bob_detectors.jitter_s
    assert abs(m.offset_s(m.a_ref) - true_off) < jitter
    true_f = clock["freq_ppm"] + clock["drift_ppm_per_s"] * t_m
    assert abs(m.freq_ppm - true_f) < 1e-3
    assert al.drift_ppm_per_s == pytest.approx(drift, abs=0.005)
    assert al.sigma_ticks * cfg.tick_s < 2 * jitter  # the peak is not smeared by the drift


def test_unrelated_streams_raise_alignment_error():
    a = synth_bbm92(duration_s=2.0, seed=21)
    b = synth_bbm92(duration_s=2.0, seed=22)
    with pytest.raises(AlignmentError, match="no significant coincidence peak"):
        find_alignment(a.t_a, b.t_b, tick_a_s=1e-12, tick_b_s=1e-12)


def test_offset_outside_search_range_raises():
    link = synth_bbm92(duration_s=2.0, offset_s=0.45, seed=23)
    with pytest.raises(AlignmentError):
        find_alignment(link.t_a, link.t_b, tick_a_s=1e-12, tick_b_s=1e-12,
                       config=AlignConfig(max_offset_s=0.1, acquisition_s=1.0))


def test_prior_moves_the_search_window():
    link = synth_bbm92(duration_s=2.0, offset_s=3.7, seed=24, t0_s=5.0)
    al = find_alignment(link.t_a, link.t_b, tick_a_s=1e-12, tick_b_s=1e-12,
                        config=AlignConfig(offset_prior_s=3.5, max_offset_s=0.5, acquisition_s=1.0))
    assert abs(al.model.offset_s(0) - 3.7) < 1e-9


def test_bad_inputs():
    t = np.arange(100, dtype=np.int64)
    with pytest.raises(InputError, match="decrease"):
        find_alignment(t[::-1], t, tick_a_s=1e-12, tick_b_s=1e-12)
    with pytest.raises(InputError, match="integer"):
        find_alignment(t.astype(float), t, tick_a_s=1e-12, tick_b_s=1e-12)
    with pytest.raises(InputError, match="tick"):
        find_alignment(t, t, tick_a_s=0.0, tick_b_s=1e-12)
    with pytest.raises(AlignmentError, match="too few"):
        find_alignment(t[:3], t, tick_a_s=1e-12, tick_b_s=1e-12)


def test_read_only_inputs_are_accepted():
    link = synth_bbm92(duration_s=2.0, offset_s=0.01, seed=25)
    link.t_a.flags.writeable = False
    link.t_b.flags.writeable = False
    al = find_alignment(link.t_a, link.t_b, tick_a_s=1e-12, tick_b_s=1e-12)
    assert abs(al.model.offset_s(0) - 0.01) < 1e-9


# --------------------------------------------------------------------------- drift servo


def test_drift_tracker_follows_a_frequency_ramp():
    """Residuals of a clock whose frequency ramps at 0.5 ppm/s; the servo must keep them small."""
    tick = 1e-12
    true = lambda t: 0.01 + (1 + 20e-6) * t + 0.5 * 0.5e-6 * t**2  # Bob's reading of Alice's time t (s)
    m = ClockModel.from_offset(0.01, 20e-6, tick, tick)
    tr = DriftTracker(m)
    rng = np.random.default_rng(0)
    worst = 0.0
    for w in range(100):  # 0.05 s windows over 5 s
        ta = np.sort(rng.uniform(w * 0.05, (w + 1) * 0.05, 2000))
        tb = np.round(true(ta) / tick).astype(np.int64)
        ta_ticks = np.round(ta / tick).astype(np.int64)
        res = tr.model.to_alice(tb) - ta_ticks
        if w > 2:
            worst = max(worst, float(np.abs(res).max()))
        tr.update(ta_ticks, res)
    # without the servo the offset error would reach 0.25 ppm/s * 25 s^2 ~ 6 us;
    # with the predicting servo only the tangent-vs-parabola gap remains,
    # (0.5 ppm/s / 2) * (0.025 s)^2 = 156 ps at the window edges
    assert worst * tick < 250e-12
    assert tr.model.freq_ppm == pytest.approx(20 + 0.5 * 5, abs=0.05)
    assert len(tr.history) == 100


# --------------------------------------------------------------------------- statistics (slow)


@pytest.mark.slow
def test_alignment_statistics_sparse_links_and_unrelated_pairs():
    """Sparse links (20 k pairs/s, 5 % heralding to each side's 100 k/s singles) always align;
    unrelated stream pairs never do (no false peak above the threshold)."""
    for seed in range(20):
        link = synth_bbm92(duration_s=2.0, pair_rate=40e3, eta_a=0.5, eta_b=0.5, bg_rate=80e3,
                           offset_s=(seed - 10) * 0.049, freq=(seed - 10) * 9.7e-6, seed=100 + seed)
        al = find_alignment(link.t_a, link.t_b, tick_a_s=1e-12, tick_b_s=1e-12)
        assert abs(al.model.offset_s(0) - link.offset_s) < 300e-12, seed
        other = synth_bbm92(duration_s=2.0, pair_rate=40e3, eta_a=0.5, eta_b=0.5, bg_rate=80e3, seed=500 + seed)
        with pytest.raises(AlignmentError):
            find_alignment(link.t_a, other.t_b, tick_a_s=1e-12, tick_b_s=1e-12)


def test_find_alignment_rejects_uint64_beyond_int64():
    # values >= 2**63 used to wrap to negative ticks (and still look sorted)
    t = np.arange(100, dtype=np.uint64) + np.uint64(1 << 63)
    ok = np.arange(100, dtype=np.int64)
    with pytest.raises(InputError, match="int64"):
        find_alignment(t, ok, tick_a_s=1e-12, tick_b_s=1e-12)
    with pytest.raises(InputError, match="int64"):
        find_alignment(ok, t, tick_a_s=1e-12, tick_b_s=1e-12)


@pytest.mark.parametrize("tick", [float("inf"), float("nan"), 0.0])
def test_find_alignment_rejects_non_finite_ticks(tick):
    t = np.arange(100, dtype=np.int64)
    with pytest.raises(InputError, match="tick"):
        find_alignment(t, t, tick_a_s=tick, tick_b_s=1e-12)
    with pytest.raises(InputError, match="tick"):
        find_alignment(t, t, tick_a_s=1e-12, tick_b_s=tick)


def test_fit_clock_validates_inputs():
    m = ClockModel.from_offset(0.0, 0.0, 1e-12, 1e-12)
    t = np.arange(100, dtype=np.int64) * 1000
    # floats used to fail inside the kernel with a Numba TypeError
    with pytest.raises(InputError, match="integer"):
        fit_clock(m, t.astype(float), t, 10)
    # unsorted input used to give a silently wrong fit (1 pair of 100)
    with pytest.raises(InputError, match="decrease"):
        fit_clock(m, t[::-1], t, 10)
    with pytest.raises(InputError, match="window"):
        fit_clock(m, t, t, -5)
    # plain lists of ints are fine
    assert fit_clock(m, t.tolist(), t.tolist(), 10)[2] == 100
