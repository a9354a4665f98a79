"""The fibre-link model of Lim et al. 2014, Sec. IV, for checks and planning.

Expected counts of decoy-state BB84 over a dedicated fibre
(Lim, Curty, Walenta, Xu, Zbinden, PRA 89, 022307 (2014),
doi:10.1103/PhysRevA.89.022307, Sec. IV):

* transmittance ``eta_sys = 10^(-alpha L / 10) * eta_bob``;
* detection probability ``D_k = 1 - (1 - 2 p_dc) exp(-eta_sys k)``, with
  after-pulses ``R_k = D_k (1 + p_ap)``;
* error probability ``e_k = p_dc + e_mis (1 - exp(-eta_sys k)) + p_ap D_k / 2``
  (the paper prints ``eta_ch`` in the middle term; the misalignment acts on
  detected photons, so ``eta_sys`` is used here);
* both parties choose X with ``q_x^2`` (key) and Z with ``(1-q_x)^2`` (test);
* ``lambda_EC = f_EC n_X h(e_obs)``, ``eps_sec = kappa * l``;
* rate ``R = l / N`` with ``N`` the pulses needed for ``n_X`` key detections.

:func:`optimal_rate` maximises ``R`` over ``(q_x, p_mu1, p_mu2, mu1, mu2)``
at fixed ``mu3`` as in the paper's Fig. 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..bits import binary_entropy
from . import SecureLength, lim2014

__all__ = ["LinkModel", "expected_counts", "rate", "optimal_rate"]


@dataclass(frozen=True)
class LinkModel:
    """Parameters of Lim et al. Sec. IV (their defaults)."""

    eta_bob: float = 0.10
    p_dc: float = 6e-7
    p_ap: float = 4e-2
    e_mis: float = 5e-3
    f_ec: float = 1.16
    alpha_db_km: float = 0.2
    mu3: float = 2e-4
    kappa: float = 1e-15
    eps_cor: float = 1e-15


def expected_counts(model: LinkModel, length_km: float, n_x: float, q_x: float,
                    p_mu: tuple[float, float, float], mu: tuple[float, float, float]) -> dict[str, np.ndarray | float]:
    """Expected per-intensity counts for a block of ``n_x`` key-basis detections."""
    eta = 10 ** (-model.alpha_db_km * length_km / 10) * model.eta_bob
    mu_a = np.asarray(mu, dtype=np.float64)
    p = np.asarray(p_mu, dtype=np.float64)
    D = 1 - (1 - 2 * model.p_dc) * np.exp(-eta * mu_a)
    R = D * (1 + model.p_ap)
    e = model.p_dc + model.e_mis * (1 - np.exp(-eta * mu_a)) + model.p_ap * D / 2
    N = n_x / (q_x**2 * float(np.sum(p * R)))
    return {
        "N": N,
        "n_key": N * q_x**2 * p * R,
        "m_key": N * q_x**2 * p * e,
        "n_test": N * (1 - q_x) ** 2 * p * R,
        "m_test": N * (1 - q_x) ** 2 * p * e,
    }


def rate(model: LinkModel, length_km: float, n_x: float, q_x: float,
         p_mu: tuple[float, float, float], mu: tuple[float, float, float], *,
         monotone: bool = False) -> tuple[float, SecureLength | None]:
    """Secret key rate per pulse ``l / N`` of the model link (0 when no key).

    ``monotone=False`` (default here) evaluates Lim et al.'s Eq. (4) as printed,
    to reproduce the paper's figures; the pipeline uses the monotone envelope
    (:func:`qkdpost.finitekey.lim2014`).
    """
    c = expected_counts(model, length_km, n_x, q_x, p_mu, mu)
    e_obs = float(c["m_key"].sum() / c["n_key"].sum())
    leak = model.f_ec * n_x * float(binary_entropy(e_obs))
    eps_sec = 1e-10
    res = None
    for _ in range(3):  # eps_sec = kappa * l (fixed point; l changes little)
        res = lim2014(c["n_key"], c["n_test"], c["m_test"], mu=mu, p_mu=p_mu, leak_ec=leak,
                      eps_sec=eps_sec, eps_cor=model.eps_cor, monotone=monotone)
        if not res.has_key:
            return 0.0, res
        eps_sec = min(model.kappa * res.length, 0.5)
    return res.length / float(c["N"]), res


def optimal_rate(model: LinkModel, length_km: float, n_x: float, *, starts: int = 4, seed: int = 0,
                 monotone: bool = False) -> tuple[float, dict]:
    """Maximise :func:`rate` over (q_x, p_mu1, p_mu2, mu1, mu2) by Nelder-Mead from several starts."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(seed)

    def unpack(z):
        q_x = 0.5 + 0.5 / (1 + math.exp(-z[0]))  # (0.5, 1)
        a, b = math.exp(z[1]), math.exp(z[2])
        p1 = a / (1 + a + b)
        p2 = b / (1 + a + b)
        mu2 = model.mu3 + math.exp(z[3])
        mu1 = mu2 + model.mu3 + math.exp(z[4])
        return q_x, (p1, p2, 1 - p1 - p2), (mu1, mu2, model.mu3)

    def objective(z):
        try:
            q_x, p, mu = unpack(z)
            if mu[0] > 1.5 or min(p) <= 1e-6:
                return 1.0
            r, _ = rate(model, length_km, n_x, q_x, p, mu, monotone=monotone)
        except (ValueError, OverflowError):
            return 1.0
        return -r * 1e6

    best = (0.0, None)
    base = np.array([1.5, 1.0, 0.0, math.log(0.15), math.log(0.3)])
    for s in range(starts):
        z0 = base if s == 0 else base + rng.normal(0, 0.7, size=5)
        res = minimize(objective, z0, method="Nelder-Mead",
                       options={"xatol": 1e-4, "fatol": 1e-9, "maxiter": 3000})
        r = -res.fun / 1e6
        if r > best[0]:
            q_x, p, mu = unpack(res.x)
            best = (r, {"q_x": q_x, "p_mu": p, "mu": mu})
    return best[0], best[1] or {}
