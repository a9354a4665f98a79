"""The streaming API for device wrappers: chunks in, finished key blocks out.

Bob (the driving party)::

    import qkdpost
    from qkdpost.transport import TcpChannel

    qkdpost.warmup()                       # compile kernels before the first block
    chan = TcpChannel("alice.example", 7421)
    with qkdpost.Session(cfg, role="bob", channel=chan, info=info, store="keys/") as s:
        for chunk in device:               # numpy arrays t (int64 ticks), ch (uint8)
            for key in s.feed(chunk.t, chunk.ch):
                deliver(key.block_id, key.bits)

Alice serves Bob's requests from another thread while her device feeds her::

    s = qkdpost.Session(cfg, role="alice", info=info, store="keys/")
    s.serve_in_background("0.0.0.0", 7421)
    for chunk in device:
        for key in s.feed(chunk.t, chunk.ch):
            deliver(key.block_id, key.bits)
    s.close()

Both get the same keys under the same ids; a key is yielded only after both
stores hold it (Bob) or after Bob confirmed (Alice).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..channel import Channel
from ..config import Config
from ..errors import ChannelError, ConfigError, InputError, ProtocolError
from ..io.model import StreamInfo
from ..keystore import KeyBlock, KeyStore
from ..report import Report
from .engine import LANE_KINDS, AliceEngine, BobEngine
from .front import AliceFront, BobFront

__all__ = ["Session"]

log = logging.getLogger(__name__)


def _default_stream_id(info: StreamInfo) -> str:
    if info.start_ns:
        return hashlib.sha256(json.dumps(info.to_json(), sort_keys=True).encode()).hexdigest()[:24]
    log.warning("StreamInfo.start_ns is 0 and no stream_id given: using a random stream id "
                "(re-running the same capture will not be recognised)")
    return "rnd" + secrets.token_hex(10)


class Session:
    """One party's streaming post-processing session.

    Parameters
    ----------
    config : Config, optional
        Both parties must use the same shared settings (checked at hello).
    role : {"alice", "bob"}
    channel : Channel
        Bob only: the channel to Alice (:class:`~qkdpost.transport.TcpChannel`,
        or a :class:`~qkdpost.channel.LoopbackChannel` around Alice's
        :attr:`responder` in one process).
    info : StreamInfo
        This party's stream metadata (tick length, channel map).
    store : str, Path or KeyStore
        Where final keys are written.
    stream_id : str, optional
        Stable id of this capture; blocks of a run are named after both
        parties' stream ids, so feeding the same capture again yields no
        duplicate keys. Default: derived from ``info`` when it has a start
        time, else random.
    """

    # handle() locks for itself: a loopback may call it from Bob's lanes at once
    concurrent = True

    def __init__(self, config: Config | None = None, *, role: str, info: StreamInfo,
                 store: str | Path | KeyStore, channel: Channel | None = None, stream_id: str | None = None,
                 kit: Any = None):
        self.cfg = config or Config()
        if role not in ("alice", "bob"):
            raise ConfigError(f"role={role!r}: must be 'alice' or 'bob'")
        if role == "bob" and channel is None:
            raise ConfigError("role='bob' needs channel=... (a TcpChannel to Alice, or a LoopbackChannel)")
        if role == "alice" and channel is not None:
            raise ConfigError("role='alice' takes no channel: Alice answers; serve her .responder instead")
        if not isinstance(info, StreamInfo):
            raise InputError(f"info: expected a qkdpost.io.StreamInfo, got {type(info).__name__}")
        self.role = role
        self.info = info
        self.store = store if isinstance(store, KeyStore) else KeyStore(store)
        self.report = Report(role, self.cfg.to_dict(), mode="session")
        self.stream_id = stream_id or _default_stream_id(info)
        self._lock = threading.RLock()
        self._closed = False
        self._server: threading.Thread | None = None
        self._server_stop = threading.Event()
        self._conn: Any = None  # Bob's connection while the background server answers it
        self._listener: Any = None
        self.port: int | None = None
        if role == "bob":
            assert channel is not None
            self.channel = channel
            self._bob = BobEngine(self.cfg, channel, self.store, self.report, stream_id=self.stream_id, kit=kit)
            self._front_b = BobFront(self.cfg, info, self._bob.front_channel)
            self._started = False
        else:
            self._front_a = AliceFront(self.cfg, info, emit=lambda seg: self._alice.push(seg))
            self._alice = AliceEngine(self.cfg, self.store, self.report, stream_id=self.stream_id,
                                      extra_handlers=self._front_a.handlers(), kit=kit)

    # -- Alice's answering side -------------------------------------------------
    @property
    def responder(self) -> "Session":
        """Alice's request handler (``handle(kind, body)``) for a channel or server."""
        if self.role != "alice":
            raise ConfigError("only Alice's session answers requests")
        return self

    def handle(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        if kind in LANE_KINDS:  # one lane's reconciliation state only: the engine locks that lane
            return self._alice.handle(kind, body)
        with self._lock:
            return self._alice.handle(kind, body)

    def serve_in_background(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Answer one Bob connection over TCP from a daemon thread; returns the port.

        The listening socket is bound here (an address in use raises
        :class:`~qkdpost.errors.ChannelError` at once) and closed by
        :meth:`close` or by leaving the ``with`` block, also when Bob never
        connected.
        """
        from ..transport import Server, auth_key_of

        if self._server is not None:
            raise ConfigError("serve_in_background() was already called on this session")
        server = Server(host, port, timeout_s=self.cfg.transport.timeout_s,
                        handshake_timeout_s=self.cfg.transport.connect_timeout_s, auth_key=auth_key_of(self.cfg))
        self._listener = server
        self.port = server.port

        def run() -> None:
            try:
                while not self._server_stop.is_set():
                    conn = server.accept(0.2)  # poll, so close() stops a server nobody connected to
                    if conn is None:
                        continue
                    self._conn = conn
                    if self._server_stop.is_set():  # aborted while Bob was connecting
                        conn.close()
                        break
                    reason = server.serve_one(conn, self)
                    log.info("Bob's session ended: %s", reason)
                    if reason != "closed":
                        with self._lock:
                            self._alice.abandon("peer_disconnected")
                    break
            except Exception:
                log.exception("Alice's server thread failed")
            finally:
                server.close()

        self._server = threading.Thread(target=run, name="qkdpost-alice", daemon=True)
        self._server.start()
        return self.port

    def _stop_server(self, wait_s: float) -> None:
        """Let a running Bob session end (up to ``wait_s``), then close the listening socket.

        A Bob session already accepted goes on on its own connection; no new
        one is accepted.
        """
        if self._server is None:
            return
        self._server.join(wait_s)
        self._server_stop.set()
        if self._listener is not None:
            self._listener.close()

    def _hang_up(self) -> None:
        """End a connected Bob's session now (an aborted Alice must not go on answering him)."""
        conn = self._conn
        if conn is not None:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # serve_one's next read ends; its thread closes the socket
            except OSError:
                pass

    # -- data in, keys out ---------------------------------------------------------
    def feed(self, t: np.ndarray, ch: np.ndarray) -> list[KeyBlock]:
        """Add a chunk of this party's timestamps; return the key blocks finished since the last call.

        Parameters
        ----------
        t : ndarray of int64, shape (k,)
            Detection times in ticks of ``info.tick_s``, non-decreasing.
        ch : ndarray of uint8, shape (k,)
            Detector channels (mapped by ``info.channel_map``).
        """
        if self._closed:
            raise InputError("Session.feed after close(): start a new Session")
        t_arr, ch_arr = _check_chunk(t, ch)
        if self.role == "alice":
            with self._lock:
                self._front_a.push(t_arr, ch_arr)
                return self._alice.take_finished()
        if not self._started:
            self._bob.start()
            self._started = True
        seg = self._front_b.push(t_arr, ch_arr)
        self.report.counts["detections_bob"] = self._front_b.events
        return self._bob.push(seg)

    def collect(self) -> list[KeyBlock]:
        """Key blocks finished since the last call, without feeding data."""
        if self.role == "alice":
            with self._lock:
                return self._alice.take_finished()
        return self._bob._collect() if self._started else []

    def close(self, timeout_s: float | None = None) -> list[KeyBlock]:
        """End of this party's stream: finish what can be finished, return the last keys.

        Bob waits (up to ``timeout_s``, default the transport timeout) for
        Alice's stream to end too, then processes the last full blocks.
        """
        if self._closed:
            return self.collect()
        self._closed = True
        if self.role == "alice":
            try:
                with self._lock:
                    self._front_a.finish()
            finally:
                self._stop_server(timeout_s if timeout_s is not None else self.cfg.transport.timeout_s)
            with self._lock:
                self.report.finish()
                return self._alice.take_finished()
        if not self._started:
            self._bob.start()
            self._started = True
        sift = self._front_b.sift
        sift.finish()
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.cfg.transport.timeout_s)
        while not sift.done:
            if not sift.step(self._bob.front_channel):
                if time.monotonic() > deadline:
                    raise ProtocolError("Bob's stream ended but Alice's did not within the timeout; "
                                        "call close() on Alice's session too")
                time.sleep(0.05)
        keys = self._bob.push(self._front_b.take())
        keys += self._bob.finish()
        self.report.finish()
        return keys

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True
            if self.role == "alice":
                try:
                    self._alice.abandon("session_aborted")
                finally:
                    self._stop_server(0.0)
                    self._hang_up()
            else:
                self._bob.abandon(exc)  # stop the back-half threads

    def write_report(self, out_dir: str | Path) -> Path:
        return self.report.write(out_dir)


def _check_chunk(t: Any, ch: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(t)
    ch = np.asarray(ch)
    if t.ndim != 1 or ch.ndim != 1 or len(t) != len(ch):
        raise InputError(f"t.shape={t.shape}, ch.shape={ch.shape}: need two 1-D arrays of equal length")
    if t.dtype.kind not in "iu":
        raise InputError(f"t.dtype={t.dtype}: timestamps must be integer ticks (int64), never floats")
    if ch.dtype.kind not in "iu":
        raise InputError(f"ch.dtype={ch.dtype}: channels must be integers 0..255 (uint8)")
    if ch.size and (int(ch.min()) < 0 or int(ch.max()) > 255):
        raise InputError("ch: values outside 0..255; channels are uint8")
    t = np.ascontiguousarray(t, dtype=np.int64)
    if t.size > 1 and bool(np.any(np.diff(t) < 0)):
        i = int(np.flatnonzero(np.diff(t) < 0)[0])
        raise InputError(f"t: time goes backwards at index {i + 1} ({int(t[i])} -> {int(t[i + 1])}); "
                         "chunks must be in time order")
    return t, np.ascontiguousarray(ch, dtype=np.uint8)
