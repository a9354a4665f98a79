"""Prepare-and-measure decoy-state BB84 sifting over the channel.

Alice's input is her emission log (a ``kind="slots"`` stream: ``t`` = slot
index, contiguous; ``ch`` = packed slot byte, see :func:`qkdpost.io.model.pack_slot`).
Bob's input is his detection timestamps plus a sync channel (role
``"sync"``): one tick per ``sync_every`` slots, sent with slot ``k *
sync_every`` (docs/simulate.md). Each party's object holds only its own data.

Slot mapping (Bob, local): the sync ticks bracketing a detection give the
local slot period, so Bob's clock offset, frequency and drift drop out; the
detection phase within a slot (``delta``) is the circular mean of the first
detections' phases. This leaves one unknown integer: which slot Bob's first
sync tick marks, plus any whole-slot delay between the sync and the quantum
channel, ``S = k * sync_every + d``.

Offset search (``decoy.score``): Bob sends the (relative) slot numbers of
his first detections -- slot numbers only, no bases or bits. Alice scores
every candidate (k, d) in the searched range by the mean intensity of the
slots they would land on, computed on her own log, and returns only the
scores. Detection probability grows with the mean photon number, so the true
offset stands out (decoy-state intensities: Hwang, PRL 91, 057901 (2003);
Lo, Ma and Chen, PRL 94, 230504 (2005)).

Sifting (``decoy.step``, one round trip per window of slots): Bob announces
his detected slots and bases, and his bits of test-basis detections; Alice
answers which slots match in basis, the intensity class of every announced
slot (as decoy protocols require), and her bits of the matched test-basis
slots. Both keep the key-basis bits of matched slots (with their intensity
class); test-basis bits are disclosed and compared by both.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..channel import Channel
from ..errors import AlignmentError, ConfigError, InputError, ProtocolError
from ..io.model import StreamInfo, unpack_slot
from . import (
    BASIS_NAMES,
    PROTOCOL_VERSION,
    RandomBits,
    SiftConfig,
    _BlockBuffer,
    _Conditioner,
    _csprng_bits,
    _pack,
    _ps_to_ticks,
    _unpack,
    channel_lut,
)

__all__ = ["AliceDecoySift", "BobDecoySift", "DecoyStats", "DecoyBlock"]

#: detections Bob sends for the offset search
N_ACQUIRE = 2000
_INT64_MAX = np.iinfo(np.int64).max


@dataclass
class DecoyBlock:
    """Newly sifted bits of one party: key bits with their intensity classes, test bits likewise."""

    key: np.ndarray
    key_class: np.ndarray
    test: np.ndarray
    test_class: np.ndarray
    test_errors: int

    @property
    def n_test(self) -> int:
        return int(self.test.shape[0])

    def __repr__(self) -> str:  # never show key material
        return f"DecoyBlock(key=<{self.key.size} bits>, test=<{self.n_test} bits>, test_errors={self.test_errors})"


@dataclass
class DecoyStats:
    """Counts of one party. ``per_class[c][b]`` for intensity class c and basis b (Alice's basis)."""

    detections: list[int] = field(default_factory=lambda: [0, 0])  # Bob's per basis (Bob only)
    announced: int = 0
    key_pairs: int = 0
    test_pairs: int = 0
    basis_mismatch: int = 0
    test_errors: int = 0
    windows: int = 0
    unmapped: int = 0
    same_slot_merged: int = 0
    per_class: dict[int, dict[str, dict[str, int]]] = field(default_factory=dict)
    conditioning: dict[str, int] = field(default_factory=dict)
    offset: dict[str, Any] = field(default_factory=dict)

    def add_class(self, cls: np.ndarray, basis_a: np.ndarray, match: np.ndarray, test_err: np.ndarray,
                  test_basis: int) -> None:
        for c in np.unique(cls).tolist():
            sel = cls == c
            d = self.per_class.setdefault(int(c), {b: {"detected": 0, "sifted": 0, "test_errors": 0}
                                                   for b in BASIS_NAMES})
            for b in (0, 1):
                sb = sel & (basis_a == b)
                e = d[BASIS_NAMES[b]]
                e["detected"] += int(np.count_nonzero(sb))
                e["sifted"] += int(np.count_nonzero(sb & match))
                if b == test_basis:
                    e["test_errors"] += int(np.count_nonzero(sb & match & test_err))

    def as_dict(self) -> dict[str, Any]:
        return {
            "detections": {"Z": self.detections[0], "X": self.detections[1]},
            "announced": self.announced, "key_pairs": self.key_pairs, "test_pairs": self.test_pairs,
            "basis_mismatch": self.basis_mismatch, "test_errors": self.test_errors, "windows": self.windows,
            "unmapped": self.unmapped, "same_slot_merged": self.same_slot_merged,
            "per_class": {str(k): v for k, v in sorted(self.per_class.items())},
            "conditioning": self.conditioning, "offset": self.offset,
        }


class _DecoyBuffer:
    def __init__(self) -> None:
        self.key: list[np.ndarray] = []
        self.key_class: list[np.ndarray] = []
        self.test: list[np.ndarray] = []
        self.test_class: list[np.ndarray] = []
        self.errors = 0

    def add(self, key: np.ndarray, key_class: np.ndarray, test: np.ndarray, test_class: np.ndarray, err: int) -> None:
        self.key.append(key)
        self.key_class.append(key_class)
        self.test.append(test)
        self.test_class.append(test_class)
        self.errors += err

    def take(self) -> DecoyBlock:
        cat = lambda xs: np.concatenate(xs) if xs else np.empty(0, np.uint8)  # noqa: E731
        blk = DecoyBlock(cat(self.key), cat(self.key_class), cat(self.test), cat(self.test_class), self.errors)
        self.__init__()  # type: ignore[misc]
        return blk


def _intensities(info: StreamInfo) -> np.ndarray:
    """Mean photon number per class from Alice's log metadata (fallback: decreasing weights)."""
    mu = np.array([1.0, 0.3, 0.0, 0.0])
    raw = info.extra.get("intensities") if info.extra else None
    if raw:
        try:
            vals = [float(v) for v in json.loads(raw)]
            mu[: len(vals)] = vals
        except (ValueError, TypeError):
            raise ConfigError(f"Alice's stream extra['intensities']={raw!r}: expected a JSON list of numbers")
    return mu


# --------------------------------------------------------------------------- Alice


class AliceDecoySift:
    """Alice's side: her emission log and the message handlers.

    Parameters
    ----------
    info : StreamInfo
        Her slot log's metadata (``kind="slots"``, ``slot_period_ticks``,
        ``extra["intensities"]``).
    config : SiftConfig
    """

    def __init__(self, info: StreamInfo, config: SiftConfig | None = None):
        if info.kind != "slots":
            raise ConfigError(f"Alice's stream kind={info.kind!r}: decoy sifting needs her slot log (kind='slots')")
        self.info = info
        self.config = config or SiftConfig()
        self._mu = _intensities(info)
        self._first: int | None = None  # slot number of _packed[0]
        self._packed = np.empty(0, np.uint8)
        self._next_slot: int | None = None
        self._finished = False
        self._out = _DecoyBuffer()
        self.stats = DecoyStats()

    def feed(self, t: Any, ch: Any) -> None:
        """Add a chunk of her log (slot indices must be contiguous)."""
        if self._finished:
            raise InputError("AliceDecoySift.feed after finish(): the log has already ended")
        t = np.asarray(t)
        ch = np.asarray(ch)
        if t.ndim != 1 or t.shape != ch.shape or not np.issubdtype(t.dtype, np.integer):
            raise InputError(f"Alice's log chunk: t (int64 slots) and ch (uint8) must be 1-D of equal length, "
                             f"got {t.shape} {t.dtype} and {ch.shape}")
        if t.size == 0:
            return
        start = int(t[0]) if self._next_slot is None else self._next_slot
        if int(t[0]) != start or (t.size > 1 and not np.array_equal(t, np.arange(start, start + t.size))):
            raise InputError(
                f"Alice's log: slot indices must be contiguous (expected {start}, {start + 1}, ...); "
                f"write one record per pulse slot"
            )
        if self._first is None:
            self._first = start
        self._packed = np.concatenate([self._packed, np.ascontiguousarray(ch, np.uint8)])
        self._next_slot = start + t.size

    def finish(self) -> None:
        self._finished = True

    def _avail(self) -> int:
        if self._finished:
            return _INT64_MAX
        return -1 if self._next_slot is None else self._next_slot

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {"decoy.hello": self._on_hello, "decoy.score": self._on_score, "decoy.step": self._on_step}

    def _on_hello(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("version") != PROTOCOL_VERSION:
            raise ProtocolError(f"decoy.hello: Bob speaks version {body.get('version')!r}, Alice {PROTOCOL_VERSION}")
        return {"slot_period_s": self.info.slot_period_ticks * self.info.tick_s,
                "first_slot": -1 if self._first is None else self._first, "avail": self._avail(),
                "finished": self._finished, "key_basis": self.config.key_basis, "n_classes": 4}

    def _on_score(self, body: dict[str, Any]) -> dict[str, Any]:
        from ._kernels import score_slot_offsets

        slots = np.asarray(body["slots"], np.int64)
        every, kmin, kmax, dmin, dmax = (int(body[k]) for k in ("every", "kmin", "kmax", "dmin", "dmax"))
        if not (every > 0 and kmax >= kmin and dmax >= dmin and (kmax - kmin + 1) * (dmax - dmin + 1) <= 1 << 16):
            raise ProtocolError("decoy.score: bad search range (at most 65536 candidates)")
        if slots.size and np.any(np.diff(slots) < 0):
            raise ProtocolError("decoy.score: slots must be sorted")
        need = (int(slots[-1]) if slots.size else 0) + kmax * every + dmax
        if self._first is None or (self._avail() <= need and not self._finished):
            return {"ready": False}
        cls = (self._packed >> 2) & 3
        score = np.zeros((kmax - kmin + 1, dmax - dmin + 1))
        cnt = np.zeros(score.shape, np.int64)
        score_slot_offsets(slots, self._first, cls, self._mu, every, kmin, kmax, dmin, dmax, score, cnt)
        return {"ready": True, "score": score, "n": cnt}

    def _on_step(self, body: dict[str, Any]) -> dict[str, Any]:
        lo, hi = int(body["lo"]), int(body["hi"])
        if hi < lo:
            raise ProtocolError(f"decoy.step: window [{lo}, {hi}) is reversed")
        if self._avail() < hi:
            return {"ready": False}
        n = int(body["n"])
        ds = np.asarray(body["ds"])
        if n < 0 or (n and (ds.ndim != 1 or ds.size != n - 1 or (ds.size and ds.dtype.kind not in "iu"))):
            raise ProtocolError(f"decoy.step: {n} announced slots need {max(n - 1, 0)} integer gaps, got "
                                f"{ds.size} of dtype {ds.dtype}")
        slots = np.empty(n, np.int64)
        if n:
            slots[0] = int(body["s0"])
            np.cumsum(ds.astype(np.int64), out=slots[1:])
            slots[1:] += slots[0]
        if n and (slots[0] < lo or slots[-1] >= hi or np.any(np.diff(slots) <= 0)):
            raise ProtocolError("decoy.step: announced slots must be increasing and inside the window")
        first = self._first if self._first is not None else 0
        idx = slots - first
        if n and idx[0] < 0:
            raise ProtocolError("decoy.step: an announced slot precedes the window Alice still holds")
        inside = idx < self._packed.size  # slots past the end of her log never match (class 3)
        src = self._packed if self._packed.size else np.zeros(1, np.uint8)
        bit_a, basis_a, cls = unpack_slot(src[np.where(inside, idx, 0)])
        basis_a = np.where(inside, basis_a, 255).astype(np.uint8)
        cls = np.where(inside, cls, 3).astype(np.uint8)
        basis_b = _unpack(body["basis"], n, "Bob's bases")
        test_basis = 1 - self.config.key_basis_index
        b_test = basis_b == test_basis
        bits_b_test = _unpack(body["test_bits"], int(np.count_nonzero(b_test)), "Bob's test bits")
        match = basis_a == basis_b
        key_m = match & (basis_a == self.config.key_basis_index)
        test_m = match & (basis_a == test_basis)
        test_a = bit_a[test_m]
        test_b = bits_b_test[test_m[b_test]]
        err = test_a != test_b
        s = self.stats
        s.announced += n
        s.key_pairs += int(key_m.sum())
        s.test_pairs += int(test_m.sum())
        s.basis_mismatch += int(n - match.sum())
        s.test_errors += int(err.sum())
        s.windows += 1
        full_err = np.zeros(n, bool)
        full_err[np.flatnonzero(test_m)] = err
        s.add_class(cls, basis_a, match, full_err, test_basis)
        self._out.add(bit_a[key_m], cls[key_m], test_a, cls[test_m], int(err.sum()))
        # slots before the window end are never asked for again
        drop = max(0, min(hi - first, self._packed.size))
        self._packed = self._packed[drop:]
        self._first = first + drop
        return {"ready": True, "match": _pack(match), "cls": _pack_classes(cls), "test_bits": _pack(test_a)}

    def take(self) -> DecoyBlock:
        return self._out.take()

    def result(self) -> DecoyStats:
        return self.stats


def _pack_classes(cls: np.ndarray) -> np.ndarray:
    """Two bits per class value (4 per byte)."""
    c = np.zeros(((cls.size + 3) // 4) * 4, np.uint8)
    c[: cls.size] = cls
    c = c.reshape(-1, 4)
    return (c[:, 0] | (c[:, 1] << 2) | (c[:, 2] << 4) | (c[:, 3] << 6)).astype(np.uint8)


def _unpack_classes(packed: Any, n: int) -> np.ndarray:
    p = np.asarray(packed, np.uint8)
    if p.ndim != 1 or p.size != (n + 3) // 4:
        raise ProtocolError(f"decoy.step: expected {(n + 3) // 4} bytes of intensity classes for {n} slots")
    out = np.stack([p & 3, (p >> 2) & 3, (p >> 4) & 3, (p >> 6) & 3], axis=1).reshape(-1)
    return out[:n].astype(np.uint8)


# --------------------------------------------------------------------------- Bob


class BobDecoySift:
    """Bob's side: detections and sync ticks, slot mapping, the driving loop.

    Parameters
    ----------
    info : StreamInfo
        His stream: H/V/D/A detector channels and one ``"sync"`` channel;
        ``extra["sync_every_slots"]`` (or ``sync_every``) slots per sync tick.
    config : SiftConfig
    random_bits : callable, optional
        Random bits for double clicks (default OS CSPRNG).
    sync_every : int, optional
        Slots per sync tick, if not in ``info.extra``.
    search_syncs : int
        The offset search covers Bob's first sync tick marking any of sync
        numbers ``-search_syncs .. +search_syncs`` around the slot his own
        count gives, and a whole-slot delay of ``-search_slots .. +search_slots``
        between the sync and the quantum channel.
    """

    def __init__(self, info: StreamInfo, config: SiftConfig | None = None, *, random_bits: RandomBits | None = None,
                 sync_every: int | None = None, search_syncs: int = 64, search_slots: int = 16):
        self.info = info
        self.config = config or SiftConfig()
        if info.kind != "timestamps":
            raise ConfigError(f"Bob's stream kind={info.kind!r}: decoy sifting needs his detection timestamps")
        syncs = [c for c, r in info.channel_map.items() if r == "sync"]
        if len(syncs) != 1:
            raise ConfigError(f"Bob's channel_map={dict(info.channel_map)!r}: decoy sifting needs exactly one "
                              f"channel with role 'sync'")
        self._sync_ch = int(syncs[0])
        every = sync_every if sync_every is not None else int(info.extra.get("sync_every_slots", 0) or 0)
        if every <= 0:
            raise ConfigError("sync_every: give the slots per sync tick (stream extra 'sync_every_slots')")
        self.every = every
        self.search_syncs, self.search_slots = int(search_syncs), int(search_slots)
        lut = channel_lut(dict(info.channel_map), "Bob's channel_map")
        mc = self.config.multi_click_window_ps or self.config.coincidence_window_ps or 1000.0
        self._cond = _Conditioner(lut, _ps_to_ticks(self.config.dead_time_ps, info.tick_s),
                                  _ps_to_ticks(mc, info.tick_s), random_bits or _csprng_bits)
        self._random_bits = random_bits or _csprng_bits
        self._flip = np.array([b in self.config.bob_flip for b in BASIS_NAMES], dtype=np.uint8)
        self._det_t = np.empty(0, np.int64)
        self._det_basis = np.empty(0, np.uint8)
        self._det_bit = np.empty(0, np.uint8)
        self._sync_t = np.empty(0, np.int64)
        self._finished = False
        self._t_first: int | None = None
        self._t_last = 0
        self._delta: float | None = None
        self._offset: int | None = None  # S
        self._lo: int | None = None
        self._alice: dict[str, Any] | None = None
        self.done = False
        self._out = _DecoyBuffer()
        self.stats = DecoyStats()

    # -- data
    @property
    def duration_s(self) -> float:
        """Span of Bob's events seen so far, seconds."""
        return 0.0 if self._t_first is None else (self._t_last - self._t_first) * self.info.tick_s

    def feed(self, t: Any, ch: Any) -> None:
        if self._finished:
            raise InputError("BobDecoySift.feed after finish(): the stream has already ended")
        t = np.asarray(t)
        ch = np.asarray(ch)
        if t.size:
            if self._t_first is None:
                self._t_first = int(t[0])
            self._t_last = int(t[-1])
        if ch.shape != t.shape or ch.ndim != 1 or not np.issubdtype(ch.dtype, np.integer):
            raise InputError(f"Bob's chunk: t and ch must be 1-D arrays of equal length, got {t.shape}, {ch.shape}")
        is_sync = ch == self._sync_ch
        if is_sync.any():
            self._sync_t = np.concatenate([self._sync_t, np.asarray(t[is_sync], np.int64)])
        self._add(self._cond.feed(t, ch, "Bob's chunk"))

    def finish(self) -> None:
        if not self._finished:
            self._add(self._cond.flush())
            self._finished = True

    def _add(self, d: Any) -> None:
        if len(d) == 0:
            return
        nz = int(np.count_nonzero(d.basis))
        self.stats.detections[0] += len(d) - nz
        self.stats.detections[1] += nz
        self._det_t = np.concatenate([self._det_t, d.t])
        self._det_basis = np.concatenate([self._det_basis, d.basis])
        self._det_bit = np.concatenate([self._det_bit, d.bit ^ self._flip[d.basis]])

    def _sync_numbers(self) -> np.ndarray:
        """Slot number (relative to the first tick) of every sync tick; missed ticks are skipped."""
        st = self._sync_t
        if st.size < 2:
            return np.zeros(st.size, np.int64)
        gaps = np.diff(st)
        med = float(np.median(gaps[: min(gaps.size, 1000)]))
        steps = np.maximum(1, np.rint(gaps / med)).astype(np.int64)
        return np.concatenate([[0], np.cumsum(steps)]) * self.every

    def _map(self, n_det: int | None = None, nums: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """Relative slot of the first ``n_det`` buffered detections (-1 where not bracketed by sync ticks)."""
        from ._kernels import map_slots

        t = self._det_t if n_det is None else self._det_t[:n_det]
        out = np.empty(t.size, np.int64)
        nums = self._sync_numbers() if nums is None else nums
        n = map_slots(t, self._sync_t, nums, float(self._delta or 0.0), out)
        return out, n

    # -- protocol
    def step(self, channel: Channel) -> bool:
        if self.done:
            return False
        if self._offset is None and not self._acquire(channel):
            return False
        progressed = False
        while not self.done and self._window(channel):
            progressed = True
        return progressed

    def run(self, channel: Channel) -> None:
        while self.step(channel):
            pass
        if not self.done:
            raise ProtocolError("BobDecoySift.run: stopped before the end; call finish() on both parties first")

    def _acquire(self, channel: Channel) -> bool:
        if self._sync_t.size < 3:
            if self._finished:
                raise AlignmentError(f"Bob's stream has {self._sync_t.size} sync ticks on channel {self._sync_ch}; "
                                     f"decoy sifting needs the sync channel")
            return False
        # detections bracketed by sync ticks so far
        last_sync = self._sync_t[-1]
        n_ready = int(np.searchsorted(self._det_t, last_sync))
        if n_ready < N_ACQUIRE and not self._finished:
            return False
        if self._alice is None:
            rep = channel.request("decoy.hello", {"version": PROTOCOL_VERSION})
            if rep.get("key_basis") != self.config.key_basis:
                raise ProtocolError(f"key_basis differs: Alice {rep.get('key_basis')!r}, Bob {self.config.key_basis!r}")
            self._alice = rep
        # detection phase within the slot: circular mean over the first detections
        p = float(np.median(np.diff(self._sync_t[: min(self._sync_t.size, 1001)]))) / self.every
        self._delta = 0.0
        rel, _ = self._map()
        sel = np.flatnonzero(rel >= 0)[:N_ACQUIRE]
        if sel.size < 50:
            raise AlignmentError(f"only {sel.size} detections between sync ticks; too little data to find the "
                                 f"slot offset")
        j = np.searchsorted(self._sync_t, self._det_t[sel], side="right") - 1
        phase = (self._det_t[sel] - self._sync_t[j]) % p
        ang = 2 * np.pi * phase / p
        self._delta = float(np.angle(np.mean(np.exp(1j * ang))) / (2 * np.pi) * p)
        spread = float(np.abs(np.mean(np.exp(1j * ang))))
        rel, _ = self._map()
        slots_rel = rel[sel]
        kmin, kmax = -self.search_syncs, self.search_syncs
        dmin, dmax = -self.search_slots, self.search_slots
        first_a = int(self._alice["first_slot"])
        kshift = (first_a // self.every) if first_a > 0 else 0
        rep = channel.request("decoy.score", {"slots": slots_rel, "every": self.every, "kmin": kmin + kshift,
                                              "kmax": kmax + kshift, "dmin": dmin, "dmax": dmax})
        if not rep.get("ready"):
            return False
        score, cnt = np.asarray(rep["score"]), np.asarray(rep["n"])
        valid = cnt >= max(50, slots_rel.size // 2)
        if not valid.any():
            raise AlignmentError("no slot offset candidate overlaps Alice's log; are the files from the same run?")
        mean = np.where(valid, score / np.maximum(cnt, 1), np.nan)
        flat = np.nanargmax(mean)
        ki, di = np.unravel_index(flat, mean.shape)
        others = mean[valid]
        sd = float(np.nanstd(others)) or 1e-12
        z = float((mean[ki, di] - np.nanmean(others)) / sd)
        if z < self.config.align.min_significance or others.size < 2:
            raise AlignmentError(
                f"no significant slot offset: best candidate stands {z:.1f} sd above the others "
                f"(need {self.config.align.min_significance}); are the files from the same run, and is the "
                f"offset within +-{self.search_syncs} syncs?"
            )
        self._offset = int((kmin + kshift + ki) * self.every + (dmin + di))
        self.stats.offset = {"slot_offset": self._offset, "sync_number_of_first_tick": int(kmin + kshift + ki),
                             "delay_slots": int(dmin + di), "significance": z, "phase_ticks": self._delta,
                             "phase_concentration": spread, "slot_period_ticks_bob": p}
        return True

    def _window(self, channel: Channel) -> bool:
        assert self._offset is not None and self._alice is not None
        period_s = float(self._alice["slot_period_s"])
        wslots = max(1, int(self.config.window_s / period_s))
        nums = self._sync_numbers()
        if self._lo is None:
            rel, _ = self._map(nums=nums)
            ok = rel[rel >= 0] + self._offset
            self._lo = int(ok[0]) if ok.size else 0
            self._lo -= self._lo % wslots
        lo = self._lo
        hi = lo + wslots
        # Bob's mapping must cover [lo, hi): the last sync tick maps past hi
        covered = int(nums[-1]) + self._offset if nums.size else -1
        if not self._finished and covered < hi:
            return False
        # only detections before the first sync tick past hi can map below hi
        jh = int(np.searchsorted(nums, hi - self._offset + self.every))
        n_lim = int(np.searchsorted(self._det_t, self._sync_t[jh])) if jh < nums.size else self._det_t.size
        rel, _ = self._map(n_lim, nums)
        unm = rel < 0
        slots = np.where(unm, -1, rel + self._offset)
        in_win = (~unm) & (slots >= lo) & (slots < hi)
        # detections before lo that could not be mapped are dropped as unmapped
        idx = np.flatnonzero(in_win)
        s_w = slots[idx]
        basis = self._det_basis[idx].copy()
        bits = self._det_bit[idx].copy()
        # two detections in one slot: one detection, random bit (and basis if they differ)
        dup = np.flatnonzero(np.diff(s_w) == 0) + 1 if s_w.size > 1 else np.empty(0, np.int64)
        if dup.size:
            keep = np.ones(s_w.size, bool)
            for i in dup.tolist():
                j = i - 1
                while not keep[j]:
                    j -= 1
                if basis[j] != basis[i]:
                    basis[j] = self._random_bits(1)[0]
                bits[j] = self._random_bits(1)[0]
                keep[i] = False
            self.stats.same_slot_merged += int(dup.size)
            s_w, basis, bits = s_w[keep], basis[keep], bits[keep]
        beyond = (~unm) & (slots >= hi)
        done = self._finished and n_lim == self._det_t.size and not np.any(beyond)
        test_basis = 1 - self.config.key_basis_index
        n = int(s_w.size)
        ds = np.diff(s_w) if n else np.empty(0, np.int64)
        body = {"lo": lo, "hi": hi, "n": n, "s0": int(s_w[0]) if n else 0,
                "ds": ds.astype(np.uint32) if (ds.size == 0 or ds.max() < 1 << 32) else ds,
                "basis": _pack(basis), "test_bits": _pack(bits[basis == test_basis])}
        rep = channel.request("decoy.step", body)
        if not rep.get("ready"):
            return False
        match = _unpack(rep["match"], n, "Alice's basis matches").astype(bool)
        cls = _unpack_classes(rep["cls"], n)
        key_m = match & (basis == self.config.key_basis_index)
        test_m = match & (basis == test_basis)
        test_b = bits[test_m]
        test_a = _unpack(rep["test_bits"], test_b.size, "Alice's test bits")
        err = test_a != test_b
        s = self.stats
        s.announced += n
        s.key_pairs += int(key_m.sum())
        s.test_pairs += int(test_m.sum())
        s.basis_mismatch += int(n - match.sum())
        s.test_errors += int(err.sum())
        s.windows += 1
        full_err = np.zeros(n, bool)
        full_err[np.flatnonzero(test_m)] = err
        # per-class counts by Bob's basis (equal to Alice's on matched slots, which is what both share)
        s.add_class(cls, basis, match, full_err, test_basis)
        self._out.add(bits[key_m], cls[key_m], test_b, cls[test_m], int(err.sum()))
        # drop everything before hi
        # detections considered and below hi (or never mappable) are done with
        keep_from = int(np.flatnonzero(beyond)[0]) if beyond.any() else n_lim
        s.unmapped += int(np.count_nonzero(unm[:keep_from]))
        self._det_t = self._det_t[keep_from:]
        self._det_basis = self._det_basis[keep_from:]
        self._det_bit = self._det_bit[keep_from:]
        # keep the sync ticks still needed to bracket the remaining detections
        if self._sync_t.size > 2:
            if self._det_t.size:
                js = max(0, int(np.searchsorted(self._sync_t, self._det_t[0], side="right")) - 2)
            else:
                js = self._sync_t.size - 2
            if js:
                base = self._sync_numbers()[js]
                self._sync_t = self._sync_t[js:]
                self._offset += int(base)
        self._lo = hi
        if done:
            self.done = True
        return True

    def take(self) -> DecoyBlock:
        return self._out.take()

    def result(self) -> DecoyStats:
        self.stats.conditioning = self._cond.count_dict()
        return self.stats
