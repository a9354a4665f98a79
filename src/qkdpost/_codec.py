"""Byte encoding of protocol messages (version 1).

A message is a kind (short ASCII name such as ``"cascade.parities"``) and a
body: a flat mapping of field names to ints, floats, bools, strings, bytes,
``None`` or NumPy arrays. Both the in-memory loopback and TCP carry exactly
these bytes, so the traffic a test counts is the traffic a link would carry.

Layout (little endian)::

    u8 version | u16 len, kind | u16 n_fields | fields...
    field: u8 len, name | u8 tag | payload
    tag 0 int64 | 1 float64 | 2 str (u32 len) | 3 bytes (u32 len) | 4 None
        | 5 bool (u8) | 6 ndarray: u8 len, dtype.str | u8 ndim | u64*ndim shape | data
"""

from __future__ import annotations

import functools
import math
import re
import struct
from typing import Any, Mapping

import numpy as np

from .errors import ProtocolError

VERSION = 1

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_HEAD = struct.Struct("<BH")  # version, kind length
_TAG_ARRAY = bytes([6])
_DTYPE_NAME = re.compile(r"[<>|=]?[a-zA-Z][0-9]{0,3}(\[[0-9]{0,3}[a-zA-Z]{1,2}\])?")  # e.g. <i4, |u1, <M8[ns]


def encode(kind: str, body: Mapping[str, Any]) -> bytes:
    """Serialise one message to bytes."""
    out: list[Any] = [_head(kind), _U16.pack(len(body))]
    for name, value in body.items():
        if isinstance(value, np.ndarray):
            arr = value if value.flags.c_contiguous else np.ascontiguousarray(value)
            out += (_array_head(name, arr.dtype, arr.ndim), _shape_struct(arr.ndim).pack(*arr.shape))
            if arr.size:
                try:
                    out.append(memoryview(arr).cast("B"))  # joined below: no intermediate bytes copy
                except (TypeError, ValueError):  # dtypes without a buffer format (datetime64, ...)
                    out.append(arr.tobytes())
            continue
        out.append(_field_name(name))
        if isinstance(value, (bool, np.bool_)):
            out.append(_U8.pack(5) + _U8.pack(int(value)))
        elif isinstance(value, (int, np.integer)):
            out.append(_U8.pack(0) + _I64.pack(int(value)))
        elif isinstance(value, (float, np.floating)):
            out.append(_U8.pack(1) + _F64.pack(float(value)))
        elif isinstance(value, str):
            sb = value.encode("utf-8")
            out += (_U8.pack(2) + _U32.pack(len(sb)), sb)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            bb = bytes(value)
            out += (_U8.pack(3) + _U32.pack(len(bb)), bb)
        elif value is None:
            out.append(_U8.pack(4))
        else:
            raise TypeError(f"message field {name!r}: cannot encode {type(value).__name__}")
    return b"".join(out)


# Cached byte strings of the parts that repeat from message to message (kinds,
# field names, array headers): most of a small message's encoding cost.
@functools.lru_cache(maxsize=256)
def _head(kind: str) -> bytes:
    k = kind.encode("ascii")
    return _HEAD.pack(VERSION, len(k)) + k


@functools.lru_cache(maxsize=1024)
def _field_name(name: str) -> bytes:
    nb = name.encode("ascii")
    return _U8.pack(len(nb)) + nb


@functools.lru_cache(maxsize=1024)
def _array_head(name: str, dtype: np.dtype, ndim: int) -> bytes:
    ds = dtype.str.encode("ascii")
    return _field_name(name) + _TAG_ARRAY + _U8.pack(len(ds)) + ds + _U8.pack(ndim)


def decode(data: bytes) -> tuple[str, dict[str, Any]]:
    """Parse bytes made by :func:`encode`; raise ProtocolError if malformed."""
    try:
        return _decode(memoryview(data))
    except (struct.error, ValueError, TypeError, UnicodeDecodeError, IndexError) as exc:
        raise ProtocolError(f"malformed message ({len(data)} bytes): {exc}") from None


