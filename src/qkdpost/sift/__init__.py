"""Two-party sifting: detections, coincidences, basis announcement, sifted bits.

Entanglement-based BBM92 (Bennett, Brassard and Mermin, PRL 68, 557 (1992),
doi:10.1103/PhysRevLett.68.557) as a protocol over a :class:`~qkdpost.channel.Channel`.
Each party's object holds only that party's data:

* :class:`AliceSift` conditions Alice's clicks into detections and answers
  Bob's messages (``handlers()``);
* :class:`BobSift` conditions Bob's clicks, drives the protocol, aligns the
  clocks (:mod:`qkdpost.align`) and tracks their drift.

Protocol (Bob drives, Alice answers; every message counted by the channel):

``sift.hello``
    Bob → ``{version}``; Alice → her tick length, first detection time, how
    far her data reaches and whether her stream has ended.
``sift.step``
    Bob → optionally the *bases part* for the previous window (its id, the
    indices of Alice's detections he paired, his basis per pair, and his bits
    for the pairs he measured in the test basis) and optionally a *times
    request* ``[lo, hi)`` in Alice's ticks. Alice → for the bases part, her
    basis per pair and her bits of the pairs where both measured the test
    basis; for the request, her detection *times only* in ``[lo, hi')``
    (``hi'`` = ``hi`` or where her data ends), delta coded. One round trip per
    window: the bases of window k ride with the request for window k + 1.

Both parties then keep the key-basis bits of equal-basis pairs, in Alice's
time order; test-basis bits are disclosed and compared (both learn the error
count) and are never key. Bits of pairs with different bases are dropped.

Detections: clicks on channels mapped to H/V/D/A (the stream's channel map)
open a detection; clicks of the same party within the multi-click window join
it (double clicks get a random bit, cross-basis double clicks a random basis
and bit, from the OS CSPRNG); clicks within a common software dead time are
dropped and counted. See :func:`qkdpost.sift._kernels.condition_clicks`.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..align import AlignConfig, Alignment, ClockModel, DriftTracker, find_alignment
from ..channel import Channel
from ..errors import AlignmentError, ConfigError, InputError, ProtocolError
from ..io.model import Chunk, StreamInfo

__all__ = [
    "SiftConfig",
    "Detections",
    "condition",
    "match",
    "SiftBlock",
    "SiftStats",
    "AliceSift",
    "BobSift",
    "sift_streams",
    "iter_sift",
    "SiftRun",
    "seeded_bits",
    "channel_lut",
    "AliceDecoySift",
    "BobDecoySift",
    "DecoyBlock",
    "DecoyStats",
]

PROTOCOL_VERSION = 1
BASIS_NAMES = ("Z", "X")
_ROLE_CODE = {"H": 0, "V": 1, "D": 2, "A": 3}
_INT64_MAX = np.iinfo(np.int64).max


# --------------------------------------------------------------------------- config


@dataclass(frozen=True, kw_only=True)
class SiftConfig:
    """Sifting parameters (field names match CLI flags and config keys).

    Attributes
    ----------
    topology : {"auto", "bbm92", "decoy"}
        Only ``"bbm92"`` (or ``"auto"`` with timestamp streams) is sifted here.
    coincidence_window_ps : float
        Half-width of the coincidence window; 0 = automatic, 3 sigma of the
        coincidence peak measured at alignment (at least one tick).
    multi_click_window_ps : float
        Clicks of one party this close after a detection join it as a
        multi click; 0 = the coincidence half-width if given, else 1 ns.
    dead_time_ps : float
        Common dead time enforced in software after every detection, over all
        detectors of a party; 0 = off.
    key_basis : {"Z", "X"}
        Basis whose bits become key; the other basis is the test basis, whose
        bits are all disclosed to estimate the phase error.
    bob_flip : tuple of {"Z", "X"}
        Bases in which Bob inverts his bits (anti-correlated states, e.g.
        ``("Z", "X")`` for the singlet).
    window_s : float
        Span of Alice's time per sifting round trip.
    gain_offset, gain_freq : float
        Drift servo gains (:class:`qkdpost.align.DriftTracker`).
    align : AlignConfig
        Acquisition parameters.
    """

    topology: str = "auto"
    coincidence_window_ps: float = 0.0
    multi_click_window_ps: float = 0.0
    dead_time_ps: float = 0.0
    key_basis: str = "Z"
    bob_flip: tuple[str, ...] = ()
    window_s: float = 0.05
    gain_offset: float = 1.0
    gain_freq: float = 1.0
    align: AlignConfig = field(default_factory=AlignConfig)

    def __post_init__(self) -> None:
        def bad(name: str, constraint: str) -> None:
            raise ConfigError(f"{name}={getattr(self, name)!r}: {constraint}")

        if self.topology not in ("auto", "bbm92", "decoy"):
            bad("topology", "must be 'auto', 'bbm92' or 'decoy'")
        for name in ("coincidence_window_ps", "multi_click_window_ps", "dead_time_ps"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                bad(name, "must be a finite number >= 0 (0 = automatic/off)")
        if self.key_basis not in BASIS_NAMES:
            bad("key_basis", "must be 'Z' or 'X'")
        object.__setattr__(self, "bob_flip", tuple(self.bob_flip))
        if any(b not in BASIS_NAMES for b in self.bob_flip):
            bad("bob_flip", "must list bases among 'Z', 'X'")
        if not (isinstance(self.window_s, (int, float)) and 1e-4 <= self.window_s <= 60):
            bad("window_s", "must be in [1e-4, 60] seconds")
        for name in ("gain_offset", "gain_freq"):
            if not (0 < getattr(self, name) <= 1):
                bad(name, "servo gain must be in (0, 1]")
        if not isinstance(self.align, AlignConfig):
            bad("align", "must be an AlignConfig")

    @property
    def key_basis_index(self) -> int:
        return BASIS_NAMES.index(self.key_basis)


# --------------------------------------------------------------------------- detections


def channel_lut(channel_map: dict[int, str], name: str = "channel_map") -> np.ndarray:
    """256-entry table ``ch -> 2 * basis + bit`` (255 for channels without H/V/D/A role)."""
    lut = np.full(256, 255, dtype=np.uint8)
    for chan, role in channel_map.items():
        if role in _ROLE_CODE:
            if isinstance(chan, bool) or not isinstance(chan, (int, np.integer)) or not 0 <= int(chan) <= 255:
                # a negative key would silently index the table from its end
                raise ConfigError(f"{name}: channel {chan!r} (role {role!r}) must be an integer 0..255")
            lut[int(chan)] = _ROLE_CODE[role]
    present = {r for r in channel_map.values() if r in _ROLE_CODE}
    if not present:
        raise ConfigError(
            f"{name}={dict(channel_map)!r}: no channel has a detector role H/V/D/A; "
            f"give the stream a channel map such as {{0: 'H', 1: 'V', 2: 'D', 3: 'A'}}"
        )
    return lut


@dataclass
class Detections:
    """One party's conditioned detections (parallel arrays, time order).

    ``t`` int64 ticks, ``basis`` uint8 (0 = Z, 1 = X), ``bit`` uint8,
    ``flag`` uint8 (0 single, 1 double click same basis, 2 cross basis).
    """

    t: np.ndarray
    basis: np.ndarray
    bit: np.ndarray
    flag: np.ndarray

    def __repr__(self) -> str:  # never show (future key) bits
        return f"Detections(<{len(self)} detections>)"

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.empty(0, np.int64), np.empty(0, np.uint8), np.empty(0, np.uint8), np.empty(0, np.uint8))

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def slice(self, i0: int, i1: int) -> "Detections":
        return Detections(self.t[i0:i1], self.basis[i0:i1], self.bit[i0:i1], self.flag[i0:i1])

    def append(self, other: "Detections") -> "Detections":
        if len(self) == 0:
            return other
        if len(other) == 0:
            return self
        return Detections(
            np.concatenate([self.t, other.t]),
            np.concatenate([self.basis, other.basis]),
            np.concatenate([self.bit, other.bit]),
            np.concatenate([self.flag, other.flag]),
        )


def _csprng_bits(n: int) -> np.ndarray:
    """``n`` uniformly random bits (uint8 0/1) from the OS CSPRNG."""
    if n == 0:
        return np.empty(0, np.uint8)
    return np.unpackbits(np.frombuffer(os.urandom((n + 7) // 8), dtype=np.uint8), count=n)


RandomBits = Callable[[int], np.ndarray]


def seeded_bits(seed: int) -> RandomBits:
    """A seeded random-bit source for simulations and tests (never production).

    One fixed bit stream, however it is split into calls, so results do not
    depend on how the input was cut into chunks.
    """
    rng = np.random.default_rng(seed)
    pool = np.empty(0, np.uint8)

    def draw(n: int) -> np.ndarray:
        nonlocal pool
        while pool.size < n:
            # full bytes: 63-bit words would leave every 64th bit at 0
            pool = np.concatenate([pool, np.unpackbits(np.frombuffer(rng.bytes(1024), dtype=np.uint8))])
        out, pool = pool[:n], pool[n:]
        return out

    return draw


class _Conditioner:
    """Streaming click conditioning with one pending detection carried across chunks."""

    def __init__(self, lut: np.ndarray, dead_ticks: int, mc_ticks: int, random_bits: RandomBits):
        self.lut = lut
        self.dead = int(dead_ticks)
        self.mc = int(mc_ticks)
        self.state = np.zeros(5, np.int64)
        self.counts = np.zeros(5, np.int64)
        self.random_bits = random_bits
        self.last_t = np.iinfo(np.int64).min

    def feed(self, t: np.ndarray, ch: np.ndarray, name: str) -> Detections:
        from ._kernels import condition_clicks

        t = np.asarray(t)
        ch = np.asarray(ch)
        if t.ndim != 1 or ch.ndim != 1 or t.shape != ch.shape:
            raise InputError(f"{name}: t and ch must be 1-D arrays of equal length, got {t.shape} and {ch.shape}")
        if not np.issubdtype(t.dtype, np.integer) or not np.issubdtype(ch.dtype, np.integer):
            raise InputError(f"{name}: t must be int64 ticks and ch uint8 channels, got {t.dtype}, {ch.dtype}")
        t = np.ascontiguousarray(t, dtype=np.int64)
        ch = np.ascontiguousarray(ch, dtype=np.uint8)
        if t.size:
            if t[0] < self.last_t or (t.size > 1 and np.any(t[1:] < t[:-1])):
                raise InputError(
                    f"{name}: timestamps go backwards (within the chunk or against the previous chunk); "
                    f"feed each party's events in time order"
                )
            self.last_t = int(t[-1])
        n = t.size
        out = Detections(np.empty(n, np.int64), np.empty(n, np.uint8), np.empty(n, np.uint8), np.empty(n, np.uint8))
        k = condition_clicks(t, ch, self.lut, self.dead, self.mc, self.state, out.t, out.basis, out.bit, out.flag,
                             self.counts)
        return self._randomise(out.slice(0, k))

    def flush(self) -> Detections:
        if self.state[0] == 0:
            return Detections.empty()
        s = self.state
        d = Detections(np.array([s[1]], np.int64), np.array([s[2]], np.uint8), np.array([s[3]], np.uint8),
                       np.array([s[4]], np.uint8))
        s[0] = 0
        return self._randomise(d)

    def _randomise(self, d: Detections) -> Detections:
        multi = np.flatnonzero(d.flag)
        if multi.size:
            cross = multi[d.flag[multi] == 2]
            if cross.size:
                d.basis[cross] = self.random_bits(cross.size)
            d.bit[multi] = self.random_bits(multi.size)
        return d

    def count_dict(self) -> dict[str, int]:
        c = self.counts
        return {"clicks": int(c[4]), "ignored": int(c[0]), "lost_dead_time": int(c[1]),
                "multi_click_same_basis": int(c[2]), "multi_click_cross_basis": int(c[3])}


def condition(
    t: Any,
    ch: Any,
    channel_map: dict[int, str],
    *,
    tick_s: float,
    multi_click_window_ps: float,
    dead_time_ps: float = 0.0,
    random_bits: RandomBits | None = None,
) -> tuple[Detections, dict[str, int]]:
    """Condition one party's clicks into detections (whole stream at once).

    Parameters
    ----------
    t, ch : array_like, shape (n,)
        int64 ticks (non-decreasing) and uint8 channels.
    channel_map : mapping int -> role
        Roles H, V, D, A carry key; others are ignored.
    tick_s : float
        Tick length in seconds.
    multi_click_window_ps, dead_time_ps : float
        See :class:`SiftConfig`.
    random_bits : callable, optional
        ``n -> uint8[n]`` random bits for double clicks; default the OS CSPRNG.

    Returns
    -------
    detections : Detections
    counts : dict
        clicks, ignored, lost_dead_time, multi_click_same_basis, multi_click_cross_basis.
    """
    if not (isinstance(tick_s, (int, float)) and math.isfinite(tick_s) and tick_s > 0):
        raise ConfigError(f"tick_s={tick_s!r}: the tick length must be a positive finite number of seconds")
    for name, v in (("multi_click_window_ps", multi_click_window_ps), ("dead_time_ps", dead_time_ps)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ConfigError(f"{name}={v!r}: must be a finite number of picoseconds >= 0")
    lut = channel_lut(dict(channel_map))
    cond = _Conditioner(lut, _ps_to_ticks(dead_time_ps, tick_s), _ps_to_ticks(multi_click_window_ps, tick_s),
                        random_bits or _csprng_bits)
    d = cond.feed(t, ch, "t/ch").append(cond.flush())
    return d, cond.count_dict()


def _ps_to_ticks(ps: float, tick_s: float) -> int:
    return int(round(ps * 1e-12 / tick_s))


def match(t_a: Any, t_b_mapped: Any, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Coincidences between two sorted time arrays (same clock).

    Each Alice event, in time order, pairs with the nearest not yet paired
    Bob event with ``|t_b - t_a| <= window`` (ties: the earlier).

    Returns
    -------
    ia, ib : ndarray of int64
        Indices of the paired events, ``ia`` increasing.
    """
    from ._kernels import match_coincidences

    ta, tb = np.asarray(t_a), np.asarray(t_b_mapped)
    if ta.ndim != 1 or tb.ndim != 1:
        raise InputError("match: t_a and t_b_mapped must be 1-D int64 arrays")
    for name, arr in (("t_a", ta), ("t_b_mapped", tb)):
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            # a float array would be truncated to ticks silently
            raise InputError(f"match: {name} has dtype {arr.dtype}; times must be integer ticks (int64)")
    ta = np.ascontiguousarray(ta, dtype=np.int64)
    tb = np.ascontiguousarray(tb, dtype=np.int64)
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)):
        raise InputError(f"window={window!r}: the coincidence half-width must be an integer number of ticks")
    if window < 0:
        raise InputError(f"window={window}: the coincidence half-width must be >= 0 ticks")
    for name, arr in (("t_a", ta), ("t_b_mapped", tb)):
        if arr.size > 1 and np.any(arr[1:] < arr[:-1]):
            raise InputError(f"{name}: must be sorted in time")
    n = min(ta.size, tb.size)
    ia = np.empty(n, np.int64)
    ib = np.empty(n, np.int64)
    used = np.zeros(tb.size, np.uint8)
    k = match_coincidences(ta, tb, int(window), used, ia, ib)
    return ia[:k], ib[:k]


