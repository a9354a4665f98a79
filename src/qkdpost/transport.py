"""The classical channel over TCP: Bob connects, Alice serves.

Wire format
-----------
Each frame is ``u32 length (little endian) | payload``. The first frame in
each direction is the handshake::

    b"QKDPOST\\0" | u16 transport version | u8 codec version | u8 status
                  | u8 authenticated | 16-byte nonce

Bob sends it with status 0; Alice answers with status 0 (accepted), 1
(version mismatch), 2 (she requires authentication, Bob offered none) or 3
(Bob offered authentication, she has no key), closing on a refusal. Every
later frame is ``u32 request id | message``, the message encoded by
:mod:`qkdpost._codec` (the exact bytes the loopback channel counts): Bob's
request ``kind``, Alice's reply (same id) ``kind + ".reply"``, or
``kind + ".error"`` with fields ``error`` and ``message`` when her handler
failed (Bob raises :class:`~qkdpost.errors.ProtocolError`; Alice keeps
serving).

Several of Bob's threads (the pipeline's lanes) may have a request out at
once: the ids match replies to requests, so one lane's round trip does not
wait for another's. Alice answers them at once if her responder says it
locks for itself (``concurrent = True``, as the pipeline's Alice does),
otherwise one after the other in arrival order.

Authentication
--------------
QKD needs an authenticated classical channel. With a pre-shared key on both
sides (``auth_key``, at least 32 random bytes, :func:`load_auth_key`) every
frame after the handshake carries a 16-byte tag
``HMAC-SHA256(K, direction | u64 sequence number | payload)`` with the
session key ``K = HMAC-SHA256(psk, "qkdpost-auth-v1" | nonce_Bob | nonce_Alice)``
(fresh nonces from the OS CSPRNG per connection), checked in constant time:
a modified, injected, reordered, replayed or reflected frame, or a peer with
another key, ends the connection with :class:`~qkdpost.errors.ChannelError`.
This is computational authentication: keys stay secure afterwards even if
HMAC-SHA256 were broken later, as long as it holds during the run
(Mosca, Stebila, Ustaoglu, PQCrypto 2013, doi:10.1007/978-3-642-38616-9_9);
information-theoretic Wegman-Carter tags drawing on the key store are not
implemented. Without a key the channel is unauthenticated (tests, loopback
captures, or a link authenticated below this layer).

Failures on the wire become :class:`~qkdpost.errors.PeerDisconnected` (the
peer closed, reset, or did not answer within the timeout) or
:class:`~qkdpost.errors.ChannelError` (framing, handshake or authentication
broken).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import socket
import struct
import threading
import time
from typing import Any, Callable, Mapping, Protocol

from . import _codec
from .channel import Channel
from .errors import ChannelError, InputError, PeerDisconnected, ProtocolError, QkdpostError

__all__ = ["TcpChannel", "serve", "Server", "parse_address", "load_auth_key", "auth_key_of", "TRANSPORT_VERSION", "MAX_FRAME"]

log = logging.getLogger(__name__)

TRANSPORT_VERSION = 3  # 2: authentication flag and nonce in the handshake; 3: request ids
MAGIC = b"QKDPOST\x00"
_LEN = struct.Struct("<I")
_RID = struct.Struct("<I")  # request id, first in every frame after the handshake
_WORKERS = 8  # Alice's handler threads per connection (concurrent responders): Bob's lanes + his front half
_HEAD = struct.Struct("<8sHBB")  # magic, versions, status: the part every version shares
_HELLO = struct.Struct("<8sHBBB16s")
_TAG = 16
_REFUSALS = {1: "version mismatch", 2: "Alice requires an authenticated channel (give both sides the same "
             "auth key)", 3: "Alice has no auth key (give both sides the same auth key, or neither)"}
_MIN_KEY = 32
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


def _hello(status: int = 0, auth: bool = False, nonce: bytes = bytes(16)) -> bytes:
    return _HELLO.pack(MAGIC, TRANSPORT_VERSION, _codec.VERSION, status, int(auth), nonce)


def _check_hello(data: bytes, who: str) -> tuple[int, bool, bytes]:
    """(status, authenticated, nonce) of a peer's handshake; versions checked first."""
    if len(data) < _HEAD.size:
        raise ChannelError(f"handshake from {who}: {len(data)} bytes, expected {_HELLO.size}; the peer is not qkdpost")
    magic, tver, cver, status = _HEAD.unpack(data[: _HEAD.size])
    if magic != MAGIC:
        raise ChannelError(f"handshake from {who}: wrong magic {magic!r}; the peer is not qkdpost")
    if tver != TRANSPORT_VERSION or cver != _codec.VERSION:
        raise ChannelError(
            f"handshake from {who}: peer speaks transport v{tver}/codec v{cver}, this build "
            f"v{TRANSPORT_VERSION}/v{_codec.VERSION}; run the same qkdpost version on both sides"
        )
    if len(data) != _HELLO.size:
        raise ChannelError(f"handshake from {who}: {len(data)} bytes, expected {_HELLO.size}; the peer is not qkdpost")
    _, _, _, status, auth, nonce = _HELLO.unpack(data)
    return status, bool(auth), nonce


