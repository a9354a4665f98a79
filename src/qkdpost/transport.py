"""The classical channel over TCP: Bob connects, Alice serves.

Wire format
-----------
Each frame is ``u32 length (little endian) | payload``. The first frame in
each direction is the handshake::

    b"QKDPOST\\0" | u16 transport version | u8 codec version | u8 status

Bob sends it with status 0; Alice answers with status 0 (accepted) or 1
(version mismatch, then closes). Every later frame is one message encoded by
:mod:`qkdpost._codec` (the exact bytes the loopback channel counts): Bob's
request ``kind``, Alice's reply ``kind + ".reply"``, or ``kind + ".error"``
with fields ``error`` and ``message`` when her handler failed (Bob raises
:class:`~qkdpost.errors.ProtocolError`; Alice keeps serving).

Failures on the wire become :class:`~qkdpost.errors.PeerDisconnected` (the
peer closed, reset, or did not answer within the timeout) or
:class:`~qkdpost.errors.ChannelError` (framing or handshake broken).

The channel is not authenticated here: in deployment it runs over an
authenticated link (e.g. TLS with pre-shared keys or a Wegman-Carter MAC
layer), which this module does not provide.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from typing import Any, Callable, Mapping, Protocol

from . import _codec
from .channel import Channel
from .errors import ChannelError, InputError, PeerDisconnected, ProtocolError, QkdpostError

__all__ = ["TcpChannel", "serve", "Server", "parse_address", "TRANSPORT_VERSION", "MAX_FRAME"]

log = logging.getLogger(__name__)

TRANSPORT_VERSION = 1
MAGIC = b"QKDPOST\x00"
_LEN = struct.Struct("<I")
_HELLO = struct.Struct("<8sHBB")
MAX_FRAME = 1 << 31  # 2 GiB: a 10^8-bit block as uint8 plus headroom


class Handles(Protocol):
    def handle(self, kind: str, body: dict[str, Any]) -> dict[str, Any]: ...


def parse_address(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``"HOST:PORT"`` or ``"PORT"`` → (host, port), with a clear error."""
    host, sep, port_s = text.rpartition(":")
    if not sep:
        host, port_s = default_host, text
    host = host.strip("[]") or default_host
    try:
        port = int(port_s)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        from .errors import ConfigError

        raise ConfigError(f"address={text!r}: expected HOST:PORT with a port in 0..65535, e.g. 127.0.0.1:7421")
    return host, port


def _recv_exact(sock: socket.socket, n: int, what: str) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        try:
            k = sock.recv_into(view[got:], min(n - got, 1 << 24))
        except socket.timeout:
            raise PeerDisconnected(f"no data from peer for {sock.gettimeout()} s while reading {what}") from None
        except OSError as exc:
            raise PeerDisconnected(f"connection lost while reading {what}: {exc}") from None
        if k == 0:
            raise PeerDisconnected(f"peer closed the connection while {what} was expected ({got}/{n} bytes)")
        got += k
    return bytes(buf)


def _send_frame(sock: socket.socket, payload: bytes, what: str) -> None:
    if len(payload) >= MAX_FRAME:
        raise ChannelError(f"{what}: message of {len(payload)} bytes exceeds the {MAX_FRAME}-byte frame limit")
    try:
        header = _LEN.pack(len(payload))
        if len(payload) < 65536:
            sock.sendall(header + payload)  # one segment for small messages
        else:
            sock.sendall(header)
            sock.sendall(payload)  # no copy of a large payload
    except socket.timeout:
        raise PeerDisconnected(f"peer did not accept {what} within {sock.gettimeout()} s") from None
    except OSError as exc:
        raise PeerDisconnected(f"connection lost while sending {what}: {exc}") from None


def _recv_frame(sock: socket.socket, what: str, limit: int = MAX_FRAME) -> bytes:
    """One frame of fewer than ``limit`` bytes (the handshake passes its own size + 1)."""
    (n,) = _LEN.unpack(_recv_exact(sock, 4, what + " (length)"))
    if n >= limit:
        raise ChannelError(f"{what}: frame length {n} exceeds the limit {limit}; the peer is not qkdpost")
    return _recv_exact(sock, n, what)


def _hello(status: int = 0) -> bytes:
    return _HELLO.pack(MAGIC, TRANSPORT_VERSION, _codec.VERSION, status)


