"""The result every reconciliation method returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..bits import binary_entropy

__all__ = ["ReconcileResult"]


@dataclass(frozen=True)
class ReconcileResult:
    """Outcome of reconciling one frame or a batch of frames.

    Attributes
    ----------
    bits : ndarray of uint8, shape (n,) or (N, n)
        Bob's corrected bits (same shape as his input).
    leaked_bits : ndarray of int64, shape (N,)
        Bits disclosed about each frame on the channel (parities, syndrome
        bits, revealed positions). This, not f·h(Q), is what the secure
        length subtracts.
    success : ndarray of bool, shape (N,)
        Whether Bob's side believes the frame is reconciled. A verification
        hash must still confirm it.
    errors_corrected : ndarray of int64, shape (N,)
        Bits Bob flipped in each frame.
    round_trips : int
        Request/reply pairs on the channel for the whole batch.
    bytes_sent : int
        Bytes on the channel, both directions, for the whole batch.
    method, preset : str
        What ran.
    extra : dict
        Method-specific figures (iterations, rounds, code used, ...).
    """

    bits: np.ndarray = field(repr=False)  # key material: never in reprs or logs
    leaked_bits: np.ndarray
    success: np.ndarray
    errors_corrected: np.ndarray
    round_trips: int
    bytes_sent: int
    method: str
    preset: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.leaked_bits.shape[0])

    @property
    def frame_length(self) -> int:
        return int(self.bits.shape[-1])

    @property
    def leaked_total(self) -> int:
        return int(self.leaked_bits.sum())

    def efficiency(self, qber: float | np.ndarray) -> np.ndarray:
        """f = leaked_bits / (n·h(Q)) per frame, for the given true error fraction(s)."""
        h = np.asarray(binary_entropy(qber), dtype=np.float64)
        with np.errstate(divide="ignore"):
            return self.leaked_bits / (self.frame_length * h)
