"""The front half: each party's timestamp chunks → sifted key segments.

Wraps the sifting protocol (:mod:`qkdpost.sift`, which also aligns the
clocks and tracks drift) for the pipeline. Bob pushes his chunks and steps
the protocol over the channel; Alice answers ``sift.*`` requests with her own
data, either pulled from her file on demand (file runs, so Alice never reads
ahead of what Bob asks for) or pushed by a device wrapper.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import numpy as np

from ..channel import Channel
from ..config import Config
from ..errors import ConfigError
from ..io.model import Chunk, StreamInfo
from .segments import Segment

__all__ = ["sift_config", "BobFront", "AliceFront"]


def sift_config(cfg: Config) -> Any:
    """The sifting stage's own config built from the pipeline config."""
    from ..align import AlignConfig
    from ..sift import SiftConfig

    s, a = cfg.sift, cfg.align
    return SiftConfig(
        topology=s.topology,
        coincidence_window_ps=s.coincidence_window_ps,
        multi_click_window_ps=s.multi_click_window_ps,
        dead_time_ps=s.dead_time_ps,
        key_basis=s.key_basis,
        bob_flip=tuple(b.strip() for b in s.bob_flip.split(",") if b.strip()),
        window_s=s.window_s,
        align=AlignConfig(
            max_offset_s=a.max_offset_s, offset_prior_s=a.offset_prior_s, max_freq_ppm=a.max_freq_ppm,
            acquisition_s=a.acquisition_s, coarse_bin_s=a.coarse_bin_s, fine_bin_s=a.fine_bin_s,
            min_significance=a.min_significance,
        ),
    )


def topology_of(cfg: Config, info: StreamInfo, who: str) -> str:
    """``"bbm92"`` or ``"decoy"`` for this party's stream.

    ``topology="auto"`` decides from the party's own stream: Alice's slot log
    (``kind="slots"``) or a Bob stream with a ``"sync"`` channel means decoy.
    """
    topo = cfg.sift.topology
    if topo == "auto":
        decoy = info.kind == "slots" or (who == "Bob" and "sync" in dict(info.channel_map).values())
        topo = "decoy" if decoy else "bbm92"
    if topo == "bbm92" and info.kind == "slots":
        raise ConfigError(f"topology='bbm92' but {who}'s stream is a slot log (kind='slots'); use "
                          "topology='decoy' (or 'auto')")
    if topo == "decoy" and who == "Alice" and info.kind != "slots":
        raise ConfigError("topology='decoy' needs Alice's emission log (a kind='slots' stream); "
                          f"her stream has kind={info.kind!r}")
    return topo


def _segment(blk: Any, t_end_s: float, prev: dict[str, int] | None = None, sift: Any = None) -> Segment:
    stats: dict[str, Any] = {"n_test": int(blk.n_test), "test_errors": int(blk.test_errors)}
    labels = getattr(blk, "key_class", None)
    if labels is not None and sift is not None and prev is not None:
        # decoy: test-basis detections and errors per intensity class since the last segment,
        # from the sifting stage's cumulative counts (public: both parties learn them)
        test_name = "X" if sift.config.key_basis == "Z" else "Z"
        for c, per_basis in sift.stats.per_class.items():
            e = per_basis[test_name]
            for key, val in ((f"n_test_c{c}", int(e["sifted"])), (f"m_test_c{c}", int(e["test_errors"]))):
                stats[key] = val - prev.get(key, 0)
                prev[key] = val
    return Segment(bits=blk.key, stats=stats, t_end_s=t_end_s, labels=labels)


class BobFront:
    """Bob's front half: feed his chunks, step the sifting protocol, emit segments.

    Parameters
    ----------
    cfg : Config
    info : StreamInfo
        Bob's stream.
    channel : Channel
        To Alice.
    random_bits : callable, optional
        Source of random bits for double clicks (default OS CSPRNG).
    """

    def __init__(self, cfg: Config, info: StreamInfo, channel: Channel, *, random_bits: Any = None):
        self.topology = topology_of(cfg, info, "Bob")
        self.info = info
        self.channel = channel
        self._prev: dict[str, int] = {}
        if self.topology == "decoy":
            from ..sift.decoy import BobDecoySift

            need = {"auto": (2, 3), "lim2014": (3,), "rusca2018": (2,)}.get(cfg.finitekey.bound, (2, 3))
            if len(cfg.finitekey.floats("decoy_mu")) not in need:
                raise ConfigError(
                    f"decoy_mu={cfg.finitekey.decoy_mu!r}: decoy BB84 needs the intensities of Alice's log, "
                    "signal first: three for the two-decoy bound (lim2014), e.g. --decoy-mu 0.5,0.1,0.0002 "
                    "--decoy-p-mu 0.7,0.2,0.1, or two for the one-decoy bound (rusca2018), e.g. "
                    "--decoy-mu 0.5,0.2 --decoy-p-mu 0.5,0.5")

            self.sift: Any = BobDecoySift(info, sift_config(cfg), random_bits=random_bits)
        else:
            from ..sift import BobSift

            self.sift = BobSift(info, sift_config(cfg), random_bits=random_bits)
        self._t0: int | None = None
        self._t_last = 0
        self.events = 0

    def _t_end_s(self) -> float:
        return float("nan") if self._t0 is None else (self._t_last - self._t0) * self.info.tick_s

    def push(self, t: np.ndarray, ch: np.ndarray) -> Segment:
        """Add Bob's chunk and sift as far as both parties' data allow."""
        if len(t):
            if self._t0 is None:
                self._t0 = int(t[0])
            self._t_last = int(t[-1])
            self.events += len(t)
        self.sift.feed(t, ch)  # read-only (memory-mapped) chunks as they are: no copy
        self.sift.step(self.channel)
        return self.take()

    def take(self) -> Segment:
        """Bob's bits sifted since the last call, as a segment."""
        return _segment(self.sift.take(), self._t_end_s(), self._prev, self.sift)

    def finish(self) -> Segment:
        """End of Bob's stream: sift to the end of both streams."""
        self.sift.finish()
        self.sift.run(self.channel)
        return self.take()

    def summary(self) -> dict[str, Any]:
        st = self.sift.result().as_dict()
        al = getattr(self.sift, "alignment", None)
        return {
            "topology": self.topology,
            "sift": st,
            "alignment": al.as_dict() if al is not None else None,
            "coincidence_window_ticks": int(getattr(self.sift, "window_ticks", 0)),
        }


