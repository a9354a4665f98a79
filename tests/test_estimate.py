"""QBER estimation: known answers for the bounds, error counting vs the oracle."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from oracles.sift import count_errors_oracle
from qkdpost.errors import InputError
from qkdpost.estimate import count_errors, qber_estimate


def test_clopper_pearson_closed_forms():
    # k = 0: P(X = 0) = (1 - p)^n = eps  =>  upper = 1 - eps^(1/n)   (Clopper & Pearson 1934)
    n, eps = 1000, 1e-10
    est = qber_estimate(0, n, eps=eps)
    assert est.upper == pytest.approx(1 - eps ** (1 / n), rel=1e-9)
    assert est.lower == 0.0 and est.qber == 0.0
    # k = n: lower = eps^(1/n)
    est = qber_estimate(n, n, eps=eps)
    assert est.lower == pytest.approx(eps ** (1 / n), rel=1e-9) and est.upper == 1.0


def test_clopper_pearson_matches_scipy_exact_interval():
    from scipy.stats import binomtest

    for k, n, eps in [(30, 1000, 1e-3), (1, 50, 0.025), (500, 20000, 1e-6)]:
        est = qber_estimate(k, n, eps=eps)
        ci = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * eps, method="exact")
        assert est.lower == pytest.approx(ci.low, rel=1e-9)
        assert est.upper == pytest.approx(ci.high, rel=1e-9)


def test_clopper_pearson_tail_probability_is_eps():
    """At p = upper, observing <= k errors has probability eps (the defining equation)."""
    from scipy.stats import binom

    k, n, eps = 17, 3000, 1e-4
    est = qber_estimate(k, n, eps=eps)
    assert binom.cdf(k, n, est.upper) == pytest.approx(eps, rel=1e-6)
    assert binom.sf(k - 1, n, est.lower) == pytest.approx(eps, rel=1e-6)


def test_hoeffding_formula():
    est = qber_estimate(50, 1000, eps=1e-9, method="hoeffding")
    d = math.sqrt(math.log(1e9) / 2000)
    assert est.upper == pytest.approx(0.05 + d) and est.lower == pytest.approx(max(0.0, 0.05 - d))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 10**6), st.floats(0, 1), st.sampled_from([1e-3, 1e-10]))
def test_bounds_bracket_the_observed_rate(n, frac, eps):
    k = int(frac * n)
    for method in ("clopper-pearson", "hoeffding"):
        est = qber_estimate(k, n, eps=eps, method=method)
        assert 0.0 <= est.lower <= est.qber <= est.upper <= 1.0


def test_empty_sample_and_bad_arguments():
    est = qber_estimate(0, 0)
    assert math.isnan(est.qber) and (est.lower, est.upper) == (0.0, 1.0)
    with pytest.raises(InputError, match="errors"):
        qber_estimate(5, 3)
    with pytest.raises(InputError, match="eps"):
        qber_estimate(1, 3, eps=0.7)
    with pytest.raises(InputError, match="method"):
        qber_estimate(1, 3, method="wald")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1), st.integers(0, 3)), max_size=300))
def test_count_errors_matches_oracle(rows):
    a = np.array([r[0] for r in rows], np.uint8)
    b = np.array([r[1] for r in rows], np.uint8)
    c = np.array([r[2] for r in rows], np.uint8)
    err, tot = count_errors(a, b, c, 4)
    ref_err, ref_tot = count_errors_oracle(a, b, c, 4)
    np.testing.assert_array_equal(err, ref_err)
    np.testing.assert_array_equal(tot, ref_tot)


def test_count_errors_without_classes_and_bad_inputs():
    err, tot = count_errors(np.array([0, 1, 1]), np.array([1, 1, 0]))
    assert err.tolist() == [2] and tot.tolist() == [3]
    with pytest.raises(InputError, match="equal length"):
        count_errors(np.zeros(3, np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(InputError, match="0 or 1"):
        count_errors(np.array([2]), np.array([0]))
    with pytest.raises(InputError, match="n_classes"):
        count_errors(np.array([0]), np.array([0]), np.array([5]), 2)


@pytest.mark.parametrize("errors,n", [(2.5, 10), (2, 10.7), (float("nan"), 10), (1, float("inf")), (True, 10)])
def test_qber_estimate_rejects_fractional_counts(errors, n):
    # int() used to truncate 2.5 errors of 10.7 bits to 2 of 10 silently
    with pytest.raises(InputError, match="whole numbers"):
        qber_estimate(errors, n)


def test_qber_estimate_accepts_integral_numbers():
    assert qber_estimate(np.int64(2), 10.0).qber == 0.2


def test_count_errors_rejects_no_classes():
    e = np.empty(0, np.uint8)
    with pytest.raises(InputError, match="n_classes"):
        count_errors(e, e, n_classes=0)
    with pytest.raises(InputError, match="n_classes"):
        count_errors(e, e, n_classes=-1)
