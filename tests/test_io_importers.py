"""Importers (qcrypto raw, PicoQuant PTU T2, quTAG binary) against hand-built
records, the plain-loop oracles in tests/oracles/io.py and, for PTU, the
independent ``ptufile`` reader."""

import struct

import numpy as np
import ptufile
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from oracles import io as O
from qkdpost.errors import ConfigError, FileFormatError
from qkdpost.io import open_stream, read_ptu, read_ptu_header, read_qcrypto, read_qutag

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def collect(result):
    info, it = result
    chunks = list(it)
    for c in chunks:
        assert c.t.dtype == np.int64 and c.ch.dtype == np.uint8 and len(c.t) == len(c.ch)
    if not chunks:
        return info, np.zeros(0, np.int64), np.zeros(0, np.uint8), chunks
    return info, np.concatenate([c.t for c in chunks]), np.concatenate([c.ch for c in chunks]), chunks


def jittered_times(rng, n, step, jitter):
    """Increasing times with a bounded local shuffle (what real taggers emit)."""
    t = np.cumsum(rng.integers(0, step, n)).astype(np.int64) + 1000
    if jitter:
        t = t + rng.integers(-jitter, jitter + 1, n)
        t = np.maximum(t, 0)
    return t


# --------------------------------------------------------------------------- qcrypto

def test_qcrypto_known_answer(tmp_path):
    # Hand-built from the layout (t = raw >> 15, pattern = raw & 0xF, flag = bit 4):
    #   raw 0x0000000000018001 -> t 3,  pattern 1     (3 << 15 = 0x18000)
    #   raw 0x0000000100000004 -> t 2**32 >> 15 = 131072, pattern 4
    #   raw 0x0000000100008018 -> t 131073, flagged (bit 4) with pattern 8: dropped
    #   raw 0x0000000100010008 -> t 131074, pattern 8 (bits 5..14 are sub-tick, ignored)
    words = [0x00018001, 0x00000000, 0x00000004, 0x00000001, 0x00008018, 0x00000001, 0x000103E8, 0x00000001]
    p = tmp_path / "a.dat"
    p.write_bytes(struct.pack("<8I", *words))
    info, t, ch, _ = collect(read_qcrypto(p))
    assert info.tick_s == 125e-12
    assert t.tolist() == [3, 131072, 131074] and ch.tolist() == [1, 4, 8]
    # legacy word order: the same events with each pair of words swapped
    q = tmp_path / "b.dat"
    q.write_bytes(struct.pack("<8I", *[words[i ^ 1] for i in range(8)]))
    assert collect(read_qcrypto(q, word_swap=True))[1].tolist() == [3, 131072, 131074]
    # 54-bit variant: t = raw >> 10 in 1/256 ns; keep the flagged event as 16 | 8
    info, t, ch, _ = collect(read_qcrypto(p, variant="54bit", keep_flagged=True))
    assert info.tick_s == pytest.approx(3.90625e-12)
    assert t.tolist() == [0x18001 >> 10, 1 << 22, (0x100008018 >> 10), 0x1000103E8 >> 10]
    assert ch.tolist() == [1, 4, 24, 8]


@FAST
@given(n=st.integers(0, 400), variant=st.sampled_from(["49bit", "54bit"]), swap=st.booleans(),
       keep=st.booleans(), chunk=st.integers(1, 97), jitter=st.sampled_from([0, 3, 40]),
       seed=st.integers(0, 2**31))
def test_qcrypto_matches_oracle(tmp_path, n, variant, swap, keep, chunk, jitter, seed):
    rng = np.random.default_rng(seed)
    t = jittered_times(rng, n, 50, jitter)
    pat = rng.integers(0, 16, n)
    flag = rng.random(n) < 0.1
    data = O.encode_qcrypto(t, pat, variant=variant, word_swap=swap, flag=flag, fine=rng.integers(0, 1 << 10, n))
    p = tmp_path / "q.dat"
    p.write_bytes(data)
    tick = 125e-12 if variant == "49bit" else 1e-9 / 256
    tol = 20
    kw = dict(variant=variant, word_swap=swap, keep_flagged=keep, chunk_events=chunk, reorder_window_s=tol * tick)
    want_t, want_ch, bad = O.order_events(O.decode_qcrypto(data, variant=variant, word_swap=swap, keep_flagged=keep), tol)
    if n == 0:
        with pytest.raises(FileFormatError, match="empty file"):
            read_qcrypto(p, **kw)
        return
    if bad is not None:
        with pytest.raises(FileFormatError, match=f"at byte {8 * bad}: record {bad}: time"):
            collect(read_qcrypto(p, **kw))
        return
    _, got_t, got_ch, chunks = collect(read_qcrypto(p, **kw))
    np.testing.assert_array_equal(got_t, want_t)
    np.testing.assert_array_equal(got_ch, want_ch)
    assert all(len(c.t) <= chunk for c in chunks)