class AliceFront:
    """Alice's front half: answers ``sift.*`` with her own detections.

    Parameters
    ----------
    cfg : Config
    info : StreamInfo
        Alice's stream.
    chunks : iterator of Chunk, optional
        Her input, pulled on demand (file runs). Without it, data comes
        from :meth:`push` (device wrappers).
    emit : callable
        Receives each new :class:`Segment` of Alice's sifted key bits.
    """

    def __init__(self, cfg: Config, info: StreamInfo, *, chunks: Iterator[Chunk] | None = None,
                 emit: Callable[[Segment], None], random_bits: Any = None):
        self.topology = topology_of(cfg, info, "Alice")
        self.info = info
        self.cfg = cfg
        self._prev: dict[str, int] = {}
        if self.topology == "decoy":
            from ..sift.decoy import AliceDecoySift

            self.sift: Any = AliceDecoySift(info, sift_config(cfg))
        else:
            from ..sift import AliceSift

            self.sift = AliceSift(info, sift_config(cfg), random_bits=random_bits)
        self._chunks = chunks
        self._emit = emit
        self._first: int | None = None
        self._last: int | None = None
        self.events = 0
        self.finished = False

    # -- data in
    def push(self, t: np.ndarray, ch: np.ndarray) -> None:
        if len(t):
            if self._first is None:
                self._first = int(t[0])
            self._last = int(t[-1])
            self.events += len(t)
        self.sift.feed(t, ch)  # read-only (memory-mapped) chunks as they are: no copy

    def finish(self) -> None:
        if not self.finished:
            self.sift.finish()
            self.finished = True

    def _pull_one(self) -> bool:
        if self._chunks is None or self.finished:
            return False
        c = next(self._chunks, None)
        if c is None:
            self.finish()
            return False
        self.push(c.t, c.ch)
        return True

    def _pull_until(self, t_needed: int) -> None:
        while self._chunks is not None and not self.finished and (self._last is None or self._last < t_needed):
            if not self._pull_one():
                break

    # -- protocol
    def handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        inner = self.sift.handlers()
        if self.topology == "decoy":
            return {kind: self._decoy_handler(fn) for kind, fn in inner.items()}

        def hello(body: dict[str, Any]) -> dict[str, Any]:
            if self._chunks is not None:
                span = int(math.ceil((self.cfg.align.acquisition_s * 1.25 + 0.05) / self.info.tick_s))
                self._pull_one()  # every hello brings at least one more chunk
                if self._first is not None:
                    self._pull_until(self._first + span)
            return self._after(inner["sift.hello"](body))

        def step(body: dict[str, Any]) -> dict[str, Any]:
            if self._chunks is not None and body.get("hi") is not None:
                self._pull_until(int(body["hi"]) + 1)
            return self._after(inner["sift.step"](body))

        return {"sift.hello": hello, "sift.step": step}

    def _decoy_handler(self, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def handle(body: dict[str, Any]) -> dict[str, Any]:
            if self._chunks is not None and self._first is None:
                self._pull_one()
            reply = fn(body)
            # the log is pulled on demand: while Alice's answer is "not ready" and
            # her file has more, read on and answer again
            while reply.get("ready") is False and self._pull_one():
                reply = fn(body)
            return self._after(reply)

        return handle

    def _after(self, reply: dict[str, Any]) -> dict[str, Any]:
        blk = self.sift.take()
        if blk.key.size or blk.n_test:
            t_end = float("nan") if self._first is None else ((self._last or 0) - self._first) * self.info.tick_s
            if self.topology == "decoy" and self._first is not None:
                t_end *= self.info.slot_period_ticks
            self._emit(_segment(blk, t_end, self._prev, self.sift))
        return reply

    def summary(self) -> dict[str, Any]:
        return {"sift": self.sift.result().as_dict()}
