"""Importer for PicoQuant PTU files with T2 (time-tag) or T3 (sync + delay) records.

File layout (PicoQuant's "PTU file format" description and demo readers):

- 8-byte magic ``PQTTTR\\0\\0``, 8-byte version string;
- tagged header entries ``{char ident[32]; int32 idx; uint32 type; int64
  value}`` (48 bytes); for strings, arrays and blobs ``value`` is the byte
  length of the data that follows the entry; the header ends with the tag
  ``Header_End``;
- uint32 records. ``TTResultFormat_TTTRRecType`` names the record type,
  ``TTResult_NumberOfRecords`` their number and ``MeasDesc_GlobalResolution``
  the tick in seconds.

Decoding of T2 records is in :func:`qkdpost.io._kernels.decode_ptu_t2`.
Channel codes in the output: 0 is the sync input, HydraHarp-type input
``c`` (0-based) is ``c + 1``, PicoHarp inputs are as stored, markers are
``0x80 | marker_bits``. The default channel map marks 0 as "sync" and the
marker codes as "marker"; detector inputs stay unused until configured.

T3 records (pulsed sources: a sync count and a delay after the sync) become
absolute times in ticks of the delay resolution ``MeasDesc_Resolution``:
``floor(N * P) + dtime`` with ``N`` the sync count and ``P`` the sync period
``MeasDesc_GlobalResolution`` in those ticks (snapped to an integer when it is
one to 1e-9); :func:`qkdpost.io._kernels.decode_ptu_t3`. Channel codes as for
T2 (there are no sync records in T3); the sync period is kept in
``info.extra["sync_period_s"]``.
"""

from __future__ import annotations

import math
import os
import struct
from datetime import datetime, timedelta
from typing import Any, Mapping

import numpy as np

from ..errors import FileFormatError
from . import _kernels as K
from ._stream import RecordStream, check_record_region, file_size, tolerance_ticks
from .model import StreamInfo, parse_channel_map

__all__ = ["read_ptu", "read_ptu_header", "RECORD_TYPES", "RECORD_TYPES_T3", "TAG_TYPES", "MAGIC"]

MAGIC = b"PQTTTR\0\0"

#: Tag type codes of the PTU header.
TAG_TYPES = {
    "Empty8": 0xFFFF0008,
    "Bool8": 0x00000008,
    "Int8": 0x10000008,
    "BitSet64": 0x11000008,
    "Color8": 0x12000008,
    "Float8": 0x20000008,
    "TDateTime": 0x21000008,
    "Float8Array": 0x2001FFFF,
    "AnsiString": 0x4001FFFF,
    "WideString": 0x4002FFFF,
    "BinaryBlob": 0xFFFFFFFF,
}
_TYPE_NAME = {v: k for k, v in TAG_TYPES.items()}
_SIZED = {"Float8Array", "AnsiString", "WideString", "BinaryBlob"}

#: T2 record type code -> (name, kernel flavour).
RECORD_TYPES = {
    0x00010203: ("PicoHarp T2", K.PTU_PICOHARP),
    0x00010204: ("HydraHarp T2 v1", K.PTU_HYDRAHARP1),
    0x01010204: ("HydraHarp T2 v2", K.PTU_HYDRAHARP2),
    0x00010205: ("TimeHarp 260N T2", K.PTU_HYDRAHARP2),
    0x00010206: ("TimeHarp 260P T2", K.PTU_HYDRAHARP2),
    0x00010207: ("Generic T2 (MultiHarp, PicoHarp 330)", K.PTU_HYDRAHARP2),
}
#: T3 record type code -> (name, kernel flavour).
RECORD_TYPES_T3 = {
    0x00010303: ("PicoHarp T3", K.PTU_PICOHARP),
    0x00010304: ("HydraHarp T3 v1", K.PTU_HYDRAHARP1),
    0x01010304: ("HydraHarp T3 v2", K.PTU_HYDRAHARP2),
    0x00010305: ("TimeHarp 260N T3", K.PTU_HYDRAHARP2),
    0x00010306: ("TimeHarp 260P T3", K.PTU_HYDRAHARP2),
    0x00010307: ("Generic T3 (MultiHarp, PicoHarp 330)", K.PTU_HYDRAHARP2),
}

_ENTRY = struct.Struct("<32siIq")
MAX_TAGS = 100_000
MAX_TAG_DATA = 1 << 26  # 64 MiB: far above any real header entry


