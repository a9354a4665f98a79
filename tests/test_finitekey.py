"""Finite-key bounds: published figure, exact re-evaluation, monotonicity, simulated ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qkdpost import finitekey as fk
from qkdpost.bits import binary_entropy
from qkdpost.errors import InputError
from qkdpost.finitekey import model as M

from oracles.finitekey import lim2014_exact

MU = (0.41, 0.22, 2e-4)  # near the optimum of Lim et al.'s model at n_X = 1e7
P = (0.38, 0.44, 0.18)


def _lim_point(n_x=1e7, length_km=50.0, q_x=0.85):
    c = M.expected_counts(M.LinkModel(), length_km, n_x, q_x, P, MU)
    leak = 1.16 * n_x * float(binary_entropy(c["m_key"].sum() / c["n_key"].sum()))
    return {k: np.round(c[k]) for k in ("n_key", "n_test", "m_test", "m_key")}, leak


def test_lim_sec_iv_block_size_ratio_at_100km():
    """Lim et al. Sec. IV: at 100 km, R(n_X = 1e9) / R(n_X = 1e7) is about 1.75 (their text)."""
    m = M.LinkModel()
    r7, _ = M.optimal_rate(m, 100.0, 1e7)
    r9, _ = M.optimal_rate(m, 100.0, 1e9)
    assert r7 > 0 and r9 > 0
    assert r9 / r7 == pytest.approx(1.75, abs=0.1)


def test_lim_result_object_and_exact_reevaluation():
    c, leak = _lim_point()
    r = fk.lim2014(c["n_key"], c["n_test"], c["m_test"], mu=MU, p_mu=P, leak_ec=leak, eps_sec=1e-10, eps_cor=1e-15)
    assert r.bound == "lim2014" and r.has_key and r.reason == ""
    for name in ("s0", "s1", "s0_test", "s1_test", "v1_test", "phi"):
        assert name in r.bounds
    n = c["n_key"].sum()
    assert 0 <= r.bounds["s0"] <= n and 0 <= r.bounds["s1"] <= n and r.bounds["s0"] + r.bounds["s1"] <= n
    exact = lim2014_exact(c["n_key"], c["n_test"], c["m_test"], MU, P, leak, 1e-10, 1e-15, monotone=True)
    assert r.length <= math.floor(exact)  # float rounding never lengthens the key
    assert r.length >= math.floor(exact) - 1  # and the safety margin costs at most one bit here
    printed = fk.lim2014(c["n_key"], c["n_test"], c["m_test"], mu=MU, p_mu=P, leak_ec=leak, monotone=False)
    exact_p = lim2014_exact(c["n_key"], c["n_test"], c["m_test"], MU, P, leak, 1e-10, 1e-15)
    assert math.floor(exact_p) - 1 <= printed.length <= math.floor(exact_p)
    assert printed.bounds["v1_test"] == pytest.approx(printed.bounds["v1_test_published"], rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.floats(10.0, 150.0), st.floats(1e5, 1e9), st.floats(0.6, 0.97), st.floats(0.0, 2e6))
def test_lim_never_exceeds_exact_formula(length_km, n_x, q_x, extra_leak):
    c = M.expected_counts(M.LinkModel(), length_km, n_x, q_x, P, MU)
    c = {k: np.round(v) for k, v in c.items() if k != "N"}
    leak = 1.2 * n_x * float(binary_entropy(c["m_key"].sum() / max(c["n_key"].sum(), 1))) + extra_leak
    for mono in (False, True):
        r = fk.lim2014(c["n_key"], c["n_test"], c["m_test"], mu=MU, p_mu=P, leak_ec=leak, monotone=mono)
        exact = lim2014_exact(c["n_key"], c["n_test"], c["m_test"], MU, P, leak, 1e-10, 1e-15, monotone=mono)
        if exact is None or exact <= 0:
            assert r.length == 0 and not r.has_key
        else:
            assert r.length <= math.floor(exact)
    for v in (r.bounds["s0"], r.bounds["s1"], r.bounds["s0_test"], r.bounds["s1_test"]):
        assert 0 <= v
    assert r.bounds["s0"] + r.bounds["s1"] <= c["n_key"].sum()
    assert 0 <= r.bounds["phi"] <= 0.5


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["leak", "m_test0", "m_test1", "m_test2"]), st.floats(0.0, 0.3), st.floats(5.0, 150.0),
       st.floats(1e5, 1e9), st.integers(0, 3))
def test_lim_length_non_increasing_in_leak_and_every_error_count(which, frac, length_km, n_x, extra):
    """Issue 5: l non-increasing in every error count (incl. the weakest intensity's) and in the leakage."""
    c, leak = _lim_point(n_x=n_x, length_km=length_km)
    args = dict(mu=MU, p_mu=P)
    base = fk.lim2014(c["n_key"], c["n_test"], c["m_test"], leak_ec=leak, **args)
    m = c["m_test"].copy()
    if which == "leak":
        more = fk.lim2014(c["n_key"], c["n_test"], m, leak_ec=leak * (1 + frac) + 1, **args)
    else:
        i = int(which[-1])
        m[i] = min(c["n_test"][i], m[i] + math.ceil(frac * c["n_test"][i]) + extra)
        more = fk.lim2014(c["n_key"], c["n_test"], m, leak_ec=leak, **args)
    assert more.length <= base.length
    assert more.bounds["v1_test"] >= base.bounds["v1_test"] - 1e-9 * base.bounds["v1_test"]


def test_lim_printed_eq4_is_not_monotone_in_the_weakest_errors():
    """The property of the published bound that the default (monotone) evaluation removes."""
    c, leak = _lim_point(n_x=1e7, length_km=120.0)
    m = c["m_test"].copy()
    m2 = m.copy()
    m2[2] += 200
    a = fk.lim2014(c["n_key"], c["n_test"], m, mu=MU, p_mu=P, leak_ec=leak, monotone=False)
    b = fk.lim2014(c["n_key"], c["n_test"], m2, mu=MU, p_mu=P, leak_ec=leak, monotone=False)
    assert b.length > a.length  # more errors, longer key: Eq. (4) credits them to background
    a = fk.lim2014(c["n_key"], c["n_test"], m, mu=MU, p_mu=P, leak_ec=leak)
    b = fk.lim2014(c["n_key"], c["n_test"], m2, mu=MU, p_mu=P, leak_ec=leak)
    assert b.length <= a.length


def test_monotone_v1_envelope_matches_brute_force():
    """_v1_upper's closed form equals the maximum over every integer count 0..m_lo (oracle), never less."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        m_hi, m_lo, m_rest = (int(x) for x in rng.integers(0, [5000, 3000, 5000]))
        a, b = rng.uniform(1, 30, 2)
        eps = 10.0 ** -rng.uniform(5, 15)
        got, pub = fk._v1_upper(m_hi, m_lo, m_rest, a, b, eps, True)
        c = math.log(1 / eps) / 2
        brute = max(a * (m_hi + math.sqrt(c * (m_hi + m_rest + x))) - b * max(x - math.sqrt(c * (m_hi + m_rest + x)), 0)
                    for x in range(m_lo + 1))
        assert got >= brute - 1e-9 * brute
        assert got <= brute + 1e-6 * brute + a * 1.0  # the real-valued max is within one count of the integer one
        single = rng.uniform(0.05, 1.0)
        both, _ = fk._v1_upper(m_hi, m_lo, m_rest, a, b, eps, True, single=single)
        d_all = math.sqrt(c * (m_hi + m_lo + m_rest))
        assert both == pytest.approx(min(got, single * a * (m_hi + d_all)))
        d = math.sqrt(c * (m_hi + m_lo + m_rest))
        assert pub == pytest.approx(a * (m_hi + d) - b * (m_lo - d))


def test_lim_no_key_when_phase_error_reaches_half_and_when_leak_is_large():
    c, leak = _lim_point()
    m = c["n_test"] * np.array([0.5, 0.5, 0.5])
    r = fk.lim2014(c["n_key"], c["n_test"], np.round(m), mu=MU, p_mu=P, leak_ec=leak)
    assert r.length == 0 and not r.has_key and "1/2" in r.reason and r.bounds["phi"] == 0.5
    r2 = fk.lim2014(c["n_key"], c["n_test"], c["m_test"], mu=MU, p_mu=P, leak_ec=c["n_key"].sum())
    assert r2.length == 0 and r2.value < 0 and r2.reason


def test_tag_bits_longer_than_paper_cost_are_charged():
    c, leak = _lim_point()
    a = fk.lim2014(c["n_key"], c["n_test"], c["m_test"], mu=MU, p_mu=P, leak_ec=leak, eps_cor=1e-15)
    b = fk.lim2014(c["n_key"], c["n_test"], c["m_test"], mu=MU, p_mu=P, leak_ec=leak, eps_cor=1e-15, tag_bits=128)
    assert b.bounds["verify_cost"] == 128 and a.length - b.length in range(77, 80)


def _rusca_point(n_z=1e7, length_km=30.0, q=0.9, mu=(0.5, 0.15), p=(0.7, 0.3)):
    eta = 10 ** (-0.2 * length_km / 10) * 0.25
    mu_a, p_a = np.array(mu), np.array(p)
    det = 1 - np.exp(-eta * mu_a) + 1e-7
    err = 0.01 * (1 - np.exp(-eta * mu_a)) + 0.5e-7
    N = n_z / (q * q * np.sum(p_a * det))
    c = {"n_key": N * q * q * p_a * det, "m_key": N * q * q * p_a * err,
         "n_test": N * (1 - q) ** 2 * p_a * det, "m_test": N * (1 - q) ** 2 * p_a * err}
    c = {k: np.round(v) for k, v in c.items()}
    leak = 1.1 * n_z * float(binary_entropy(c["m_key"].sum() / c["n_key"].sum()))
    return c, leak, mu, p


def test_rusca_result_and_monotonicity():
    c, leak, mu, p = _rusca_point()
    r = fk.rusca2018(c["n_key"], c["m_key"], c["n_test"], c["m_test"], mu=mu, p_mu=p, leak_ec=leak)
    assert r.bound == "rusca2018" and r.has_key
    assert r.bounds["s0"] <= r.bounds["s0_upper"] + 1e-6
    assert 0 < r.bounds["s1"] <= c["n_key"].sum()
    for name in ("m_key", "m_test"):
        bumped = {k: v.copy() for k, v in c.items()}
        bumped[name][0] += 500
        r2 = fk.rusca2018(bumped["n_key"], bumped["m_key"], bumped["n_test"], bumped["m_test"], mu=mu, p_mu=p, leak_ec=leak)
        assert r2.length <= r.length, name
    bumped = {k: v.copy() for k, v in c.items()}
    bumped["m_key"][1] += 500
    r3 = fk.rusca2018(bumped["n_key"], bumped["m_key"], bumped["n_test"], bumped["m_test"], mu=mu, p_mu=p, leak_ec=leak)
    assert r3.length <= r.length
    r4 = fk.rusca2018(c["n_key"], c["m_key"], c["n_test"], c["m_test"], mu=mu, p_mu=p, leak_ec=leak + 1000)
    assert r4.length <= r.length - 999


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["m_key0", "m_key1", "m_test0", "m_test1"]), st.integers(1, 3000), st.floats(5.0, 80.0),
       st.floats(1e6, 1e9))
def test_rusca_length_non_increasing_in_every_error_count(which, bump, length_km, n_z):
    c, leak, mu, p = _rusca_point(n_z=n_z, length_km=length_km)
    base = fk.rusca2018(c["n_key"], c["m_key"], c["n_test"], c["m_test"], mu=mu, p_mu=p, leak_ec=leak)
    name, i = which[:-1], int(which[-1])
    c2 = {k: v.copy() for k, v in c.items()}
    c2[name][i] = min(c2[name][i] + bump, c2["n" + name[1:]][i])
    more = fk.rusca2018(c2["n_key"], c2["m_key"], c2["n_test"], c2["m_test"], mu=mu, p_mu=p, leak_ec=leak)
    assert more.length <= base.length


def test_rusca_small_block_needs_enough_test_events():
    c, leak, mu, p = _rusca_point(n_z=1e6, q=0.7)
    r = fk.rusca2018(c["n_key"], c["m_key"], c["n_test"], c["m_test"], mu=mu, p_mu=p, leak_ec=leak)
    assert r.has_key and r.bounds["phi"] < 0.5
    c, leak, mu, p = _rusca_point(n_z=1e6, q=0.97)  # ~1000 test events: phase error not certifiable
    r = fk.rusca2018(c["n_key"], c["m_key"], c["n_test"], c["m_test"], mu=mu, p_mu=p, leak_ec=leak)
    assert not r.has_key and r.length == 0


def test_tomamichel_values_and_monotonicity():
    """Eq. (2) of Tomamichel et al. 2012: mu = sqrt((n+k)/(nk) (k+1)/k ln(4/eps_sec)), log2(2/(eps_sec^2 eps_cor))."""
    r = fk.tomamichel2012(10**6, 10**5, 2000, leak_ec=120_000, eps_sec=1e-10, eps_cor=1e-15)
    mu = math.sqrt((10**6 + 10**5) / (10**6 * 10**5) * (10**5 + 1) / 10**5 * math.log(4 / 1e-10))
    want = 10**6 * (1 - binary_entropy(0.02 + mu)) - 120_000 - math.log2(2 / (1e-20 * 1e-15))
    assert r.length <= math.floor(want) and r.length >= math.floor(want) - 1
    assert r.bounds["mu"] == pytest.approx(mu, rel=1e-9)
    assert r.params["eps_pe"] == pytest.approx(1e-10 / 4) and r.params["eps_pa"] == pytest.approx(1e-10 / 2)
    worse = fk.tomamichel2012(10**6, 10**5, 2500, leak_ec=120_000)
    assert worse.length < r.length
    abort = fk.tomamichel2012(10**6, 10**5, 2500, leak_ec=120_000, qber_tol=0.02)
    assert abort.length == 0 and "exceeds" in abort.reason
    half = fk.tomamichel2012(10**4, 10**3, 480, leak_ec=0)
    assert half.length == 0 and half.bounds["phi"] == 0.5


def test_tomamichel_general_split_of_eps_sec():
    """Supplementary Eqs. (S3)-(S4): mu(eps) with ln(1/eps) and 2 log2(1/(2 eps_pa)), 2 eps + eps_pa = eps_sec."""
    n, k, e, es = 10**6, 10**5, 2000, 1e-10
    for e_pe in (es / 4, es / 10, 0.45 * es):
        r = fk.tomamichel2012(n, k, e, leak_ec=1000, eps_sec=es, eps_cor=1e-15, eps_pe=e_pe)
        mu = math.sqrt((n + k) / (n * k) * (k + 1) / k * math.log(1 / e_pe))
        want = n * (1 - binary_entropy(e / k + mu)) - 2 * math.log2(1 / (2 * (es - 2 * e_pe))) - 1000 \
            - math.log2(2 / 1e-15)
        assert math.floor(want) - 1 <= r.length <= math.floor(want)
    with pytest.raises(InputError, match="eps_pe"):
        fk.tomamichel2012(n, k, e, leak_ec=0, eps_sec=es, eps_pe=es / 2)


# Tomamichel et al. 2012, Table II (optimised protocols at security rate eps/l = 1e-14, leak_EC = 1.1 n h(Q_tol),
# read from the paper): (n, Q %, r %, p %, Q_tol %, eps_rob %). The probability column is that of the *test*
# basis (it falls with n; the key basis is chosen with 1 - p), so k = n (p / (1 - p))^2 by the paper's
# p_x = (1 + sqrt(k/n))^-1, and M(n, k) = n / (1 - p)^2 pulses. The paper's optimisation is not fully specified
# (eps_sec vs eps_cor split, robustness estimate); docs/finitekey.md, ../shared/reference: a sanity band only.
_TOMAMICHEL_TABLE_II = [
    (1e4, 1.0, 11.7, 38.2, 2.48, 2.3), (1e4, 2.5, 6.8, 43.0, 3.78, 3.0),
    (1e5, 1.0, 30.4, 22.0, 2.14, 0.8), (1e5, 2.5, 21.5, 23.3, 3.58, 1.0),
    (1e6, 1.0, 47.8, 12.5, 1.73, 0.6), (1e6, 2.5, 35.7, 13.7, 3.21, 0.7),
]


@pytest.mark.parametrize("row", _TOMAMICHEL_TABLE_II)
def test_tomamichel_table_ii_sanity_band(row):
    n, _q, r_paper, p_test, q_tol, eps_rob = row
    p_x = 1 - p_test / 100
    k = round(n * (p_test / 100 / p_x) ** 2)
    ell = 0.5 * n
    for _ in range(30):  # eps_sec + eps_cor = 1e-14 l, split evenly; fixed point in l
        eps = 1e-14 * ell
        res = fk.tomamichel2012(int(n), k, int(q_tol / 100 * k), qber_tol=q_tol / 100,
                                leak_ec=1.1 * n * float(binary_entropy(q_tol / 100)), eps_sec=eps / 2, eps_cor=eps / 2)
        ell = max(res.length, 1)
    r = (1 - eps_rob / 100) * res.length / (n / p_x**2)
    assert 0.83 * r_paper / 100 <= r <= r_paper / 100  # ours is 8-15 % below the printed rates, never above


def _simulate_decoy(rng, N, mu, p, q, eta, p_dc, e_mis):
    """Monte Carlo of a decoy BB84 link by photon number: observed counts and the true s0, s1, v1."""
    K = len(mu)
    out = {"n_key": np.zeros(K), "m_key": np.zeros(K), "n_test": np.zeros(K), "m_test": np.zeros(K)}
    truth = {"s0_key": 0, "s1_key": 0, "s0_test": 0, "s1_test": 0, "v1_test": 0}
    for basis, share in (("key", q * q), ("test", (1 - q) ** 2)):
        for i, (k, pk) in enumerate(zip(mu, p)):
            pulses = rng.binomial(N, share * pk)
            counts = rng.multinomial(pulses, [math.exp(-k) * k**j / math.factorial(j) for j in range(8)] + [0])[:8]
            for j, c in enumerate(counts):
                y = 1 - (1 - p_dc) * (1 - eta) ** j
                det = rng.binomial(c, y)
                e_rate = 0.5 if j == 0 else (e_mis * (1 - (1 - eta) ** j) + 0.5 * p_dc) / y
                err = rng.binomial(det, min(e_rate, 0.5))
                out[f"n_{basis}"][i] += det
                out[f"m_{basis}"][i] += err
                if j == 0:
                    truth[f"s0_{basis}"] += det
                if j == 1:
                    truth[f"s1_{basis}"] += det
                    if basis == "test":
                        truth["v1_test"] += err
    return out, truth


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_simulated_ground_truth_inside_lim_bounds(seed):
    rng = np.random.default_rng(seed)
    c, t = _simulate_decoy(rng, 2 * 10**8, MU, P, 0.8, 10 ** (-0.2 * 40 / 10) * 0.1, 1e-6, 0.01)
    r = fk.lim2014(c["n_key"], c["n_test"], c["m_test"], mu=MU, p_mu=P, leak_ec=0.0)
    assert r.bounds["s0"] <= t["s0_key"] and r.bounds["s1"] <= t["s1_key"]
    assert r.bounds["s1_test"] <= t["s1_test"] and r.bounds["v1_test"] >= t["v1_test"]
    assert r.bounds["s1"] > 0.5 * t["s1_key"]  # and the bound is not vacuous


@pytest.mark.parametrize("seed", [4, 5])
def test_simulated_ground_truth_inside_rusca_bounds(seed):
    rng = np.random.default_rng(seed)
    mu, p = (0.5, 0.15), (0.7, 0.3)
    c, t = _simulate_decoy(rng, 2 * 10**8, mu, p, 0.8, 10 ** (-0.2 * 40 / 10) * 0.1, 1e-6, 0.01)
    r = fk.rusca2018(c["n_key"], c["m_key"], c["n_test"], c["m_test"], mu=mu, p_mu=p, leak_ec=0.0)
    assert r.bounds["s0"] <= t["s0_key"] <= r.bounds["s0_upper"]
    assert r.bounds["s1"] <= t["s1_key"] and r.bounds["v1_test"] >= t["v1_test"]
    assert r.bounds["s1"] > 0.3 * t["s1_key"]


def test_bad_inputs_raise_clear_errors():
    c, leak = _lim_point()
    with pytest.raises(InputError, match="mu1 > mu2 \\+ mu3"):
        fk.lim2014(c["n_key"], c["n_test"], c["m_test"], mu=(0.1, 0.2, 0.0), p_mu=P, leak_ec=leak)
    with pytest.raises(InputError, match="3 counts"):
        fk.lim2014(c["n_key"][:2], c["n_test"], c["m_test"], mu=MU, p_mu=P, leak_ec=leak)
    with pytest.raises(InputError, match="cannot exceed"):
        fk.lim2014(c["n_key"], c["n_test"], c["n_test"] + 1, mu=MU, p_mu=P, leak_ec=leak)
    with pytest.raises(InputError, match="eps_sec"):
        fk.lim2014(c["n_key"], c["n_test"], c["m_test"], mu=MU, p_mu=P, leak_ec=leak, eps_sec=0)
    with pytest.raises(InputError, match="leak_ec"):
        fk.lim2014(c["n_key"], c["n_test"], c["m_test"], mu=MU, p_mu=P, leak_ec=-1)
    with pytest.raises(InputError, match="sum to"):
        fk.lim2014(c["n_key"], c["n_test"], c["m_test"], mu=MU, p_mu=(0.5, 0.5, 0.5), leak_ec=leak)
    with pytest.raises(InputError, match="mu1 > mu2 > 0"):
        fk.rusca2018([1, 1], [0, 0], [1, 1], [0, 0], mu=(0.1, 0.2), p_mu=(0.5, 0.5), leak_ec=0)
    with pytest.raises(InputError, match="bound="):
        fk.secure_length("gllp", n_key=1)
    assert fk.secure_length("tomamichel2012", n_key=10**5, k_test=10**4, errors_test=100, leak_ec=10**4).has_key


def test_tomamichel_pa_term_is_never_a_credit():
    """With a (silly) eps_sec close to 1 the split leaves eps_pa > 1/2, where 2 log2(1/(2 eps_pa)) < 0:
    the cost is clamped at 0, so it can never lengthen the key (review finding)."""
    from qkdpost import finitekey as fk

    r = fk.tomamichel2012(10**6, 10**5, 1000, leak_ec=100_000, eps_sec=0.9, eps_pe=0.01)
    assert r.bounds["pa_cost"] >= 0