def test_qcrypto_counter_rollover_is_unwrapped(tmp_path):
    span = 1 << 49
    t = np.array([span - 30, span - 10, span - 2, span + 5, span + 3, span + 40, span + 45], dtype=np.int64)
    stored = t % span  # what the 49-bit counter holds
    data = O.encode_qcrypto(stored, np.full(len(t), 1))
    p = tmp_path / "r.dat"
    p.write_bytes(data)
    _, got, _, _ = collect(read_qcrypto(p, reorder_window_s=1e-9, chunk_events=2))
    # stored 5 and 3 come after the wrap; 3 is re-ordered (within 8 ticks)
    assert got.tolist() == [span - 30, span - 10, span - 2, span + 3, span + 5, span + 40, span + 45]
    want, _, _ = O.order_events(O.decode_qcrypto(data), 8)
    assert got.tolist() == want.tolist()


def test_qcrypto_backwards_beyond_tolerance(tmp_path):
    t = np.array([100, 200, 300, 100_000, 100_200, 90_000, 100_300])
    p = tmp_path / "b.dat"
    p.write_bytes(O.encode_qcrypto(t, np.ones(7, int)))
    info, it = read_qcrypto(p, reorder_window_s=1e-6, chunk_events=3)  # 8000 ticks of tolerance
    with pytest.raises(FileFormatError, match=r"b\.dat at byte 40: record 5: time 90000 ticks .*8000 ticks.*latest time 100200"):
        list(it)
    # within tolerance it is put in order
    _, got, _, _ = collect(read_qcrypto(p, reorder_window_s=2e-6, chunk_events=3))
    assert got.tolist() == sorted(t.tolist())


def test_qcrypto_truncated_and_bad_options(tmp_path):
    p = tmp_path / "t.dat"
    p.write_bytes(O.encode_qcrypto([1, 2, 3], [1, 2, 4]) + b"\x01\x02\x03")
    with pytest.raises(FileFormatError, match=r"at byte 24: truncated qcrypto raw file: 3 trailing byte"):
        read_qcrypto(p)
    with pytest.raises(ConfigError, match="variant"):
        read_qcrypto(p, variant="64bit")
    with pytest.raises(ConfigError, match="reorder_window_s"):
        read_qcrypto(p, reorder_window_s=-1)
    with pytest.raises(FileFormatError, match="no such file"):
        read_qcrypto(tmp_path / "missing.dat")


# --------------------------------------------------------------------------- PTU

PTU_FLAVOURS = ["PicoHarpT2", "HydraHarpT2", "HydraHarp2T2", "TimeHarp260NT2", "TimeHarp260PT2", "GenericT2"]


def ptu_events(rng, flavour, n, jitter_markers=0):
    t = np.cumsum(rng.integers(0, 3_000_000, n)).astype(np.int64)
    ev = []
    for x in t:
        k = rng.integers(0, 10)
        if flavour == "PicoHarpT2":
            ev.append(("marker", int(x), int(rng.integers(1, 16))) if k == 0 else ("photon", int(x), int(rng.integers(0, 5))))
        elif k == 0:
            ev.append(("marker", max(0, int(x) - int(rng.integers(0, jitter_markers + 1))), int(rng.integers(1, 16))))
        elif k == 1:
            ev.append(("sync", int(x), 0))
        else:
            ev.append(("photon", int(x), int(rng.integers(0, 64))))
    return ev


def _ptufile_expected(path):
    """ptufile's decoding mapped to our channel codes (records with no event dropped)."""
    with ptufile.PtuFile(path) as f:
        d = f.decode_records()
    keep = (d["channel"] >= 0) | (d["marker"] > 0)
    d = d[keep]
    return d["time"].astype(np.int64), d["channel"].astype(np.int64), d["marker"].astype(np.int64)


