"""The native timestamp file: Apache Arrow IPC, record batches ``{t, ch}``.

Layout
------
An Arrow IPC *file* (the random-access format with the ``ARROW1`` magic at
both ends, https://arrow.apache.org/docs/format/Columnar.html#ipc-file-format)
whose schema is ``t: int64 not null, ch: uint8 not null`` and whose schema
metadata holds

- ``qkdpost.format``: ``"timestamps/1"`` (the layout version),
- ``qkdpost.stream_info``: :meth:`StreamInfo.to_json` as UTF-8 JSON, with
  its CRC-32 in ``qkdpost.stream_info_crc32``, and
- ``qkdpost.checksum``: ``"crc32"``: every record batch then carries the
  CRC-32 (zlib) of its ``t`` bytes followed by its ``ch`` bytes, as hex in the
  batch's custom metadata key ``qkdpost.crc32``; the reader verifies it, so
  a corrupted file is an error instead of silently different timestamps.

Any Arrow implementation can read it (``pyarrow.ipc.open_file``,
``polars.read_ipc``, ``arrow::ipc::RecordBatchFileReader``).

Writes are atomic (temporary sibling, fsync, rename; removed on any error).
Reads are memory-mapped and streamed batch by batch, so memory stays flat
whatever the file size; the arrays a reader yields are read-only views of the
mapped file whenever a chunk lies inside one record batch.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import fields
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from ..errors import ConfigError, FileFormatError, InputError
from ._atomic import AtomicPath
from .model import Chunk, StreamInfo

__all__ = ["write_stream", "StreamWriter", "read_stream", "SCHEMA", "FORMAT_TAG"]

FORMAT_TAG = "timestamps/1"
_META_FORMAT = b"qkdpost.format"
_META_INFO = b"qkdpost.stream_info"
_META_CHECKSUM = b"qkdpost.checksum"
_META_INFO_CRC = b"qkdpost.stream_info_crc32"
_BATCH_CRC = b"qkdpost.crc32"
SCHEMA = pa.schema([pa.field("t", pa.int64(), nullable=False), pa.field("ch", pa.uint8(), nullable=False)])
ARROW_MAGIC = b"ARROW1"

#: Default number of events per record batch written to disk (8 MiB of ``t``).
BATCH_EVENTS = 1 << 20


def _schema_with(info: StreamInfo) -> pa.Schema:
    text = json.dumps(info.to_json(), sort_keys=True).encode()
    meta = {
        _META_FORMAT: FORMAT_TAG.encode(),
        _META_INFO: text,
        _META_INFO_CRC: b"%08x" % zlib.crc32(text),
        _META_CHECKSUM: b"crc32",
    }
    return SCHEMA.with_metadata(meta)


def _crc(t: np.ndarray, ch: np.ndarray) -> bytes:
    """CRC-32 of the little-endian bytes of ``t`` then ``ch`` (8 hex digits)."""
    return b"%08x" % zlib.crc32(ch, zlib.crc32(t))


def _as_chunk_arrays(t: Any, ch: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate one chunk at the public boundary; return int64 and uint8 arrays."""
    t = np.asarray(t)
    ch = np.asarray(ch)
    if t.ndim != 1 or ch.ndim != 1:
        raise InputError(f"t.shape={t.shape}, ch.shape={ch.shape}: both must be 1-D arrays")
    if len(t) != len(ch):
        raise InputError(f"len(t)={len(t)} != len(ch)={len(ch)}: t and ch must have one entry per event")
    if t.dtype.kind not in "iu" and not (t.size == 0 and t.dtype.kind == "f"):
        raise InputError(f"t.dtype={t.dtype}: timestamps must be integer ticks (int64); never floats")
    if ch.dtype.kind not in "iu" and not (ch.size == 0 and ch.dtype.kind == "f"):
        raise InputError(f"ch.dtype={ch.dtype}: channels must be integers 0..255 (uint8)")
    if t.dtype == np.uint64 and t.size and int(t.max()) > np.iinfo(np.int64).max:
        raise InputError("t: a uint64 tick count exceeds int64 range; timestamps must fit in int64")
    if ch.dtype != np.uint8 and ch.size and (int(ch.min()) < 0 or int(ch.max()) > 255):
        raise InputError(f"ch: values {int(ch.min())}..{int(ch.max())} out of range; channels are 0..255")
    return np.ascontiguousarray(t, dtype=np.int64), np.ascontiguousarray(ch, dtype=np.uint8)


