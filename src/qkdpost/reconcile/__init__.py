"""Error correction (information reconciliation) as two-party protocols.

``reconcile`` runs both parties in one process over a loopback channel that
serialises every message; the pipeline uses the same per-party protocol
objects with each party in its own process.

Methods
-------
``"cascade"``
    :mod:`qkdpost.reconcile.cascade` (interactive parity exchange).
``"ldpc"``
    :mod:`qkdpost.reconcile.ldpc` (rate-adaptive syndrome decoding).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from .result import ReconcileResult

__all__ = ["reconcile", "ReconcileResult"]

METHODS = ("cascade", "ldpc")


def reconcile(
    alice_bits: np.ndarray,
    bob_bits: np.ndarray,
    *,
    method: str = "cascade",
    qber: float,
    seed: int | None = None,
    rtt_s: float = 0.0,
    **options: Any,
) -> ReconcileResult:
    """Reconcile Bob's bits to Alice's over an in-memory loopback channel.

    Parameters
    ----------
    alice_bits, bob_bits : array_like of uint8 0/1, shape (n,) or (N, n)
        One frame or N frames of equal length. Each party's protocol object
        sees only its own array; everything else crosses the channel.
    method : {"cascade", "ldpc"}
    qber : float
        Estimated QBER in (0, 0.5), from parameter estimation; sets block
        sizes (Cascade) or code rate (LDPC).
    seed : int, optional
        Seed for shared public randomness (permutations). None draws it from
        the OS CSPRNG. Fixed seeds are for tests and simulation.
    rtt_s : float
        Simulated round-trip time of the loopback channel (seconds).
    **options
        Method options, e.g. ``preset="option7"`` for Cascade.
    """
    if method == "cascade":
        from .cascade import reconcile_cascade as run
    elif method == "ldpc":
        from .ldpc import reconcile_ldpc as run
    else:
        raise InputError(f"method={method!r}: choose one of {METHODS}")
    return run(alice_bits, bob_bits, qber=qber, seed=seed, rtt_s=rtt_s, **options)