def load_auth_key(path: str | os.PathLike[str]) -> bytes:
    """Read a pre-shared authentication key file (>= 32 bytes, owner-only permissions).

    Make one with ``head -c 32 /dev/urandom > auth.key && chmod 600 auth.key``
    and give both parties the same file over a trusted path.
    """
    from .errors import ConfigError

    try:
        st = os.stat(path)
        with open(path, "rb") as fh:
            key = fh.read()
    except OSError as exc:
        raise ConfigError(f"auth_key_file={str(path)!r}: cannot read it ({exc.strerror}); create it with "
                          "'head -c 32 /dev/urandom > auth.key && chmod 600 auth.key'") from None
    if os.name == "posix" and st.st_mode & 0o077:
        raise ConfigError(f"auth_key_file={str(path)!r}: readable by group or others (mode "
                          f"{st.st_mode & 0o777:o}); run 'chmod 600 {path}'")
    if len(key) < _MIN_KEY:
        raise ConfigError(f"auth_key_file={str(path)!r}: holds {len(key)} bytes, at least {_MIN_KEY} random bytes "
                          "are needed; create it with 'head -c 32 /dev/urandom > auth.key'")
    return key


def auth_key_of(cfg: Any) -> bytes | None:
    """The pre-shared key a :class:`~qkdpost.config.Config` names (``transport.auth_key_file``), or None."""
    path = cfg.transport.auth_key_file
    return load_auth_key(path) if path else None


def _check_key(auth_key: Any) -> bytes | None:
    """The pre-shared key as given to TcpChannel/Server: None, or at least ``_MIN_KEY`` bytes."""
    if auth_key is None:
        return None
    if not isinstance(auth_key, (bytes, bytearray)) or len(auth_key) < _MIN_KEY:
        what = f"{len(auth_key)} bytes" if isinstance(auth_key, (bytes, bytearray)) else type(auth_key).__name__
        raise InputError(f"auth_key: {what}; a pre-shared key of at least {_MIN_KEY} random bytes is needed "
                         "(load_auth_key), or None for an unauthenticated channel")
    return bytes(auth_key)


class _Auth:
    """Per-connection frame tags (see the module docstring); one per party."""

    def __init__(self, psk: bytes, nonce_bob: bytes, nonce_alice: bytes, me: bytes):
        self._key = hmac.new(psk, b"qkdpost-auth-v1" + nonce_bob + nonce_alice, hashlib.sha256).digest()
        self._me, self._peer = me, (b"A" if me == b"B" else b"B")
        self._sent = 0
        self._received = 0

    def _tag(self, direction: bytes, seq: int, payload: bytes) -> bytes:
        mac = hmac.new(self._key, direction + struct.pack("<Q", seq), hashlib.sha256)
        mac.update(payload)
        return mac.digest()[:_TAG]

    def seal(self, payload: bytes) -> bytes:
        tag = self._tag(self._me, self._sent, payload)
        self._sent += 1
        return payload + tag

    def open(self, frame: bytes, what: str) -> bytes:
        if len(frame) < _TAG:
            raise ChannelError(f"{what}: frame of {len(frame)} bytes has no authentication tag")
        payload, tag = frame[:-_TAG], frame[-_TAG:]
        if not hmac.compare_digest(tag, self._tag(self._peer, self._received, payload)):
            raise ChannelError(f"{what}: authentication failed (frame {self._received} from the peer has a wrong "
                               "tag): the peer holds another auth key, or the link was tampered with")
        self._received += 1
        return payload


