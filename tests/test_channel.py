"""The loopback channel encodes, decodes and counts every message."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from qkdpost import _codec
from qkdpost.channel import LoopbackChannel, Responder
from qkdpost.errors import ProtocolError


def test_codec_round_trip_all_field_types():
    body = {
        "i": -5,
        "f": 0.25,
        "s": "päss",
        "b": b"\x00\xff",
        "none": None,
        "flag": True,
        "a": np.arange(12, dtype=np.uint32).reshape(3, 4),
        "empty": np.zeros(0, dtype=np.uint8),
    }
    kind, out = _codec.decode(_codec.encode("x.y", body))
    assert kind == "x.y"
    assert out["i"] == -5 and out["f"] == 0.25 and out["s"] == "päss" and out["b"] == b"\x00\xff"
    assert out["none"] is None and out["flag"] is True
    np.testing.assert_array_equal(out["a"], body["a"])
    assert out["a"].dtype == np.uint32 and out["empty"].shape == (0,)


@given(st.binary(max_size=200))
def test_codec_rejects_garbage_with_protocol_error(data):
    try:
        _codec.decode(data)
    except ProtocolError:
        pass


def test_codec_rejects_truncation_and_trailing_bytes():
    wire = _codec.encode("k", {"a": np.arange(10)})
    with pytest.raises(ProtocolError, match="truncated"):
        _codec.decode(wire[:-3])
    with pytest.raises(ProtocolError, match="trailing"):
        _codec.decode(wire + b"\x00")


def test_loopback_counts_bytes_and_round_trips():
    seen = {}

    def parity(body):
        seen["body"] = body
        return {"p": np.bitwise_xor.reduce(body["x"]).reshape(1)}

    chan = LoopbackChannel(Responder({"t.parity": parity}))
    reply = chan.request("t.parity", {"x": np.array([1, 0, 1, 1], dtype=np.uint8)})
    assert reply["p"][0] == 1
    assert chan.stats.round_trips == 1
    assert chan.stats.bytes_sent == len(_codec.encode("t.parity", {"x": np.array([1, 0, 1, 1], dtype=np.uint8)}))
    assert chan.stats.by_kind["t.parity"][0] == 1
    # Alice's handler got a decoded copy, not Bob's array object.
    assert isinstance(seen["body"]["x"], np.ndarray)


def test_unknown_kind_is_a_protocol_error():
    chan = LoopbackChannel(Responder())
    with pytest.raises(ProtocolError, match="no handler"):
        chan.request("nope", {})


def test_codec_round_trips_arrays_without_a_buffer_format():
    from qkdpost._codec import decode, encode

    a = np.array(["2026-01-01", "2026-11-28"], dtype="datetime64[D]")
    _, body = decode(encode("t.dates", {"a": a}))
    np.testing.assert_array_equal(body["a"], a)


@pytest.mark.parametrize("name", ["i4,4", "(2,)i4", "O", "|O8", "zz9", "f8" * 40])
def test_codec_refuses_non_plain_dtype_names(name):
    """A peer's dtype field is a plain name: numpy would parse (and literal-eval) comma strings."""
    body = _codec.encode("k", {"a": np.zeros(2, np.int32)})
    good = b"<i4"
    i = body.index(good)
    nb = name.encode()
    forged = body[: i - 1] + bytes([len(nb)]) + nb + body[i + len(good):]
    with pytest.raises(ProtocolError, match="malformed message"):
        _codec.decode(forged)


def test_codec_mutations_raise_only_protocol_errors():
    """Random byte flips and cuts of a message with every field type: a clean ProtocolError or a body, nothing else."""
    body = {"a": np.arange(12, dtype=np.int32).reshape(3, 4), "b": b"xy", "c": "s", "d": None, "e": True,
            "f": 1.5, "g": -3, "h": np.zeros((0, 4), np.int32)}
    wire = _codec.encode("k.x", body)
    rng = np.random.default_rng(11)
    refused = 0
    for _ in range(3000):
        w = bytearray(wire)
        for _ in range(int(rng.integers(1, 4))):
            w[int(rng.integers(len(w)))] = int(rng.integers(256))
        if rng.random() < 0.3:
            w = w[: int(rng.integers(len(w)))]
        try:
            _codec.decode(bytes(w))
        except ProtocolError:
            refused += 1
    assert 0 < refused < 3000


def _meet_in_handler(responder_concurrent):
    # two threads (two pipeline lanes' views of one channel) send at once; the
    # handler waits until both are inside it, which only happens if the channel
    # lets them through together
    import threading

    from qkdpost.pipeline.engine import SharedChannel

    meet = threading.Barrier(2, timeout=2.0)

    class Alice(Responder):
        concurrent = responder_concurrent

    def handler(body):
        meet.wait()
        return {"x": np.arange(int(body["n"]), dtype=np.int32)}

    shared = SharedChannel(LoopbackChannel(Alice({"t.meet": handler})))
    views = [shared.view(lane) for lane in (0, 1)]
    errors = []

    def go(view, n):
        try:
            assert list(view.request("t.meet", {"n": n})["x"]) == list(range(n))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(v, 3 + i)) for i, v in enumerate(views)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return shared, views, errors


def test_concurrent_loopback_lets_lanes_meet_and_counts_each_exchange_once():
    shared, views, errors = _meet_in_handler(True)
    assert errors == []
    inner = shared.inner
    assert inner.concurrent
    assert inner.stats.round_trips == 2 == sum(v.stats.round_trips for v in views)
    assert inner.stats.bytes_total == sum(v.stats.bytes_total for v in views)
    assert views[0].stats.bytes_received != views[1].stats.bytes_received  # each view counts its own reply


def test_loopback_serialises_requests_unless_the_responder_locks_for_itself():
    import threading

    shared, _, errors = _meet_in_handler(False)
    assert not shared.inner.concurrent
    assert errors and all(isinstance(e, threading.BrokenBarrierError) for e in errors)