def read_ptu_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int]:
    """Parse the tagged header of a PTU file.

    Returns
    -------
    tags : dict
        Tag name (with ``(idx)`` appended when ``idx >= 0``) -> value
        (int, float, bool, str, bytes, tuple of float, or datetime).
    data_offset : int
        Byte offset of the first record.

    Raises
    ------
    FileFormatError
        Missing or empty file, wrong magic, a cut-off header or an entry of
        unknown type; each names the byte offset.
    """
    path = os.fspath(path)
    size = file_size(path)
    if size == 0:
        raise FileFormatError(path, 0, "empty file (0 bytes); expected a PicoQuant PTU file")
    tags: dict[str, Any] = {}
    with open(path, "rb") as f:
        magic = f.read(8)
        if magic != MAGIC:
            raise FileFormatError(path, 0, f"wrong magic {magic!r}, expected {MAGIC!r}: not a PicoQuant PTU file")
        if len(f.read(8)) < 8:
            raise FileFormatError(path, size, "truncated PTU file: it ends inside the 16-byte preamble")
        for _ in range(MAX_TAGS):
            at = f.tell()
            raw = f.read(_ENTRY.size)
            if len(raw) < _ENTRY.size:
                raise FileFormatError(path, at, "truncated PTU header: it ends before the Header_End tag")
            ident, idx, typ, value = _ENTRY.unpack(raw)
            name = ident.split(b"\0", 1)[0].decode("ascii", "replace")
            tname = _TYPE_NAME.get(typ)
            if tname is None:
                raise FileFormatError(path, at + 36, f"header tag {name!r} has unknown type code 0x{typ:08X}; "
                                      "the header is corrupt")
            if name == "Header_End":
                return tags, f.tell()
            if tname in _SIZED:
                if not 0 <= value <= MAX_TAG_DATA or f.tell() + value > size:
                    raise FileFormatError(path, at + 40, f"header tag {name!r} claims {value} bytes of data, "
                                          f"beyond the end of the file; the header is corrupt or truncated")
                data = f.read(value)
                if tname == "AnsiString":
                    val: Any = data.split(b"\0", 1)[0].decode("windows-1252", "replace")
                elif tname == "WideString":
                    val = data.decode("utf-16-le", "replace").split("\0", 1)[0]
                elif tname == "Float8Array":
                    val = struct.unpack(f"<{value // 8}d", data[: value // 8 * 8])
                else:
                    val = data
            elif tname in ("Float8", "TDateTime"):
                val = struct.unpack("<d", struct.pack("<q", value))[0]
                if tname == "TDateTime":
                    val = _tdatetime(val)
            elif tname == "Bool8":
                val = bool(value)
            elif tname == "Empty8":
                val = None
            else:
                val = int(value)
            tags[name if idx < 0 else f"{name}({idx})"] = val
        raise FileFormatError(path, None, f"no Header_End tag within {MAX_TAGS} header entries; the header is corrupt")


def _period_ticks(period_s: float, tick_s: float) -> tuple[int, float]:
    """The sync period in ticks as (integer part, fraction); snapped when it is an integer to 1e-9."""
    ratio = period_s / tick_s
    near = round(ratio)
    if abs(ratio - near) <= 1e-9 * ratio:
        return int(near), 0.0
    whole = math.floor(ratio)
    return int(whole), float(ratio - whole)


def _tdatetime(days: float) -> Any:
    """PicoQuant TDateTime (days since 1899-12-30) -> datetime, or the raw float if absurd."""
    if not math.isfinite(days) or not -1e6 < days < 1e6:
        return days
    return datetime(1899, 12, 30) + timedelta(days=days)


def read_ptu(
    path: str | os.PathLike[str],
    *,
    keep_markers: bool = True,
    channel_map: str | Mapping[int, str] | None = None,
    reorder_window_s: float = 10e-6,
    chunk_events: int = 1 << 20,
    party: str = "",
) -> tuple[StreamInfo, RecordStream]:
    """Stream the T2 or T3 records of a PTU file as ``(info, chunks)``.

    Parameters
    ----------
    path : str or os.PathLike
        PicoQuant ``.ptu`` file with T2 or T3 records (PicoHarp 300,
        HydraHarp v1/v2, TimeHarp 260 N/P, Generic of MultiHarp and PicoHarp
        330). T3 times are absolute (module docstring).
    keep_markers : bool
        Keep marker records as events with channel ``0x80 | bits``.
    channel_map : str or mapping, optional
        Channel -> role; merged over the default ``{0: "sync", 0x81..0x8F:
        "marker"}``.
    reorder_window_s : float
        Tolerance for out-of-order events (markers come late on real
        hardware); default 10 us.
    chunk_events, party
        As for :func:`qkdpost.io.qcrypto.read_qcrypto`.

    Raises
    ------
    FileFormatError
        Bad magic or header, an unknown record type, a missing or impossible
        resolution or sync period, fewer records than the header says,
        undefined records or time going backwards (during iteration).
    """
    path = os.fspath(path)
    tags, data_offset = read_ptu_header(path)
    size = file_size(path)
    rectype = tags.get("TTResultFormat_TTTRRecType")
    if type(rectype) is not int:  # noqa: E721 - a Bool8 tag must not pass as a number
        raise FileFormatError(path, None, "PTU header has no TTResultFormat_TTTRRecType tag; cannot decode records")
    t3 = rectype in RECORD_TYPES_T3
    if not t3 and rectype not in RECORD_TYPES:
        raise FileFormatError(path, None, f"unknown record type 0x{rectype:08X}; supported types: "
                              + ", ".join(f"0x{k:08X} {v[0]}" for k, v in {**RECORD_TYPES, **RECORD_TYPES_T3}.items()))
    kind, flavour = (RECORD_TYPES_T3 if t3 else RECORD_TYPES)[rectype]
    res = tags.get("MeasDesc_Resolution" if t3 else "MeasDesc_GlobalResolution")
    if not isinstance(res, float) or not (1e-15 <= res <= 1e-3):
        name = "MeasDesc_Resolution" if t3 else "MeasDesc_GlobalResolution"
        raise FileFormatError(path, None, f"{name}={res!r}: missing or not a plausible tick "
                              "length (1 fs .. 1 ms); the header is corrupt")
    period = tags.get("MeasDesc_GlobalResolution") if t3 else None
    if t3 and (not isinstance(period, float) or not (res <= period <= 1.0)):
        raise FileFormatError(path, None, f"MeasDesc_GlobalResolution={period!r}: a T3 file needs the sync period "
                              f"in seconds, at least the delay resolution {res!r} and at most 1 s; the header "
                              "is corrupt")
    body = size - data_offset
    declared = tags.get("TTResult_NumberOfRecords")
    if type(declared) is int and declared > 0:  # noqa: E721
        if declared * 4 > body:
            have = body // 4
            raise FileFormatError(path, data_offset + have * 4, f"truncated PTU file: header declares {declared} "
                                  f"records, the file holds {have}{' and a partial one' if body % 4 else ''}")
        n = int(declared)
    else:  # acquisition software that did not finish writing the header
        n = check_record_region(path, data_offset, 4, size, "PTU")
    if n == 0:
        raise FileFormatError(path, data_offset, "PTU file holds no records")
    cmap = {**({} if t3 else {0: "sync"}), **{K.MARKER_BASE | m: "marker" for m in range(1, 16)}}
    cmap.update(parse_channel_map(channel_map))
    extra = {"format": "ptu", "record_type": kind, "source": os.path.basename(path), "records": str(n)}
    if t3:
        extra["sync_period_s"] = repr(period)
    for tag in ("HW_Type", "HW_SerialNo", "File_Comment"):
        if isinstance(tags.get(tag), str):
            extra[tag] = tags[tag]
    created = tags.get("File_CreatingTime")
    if isinstance(created, datetime):
        extra["File_CreatingTime"] = created.isoformat()  # local time of the acquisition PC
    info = StreamInfo(
        tick_s=float(res),
        party=party,
        device=f"PicoQuant {tags.get('HW_Type', kind)}".strip(),
        channel_map=cmap,
        extra=extra,
    )
    tol = tolerance_ticks(reorder_window_s, res)
    keep = bool(keep_markers)

    if t3:
        p_int, p_frac = _period_ticks(period, res)

        def decode(block: np.ndarray, state: np.ndarray, t_out: np.ndarray, ch_out: np.ndarray, start: int) -> Any:
            return K.decode_ptu_t3(block.view("<u4"), flavour, keep, tol, p_int, p_frac, state, t_out, ch_out, start)
    else:

        def decode(block: np.ndarray, state: np.ndarray, t_out: np.ndarray, ch_out: np.ndarray, start: int) -> Any:
            return K.decode_ptu_t2(block.view("<u4"), flavour, keep, tol, state, t_out, ch_out, start)

    stream = RecordStream(path, data_offset, 4, n, decode, f"PTU {kind}", chunk_events, K.new_state(), tol)
    return info, stream

