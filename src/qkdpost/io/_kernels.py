"""Numba kernels that decode time-tagger records into ``(t, ch)``.

Each decoder takes one block of raw records, a small ``int64`` state array
that carries what must survive from block to block (overflow sum, rollover
offset, running maximum of ``t``), a tolerance ``tol`` in ticks, and
caller-owned output buffers ``t_out`` (int64) and ``ch_out`` (uint8) whose
first ``start`` entries already hold sorted events (those held back from the
previous block) and which have room for one event per record after them.
It returns the new number of valid entries, or ``-1`` when a record is bad;
then ``state[S_ERR]`` holds an ``ERR_*`` code and ``state[S_ERR_REC]`` the
record's index within the block. Kernels never raise and never allocate.

Out-of-order events (time taggers reorder events slightly across channels)
are accepted while ``t >= max(t so far) - tol`` and inserted in place
(:func:`_insert`, a stable insertion step that moves an event back past at
most :data:`MAX_DISPLACEMENT` others), so the output is always sorted. An
event further back in time is ``ERR_BACKWARDS``, one further back in
position ``ERR_DISPLACED``. Events in order (``t >= max``) are appended
without looking at the buffer: every held event is ``<= max``.

Record layouts (all little endian) are documented with each decoder; the
sources are the vendors' own format descriptions, summarised in
``docs/io.md``.
"""

from __future__ import annotations

import numpy as np
from numba import boolean, float64, int64, uint8, uint16, uint32, uint64, types

from .._jit import kernel, register

register(__name__)

# state layout -------------------------------------------------------------
S_OFFSET = 0  # overflow sum (PTU) or rollover offset (qcrypto), in ticks
S_LAST = 1  # last raw counter value (qcrypto rollover tracking), -1 = none yet
S_MAX = 2  # running maximum of decoded t
S_ERR = 3  # error code (ERR_*)
S_ERR_REC = 4  # record index within the block where the error happened
S_ERR_VAL = 5  # offending value (time or channel)
S_COUNT_A = 6  # per-format counter: qcrypto flagged events dropped; PTU overflow records
S_COUNT_B = 7  # per-format counter: PTU markers seen
S_MOVED = 8  # events that arrived out of order and were moved into place
STATE_LEN = 9

#: Initial running maximum: far below any real time, but ``T_FLOOR - tol``
#: cannot overflow int64 for any ``tol`` below 2**61.
T_FLOOR = -(1 << 62)
MAX_TOL = 1 << 61
#: Largest overflow sum / rollover offset accepted; beyond it int64 time could wrap.
T_MAX = 1 << 62

ERR_NONE = 0
ERR_BACKWARDS = 1  # t < running max - tol
ERR_RECORD = 2  # record of an impossible kind (e.g. undefined channel code)
ERR_CHANNEL = 3  # channel number does not fit the uint8 model
ERR_RANGE = 4  # time outside the representable range (negative, or overflow sum beyond 2**62)
ERR_DISPLACED = 5  # an out-of-order event belongs more than MAX_DISPLACEMENT events back

# Each decoder spells out its own "append in order, else move into place"
# block instead of calling a shared helper: a measured helper (inlined, with
# the move count kept in ``state``) made the PTU T2 loop 9x slower.

#: An out-of-order event may be moved back past at most this many events.
#: Real taggers displace an event past a handful of others; the bound keeps
#: the insertion work linear (at most this many moves per event) on any input.
MAX_DISPLACEMENT = 1024

# PTU flavours (see decode_ptu_t2, decode_ptu_t3)
PTU_PICOHARP = 0
PTU_HYDRAHARP1 = 1
PTU_HYDRAHARP2 = 2  # also TimeHarp 260 N/P and Generic (MultiHarp, PicoHarp 330)

#: PicoHarp 300 T2: one overflow adds this many ticks (PicoQuant PT2 format).
PICOHARP_T2_WRAP = 210698240
#: HydraHarp v1 T2: one overflow record adds this many ticks.
HYDRAHARP1_T2_WRAP = 33552000
#: HydraHarp v2 / TimeHarp 260 / Generic T2: each counted overflow adds 2**25.
HYDRAHARP2_T2_WRAP = 1 << 25

#: PicoHarp 300 T3: one overflow adds 2**16 sync periods (16-bit nsync field).
PICOHARP_T3_WRAP = 1 << 16
#: HydraHarp / TimeHarp 260 / Generic T3: one overflow adds 2**10 sync periods (10-bit nsync field).
HYDRAHARP_T3_WRAP = 1 << 10