def _check_hello(data: bytes, who: str) -> int:
    if len(data) != _HELLO.size:
        raise ChannelError(f"handshake from {who}: {len(data)} bytes, expected {_HELLO.size}; the peer is not qkdpost")
    magic, tver, cver, status = _HELLO.unpack(data)
    if magic != MAGIC:
        raise ChannelError(f"handshake from {who}: wrong magic {magic!r}; the peer is not qkdpost")
    if tver != TRANSPORT_VERSION or cver != _codec.VERSION:
        raise ChannelError(
            f"handshake from {who}: peer speaks transport v{tver}/codec v{cver}, this build "
            f"v{TRANSPORT_VERSION}/v{_codec.VERSION}; run the same qkdpost version on both sides"
        )
    return status


class TcpChannel(Channel):
    """Bob's end of a TCP channel to Alice's :func:`serve` loop.

    Parameters
    ----------
    host, port :
        Alice's address.
    timeout_s : float
        Longest wait for one reply; longer means the peer is gone.
    connect_timeout_s : float
        Longest wait for the connection and the handshake.
    """

    def __init__(self, host: str, port: int, *, timeout_s: float = 60.0, connect_timeout_s: float = 10.0):
        super().__init__()
        self.address = (host, int(port))
        self.timeout_s = float(timeout_s)
        try:
            sock = socket.create_connection(self.address, timeout=connect_timeout_s)
        except OSError as exc:
            raise PeerDisconnected(
                f"cannot connect to Alice at {host}:{port}: {exc}; is 'qkdpost serve' running there?"
            ) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            _send_frame(sock, _hello(), "handshake")
            status = _check_hello(_recv_frame(sock, "handshake", _HELLO.size + 1), f"{host}:{port}")
            if status != 0:
                raise ChannelError(f"Alice at {host}:{port} refused the handshake (status {status})")
        except BaseException:
            sock.close()
            raise
        sock.settimeout(self.timeout_s)
        self._sock: socket.socket | None = sock

    def request(self, kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if self._sock is None:
            raise PeerDisconnected(f"channel to {self.address[0]}:{self.address[1]} is closed")
        wire = _codec.encode(kind, body)
        try:
            _send_frame(self._sock, wire, f"request {kind!r}")
            back = _recv_frame(self._sock, f"reply to {kind!r}")
        except ChannelError:
            self.close()
            raise
        rkind, rbody = _codec.decode(back)
        self.stats.record(kind, len(wire), len(back))
        if rkind == kind + ".error":
            raise ProtocolError(
                f"Alice could not answer {kind!r}: {rbody.get('error', '?')}: {rbody.get('message', '')}"
            )
        if rkind != kind + ".reply":
            self.close()
            raise ProtocolError(f"reply kind {rkind!r} to request {kind!r}; expected {kind + '.reply'!r}")
        return rbody

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None


class Server:
    """Alice's listening socket; :meth:`serve_one` runs one Bob connection.

    Parameters
    ----------
    host, port :
        Where to listen (port 0 picks a free one; see :attr:`port`).
    timeout_s : float
        Longest wait for Bob's next request within a session.
    handshake_timeout_s : float
        Longest wait for a new connection's handshake (Bob's
        ``connect_timeout_s``); short, so a peer that connects and sends
        nothing cannot hold the single accept loop for ``timeout_s``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, timeout_s: float = 60.0,
                 handshake_timeout_s: float = 10.0):
        self.timeout_s = float(timeout_s)
        self.handshake_timeout_s = float(handshake_timeout_s)
        if not self.handshake_timeout_s > 0:
            raise InputError(f"handshake_timeout_s={handshake_timeout_s!r}: must be > 0 seconds; "
                             "use Bob's connect_timeout_s, e.g. 10")
        self._lsock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._lsock.bind((host, port))
        except OSError as exc:
            self._lsock.close()
            raise ChannelError(f"cannot listen on {host}:{port}: {exc}; choose another --listen port") from None
        self._lsock.listen(1)
        self.host = host
        self.port = self._lsock.getsockname()[1]
        self._closed = threading.Event()

    def accept(self, accept_timeout_s: float | None = None) -> socket.socket | None:
        """Wait for Bob and do the handshake; None on timeout or close."""
        self._lsock.settimeout(accept_timeout_s)
        try:
            conn, addr = self._lsock.accept()
        except socket.timeout:
            return None
        except OSError:
            if self._closed.is_set():
                return None
            raise
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(self.handshake_timeout_s)
        try:
            hello = _recv_frame(conn, "handshake", _HELLO.size + 1)  # before it: nothing big is buffered
            try:
                _check_hello(hello, f"{addr[0]}:{addr[1]}")
            except ChannelError:
                _send_frame(conn, _hello(1), "handshake")
                raise
            _send_frame(conn, _hello(0), "handshake")
        except ChannelError as exc:
            log.warning("rejected connection from %s:%s: %s", addr[0], addr[1], exc)
            conn.close()
            return None
        conn.settimeout(self.timeout_s)
        log.info("Bob connected from %s:%s", addr[0], addr[1])
        return conn

    def serve_one(self, conn: socket.socket, responder: Handles) -> str:
        """Answer Bob's requests until he closes; returns why the session ended.

        ``"closed"`` when Bob hung up between requests (normal end),
        otherwise the text of the PeerDisconnected/ChannelError that ended it.
        """
        try:
            while True:
                try:
                    first = conn.recv(4, socket.MSG_PEEK)
                except socket.timeout:
                    return f"no request from Bob for {self.timeout_s} s"
                except OSError as exc:
                    return f"connection lost: {exc}"
                if not first:
                    return "closed"
                try:
                    data = _recv_frame(conn, "request")
                except ChannelError as exc:
                    return str(exc)
                try:
                    kind, body = _codec.decode(data)
                except ProtocolError as exc:
                    return f"undecodable request: {exc}"
                try:
                    reply_kind, reply = kind + ".reply", responder.handle(kind, body)
                except QkdpostError as exc:
                    log.warning("request %r failed: %s", kind, exc)
                    reply_kind, reply = kind + ".error", {"error": type(exc).__name__, "message": str(exc)}
                except Exception as exc:  # a bug on Alice's side: tell Bob, keep serving
                    log.exception("request %r failed", kind)
                    reply_kind, reply = kind + ".error", {"error": type(exc).__name__, "message": "internal error"}
                try:
                    _send_frame(conn, _codec.encode(reply_kind, reply), f"reply to {kind!r}")
                except ChannelError as exc:
                    return str(exc)
        finally:
            conn.close()

    def close(self) -> None:
        """Stop listening now: the port is free when this returns.

        ``shutdown`` first, because a thread waiting in :meth:`accept` keeps
        the kernel socket (and so the port) alive after a bare ``close``
        until its wait ends.
        """
        self._closed.set()
        try:
            self._lsock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed, or not supported for listeners on this platform
        self._lsock.close()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    make_responder: Callable[[], Handles],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    timeout_s: float = 60.0,
    handshake_timeout_s: float = 10.0,
    max_sessions: int | None = None,
    on_listen: Callable[[int], None] | None = None,
    on_session_end: Callable[[Handles, str], None] | None = None,
    idle_timeout_s: float | None = None,
) -> int:
    """Alice's server loop: accept Bob, answer with a fresh responder, repeat.

    Parameters
    ----------
    make_responder : callable
        Returns the object answering one session (``handle(kind, body)``).
    timeout_s, handshake_timeout_s : float
        See :class:`Server`.
    max_sessions : int, optional
        Stop after this many sessions (None: run until idle_timeout_s).
    on_listen : callable, optional
        Called with the bound port once listening (port 0 picks a free one).
    on_session_end : callable, optional
        Called with the responder and the reason when a session ends.
    idle_timeout_s : float, optional
        Stop when no Bob connects for this long (None: wait forever).

    Returns
    -------
    int
        Number of sessions served.
    """
    served = 0
    with Server(host, port, timeout_s=timeout_s, handshake_timeout_s=handshake_timeout_s) as server:
        if on_listen is not None:
            on_listen(server.port)
        while max_sessions is None or served < max_sessions:
            t0 = time.monotonic()
            conn = server.accept(idle_timeout_s)
            if conn is None:
                if idle_timeout_s is not None and time.monotonic() - t0 >= idle_timeout_s * 0.99:
                    log.info("no connection for %.1f s; stopping", idle_timeout_s)
                    break
                continue
            responder = make_responder()
            reason = server.serve_one(conn, responder)
            served += 1
            log.info("session %d ended: %s", served, reason)
            if on_session_end is not None:
                on_session_end(responder, reason)
    return served