# --------------------------------------------------------------------------- results


@dataclass
class SiftBlock:
    """Newly sifted bits of one party since the previous :meth:`take`.

    Attributes
    ----------
    key : ndarray of uint8
        Key-basis bits of equal-basis pairs, in pair (Alice time) order.
    test : ndarray of uint8
        This party's disclosed test-basis bits.
    test_errors : int
        Positions where Alice's and Bob's test bits differ.
    """

    key: np.ndarray
    test: np.ndarray
    test_errors: int

    @property
    def n_test(self) -> int:
        return int(self.test.shape[0])

    def __repr__(self) -> str:  # never show key material
        return f"SiftBlock(key=<{self.key.size} bits>, test=<{self.n_test} bits>, test_errors={self.test_errors})"


@dataclass
class SiftStats:
    """Cumulative counts of one party (both parties agree on the pair counts)."""

    detections: list[int] = field(default_factory=lambda: [0, 0])  # per basis Z, X
    pairs: int = 0
    key_pairs: int = 0
    test_pairs: int = 0
    basis_mismatch: int = 0
    test_errors: int = 0
    windows: int = 0
    conditioning: dict[str, int] = field(default_factory=dict)

    def add_window(self, counts: np.ndarray, n: int, errors: int) -> None:
        """Count one sifted window: ``n`` pairs, ``counts`` = (key, test, basis mismatch)."""
        self.pairs += n
        self.key_pairs += int(counts[0])
        self.test_pairs += int(counts[1])
        self.basis_mismatch += int(counts[2])
        self.test_errors += errors
        self.windows += 1

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["detections"] = {"Z": self.detections[0], "X": self.detections[1]}
        return d


