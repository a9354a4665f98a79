"""Importer for qcrypto / S-Fifteen raw 64-bit timestamp events (``readevents -a1``).

Each event is 8 bytes: two 32-bit words. The 64-bit value holds the time
counter in its top bits and the detector pattern (one bit per detector) in
its low 4 bits; bit 4 flags rollover/dummy events on some installations.

============  ==========================  ===================
``variant``   time counter                tick
============  ==========================  ===================
``"49bit"``   ``raw >> 15`` (49 bits)     1/8 ns = 125 ps
``"54bit"``   ``raw >> 10`` (54 bits)     1/256 ns = 3.90625 ps
============  ==========================  ===================

The 4 ps "timestamp7" cards write the 54-bit form; ``raw >> 15`` of the same
file still gives 1/8 ns, so ``"49bit"`` reads every card at 125 ps. The
legacy word order (``readevents -X``) stores the high word first:
``word_swap=True``. Sources: the qcrypto ``readevents`` documentation and
S-Fifteen's ``fpfind`` parser, as summarised in docs/io.md.

The output channel ``ch`` is the 4-bit detector pattern itself (1, 2, 4, 8
for single detectors; other values are multi-detector events), so the
pattern-to-role mapping stays configuration (``channel_map``).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from ..errors import ConfigError, FileFormatError
from . import _kernels as K
from ._stream import RecordStream, check_record_region, file_size, tolerance_ticks
from .model import StreamInfo, parse_channel_map

__all__ = ["read_qcrypto", "VARIANTS"]

#: variant -> (shift, tick in seconds)
VARIANTS = {"49bit": (15, 125e-12), "54bit": (10, 1e-9 / 256)}


def read_qcrypto(
    path: str | os.PathLike[str],
    *,
    variant: str = "49bit",
    word_swap: bool = False,
    keep_flagged: bool = False,
    channel_map: str | Mapping[int, str] | None = None,
    reorder_window_s: float = 1e-6,
    chunk_events: int = 1 << 20,
    party: str = "",
) -> tuple[StreamInfo, RecordStream]:
    """Stream a qcrypto raw event file as ``(info, chunks)``.

    Parameters
    ----------
    path : str or os.PathLike
        Raw binary event file (8 bytes per event, no header).
    variant : {"49bit", "54bit"}
        Time field width and tick (see the module docstring).
    word_swap : bool
        True for the legacy layout (high 32-bit word first).
    keep_flagged : bool
        Keep events with the rollover/dummy flag (bit 4) set, as channel
        ``16 | pattern``; by default they are dropped (and counted).
    channel_map : str or mapping, optional
        Detector pattern -> role, e.g. ``"1=H,2=V,4=D,8=A"``. Default: none
        (every pattern unused until configured).
    reorder_window_s : float
        Events may arrive this much earlier than the latest one; they are
        put in order. An event further back is a FileFormatError.
    chunk_events : int
        Records decoded per block and maximum events per chunk.
    party : str
        Stored in the metadata.

    Returns
    -------
    info : StreamInfo
    chunks : RecordStream
        Iterator of :class:`Chunk`; ``chunks.state[S_COUNT_A]`` counts the
        dropped flagged events.
    """
    path = os.fspath(path)
    if variant not in VARIANTS:
        raise ConfigError(f"variant={variant!r}: choose one of {sorted(VARIANTS)}")
    shift, tick_s = VARIANTS[variant]
    tol = tolerance_ticks(reorder_window_s, tick_s)
    size = file_size(path)
    if size == 0:
        raise FileFormatError(path, 0, "empty file (0 bytes); expected qcrypto raw events (8 bytes each)")
    n = check_record_region(path, 0, 8, size, "qcrypto raw")
    info = StreamInfo(
        tick_s=tick_s,
        party=party,
        device="qcrypto raw events",
        channel_map=parse_channel_map(channel_map),
        extra={"format": "qcrypto", "variant": variant, "word_swap": str(bool(word_swap)),
               "source": os.path.basename(path), "records": str(n)},
    )
    swap, keep = bool(word_swap), bool(keep_flagged)

    def decode(block: np.ndarray, state: np.ndarray, t_out: np.ndarray, ch_out: np.ndarray, start: int) -> Any:
        return K.decode_qcrypto(block.view("<u8"), swap, shift, keep, tol, state, t_out, ch_out, start)

    stream = RecordStream(path, 0, 8, n, decode, "qcrypto raw", chunk_events, K.new_state(), tol)
    return info, stream
