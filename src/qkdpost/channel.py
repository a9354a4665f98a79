"""The classical channel between Alice and Bob.

Bob drives, Alice answers (DESIGN.md): every two-party step is Bob's side
calling :meth:`Channel.request` with a message kind and body, and Alice's
:class:`Responder` answering with a reply body. Each party only ever sees its
own arrays plus what arrives in messages.

:class:`LoopbackChannel` runs both parties in one process but still encodes
every message to bytes and decodes it on the other side (``qkdpost._codec``),
so traffic, round trips and what is disclosed are counted honestly. An
optional simulated round-trip time makes latency visible in benchmarks.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from . import _codec
from .errors import ProtocolError

__all__ = ["Channel", "ChannelStats", "LoopbackChannel", "Responder", "Handler"]

Handler = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class ChannelStats:
    """Traffic counted on one channel (from Bob's side).

    ``round_trips`` counts request/reply pairs; ``bytes_sent`` is Bob → Alice,
    ``bytes_received`` Alice → Bob; ``by_kind`` maps message kind to
    ``[round_trips, bytes both ways]``.
    """

    round_trips: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    by_kind: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))

    @property
    def bytes_total(self) -> int:
        return self.bytes_sent + self.bytes_received

    def record(self, kind: str, sent: int, received: int) -> None:
        self.round_trips += 1
        self.bytes_sent += sent
        self.bytes_received += received
        entry = self.by_kind[kind]
        entry[0] += 1
        entry[1] += sent + received

    def snapshot(self) -> tuple[int, int]:
        """(round_trips, bytes_total) now, to diff around one protocol run."""
        return self.round_trips, self.bytes_total

    def as_dict(self) -> dict[str, Any]:
        return {
            "round_trips": self.round_trips,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "by_kind": {k: {"round_trips": v[0], "bytes": v[1]} for k, v in self.by_kind.items()},
        }


class Responder:
    """Alice's side: maps message kinds to handler functions.

    A protocol object on Alice's side exposes ``handlers()`` returning
    ``{kind: fn}``; register it here. A handler takes the decoded body and
    returns the reply body.
    """

    def __init__(self, handlers: Mapping[str, Handler] | None = None):
        self._handlers: dict[str, Handler] = {}
        if handlers:
            self.register(handlers)

    def register(self, handlers: Mapping[str, Handler]) -> None:
        for kind, fn in handlers.items():
            if kind in self._handlers:
                raise ValueError(f"handler for message kind {kind!r} registered twice")
            self._handlers[kind] = fn

    def handle(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        fn = self._handlers.get(kind)
        if fn is None:
            raise ProtocolError(
                f"no handler for message kind {kind!r}; Alice's side knows {sorted(self._handlers)}"
            )
        return fn(body)


class Channel(ABC):
    """Bob's end of the classical channel. Subclasses move the bytes."""

    #: True when :meth:`exchange` may be called from several threads at once,
    #: each call a separate request/reply counted as one: a loopback whose
    #: responder says it locks for itself (``concurrent = True``, as
    #: :class:`~qkdpost.pipeline.engine.AliceEngine`). A socket carries one
    #: exchange at a time.
    concurrent = False

    def __init__(self) -> None:
        self.stats = ChannelStats()

    @abstractmethod
    def request(self, kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Send one request to Alice and return her decoded reply body."""

    def exchange(self, kind: str, body: Mapping[str, Any]) -> tuple[dict[str, Any], int, int]:
        """:meth:`request`, also returning the bytes it moved: (reply, sent, received)."""
        s0, r0 = self.stats.bytes_sent, self.stats.bytes_received
        reply = self.request(kind, body)
        return reply, self.stats.bytes_sent - s0, self.stats.bytes_received - r0

    def close(self) -> None:
        """Release the transport (no-op for loopback)."""

    def __enter__(self) -> "Channel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LoopbackChannel(Channel):
    """In-process channel: encodes, decodes and counts every message.

    Parameters
    ----------
    responder : Responder
        Alice's side.
    rtt_s : float
        Simulated round-trip time in seconds, slept once per request.
    """

    def __init__(self, responder: Responder, rtt_s: float = 0.0):
        super().__init__()
        if rtt_s < 0:
            raise ValueError(f"rtt_s={rtt_s!r}: a round-trip time cannot be negative")
        self.responder = responder
        self.rtt_s = float(rtt_s)
        self.concurrent = bool(getattr(responder, "concurrent", False))
        self._count = threading.Lock()
        self._mine = threading.local()  # this thread's last exchange: (bytes sent, bytes received)

    def request(self, kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
        wire = _codec.encode(kind, body)
        rkind, rbody = _codec.decode(wire)
        reply = self.responder.handle(rkind, rbody)
        wire_back = _codec.encode(kind + ".reply", reply)
        _, decoded = _codec.decode(wire_back)
        if self.rtt_s:
            time.sleep(self.rtt_s)
        with self._count:
            self.stats.record(kind, len(wire), len(wire_back))
        self._mine.sizes = (len(wire), len(wire_back))
        return decoded

    def exchange(self, kind: str, body: Mapping[str, Any]) -> tuple[dict[str, Any], int, int]:
        self._mine.sizes = (0, 0)
        reply = self.request(kind, body)  # through request(), so subclasses that wrap it still apply
        return (reply, *self._mine.sizes)
