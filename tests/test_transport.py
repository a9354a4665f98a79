"""TCP transport on 127.0.0.1: framing, handshake, timeouts, disconnects."""

import socket
import struct
import threading
import time

import numpy as np
import pytest

from qkdpost import _codec, transport
from qkdpost.channel import LoopbackChannel, Responder
from qkdpost.errors import ChannelError, ConfigError, PeerDisconnected, ProtocolError
from qkdpost.transport import Server, TcpChannel, parse_address, serve


def _handlers(log=None):
    def parity(body):
        return {"p": np.bitwise_xor.reduce(body["x"], axis=-1).astype(np.uint8)}

    def echo(body):
        return dict(body)

    def boom(body):
        raise ProtocolError("frame_ids [9] unknown to Alice")

    def crash(body):
        raise RuntimeError("secret 0101 must not leak")

    def slow(body):
        time.sleep(body["s"])
        return {}

    return {"t.parity": parity, "t.echo": echo, "t.boom": boom, "t.crash": crash, "t.slow": slow}


class _ServerThread:
    def __init__(self, timeout_s=5.0, max_sessions=1, responder=None):
        self.port = None
        self.ready = threading.Event()
        self.ended = []

        def on_listen(port):
            self.port = port
            self.ready.set()

        def run():
            serve(
                lambda: responder or Responder(_handlers()),
                "127.0.0.1",
                0,
                timeout_s=timeout_s,
                max_sessions=max_sessions,
                on_listen=on_listen,
                on_session_end=lambda r, why: self.ended.append(why),
                idle_timeout_s=10,
            )

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.ready.wait(5)

    def join(self):
        self.thread.join(15)
        assert not self.thread.is_alive()


def test_round_trip_counts_same_bytes_as_loopback():
    srv = _ServerThread()
    x = np.random.default_rng(1).integers(0, 2, (5, 300), dtype=np.uint8)
    with TcpChannel("127.0.0.1", srv.port, timeout_s=5) as chan:
        reply = chan.request("t.parity", {"x": x, "note": "hi", "n": 3})
        big = chan.request("t.echo", {"a": np.arange(200_000, dtype=np.int64)})  # > 64 KiB frame
    srv.join()
    np.testing.assert_array_equal(reply["p"], np.bitwise_xor.reduce(x, axis=-1))
    np.testing.assert_array_equal(big["a"], np.arange(200_000))
    loop = LoopbackChannel(Responder(_handlers()))
    loop.request("t.parity", {"x": x, "note": "hi", "n": 3})
    loop.request("t.echo", {"a": np.arange(200_000, dtype=np.int64)})
    assert chan.stats.as_dict() == loop.stats.as_dict()
    assert srv.ended == ["closed"]


def test_handler_errors_reach_bob_and_server_keeps_serving():
    srv = _ServerThread()
    with TcpChannel("127.0.0.1", srv.port, timeout_s=5) as chan:
        with pytest.raises(ProtocolError, match=r"Alice could not answer 't.boom': ProtocolError: frame_ids \[9\]"):
            chan.request("t.boom", {})
        with pytest.raises(ProtocolError, match="internal error") as ei:
            chan.request("t.crash", {})
        assert "0101" not in str(ei.value)
        with pytest.raises(ProtocolError, match="no handler"):
            chan.request("t.unknown", {})
        assert chan.request("t.echo", {"k": 1}) == {"k": 1}
    srv.join()


def test_reply_timeout_is_peer_disconnected():
    srv = _ServerThread()
    chan = TcpChannel("127.0.0.1", srv.port, timeout_s=0.3)
    with pytest.raises(PeerDisconnected, match="no data from peer"):
        chan.request("t.slow", {"s": 1.0})
    with pytest.raises(PeerDisconnected, match="closed"):
        chan.request("t.echo", {})
    srv.join()


def test_server_ends_session_when_bob_goes_quiet():
    srv = _ServerThread(timeout_s=0.3)
    chan = TcpChannel("127.0.0.1", srv.port, timeout_s=5)
    chan.request("t.echo", {})
    srv.join()  # session ends on Alice's timeout, server returns
    assert srv.ended and "no request from Bob" in srv.ended[0]
    with pytest.raises(PeerDisconnected):
        chan.request("t.echo", {})


def test_peer_vanishing_mid_request_is_peer_disconnected():
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]

    def fake_alice():
        conn, _ = lsock.accept()
        conn.recv(64)
        hello = transport._hello(0)
        conn.sendall(struct.pack("<I", len(hello)) + hello)
        conn.recv(4)  # start of the request, then die
        conn.close()

    t = threading.Thread(target=fake_alice, daemon=True)
    t.start()
    chan = TcpChannel("127.0.0.1", port, timeout_s=5)
    with pytest.raises(PeerDisconnected):
        chan.request("t.echo", {"a": np.zeros(10)})
    t.join(5)
    lsock.close()


def test_connect_refused_is_peer_disconnected():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(PeerDisconnected, match="is 'qkdpost serve' running"):
        TcpChannel("127.0.0.1", port, connect_timeout_s=2)


def test_version_mismatch_and_garbage_rejected():
    with Server("127.0.0.1", 0, timeout_s=2) as server:
        results = []

        def acceptor():
            for _ in range(2):
                results.append(server.accept(5))

        t = threading.Thread(target=acceptor, daemon=True)
        t.start()
        # wrong version
        c = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        bad = struct.pack("<8sHBB", transport.MAGIC, 99, _codec.VERSION, 0)
        c.sendall(struct.pack("<I", len(bad)) + bad)
        (n,) = struct.unpack("<I", c.recv(4))
        magic, _, _, status = struct.unpack("<8sHBB", c.recv(n))
        assert status == 1
        c.close()
        # an HTTP client
        c = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        c.sendall(b"GET / HTTP/1.1\r\n\r\n")
        t.join(10)
        c.close()
        assert results == [None, None]


def test_oversized_handshake_rejected_at_once():
    # Anyone can connect before the handshake: a length prefix larger than the
    # hello frame (here "GET " = 542 MB) must be refused at once, not buffered
    # (a pre-handshake allocation of up to 2 GiB) and waited for until timeout.
    with Server("127.0.0.1", 0, timeout_s=60) as server:
        results = []
        t = threading.Thread(target=lambda: results.append(server.accept(10)), daemon=True)
        t.start()
        c = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        c.sendall(b"GET / HTTP/1.1\r\n\r\n")
        try:
            assert c.recv(64) == b""  # closed by Alice, no 60 s wait
        except ConnectionResetError:
            pass
        c.close()
        t.join(10)
        assert results == [None]


def test_client_rejects_non_qkdpost_server():
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)

    def fake():
        conn, _ = lsock.accept()
        conn.recv(64)
        junk = b"SSH-2.0-OpenSSH"
        conn.sendall(struct.pack("<I", len(junk)) + junk)
        time.sleep(0.5)
        conn.close()

    t = threading.Thread(target=fake, daemon=True)
    t.start()
    with pytest.raises(ChannelError, match="not qkdpost"):
        TcpChannel("127.0.0.1", lsock.getsockname()[1], timeout_s=2)
    t.join(5)
    lsock.close()


def test_parse_address():
    assert parse_address("10.0.0.2:7421") == ("10.0.0.2", 7421)
    assert parse_address("7421") == ("127.0.0.1", 7421)
    assert parse_address("[::1]:80") == ("::1", 80)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_address("host:http")
