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
    def __init__(self, timeout_s=5.0, max_sessions=1, responder=None, auth_key=None):
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
                auth_key=auth_key,
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
        magic, _, _, status, _, _ = transport._HELLO.unpack(c.recv(n))
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


KEY = bytes(range(32))


def test_authenticated_channel_round_trip_and_same_counts():
    srv = _ServerThread(auth_key=KEY)
    x = np.random.default_rng(2).integers(0, 2, (3, 100), dtype=np.uint8)
    with TcpChannel("127.0.0.1", srv.port, timeout_s=5, auth_key=KEY) as chan:
        reply = chan.request("t.parity", {"x": x})
        again = chan.request("t.parity", {"x": x})  # same payload, next sequence number: still accepted
    srv.join()
    np.testing.assert_array_equal(reply["p"], again["p"])
    loop = LoopbackChannel(Responder(_handlers()))
    loop.request("t.parity", {"x": x})
    loop.request("t.parity", {"x": x})
    assert chan.stats.as_dict() == loop.stats.as_dict()  # tags are transport overhead, not protocol bytes
    assert srv.ended == ["closed"]


def test_auth_mismatches_are_refused_with_a_clear_reason():
    srv = _ServerThread(auth_key=KEY, max_sessions=None)
    with pytest.raises(ChannelError, match="requires an authenticated channel"):
        TcpChannel("127.0.0.1", srv.port, timeout_s=5)
    with TcpChannel("127.0.0.1", srv.port, timeout_s=5, auth_key=bytes(32)) as chan:  # another key
        with pytest.raises((ChannelError, PeerDisconnected)):
            chan.request("t.echo", {"a": 1})
    plain = _ServerThread()
    with pytest.raises(ChannelError, match="has no auth key"):
        TcpChannel("127.0.0.1", plain.port, timeout_s=5, auth_key=KEY)


class _Tamper:
    """A man in the middle on 127.0.0.1 that can rewrite frames from Bob to Alice."""

    def __init__(self, target_port, mutate):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1)
        self.port = self.lsock.getsockname()[1]
        self.mutate = mutate
        threading.Thread(target=self._run, args=(target_port,), daemon=True).start()

    @staticmethod
    def _frame(sock):
        try:
            head = b""
            while len(head) < 4:
                got = sock.recv(4 - len(head))
                if not got:
                    return None
                head += got
            (n,) = struct.unpack("<I", head)
            data = b""
            while len(data) < n:
                got = sock.recv(n - len(data))
                if not got:
                    return None
                data += got
            return data
        except OSError:  # the other direction closed this socket: the relay ends
            return None

    def _run(self, target_port):
        bob, _ = self.lsock.accept()
        alice = socket.create_connection(("127.0.0.1", target_port))

        def pump(src, dst, mutate):
            k = 0
            while True:
                f = self._frame(src)
                if f is None:
                    break
                f = mutate(k, f)
                k += 1
                try:
                    dst.sendall(struct.pack("<I", len(f)) + f)
                except OSError:
                    break
            dst.close()

        threading.Thread(target=pump, args=(alice, bob, lambda k, f: f), daemon=True).start()
        pump(bob, alice, self.mutate)


def _flip_last_request(k, f):
    if k == 2:  # hello, first request pass; the second request is altered (one payload bit)
        f = bytearray(f)
        f[20] ^= 1
        return bytes(f)
    return f


def _replay_first_request(state):
    def mutate(k, f):
        if k == 1:
            state["first"] = f
        if k == 2:
            return state["first"]  # Bob's first request again instead of his second
        return f
    return mutate


@pytest.mark.parametrize("attack", ["flip", "replay"])
def test_tampered_or_replayed_frames_end_the_session(attack):
    srv = _ServerThread(auth_key=KEY)
    mitm = _Tamper(srv.port, _flip_last_request if attack == "flip" else _replay_first_request({}))
    with TcpChannel("127.0.0.1", mitm.port, timeout_s=5, auth_key=KEY) as chan:
        chan.request("t.echo", {"a": np.arange(10)})
        with pytest.raises((ChannelError, PeerDisconnected)):
            chan.request("t.echo", {"a": np.arange(10, 20)})
    srv.join()
    assert len(srv.ended) == 1 and "authentication failed" in srv.ended[0]


def test_unauthenticated_man_in_the_middle_goes_unnoticed_without_a_key():
    """The control case: without a key the same bit flip is accepted (why deployments need auth_key)."""
    srv = _ServerThread()
    mitm = _Tamper(srv.port, lambda k, f: bytes(f[:-1]) + bytes([f[-1] ^ 1]) if k == 2 else f)
    with TcpChannel("127.0.0.1", mitm.port, timeout_s=5) as chan:
        chan.request("t.echo", {"a": np.arange(10)})
        back = chan.request("t.echo", {"a": np.arange(10, 20, dtype=np.uint8)})
    srv.join()
    assert back["a"][-1] == 19 ^ 1  # altered in flight, and nobody could tell