#: Channel code given to marker records: ``MARKER_BASE | marker_bits``.
MARKER_BASE = 0x80


def new_state() -> np.ndarray:
    """A fresh decoder state (no overflows, no rollover, no events yet)."""
    s = np.zeros(STATE_LEN, dtype=np.int64)
    s[S_LAST] = -1
    s[S_MAX] = T_FLOOR
    return s


@kernel(int64(int64[::1], uint8[::1], int64, int64, uint8), inline="always")
def _insert(t_out, ch_out, k, t, c):  # pragma: no cover - jit
    """Put event (t, c) into sorted ``t_out[:k]`` (stable: after equal times).

    Returns 0 if it went to the end, 1 if it was moved back, -1 if it would
    have to move back more than :data:`MAX_DISPLACEMENT` places (then
    nothing is changed).
    """
    if k == 0 or t_out[k - 1] <= t:
        t_out[k] = t
        ch_out[k] = c
        return 0
    j = k
    lim = max(0, k - MAX_DISPLACEMENT)
    while j > lim and t_out[j - 1] > t:
        j -= 1
    if j == lim and j > 0 and t_out[j - 1] > t:
        return -1
    for m in range(k, j, -1):
        t_out[m] = t_out[m - 1]
        ch_out[m] = ch_out[m - 1]
    t_out[j] = t
    ch_out[j] = c
    return 1


_QCRYPTO_SIG = int64(uint64[::1], boolean, int64, boolean, int64, int64[::1], int64[::1], uint8[::1], int64)


@kernel(_QCRYPTO_SIG)
def _qcrypto_careful(raw_in, swap, shift, keep_flagged, tol, state, t_out, ch_out, start):  # pragma: no cover - jit
    """Decode qcrypto / S-Fifteen raw 64-bit events, record by record.

    Each event is two 32-bit words, read here as one little-endian uint64:
    by default the first word is the low half; with ``swap`` the first is
    the high half (the legacy layout), so the halves are exchanged. Of the 64-bit value, the
    time counter is ``raw >> shift`` (``shift = 15``: 49 bits of 1/8 ns;
    ``shift = 10``: 54 bits of 1/256 ns), the detector pattern is
    ``raw & 0xF`` and bit 4 flags rollover/dummy events, which are dropped
    unless ``keep_flagged`` (then ``ch = raw & 0x1F``). The counter rolls
    over at ``2**(64 - shift)``; a jump back by more than half of that range
    is unwrapped by adding the range.
    """
    bits = 64 - shift
    span = np.int64(1) << bits
    half = span >> 1
    off = state[S_OFFSET]
    last = state[S_LAST]
    tmax = state[S_MAX]
    dropped = state[S_COUNT_A]
    moved = state[S_MOVED]
    sh = np.uint64(shift)
    mask = np.uint64(0x1F if keep_flagged else 0xF)
    k = start
    for i in range(raw_in.size):
        raw = raw_in[i]
        if swap:
            raw = (raw << np.uint64(32)) | (raw >> np.uint64(32))
        traw = np.int64(raw >> sh)
        t = traw + off
        if last >= 0:
            if traw < last - half:  # the counter rolled over
                off += span
                if off > T_MAX:
                    state[S_ERR] = ERR_RANGE
                    state[S_ERR_REC] = i
                    state[S_ERR_VAL] = off
                    return -1
                t = traw + off
                last = traw
            elif traw > last + half and off >= span:  # a straggler from before the rollover
                t = traw + off - span
            else:
                last = traw
        else:
            last = traw
        if not keep_flagged and (raw >> np.uint64(4)) & np.uint64(1):
            dropped += 1
            continue
        if t >= tmax:  # in order: every held event is <= tmax
            tmax = t
            t_out[k] = t
            ch_out[k] = np.uint8(raw & mask)
        else:
            if t < tmax - tol:
                state[S_ERR] = ERR_BACKWARDS
                state[S_ERR_REC] = i
                state[S_ERR_VAL] = t
                state[S_MAX] = tmax
                return -1
            if _insert(t_out, ch_out, k, t, np.uint8(raw & mask)) < 0:
                state[S_ERR] = ERR_DISPLACED
                state[S_ERR_REC] = i
                state[S_ERR_VAL] = t
                return -1
            moved += 1
        k += 1
    state[S_OFFSET] = off
    state[S_LAST] = last
    state[S_MAX] = tmax
    state[S_COUNT_A] = dropped
    state[S_MOVED] = moved
    return k


