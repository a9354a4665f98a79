"""Session (device-wrapper API, toy stage kit) and the TCP runners (real stages) on simulated BBM92 links."""

import sys
import threading

import numpy as np
import pytest

from qkdpost.channel import LoopbackChannel
from qkdpost.config import Config
from qkdpost.errors import ConfigError, InputError
from qkdpost.keystore import KeyStore
from qkdpost.pipeline.run import run_bob, serve_alice
from qkdpost.pipeline.session import Session
from qkdpost.simulate import BBM92Config, generate, write_link

from pipeline_kit import ToyKit

DUR = 1.2


@pytest.fixture(scope="module")
def link():
    return generate(BBM92Config(duration_s=DUR), seed=11)


@pytest.fixture(scope="module")
def link_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("link")
    write_link(BBM92Config(duration_s=DUR), d, seed=12)
    return d


def _cfg():
    return Config().replace(block_bits=1 << 13, seed=3, timeout_s=20, acquisition_s=0.5)


def _chunks(party, n=8):
    edges = np.linspace(0, len(party.t), n + 1).astype(int)
    for a, b in zip(edges[:-1], edges[1:]):
        yield party.t[a:b], party.ch[a:b]


def test_session_loopback_both_sides_get_identical_keys(link, tmp_path):
    cfg, kit = _cfg(), ToyKit()
    alice = Session(cfg, role="alice", info=link.alice.info, store=tmp_path / "a", stream_id="capA", kit=kit)
    keys_a, keys_b = [], []
    with Session(cfg, role="bob", info=link.bob.info, store=tmp_path / "b", stream_id="capB", kit=kit,
                 channel=LoopbackChannel(alice.responder)) as bob:
        for (ta, ca), (tb, cb) in zip(_chunks(link.alice), _chunks(link.bob)):
            keys_a += alice.feed(ta, ca)
            keys_b += bob.feed(tb, cb)
        keys_a += alice.close()
        keys_b += bob.close()
    keys_a += alice.collect()  # Alice's last commits arrived while Bob closed
    sa, sb = KeyStore(tmp_path / "a"), KeyStore(tmp_path / "b")
    assert len(sb.ids()) >= 3 and sa.ids() == sb.ids()
    assert [k.block_id for k in keys_a] == sa.ids() == [k.block_id for k in keys_b]
    for k in keys_a:
        np.testing.assert_array_equal(k.bits, sb.read(k.block_id).bits)
    assert bob.report.totals()["blocks_ok"] == len(sb.ids())


def test_session_feed_validates_chunks(link, tmp_path):
    s = Session(_cfg(), role="alice", info=link.alice.info, store=tmp_path, stream_id="x", kit=ToyKit())
    with pytest.raises(InputError, match="never floats"):
        s.feed(np.array([1.0, 2.0]), np.array([0, 1], np.uint8))
    with pytest.raises(InputError, match="backwards at index 2"):
        s.feed(np.array([1, 5, 3]), np.array([0, 1, 2], np.uint8))
    with pytest.raises(InputError, match="equal length"):
        s.feed(np.array([1, 2]), np.array([0], np.uint8))
    with pytest.raises(ConfigError, match="needs channel"):
        Session(_cfg(), role="bob", info=link.bob.info, store=tmp_path, kit=ToyKit())
    with pytest.raises(ConfigError, match="role='carol'"):
        Session(_cfg(), role="carol", info=link.bob.info, store=tmp_path, kit=ToyKit())


@pytest.mark.slow  # the two-process smoke test in test_cli_run.py covers this path by default
def test_tcp_two_parties_in_threads(link_files, tmp_path):
    # Both parties share one interpreter here: hand the GIL over quickly at
    # each blocking socket call (two real processes do not have this issue).
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        _tcp_in_threads(link_files, tmp_path)
    finally:
        sys.setswitchinterval(old)


