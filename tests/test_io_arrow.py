"""Native Arrow IPC timestamp files: round trip, streaming, atomicity, bad input."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from hypothesis import given, settings, strategies as st

from qkdpost.errors import FileFormatError, InputError
from qkdpost.io import Chunk, StreamInfo, StreamWriter, open_stream, read_stream, write_stream

INFO = StreamInfo(tick_s=125e-12, party="bob", device="sim", channel_map={0: "H", 1: "V", 2: "D", 3: "A"},
                  extra={"source": "test"})


def _events(n, seed=0):
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.integers(0, 1000, n)).astype(np.int64) - 5000
    ch = rng.integers(0, 256, n).astype(np.uint8)
    return t, ch


def _read_all(path, **kw):
    info, it = read_stream(path, **kw)
    chunks = list(it)
    if not chunks:
        return info, np.zeros(0, np.int64), np.zeros(0, np.uint8), []
    return info, np.concatenate([c.t for c in chunks]), np.concatenate([c.ch for c in chunks]), chunks


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), max_size=8),
    chunk_events=st.integers(1, 500),
    batch_events=st.integers(1, 400),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_preserves_every_event(tmp_path_factory, sizes, chunk_events, batch_events, seed):
    path = tmp_path_factory.mktemp("rt") / "s.arrow"
    t, ch = _events(sum(sizes), seed)
    with StreamWriter(path, INFO, batch_events=batch_events) as w:
        pos = 0
        for n in sizes:
            w.write(t[pos : pos + n], ch[pos : pos + n])
            pos += n
    assert w.events == len(t)
    info, t2, ch2, chunks = _read_all(path, chunk_events=chunk_events)
    assert info == INFO
    assert t2.dtype == np.int64 and ch2.dtype == np.uint8
    np.testing.assert_array_equal(t2, t)
    np.testing.assert_array_equal(ch2, ch)
    # every chunk but the last is exactly chunk_events long
    assert all(len(c.t) == chunk_events for c in chunks[:-1])
    assert all(0 < len(c.t) <= chunk_events for c in chunks)


def test_write_stream_counts_and_is_readable_by_plain_pyarrow(tmp_path):
    t, ch = _events(10_000)
    p = tmp_path / "x.arrow"
    n = write_stream(p, INFO, [Chunk(t[:3], ch[:3]), (t[3:], ch[3:])])
    assert n == 10_000
    table = ipc.open_file(pa.memory_map(str(p))).read_all()
    np.testing.assert_array_equal(table.column("t").to_numpy(), t)
    assert b"qkdpost.stream_info" in table.schema.metadata
    # open_stream dispatches by magic even with an odd extension
    q = tmp_path / "x.data"
    os.rename(p, q)
    info, it = open_stream(q)
    assert info == INFO and sum(len(c.t) for c in it) == 10_000


def test_chunks_stay_valid_after_iteration_ends(tmp_path):
    t, ch = _events(5000)
    p = tmp_path / "x.arrow"
    write_stream(p, INFO, [(t, ch)])
    _, t2, _, chunks = _read_all(p, chunk_events=5000)
    np.testing.assert_array_equal(chunks[0].t, t)  # views survive closing the map


def test_empty_stream_round_trips(tmp_path):
    p = tmp_path / "e.arrow"
    assert write_stream(p, INFO, []) == 0
    info, t2, _, chunks = _read_all(p)
    assert info == INFO and chunks == []


def _listing(d):
    return sorted(os.listdir(d))


def test_writer_rejects_backwards_time_and_leaves_nothing(tmp_path):
    p = tmp_path / "out.arrow"
    with pytest.raises(InputError, match="non-decreasing"):
        write_stream(p, INFO, [(np.array([1, 5, 9]), np.array([0, 1, 2]))] + [(np.array([8]), np.array([0]))])
    assert _listing(tmp_path) == []
    with pytest.raises(InputError, match=r"t\[2\]=3 < t\[1\]=5"):
        write_stream(p, INFO, [(np.array([1, 5, 3]), np.array([0, 1, 2]))])
    assert _listing(tmp_path) == []


@pytest.mark.parametrize(
    "t, ch, match",
    [
        (np.array([1.0, 2.0]), np.array([0, 1]), "never floats"),
        (np.array([1, 2]), np.array([0, 256]), "0..255"),
        (np.array([1, 2]), np.array([0]), "one entry per event"),
        (np.zeros((2, 2), np.int64), np.zeros((2, 2), np.uint8), "1-D"),
    ],
)
def test_writer_rejects_bad_arrays(tmp_path, t, ch, match):
    with pytest.raises(InputError, match=match):
        write_stream(tmp_path / "o.arrow", INFO, [(t, ch)])
    assert _listing(tmp_path) == []


def test_error_in_source_iterator_leaves_no_file_and_keeps_old_one(tmp_path):
    p = tmp_path / "o.arrow"
    write_stream(p, INFO, [(np.arange(10), np.zeros(10, np.uint8))])
    before = p.read_bytes()

    def gen():
        yield np.arange(5), np.zeros(5, np.uint8)
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError):
        write_stream(p, INFO, gen())
    assert _listing(tmp_path) == ["o.arrow"] and p.read_bytes() == before


def test_missing_empty_wrong_magic_truncated(tmp_path):
    with pytest.raises(FileFormatError, match="no such file"):
        read_stream(tmp_path / "nope.arrow")
    e = tmp_path / "empty.arrow"
    e.write_bytes(b"")
    with pytest.raises(FileFormatError, match="at byte 0: empty file"):
        read_stream(e)
    w = tmp_path / "w.arrow"
    w.write_bytes(b"PQTTTR\0\0" + bytes(100))
    with pytest.raises(FileFormatError, match="at byte 0: wrong magic"):
        read_stream(w)
    good = tmp_path / "g.arrow"
    t, ch = _events(3000)
    write_stream(good, INFO, [(t, ch)])
    data = good.read_bytes()
    for cut in (7, len(data) // 2, len(data) - 1):
        tr = tmp_path / f"tr{cut}.arrow"
        tr.write_bytes(data[:cut])
        with pytest.raises(FileFormatError, match=f"at byte {cut}: truncated"):
            read_stream(tr)


def test_wrong_schema_and_missing_metadata(tmp_path):
    p = tmp_path / "s.arrow"
    with ipc.new_file(str(p), pa.schema([("t", pa.float64()), ("ch", pa.uint8())])) as w:
        w.write_batch(pa.record_batch([pa.array([1.0]), pa.array([1], pa.uint8())], names=["t", "ch"]))
    with pytest.raises(FileFormatError, match="not .t: int64, ch: uint8."):
        read_stream(p)
    q = tmp_path / "m.arrow"
    with ipc.new_file(str(q), pa.schema([("t", pa.int64()), ("ch", pa.uint8())])) as w:
        w.write_batch(pa.record_batch([pa.array([1]), pa.array([1], pa.uint8())], names=["t", "ch"]))
    with pytest.raises(FileFormatError, match="without qkdpost.stream_info"):
        read_stream(q)


def _raw_file(path, batches, meta=None, info=b'{"tick_s": 1e-12}'):
    """An Arrow file built by hand with pyarrow, carrying the checksums the reader requires."""
    import zlib

    meta = dict(meta or {b"qkdpost.format": b"timestamps/1", b"qkdpost.checksum": b"crc32"})
    meta[b"qkdpost.stream_info"] = info
    meta[b"qkdpost.stream_info_crc32"] = b"%08x" % zlib.crc32(info)
    sch = pa.schema([("t", pa.int64()), ("ch", pa.uint8())]).with_metadata(meta)
    with ipc.new_file(str(path), sch) as w:
        for t, ch in batches:
            ta, ca = pa.array(t, pa.int64()), pa.array(ch, pa.uint8())
            crc = b"0" * 8
            if ta.null_count == 0:
                tn, cn = ta.to_numpy(), ca.to_numpy()
                crc = b"%08x" % zlib.crc32(cn, zlib.crc32(tn))
            w.write_batch(pa.record_batch([ta, ca], schema=sch), custom_metadata={b"qkdpost.crc32": crc})


def test_reader_rejects_backwards_time_nulls_and_bad_metadata(tmp_path):
    p = tmp_path / "b.arrow"
    _raw_file(p, [([1, 2, 3], [0, 0, 0]), ([2, 4], [0, 0])])
    info, it = read_stream(p)
    assert info.tick_s == 1e-12
    with pytest.raises(FileFormatError, match="event 3 goes backwards"):
        list(it)
    n = tmp_path / "n.arrow"
    _raw_file(n, [([1, None], [0, 0])])
    with pytest.raises(FileFormatError, match="null"):
        list(read_stream(n)[1])
    m = tmp_path / "m.arrow"
    _raw_file(m, [([1], [0])], info=b'{"tick_s": -1}')
    with pytest.raises(FileFormatError, match="unreadable qkdpost.stream_info"):
        read_stream(m)
    v = tmp_path / "v.arrow"
    _raw_file(v, [([1], [0])], {b"qkdpost.format": b"timestamps/9", b"qkdpost.checksum": b"crc32"})
    with pytest.raises(FileFormatError, match="supports 'timestamps/1'"):
        read_stream(v)
    c = tmp_path / "c.arrow"
    _raw_file(c, [([1], [0])], {b"qkdpost.format": b"timestamps/1"})
    with pytest.raises(FileFormatError, match="qkdpost.checksum=None: missing"):
        read_stream(c)


def _rss_anon_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon"):
                return int(line.split()[1])
    raise OSError("no RssAnon")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_reading_a_large_file_keeps_anonymous_memory_flat(tmp_path):
    # 40 M events (360 MB): reading must not grow private memory beyond a few chunks;
    # the mapped file pages (RssFile) are clean page cache the kernel can drop at will.
    p = tmp_path / "big.arrow"
    with StreamWriter(p, INFO) as w:
        for i in range(40):
            t = np.arange(i << 20, (i + 1) << 20, dtype=np.int64)
            w.write(t, (t & 3).astype(np.uint8))
    info, it = read_stream(p, chunk_events=1 << 20)
    base = _rss_anon_kb()
    peak, n = base, 0
    for c in it:
        n += len(c.t)
        peak = max(peak, _rss_anon_kb())
    assert n == 40 << 20
    assert peak - base < 64 * 1024, f"private memory grew by {peak - base} kB"


def test_unwritable_output_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="cannot create a file there"):
        write_stream(tmp_path / "no" / "such" / "dir.arrow", INFO, [])


def test_checksum_catches_a_flipped_timestamp_bit(tmp_path):
    p = tmp_path / "c.arrow"
    t = np.arange(0, 4000, 4, dtype=np.int64)
    write_stream(p, INFO, [(t, np.zeros(len(t), np.uint8))])
    data = bytearray(p.read_bytes())
    pos = data.find(np.int64(2000).tobytes())  # the event t = 2000 in the t buffer
    data[pos] ^= 0x01  # 2000 -> 2001: still sorted, so only the checksum can tell
    bad = tmp_path / "bad.arrow"
    bad.write_bytes(bytes(data))
    with pytest.raises(FileFormatError, match="record batch 0 .event 0. is corrupt .CRC-32 stored"):
        list(read_stream(bad)[1])
    _, t2, _, _ = _read_all(bad, verify=False)  # an explicit opt-out reads the altered value
    assert t2[500] == 2001


def test_altered_metadata_is_caught(tmp_path):
    p = tmp_path / "m.arrow"
    write_stream(p, INFO, [(np.arange(3), np.zeros(3, np.uint8))])
    data = p.read_bytes()
    assert data.count(b'"party": "bob"') >= 1
    bad = tmp_path / "bad.arrow"
    bad.write_bytes(data.replace(b'"party": "bob"', b'"party": "bab"'))
    with pytest.raises(FileFormatError, match="does not match its CRC-32"):
        read_stream(bad)


def test_writer_does_not_keep_references_to_caller_buffers(tmp_path):
    # a device wrapper reuses one buffer per chunk: the file must hold what was passed at each call
    p = tmp_path / "r.arrow"
    t = np.zeros(10, np.int64)
    ch = np.zeros(10, np.uint8)
    with StreamWriter(p, INFO, batch_events=25) as w:
        for k in range(6):
            t[:] = np.arange(10) + 10 * k
            ch[:] = k
            w.write(t, ch)
    _, t2, ch2, _ = _read_all(p)
    assert t2.tolist() == list(range(60)) and ch2.tolist() == [k for k in range(6) for _ in range(10)]