@pytest.mark.parametrize("flavour", PTU_FLAVOURS)
def test_ptu_cross_check_with_ptufile(tmp_path, flavour):
    rng = np.random.default_rng(7)
    p = tmp_path / f"{flavour}.ptu"
    recs = O.write_ptu(p, ptu_events(rng, flavour, 3000), flavour, resolution=4e-12)
    pt_t, pt_ch, pt_mark = _ptufile_expected(p)
    info, t, ch, _ = collect(read_ptu(p, reorder_window_s=0, chunk_events=1000))
    assert info.tick_s == 4e-12 and info.channel_map[0] == "sync" and info.channel_map[0x83] == "marker"
    assert len(recs) > 3000  # overflow records were needed
    np.testing.assert_array_equal(t, pt_t)
    is_marker = ch >= 0x80
    np.testing.assert_array_equal(is_marker, pt_ch < 0)
    np.testing.assert_array_equal(ch[is_marker] & 0xF, pt_mark[is_marker])
    if flavour == "PicoHarpT2":
        np.testing.assert_array_equal(ch[~is_marker], pt_ch[~is_marker])
    else:  # ptufile gives input c as c and sync as 0; we give sync 0 and input c as c + 1
        np.testing.assert_array_equal(np.maximum(ch[~is_marker].astype(np.int64) - 1, 0), pt_ch[~is_marker])
    want_t, want_ch, _ = O.order_events(O.decode_ptu_t2(recs, flavour), 0)
    np.testing.assert_array_equal(t, want_t)
    np.testing.assert_array_equal(ch, want_ch)


@FAST
@given(flavour=st.sampled_from(PTU_FLAVOURS), n=st.integers(1, 300), chunk=st.integers(1, 64),
       keep=st.booleans(), jitter=st.sampled_from([0, 500, 5000]), seed=st.integers(0, 2**31))
def test_ptu_matches_oracle_with_late_markers(tmp_path, flavour, n, chunk, keep, jitter, seed):
    rng = np.random.default_rng(seed)
    p = tmp_path / "x.ptu"
    recs = O.write_ptu(p, ptu_events(rng, flavour, n, jitter), flavour, resolution=1e-12)
    tol = 1000
    want_t, want_ch, bad = O.order_events(O.decode_ptu_t2(recs, flavour, keep), tol)
    kw = dict(keep_markers=keep, chunk_events=chunk, reorder_window_s=tol * 1e-12)
    if bad is not None:
        _, off = read_ptu_header(p)
        with pytest.raises(FileFormatError, match=f"at byte {off + 4 * bad}: record {bad}: time"):
            collect(read_ptu(p, **kw))
        return
    _, t, ch, _ = collect(read_ptu(p, **kw))
    np.testing.assert_array_equal(t, want_t)
    np.testing.assert_array_equal(ch, want_ch)


def test_ptu_known_answer_records(tmp_path):
    # Hand-built HydraHarp v2 records:
    #   0x02000005: photon, channel field 1 (input 2, our code 2), time 5
    #   0xFE000003: overflow x3 -> +3 * 2**25
    #   0x80000007: sync at 3 * 2**25 + 7
    #   0x84000009: marker 2 at 3 * 2**25 + 9 -> our code 0x82
    #   0xFE000000: overflow with count 0 = 1 -> +2**25
    #   0x0000000B: photon input 1 (code 1) at 4 * 2**25 + 11
    p = tmp_path / "k.ptu"
    O.write_ptu(p, None, "HydraHarp2T2", records=[0x02000005, 0xFE000003, 0x80000007, 0x84000009, 0xFE000000, 0x0000000B])
    info, t, ch, _ = collect(read_ptu(p))
    w = 1 << 25
    assert t.tolist() == [5, 3 * w + 7, 3 * w + 9, 4 * w + 11] and ch.tolist() == [2, 0, 0x82, 1]
    assert info.extra["record_type"] == "HydraHarp T2 v2" and info.extra["File_Comment"] == "qkdpost test file"
    # HydraHarp v1: each overflow record adds 33552000 whatever its count field
    O.write_ptu(p, None, "HydraHarpT2", records=[0xFE000003, 0x0000000B])
    assert collect(read_ptu(p))[1].tolist() == [33552000 + 11]
    # PicoHarp: 0xF0000000 = overflow (+210698240), 0x1000000C = input 1 at time 12,
    # 0xF0000023 = marker bits 3 with the time field 0x23 (markers carry their bits in the time)
    O.write_ptu(p, None, "PicoHarpT2", records=[0xF0000000, 0x1000000C, 0xF0000023])
    _, t, ch, _ = collect(read_ptu(p))
    assert t.tolist() == [210698240 + 12, 210698240 + 0x23] and ch.tolist() == [1, 0x83]
    assert collect(read_ptu(p, keep_markers=False))[1].tolist() == [210698240 + 12]
    # a user channel map overrides and extends the default one
    info, _ = read_ptu(p, channel_map="1=H,2=V,0=unused")
    assert info.channel_map[1] == "H" and info.channel_map[0] == "unused" and info.channel_map[0x81] == "marker"


