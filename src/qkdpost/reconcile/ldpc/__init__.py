"""Rate-adaptive, blind LDPC reconciliation (syndrome decoding, Slepian-Wolf).

Alice sends the syndrome of her frame under a shipped PEG code, shortened
and punctured to the estimated QBER; Bob decodes with belief propagation
using his bits as side information on a BSC(qber). Frames that fail get
blind rounds that reveal more positions (counted as leakage). See
``docs/ldpc.md`` for the design and measured efficiency and speed.

Public API
----------
reconcile_ldpc(alice_bits, bob_bits, *, qber, seed, rtt_s, **options)
    Both parties in one process over a loopback channel.
LdpcAlice, LdpcBob
    The per-party protocol objects for separate processes.
available_codes(), load_code(name), plan_frame(n_key, qber)
    The shipped code family and the rate adaptation.
frame_length(qber, code_bits)
    The best frame length for a code length at a QBER (shortening only).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...bits import as_bits
from ...channel import LoopbackChannel, Responder
from ...errors import InputError
from ..result import ReconcileResult
from .adapt import FramePlan, frame_length, plan_frame
from .codes import LdpcCode, available_codes, load_code, read_alist, write_alist
from .protocol import LdpcAlice, LdpcBob

__all__ = [
    "reconcile_ldpc",
    "LdpcAlice",
    "LdpcBob",
    "LdpcCode",
    "FramePlan",
    "available_codes",
    "frame_length",
    "load_code",
    "plan_frame",
    "read_alist",
    "write_alist",
]

_BOB_OPTIONS = ("f_start", "f_step", "max_rounds", "max_iter", "max_iter_blind", "warm", "patience", "trap_checks",
                "reveal", "code", "fallback")


def reconcile_ldpc(
    alice_bits: np.ndarray,
    bob_bits: np.ndarray,
    *,
    qber: float,
    seed: int | None = None,
    rtt_s: float = 0.0,
    **options: Any,
) -> ReconcileResult:
    """Reconcile Bob's frames to Alice's with rate-adaptive blind LDPC decoding.

    Parameters
    ----------
    alice_bits, bob_bits : uint8 0/1, shape (n_key,) or (N, n_key)
        Frames of equal length; ``n_key`` must fit a shipped code
        (0.7 n <= n_key <= n of a shipped length n); most efficient at
        ``frame_length(qber, n)`` bits, which a code takes without
        puncturing (e.g. 62981 at Q = 5 % for the 2^16 codes).
    qber : float
        Estimated QBER in (0, 0.5); sets the code, its shortening and
        puncturing, and the decoder's channel LLR.
    seed : int, optional
        Simulation seed for the public layout and Alice's punctured bits;
        None (production) draws both from the OS CSPRNG.
    rtt_s : float
        Simulated round-trip time of the loopback channel.
    **options
        ``f_start``, ``f_step``, ``max_rounds``, ``max_iter``, ``max_iter_blind``, ``warm``, ``patience``,
        ``trap_checks``, ``code``, ``fallback`` (``"cascade"``, the default, or ``"drop"``; see :class:`LdpcBob`).

    Returns
    -------
    ReconcileResult
        ``leaked_bits`` per frame: the syndrome and revealed bits, counted by
        :func:`.protocol.leak_bits` (m - p + revealed, plus what the round
        count and Bob's choices of positions tell when p > 0, at most
        m + revealed key bits), + Cascade's parities for frames handed to
        the fallback.
        ``extra`` holds the code, rounds, iterations and revealed bits per frame.
    """
    unknown = set(options) - set(_BOB_OPTIONS)
    if unknown:
        raise InputError(f"unknown LDPC option(s) {sorted(unknown)}; known: {list(_BOB_OPTIONS)}")
    a = as_bits(alice_bits, "alice_bits", ndim=(1, 2))
    b = as_bits(bob_bits, "bob_bits", ndim=(1, 2))
    if a.shape != b.shape:
        raise InputError(f"alice_bits shape {a.shape} != bob_bits shape {b.shape}; frames must match")
    if a.shape[-1] == 0 or (a.ndim == 2 and a.shape[0] == 0):
        raise InputError(f"alice_bits shape {a.shape}: need at least one frame of at least one bit")
    if not isinstance(qber, (float, int, np.floating)) or not (0.0 < float(qber) < 0.5):
        raise InputError(f"qber={qber!r}: must be a number in (0, 0.5)")
    single = a.ndim == 1
    a2 = a.reshape(1, -1) if single else a
    b2 = b.reshape(1, -1) if single else b
    ids = np.arange(a2.shape[0], dtype=np.int64)
    alice = LdpcAlice({int(i): a2[i] for i in ids}, sim_seed=seed)
    bob = LdpcBob(seed=seed, **options)
    channel = LoopbackChannel(Responder(alice.handlers()), rtt_s=rtt_s)
    res = bob.run(channel, ids, b2, float(qber))
    if single:
        res = ReconcileResult(bits=res.bits[0], leaked_bits=res.leaked_bits, success=res.success,
                              errors_corrected=res.errors_corrected, round_trips=res.round_trips,
                              bytes_sent=res.bytes_sent, method=res.method, preset=res.preset, extra=res.extra)
    return res
