"""Cascade reconciliation as a two-party, scheduled, batched protocol.

Public API
----------
:func:`reconcile_cascade`
    Both parties over an in-memory loopback channel (what
    ``qkdpost.reconcile.reconcile(..., method="cascade")`` calls).
:class:`CascadeAlice`, :class:`CascadeBob`
    The per-party protocol objects, for running each party in its own
    process over any :class:`~qkdpost.channel.Channel`.
:data:`PRESETS`, :func:`block_sizes`, :class:`CascadePreset`, :class:`CascadeConfig`
    Named variants (Brassard-Salvail 1993; Martinez-Mateo et al., QIC 15,
    2015) as data.
"""

from .presets import PRESETS, CascadePreset, block_sizes, get_preset
from .protocol import CascadeAlice, CascadeBob, CascadeConfig, reconcile_cascade

__all__ = [
    "reconcile_cascade",
    "CascadeAlice",
    "CascadeBob",
    "CascadeConfig",
    "CascadePreset",
    "PRESETS",
    "block_sizes",
    "get_preset",
]
