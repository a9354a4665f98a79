"""High-precision (decimal, 60 digits) re-evaluation of Lim et al. 2014 Eqs. (1)-(5).

Written independently of qkdpost.finitekey from the printed equations, without
any rounding margin; used to check that the float64 implementation never
returns a longer key than the exact formula.
"""

from __future__ import annotations

from decimal import Decimal as D, getcontext

getcontext().prec = 60


def _ln(x):
    return D(x).ln()


def _log2(x):
    return _ln(x) / D(2).ln()


def _exp(x):
    return D(x).exp()


def _tau(n, mu, p):
    fact = 1
    for i in range(2, n + 1):
        fact *= i
    return sum(D(pk) * _exp(-D(k)) * D(k) ** n / D(fact) for k, pk in zip(mu, p))


def _h(x):
    x = D(x)
    if x <= 0:
        return D(0)
    if x >= D("0.5"):
        return D(1)
    return -x * _log2(x) - (1 - x) * _log2(1 - x)


def lim2014_exact(n_key, n_test, m_test, mu, p_mu, leak_ec, eps_sec, eps_cor, monotone=False):
    """Return the real-valued Eq. (1) argument (before flooring), or None if phi >= 1/2.

    ``monotone=True``: Eq. (4) with the expected mu3 error count bounded below
    by max(m3 - delta, 0) and the bound maximised over every integer mu3 error
    count 0..m3 by brute force (the envelope that qkdpost.finitekey computes
    in closed form over the reals, which can only be larger), then the smaller
    of that and the bound from mu2 alone.
    """
    mu = [D(repr(float(m))) for m in mu]
    p = [D(repr(float(x))) for x in p_mu]
    es = D(repr(float(eps_sec)))
    ec = D(repr(float(eps_cor)))
    L21 = _ln(D(21) / es)

    def delta(n):
        return (D(n) / 2 * L21).sqrt()

    def s0_s1(n):
        n = [D(repr(float(v))) for v in n]
        tot = sum(n)
        d = delta(tot)
        t0, t1 = _tau(0, mu, p), _tau(1, mu, p)
        npl = [_exp(mu[i]) / p[i] * (n[i] + d) for i in range(3)]
        nmi = [_exp(mu[i]) / p[i] * (n[i] - d) for i in range(3)]
        s0 = t0 * (mu[1] * nmi[2] - mu[2] * npl[1]) / (mu[1] - mu[2])
        s0 = min(max(s0, D(0)), tot)
        s1 = t1 * mu[0] * (nmi[1] - npl[2] - (mu[1] ** 2 - mu[2] ** 2) / mu[0] ** 2 * (npl[0] - s0 / t0)) / (
            mu[0] * (mu[1] - mu[2]) - mu[1] ** 2 + mu[2] ** 2
        )
        s1 = min(max(s1, D(0)), tot)
        return s0, s1, tot

    s0, s1, tot = s0_s1(n_key)
    s1 = min(s1, tot - s0)
    s0t, s1t, _ = s0_s1(n_test)
    m = [D(repr(float(v))) for v in m_test]
    t1 = _tau(1, mu, p)

    a, b, f = _exp(mu[1]) / p[1], _exp(mu[2]) / p[2], t1 / (mu[1] - mu[2])

    def v1_at(m3):
        dm = delta(m[0] + m[1] + m3)
        sub = m3 - dm
        if monotone and sub < 0:
            sub = D(0)
        return f * (a * (m[1] + dm) - b * sub)

    if monotone:
        v1 = max(v1_at(D(x)) for x in range(int(m[2]) + 1))
        # the signal-free single-intensity bound from mu2 alone: v1 <= tau1 e^mu2 m+_mu2 / (mu2 p2)
        v1 = min(v1, t1 * a * (m[1] + delta(sum(m))) / mu[1])
    else:
        v1 = v1_at(m[2])
    v1 = max(v1, D(0))
    if s1t <= 0 or s1 <= 0:
        return None
    b = v1 / s1t
    if b >= D("0.5"):
        return None
    b_eff = min(max(b, 1 / s1t), D("0.5"))
    x = (1 - b_eff) * b_eff
    c, d = s1t, s1
    arg = (c + d) / (c * d * x) * D(441) / (es * es)
    gamma = ((c + d) * x / (c * d * D(2).ln()) * _log2(arg)).sqrt() if arg > 1 else D(0)
    phi = b + gamma
    if phi >= D("0.5"):
        return None
    return s0 + s1 - s1 * _h(phi) - D(repr(float(leak_ec))) - 6 * _log2(D(21) / es) - _log2(D(2) / ec)
