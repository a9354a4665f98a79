"""Fuzz every reader with random bytes and mutated valid files.

Each case must end in exactly one of two ways: a FileFormatError (our clear
error, naming the file), or a result equal to what the plain-loop oracle in
tests/oracles/io.py decodes from the same bytes (for the native format: equal
to what was written, the per-batch checksum catches altered data). Anything
else (another exception, a crash, a hang, different events) fails.

The default run covers a few thousand cases in a few seconds; ``-m slow``
runs ten times as many with other seeds.
"""

import numpy as np
import pytest

from oracles import io as O
from qkdpost.errors import FileFormatError
from qkdpost.io import StreamInfo, read_ptu, read_ptu_header, read_qcrypto, read_qutag, read_stream, write_stream

DEFAULT = {"qcrypto": 2000, "qutag": 2000, "ptu_random": 500, "ptu_mutated": 2000, "arrow": 800}


def _consume(result):
    info, it = result
    ts, cs = [], []
    for c in it:
        assert c.t.dtype == np.int64 and c.ch.dtype == np.uint8 and len(c.t) == len(c.ch)
        ts.append(np.asarray(c.t))
        cs.append(np.asarray(c.ch))
    t = np.concatenate(ts) if ts else np.zeros(0, np.int64)
    ch = np.concatenate(cs) if cs else np.zeros(0, np.uint8)
    assert np.all(t[1:] >= t[:-1])
    return info, t, ch


def _mutate(rng, data: bytes) -> bytes:
    """One to three random edits: bit flips, random bytes, truncation, insertion, deletion."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        op = int(rng.integers(0, 6))
        if not b:
            break
        i = int(rng.integers(0, len(b)))
        if op <= 1:
            b[i] ^= 1 << int(rng.integers(0, 8))
        elif op == 2:
            b[i] = int(rng.integers(0, 256))
        elif op == 3:
            del b[i:]
        elif op == 4:
            b[i:i] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
        else:
            del b[i : i + int(rng.integers(1, 9))]
    return bytes(b)


def _put(path, data):
    """Write a fresh file (unlinking first: truncating a file in place is ~10x slower here)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)


def _random_bytes(rng, header, record, max_records):
    """Random bytes, usually a header plus whole records, sometimes any length."""
    if rng.random() < 0.2:
        n = int(rng.integers(0, header + record * max_records + 1))
    else:
        n = header + record * int(rng.integers(0, max_records + 1))
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def _expect_error(fn, match=None):
    with pytest.raises(FileFormatError, match=match) as exc:
        fn()
    return exc.value


_PATTERN = {"backwards": "time -?[0-9]+ ticks is more", "record": "undefined record",
            "range": "time -?[0-9]+ is out of range", "channel": "channel [0-9]+ does not fit"}


def _expected(decode, tol):
    """('ok', t, ch) or ('error', record index, message pattern) from an oracle decoder."""
    try:
        events, bad = decode(), None
    except O.BadRecord as exc:
        events, bad = exc.events, exc
    t, ch, back = O.order_events(events, tol)
    if back is not None:
        return "error", back, _PATTERN["backwards"]
    if bad is not None:
        return "error", bad.index, _PATTERN[bad.what]
    return "ok", t, ch


def _compare(path, read, want, data_offset, record_size):
    """Run the reader to the end and compare with the oracle's expectation."""
    if want[0] == "error":
        _, index, pattern = want
        e = _expect_error(lambda: _consume(read()), f"record {index}: {pattern}")
        assert e.offset == data_offset + record_size * index and e.path == str(path)
        return "record error"
    _, t, ch = _consume(read())
    assert t.tolist() == want[1].tolist() and ch.tolist() == want[2].tolist()
    return "decoded"


def _check_qcrypto(path, data, rng):
    variant = ("49bit", "54bit")[int(rng.integers(0, 2))]
    swap, keep = bool(rng.integers(0, 2)), bool(rng.integers(0, 2))
    tol = int(rng.choice([0, 1, 1 << 20, 1 << 40]))
    tick = 125e-12 if variant == "49bit" else 1e-9 / 256
    kw = dict(variant=variant, word_swap=swap, keep_flagged=keep, reorder_window_s=tol * tick,
              chunk_events=int(rng.integers(1, 8)))
    _put(path, data)
    if len(data) == 0 or len(data) % 8:
        _expect_error(lambda: read_qcrypto(path, **kw), "empty file|truncated")
        return "file error"
    want = _expected(lambda: O.decode_qcrypto(data, variant=variant, word_swap=swap, keep_flagged=keep), tol)
    return _compare(path, lambda: read_qcrypto(path, **kw), want, 0, 8)


