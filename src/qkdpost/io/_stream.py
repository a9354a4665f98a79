"""Streaming driver shared by the importers of fixed-size-record files.

:class:`RecordStream` memory-maps one block of records at a time (and unmaps
it after decoding, so resident memory stays flat), hands it to a decoding
kernel (which puts events that arrive slightly out of order into place),
holds back the events that a later record could still precede, and yields
the rest as :class:`Chunk` objects. Memory is bounded by one block plus the
events inside the reordering window, whatever the file size.

Like every memory-mapped reader (the native Arrow reader too), it must not
read a file that another process truncates at the same time; a file that
is still growing is fine (only the size seen at open is read).
"""

from __future__ import annotations

import mmap
import os
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import ConfigError, FileFormatError
from . import _kernels as K
from .model import Chunk

__all__ = ["RecordStream", "tolerance_ticks", "check_record_region"]

Decoder = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int], int]


def tolerance_ticks(reorder_window_s: float, tick_s: float) -> int:
    """Convert the reordering tolerance from seconds to ticks (validated)."""
    if not (reorder_window_s >= 0 and np.isfinite(reorder_window_s)):
        raise ConfigError(f"reorder_window_s={reorder_window_s!r}: must be a finite number of seconds >= 0")
    ticks = int(round(reorder_window_s / tick_s))
    if ticks >= K.MAX_TOL:
        raise ConfigError(f"reorder_window_s={reorder_window_s!r}: too large ({ticks} ticks); use at most a few ms")
    return ticks


def check_record_region(path: str, data_offset: int, record_size: int, size: int, fmt: str) -> int:
    """Number of whole records after ``data_offset``; FileFormatError if the last one is cut."""
    body = size - data_offset
    if body < 0:
        raise FileFormatError(path, size, f"truncated {fmt} file: it ends inside the {data_offset}-byte header")
    rem = body % record_size
    if rem:
        at = size - rem
        raise FileFormatError(
            path, at, f"truncated {fmt} file: {rem} trailing byte(s) do not make a whole {record_size}-byte record "
            f"(record {body // record_size}); the capture was cut off: drop the partial record or re-export"
        )
    return body // record_size