@kernel(_QCRYPTO_SIG)
def decode_qcrypto(raw_in, swap, shift, keep_flagged, tol, state, t_out, ch_out, start):  # pragma: no cover - jit
    """Decode qcrypto / S-Fifteen raw 64-bit events (see :func:`_qcrypto_careful`).

    Most blocks are plain: no flagged events, times non-decreasing, no
    rollover. They are decoded by a branch-free loop the compiler can
    vectorise, then verified; any other block is decoded again, record by
    record, by :func:`_qcrypto_careful`. Both give the same result.
    """
    n = raw_in.size
    if n == 0:
        return start
    sh = np.uint64(shift)
    mask = np.uint64(0x1F if keep_flagged else 0xF)
    flagbit = np.uint64(0 if keep_flagged else 0x10)
    off = state[S_OFFSET]
    half = (np.int64(1) << (64 - shift)) >> 1
    flags = np.uint64(0)
    drop = np.int64(0)  # largest step back between neighbours (0 if none)
    if swap:
        r0 = raw_in[0]
        prev = np.int64(((r0 << np.uint64(32)) | (r0 >> np.uint64(32))) >> sh)
        for i in range(n):
            r = raw_in[i]
            r = (r << np.uint64(32)) | (r >> np.uint64(32))
            tr = np.int64(r >> sh)
            t_out[start + i] = tr + off
            ch_out[start + i] = np.uint8(r & mask)
            flags |= r & flagbit
            drop = max(drop, prev - tr)
            prev = tr
    else:
        prev = np.int64(raw_in[0] >> sh)
        for i in range(n):
            r = raw_in[i]
            tr = np.int64(r >> sh)
            t_out[start + i] = tr + off
            ch_out[start + i] = np.uint8(r & mask)
            flags |= r & flagbit
            drop = max(drop, prev - tr)
            prev = tr
    first = t_out[start] - off
    last = state[S_LAST]
    plain = (
        flags == 0
        and drop == 0
        and t_out[start] >= state[S_MAX]
        and (last < 0 or (first >= last and first - last <= half))
        and t_out[start + n - 1] - t_out[start] <= half
    )
    if plain:
        state[S_LAST] = t_out[start + n - 1] - off
        state[S_MAX] = t_out[start + n - 1]
        return start + n
    return _qcrypto_careful(raw_in, swap, shift, keep_flagged, tol, state, t_out, ch_out, start)


@kernel(int64(uint32[::1], int64, boolean, int64, int64[::1], int64[::1], uint8[::1], int64))
def decode_ptu_t2(rec, flavour, keep_markers, tol, state, t_out, ch_out, start):  # pragma: no cover - jit
    """Decode PicoQuant T2 records (uint32 each).

    PicoHarp 300 (``PTU_PICOHARP``): bits 31..28 channel, 27..0 time.
    Channel 15 is special: marker bits (3..0) zero means overflow
    (+210698240 ticks), else a marker. Channels 0..4 are inputs (0 is the
    sync input); 5..14 are undefined (``ERR_RECORD``).

    HydraHarp / TimeHarp 260 / Generic: bit 31 special, bits 30..25
    channel, 24..0 time. Special with channel 63: overflow (v1 adds
    33552000 per record; v2 adds ``2**25`` times the count in the time
    field, a count of 0 meaning 1). Special with channel 0: sync. Special
    with channel 1..15: marker. Other special channels: ``ERR_RECORD``.

    Output channel codes follow PicoQuant's demo readers: sync is 0, the
    HydraHarp-type input ``c`` is ``c + 1``, PicoHarp inputs are as stored,
    markers are ``MARKER_BASE | bits`` (dropped unless ``keep_markers``).
    """
    ofl = state[S_OFFSET]
    tmax = state[S_MAX]
    n_ofl = state[S_COUNT_A]
    n_mark = state[S_COUNT_B]
    moved = state[S_MOVED]
    k = start
    for i in range(rec.size):
        r = np.int64(rec[i])
        if flavour == PTU_PICOHARP:
            chan = r >> 28
            tt = r & 0x0FFFFFFF
            if chan == 15:
                m = r & 0xF
                if m == 0:
                    ofl += PICOHARP_T2_WRAP
                    n_ofl += 1
                    if ofl > T_MAX:
                        state[S_ERR] = ERR_RANGE
                        state[S_ERR_REC] = i
                        state[S_ERR_VAL] = ofl
                        return -1
                    continue
                n_mark += 1
                if not keep_markers:
                    continue
                c = MARKER_BASE | m
            elif chan <= 4:
                c = chan
            else:
                state[S_ERR] = ERR_RECORD
                state[S_ERR_REC] = i
                state[S_ERR_VAL] = chan
                return -1
        else:
            chan = (r >> 25) & 0x3F
            tt = r & 0x1FFFFFF
            if r >> 31:
                if chan == 0x3F:
                    if flavour == PTU_HYDRAHARP1:
                        ofl += HYDRAHARP1_T2_WRAP
                    elif tt == 0:
                        ofl += HYDRAHARP2_T2_WRAP
                    else:
                        ofl += HYDRAHARP2_T2_WRAP * tt
                    n_ofl += 1
                    if ofl > T_MAX:
                        state[S_ERR] = ERR_RANGE
                        state[S_ERR_REC] = i
                        state[S_ERR_VAL] = ofl
                        return -1
                    continue
                if chan == 0:
                    c = 0
                elif chan <= 15:
                    n_mark += 1
                    if not keep_markers:
                        continue
                    c = MARKER_BASE | chan
                else:
                    state[S_ERR] = ERR_RECORD
                    state[S_ERR_REC] = i
                    state[S_ERR_VAL] = chan
                    return -1
            else:
                c = chan + 1
        t = ofl + tt
        if t >= tmax:  # in order: every held event is <= tmax
            tmax = t
            t_out[k] = t
            ch_out[k] = np.uint8(c)
        else:
            if t < tmax - tol:
                state[S_ERR] = ERR_BACKWARDS
                state[S_ERR_REC] = i
                state[S_ERR_VAL] = t
                state[S_MAX] = tmax
                return -1
            if _insert(t_out, ch_out, k, t, np.uint8(c)) < 0:
                state[S_ERR] = ERR_DISPLACED
                state[S_ERR_REC] = i
                state[S_ERR_VAL] = t
                return -1
            moved += 1
        k += 1
    state[S_OFFSET] = ofl
    state[S_MAX] = tmax
    state[S_COUNT_A] = n_ofl
    state[S_COUNT_B] = n_mark
    state[S_MOVED] = moved
    return k