def _tcp_in_threads(link_files, tmp_path):
    cfg = _cfg()
    port = {}
    ready = threading.Event()

    def on_listen(p):
        port["p"] = p
        ready.set()

    t = threading.Thread(target=serve_alice, args=(link_files / "alice.arrow", tmp_path / "alice", cfg),
                         kwargs=dict(port=0, max_sessions=1, on_listen=on_listen, idle_timeout_s=30, plot=False),
                         daemon=True)
    t.start()
    assert ready.wait(10)
    rep = run_bob(link_files / "bob.arrow", tmp_path / "bob", ("127.0.0.1", port["p"]), cfg, plot=False)
    t.join(30)
    sa, sb = KeyStore(tmp_path / "alice"), KeyStore(tmp_path / "bob")
    assert rep.totals()["blocks_ok"] >= 2 and sa.ids() == sb.ids()
    for bid in sb.ids():
        assert (tmp_path / "alice/keys" / bid / "key.bin").read_bytes() == (tmp_path / "bob/keys" / bid / "key.bin").read_bytes()
    assert (tmp_path / "alice/report.json").exists() and (tmp_path / "bob/report.json").exists()
    assert not (tmp_path / "bob/report.png").exists()


def test_session_over_tcp_alice_serves_in_background(link, tmp_path):
    """The documented device-wrapper setup: Alice serves from a thread, Bob connects over TCP."""
    from qkdpost.transport import TcpChannel

    cfg, kit = _cfg(), ToyKit()
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # both parties share this interpreter here
    try:
        alice = Session(cfg, role="alice", info=link.alice.info, store=tmp_path / "a", stream_id="tA", kit=kit)
        port = alice.serve_in_background("127.0.0.1", 0)
        keys_a, keys_b = [], []
        chunks_a = list(_chunks(link.alice, 4))
        for ta, ca in chunks_a:  # Alice's device runs ahead here; Bob's requests wait for nothing
            keys_a += alice.feed(ta, ca)
        with TcpChannel("127.0.0.1", port, timeout_s=20) as chan:
            bob = Session(cfg, role="bob", info=link.bob.info, store=tmp_path / "b", stream_id="tB", kit=kit,
                          channel=chan)
            for tb, cb in _chunks(link.bob, 4):
                keys_b += bob.feed(tb, cb)
            keys_a += alice.close(timeout_s=0)
            keys_b += bob.close()
        keys_a += alice.close(timeout_s=20)  # joins the server thread once Bob hung up
    finally:
        sys.setswitchinterval(old)
    sa, sb = KeyStore(tmp_path / "a"), KeyStore(tmp_path / "b")
    assert sb.ids() and sa.ids() == sb.ids() == [k.block_id for k in keys_b]
    assert sorted(k.block_id for k in keys_a) == sa.ids()
    for k in keys_b:
        np.testing.assert_array_equal(k.bits, sa.read(k.block_id).bits)


def _back_half_threads(deadline_s=5.0):
    import time

    t_end = time.monotonic() + deadline_s
    while True:
        alive = [t.name for t in threading.enumerate() if t.name.startswith(("qkdpost-lane", "qkdpost-store"))]
        if not alive or time.monotonic() > t_end:
            return alive


def _fail_after_back_half_started(monkeypatch):
    """Make Bob's front thread fail once the back-half threads are running."""
    from qkdpost.errors import PeerDisconnected
    from qkdpost.pipeline.engine import BobEngine

    orig = BobEngine.push

    def push(self, seg):
        out = orig(self, seg)
        if self._workers:
            raise PeerDisconnected("simulated loss on the front thread")
        return out

    monkeypatch.setattr(BobEngine, "push", push)


def test_front_failure_stops_back_half_threads_in_file_runs(link_files, tmp_path, monkeypatch):
    # A failure on Bob's front thread (sifting over a lost channel) must not leave
    # the back-half threads blocked forever on their queues (run_bob reconnects and
    # would pile up two threads per lost session).
    from qkdpost.errors import PeerDisconnected
    from qkdpost.pipeline.run import run_local

    assert _back_half_threads(0) == []
    _fail_after_back_half_started(monkeypatch)
    cfg = _cfg().replace(workers=2, chunk_events=1024)
    with pytest.raises(PeerDisconnected):
        run_local(link_files / "alice.arrow", link_files / "bob.arrow", tmp_path, cfg, kit=ToyKit(), plot=False)
    assert _back_half_threads() == []


