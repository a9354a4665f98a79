"""Adapters from the pipeline to each stage's per-party protocol objects.

The pipeline talks to the stages only through :class:`StageKit`, one method
per party and stage. Alice's methods take her frames (block id → her uint8
bits) and return message handlers; Bob's methods drive the protocol over the
channel and return his results. Swapping a stage (another reconciliation, a
hardware PA engine) means subclassing the kit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Mapping

import numpy as np

from ..channel import Channel
from ..config import Config
from ..reconcile.result import ReconcileResult

__all__ = ["StageKit", "default_kit"]

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class StageKit(ABC):
    """The interface between the pipeline and the stages (one method per party and stage)."""

    # -- reconciliation ---------------------------------------------------------
    @abstractmethod
    def reconcile_alice(self, method: str, frames: Mapping[str, np.ndarray], cfg: Config, *,
                        qber: float) -> dict[str, Handler]:
        """Alice's reconciliation handlers for these frames (``method``: cascade or ldpc; ``qber``:
        the estimate Bob hands to :meth:`reconcile_bob`, e.g. to cut LDPC frames the same way)."""

    @abstractmethod
    def reconcile_bob(self, channel: Channel, method: str, ids: list[str], bits: np.ndarray, qber: float,
                      cfg: Config, *, seed: int | None) -> ReconcileResult:
        """Drive reconciliation of Bob's frames ``bits`` (N, n); Alice's ids are ``ids``."""

    # -- verification -----------------------------------------------------------
    @abstractmethod
    def verify_alice(self, frames: Mapping[str, np.ndarray], cfg: Config) -> dict[str, Handler]:
        """Alice's verification handlers for these frames."""

    @abstractmethod
    def verify_bob(self, channel: Channel, ids: list[str], bits: np.ndarray,
                   cfg: Config) -> tuple[np.ndarray, int, float]:
        """(passed per frame, tag bits disclosed per frame, collision bound eps_cor of the tag)."""

    # -- finite-key length ------------------------------------------------------
    @abstractmethod
    def secure_length(self, stats: Mapping[str, Any], n: int, leak_ec: int, leak_verify: int, eps_cor: float,
                      cfg: Config) -> tuple[int, str, dict[str, Any]]:
        """(secure length, bound name, intermediate bounds) from public counts."""

    # -- privacy amplification -------------------------------------------------
    @abstractmethod
    def amplify_alice(self, frames: Mapping[str, np.ndarray], lengths: Mapping[str, int],
                      cfg: Config) -> tuple[dict[str, Handler], Callable[[str], np.ndarray]]:
        """(handlers, function giving Alice's final key of a block once hashed).

        ``lengths`` are the final lengths agreed at ``pipe.final``; the
        handlers must refuse (ProtocolError) a request naming other blocks or
        other lengths. The pipeline also checks every final key's length
        against them on both sides before anything is stored.
        """

    @abstractmethod
    def amplify_bob(self, channel: Channel, ids: list[str], bits: np.ndarray, lengths: np.ndarray,
                    cfg: Config, *, seed: int | None) -> list[np.ndarray]:
        """Bob's final keys (one per frame, ``lengths[j]`` bits each)."""


def default_kit() -> StageKit:
    """qkdpost's own stages (imported on first use)."""
    from .kit import QkdpostKit

    return QkdpostKit()