def test_auth_key_file_checks(tmp_path):
    good = tmp_path / "auth.key"
    good.write_bytes(KEY)
    good.chmod(0o600)
    assert transport.load_auth_key(good) == KEY
    good.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        transport.load_auth_key(good)
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 8)
    short.chmod(0o600)
    with pytest.raises(ConfigError, match="at least 32"):
        transport.load_auth_key(short)
    with pytest.raises(ConfigError, match="cannot read"):
        transport.load_auth_key(tmp_path / "missing.key")


@pytest.mark.parametrize("bad", [b"", b"short key", "a text key of more than 32 characters", bytearray(8)])
def test_short_or_non_bytes_auth_keys_are_refused_at_the_boundary(bad):
    """An empty or short key would "authenticate" with a tag anyone can compute: refused, not used."""
    from qkdpost.errors import InputError

    with pytest.raises(InputError, match="at least 32"):
        transport.Server("127.0.0.1", 0, auth_key=bad)
    with pytest.raises(InputError, match="at least 32"):
        TcpChannel("127.0.0.1", 1, auth_key=bad)  # refused before any connection attempt


# ---------------------------------------------------------------- several of Bob's threads on one connection


class _Concurrent(Responder):
    concurrent = True  # handle() may run in several threads at once


def _meet_handlers(meet):
    def meet_h(body):
        meet.wait()
        return {"v": int(body["v"])}

    def wait_h(body):
        time.sleep(float(body["s"]))
        return {"v": int(body["v"])}

    return {"t.meet": meet_h, "t.wait": wait_h}


def _in_threads(chan, kind, bodies):
    out, errors = [None] * len(bodies), []

    def go(i):
        try:
            out[i] = chan.request(kind, bodies[i])
        except Exception as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return out, errors


@pytest.mark.parametrize("key", [None, bytes(range(32))])
def test_two_threads_are_answered_at_once_by_a_concurrent_responder(key):
    # two lanes' requests meet inside Alice's handler: both are in flight on one
    # connection, and each thread gets its own reply (also with authentication)
    meet = threading.Barrier(2, timeout=3.0)
    srv = _ServerThread(responder=_Concurrent(_meet_handlers(meet)), auth_key=key)
    with TcpChannel("127.0.0.1", srv.port, timeout_s=5, auth_key=key) as chan:
        out, errors = _in_threads(chan, "t.meet", [{"v": 1}, {"v": 2}])
        assert errors == []
        assert sorted(r["v"] for r in out) == [1, 2] and out[0]["v"] == 1
        assert chan.stats.round_trips == 2
    srv.join()


def test_replies_out_of_order_reach_their_own_threads():
    srv = _ServerThread(responder=_Concurrent(_meet_handlers(threading.Barrier(1))))
    with TcpChannel("127.0.0.1", srv.port, timeout_s=5) as chan:
        out, errors = _in_threads(chan, "t.wait", [{"v": 7, "s": 0.4}, {"v": 8, "s": 0.0}, {"v": 9, "s": 0.2}])
        assert errors == []
        assert [r["v"] for r in out] == [7, 8, 9]
        assert chan.request("t.wait", {"v": 10, "s": 0.0})["v"] == 10  # the connection goes on
    srv.join()


def test_a_responder_that_does_not_lock_for_itself_is_called_one_request_at_a_time():
    meet = threading.Barrier(2, timeout=1.0)
    srv = _ServerThread(responder=Responder(_meet_handlers(meet)))
    with TcpChannel("127.0.0.1", srv.port, timeout_s=5) as chan:
        out, errors = _in_threads(chan, "t.meet", [{"v": 1}, {"v": 2}])
    srv.join()
    # the first handler waited alone and broke the barrier; the second found it broken
    assert errors and all(isinstance(e, ProtocolError) for e in errors)


def test_every_waiting_thread_learns_that_alice_is_gone():
    srv = _ServerThread(responder=_Concurrent(_meet_handlers(threading.Barrier(1))), timeout_s=5.0)
    chan = TcpChannel("127.0.0.1", srv.port, timeout_s=5)
    results = []

    def go(v):
        try:
            chan.request("t.wait", {"v": v, "s": 2.0})
            results.append("answered")
        except PeerDisconnected as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=go, args=(v,)) for v in (1, 2)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    chan._sock.shutdown(socket.SHUT_RDWR)  # the link drops while both wait
    for t in threads:
        t.join(10)
    assert len(results) == 2 and "answered" not in results
    with pytest.raises(PeerDisconnected, match="closed"):
        chan.request("t.wait", {"v": 3, "s": 0.0})
    srv.join()


@pytest.mark.parametrize("responder_cls", [Responder, _Concurrent])
def test_a_reply_the_codec_cannot_carry_comes_back_as_an_internal_error(responder_cls):
    srv = _ServerThread(responder=responder_cls({"t.bad": lambda body: {"x": object()}, **_handlers()}))
    with TcpChannel("127.0.0.1", srv.port, timeout_s=5) as chan:
        with pytest.raises(ProtocolError, match="internal error"):
            chan.request("t.bad", {})
        assert chan.request("t.echo", {"v": 1})["v"] == 1  # Alice keeps serving
    srv.join()