class TcpChannel(Channel):
    """Bob's end of a TCP channel to Alice's :func:`serve` loop.

    Thread-safe: several threads may wait for replies at once (each request
    carries an id); whichever waiting thread reads a reply hands it to its
    owner.

    Parameters
    ----------
    host, port :
        Alice's address.
    timeout_s : float
        Longest wait for one reply; longer means the peer is gone.
    connect_timeout_s : float
        Longest wait for the connection and the handshake.
    auth_key : bytes, optional
        Pre-shared key (:func:`load_auth_key`): every frame is authenticated
        (module docstring); Alice must hold the same key.
    """

    concurrent = True  # see above: requests of several threads may be out at once

    def __init__(self, host: str, port: int, *, timeout_s: float = 60.0, connect_timeout_s: float = 10.0,
                 auth_key: bytes | None = None):
        super().__init__()
        auth_key = _check_key(auth_key)
        self.address = (host, int(port))
        self.timeout_s = float(timeout_s)
        self._auth: _Auth | None = None
        try:
            sock = socket.create_connection(self.address, timeout=connect_timeout_s)
        except OSError as exc:
            raise PeerDisconnected(
                f"cannot connect to Alice at {host}:{port}: {exc}; is 'qkdpost serve' running there?"
            ) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            nonce = secrets.token_bytes(16)
            _send_frame(sock, _hello(0, auth_key is not None, nonce), "handshake")
            status, auth, alice_nonce = _check_hello(_recv_frame(sock, "handshake", _HELLO.size + 1), f"{host}:{port}")
            if status != 0:
                why = _REFUSALS.get(status, f"status {status}")
                raise ChannelError(f"Alice at {host}:{port} refused the handshake: {why}")
            if auth != (auth_key is not None):
                raise ChannelError(f"Alice at {host}:{port} answered without authentication to an authenticated "
                                   "handshake; the peer is not a qkdpost server holding the auth key")
            if auth_key is not None:
                self._auth = _Auth(auth_key, nonce, alice_nonce, b"B")
        except BaseException:
            sock.close()
            raise
        sock.settimeout(self.timeout_s)
        self._sock: socket.socket | None = sock
        self._send_lock = threading.Lock()  # one frame at a time, sealed in sending order
        self._cv = threading.Condition()  # guards the fields below
        self._next_id = 0
        self._waiting: set[int] = set()  # ids sent, reply not read yet
        self._replies: dict[int, bytes] = {}  # replies read by another thread than their owner
        self._reading = False  # one thread reads the socket at a time
        self._broken: ChannelError | None = None

    def request(self, kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.exchange(kind, body)[0]

    def exchange(self, kind: str, body: Mapping[str, Any]) -> tuple[dict[str, Any], int, int]:
        wire = _codec.encode(kind, body)
        with self._send_lock:
            sock = self._live_socket(kind)
            with self._cv:
                rid = self._next_id
                self._next_id = (rid + 1) & 0xFFFFFFFF
                self._waiting.add(rid)
            frame = _RID.pack(rid) + wire
            try:
                _send_frame(sock, frame if self._auth is None else self._auth.seal(frame), f"request {kind!r}")
            except ChannelError as exc:
                self._fail(exc)
                raise
        back = self._reply(rid, kind)
        rkind, rbody = _codec.decode(back)
        with self._cv:
            self.stats.record(kind, len(wire), len(back))
        if rkind == kind + ".error":
            raise ProtocolError(
                f"Alice could not answer {kind!r}: {rbody.get('error', '?')}: {rbody.get('message', '')}"
            )
        if rkind != kind + ".reply":
            self.close()
            raise ProtocolError(f"reply kind {rkind!r} to request {kind!r}; expected {kind + '.reply'!r}")
        return rbody, len(wire), len(back)

    def _live_socket(self, kind: str) -> socket.socket:
        sock = self._sock
        if self._broken is not None:
            raise type(self._broken)(f"channel to {self.address[0]}:{self.address[1]} is closed: it failed "
                                     f"earlier ({self._broken}); {kind!r} was not sent")
        if sock is None:
            raise PeerDisconnected(f"channel to {self.address[0]}:{self.address[1]} is closed")
        return sock

    def _reply(self, rid: int, kind: str) -> bytes:
        """The reply to request ``rid``: read by this thread, or by another one that got it first."""
        what = f"reply to {kind!r}"
        while True:
            with self._cv:
                while True:
                    if rid in self._replies:
                        return self._replies.pop(rid)
                    if self._broken is not None:
                        self._waiting.discard(rid)
                        raise type(self._broken)(f"{what}: {self._broken}")
                    if not self._reading:
                        self._reading = True
                        break
                    self._cv.wait()
            try:  # this thread reads the next frame, whoever it is for
                sock = self._live_socket(kind)
                frame = _recv_frame(sock, what)
                if self._auth is not None:
                    frame = self._auth.open(frame, what)
                if len(frame) < _RID.size:
                    raise ChannelError(f"{what}: frame of {len(frame)} bytes has no request id")
                (got,) = _RID.unpack_from(frame)
            except ChannelError as exc:
                self._fail(exc)
                raise
            with self._cv:
                self._reading = False
                self._cv.notify_all()
                if got not in self._waiting:
                    exc = ChannelError(f"{what}: Alice answered request id {got}, which is not waiting for a "
                                       "reply; the peer is not qkdpost")
                else:
                    self._waiting.discard(got)
                    if got == rid:
                        return frame[_RID.size:]
                    self._replies[got] = frame[_RID.size:]
                    continue
            self._fail(exc)
            raise exc

    def _fail(self, exc: ChannelError) -> None:
        """The connection is unusable: every thread waiting for a reply gets the error."""
        with self._cv:
            if self._broken is None:
                self._broken = exc
            self._reading = False
            self._cv.notify_all()
        self.close()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it
            except OSError:
                pass
            sock.close()


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
    auth_key : bytes, optional
        Pre-shared key (:func:`load_auth_key`): Bob must offer the same key;
        unauthenticated peers are refused.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, timeout_s: float = 60.0,
                 handshake_timeout_s: float = 10.0, auth_key: bytes | None = None):
        self.timeout_s = float(timeout_s)
        self._key = _check_key(auth_key)
        self._auths: dict[socket.socket, _Auth] = {}  # per accepted connection, taken by serve_one
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
                _, auth, bob_nonce = _check_hello(hello, f"{addr[0]}:{addr[1]}")
            except ChannelError:
                _send_frame(conn, _hello(1), "handshake")
                raise
            if auth != (self._key is not None):
                status = 2 if self._key is not None else 3
                _send_frame(conn, _hello(status), "handshake")
                raise ChannelError(f"handshake from {addr[0]}:{addr[1]}: {_REFUSALS[status]}")
            nonce = secrets.token_bytes(16)
            _send_frame(conn, _hello(0, auth, nonce), "handshake")
            if self._key is not None:
                self._auths[conn] = _Auth(self._key, bob_nonce, nonce, b"A")
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
        A responder with ``concurrent = True`` (it locks for itself) gets
        each request in a worker thread, so Bob's threads are answered at
        once; any other is called in arrival order, one request at a time.
        """
        auth = self._auths.pop(conn, None)
        if self._key is not None and auth is None:
            conn.close()
            return "connection was not accepted by this server's handshake"
        send_lock = threading.Lock()
        ended: list[str] = []  # why a worker could not send its reply
        busy = [0]  # requests being answered (Bob waits for them: no idle timeout meanwhile)

        def answer(rid: int, kind: str, body: dict[str, Any]) -> None:
            try:
                reply_kind, reply = kind + ".reply", responder.handle(kind, body)
            except QkdpostError as exc:
                log.warning("request %r failed: %s", kind, exc)
                reply_kind, reply = kind + ".error", {"error": type(exc).__name__, "message": str(exc)}
            except Exception as exc:  # a bug on Alice's side: tell Bob, keep serving
                log.exception("request %r failed", kind)
                reply_kind, reply = kind + ".error", {"error": type(exc).__name__, "message": "internal error"}
            try:
                frame = _RID.pack(rid) + _codec.encode(reply_kind, reply)
            except Exception as exc:  # a reply the codec cannot carry is a bug on Alice's side, too
                log.exception("reply to %r could not be encoded", kind)
                frame = _RID.pack(rid) + _codec.encode(kind + ".error", {"error": type(exc).__name__,
                                                                         "message": "internal error"})
            with send_lock:
                busy[0] -= 1
                try:
                    _send_frame(conn, frame if auth is None else auth.seal(frame), f"reply to {kind!r}")
                except ChannelError as exc:
                    ended.append(str(exc))
                    try:
                        conn.shutdown(socket.SHUT_RDWR)  # wakes the reader, which ends the session
                    except OSError:
                        pass

        pool = None
        if getattr(responder, "concurrent", False):
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="qkdpost-answer")
        try:
            while True:
                try:
                    first = conn.recv(4, socket.MSG_PEEK)
                except socket.timeout:
                    if busy[0]:
                        continue  # Bob is waiting for an answer, not idle
                    return f"no request from Bob for {self.timeout_s} s"
                except OSError as exc:
                    return ended[0] if ended else f"connection lost: {exc}"
                if not first:
                    return ended[0] if ended else "closed"
                try:
                    data = _recv_frame(conn, "request")
                    if auth is not None:
                        data = auth.open(data, "request")
                except ChannelError as exc:
                    return ended[0] if ended else str(exc)
                try:
                    if len(data) < _RID.size:
                        raise ProtocolError(f"frame of {len(data)} bytes has no request id")
                    (rid,) = _RID.unpack_from(data)
                    kind, body = _codec.decode(data[_RID.size:])
                except ProtocolError as exc:
                    return f"undecodable request: {exc}"
                with send_lock:
                    busy[0] += 1
                if pool is None:
                    answer(rid, kind, body)
                else:
                    pool.submit(answer, rid, kind, body)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)  # no handler of this session outlives it
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
    auth_key: bytes | None = None,
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
    auth_key : bytes, optional
        Pre-shared key; see :class:`Server`.

    Returns
    -------
    int
        Number of sessions served.
    """
    served = 0
    with Server(host, port, timeout_s=timeout_s, handshake_timeout_s=handshake_timeout_s,
                auth_key=auth_key) as server:
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