def _check_qutag(path, data, rng):
    tol = int(rng.choice([0, 10, 1 << 50]))
    kw = dict(reorder_window_s=tol * 1e-12, chunk_events=int(rng.integers(1, 8)))
    _put(path, data)
    if len(data) < 40 or (len(data) - 40) % 10:
        _expect_error(lambda: read_qutag(path, **kw), "empty file|truncated|header")
        return "file error"
    return _compare(path, lambda: read_qutag(path, **kw), _expected(lambda: O.decode_qutag(data), tol), 40, 10)


_FLAVOUR_OF = {v: k for k, v in O.PTU_TYPES.items()}


def _check_ptu(path, data, rng):
    tol = int(rng.choice([0, 1000, 1 << 40]))
    keep = bool(rng.integers(0, 2))
    _put(path, data)
    try:
        tags, off = read_ptu_header(path)
        info, it = read_ptu(path, keep_markers=keep, reorder_window_s=tol * 1e-12,
                            chunk_events=int(rng.integers(1, 16)))
    except FileFormatError as e:
        assert e.path == str(path)
        return "file error"
    # the header parsed: the records must decode exactly as the oracle says
    res = info.tick_s
    tol = int(round(tol * 1e-12 / res))
    flavour = _FLAVOUR_OF[tags["TTResultFormat_TTTRRecType"]]
    n = int(info.extra["records"])
    recs = np.frombuffer(data[off : off + 4 * n], "<u4")
    if flavour.endswith("T3"):
        from qkdpost.io.ptu import _period_ticks

        period = _period_ticks(tags["MeasDesc_GlobalResolution"], res)
        want = _expected(lambda: O.decode_ptu_t3(recs, flavour, period, keep), tol)
    else:
        want = _expected(lambda: O.decode_ptu_t2(recs, flavour, keep), tol)
    return _compare(path, lambda: (info, it), want, off, 4)


def _valid_ptu(rng):
    flavour = str(rng.choice(list(O.PTU_TYPES)))
    n = int(rng.integers(1, 25))
    if flavour.endswith("T3"):
        pico = flavour == "PicoHarpT3"
        ev = [("marker", int(x), 0, int(rng.integers(1, 16))) if rng.integers(0, 4) == 0 else
              ("photon", int(x), int(rng.integers(0, 4096)), int(rng.integers(1, 5) if pico else rng.integers(0, 64)))
              for x in np.cumsum(rng.integers(0, 3000, n))]  # few overflow records (v1 writes one per 1024)
        recs = O.encode_ptu_t3(ev, flavour)
        res = float(rng.choice([1e-12, 4e-12, 25e-12]))
        return O.ptu_header(O.PTU_TYPES[flavour], len(recs), res, measurement_mode=3,
                            global_resolution=res * float(rng.choice([3125, 3125.37, 1]))) + recs.tobytes()
    t = np.cumsum(rng.integers(0, 80_000_000, n))
    ev = []
    for x in t:
        k = int(rng.integers(0, 4))
        if flavour == "PicoHarpT2":
            ev.append(("marker", int(x), int(rng.integers(1, 16))) if k == 0 else ("photon", int(x), int(rng.integers(0, 5))))
        else:
            ev.append([("marker", int(x), int(rng.integers(1, 16))), ("sync", int(x), 0),
                       ("photon", int(x), int(rng.integers(0, 64))), ("photon", int(x), 1)][k])
    recs = O.encode_ptu_t2(ev, flavour)
    return O.ptu_header(O.PTU_TYPES[flavour], len(recs), float(rng.choice([1e-12, 4e-12, 5e-12])),
                        measurement_mode=2) + recs.tobytes()