@kernel(int64(uint32[::1], int64, boolean, int64, int64, float64, int64[::1], int64[::1], uint8[::1], int64))
def decode_ptu_t3(rec, flavour, keep_markers, tol, period_int, period_frac, state, t_out, ch_out,
                  start):  # pragma: no cover - jit
    """Decode PicoQuant T3 records (uint32 each) into absolute times.

    PicoHarp 300 (``PTU_PICOHARP``): bits 31..28 channel (inputs 1..4),
    27..16 dtime, 15..0 nsync; channel 15 is an overflow (+2**16 sync
    periods) when dtime bits 3..0 are 0, else a marker (those bits). HydraHarp / TimeHarp
    260 / Generic: bit 31 special, 30..25 channel, 24..10 dtime, 9..0 nsync;
    special channel 63 is an overflow (v1: +2**10 periods; v2: the count in
    the nsync field, 0 meaning 1, times 2**10), special 1..15 a marker.

    A photon's time in ticks of the dtime resolution is
    ``floor(N * P) + dtime`` with ``N`` the sync count including overflows
    and ``P = period_int + period_frac`` the sync period in ticks; the
    integer part is exact and the fractional product stays below 2**53 for
    any capture, so no rounding builds up over hours. The ordering block is
    the same as in :func:`decode_ptu_t2` (see the note above it).
    """
    ofl = state[S_OFFSET]  # sync periods from overflow records
    tmax = state[S_MAX]
    n_ofl = state[S_COUNT_A]
    n_mark = state[S_COUNT_B]
    moved = state[S_MOVED]
    limit = T_MAX // (period_int + 1)  # sync counts whose time would not fit int64 ticks
    k = start
    for i in range(rec.size):
        r = np.int64(rec[i])
        if flavour == PTU_PICOHARP:
            chan = r >> 28
            dt = (r >> 16) & 0xFFF
            ns = r & 0xFFFF
            if chan == 15:
                if dt & 0xF == 0:  # no marker bit: an overflow
                    ofl += PICOHARP_T3_WRAP
                    n_ofl += 1
                    continue
                n_mark += 1
                if not keep_markers:
                    continue
                c = MARKER_BASE | (dt & 0xF)
                dt = 0  # a marker's time is its sync period (the dtime field holds the marker bits)
            elif 1 <= chan <= 4:
                c = chan
            else:
                state[S_ERR] = ERR_RECORD
                state[S_ERR_REC] = i
                state[S_ERR_VAL] = chan
                return -1
        else:
            chan = (r >> 25) & 0x3F
            dt = (r >> 10) & 0x7FFF
            ns = r & 0x3FF
            if r >> 31:
                if chan == 0x3F:
                    if flavour == PTU_HYDRAHARP1 or ns == 0:
                        ofl += HYDRAHARP_T3_WRAP
                    else:
                        ofl += HYDRAHARP_T3_WRAP * ns
                    n_ofl += 1
                    continue
                if 1 <= chan <= 15:
                    n_mark += 1
                    if not keep_markers:
                        continue
                    c = MARKER_BASE | chan
                    dt = 0
                else:
                    state[S_ERR] = ERR_RECORD
                    state[S_ERR_REC] = i
                    state[S_ERR_VAL] = chan
                    return -1
            else:
                c = chan + 1
        nsync = ofl + ns
        if nsync > limit:
            state[S_ERR] = ERR_RANGE
            state[S_ERR_REC] = i
            state[S_ERR_VAL] = nsync
            return -1
        t = nsync * period_int + np.int64(np.floor(nsync * period_frac)) + dt
        if t >= tmax:  # in order: every held event is <= tmax
            tmax = t
            t_out[k] = t
            ch_out[k] = np.uint8(c)
        else:
            if t < tmax - tol:
                state[S_ERR] = ERR_BACKWARDS
                state[S_ERR_REC] = i
                state[S_ERR_VAL] = t
                state[S_MAX] = tmax
                return -1
            if _insert(t_out, ch_out, k, t, np.uint8(c)) < 0:
                state[S_ERR] = ERR_DISPLACED
                state[S_ERR_REC] = i
                state[S_ERR_VAL] = t
                return -1
            moved += 1
        k += 1
    state[S_OFFSET] = ofl
    state[S_MAX] = tmax
    state[S_COUNT_A] = n_ofl
    state[S_COUNT_B] = n_mark
    state[S_MOVED] = moved
    return k


