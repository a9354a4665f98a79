"""Slow, obviously-correct encoders and decoders for the time-tagger formats.

Encoders build files record by record with ``struct`` from a list of events,
following the vendors' format descriptions (see docs/io.md); decoders are
plain Python loops over ``struct.unpack``. The kernels in
``qkdpost.io._kernels`` are compared against these, and the PTU files are
additionally read by the independent ``ptufile`` package.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

class BadRecord(ValueError):
    """A record that must be rejected; ``index`` is its position, ``events`` what came
    before it and ``what`` the reason ("record", "range" or "channel")."""

    def __init__(self, index, events, what="record"):
        super().__init__(f"record {index}: {what}")
        self.index = index
        self.events = events
        self.what = what


# --------------------------------------------------------------------------- qcrypto

QCRYPTO_SHIFT = {"49bit": 15, "54bit": 10}


def encode_qcrypto(t, pattern, *, variant="49bit", word_swap=False, flag=None, fine=None):
    """Bytes of qcrypto raw events: value = t << shift | fine | flag << 4 | pattern.

    ``fine`` fills the bits between the flag and the time (5..shift-1), which a
    reader must ignore; ``flag`` sets bit 4.
    """
    shift = QCRYPTO_SHIFT[variant]
    out = bytearray()
    for i in range(len(t)):
        raw = (int(t[i]) << shift) | (int(pattern[i]) & 0xF)
        if flag is not None and flag[i]:
            raw |= 1 << 4
        if fine is not None:
            raw |= (int(fine[i]) << 5) & ((1 << shift) - 1) & ~0x1F
        hi, lo = raw >> 32, raw & 0xFFFFFFFF
        out += struct.pack("<II", hi, lo) if word_swap else struct.pack("<II", lo, hi)
    return bytes(out)


def decode_qcrypto(data, *, variant="49bit", word_swap=False, keep_flagged=False):
    """Events (t, ch, record index) in file order; rollover unwrapped naively."""
    shift = QCRYPTO_SHIFT[variant]
    span = 1 << (64 - shift)
    events = []
    wraps = 0
    prev = None
    for i in range(len(data) // 8):
        a, b = struct.unpack_from("<II", data, 8 * i)
        hi, lo = (a, b) if word_swap else (b, a)
        raw = hi << 32 | lo
        traw = raw >> shift
        epoch = wraps
        if prev is not None:
            if traw < prev - span // 2:
                wraps += 1
                if wraps * span > 1 << 62:
                    raise BadRecord(i, events, "range")
                epoch = wraps
                prev = traw
            elif traw > prev + span // 2 and wraps > 0:
                epoch = wraps - 1
            else:
                prev = traw
        else:
            prev = traw
        if (lo >> 4) & 1 and not keep_flagged:
            continue
        events.append((traw + epoch * span, lo & (0x1F if keep_flagged else 0xF), i))
    return events


# --------------------------------------------------------------------------- PTU

PTU_TYPES = {
    "PicoHarpT2": 0x00010203,
    "HydraHarpT2": 0x00010204,
    "HydraHarp2T2": 0x01010204,
    "TimeHarp260NT2": 0x00010205,
    "TimeHarp260PT2": 0x00010206,
    "GenericT2": 0x00010207,
    "PicoHarpT3": 0x00010303,
    "HydraHarpT3": 0x00010304,
    "HydraHarp2T3": 0x01010304,
    "TimeHarp260NT3": 0x00010305,
    "TimeHarp260PT3": 0x00010306,
    "GenericT3": 0x00010307,
}
TY_EMPTY8, TY_BOOL8, TY_INT8, TY_FLOAT8, TY_TDATETIME = 0xFFFF0008, 0x00000008, 0x10000008, 0x20000008, 0x21000008
TY_ANSI, TY_WIDE, TY_BLOB, TY_F8ARRAY = 0x4001FFFF, 0x4002FFFF, 0xFFFFFFFF, 0x2001FFFF

PH_WRAP = 210698240
HH1_WRAP = 33552000
HH2_WRAP = 1 << 25


def _tag(name, typ, value=0, idx=-1, data=b""):
    ident = name.encode("ascii").ljust(32, b"\0")
    if typ in (TY_FLOAT8, TY_TDATETIME):
        head = struct.pack("<32siId", ident, idx, typ, float(value))
    else:
        head = struct.pack("<32siIq", ident, idx, typ, int(value))
    return head + data


def ptu_header(rectype, n_records, resolution, *, extra_tags=(), measurement_mode=2, global_resolution=None):
    """A PTU header with the tags ptufile needs, ending in Header_End.

    ``global_resolution`` (T3: the sync period) defaults to ``resolution``.
    """
    glob = resolution if global_resolution is None else global_resolution
    comment = "qkdpost test file".encode("windows-1252").ljust(24, b"\0")
    tags = [
        _tag("File_GUID", TY_ANSI, 40, data=b"{00000000-0000-0000-0000-000000000000}\0\0"),
        _tag("File_Comment", TY_ANSI, len(comment), data=comment),
        _tag("File_CreatingTime", TY_TDATETIME, 45000.5),
        _tag("Measurement_Mode", TY_INT8, measurement_mode),
        _tag("Measurement_SubMode", TY_INT8, 0),
        _tag("TTResult_SyncRate", TY_INT8, 10_000_000),
        _tag("MeasDesc_Resolution", TY_FLOAT8, resolution),
        _tag("MeasDesc_GlobalResolution", TY_FLOAT8, glob),
        _tag("TTResultFormat_TTTRRecType", TY_INT8, rectype),
        _tag("TTResultFormat_BitsPerRecord", TY_INT8, 32),
        _tag("TTResult_NumberOfRecords", TY_INT8, n_records),
        *extra_tags,
        _tag("Header_End", TY_EMPTY8, 0),
    ]
    return b"PQTTTR\0\0" + b"1.0.00\0\0" + b"".join(tags)


def encode_ptu_t2(events, flavour):
    """uint32 T2 records for ``events`` = list of (kind, t, value) in file order.

    kind "photon": value = input channel as stored (PicoHarp: 0..4;
    HydraHarp-type: 0..63); kind "sync" (HydraHarp-type only); kind "marker":
    value = marker bits 1..15. Overflow records are inserted as needed, one
    per wrap (PicoHarp, HydraHarp v1) or with a count (v2); ``t`` must be
    non-decreasing apart from markers that come late by less than a wrap.
    """
    recs = []
    base = 0
    for kind, t, value in events:
        if flavour == "PicoHarpT2":
            while t - base >= PH_WRAP:
                recs.append(0xF << 28)
                base += PH_WRAP
            tt = t - base
            if kind == "marker":
                recs.append((0xF << 28) | (tt & 0x0FFFFFF0) | value)
            else:
                recs.append((value << 28) | tt)
        else:
            wrap = HH1_WRAP if flavour == "HydraHarpT2" else HH2_WRAP
            if flavour == "HydraHarpT2":
                while t - base >= wrap:
                    recs.append((1 << 31) | (0x3F << 25) | 1)
                    base += wrap
            else:
                n = (t - base) // wrap
                while n > 0:
                    c = min(n, (1 << 25) - 1)
                    recs.append((1 << 31) | (0x3F << 25) | c)
                    base += c * wrap
                    n -= c
            tt = t - base
            if kind == "photon":
                recs.append((value << 25) | tt)
            elif kind == "sync":
                recs.append((1 << 31) | tt)
            else:
                recs.append((1 << 31) | (value << 25) | tt)
    return np.array(recs, dtype="<u4")


def write_ptu(path, events, flavour, resolution=1e-12, *, extra_tags=(), records=None, sync_period=None):
    """Write a complete PTU T2 or T3 file (T3: ``sync_period`` in seconds); returns the records written."""
    t3 = flavour.endswith("T3")
    enc = encode_ptu_t3 if t3 else encode_ptu_t2
    recs = enc(events, flavour) if records is None else np.asarray(records, "<u4")
    mode = 3 if t3 else 2
    Path(path).write_bytes(ptu_header(PTU_TYPES[flavour], len(recs), resolution, extra_tags=extra_tags,
                                      measurement_mode=mode, global_resolution=sync_period) + recs.tobytes())
    return recs


def encode_ptu_t3(events, flavour):
    """uint32 T3 records for ``events`` = list of (kind, nsync, dtime, value) in file order.

    kind "photon": value = input (PicoHarp 1..4, HydraHarp-type 0..63); kind
    "marker": value = marker bits 1..15 (its dtime is ignored). Overflow
    records are inserted as needed (one per wrap for PicoHarp and HydraHarp
    v1, with a count for the others); nsync must not decrease.
    """
    recs = []
    base = 0
    pico = flavour == "PicoHarpT3"
    wrap = 1 << 16 if pico else 1 << 10
    for kind, nsync, dtime, value in events:
        if pico or flavour == "HydraHarpT3":
            while nsync - base >= wrap:
                recs.append((0xF << 28) if pico else ((1 << 31) | (0x3F << 25) | 1))
                base += wrap
        else:
            n = (nsync - base) // wrap
            while n > 0:
                c = min(n, (1 << 10) - 1)
                recs.append((1 << 31) | (0x3F << 25) | c)
                base += c * wrap
                n -= c
        ns = nsync - base
        if pico:
            if kind == "marker":
                recs.append((0xF << 28) | (value << 16) | ns)
            else:
                recs.append((value << 28) | (dtime << 16) | ns)
        elif kind == "marker":
            recs.append((1 << 31) | (value << 25) | ns)
        else:
            recs.append((value << 25) | (dtime << 10) | ns)
    return np.array(recs, dtype="<u4")


def decode_ptu_t3(recs, flavour, period, keep_markers=True):
    """Events (t, ch, record index): t = floor(nsync * period) + dtime with period = (int, frac) in ticks.

    Plain loop; BadRecord on an undefined record.
    """
    p_int, p_frac = period
    out = []
    ofl = 0
    pico = flavour == "PicoHarpT3"
    limit = (1 << 62) // (p_int + 1)  # sync counts whose time would not fit: an error, not a wrapped time
    for i, r in enumerate(int(x) for x in recs):
        if pico:
            chan, dt, ns = r >> 28, (r >> 16) & 0xFFF, r & 0xFFFF
            if chan == 15:
                if dt & 0xF == 0:
                    ofl += 1 << 16
                    continue
                if keep_markers:
                    if ofl + ns > limit:
                        raise BadRecord(i, out, "range")
                    out.append(((ofl + ns) * p_int + math.floor((ofl + ns) * p_frac), 0x80 | (dt & 0xF), i))
                continue
            if not 1 <= chan <= 4:
                raise BadRecord(i, out)
            c = chan
        else:
            special, chan, dt, ns = r >> 31, (r >> 25) & 0x3F, (r >> 10) & 0x7FFF, r & 0x3FF
            if special and chan == 0x3F:
                ofl += (1 << 10) * (1 if flavour == "HydraHarpT3" else (ns or 1))
                continue
            if special and 1 <= chan <= 15:
                if keep_markers:
                    if ofl + ns > limit:
                        raise BadRecord(i, out, "range")
                    out.append(((ofl + ns) * p_int + math.floor((ofl + ns) * p_frac), 0x80 | chan, i))
                continue
            if special:
                raise BadRecord(i, out)
            c = chan + 1
        n = ofl + ns
        if n > limit:
            raise BadRecord(i, out, "range")
        out.append((n * p_int + math.floor(n * p_frac) + dt, c, i))
    return out




def decode_ptu_t2(recs, flavour, keep_markers=True):
    """Events (t, ch, record index) with our channel codes, plain loop; BadRecord on an undefined record."""
    out = []
    ofl = 0
    for i, r in enumerate(int(x) for x in recs):
        if flavour == "PicoHarpT2":
            chan, tt = r >> 28, r & 0x0FFFFFFF
            if chan == 15:
                if r & 0xF == 0:
                    ofl += PH_WRAP
                    if ofl > 1 << 62:
                        raise BadRecord(i, out, "range")
                elif keep_markers:
                    out.append((ofl + tt, 0x80 | (r & 0xF), i))
                continue
            if chan > 4:
                raise BadRecord(i, out)
            out.append((ofl + tt, chan, i))
        else:
            special, chan, tt = r >> 31, (r >> 25) & 0x3F, r & 0x1FFFFFF
            if special and chan == 0x3F:
                if flavour == "HydraHarpT2":
                    ofl += HH1_WRAP
                else:
                    ofl += HH2_WRAP * (tt or 1)
                if ofl > 1 << 62:
                    raise BadRecord(i, out, "range")
            elif special and chan == 0:
                out.append((ofl + tt, 0, i))
            elif special and chan <= 15:
                if keep_markers:
                    out.append((ofl + tt, 0x80 | chan, i))
            elif special:
                raise BadRecord(i, out)
            else:
                out.append((ofl + tt, chan + 1, i))
    return out


# --------------------------------------------------------------------------- quTAG

def encode_qutag(t, ch, header=None):
    head = header if header is not None else b"qkdpost quTAG test".ljust(40, b"\0")
    return head + b"".join(struct.pack("<qH", int(a), int(b)) for a, b in zip(t, ch))


def decode_qutag(data):
    """Events (t, ch, record index); BadRecord at the first channel > 255 or negative time."""
    out = []
    for i in range((len(data) - 40) // 10):
        t, ch = struct.unpack_from("<qH", data, 40 + 10 * i)
        if ch > 255:
            raise BadRecord(i, out, "channel")
        if t < 0:
            raise BadRecord(i, out, "range")
        out.append((t, ch, i))
    return out


# --------------------------------------------------------------------------- ordering

def order_events(events, tol):
    """Apply the reordering rule: error index if an event is > tol before the max, else stable sort.

    Returns (t array, ch array, None) or (None, None, record index of the first bad event).
    """
    tmax = None
    for t, _, i in events:
        if tmax is not None and t < tmax - tol:
            return None, None, i
        tmax = t if tmax is None else max(tmax, t)
    s = sorted(events, key=lambda e: e[0])  # sorted() is stable
    return (np.array([e[0] for e in s], dtype=np.int64), np.array([e[1] for e in s], dtype=np.uint8), None)