PTU_T3_FLAVOURS = ["PicoHarpT3", "HydraHarpT3", "HydraHarp2T3", "TimeHarp260NT3", "TimeHarp260PT3", "GenericT3"]


def ptu_t3_events(rng, flavour, n):
    nsync = np.cumsum(rng.integers(0, 3000, n)).astype(np.int64)
    pico = flavour == "PicoHarpT3"
    ev = []
    for x in nsync:
        if rng.integers(0, 10) == 0:
            ev.append(("marker", int(x), 0, int(rng.integers(1, 16))))
        else:
            ev.append(("photon", int(x), int(rng.integers(0, 4096 if pico else 32768)),
                       int(rng.integers(1, 5) if pico else rng.integers(0, 64))))
    return ev


def test_ptu_t3_known_answer(tmp_path):
    """Hand-built HydraHarp v2 T3 records: sync period 12.5 ns = 3125 ticks of 4 ps."""
    recs = [
        (3 << 25) | (100 << 10) | 5,  # input 3, dtime 100, nsync 5 -> 5 * 3125 + 100, channel 4
        (1 << 31) | (0x3F << 25) | 2,  # overflow: 2 * 1024 sync periods
        (1 << 31) | (2 << 25) | 7,  # marker 2 at nsync 2048 + 7
        (0 << 25) | (9 << 10) | 8,  # input 0, nsync 2048 + 8
    ]
    p = tmp_path / "hh.ptu"
    O.write_ptu(p, None, "HydraHarp2T3", records=recs, resolution=4e-12, sync_period=12.5e-9)
    info, t, ch, _ = collect(read_ptu(p))
    assert info.tick_s == 4e-12 and float(info.extra["sync_period_s"]) == 12.5e-9 and 0 not in info.channel_map
    np.testing.assert_array_equal(t, [5 * 3125 + 100, 2055 * 3125, 2056 * 3125 + 9])
    np.testing.assert_array_equal(ch, [4, 0x82, 1])


@pytest.mark.parametrize("flavour", PTU_T3_FLAVOURS)
def test_ptu_t3_cross_check_with_ptufile(tmp_path, flavour):
    rng = np.random.default_rng(8)
    p = tmp_path / f"{flavour}.ptu"
    recs = O.write_ptu(p, ptu_t3_events(rng, flavour, 3000), flavour, resolution=4e-12, sync_period=12.5e-9)
    assert len(recs) > 3000  # overflow records were needed
    with ptufile.PtuFile(p) as f:
        d = f.decode_records()
    d = d[(d["channel"] >= 0) | (d["marker"] > 0)]
    want_t = d["time"].astype(np.int64) * 3125 + np.maximum(d["dtime"], 0)
    order = np.argsort(want_t, kind="stable")
    info, t, ch, _ = collect(read_ptu(p, reorder_window_s=1e-6, chunk_events=700))
    np.testing.assert_array_equal(t, want_t[order])
    mark = d["marker"][order] > 0
    np.testing.assert_array_equal(ch >= 0x80, mark)
    np.testing.assert_array_equal(ch[mark] & 0xF, d["marker"][order][mark])
    np.testing.assert_array_equal(ch[~mark], d["channel"][order][~mark] + 1)  # ptufile counts inputs from 0


