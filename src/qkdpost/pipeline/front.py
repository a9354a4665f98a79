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


def _check_topology(cfg: Config, info: StreamInfo, who: str) -> None:
    topo = cfg.sift.topology
    if topo == "decoy" or info.kind == "slots":
        raise ConfigError(
            f"topology={topo!r} ({who}'s stream kind={info.kind!r}): the pipeline sifts BBM92 timestamp "
            "streams; prepare-and-measure (slot log) sifting is not available in this version"
        )


def _writable(a: np.ndarray) -> np.ndarray:
    # memory-mapped chunks are read-only views; the sifting kernels' eager
    # signatures take writable arrays
    return a if a.flags.writeable else a.copy()


def _segment(blk: Any, t_end_s: float) -> Segment:
    return Segment(bits=blk.key, stats={"n_test": int(blk.n_test), "test_errors": int(blk.test_errors)},
                   t_end_s=t_end_s)


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
        from ..sift import BobSift

        _check_topology(cfg, info, "Bob")
        self.info = info
        self.channel = channel
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
        self.sift.feed(_writable(t), _writable(ch))
        self.sift.step(self.channel)
        return _segment(self.sift.take(), self._t_end_s())

    def finish(self) -> Segment:
        """End of Bob's stream: sift to the end of both streams."""
        self.sift.finish()
        self.sift.run(self.channel)
        return _segment(self.sift.take(), self._t_end_s())

    def summary(self) -> dict[str, Any]:
        st = self.sift.result().as_dict()
        al = self.sift.alignment
        return {
            "sift": st,
            "alignment": al.as_dict() if al is not None else None,
            "coincidence_window_ticks": int(self.sift.window_ticks),
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
        from ..sift import AliceSift

        _check_topology(cfg, info, "Alice")
        self.info = info
        self.cfg = cfg
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
        self.sift.feed(_writable(t), _writable(ch))

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

    def _after(self, reply: dict[str, Any]) -> dict[str, Any]:
        blk = self.sift.take()
        if blk.key.size or blk.n_test:
            t_end = float("nan") if self._first is None else ((self._last or 0) - self._first) * self.info.tick_s
            self._emit(_segment(blk, t_end))
        return reply

    def summary(self) -> dict[str, Any]:
        return {"sift": self.sift.result().as_dict()}
