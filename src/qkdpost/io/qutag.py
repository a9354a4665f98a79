"""Importer for qutools quTAG / quTAU binary timestamp files (10 bytes per event).

Layout (qutools manual, "Binary File 10 Bytes per Event"): a 40-byte header,
then records of an int64 time stamp in the device's base unit followed by a
uint16 channel number, little endian. The 64-bit time never overflows. The
base unit is a property of the device (1 ps for the quTAG, about 81 ps for
the older quTAU), so it is an option here, not read from the header, whose
layout is not documented.

The compressed 5-byte variant is not supported (its bit layout is not
documented precisely enough to decode it safely).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from ..errors import ConfigError, FileFormatError
from . import _kernels as K
from ._stream import RecordStream, check_record_region, file_size, tolerance_ticks
from .model import StreamInfo, parse_channel_map

__all__ = ["read_qutag", "HEADER_BYTES", "RECORD"]

HEADER_BYTES = 40
RECORD = np.dtype([("t", "<i8"), ("ch", "<u2")])  # packed: itemsize 10


def read_qutag(
    path: str | os.PathLike[str],
    *,
    tick_s: float = 1e-12,
    channel_map: str | Mapping[int, str] | None = None,
    reorder_window_s: float = 1e-6,
    chunk_events: int = 1 << 20,
    party: str = "",
) -> tuple[StreamInfo, RecordStream]:
    """Stream a quTAG binary file as ``(info, chunks)``.

    Parameters
    ----------
    path : str or os.PathLike
        quTAG binary file (40-byte header, 10-byte records).
    tick_s : float
        The device's base unit in seconds (quTAG: 1e-12; quTAU: about 81e-12,
        see its manual).
    channel_map : str or mapping, optional
        Channel -> role, e.g. ``"1=H,2=V,3=D,4=A"``. Default: none.
    reorder_window_s, chunk_events, party
        As for :func:`qkdpost.io.qcrypto.read_qcrypto`.

    Returns
    -------
    info : StreamInfo
    chunks : RecordStream
        ``ch`` is the stored channel number (it must fit 0..255).
    """
    path = os.fspath(path)
    if not (tick_s > 0 and np.isfinite(tick_s)):
        raise ConfigError(f"tick_s={tick_s!r}: the device base unit must be a positive number of seconds")
    tol = tolerance_ticks(reorder_window_s, tick_s)
    size = file_size(path)
    if size == 0:
        raise FileFormatError(path, 0, "empty file (0 bytes); expected a 40-byte quTAG header and 10-byte records")
    n = check_record_region(path, HEADER_BYTES, RECORD.itemsize, size, "quTAG binary")
    info = StreamInfo(
        tick_s=float(tick_s),
        party=party,
        device="qutools quTAG",
        channel_map=parse_channel_map(channel_map),
        extra={"format": "qutag", "source": os.path.basename(path), "records": str(n)},
    )

    def decode(block: np.ndarray, state: np.ndarray, t_out: np.ndarray, ch_out: np.ndarray, start: int) -> Any:
        rec = block.view(RECORD)
        return K.decode_qutag(rec["t"], rec["ch"], tol, state, t_out, ch_out, start)

    stream = RecordStream(path, HEADER_BYTES, RECORD.itemsize, n, decode, "quTAG binary", chunk_events,
                          K.new_state(), tol)
    return info, stream