class StreamWriter:
    """Write a native timestamp file chunk by chunk, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output file. Replaced atomically when the writer closes without error.
    info : StreamInfo
        Stream metadata, stored in the Arrow schema metadata.
    batch_events : int, optional
        Events per record batch on disk; small writes are gathered until a
        batch is full (default ``2**20``).

    Examples
    --------
    >>> with StreamWriter("alice.arrow", StreamInfo(tick_s=125e-12)) as w:  # doctest: +SKIP
    ...     w.write(t, ch)

    Notes
    -----
    ``t`` must be non-decreasing within and across chunks; a violation raises
    :class:`~qkdpost.errors.InputError` and removes the partial output.
    On leaving the ``with`` block through an exception nothing is written.
    """

    def __init__(self, path: str | os.PathLike[str], info: StreamInfo, *, batch_events: int = BATCH_EVENTS):
        if not isinstance(info, StreamInfo):
            raise InputError(f"info={type(info).__name__}: must be a qkdpost.io.StreamInfo")
        if int(batch_events) < 1:
            raise ConfigError(f"batch_events={batch_events}: must be >= 1")
        self.path = os.fspath(path)
        self.info = info
        self.batch_events = int(batch_events)
        self.events = 0
        self._last_t: int | None = None
        self._pend_t: list[np.ndarray] = []
        self._pend_ch: list[np.ndarray] = []
        self._pend_n = 0
        try:
            self._atomic: AtomicPath | None = AtomicPath(self.path)
        except OSError as exc:
            raise InputError(f"output path {self.path!r}: cannot create a file there ({exc.strerror}); "
                             "check that the directory exists and is writable") from None
        try:
            self._sink = pa.OSFile(str(self._atomic.tmp), "wb")
            self._writer = ipc.new_file(self._sink, _schema_with(info))
        except BaseException:
            self._atomic.abort()
            self._atomic = None
            raise

    # context manager -------------------------------------------------------
    def __enter__(self) -> "StreamWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # writing ---------------------------------------------------------------
    def write(self, t: Any, ch: Any) -> None:
        """Append one chunk of events (``t`` int64 ticks, ``ch`` uint8 channels)."""
        if self._atomic is None:
            raise InputError(f"StreamWriter({self.path!r}) is closed; open a new writer")
        try:
            t, ch = _as_chunk_arrays(t, ch)
            if t.size == 0:
                return
            if t.size > 1 and bool(np.any(t[1:] < t[:-1])):
                i = int(np.argmax(t[1:] < t[:-1])) + 1
                raise InputError(
                    f"t[{i}]={int(t[i])} < t[{i - 1}]={int(t[i - 1])} (event {self.events + i} of the "
                    "stream): timestamps must be non-decreasing; sort each chunk first"
                )
            if self._last_t is not None and int(t[0]) < self._last_t:
                raise InputError(
                    f"t[0]={int(t[0])} < last timestamp {self._last_t} of the previous chunk (event "
                    f"{self.events}): timestamps must be non-decreasing across chunks"
                )
        except BaseException:
            self.abort()
            raise
        self._last_t = int(t[-1])
        self.events += int(t.size)
        self._pend_t.append(t)
        self._pend_ch.append(ch)
        self._pend_n += int(t.size)
        if self._pend_n >= self.batch_events:
            self._flush(final=False)
        else:  # held until the batch is full: copy, the caller may reuse its buffers
            self._pend_t[-1] = t.copy()
            self._pend_ch[-1] = ch.copy()

    def _flush(self, final: bool) -> None:
        if not self._pend_n:
            return
        t = self._pend_t[0] if len(self._pend_t) == 1 else np.concatenate(self._pend_t)
        ch = self._pend_ch[0] if len(self._pend_ch) == 1 else np.concatenate(self._pend_ch)
        b = self.batch_events
        full = len(t) if final else (len(t) // b) * b
        try:
            for s in range(0, full, b):
                bt, bc = t[s : s + b], ch[s : s + b]
                batch = pa.record_batch([pa.array(bt), pa.array(bc)], schema=SCHEMA)
                self._writer.write_batch(batch, custom_metadata={_BATCH_CRC: _crc(bt, bc)})
        except BaseException:
            self.abort()
            raise
        self._pend_t = [t[full:].copy()] if full < len(t) else []
        self._pend_ch = [ch[full:].copy()] if full < len(t) else []
        self._pend_n = len(t) - full

    def close(self) -> int:
        """Finish the file and move it into place; returns the number of events."""
        if self._atomic is None:
            return self.events
        try:
            self._flush(final=True)
            self._writer.close()
            self._sink.close()
            self._atomic.commit()
        except BaseException:
            self.abort()
            raise
        self._atomic = None
        return self.events

    def abort(self) -> None:
        """Discard everything written so far; no output file is left."""
        if self._atomic is None:
            return
        for closer in (self._writer.close, self._sink.close):
            try:
                closer()
            except Exception:
                pass
        self._atomic.abort()
        self._atomic = None


def write_stream(path: str | os.PathLike[str], info: StreamInfo, chunks: Iterable[Chunk]) -> int:
    """Write a whole stream of chunks to a native file, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output file (Arrow IPC). Replaced atomically; on any error, including
        one raised by the ``chunks`` iterator, no file is left behind.
    info : StreamInfo
        Metadata stored in the file's schema.
    chunks : iterable of Chunk or (t, ch) pairs
        ``t`` int64 ticks, non-decreasing across the whole stream; ``ch``
        uint8 channels of the same length.

    Returns
    -------
    int
        Number of events written.
    """
    with StreamWriter(path, info) as w:
        for chunk in chunks:
            t, ch = chunk
            w.write(t, ch)
    return w.events


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------
def _info_from_meta(path: str, meta: dict[bytes, bytes] | None) -> StreamInfo:
    if not meta or _META_INFO not in meta:
        raise FileFormatError(
            path, None, "Arrow file without qkdpost.stream_info metadata; it was not written by qkdpost "
            "(import it with `qkdpost convert` or write it with qkdpost.io.write_stream)"
        )
    fmt = meta.get(_META_FORMAT, b"").decode("utf-8", "replace")
    if fmt.split("/")[0] != "timestamps" or not fmt.endswith("/1"):
        raise FileFormatError(path, None, f"qkdpost.format={fmt!r}: this reader supports {FORMAT_TAG!r} only")
    crc = meta.get(_META_INFO_CRC)
    if crc is None:
        raise FileFormatError(path, None, "qkdpost.stream_info_crc32 metadata missing: the file is damaged or was "
                              "not written by qkdpost.io.write_stream; re-create it")
    if crc != b"%08x" % zlib.crc32(meta[_META_INFO]):
        raise FileFormatError(path, None, "qkdpost.stream_info does not match its CRC-32: the metadata were "
                              "altered; re-create the file")
    try:
        d = json.loads(meta[_META_INFO].decode("utf-8"))
        if not isinstance(d, dict):
            raise TypeError("not a JSON object")
        known = {f.name for f in fields(StreamInfo)}
        return StreamInfo.from_json({k: v for k, v in d.items() if k in known})
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise FileFormatError(path, None, f"unreadable qkdpost.stream_info metadata ({exc}); rewrite the file") from None


def _open_arrow(path: str) -> tuple[Any, Any]:
    """Memory-map and open an Arrow IPC file, mapping every failure to FileFormatError."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise FileFormatError(path, None, "no such file; check the path") from None
    except OSError as exc:
        raise FileFormatError(path, None, f"cannot stat file ({exc.strerror})") from None
    if size == 0:
        raise FileFormatError(path, 0, "empty file (0 bytes); expected an Arrow IPC timestamp file")
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(max(0, size - 6))
        tail = f.read(6)
    if head[:6] != ARROW_MAGIC:
        raise FileFormatError(path, 0, f"wrong magic {head[:6]!r}, expected {ARROW_MAGIC!r}: not an Arrow IPC file "
                              "(for a tagger file use `qkdpost convert --format ...`)")
    if tail != ARROW_MAGIC or size < 20:
        raise FileFormatError(path, size, f"truncated Arrow file ({size} bytes, no closing {ARROW_MAGIC!r} footer); "
                              "the writer did not finish: re-create the file")
    try:
        mm = pa.memory_map(path, "r")
        reader = ipc.open_file(mm)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise FileFormatError(path, None, f"corrupt Arrow IPC footer or schema ({exc})") from None
    return mm, reader


def _check_schema(path: str, schema: pa.Schema) -> None:
    names = schema.names
    if names != ["t", "ch"] or schema.field("t").type != pa.int64() or schema.field("ch").type != pa.uint8():
        got = ", ".join(f"{f.name}: {f.type}" for f in schema)
        raise FileFormatError(path, None, f"schema ({got}) is not (t: int64, ch: uint8); not a qkdpost timestamp file")


def read_stream(
    path: str | os.PathLike[str], chunk_events: int = 1 << 20, *, verify: bool = True
) -> tuple[StreamInfo, Iterator[Chunk]]:
    """Open a native timestamp file; return its metadata and a chunk iterator.

    Parameters
    ----------
    path : str or os.PathLike
        An Arrow IPC file written by :func:`write_stream` / :class:`StreamWriter`.
    chunk_events : int, optional
        Events per yielded chunk (the last one may be shorter). Default ``2**20``.
    verify : bool, optional
        Check each record batch's CRC-32 (default). Costs about 7 ns per event.

    Returns
    -------
    info : StreamInfo
        Metadata from the schema, read eagerly (so a bad file fails here).
    chunks : iterator of Chunk
        ``t`` int64 and ``ch`` uint8 arrays, read-only. Memory use is bounded
        by ``chunk_events`` plus one record batch: the file is memory-mapped.

    Raises
    ------
    FileFormatError
        Missing, empty, truncated or non-Arrow file, wrong schema, missing
        metadata (eagerly); null values, corrupt batches, checksum mismatches
        or timestamps that decrease (while iterating).
    """
    path = os.fspath(path)
    if int(chunk_events) < 1:
        raise ConfigError(f"chunk_events={chunk_events}: must be >= 1")
    mm, reader = _open_arrow(path)
    try:
        _check_schema(path, reader.schema)
        info = _info_from_meta(path, reader.schema.metadata)
        checksum = (reader.schema.metadata or {}).get(_META_CHECKSUM)
        if checksum != b"crc32":
            raise FileFormatError(path, None, f"qkdpost.checksum={checksum!r}: missing or unknown (expected b'crc32'); "
                                  "the file is damaged or was not written by qkdpost.io.write_stream")
    except FileFormatError:
        mm.close()
        raise
    except (pa.ArrowException, ValueError, TypeError, KeyError) as exc:  # e.g. a field name that is not UTF-8
        mm.close()
        raise FileFormatError(path, None, f"corrupt Arrow schema ({type(exc).__name__}: {exc})") from None
    except BaseException:
        mm.close()
        raise
    return info, _iter_batches(path, mm, reader, int(chunk_events), bool(verify))


def _iter_batches(path: str, mm: Any, reader: Any, chunk_events: int, verify: bool) -> Iterator[Chunk]:
    pend_t: list[np.ndarray] = []
    pend_ch: list[np.ndarray] = []
    pend_n = 0
    seen = 0
    last_t: int | None = None
    try:
        for k in range(reader.num_record_batches):
            try:
                batch, bmeta = reader.get_batch_with_custom_metadata(k)
                batch.validate(full=True)
                if batch.schema.names != ["t", "ch"]:
                    raise ValueError("batch schema differs from file schema")
                tcol, ccol = batch.column(0), batch.column(1)
                if tcol.null_count or ccol.null_count:
                    raise ValueError("null values in t or ch")
                t = tcol.to_numpy(zero_copy_only=True)
                ch = ccol.to_numpy(zero_copy_only=True)
                if verify:
                    stored = bmeta.get(_BATCH_CRC) if bmeta is not None else None
                    if stored is None:
                        raise ValueError("its qkdpost.crc32 checksum is missing")
                    computed = _crc(t, ch)
                    if stored != computed:
                        raise ValueError(f"CRC-32 stored {stored.decode('ascii', 'replace')}, computed "
                                         f"{computed.decode()}: the data were altered")
            except (pa.ArrowException, ValueError, TypeError, OSError) as exc:
                raise FileFormatError(path, None, f"record batch {k} (event {seen}) is corrupt ({exc}); "
                                      "re-create the file") from None
            if t.size:
                bad = t[1:] < t[:-1]
                if (last_t is not None and int(t[0]) < last_t) or bool(bad.any()):
                    i = 0 if (last_t is not None and int(t[0]) < last_t) else int(np.argmax(bad)) + 1
                    raise FileFormatError(path, None, f"record batch {k}: timestamp of event {seen + i} goes "
                                          "backwards; native files must be sorted (re-import the source file)")
                last_t = int(t[-1])
            seen += int(t.size)
            # re-cut batches into chunks of chunk_events, zero-copy where possible
            pos = 0
            n = int(t.size)
            while pos < n:
                if pend_n == 0 and n - pos >= chunk_events:
                    yield Chunk(t[pos : pos + chunk_events], ch[pos : pos + chunk_events])
                    pos += chunk_events
                    continue
                take = min(chunk_events - pend_n, n - pos)
                pend_t.append(t[pos : pos + take])
                pend_ch.append(ch[pos : pos + take])
                pend_n += take
                pos += take
                if pend_n == chunk_events:
                    yield Chunk(np.concatenate(pend_t), np.concatenate(pend_ch))
                    pend_t, pend_ch, pend_n = [], [], 0
        if pend_n:
            yield Chunk(np.concatenate(pend_t), np.concatenate(pend_ch))
    finally:
        mm.close()