@FAST
@given(flavour=st.sampled_from(PTU_T3_FLAVOURS), n=st.integers(1, 200), chunk=st.integers(1, 64),
       keep=st.booleans(), seed=st.integers(0, 2**32 - 1), period=st.sampled_from([12.5e-9, 12.5000137e-9, 1e-6]))
def test_ptu_t3_matches_oracle(tmp_path_factory, flavour, n, chunk, keep, seed, period):
    from qkdpost.io.ptu import _period_ticks

    rng = np.random.default_rng(seed)
    p = tmp_path_factory.mktemp("t3") / "f.ptu"
    recs = O.write_ptu(p, ptu_t3_events(rng, flavour, n), flavour, resolution=4e-12, sync_period=period)
    info, t, ch, _ = collect(read_ptu(p, keep_markers=keep, reorder_window_s=1e-3, chunk_events=chunk))
    want_t, want_ch, _ = O.order_events(O.decode_ptu_t3(recs, flavour, _period_ticks(period, 4e-12), keep),
                                        int(1e-3 / 4e-12))
    np.testing.assert_array_equal(t, want_t)
    np.testing.assert_array_equal(ch, want_ch)


def test_ptu_t3_fractional_sync_period_does_not_drift():
    """A measured sync period that is not a whole number of ticks: within one tick of the exact value
    after 10 h at 80 MHz (2.9e12 syncs), where N * P is near 2**53 and doubles are 1-2 ticks apart."""
    from fractions import Fraction

    from qkdpost.io._kernels import decode_ptu_t3, new_state, PTU_HYDRAHARP2
    from qkdpost.io.ptu import _period_ticks

    period, res = 12.5000137e-9, 4e-12
    p_int, p_frac = _period_ticks(period, res)
    assert p_int == 3125 and 0 < p_frac < 1
    nsync = 2_880_000_000_000
    count = nsync >> 10
    ofl = []
    while count:
        c = min(count, 1023)
        ofl.append((1 << 31) | (0x3F << 25) | c)
        count -= c
    recs = np.array(ofl + [(5 << 25) | (17 << 10) | (nsync & 0x3FF)], dtype="<u4")
    t, c = np.zeros(4, np.int64), np.zeros(4, np.uint8)
    k = decode_ptu_t3(recs, PTU_HYDRAHARP2, True, 0, p_int, p_frac, new_state(), t, c, 0)
    assert k == 1
    exact = Fraction(nsync) * (Fraction(p_int) + Fraction(p_frac)) + 17  # the same P, computed exactly
    assert abs(int(t[0]) - exact) <= 1


def test_ptu_bad_inputs(tmp_path):
    p = tmp_path / "bad.ptu"
    good_recs = [0x02000005, 0x02000006]
    # wrong magic
    p.write_bytes(b"PQTTTX\0\0" + bytes(100))
    with pytest.raises(FileFormatError, match="at byte 0: wrong magic"):
        read_ptu(p)
    # empty
    p.write_bytes(b"")
    with pytest.raises(FileFormatError, match="at byte 0: empty file"):
        read_ptu(p)
    # header cut before Header_End
    full = O.ptu_header(O.PTU_TYPES["HydraHarp2T2"], 2, 1e-12)
    p.write_bytes(full[:200])
    with pytest.raises(FileFormatError, match="truncated PTU header"):
        read_ptu(p)
    # T3 without a plausible sync period
    O.write_ptu(p, None, "PicoHarpT3", records=good_recs, resolution=4e-12, sync_period=2e-12)
    with pytest.raises(FileFormatError, match="sync period"):
        read_ptu(p)
    # unknown record type
    p.write_bytes(O.ptu_header(0x00010299, 2, 1e-12) + np.array(good_recs, "<u4").tobytes())
    with pytest.raises(FileFormatError, match="unknown record type 0x00010299"):
        read_ptu(p)
    # fewer records than the header says (cut mid-record)
    data = O.ptu_header(O.PTU_TYPES["HydraHarp2T2"], 3, 1e-12) + np.array(good_recs, "<u4").tobytes() + b"\x01"
    p.write_bytes(data)
    off = len(data) - 1
    with pytest.raises(FileFormatError, match=f"at byte {off}: truncated PTU file: header declares 3 records"):
        read_ptu(p)
    # undefined record: HydraHarp special with channel 20
    O.write_ptu(p, None, "HydraHarp2T2", records=[0x02000005, (1 << 31) | (20 << 25) | 7])
    _, off = read_ptu_header(p)
    with pytest.raises(FileFormatError, match=f"at byte {off + 4}: record 1: undefined record"):
        list(read_ptu(p)[1])
    # PicoHarp channel 9 is undefined
    O.write_ptu(p, None, "PicoHarpT2", records=[0x90000001])
    with pytest.raises(FileFormatError, match="record 0: undefined record .channel code 9"):
        list(read_ptu(p)[1])
    # unknown tag type code, and a string tag claiming more bytes than the file has
    bad_tag = struct.pack("<32siIq", b"Weird".ljust(32, b"\0"), -1, 0x12345678, 0)
    p.write_bytes(b"PQTTTR\0\0" + b"1.0.00\0\0" + bad_tag)
    with pytest.raises(FileFormatError, match="at byte 52: header tag 'Weird' has unknown type code 0x12345678"):
        read_ptu(p)
    long_tag = struct.pack("<32siIq", b"File_Comment".ljust(32, b"\0"), -1, O.TY_ANSI, 1 << 40)
    p.write_bytes(b"PQTTTR\0\0" + b"1.0.00\0\0" + long_tag)
    with pytest.raises(FileFormatError, match="claims 1099511627776 bytes"):
        read_ptu(p)


