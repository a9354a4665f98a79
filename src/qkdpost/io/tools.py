"""Whole-file operations behind ``qkdpost convert`` and ``qkdpost info``."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from .dispatch import open_stream
from .model import Chunk, parse_channel_map

__all__ = ["convert", "summarize", "Progress"]

#: ``progress(done, total)`` callback; both in bytes of the input (total may be 0 if unknown).
Progress = Callable[[int, int], None]


def _with_progress(it: Iterator[Chunk], path: str, progress: Progress | None) -> Iterator[Chunk]:
    total = int(getattr(it, "bytes_total", 0)) or os.path.getsize(path)
    events = 0
    for chunk in it:
        yield chunk
        events += len(chunk.t)
        if progress is not None:
            done = getattr(it, "bytes_done", None)
            progress(int(done) if done is not None else min(total, events * 9), total)


def _reader_stats(it: Any) -> dict[str, int]:
    """Counters an importer kept while decoding (reordered events, dropped records...)."""
    out: dict[str, int] = {}
    if hasattr(it, "reordered"):
        out["reordered_events"] = int(it.reordered)
    state = getattr(it, "state", None)
    fmt = getattr(it, "fmt", "")
    if state is not None:
        from . import _kernels as K

        if fmt.startswith("qcrypto"):
            out["dropped_flagged"] = int(state[K.S_COUNT_A])
        elif fmt.startswith("PTU"):
            out["overflow_records"] = int(state[K.S_COUNT_A])
            out["marker_records"] = int(state[K.S_COUNT_B])
    return out


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    format: str = "auto",
    channel_map: str | Mapping[int, str] | None = None,
    party: str | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Convert any supported timestamp file to the native Arrow format.

    Parameters
    ----------
    src, dst : path
        Input (any format of :data:`qkdpost.io.FORMATS`) and output
        (native Arrow IPC, written atomically: nothing is left on error).
    format : str
        Input format, ``"auto"`` by default.
    channel_map : str or mapping, optional
        Entries merged over the reader's own map (e.g. ``"1=H,2=V,4=D,8=A"``).
    party : str, optional
        Overrides the party in the metadata ("alice"/"bob").
    progress : callable, optional
        ``progress(done_bytes, total_bytes)`` after each chunk.
    **options
        Passed to the reader (see :func:`qkdpost.io.open_stream`).

    Returns
    -------
    dict
        ``events``, ``output``, ``info`` (the written StreamInfo as JSON) and
        the reader's counters.
    """
    from .arrow import StreamWriter

    src, dst = os.fspath(src), os.fspath(dst)
    extra_map = parse_channel_map(channel_map)
    info, it = open_stream(src, format=format, **options)
    changes: dict[str, Any] = {}
    if extra_map:
        changes["channel_map"] = {**info.channel_map, **extra_map}
    if party is not None:
        changes["party"] = party
    if changes:
        info = dataclasses.replace(info, **changes)
    with StreamWriter(dst, info) as w:
        for chunk in _with_progress(it, src, progress):
            w.write(chunk.t, chunk.ch)
    return {"events": w.events, "output": dst, "info": info.to_json(), **_reader_stats(it)}


def summarize(
    path: str | os.PathLike[str],
    *,
    format: str = "auto",
    progress: Progress | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Read a whole timestamp file and report counts per channel, rate, duration and metadata.

    Returns
    -------
    dict
        ``events``, ``first_tick``, ``last_tick``, ``duration_s``
        (``(last - first) * tick_s``, times ``slot_period_ticks`` for a slot
        log), ``rate_hz`` (events / duration),
        ``counts`` (channel -> [events, role]), ``info`` (metadata as JSON)
        and the reader's counters.
    """
    path = os.fspath(path)
    info, it = open_stream(path, format=format, **options)
    counts = np.zeros(256, dtype=np.int64)
    first: int | None = None
    last: int | None = None
    events = 0
    for chunk in _with_progress(it, path, progress):
        if len(chunk.t) == 0:
            continue
        if first is None:
            first = int(chunk.t[0])
        last = int(chunk.t[-1])
        counts += np.bincount(chunk.ch, minlength=256)
        events += len(chunk.t)
    # A slot log's t counts pulse slots, each slot_period_ticks ticks long.
    seconds_per_t = info.tick_s * (info.slot_period_ticks if info.kind == "slots" else 1)
    duration = (last - first) * seconds_per_t if events else 0.0
    return {
        "path": path,
        "events": events,
        "first_tick": first,
        "last_tick": last,
        "duration_s": duration,
        "rate_hz": events / duration if duration > 0 else None,
        "counts": {int(c): [int(counts[c]), info.channel_map.get(int(c), "unused")] for c in np.flatnonzero(counts)},
        "info": info.to_json(),
        **_reader_stats(it),
    }