@kernel(int64(types.Array(int64, 1, "A", readonly=True), types.Array(uint16, 1, "A", readonly=True),
              int64, int64[::1], int64[::1], uint8[::1], int64))
def decode_qutag(t_in, ch_in, tol, state, t_out, ch_out, start):  # pragma: no cover - jit
    """Decode qutools quTAG binary records (int64 time, uint16 channel).

    ``t_in`` and ``ch_in`` are strided views of the 10-byte records. A
    channel above 255 does not fit the uint8 model (``ERR_CHANNEL``); a
    negative time stamp cannot come from the device (``ERR_RANGE``).
    """
    tmax = state[S_MAX]
    moved = state[S_MOVED]
    k = start
    for i in range(t_in.size):
        c = ch_in[i]
        if c > 255:
            state[S_ERR] = ERR_CHANNEL
            state[S_ERR_REC] = i
            state[S_ERR_VAL] = c
            return -1
        t = t_in[i]
        if t < 0:
            state[S_ERR] = ERR_RANGE
            state[S_ERR_REC] = i
            state[S_ERR_VAL] = t
            return -1
        if t >= tmax:  # in order: every held event is <= tmax
            tmax = t
            t_out[k] = t
            ch_out[k] = np.uint8(c)
        else:
            if t < tmax - tol:
                state[S_ERR] = ERR_BACKWARDS
                state[S_ERR_REC] = i
                state[S_ERR_VAL] = t
                state[S_MAX] = tmax
                return -1
            if _insert(t_out, ch_out, k, t, np.uint8(c)) < 0:
                state[S_ERR] = ERR_DISPLACED
                state[S_ERR_REC] = i
                state[S_ERR_VAL] = t
                return -1
            moved += 1
        k += 1
    state[S_MAX] = tmax
    state[S_MOVED] = moved
    return k


def _warmup() -> None:
    """Run each kernel once on a tiny input (compiles or loads the cache)."""
    t = np.zeros(4, np.int64)
    c = np.zeros(4, np.uint8)
    decode_qcrypto(np.zeros(2, np.uint64), False, 15, False, 0, new_state(), t, c, 0)
    decode_ptu_t2(np.zeros(2, np.uint32), PTU_HYDRAHARP2, True, 0, new_state(), t, c, 0)
    decode_ptu_t3(np.zeros(2, np.uint32), PTU_HYDRAHARP2, True, 0, 3125, 0.5, new_state(), t, c, 0)
    rec = np.zeros(2, dtype=np.dtype([("t", "<i8"), ("c", "<u2")]))
    decode_qutag(rec["t"], rec["c"], 0, new_state(), t, c, 0)