class _BlockBuffer:
    def __init__(self) -> None:
        self.key: list[np.ndarray] = []
        self.test: list[np.ndarray] = []
        self.errors = 0

    def add(self, key: np.ndarray, test: np.ndarray, errors: int) -> None:
        self.key.append(key)
        self.test.append(test)
        self.errors += errors

    def take(self) -> SiftBlock:
        blk = SiftBlock(
            np.concatenate(self.key) if self.key else np.empty(0, np.uint8),
            np.concatenate(self.test) if self.test else np.empty(0, np.uint8),
            self.errors,
        )
        self.key, self.test, self.errors = [], [], 0
        return blk


def _pack(bits: np.ndarray) -> np.ndarray:
    return np.packbits(bits.astype(np.uint8, copy=False))


def _unpack(packed: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(packed, dtype=np.uint8)
    if arr.ndim != 1 or arr.size != (n + 7) // 8:
        raise ProtocolError(f"{what}: expected {(n + 7) // 8} packed bytes for {n} values, got {arr.size}")
    return np.unpackbits(arr, count=n)


def _encode_times(t: np.ndarray) -> dict[str, Any]:
    """Delta-code sorted times: first value plus uint32 gaps (int64 if a gap is too large)."""
    if t.size == 0:
        return {"n": 0, "t0": 0, "dt": np.empty(0, np.uint32)}
    d = np.diff(t)
    if d.size and d.max() >= 1 << 32:
        return {"n": int(t.size), "t0": int(t[0]), "dt": d.astype(np.int64)}
    return {"n": int(t.size), "t0": int(t[0]), "dt": d.astype(np.uint32)}


def _decode_times(reply: dict[str, Any]) -> np.ndarray:
    n = int(reply["n"])
    d = np.asarray(reply["dt"])
    if n == 0:
        return np.empty(0, np.int64)
    if d.ndim != 1 or d.size != n - 1 or d.dtype.kind not in "iu" or (d.size and d.min() < 0):
        raise ProtocolError(f"sift.step: {n} times need {n - 1} non-negative integer gaps, got {d.size}")
    if d.size and int(d.max()) > np.iinfo(np.int64).max:
        raise ProtocolError(f"sift.step: a time gap of {int(d.max())} ticks does not fit int64 times")
    out = np.empty(n, np.int64)
    out[0] = int(reply["t0"])
    np.cumsum(d.astype(np.int64), out=out[1:])
    out[1:] += out[0]
    # Gaps are non-negative, so a wrap past int64 shows up as a decrease.
    if np.any(out[1:] < out[:-1]):
        raise ProtocolError("sift.step: Alice's times overflow int64 (t0 plus the gaps); refusing wrapped times")
    return out


def _classify(basis_a: np.ndarray, basis_b: np.ndarray, key_basis: int) -> tuple[np.ndarray, np.ndarray]:
    from ._kernels import classify_pairs

    cls = np.empty(basis_a.size, np.uint8)
    counts = np.zeros(3, np.int64)
    classify_pairs(np.ascontiguousarray(basis_a, np.uint8), np.ascontiguousarray(basis_b, np.uint8),
                   np.uint8(key_basis), cls, counts)
    return cls, counts


# --------------------------------------------------------------------------- Alice


class AliceSift:
    """Alice's side of BBM92 sifting: her detections and the message handlers.

    Parameters
    ----------
    info : StreamInfo
        Her stream's metadata (tick length, channel map).
    config : SiftConfig
    random_bits : callable, optional
        Random bits for double clicks; default the OS CSPRNG.

    Use: :meth:`feed` her chunks as they come, :meth:`finish` at the end of
    her stream, register :meth:`handlers` with the channel's responder, and
    :meth:`take` the newly sifted bits whenever convenient.
    """

    def __init__(self, info: StreamInfo, config: SiftConfig | None = None, *, random_bits: RandomBits | None = None):
        self.info = info
        self.config = config or SiftConfig()
        if info.kind != "timestamps":
            raise ConfigError(f"Alice's stream kind={info.kind!r}: BBM92 sifting needs detector timestamps")
        lut = channel_lut(dict(info.channel_map), "Alice's channel_map")
        mc = self.config.multi_click_window_ps or self.config.coincidence_window_ps or 1000.0
        self._cond = _Conditioner(lut, _ps_to_ticks(self.config.dead_time_ps, info.tick_s),
                                  _ps_to_ticks(mc, info.tick_s), random_bits or _csprng_bits)
        self._buf = Detections.empty()
        self._finished = False
        self._windows: dict[int, Detections] = {}
        self._next_wid = 0
        self._out = _BlockBuffer()
        self.stats = SiftStats()

    # -- local data
    def feed(self, t: Any, ch: Any) -> None:
        """Add a chunk of Alice's clicks (time order)."""
        if self._finished:
            raise InputError("AliceSift.feed after finish(): the stream has already ended")
        d = self._cond.feed(t, ch, "Alice's chunk")
        self._count(d)
        self._buf = self._buf.append(d)

    def finish(self) -> None:
        """Mark the end of Alice's stream (flushes the pending detection)."""
        if not self._finished:
            d = self._cond.flush()
            self._count(d)
            self._buf = self._buf.append(d)
            self._finished = True

    def _count(self, d: Detections) -> None:
        if len(d):
            nz = int(np.count_nonzero(d.basis))
            self.stats.detections[0] += len(d) - nz
            self.stats.detections[1] += nz

    def _avail(self) -> int:
        """Alice's data is complete for times below this value."""
        if self._finished:
            return _INT64_MAX
        if len(self._buf) == 0:
            return int(self._cond.state[1]) if self._cond.state[0] else np.iinfo(np.int64).min
        # the pending detection (in the conditioner) is not final yet
        return int(self._cond.state[1]) if self._cond.state[0] else int(self._buf.t[-1]) + 1

    # -- protocol
    def handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {"sift.hello": self._on_hello, "sift.step": self._on_step}

    def _on_hello(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("version") != PROTOCOL_VERSION:
            raise ProtocolError(f"sift.hello: Bob speaks version {body.get('version')!r}, Alice {PROTOCOL_VERSION}")
        first = int(self._buf.t[0]) if len(self._buf) else (int(self._cond.state[1]) if self._cond.state[0] else -1)
        return {"tick_s": float(self.info.tick_s), "t_first": first, "has_data": first != -1 or bool(len(self._buf)),
                "avail": self._avail(), "finished": self._finished, "key_basis": self.config.key_basis}

    def _on_step(self, body: dict[str, Any]) -> dict[str, Any]:
        reply: dict[str, Any] = {}
        if body.get("wid") is not None:
            reply.update(self._answer_bases(body))
        if body.get("lo") is not None:
            reply.update(self._answer_times(int(body["lo"]), int(body["hi"])))
        return reply

    def _answer_times(self, lo: int, hi: int) -> dict[str, Any]:
        if hi < lo:
            raise ProtocolError(f"sift.step: window [{lo}, {hi}) is empty or reversed")
        avail = self._avail()
        if avail < hi:
            # not all of [lo, hi) is here yet: Bob asks again later (windows
            # are a fixed grid, so results do not depend on chunking)
            return {"ready": False, "avail": avail}
        i0 = int(np.searchsorted(self._buf.t, lo))
        i1 = int(np.searchsorted(self._buf.t, hi))
        win = self._buf.slice(i0, i1)
        # detections before the window end are never requested again
        self._buf = self._buf.slice(i1, len(self._buf))
        wid = self._next_wid
        self._next_wid += 1
        self._windows[wid] = win
        done = self._finished and len(self._buf) == 0
        return {"ready": True, "wid_new": wid, "hi_eff": hi, "done": done, **_encode_times(win.t)}

    def _answer_bases(self, body: dict[str, Any]) -> dict[str, Any]:
        wid = int(body["wid"])
        win = self._windows.pop(wid, None)
        if win is None:
            raise ProtocolError(f"sift.step: unknown or already answered window id {wid}")
        ia = np.asarray(body["ia"])
        if ia.ndim != 1 or (ia.size and ia.dtype.kind not in "iu"):
            # float indices would be truncated silently
            raise ProtocolError(f"sift.step: pair indices must be a 1-D integer array, got {ia.dtype} {ia.shape}")
        ia = ia.astype(np.int64)
        n = ia.size
        if n and (ia.min() < 0 or ia.max() >= len(win) or np.any(np.diff(ia) <= 0)):
            raise ProtocolError("sift.step: pair indices must be increasing and inside the window")
        basis_b = _unpack(body["basis"], n, "Bob's bases")
        basis_a = win.basis[ia]
        bits_a = win.bit[ia]
        test_basis = 1 - self.config.key_basis_index
        b_test_pos = np.flatnonzero(basis_b == test_basis)
        bits_b_test = _unpack(body["test_bits"], b_test_pos.size, "Bob's test bits")
        cls, counts = _classify(basis_a, basis_b, self.config.key_basis_index)
        key = bits_a[cls == 0]
        test_mask = cls == 1
        test_a = bits_a[test_mask]
        # Bob's test bits are listed for his test-basis pairs; keep those where Alice agrees on the basis
        test_b = bits_b_test[test_mask[b_test_pos]]
        errors = int(np.count_nonzero(test_a != test_b))
        self.stats.add_window(counts, n, errors)
        self._out.add(key, test_a, errors)
        return {"basis": _pack(basis_a), "test_bits": _pack(test_a)}

    def take(self) -> SiftBlock:
        """Alice's bits sifted since the previous call."""
        return self._out.take()

    def result(self) -> SiftStats:
        self.stats.conditioning = self._cond.count_dict()
        return self.stats


# --------------------------------------------------------------------------- Bob


class BobSift:
    """Bob's side of BBM92 sifting: his detections, alignment, the driving loop.

    Parameters
    ----------
    info : StreamInfo
        His stream's metadata.
    config : SiftConfig
    random_bits : callable, optional
        Random bits for double clicks; default the OS CSPRNG.
    alignment : Alignment or ClockModel, optional
        A known clock model (skips acquisition).

    Use: :meth:`feed` his chunks, :meth:`finish` at the end, and call
    :meth:`step` with the channel whenever new data arrived; it aligns once
    enough data is there and then sifts every window both parties' data
    cover. :meth:`take` returns the newly sifted bits; :attr:`done` is True
    when both streams are exhausted.
    """

    def __init__(
        self,
        info: StreamInfo,
        config: SiftConfig | None = None,
        *,
        random_bits: RandomBits | None = None,
        alignment: Alignment | ClockModel | None = None,
    ):
        self.info = info
        self.config = config or SiftConfig()
        if info.kind != "timestamps":
            raise ConfigError(f"Bob's stream kind={info.kind!r}: BBM92 sifting needs detector timestamps")
        self._lut = channel_lut(dict(info.channel_map), "Bob's channel_map")
        self._random_bits = random_bits or _csprng_bits
        self._cond: _Conditioner | None = None
        self._pending_clicks: list[Chunk] = []
        self._buf = Detections.empty()
        self._used = np.empty(0, np.uint8)
        self._finished = False
        self._alice: dict[str, Any] | None = None
        self.alignment: Alignment | None = alignment if isinstance(alignment, Alignment) else None
        self._model: ClockModel | None = (
            alignment.model if isinstance(alignment, Alignment) else alignment
        )
        self.tracker: DriftTracker | None = None
        self.window_ticks = 0
        self._lo: int | None = None
        self._open_wid: int | None = None
        self._open: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # ia, basis_b, bits_b
        self._alice_done = False
        self.done = False
        self._out = _BlockBuffer()
        self.stats = SiftStats()
        self.residual_sigma_ticks = float("nan")
        self._t_first: int | None = None
        self._t_last = 0
        self._flip = np.array([b in self.config.bob_flip for b in BASIS_NAMES], dtype=np.uint8)

    # -- local data
    def feed(self, t: Any, ch: Any) -> None:
        """Add a chunk of Bob's clicks (time order)."""
        if self._finished:
            raise InputError("BobSift.feed after finish(): the stream has already ended")
        if self._cond is None:
            self._pending_clicks.append(Chunk(np.asarray(t), np.asarray(ch)))
            return
        self._add(self._cond.feed(t, ch, "Bob's chunk"))

    def finish(self) -> None:
        """Mark the end of Bob's stream."""
        self._finished = True
        if self._cond is not None:
            self._add(self._cond.flush())

    @property
    def duration_s(self) -> float:
        """Span of Bob's detections seen so far, seconds."""
        if self._t_first is None:
            return 0.0
        return (self._t_last - self._t_first) * self.info.tick_s

    def _add(self, d: Detections) -> None:
        if len(d):
            if self._t_first is None:
                self._t_first = int(d.t[0])
            self._t_last = int(d.t[-1])
            nz = int(np.count_nonzero(d.basis))
            self.stats.detections[0] += len(d) - nz
            self.stats.detections[1] += nz
            d.bit ^= self._flip[d.basis]
        self._buf = self._buf.append(d)
        self._used = np.concatenate([self._used, np.zeros(len(d), np.uint8)]) if len(d) else self._used

    def _raw_span(self) -> int:
        ts = [c.t for c in self._pending_clicks if len(c.t)]
        return int(ts[-1][-1] - ts[0][0]) if ts else 0

    def _bob_avail(self) -> int:
        if self._finished:
            return _INT64_MAX
        if self._cond is not None and self._cond.state[0]:
            return int(self._cond.state[1])
        return int(self._buf.t[-1]) + 1 if len(self._buf) else np.iinfo(np.int64).min

    # -- protocol
    def step(self, channel: Channel) -> bool:
        """Do all protocol work the data allow; return True if anything progressed."""
        if self.done:
            return False
        if self._model is None or self._cond is None:
            if not self._acquire(channel):
                return False
        progressed = False
        while not self.done:
            if not self._window(channel):
                break
            progressed = True
        return progressed

    def run(self, channel: Channel) -> None:
        """Step until both streams are exhausted (both must be finished)."""
        while self.step(channel):
            pass
        if not self.done:
            raise ProtocolError("BobSift.run: stopped before the end; call finish() on both parties first")

    def _hello(self, channel: Channel) -> dict[str, Any]:
        rep = channel.request("sift.hello", {"version": PROTOCOL_VERSION})
        if rep.get("key_basis") != self.config.key_basis:
            raise ProtocolError(
                f"key_basis differs: Alice {rep.get('key_basis')!r}, Bob {self.config.key_basis!r}; "
                f"configure both parties alike"
            )
        self._alice = rep
        return rep

    def _acquire(self, channel: Channel) -> bool:
        cfg = self.config
        tick_b = self.info.tick_s
        need_b = (cfg.align.acquisition_s + cfg.align.max_offset_s + abs(cfg.align.offset_prior_s)) / tick_b
        if not self._finished and self._raw_span() < need_b:
            return False
        rep = self._hello(channel)
        tick_a = float(rep["tick_s"])
        if not rep["has_data"]:
            if rep["finished"]:
                raise AlignmentError("Alice's stream holds no detections; nothing to align or sift")
            return False
        a_first = int(rep["t_first"])
        acq_hi = a_first + int(cfg.align.acquisition_s / tick_a)
        if not rep["finished"] and rep["avail"] < acq_hi:
            return False
        # condition Bob's clicks now that acquisition can start
        mc = cfg.multi_click_window_ps or cfg.coincidence_window_ps or 1000.0
        self._cond = _Conditioner(self._lut, _ps_to_ticks(cfg.dead_time_ps, tick_b), _ps_to_ticks(mc, tick_b),
                                  self._random_bits)
        for c in self._pending_clicks:
            self._add(self._cond.feed(c.t, c.ch, "Bob's chunk"))
        self._pending_clicks = []
        if self._finished:
            self._add(self._cond.flush())
        # Alice's acquisition window is also the first sifting window
        lo = np.iinfo(np.int64).min // 2
        reply = channel.request("sift.step", {"wid": None, "lo": lo, "hi": acq_hi})
        if not reply.get("ready", False):
            raise ProtocolError("sift.step: Alice's acquisition window is not ready although she said it was")
        t_a = _decode_times(reply)
        if self._model is None:
            self.alignment = find_alignment(t_a, self._buf.t, tick_a_s=tick_a, tick_b_s=tick_b, config=cfg.align)
            self._model = self.alignment.model
            sigma = self.alignment.sigma_ticks
        else:
            sigma = float("nan")
        if cfg.coincidence_window_ps > 0:
            self.window_ticks = max(0, _ps_to_ticks(cfg.coincidence_window_ps, tick_a))
        else:
            if not math.isfinite(sigma):
                raise ConfigError("coincidence_window_ps=0 (automatic) needs an alignment; give coincidence_window_ps")
            self.window_ticks = max(1, int(math.ceil(3 * sigma)))
        self.residual_sigma_ticks = sigma
        self.tracker = DriftTracker(self._model, gain_offset=cfg.gain_offset, gain_freq=cfg.gain_freq)
        self._sift_window(channel, reply, t_a, first=True)
        return True

    def _window(self, channel: Channel) -> bool:
        """Request the next window (sending the bases of the open one); False if no data yet."""
        assert self._model is not None and self._lo is not None
        if self._alice_done:
            if self._open_wid is not None:
                self._send_bases(channel, None, None)
            self.done = True
            return True
        tick_a = float(self._alice["tick_s"]) if self._alice else self.info.tick_s
        lo = self._lo
        hi = lo + max(1, int(self.config.window_s / tick_a))
        bob_avail = self._bob_avail()
        if bob_avail != _INT64_MAX:
            # Bob's data must cover the whole window plus the coincidence half-width
            model = self.tracker.model if self.tracker else self._model
            b_hi = int(model.to_alice(np.array([bob_avail], np.int64))[0]) - self.window_ticks - 1
            if b_hi < hi:
                return False
        reply = self._send_bases(channel, lo, hi)
        if not reply.get("ready", False):
            return False
        t_a = _decode_times(reply)
        self._sift_window(channel, reply, t_a, first=False)
        return True

    def _send_bases(self, channel: Channel, lo: int | None, hi: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"wid": None, "lo": lo, "hi": hi}
        if self._open_wid is not None:
            ia, basis_b, bits_b = self._open  # type: ignore[misc]
            test_basis = 1 - self.config.key_basis_index
            body.update({"wid": self._open_wid, "ia": ia.astype(np.uint32), "basis": _pack(basis_b),
                         "test_bits": _pack(bits_b[basis_b == test_basis])})
        reply = channel.request("sift.step", body)
        if self._open_wid is not None:
            self._finish_bases(reply)
        return reply

    def _finish_bases(self, reply: dict[str, Any]) -> None:
        ia, basis_b, bits_b = self._open  # type: ignore[misc]
        n = ia.size
        basis_a = _unpack(reply["basis"], n, "Alice's bases")
        cls, counts = _classify(basis_a, basis_b, self.config.key_basis_index)
        key = bits_b[cls == 0]
        test_b = bits_b[cls == 1]
        test_a = _unpack(reply["test_bits"], test_b.size, "Alice's test bits")
        errors = int(np.count_nonzero(test_a != test_b))
        self.stats.add_window(counts, n, errors)
        self._out.add(key, test_b, errors)
        self._open_wid = None
        self._open = None

    def _sift_window(self, channel: Channel, reply: dict[str, Any], t_a: np.ndarray, first: bool) -> None:
        """Pair Alice's window times with Bob's detections; keep the result open until the bases go out.

        The window is matched in sub-windows of ``window_s`` with a servo
        update after each, so a long window (the acquisition window) follows
        the clock drift too.
        """
        from ._kernels import match_coincidences

        assert self.tracker is not None
        hi_eff = int(reply["hi_eff"])
        w = self.window_ticks
        tick_a = self.tracker.model.tick_a_s
        sub = max(1, int(self.config.window_s / tick_a))
        ia_parts: list[np.ndarray] = []
        ib_parts: list[np.ndarray] = []
        bt = self._buf.t
        # sub-window grid anchored at the window start (fixed, data independent)
        start = self._lo if (self._lo is not None and not first) else (int(t_a[0]) if t_a.size else hi_eff)
        edges = np.searchsorted(t_a, np.arange(start + sub, hi_eff + sub, sub, dtype=np.int64))
        i0 = 0
        for i1 in edges.tolist():
            if i1 <= i0:
                continue
            ta_sub = t_a[i0:i1]
            model = self.tracker.model
            j0 = int(np.searchsorted(bt, math.floor(model.to_bob(int(ta_sub[0]) - w)) - 2))
            j1 = int(np.searchsorted(bt, math.ceil(model.to_bob(int(ta_sub[-1]) + w)) + 2))
            tb_map = model.to_alice(bt[j0:j1])
            n = min(ta_sub.size, j1 - j0)
            ia = np.empty(n, np.int64)
            ib = np.empty(n, np.int64)
            k = match_coincidences(ta_sub, tb_map, w, self._used[j0:j1], ia, ib)
            ia, ib = ia[:k], ib[:k]
            if k:
                # servo on the residuals of this sub-window's pairs
                self.tracker.update(ta_sub[ia], tb_map[ib] - ta_sub[ia])
                ia_parts.append(ia + i0)
                ib_parts.append(ib + j0)
            i0 = i1
        assert i0 == t_a.size
        ia = np.concatenate(ia_parts) if ia_parts else np.empty(0, np.int64)
        ib = np.concatenate(ib_parts) if ib_parts else np.empty(0, np.int64)
        self._open_wid = int(reply["wid_new"])
        self._open = (ia, self._buf.basis[ib], self._buf.bit[ib])
        # drop Bob's detections that can no longer pair with later Alice events
        keep_from = int(np.searchsorted(bt, math.floor(self.tracker.model.to_bob(hi_eff - w)) - 2))
        keep_from = max(0, keep_from)
        self._buf = self._buf.slice(keep_from, len(self._buf))
        self._used = self._used[keep_from:]
        self._lo = hi_eff
        if reply["done"]:
            self._alice_done = True

    def take(self) -> SiftBlock:
        """Bob's bits sifted since the previous call."""
        return self._out.take()

    def result(self) -> SiftStats:
        if self._cond is not None:
            self.stats.conditioning = self._cond.count_dict()
        return self.stats


# --------------------------------------------------------------------------- batch driver


@dataclass
class SiftRun:
    """Both parties' outcome of :func:`sift_streams` (batch runs and tests).

    ``alice`` and ``bob`` are each party's own :class:`SiftBlock` (all the
    bits sifted over the run) and ``alice_stats`` / ``bob_stats`` their
    counts; ``channel`` is the traffic counted on the loopback channel.
    """

    alice: Any
    bob: Any
    alice_stats: Any
    bob_stats: Any
    alignment: Alignment | None
    model: ClockModel | None
    drift: list[tuple[int, float, float]]
    coincidence_window_ticks: int
    channel: dict[str, Any]
    duration_s: float
    topology: str = "bbm92"
    test_basis: str = "X"

    def report(self) -> dict[str, Any]:
        """JSON-ready summary: rates, offset, drift, counts, QBER, traffic."""
        from ..estimate import qber_estimate

        a, b = self.alice_stats, self.bob_stats
        est = qber_estimate(b.test_errors, b.test_pairs)
        if self.topology == "decoy":
            return self._report_decoy(est)
        dur = self.duration_s if self.duration_s > 0 else float("nan")
        m = self.model
        rep = {
            "duration_s": self.duration_s,
            "alignment": self.alignment.as_dict() if self.alignment else None,
            "clock_end": {"offset_s": m.offset_s(0), "freq_ppm": m.freq_ppm},
            "drift": [{"t_s": t * m.tick_a_s, "offset_s": o, "freq_ppm": f} for t, o, f in self.drift[:: max(1, len(self.drift) // 200)]],
            "coincidence_window_ps": self.coincidence_window_ticks * m.tick_a_s * 1e12,
            "rates_hz": {
                "alice_detections": sum(a.detections) / dur,
                "bob_detections": sum(b.detections) / dur,
                "coincidences": b.pairs / dur,
                "sifted_key": b.key_pairs / dur,
            },
            "alice": a.as_dict(),
            "bob": b.as_dict(),
            "key_bits": int(self.bob.key.size),
            "test_bits": int(self.bob.test.size),
            "qber_test": est.as_dict(),
            "channel": self.channel,
            "topology": "bbm92",
        }
        return rep

    def _report_decoy(self, est: Any) -> dict[str, Any]:
        from ..estimate import qber_estimate

        a, b = self.alice_stats, self.bob_stats
        dur = self.duration_s if self.duration_s > 0 else float("nan")
        # per intensity class and basis (Alice's counts: her basis is the prepared one)
        per_class = {str(c): {bn: dict(e) for bn, e in d.items()} for c, d in sorted(a.per_class.items())}
        qber_by_class = {
            str(c): qber_estimate(d[self.test_basis]["test_errors"], d[self.test_basis]["sifted"]).as_dict()
            for c, d in sorted(a.per_class.items())
        }
        return {
            "topology": "decoy",
            "duration_s": self.duration_s,
            "slot_offset": b.offset,
            "rates_hz": {"bob_detections": sum(b.detections) / dur, "announced": b.announced / dur,
                         "sifted_key": b.key_pairs / dur},
            "alice": a.as_dict(),
            "bob": b.as_dict(),
            "per_intensity_class": per_class,
            "key_bits": int(self.bob.key.size),
            "test_bits": int(self.bob.test.size),
            "qber_test": est.as_dict(),
            "qber_test_by_class": qber_by_class,
            "channel": self.channel,
        }



def iter_sift(
    alice_info: StreamInfo,
    alice_chunks: Iterable[Chunk],
    bob_info: StreamInfo,
    bob_chunks: Iterable[Chunk],
    config: SiftConfig | None = None,
    *,
    channel_factory: Callable[[Any], Channel] | None = None,
    random_bits_alice: RandomBits | None = None,
    random_bits_bob: RandomBits | None = None,
    alignment: Alignment | ClockModel | None = None,
) -> Iterator[tuple[SiftBlock, SiftBlock, "AliceSift", "BobSift", Channel]]:
    """Run both parties over a loopback channel, chunk by chunk.

    Feeds the two streams alternately (the one that lags in time first), lets
    Bob step after each chunk and yields ``(alice_block, bob_block, alice,
    bob, channel)`` whenever new bits were sifted. Each party only ever sees
    its own chunks; everything else crosses the (counted) channel.
    """
    from ..channel import LoopbackChannel, Responder

    cfg = config or SiftConfig()
    decoy = cfg.topology == "decoy" or (cfg.topology == "auto" and alice_info.kind == "slots")
    if decoy:
        from .decoy import AliceDecoySift, BobDecoySift

        if alignment is not None:
            raise ConfigError("alignment: a clock model applies to BBM92 only; decoy sifting maps slots by sync")
        alice: Any = AliceDecoySift(alice_info, cfg)
        bob: Any = BobDecoySift(bob_info, cfg, random_bits=random_bits_bob)
    else:
        if alice_info.kind == "slots":
            raise ConfigError("topology='bbm92' but Alice's stream is a slot log (kind='slots'); use 'decoy'")
        alice = AliceSift(alice_info, cfg, random_bits=random_bits_alice)
        bob = BobSift(bob_info, cfg, random_bits=random_bits_bob, alignment=alignment)
    responder = Responder(alice.handlers())
    channel = channel_factory(responder) if channel_factory else LoopbackChannel(responder)
    ia, ib = iter(alice_chunks), iter(bob_chunks)
    ta_sec = tb_sec = -math.inf  # last time seen per party, seconds (own clock)
    a_sec = alice_info.tick_s * (alice_info.slot_period_ticks if alice_info.kind == "slots" else 1)
    a_open = b_open = True
    while a_open or b_open:
        feed_a = a_open and (not b_open or ta_sec <= tb_sec)
        if feed_a:
            c = next(ia, None)
            if c is None:
                alice.finish()
                a_open = False
            else:
                alice.feed(c.t, c.ch)
                if len(c.t):
                    ta_sec = float(c.t[-1]) * a_sec
        else:
            c = next(ib, None)
            if c is None:
                bob.finish()
                b_open = False
            else:
                bob.feed(c.t, c.ch)
                if len(c.t):
                    tb_sec = float(c.t[-1]) * bob_info.tick_s
        if bob.step(channel):
            blk_a, blk_b = alice.take(), bob.take()
            if blk_a.key.size or blk_a.test.size or blk_b.key.size:
                yield blk_a, blk_b, alice, bob, channel
    bob.run(channel)
    yield alice.take(), bob.take(), alice, bob, channel


def sift_streams(
    alice_info: StreamInfo,
    alice_chunks: Iterable[Chunk],
    bob_info: StreamInfo,
    bob_chunks: Iterable[Chunk],
    config: SiftConfig | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    **kwargs: Any,
) -> SiftRun:
    """Sift two whole streams (batch): both parties over a loopback channel.

    Parameters
    ----------
    alice_info, alice_chunks, bob_info, bob_chunks
        Each party's stream (e.g. from :func:`qkdpost.io.open_stream`).
    config : SiftConfig, optional
    progress : callable, optional
        Called with the number of newly sifted key bits after each step.
    **kwargs
        Passed to :func:`iter_sift` (``random_bits_alice``, ``random_bits_bob``,
        ``alignment``, ``channel_factory``).

    Returns
    -------
    SiftRun
    """
    keys_a, keys_b, tests_a, tests_b = [], [], [], []
    blocks_a, blocks_b = [], []
    err_a = err_b = 0
    alice = bob = channel = None
    for blk_a, blk_b, alice, bob, channel in iter_sift(alice_info, alice_chunks, bob_info, bob_chunks, config, **kwargs):
        blocks_a.append(blk_a)
        blocks_b.append(blk_b)
        if progress:
            progress(int(blk_b.key.size))
    assert alice is not None and bob is not None and channel is not None
    sa, sb = alice.result(), bob.result()
    if not isinstance(bob, BobSift):
        from .decoy import DecoyBlock

        def cat(blocks: list[Any]) -> Any:
            return DecoyBlock(*(np.concatenate([getattr(x, f) for x in blocks])
                                for f in ("key", "key_class", "test", "test_class")),
                              sum(x.test_errors for x in blocks))

        return SiftRun(alice=cat(blocks_a), bob=cat(blocks_b), alice_stats=sa, bob_stats=sb, alignment=None,
                       model=None, drift=[], coincidence_window_ticks=0, channel=channel.stats.as_dict(),
                       duration_s=bob.duration_s, topology="decoy",
                       test_basis=BASIS_NAMES[1 - bob.config.key_basis_index])
    for blk_a, blk_b in zip(blocks_a, blocks_b):
        keys_a.append(blk_a.key)
        keys_b.append(blk_b.key)
        tests_a.append(blk_a.test)
        tests_b.append(blk_b.test)
        err_a += blk_a.test_errors
        err_b += blk_b.test_errors
    model = bob.tracker.model if bob.tracker else bob._model
    assert model is not None
    return SiftRun(
        alice=SiftBlock(np.concatenate(keys_a), np.concatenate(tests_a), err_a),
        bob=SiftBlock(np.concatenate(keys_b), np.concatenate(tests_b), err_b),
        alice_stats=sa,
        bob_stats=sb,
        alignment=bob.alignment,
        model=model,
        drift=list(bob.tracker.history) if bob.tracker else [],
        coincidence_window_ticks=bob.window_ticks,
        channel=channel.stats.as_dict(),
        duration_s=bob.duration_s,
        test_basis=BASIS_NAMES[1 - bob.config.key_basis_index],
    )


def __getattr__(name: str) -> Any:
    # the decoy (prepare-and-measure) classes live in .decoy, which imports this module
    if name in ("AliceDecoySift", "BobDecoySift", "DecoyBlock", "DecoyStats"):
        from . import decoy

        return getattr(decoy, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