def _run(kind, cases, seed, tmp_path):
    rng = np.random.default_rng(seed)
    path = tmp_path / f"fuzz_{kind}.bin"
    outcomes = {"decoded": 0, "record error": 0, "file error": 0}
    for _ in range(cases):
        if kind == "qcrypto":
            if rng.random() < 0.5:  # random bytes
                data = _random_bytes(rng, 0, 8, 15)
            else:  # mutated valid file
                n = int(rng.integers(1, 15))
                data = _mutate(rng, O.encode_qcrypto(np.cumsum(rng.integers(0, 1000, n)), rng.integers(0, 16, n)))
            outcomes[_check_qcrypto(path, data, rng)] += 1
        elif kind == "qutag":
            if rng.random() < 0.5:
                data = _random_bytes(rng, 40, 10, 12)
            else:
                n = int(rng.integers(1, 12))
                data = _mutate(rng, O.encode_qutag(np.cumsum(rng.integers(0, 100, n)), rng.integers(0, 9, n)))
            outcomes[_check_qutag(path, data, rng)] += 1
        elif kind == "ptu_random":
            body = rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes()
            data = (b"PQTTTR\0\0" + body) if rng.random() < 0.5 else body
            outcomes[_check_ptu(path, data, rng)] += 1
        elif kind == "ptu_mutated":
            outcomes[_check_ptu(path, _mutate(rng, _valid_ptu(rng)), rng)] += 1
    return outcomes


@pytest.mark.parametrize("kind", ["qcrypto", "qutag", "ptu_random", "ptu_mutated"])
def test_fuzz_importers(kind, tmp_path):
    outcomes = _run(kind, DEFAULT[kind], 12345, tmp_path)
    assert sum(outcomes.values()) == DEFAULT[kind]
    # the harness must exercise every path, not only the cheap early rejections
    assert outcomes["file error"] > 0
    if kind != "ptu_random":
        assert outcomes["decoded"] > DEFAULT[kind] // 10 and outcomes["record error"] > DEFAULT[kind] // 100, outcomes


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["qcrypto", "qutag", "ptu_random", "ptu_mutated"])
def test_fuzz_importers_long(kind, tmp_path):
    for seed in range(10):
        _run(kind, DEFAULT[kind], 1000 + seed, tmp_path)


INFO = StreamInfo(tick_s=1e-12, party="alice", channel_map={1: "H", 2: "V"})


def _arrow_cases(cases, seed, tmp_path):
    rng = np.random.default_rng(seed)
    good = tmp_path / "good.arrow"
    path = tmp_path / "fuzz.arrow"
    outcomes = {"error": 0, "same": 0}
    for case in range(cases):
        if case % 50 == 0:  # a fresh valid file now and then (1-3 batches)
            n = int(rng.integers(0, 60))
            t = np.cumsum(rng.integers(0, 1 << 40, n)).astype(np.int64)
            ch = rng.integers(0, 256, n).astype(np.uint8)
            from qkdpost.io.arrow import StreamWriter

            with StreamWriter(good, INFO, batch_events=int(rng.integers(1, 30))) as w:
                w.write(t, ch)
            original = good.read_bytes()
        data = _mutate(rng, original) if rng.random() < 0.9 else rng.integers(0, 256, 300, dtype=np.uint8).tobytes()
        _put(path, data)
        try:
            info, t2, ch2 = _consume(read_stream(path, chunk_events=int(rng.integers(1, 40))))
        except FileFormatError as e:
            assert e.path == str(path)
            outcomes["error"] += 1
            continue
        # accepted: then it must be exactly what was written
        assert info == INFO
        assert t2.tolist() == t.tolist() and ch2.tolist() == ch.tolist()
        outcomes["same"] += 1
    return outcomes


def test_fuzz_native_arrow(tmp_path):
    outcomes = _arrow_cases(DEFAULT["arrow"], 777, tmp_path)
    assert outcomes["error"] > DEFAULT["arrow"] // 2 and outcomes["same"] > 0, outcomes


@pytest.mark.slow
def test_fuzz_native_arrow_long(tmp_path):
    _arrow_cases(DEFAULT["arrow"] * 10, 778, tmp_path)


def test_round_trip_via_write_stream_for_fuzz_seed_file(tmp_path):
    # the mutation harness itself: an unmutated file reads back exactly
    p = tmp_path / "ok.arrow"
    t = np.arange(10, dtype=np.int64)
    write_stream(p, INFO, [(t, np.ones(10, np.uint8))])
    info, t2, ch2 = _consume(read_stream(p))
    assert info == INFO and t2.tolist() == t.tolist() and ch2.tolist() == [1] * 10