def test_session_exit_on_error_stops_back_half_threads(link, tmp_path, monkeypatch):
    from qkdpost.errors import PeerDisconnected

    assert _back_half_threads(0) == []
    _fail_after_back_half_started(monkeypatch)
    cfg, kit = _cfg().replace(workers=2), ToyKit()
    alice = Session(cfg, role="alice", info=link.alice.info, store=tmp_path / "a", stream_id="capA", kit=kit)
    with pytest.raises(PeerDisconnected):
        with Session(cfg, role="bob", info=link.bob.info, store=tmp_path / "b", stream_id="capB", kit=kit,
                     channel=LoopbackChannel(alice.responder)) as bob:
            for (ta, ca), (tb, cb) in zip(_chunks(link.alice, 16), _chunks(link.bob, 16)):
                alice.feed(ta, ca)
                bob.feed(tb, cb)
    assert _back_half_threads() == []


def _assert_port_free(port):
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # no SO_REUSEADDR: fails while anything listens
    try:
        s.bind(("127.0.0.1", port))
        s.listen(1)
    finally:
        s.close()


@pytest.mark.parametrize("how", ["close", "exit_on_error"])
def test_alice_listening_socket_closed_when_bob_never_connects(link, tmp_path, how):
    alice = Session(_cfg(), role="alice", info=link.alice.info, store=tmp_path, stream_id="lone", kit=ToyKit())
    port = alice.serve_in_background("127.0.0.1", 0)
    if how == "close":
        alice.close(timeout_s=0.1)
    else:
        with pytest.raises(RuntimeError, match="device failed"):
            with alice:
                raise RuntimeError("device failed")
    _assert_port_free(port)  # before the fix: EADDRINUSE, Alice kept listening for a Bob who never came
    assert _alice_thread_ends()


def _alice_thread_ends(deadline_s=2.0):
    import time

    t_end = time.monotonic() + deadline_s
    while time.monotonic() < t_end:
        if not any(t.name == "qkdpost-alice" and t.is_alive() for t in threading.enumerate()):
            return True
        time.sleep(0.05)
    return False


def test_serve_in_background_on_a_port_in_use_raises_channel_error(link, tmp_path):
    import socket

    from qkdpost.errors import ChannelError

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        alice = Session(_cfg(), role="alice", info=link.alice.info, store=tmp_path, stream_id="b", kit=ToyKit())
        with pytest.raises(ChannelError, match="cannot listen"):
            alice.serve_in_background("127.0.0.1", busy.getsockname()[1])
    finally:
        busy.close()


def test_alice_aborted_by_an_error_stops_answering_a_connected_bob(link, tmp_path):
    """Review finding: an Alice whose ``with`` block ended on an error closed only her listener and went
    on answering the Bob already connected, from an abandoned engine. Now his connection ends too."""
    import time

    from qkdpost.errors import PeerDisconnected
    from qkdpost.transport import TcpChannel

    alice = Session(_cfg(), role="alice", info=link.alice.info, store=tmp_path, stream_id="abort", kit=ToyKit())
    port = alice.serve_in_background("127.0.0.1", 0)
    chan = TcpChannel("127.0.0.1", port, timeout_s=5)
    try:
        t_end = time.monotonic() + 5
        while alice._conn is None and time.monotonic() < t_end:  # her thread has accepted Bob
            time.sleep(0.02)
        with pytest.raises(RuntimeError, match="device failed"):
            with alice:
                raise RuntimeError("device failed")
        with pytest.raises(PeerDisconnected):
            chan.request("pipe.pending", {})
    finally:
        chan.close()
    assert _alice_thread_ends()