class RecordStream:
    """Iterator of :class:`Chunk` over the records of one file.

    Parameters
    ----------
    path : str
        The file.
    data_offset : int
        Byte offset of the first record.
    record_size : int
        Bytes per record.
    n_records : int
        Records to read.
    decode : callable
        ``decode(block_bytes uint8[:], state, t_out, ch_out, start) -> int``
        calling a kernel of :mod:`qkdpost.io._kernels` with the format's
        options bound; ``t_out[:start]`` holds the events held back.
    fmt : str
        Format name for error messages.
    chunk_events : int
        Records per block (and maximum events per yielded chunk).
    state : ndarray of int64
        The kernel state (:func:`~qkdpost.io._kernels.new_state`), kept so
        callers can read the counters afterwards.

    Attributes
    ----------
    bytes_done, bytes_total : int
        Progress through the record region (for progress bars).
    events : int
        Events yielded so far.
    reordered : int
        Events that arrived out of order and were moved into place.
    """

    def __init__(self, path: str, data_offset: int, record_size: int, n_records: int, decode: Decoder,
                 fmt: str, chunk_events: int, state: np.ndarray, tol: int):
        if int(chunk_events) < 1:
            raise ConfigError(f"chunk_events={chunk_events}: must be >= 1")
        self.path = path
        self.data_offset = data_offset
        self.record_size = record_size
        self.n_records = n_records
        self.fmt = fmt
        self.chunk_events = int(chunk_events)
        self.state = state
        self.tol = tol
        self.bytes_total = n_records * record_size
        self.bytes_done = 0
        self.events = 0
        self.reordered = 0
        self._decode = decode
        self._gen = self._run()

    def __iter__(self) -> "RecordStream":
        return self

    def __next__(self) -> Chunk:
        return next(self._gen)

    def close(self) -> None:
        """Stop early and release the file."""
        self._gen.close()

    def _fail(self, rec_base: int) -> None:
        s = self.state
        code, rec, val = int(s[K.S_ERR]), int(s[K.S_ERR_REC]), int(s[K.S_ERR_VAL])
        index = rec_base + rec
        offset = self.data_offset + index * self.record_size
        if code == K.ERR_BACKWARDS:
            msg = (f"record {index}: time {val} ticks is more than the reordering tolerance ({self.tol} ticks) "
                   f"before the latest time {int(s[K.S_MAX])}; the file is corrupt, or raise reorder_window_s "
                   "if the tagger reorders events that much")
        elif code == K.ERR_DISPLACED:
            msg = (f"record {index}: time {val} belongs more than {K.MAX_DISPLACEMENT} events back; time taggers "
                   "only reorder a few events, so the file is corrupt (or lower reorder_window_s)")
        elif code == K.ERR_RANGE:
            msg = (f"record {index}: time {val} is out of range (negative, or an overflow sum beyond 2**62 ticks); "
                   f"the file is corrupt or not a {self.fmt} file")
        elif code == K.ERR_CHANNEL:
            msg = f"record {index}: channel {val} does not fit 0..255; the file is corrupt or not a {self.fmt} file"
        else:
            msg = (f"record {index}: undefined record (channel code {val}); the file is corrupt or uses another "
                   f"record type than its header says ({self.fmt})")
        raise FileFormatError(self.path, offset, msg)

    def _block(self, f: Any, first: int, k: int) -> tuple[Any, np.ndarray]:
        """Map records ``first .. first + k`` of the open file; returns (map, uint8 array)."""
        rs = self.record_size
        start = self.data_offset + first * rs
        end = start + k * rs
        size = os.fstat(f.fileno()).st_size
        if size < end:
            raise FileFormatError(self.path, size, f"file ended early (it shrank while being read?): expected "
                                  f"{self.n_records} records of {rs} bytes")
        base = start - start % mmap.ALLOCATIONGRANULARITY
        # a private (copy-on-write) map: the decoders take writable arrays and never write
        mm = mmap.mmap(f.fileno(), end - base, offset=base, access=mmap.ACCESS_COPY)
        block = np.frombuffer(mm, dtype=np.uint8, offset=start - base, count=k * rs)
        if block.ctypes.data % 8:  # records not 8-byte aligned in the file: decode from an aligned copy
            block = block.copy()
        return mm, block

    def _run(self) -> Iterator[Chunk]:
        rs = self.record_size
        block_records = self.chunk_events
        tail_t = np.zeros(0, np.int64)
        tail_ch = np.zeros(0, np.uint8)
        done = 0
        with open(self.path, "rb", buffering=0) as f:
            while done < self.n_records:
                k = min(block_records, self.n_records - done)
                m = len(tail_t)
                t_out = np.empty(m + k, np.int64)
                ch_out = np.empty(m + k, np.uint8)
                t_out[:m] = tail_t
                ch_out[:m] = tail_ch
                mm, block = self._block(f, done, k)
                try:
                    total = self._decode(block, self.state, t_out, ch_out, m)
                finally:
                    del block  # release the buffer export before unmapping
                    try:
                        mm.close()
                    except BufferError:  # pragma: no cover - a traceback still holds the block
                        pass
                if total < 0:
                    self._fail(done)
                self.reordered = int(self.state[K.S_MOVED])
                done += k
                self.bytes_done = done * rs
                if done < self.n_records and total:
                    # events later records may still precede stay behind
                    cut = int(np.searchsorted(t_out[:total], self.state[K.S_MAX] - self.tol, side="right"))
                else:
                    cut = total
                tail_t = t_out[cut:total].copy()
                tail_ch = ch_out[cut:total].copy()
                for s in range(0, cut, self.chunk_events):
                    e = min(cut, s + self.chunk_events)
                    self.events += e - s
                    yield Chunk(t_out[s:e], ch_out[s:e])


def file_size(path: str) -> int:
    """Size of ``path`` in bytes; FileFormatError if missing or unreadable."""
    try:
        if os.path.isdir(path):
            raise FileFormatError(path, None, "is a directory, not a timestamp file")
        return os.path.getsize(path)
    except FileNotFoundError:
        raise FileFormatError(path, None, "no such file; check the path") from None
    except OSError as exc:
        raise FileFormatError(path, None, f"cannot read file ({exc.strerror})") from None