# --------------------------------------------------------------------------- quTAG

def test_qutag_known_answer_and_oracle(tmp_path):
    # header (40 bytes, opaque) + records <q H: (1000 ps, ch 1), (999, 2) reordered, (5000, 3)
    data = b"H" * 40 + struct.pack("<qHqHqH", 1000, 1, 999, 2, 5000, 3)
    p = tmp_path / "q.bin"
    p.write_bytes(data)
    info, t, ch, _ = collect(read_qutag(p, channel_map="1=H,2=V,3=D,4=A"))
    assert t.tolist() == [999, 1000, 5000] and ch.tolist() == [2, 1, 3]
    assert info.tick_s == 1e-12 and info.channel_map == {1: "H", 2: "V", 3: "D", 4: "A"}
    rng = np.random.default_rng(3)
    tt = jittered_times(rng, 5000, 100, 30)
    cc = rng.integers(0, 9, 5000)
    p.write_bytes(O.encode_qutag(tt, cc))
    want_t, want_ch, bad = O.order_events(O.decode_qutag(p.read_bytes()), 60)
    assert bad is None
    _, t, ch, _ = collect(read_qutag(p, reorder_window_s=60e-12, chunk_events=333))
    np.testing.assert_array_equal(t, want_t)
    np.testing.assert_array_equal(ch, want_ch)
    info, _ = read_qutag(p, tick_s=81e-12)
    assert info.tick_s == 81e-12


def test_qutag_bad_inputs(tmp_path):
    p = tmp_path / "q.bin"
    p.write_bytes(b"H" * 30)
    with pytest.raises(FileFormatError, match="ends inside the 40-byte header"):
        read_qutag(p)
    p.write_bytes(O.encode_qutag([1, 2], [1, 2]) + b"\0" * 7)
    with pytest.raises(FileFormatError, match="at byte 60: truncated quTAG binary file: 7 trailing"):
        read_qutag(p)
    p.write_bytes(O.encode_qutag([1, 2, 3], [1, 300, 2]))
    with pytest.raises(FileFormatError, match="at byte 50: record 1: channel 300 does not fit"):
        list(read_qutag(p)[1])
    p.write_bytes(O.encode_qutag([10**9, 5], [1, 1]))
    with pytest.raises(FileFormatError, match="at byte 50: record 1: time 5 ticks"):
        list(read_qutag(p)[1])
    with pytest.raises(ConfigError, match="tick_s"):
        read_qutag(p, tick_s=0)


# --------------------------------------------------------------------------- dispatch

