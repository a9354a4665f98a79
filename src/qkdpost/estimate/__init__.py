"""QBER estimation from disclosed test bits, with confidence bounds.

The test-basis bits are disclosed in full during sifting (they never become
key), so their error fraction is the observed phase-error rate of the key
basis in the entanglement picture. Bounds here are statistical statements
about the *true* error probability behind an observed count; the finite-key
bound (``qkdpost.finitekey``) decides which one it needs and with which
epsilon.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bits import as_bits
from ..errors import InputError

__all__ = ["QberEstimate", "qber_estimate", "count_errors"]


@dataclass(frozen=True)
class QberEstimate:
    """An observed error rate and a confidence interval around it.

    Attributes
    ----------
    errors, n : int
        Observed errors and compared bits.
    qber : float
        ``errors / n`` (NaN when ``n == 0``).
    lower, upper : float
        One-sided bounds, each failing with probability at most ``eps``.
    eps : float
    method : str
    """

    errors: int
    n: int
    qber: float
    lower: float
    upper: float
    eps: float
    method: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def qber_estimate(errors: int, n: int, *, eps: float = 1e-10, method: str = "clopper-pearson") -> QberEstimate:
    """Estimate the error probability behind ``errors`` out of ``n`` compared bits.

    Parameters
    ----------
    errors, n : int
        ``0 <= errors <= n``.
    eps : float
        Failure probability of each one-sided bound, in (0, 0.5).
    method : {"clopper-pearson", "hoeffding"}
        ``"clopper-pearson"``: the exact binomial bounds of Clopper and
        Pearson, Biometrika 26, 404 (1934), doi:10.1093/biomet/26.4.404:
        ``upper = B^-1(1 - eps; k + 1, n - k)`` and ``lower = B^-1(eps; k,
        n - k + 1)`` with ``B^-1`` the Beta quantile (``upper = 1`` when
        ``k = n``, ``lower = 0`` when ``k = 0``).
        ``"hoeffding"``: ``k/n +- sqrt(ln(1/eps) / (2 n))`` (Hoeffding, JASA
        58, 13 (1963), doi:10.1080/01621459.1963.10500830, Thm. 1), clipped
        to [0, 1]; looser, distribution free.

    Returns
    -------
    QberEstimate
        With ``n == 0`` the rate is NaN and the bounds are [0, 1].
    """
    for name, v in (("errors", errors), ("n", n)):
        if (isinstance(v, bool) or not isinstance(v, (int, np.integer, float, np.floating))
                or not math.isfinite(v) or v != int(v)):
            # int() would truncate 2.5 errors to 2 and bias the estimate
            raise InputError(f"{name}={v!r}: counts must be whole numbers")
    errors, n = int(errors), int(n)
    if n < 0 or errors < 0 or errors > n:
        raise InputError(f"errors={errors}, n={n}: need 0 <= errors <= n")
    if not (0 < eps < 0.5):
        raise InputError(f"eps={eps!r}: must be in (0, 0.5), e.g. 1e-10")
    if method not in ("clopper-pearson", "hoeffding"):
        raise InputError(f"method={method!r}: must be 'clopper-pearson' or 'hoeffding'")
    if n == 0:
        return QberEstimate(0, 0, float("nan"), 0.0, 1.0, eps, method)
    q = errors / n
    if method == "hoeffding":
        d = math.sqrt(math.log(1.0 / eps) / (2.0 * n))
        return QberEstimate(errors, n, q, max(0.0, q - d), min(1.0, q + d), eps, method)
    from scipy.stats import beta

    # closed forms at the ends: (1 - p)^n = eps and p^n = eps
    if errors == n:
        upper = 1.0
    elif errors == 0:
        upper = -math.expm1(math.log(eps) / n)
    else:
        upper = float(beta.ppf(1.0 - eps, errors + 1, n - errors))
    if errors == 0:
        lower = 0.0
    elif errors == n:
        lower = math.exp(math.log(eps) / n)
    else:
        lower = float(beta.ppf(eps, errors, n - errors + 1))
    return QberEstimate(errors, n, q, lower, upper, eps, method)


def count_errors(bits_a: Any, bits_b: Any, classes: Any = None, n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Errors and totals of two bit strings, per class label (e.g. intensity).

    Parameters
    ----------
    bits_a, bits_b : array_like of 0/1, shape (n,)
    classes : array_like of uint8, shape (n,), optional
        Class of each position; all positions are class 0 if omitted.
    n_classes : int, optional
        Number of classes (default ``max(classes) + 1``).

    Returns
    -------
    errors, totals : ndarray of int64, shape (n_classes,)
    """
    from ._kernels import count_errors as _count

    a = as_bits(bits_a, "bits_a")
    b = as_bits(bits_b, "bits_b")
    if a.shape != b.shape:
        raise InputError(f"bits_a has {a.size} bits, bits_b {b.size}: they must have equal length")
    if classes is None:
        cls = np.zeros(a.size, np.uint8)
    else:
        c = np.asarray(classes)
        if c.shape != a.shape or not np.issubdtype(c.dtype, np.integer) or (c.size and (c.min() < 0 or c.max() > 255)):
            raise InputError(f"classes: need {a.size} integer labels in 0..255, got shape {c.shape} dtype {c.dtype}")
        cls = np.ascontiguousarray(c, dtype=np.uint8)
    k = int(n_classes) if n_classes is not None else (int(cls.max()) + 1 if cls.size else 1)
    if k < 1:
        raise InputError(f"n_classes={n_classes!r}: need at least one class")
    if cls.size and int(cls.max()) >= k:
        raise InputError(f"n_classes={k}: a class label {int(cls.max())} is out of range")
    err = np.zeros(k, np.int64)
    tot = np.zeros(k, np.int64)
    _count(a, b, cls, err, tot)
    return err, tot