def _decode(mv: memoryview) -> tuple[str, dict[str, Any]]:
    # Fixed-size reads fail by themselves when the message is cut short
    # (struct.error, IndexError); variable-length ones are checked inline
    # (slices would silently come back short). No helper call per field:
    # this runs four times per Cascade round trip.
    end = len(mv)
    version, klen = _HEAD.unpack_from(mv, 0)
    if version != VERSION:
        raise ValueError(f"message version {version}, this build speaks {VERSION}")
    pos = 3 + klen
    if pos + 2 > end:
        raise ValueError(f"truncated at byte 3, need {klen + 2} more")
    kind = _name(bytes(mv[3:pos]))
    (nfields,) = _U16.unpack_from(mv, pos)
    pos += 2
    body: dict[str, Any] = {}
    for _ in range(nfields):
        nlen = mv[pos]
        stop = pos + 1 + nlen
        if stop >= end:
            raise ValueError(f"truncated at byte {pos}, need {nlen + 2} more")
        name = _name(bytes(mv[pos + 1 : stop]))
        tag = mv[stop]
        pos = stop + 1
        if tag == 6:
            dlen = mv[pos]
            stop = pos + 1 + dlen
            if stop >= end:
                raise ValueError(f"truncated at byte {pos}, need {dlen + 2} more")
            dtype, shape_of = _array_layout(bytes(mv[pos + 1 : stop + 1]))  # dtype name and ndim
            shape = shape_of.unpack_from(mv, stop + 1)
            pos = stop + 1 + shape_of.size
            nbytes = math.prod(shape) * dtype.itemsize  # exact for any shape (np.prod may overflow)
            if pos + nbytes > end:
                raise ValueError(f"truncated at byte {pos}, need {nbytes} more")
            arr = np.empty(shape, dtype=dtype)
            try:
                memoryview(arr).cast("B")[:] = mv[pos : pos + nbytes]
            except (TypeError, ValueError):  # dtypes without a buffer format (datetime64, ...)
                arr = np.frombuffer(mv[pos : pos + nbytes], dtype=dtype).reshape(shape).copy()
            body[name] = arr
            pos += nbytes
        elif tag == 0:
            body[name] = _I64.unpack_from(mv, pos)[0]
            pos += 8
        elif tag == 1:
            body[name] = _F64.unpack_from(mv, pos)[0]
            pos += 8
        elif tag == 2 or tag == 3:
            (ln,) = _U32.unpack_from(mv, pos)
            pos += 4
            if pos + ln > end:
                raise ValueError(f"truncated at byte {pos}, need {ln} more")
            raw = bytes(mv[pos : pos + ln])
            body[name] = raw.decode("utf-8") if tag == 2 else raw
            pos += ln
        elif tag == 4:
            body[name] = None
        elif tag == 5:
            body[name] = bool(mv[pos])
            pos += 1
        else:
            raise ValueError(f"unknown field tag {tag} for {name!r}")
    if pos != end:
        raise ValueError(f"{end - pos} trailing bytes")
    return kind, body


@functools.lru_cache(maxsize=256)
def _shape_struct(ndim: int) -> struct.Struct:
    return struct.Struct(f"<{ndim}Q")


@functools.lru_cache(maxsize=256)
def _array_layout(raw: bytes) -> tuple[np.dtype, struct.Struct]:
    """An array field's dtype and the struct of its shape, from the wire's dtype name and ndim byte."""
    return _dtype(raw[:-1]), _shape_struct(raw[-1])


@functools.lru_cache(maxsize=256)
def _dtype(raw: bytes) -> np.dtype:
    """A field's dtype from its wire name (cached: parsing it is most of a small message's cost)."""
    name = raw.decode("ascii")
    if not _DTYPE_NAME.fullmatch(name):  # np.dtype would also parse (and eval) comma strings
        raise ValueError(f"array dtype {name!r} is not a plain dtype name such as '<i4'")
    try:
        dtype = np.dtype(name)
    except Exception as exc:  # noqa: BLE001 - numpy raises several kinds for unknown names
        raise ValueError(f"array dtype {name!r}: {exc}") from None
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed")
    return dtype


@functools.lru_cache(maxsize=1024)
def _name(raw: bytes) -> str:
    return raw.decode("ascii")
