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

import math
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


def encode(kind: str, body: Mapping[str, Any]) -> bytes:
    """Serialise one message to bytes."""
    out = bytearray()
    k = kind.encode("ascii")
    out += _U8.pack(VERSION) + _U16.pack(len(k)) + k + _U16.pack(len(body))
    for name, value in body.items():
        nb = name.encode("ascii")
        out += _U8.pack(len(nb)) + nb
        if isinstance(value, np.ndarray):
            arr = np.ascontiguousarray(value)
            ds = arr.dtype.str.encode("ascii")
            out += _U8.pack(6) + _U8.pack(len(ds)) + ds + _U8.pack(arr.ndim)
            for dim in arr.shape:
                out += _U64.pack(dim)
            try:
                out += memoryview(arr).cast("B") if arr.size else b""  # no intermediate bytes copy
            except (TypeError, ValueError):  # dtypes without a buffer format (datetime64, ...)
                out += arr.tobytes()
        elif isinstance(value, (bool, np.bool_)):
            out += _U8.pack(5) + _U8.pack(int(value))
        elif isinstance(value, (int, np.integer)):
            out += _U8.pack(0) + _I64.pack(int(value))
        elif isinstance(value, (float, np.floating)):
            out += _U8.pack(1) + _F64.pack(float(value))
        elif isinstance(value, str):
            sb = value.encode("utf-8")
            out += _U8.pack(2) + _U32.pack(len(sb)) + sb
        elif isinstance(value, (bytes, bytearray, memoryview)):
            bb = bytes(value)
            out += _U8.pack(3) + _U32.pack(len(bb)) + bb
        elif value is None:
            out += _U8.pack(4)
        else:
            raise TypeError(f"message field {name!r}: cannot encode {type(value).__name__}")
    return bytes(out)


def decode(data: bytes) -> tuple[str, dict[str, Any]]:
    """Parse bytes made by :func:`encode`; raise ProtocolError if malformed."""
    try:
        return _decode(memoryview(data))
    except (struct.error, ValueError, UnicodeDecodeError, IndexError) as exc:
        raise ProtocolError(f"malformed message ({len(data)} bytes): {exc}") from None


def _decode(mv: memoryview) -> tuple[str, dict[str, Any]]:
    pos = 0

    def take(n: int) -> memoryview:
        nonlocal pos
        if pos + n > len(mv):
            raise ValueError(f"truncated at byte {pos}, need {n} more")
        chunk = mv[pos : pos + n]
        pos += n
        return chunk

    (version,) = _U8.unpack(take(1))
    if version != VERSION:
        raise ValueError(f"message version {version}, this build speaks {VERSION}")
    (klen,) = _U16.unpack(take(2))
    kind = bytes(take(klen)).decode("ascii")
    (nfields,) = _U16.unpack(take(2))
    body: dict[str, Any] = {}
    for _ in range(nfields):
        (nlen,) = _U8.unpack(take(1))
        name = bytes(take(nlen)).decode("ascii")
        (tag,) = _U8.unpack(take(1))
        if tag == 0:
            body[name] = _I64.unpack(take(8))[0]
        elif tag == 1:
            body[name] = _F64.unpack(take(8))[0]
        elif tag == 2:
            (ln,) = _U32.unpack(take(4))
            body[name] = bytes(take(ln)).decode("utf-8")
        elif tag == 3:
            (ln,) = _U32.unpack(take(4))
            body[name] = bytes(take(ln))
        elif tag == 4:
            body[name] = None
        elif tag == 5:
            body[name] = bool(_U8.unpack(take(1))[0])
        elif tag == 6:
            (dlen,) = _U8.unpack(take(1))
            dtype = np.dtype(bytes(take(dlen)).decode("ascii"))
            if dtype.hasobject:
                raise ValueError("object arrays are not allowed")
            (ndim,) = _U8.unpack(take(1))
            shape = tuple(_U64.unpack(take(8))[0] for _ in range(ndim))
            count = math.prod(shape)  # exact for any shape; np.prod cost ~3 % of a Cascade run
            raw = take(count * dtype.itemsize)
            body[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        else:
            raise ValueError(f"unknown field tag {tag} for {name!r}")
    if pos != len(mv):
        raise ValueError(f"{len(mv) - pos} trailing bytes")
    return kind, body