def test_open_stream_dispatch(tmp_path):
    ptu = tmp_path / "run.dat"  # PTU detected by magic despite the extension
    O.write_ptu(ptu, None, "GenericT2", records=[0x02000005])
    info, it = open_stream(ptu)
    assert info.extra["format"] == "ptu" and [c.t.tolist() for c in it] == [[5]]
    raw = tmp_path / "alice.raw"
    raw.write_bytes(O.encode_qcrypto([7], [2]))
    with pytest.raises(FileFormatError, match="cannot tell the format"):
        open_stream(raw)
    info, it = open_stream(raw, format="qcrypto", channel_map="1=H,2=V,4=D,8=A")
    assert info.channel_map[2] == "V" and [c.ch.tolist() for c in it] == [[2]]
    with pytest.raises(ConfigError, match="unknown"):
        open_stream(raw, format="swabian")
    with pytest.raises(ConfigError, match="does not take"):
        open_stream(raw, format="qcrypto", keep_markers=True)
    with pytest.raises(FileFormatError, match="no such file"):
        open_stream(tmp_path / "nope")


def test_displacement_bound_keeps_sorting_linear(tmp_path):
    # 1024 events at t=1000 then one at t=999: it belongs 1024 places back (allowed);
    # with 1025 events before it, it would have to pass 1025 (refused, not a quadratic sort)
    for before, ok in ((1024, True), (1025, False)):
        t = [1000] * before + [999]
        p = tmp_path / f"d{before}.bin"
        p.write_bytes(O.encode_qutag(t, [1] * before + [2]))
        if ok:
            _, got, ch, _ = collect(read_qutag(p, reorder_window_s=1e-9, chunk_events=100))
            assert got.tolist() == [999] + [1000] * before and ch[0] == 2
        else:
            with pytest.raises(FileFormatError, match=f"record {before}: time 999 belongs more than 1024 events back"):
                collect(read_qutag(p, reorder_window_s=1e-9, chunk_events=100))


@FAST
@given(n=st.integers(1, 200), swap=st.booleans(), keep=st.booleans(), shift=st.sampled_from([10, 15]),
       kind=st.sampled_from(["clean", "flag", "back", "wrap", "late_first"]), seed=st.integers(0, 2**31))
def test_qcrypto_fast_path_equals_careful_path(n, swap, keep, shift, kind, seed):
    from qkdpost.io import _kernels as K

    rng = np.random.default_rng(seed)
    span = 1 << (64 - shift)
    t = np.cumsum(rng.integers(0, 100, n)).astype(np.int64) + span // 4
    if kind == "back" and n > 1:
        t[n // 2] -= 5
    if kind == "wrap":
        t = (t + span - span // 4 - 50) % span
    raw = (t.astype(np.uint64) << np.uint64(shift)) | rng.integers(0, 16, n).astype(np.uint64)
    if kind == "flag":
        raw[rng.integers(0, n)] |= np.uint64(16)
    if swap:
        raw = (raw << np.uint64(32)) | (raw >> np.uint64(32))
    state = K.new_state()
    state[K.S_LAST] = int(t[0]) + (10 if kind == "late_first" else -3)
    state[K.S_MAX] = int(t[0]) + (10 if kind == "late_first" else -3)
    outs = []
    for fn in (K.decode_qcrypto, K._qcrypto_careful):
        s = state.copy()
        t_out = np.full(n + 2, -7, np.int64)
        ch_out = np.zeros(n + 2, np.uint8)
        t_out[:2] = [int(state[K.S_MAX]) - 20, int(state[K.S_MAX])]  # events held back before the block
        k = fn(raw, swap, shift, keep, 1000, s, t_out, ch_out, 2)
        outs.append((k, s.tolist(), t_out[: max(k, 0)].tolist(), ch_out[: max(k, 0)].tolist()))
    assert outs[0] == outs[1]


def test_ptu_records_at_an_unaligned_offset(tmp_path):
    # a 5-byte string tag puts the records at an odd byte offset: decoded from an aligned copy
    p = tmp_path / "odd.ptu"
    odd = O._tag("File_Comment", O.TY_ANSI, 5, data=b"odd!\0")
    recs = O.write_ptu(p, [("photon", 5, 1), ("sync", 70_000_000, 0), ("photon", 70_000_001, 2)], "GenericT2",
                       extra_tags=[odd])
    _, off = read_ptu_header(p)
    assert off % 4 == 1
    _, t, ch, _ = collect(read_ptu(p))
    want_t, want_ch, _ = O.order_events(O.decode_ptu_t2(recs, "GenericT2"), 0)
    assert t.tolist() == want_t.tolist() == [5, 70_000_000, 70_000_001] and ch.tolist() == want_ch.tolist()
    pt_t, _, _ = _ptufile_expected(p)
    assert pt_t.tolist() == t.tolist()
