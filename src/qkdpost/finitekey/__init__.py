"""Finite-key secure length: published bounds as pure functions of observed counts.

Bounds
------
``lim2014``
    Decoy-state BB84 with two decoys (three intensities): Lim, Curty, Walenta,
    Xu, Zbinden, "Concise security bounds for practical decoy-state quantum
    key distribution", Phys. Rev. A 89, 022307 (2014),
    doi:10.1103/PhysRevA.89.022307, Eqs. (1)-(5).
``rusca2018``
    Decoy-state BB84 with one decoy (two intensities): Rusca, Boaron,
    Grünenfelder, Martin, Zbinden, "Finite-key analysis for the 1-decoy state
    QKD protocol", Appl. Phys. Lett. 112, 171104 (2018),
    doi:10.1063/1.5023340, Eqs. (A16)-(A25), with the two known misprints
    corrected: the ``e^k/p_k`` prefactor missing from (A18) is restored, and
    (A16) uses ``eps_2`` (the error-count deviation of (A4)) where ``eps_1`` is
    printed.
``tomamichel2012``
    Single-photon BB84 / entanglement-based BBM92: Tomamichel, Lim, Gisin,
    Renner, "Tight finite-key analysis for quantum cryptography", Nat. Commun.
    3, 634 (2012), doi:10.1038/ncomms1631, Eq. (2) (Theorem 2) and its
    general form, Supplementary Eqs. (S3)-(S4).

Conventions
-----------
* "key" basis = the basis the key is drawn from (X in Lim et al., Z in Rusca
  et al.); "test" basis = the other one, whose errors bound the phase error.
* ``leak_ec`` is the number of bits actually disclosed by error correction
  (never ``f h(Q)``); ``tag_bits`` the verification tag. The papers charge
  ``log2(2/eps_cor)`` bits for verification; we charge
  ``max(log2(2/eps_cor), tag_bits)`` so a longer tag is never undercounted.
* Rounding: every lower bound is nudged down and every upper bound up by
  ``1e-12`` times the magnitude of the terms that formed it (float64 error
  of the few dozen operations involved is below ``1e-14`` of that
  magnitude), and the final length is floored; so floating-point rounding can
  never increase the length.
* All count bounds are clipped to ``[0, n]``; a phase-error bound at or above
  ``1/2`` (or no single-photon events) gives no key. ``length <= 0`` is a
  no-key outcome (``SecureLength.has_key`` is False), not an exception.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import InputError

__all__ = [
    "BOUNDS",
    "SecureLength",
    "secure_length",
    "lim2014",
    "rusca2018",
    "tomamichel2012",
    "hoeffding_delta",
]

BOUNDS = ("lim2014", "rusca2018", "tomamichel2012")

_REL = 1e-12  # relative safety margin against float64 rounding (see module docstring)


@dataclass(frozen=True)
class SecureLength:
    """Result of a finite-key bound.

    Attributes
    ----------
    bound : str
        Which published bound produced it (``"lim2014"``, ...).
    length : int
        Secure key length ``l`` in bits; 0 when the block yields no key.
    value : float
        The bound before flooring and clipping at 0 (may be negative).
    reason : str
        Empty when ``length > 0``; otherwise why there is no key.
    bounds : dict
        Intermediate bounds: vacuum and single-photon counts in the key and
        test basis (``s0``, ``s1``, ``s0_test``, ``s1_test``), single-photon
        test-basis errors ``v1_test``, phase-error bound ``phi``, and the
        subtracted terms (``leak_ec``, ``verify_cost``, ``pa_cost``).
    params : dict
        eps_sec, eps_cor and the counts the bound was evaluated on.
    """

    bound: str
    length: int
    value: float
    reason: str
    bounds: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def has_key(self) -> bool:
        return self.length > 0


# --------------------------------------------------------------------------
# helpers: validation and conservative rounding
# --------------------------------------------------------------------------


def _lo(x: float, scale: float) -> float:
    """A lower bound nudged down by the rounding margin."""
    return x - _REL * abs(scale) - 1e-300


def _hi(x: float, scale: float) -> float:
    """An upper bound nudged up by the rounding margin."""
    return x + _REL * abs(scale) + 1e-300


def _clip(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def _h(p: float) -> float:
    """Binary entropy, nudged up (an upper bound on h(p) for p in [0, 1/2])."""
    if p <= 0.0:
        return 0.0
    if p >= 0.5:
        return 1.0
    v = -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)
    return min(1.0, _hi(v, 1.0))


def hoeffding_delta(n: float, eps: float) -> float:
    """Hoeffding deviation ``delta(n, eps) = sqrt(n/2 ln(1/eps))`` (Lim et al. 2014, Eq. A1)."""
    return math.sqrt(n / 2.0 * math.log(1.0 / eps))


def _v1_upper(m_hi: float, m_lo: float, m_rest: float, a: float, b: float, eps: float,
              monotone: bool, single: float = 0.0) -> tuple[float, float]:
    """Upper bound on single-photon errors from a (stronger, weaker) pair of intensities.

    The published form (Lim et al. 2014 Eq. 4; Rusca et al. 2018 Eq. A22) is,
    up to the positive factor ``tau1 / (mu_hi - mu_lo)``::

        v1 <= a (m_hi + delta(M)) - b (m_lo - delta(M)),    M = m_hi + m_lo + m_rest,

    with ``a = e^mu_hi / p_hi``, ``b = e^mu_lo / p_lo`` and the Hoeffding
    deviation ``delta(M) = sqrt(M/2 ln(1/eps))`` (Lim Eq. A1). It comes from
    the expected counts, ``v1 <= tau1/(mu_hi - mu_lo) (a m*_hi - b m*_lo)``,
    with ``m*_hi <= m_hi + delta`` and ``m*_lo >= m_lo - delta``. The errors
    ``m_lo`` at the weaker intensity enter with a minus sign, so the published
    bound *falls* when ``m_lo`` grows: the key length is not monotone in it.

    ``monotone=True`` returns the minimum of two bounds, each non-decreasing in
    every error count and each derived from the same inequalities under the
    same concentration events:

    1. ``V(m_lo) = max_{0 <= x <= m_lo} v(x)`` with ``v(x) = a (m_hi + delta)
       - b max(x - delta, 0)``, ``delta = delta(m_hi + x + m_rest)``: the
       expected count ``m*_lo`` is also >= 0, and the running maximum removes
       the fall. ``v`` is concave in ``x`` (delta concave, ``x - delta``
       convex), so ``V`` is the largest of ``v`` at 0, ``m_lo``, the kink
       ``x = delta`` and the stationary point ``delta'(M) = b/(a+b)``.
    2. ``single * a (m_hi + delta(M))`` with ``single = (mu_hi - mu_lo)/mu_hi``:
       the stronger intensity alone, ``e^mu_hi m*_hi / p_hi = sum_n mu_hi^n
       v_n / (n! tau_n) >= mu_hi v1 / tau1`` (the same step as in the papers,
       keeping one intensity; it uses only the event ``m*_hi <= m_hi + delta``
       that the printed bound already uses). ``single = 0`` leaves it out.

    Returns ``(bound, published)`` (the second is the printed form, unclamped),
    both in units of ``tau1 / (mu_hi - mu_lo)``.
    """
    c = math.log(1.0 / eps) / 2.0  # delta(M) = sqrt(c M)
    m0 = m_hi + m_rest

    def v(x: float) -> float:
        d = math.sqrt(c * (m0 + x))
        return a * (m_hi + d) - b * max(x - d, 0.0)

    d_all = math.sqrt(c * (m0 + m_lo))
    published = a * (m_hi + d_all) - b * (m_lo - d_all)
    if not monotone:
        return published, published
    cands = [0.0, m_lo]
    # kink: x = sqrt(c (m0 + x))  ->  x^2 - c x - c m0 = 0
    cands.append((c + math.sqrt(c * c + 4.0 * c * m0)) / 2.0)
    # stationary point of a delta(M) - b (x - delta(M)): sqrt(c) / (2 sqrt(M)) = b / (a + b)
    cands.append(c * (a + b) ** 2 / (4.0 * b * b) - m0)
    env = max(v(min(max(x, 0.0), m_lo)) for x in cands)
    if single > 0.0:
        env = min(env, single * a * (m_hi + d_all))
    return env, published


def _eps(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}={value!r}: must be a number in (0, 1)") from None
    if not (0.0 < v < 1.0):
        raise InputError(f"{name}={value!r}: must be in (0, 1), e.g. 1e-10")
    return v


def _counts(name: str, value: Any, size: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (size,):
        raise InputError(f"{name}: expected {size} counts (one per intensity), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise InputError(f"{name}={arr.tolist()}: counts must be finite and >= 0")
    return arr


def _nonneg(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}={value!r}: must be a number >= 0") from None
    if not math.isfinite(v) or v < 0:
        raise InputError(f"{name}={value!r}: must be finite and >= 0")
    return v


def _probs(name: str, value: Any, size: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (size,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0) or np.any(arr > 1):
        raise InputError(f"{name}={value!r}: expected {size} probabilities in (0, 1]")
    if arr.sum() > 1.0 + 1e-9:
        raise InputError(f"{name}={arr.tolist()}: probabilities sum to {arr.sum()} > 1")
    return arr


def _tau(n: int, mu: np.ndarray, p: np.ndarray) -> float:
    """tau_n = sum_k p_k e^-k k^n / n!: probability that Alice sends n photons (Lim Eq. 2)."""
    return float(sum(pk * math.exp(-k) * k**n / math.factorial(n) for k, pk in zip(mu, p)))


def _gamma(a: float, b: float, c: float, d: float) -> float:
    """Random-sampling term of Lim et al. Eq. (5) (Fung, Ma, Chau, PRA 81, 012318 (2010)).

    gamma(a,b,c,d) = sqrt((c+d)(1-b)b / (c d ln 2) * log2((c+d)/(c d (1-b) b) * 21^2/a^2)).
    """
    x = (1.0 - b) * b
    arg = (c + d) / (c * d * x) * (21.0**2) / (a * a)
    if arg <= 1.0:
        return 0.0
    return math.sqrt((c + d) * x / (c * d * math.log(2.0)) * math.log2(arg))


def _phase_error(v1_test: float, s1_test: float, s1_key: float, eps_sec: float) -> float:
    """phi = v/s + gamma(eps_sec, v/s, s_test, s_key), upper bound; >= 1/2 means no key.

    gamma grows with b on (0, 1/2], so evaluating it at b >= 1/s_test (at
    least one error) is conservative and avoids the degenerate gamma(b=0)=0.
    """
    if s1_test <= 0.0 or s1_key <= 0.0:
        return 0.5
    b = v1_test / s1_test
    if b >= 0.5:
        return 0.5
    b_eff = min(max(b, 1.0 / s1_test), 0.5)
    phi = b + _gamma(eps_sec, b_eff, s1_test, s1_key)
    phi = _hi(phi, phi)
    return min(phi, 0.5)


def _verify_cost(eps_cor: float, tag_bits: Any) -> float:
    paper = math.log2(2.0 / eps_cor)
    if tag_bits is None:
        return _hi(paper, paper)
    t = _nonneg("tag_bits", tag_bits)
    return max(_hi(paper, paper), t)


def _finish(bound: str, s0: float, s1: float, phi: float, leak: float, verify: float, pa: float,
            n_key: float, bounds: dict[str, float], params: dict[str, Any]) -> SecureLength:
    """l = floor(s0 + s1 (1 - h(phi)) - leak - verify - pa), conservatively."""
    bounds = {k: float(v) for k, v in dict(bounds, phi=phi, leak_ec=leak, verify_cost=verify, pa_cost=pa).items()}
    s0, s1 = float(s0), float(s1)
    if phi >= 0.5 or s1 <= 0.0:
        why = "phase-error bound reached 1/2" if phi >= 0.5 else "no single-photon events can be certified"
        val = _lo(s0 - leak - verify - pa, s0 + leak + verify + pa)
        return SecureLength(bound, 0, float(val), why, bounds, params)
    gain = s1 * (1.0 - _h(phi))
    val = s0 + gain - leak - verify - pa
    val = _lo(val, s0 + s1 + leak + verify + pa)
    length = int(math.floor(val)) if val > 0 else 0
    length = min(length, int(math.floor(n_key)))
    reason = "" if length > 0 else "finite-key bound is not positive"
    return SecureLength(bound, length, float(val), reason, bounds, params)


# --------------------------------------------------------------------------
# Lim et al. 2014 (two decoys)
# --------------------------------------------------------------------------


def _lim_s0(n: np.ndarray, mu: np.ndarray, p: np.ndarray, eps: float) -> tuple[float, float]:
    """Vacuum lower bound, Lim Eq. (2): s0 >= tau0 (mu2 n-_{mu3} - mu3 n+_{mu2}) / (mu2 - mu3)."""
    total = float(n.sum())
    d = hoeffding_delta(total, eps)
    tau0 = _tau(0, mu, p)
    n_minus3 = math.exp(mu[2]) / p[2] * (n[2] - d)
    n_plus2 = math.exp(mu[1]) / p[1] * (n[1] + d)
    val = tau0 * (mu[1] * n_minus3 - mu[2] * n_plus2) / (mu[1] - mu[2])
    scale = tau0 * (mu[1] * abs(n_minus3) + mu[2] * abs(n_plus2)) / (mu[1] - mu[2])
    return _clip(_lo(val, scale), 0.0, total), d


def _lim_s1(n: np.ndarray, mu: np.ndarray, p: np.ndarray, eps: float, s0: float) -> float:
    """Single-photon lower bound, Lim Eq. (3)."""
    total = float(n.sum())
    d = hoeffding_delta(total, eps)
    tau0, tau1 = _tau(0, mu, p), _tau(1, mu, p)
    m1, m2, m3 = mu
    n_plus1 = math.exp(m1) / p[0] * (n[0] + d)
    n_minus2 = math.exp(m2) / p[1] * (n[1] - d)
    n_plus3 = math.exp(m3) / p[2] * (n[2] + d)
    c = (m2 * m2 - m3 * m3) / (m1 * m1)
    den = m1 * (m2 - m3) - m2 * m2 + m3 * m3
    inner = n_minus2 - n_plus3 - c * (n_plus1 - s0 / tau0)
    val = tau1 * m1 * inner / den
    scale = tau1 * m1 * (abs(n_minus2) + abs(n_plus3) + c * (abs(n_plus1) + s0 / tau0)) / abs(den)
    return _clip(_lo(val, scale), 0.0, total)


def _lim_v1(m: np.ndarray, mu: np.ndarray, p: np.ndarray, eps: float, monotone: bool) -> tuple[float, float]:
    """Single-photon error upper bound, Lim Eq. (4): v1 <= tau1 (m+_{mu2} - m-_{mu3}) / (mu2 - mu3).

    ``monotone``: see :func:`_v1_upper`. Returns (bound used, published bound).
    """
    tau1 = _tau(1, mu, p)
    f = tau1 / (mu[1] - mu[2])
    a, b = math.exp(mu[1]) / p[1], math.exp(mu[2]) / p[2]
    raw, pub = _v1_upper(float(m[1]), float(m[2]), float(m[0]), a, b, eps, monotone,
                         single=(mu[1] - mu[2]) / mu[1])
    scale = f * (a * (m[1] + math.sqrt(m.sum() * math.log(1 / eps))) + b * m[2] + 1.0)
    return max(_hi(f * raw, scale), 0.0), max(f * pub, 0.0)


def lim2014(
    n_key: Sequence[float],
    n_test: Sequence[float],
    m_test: Sequence[float],
    *,
    mu: Sequence[float],
    p_mu: Sequence[float],
    leak_ec: float,
    eps_sec: float = 1e-10,
    eps_cor: float = 1e-15,
    tag_bits: int | None = None,
    monotone: bool = True,
) -> SecureLength:
    """Secure length of decoy-state BB84 with two decoys (Lim et al. 2014).

    ``l = floor(s0 + s1 - s1 h(phi) - leak_ec - 6 log2(21/eps_sec) - log2(2/eps_cor))``
    (Eq. 1) with the vacuum bound ``s0`` (Eq. 2), the single-photon bound
    ``s1`` (Eq. 3) in the key basis, the single-photon errors ``v1`` of the
    test basis (Eq. 4) and the phase-error bound ``phi`` (Eq. 5); Hoeffding
    deviations ``sqrt(n/2 ln(21/eps_sec))``.

    Parameters
    ----------
    n_key : 3 counts
        Detections in the key basis per intensity ``(mu1, mu2, mu3)`` (both
        parties chose the key basis). ``sum(n_key)`` is the block length.
    n_test, m_test : 3 counts each
        Detections and errors in the test basis per intensity.
    mu : 3 floats
        Intensities with ``mu1 > mu2 + mu3`` and ``mu2 > mu3 >= 0``.
    p_mu : 3 floats
        Probabilities of the intensities.
    leak_ec : float
        Bits disclosed by error correction (actual count).
    eps_sec, eps_cor : float
    tag_bits : int, optional
        Verification tag length; see the module docstring.
    monotone : bool
        True (default): the single-photon error bound of Eq. (4) is replaced
        by a bound from the same inequalities that never falls when an error
        count grows (:func:`_v1_upper`), so the length is non-increasing in
        every error count. False: Eq. (4) as printed, whose minus sign on the
        weakest intensity's errors makes the length grow with them
        (docs/finitekey.md). ``bounds["v1_test_published"]`` always holds the
        printed value.
    """
    nk = _counts("n_key", n_key, 3)
    nt = _counts("n_test", n_test, 3)
    mt = _counts("m_test", m_test, 3)
    if np.any(mt > nt):
        raise InputError(f"m_test={mt.tolist()}: errors cannot exceed detections n_test={nt.tolist()}")
    mu_a = np.asarray(mu, dtype=np.float64)
    if mu_a.shape != (3,) or not (mu_a[0] > mu_a[1] + mu_a[2] and mu_a[1] > mu_a[2] >= 0):
        raise InputError(f"mu={mu!r}: Lim et al. need mu1 > mu2 + mu3 and mu2 > mu3 >= 0")
    p = _probs("p_mu", p_mu, 3)
    es = _eps("eps_sec", eps_sec)
    ec = _eps("eps_cor", eps_cor)
    leak = _nonneg("leak_ec", leak_ec)
    eps = es / 21.0
    s0, _ = _lim_s0(nk, mu_a, p, eps)
    s1 = min(_lim_s1(nk, mu_a, p, eps, s0), max(float(nk.sum()) - s0, 0.0))
    s0t, _ = _lim_s0(nt, mu_a, p, eps)
    s1t = _lim_s1(nt, mu_a, p, eps, s0t)
    v1t, v1_pub = _lim_v1(mt, mu_a, p, eps, bool(monotone))
    v1t = min(v1t, float(nt.sum()))
    phi = _phase_error(v1t, s1t, s1, es)
    pa = _hi(6.0 * math.log2(21.0 / es), 6.0 * math.log2(21.0 / es))
    bounds = {"s0": s0, "s1": s1, "s0_test": s0t, "s1_test": s1t, "v1_test": v1t, "v1_test_published": v1_pub}
    params = {"eps_sec": es, "eps_cor": ec, "n_key": nk.tolist(), "n_test": nt.tolist(),
              "m_test": mt.tolist(), "mu": mu_a.tolist(), "p_mu": p.tolist(), "tag_bits": tag_bits,
              "monotone": bool(monotone)}
    return _finish("lim2014", s0, s1, phi, leak, _verify_cost(ec, tag_bits), pa, float(nk.sum()), bounds, params)


# --------------------------------------------------------------------------
# Rusca et al. 2018 (one decoy)
# --------------------------------------------------------------------------


def _rusca_basis(n: np.ndarray, m: np.ndarray, mu: np.ndarray, p: np.ndarray, eps: float) -> tuple[float, float, float]:
    """(s0 lower (A19), s0 upper (A16), s1 lower (A17)) for one basis."""
    n_tot = float(n.sum())
    m_tot = float(m.sum())
    dn = hoeffding_delta(n_tot, eps)
    dm = hoeffding_delta(m_tot, eps) if m_tot > 0 else 0.0
    tau0, tau1 = _tau(0, mu, p), _tau(1, mu, p)
    m1, m2 = mu
    n_plus1 = math.exp(m1) / p[0] * (n[0] + dn)
    n_minus2 = math.exp(m2) / p[1] * (n[1] - dn)
    # (A19): s0 >= tau0/(mu1-mu2) (mu1 n-_{mu2} - mu2 n+_{mu1})
    s0_lo = tau0 / (m1 - m2) * (m1 * n_minus2 - m2 * n_plus1)
    s0_lo = _clip(_lo(s0_lo, tau0 / (m1 - m2) * (m1 * abs(n_minus2) + m2 * n_plus1)), 0.0, n_tot)
    # (A16) with k = mu2 and eps_2 for the error deviation (misprint corrected)
    s0_up = 2.0 * (tau0 * math.exp(m2) / p[1] * (m[1] + dm) + dn)
    s0_up = _clip(_hi(s0_up, s0_up), 0.0, n_tot)
    # (A17) with n^± = e^k/p_k (n_k ± delta) (A18 prefactor restored)
    inner = n_minus2 - (m2 * m2) / (m1 * m1) * n_plus1 - (m1 * m1 - m2 * m2) / (m1 * m1) * s0_up / tau0
    coef = tau1 * m1 / (m2 * (m1 - m2))
    scale = coef * (abs(n_minus2) + n_plus1 + s0_up / tau0)
    s1_lo = _clip(_lo(coef * inner, scale), 0.0, n_tot)
    return s0_lo, s0_up, s1_lo


def rusca2018(
    n_key: Sequence[float],
    m_key: Sequence[float],
    n_test: Sequence[float],
    m_test: Sequence[float],
    *,
    mu: Sequence[float],
    p_mu: Sequence[float],
    leak_ec: float,
    eps_sec: float = 1e-10,
    eps_cor: float = 1e-15,
    tag_bits: int | None = None,
    monotone: bool = True,
) -> SecureLength:
    """Secure length of decoy-state BB84 with one decoy (Rusca et al. 2018).

    ``l = floor(s0 + s1 (1 - h(phi)) - leak_ec - 6 log2(19/eps_sec) - log2(2/eps_cor))``
    (A25) with ``s0`` from (A19), ``s1`` from (A17) using the vacuum upper
    bound (A16) evaluated on the decoy ``mu2``'s errors, ``v1`` of the test
    basis from (A22) and ``phi`` from (A20)-(A21); deviations
    ``sqrt(n/2 ln(19/eps_sec))``. Misprints corrected as in the module
    docstring. The sampling term gamma uses ``21^2/eps_sec^2`` as in Lim et
    al.; it is larger than the ``19^2`` that the one-decoy composition would
    allow, hence conservative.

    Parameters
    ----------
    n_key, m_key : 2 counts each
        Detections and errors in the key basis per intensity ``(mu1, mu2)``.
    n_test, m_test : 2 counts each
        Detections and errors in the test basis.
    mu : 2 floats, ``mu1 > mu2 > 0``
    p_mu : 2 floats
    leak_ec, eps_sec, eps_cor, tag_bits, monotone : see :func:`lim2014`
        (here the decoy ``mu2``'s test-basis errors enter (A22) with the
        minus sign).
    """
    nk = _counts("n_key", n_key, 2)
    mk = _counts("m_key", m_key, 2)
    nt = _counts("n_test", n_test, 2)
    mt = _counts("m_test", m_test, 2)
    if np.any(mk > nk) or np.any(mt > nt):
        raise InputError("m_key/m_test: errors cannot exceed the detections of the same intensity")
    mu_a = np.asarray(mu, dtype=np.float64)
    if mu_a.shape != (2,) or not (mu_a[0] > mu_a[1] > 0):
        raise InputError(f"mu={mu!r}: Rusca et al. need mu1 > mu2 > 0")
    p = _probs("p_mu", p_mu, 2)
    es = _eps("eps_sec", eps_sec)
    ec = _eps("eps_cor", eps_cor)
    leak = _nonneg("leak_ec", leak_ec)
    eps = es / 19.0
    s0, s0_up, s1 = _rusca_basis(nk, mk, mu_a, p, eps)
    s1 = min(s1, max(float(nk.sum()) - s0, 0.0))
    s0t, s0t_up, s1t = _rusca_basis(nt, mt, mu_a, p, eps)
    # (A22): v1 <= tau1/(mu1-mu2) (m+_{mu1} - m-_{mu2}), deviation delta(m_test, eps_2)
    tau1 = _tau(1, mu_a, p)
    f = tau1 / (mu_a[0] - mu_a[1])
    a, b = math.exp(mu_a[0]) / p[0], math.exp(mu_a[1]) / p[1]
    raw, pub = _v1_upper(float(mt[0]), float(mt[1]), 0.0, a, b, eps, bool(monotone),
                         single=(mu_a[0] - mu_a[1]) / mu_a[0])
    scale = f * (a * (mt[0] + math.sqrt(mt.sum() * math.log(1 / eps))) + b * mt[1] + 1.0)
    v1t = min(max(_hi(f * raw, scale), 0.0), float(nt.sum()))
    v1_pub = max(f * pub, 0.0)
    phi = _phase_error(v1t, s1t, s1, es)
    pa = _hi(6.0 * math.log2(19.0 / es), 6.0 * math.log2(19.0 / es))
    bounds = {"s0": s0, "s0_upper": s0_up, "s1": s1, "s0_test": s0t, "s0_test_upper": s0t_up,
              "s1_test": s1t, "v1_test": v1t, "v1_test_published": v1_pub}
    params = {"eps_sec": es, "eps_cor": ec, "n_key": nk.tolist(), "m_key": mk.tolist(), "n_test": nt.tolist(),
              "m_test": mt.tolist(), "mu": mu_a.tolist(), "p_mu": p.tolist(), "tag_bits": tag_bits,
              "monotone": bool(monotone)}
    return _finish("rusca2018", s0, s1, phi, leak, _verify_cost(ec, tag_bits), pa, float(nk.sum()), bounds, params)


# --------------------------------------------------------------------------
# Tomamichel et al. 2012 (single photons / BBM92)
# --------------------------------------------------------------------------


def tomamichel2012(
    n_key: int,
    k_test: int,
    errors_test: int,
    *,
    leak_ec: float,
    eps_sec: float = 1e-10,
    eps_cor: float = 1e-15,
    qber_tol: float | None = None,
    q: float = 1.0,
    tag_bits: int | None = None,
    eps_pe: float | None = None,
) -> SecureLength:
    """Secure length for single-photon BB84 or BBM92 (Tomamichel et al. 2012).

    Theorem 2 of Tomamichel, Lim, Gisin, Renner, Nat. Commun. 3, 634 (2012),
    doi:10.1038/ncomms1631, in its general form (Supplementary Eqs. S3-S4)::

        l <= n (q - h(Q_tol + mu(eps))) - 2 log2(1/(2 eps_pa)) - leak_EC - log2(2/eps_cor),
        mu(eps) = sqrt((n+k)/(n k) * (k+1)/k * ln(1/eps)),     2 eps + eps_pa <= eps_sec.

    ``eps`` (``eps_pe`` here) is the parameter-estimation / smoothing term:
    Serfling's bound gives ``Pr[key error rate >= lambda + mu] <= eps^2``
    (Supplementary Eqs. S10-S15); ``eps_pa`` is the leftover-hash term
    (Eqs. S2, S9). The main text's Eq. (2) is the split ``eps = eps_sec/4``,
    ``eps_pa = eps_sec/2``, which gives ``mu = sqrt(... ln(4/eps_sec))`` and
    the constant ``log2(2/(eps_sec^2 eps_cor))``; that split is the default.

    Parameters
    ----------
    n_key : int
        Raw key bits (block length) ``n``.
    k_test : int
        Bits used for parameter estimation ``k``.
    errors_test : int
        Errors among the ``k`` test bits.
    qber_tol : float, optional
        The protocol's tolerated error rate ``Q_tol``; the block aborts (no
        key) if the observed ``errors_test / k_test`` exceeds it. Default:
        the observed rate (the tolerance is set to what was seen; see
        docs/finitekey.md for what this assumes).
    q : float
        Preparation quality ``log2(1/c)``; 1 for BB84 with unbiased bases.
    eps_pe : float, optional
        The parameter-estimation share ``eps`` of ``eps_sec``, in
        ``(0, eps_sec/2)``; default ``eps_sec/4`` (the paper's Eq. 2). The
        privacy-amplification share is ``eps_sec - 2 eps_pe``.
    leak_ec, eps_sec, eps_cor, tag_bits : see :func:`lim2014`.
    """
    n = _nonneg("n_key", n_key)
    k = _nonneg("k_test", k_test)
    e = _nonneg("errors_test", errors_test)
    if n < 1 or k < 1:
        raise InputError(f"n_key={n_key!r}, k_test={k_test!r}: both must be >= 1")
    if e > k:
        raise InputError(f"errors_test={errors_test!r}: cannot exceed k_test={k_test!r}")
    es = _eps("eps_sec", eps_sec)
    ec = _eps("eps_cor", eps_cor)
    leak = _nonneg("leak_ec", leak_ec)
    if not (0 < q <= 1):
        raise InputError(f"q={q!r}: the preparation quality log2(1/c) is in (0, 1]")
    e_pe = es / 4.0 if eps_pe is None else _eps("eps_pe", eps_pe)
    if not (2.0 * e_pe < es):
        raise InputError(f"eps_pe={eps_pe!r}: must be below eps_sec/2={es / 2!r} (2 eps_pe + eps_pa = eps_sec)")
    e_pa = es - 2.0 * e_pe
    observed = e / k
    tol = observed if qber_tol is None else float(qber_tol)
    if not (0 <= tol <= 0.5):
        raise InputError(f"qber_tol={qber_tol!r}: must be in [0, 1/2]")
    mu_s = math.sqrt((n + k) / (n * k) * (k + 1) / k * math.log(1.0 / e_pe))  # Supp. Eq. (S4)
    mu_s = _hi(mu_s, mu_s)
    phi = min(_hi(tol + mu_s, tol + mu_s), 0.5)
    bounds = {"s1": n, "s0": 0.0, "mu": mu_s, "qber_observed": observed, "qber_tol": tol}
    params = {"eps_sec": es, "eps_cor": ec, "eps_pe": e_pe, "eps_pa": e_pa, "n_key": n, "k_test": k,
              "errors_test": e, "q": q, "tag_bits": tag_bits}
    verify = _verify_cost(ec, tag_bits)
    # Supp. Eq. (S3): 2 log2(1/(2 eps_pa)); with eps_pa = eps_sec/2 this and log2(2/eps_cor)
    # make the main text's log2(2/(eps_sec^2 eps_cor)) (Eq. 2)
    pa_exact = max(0.0, 2.0 * math.log2(1.0 / (2.0 * e_pa)))  # never a credit (eps_pa > 1/2 only if eps_sec > 1/2)
    pa = _hi(pa_exact, abs(pa_exact))
    b = dict(bounds, phi=phi, leak_ec=leak, verify_cost=verify, pa_cost=pa)
    if observed > tol:
        return SecureLength("tomamichel2012", 0, -math.inf, f"observed QBER {observed:.4g} exceeds qber_tol {tol:.4g}",
                            b, params)
    if phi >= 0.5:
        return SecureLength("tomamichel2012", 0, -math.inf, "phase-error bound reached 1/2", b, params)
    gain = n * (q - _h(phi))
    val = _lo(gain - leak - verify - pa, n + leak + verify + abs(pa))
    length = min(int(math.floor(val)) if val > 0 else 0, int(n))
    return SecureLength("tomamichel2012", length, val, "" if length > 0 else "finite-key bound is not positive", b, params)


def secure_length(bound: str, **kwargs: Any) -> SecureLength:
    """Dispatch to a named bound: ``secure_length("lim2014", n_key=..., ...)``."""
    fns = {"lim2014": lim2014, "rusca2018": rusca2018, "tomamichel2012": tomamichel2012}
    if bound not in fns:
        raise InputError(f"bound={bound!r}: choose one of {BOUNDS}")
    return fns[bound](**kwargs)
