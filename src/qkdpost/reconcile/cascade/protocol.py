"""Cascade as a two-party protocol: Alice answers parity requests, Bob drives.

Messages (all on one :class:`~qkdpost.channel.Channel`, Bob -> Alice)
--------------------------------------------------------------------
``cascade.start``
    ``{sid, seed (8 bytes, little endian), n, frames (int64[N] frame ids),
    passes, ks (int64[passes] block sizes)}`` -> ``{n_frames}``.
    Bob proposes the seed of the shared public permutations (from
    :mod:`secrets` unless the caller fixes it). The block sizes give both
    parties the same node numbering (``_geometry``).
``cascade.parities``
    One round trip of the whole batch: ``{sid, c: int32[N], v, t: int32[m', 4]}``
    with range requests as node ids: ``c[i]`` requests for frame i (in the
    order of ``frames``), then ``v``, the global ids of the requested nodes
    (the tree node whose range, in its pass's permuted order, Alice sums;
    uint32 when every id of the geometry fits, else int64), frame after
    frame; and top-level requests ``t`` (frame index, pass, block size,
    number of leading blocks) -> ``{r, t}``: the parities, bit-packed (LSB
    first). Alice refuses (``ProtocolError``, nothing disclosed) counts that
    do not add up, ids outside the geometry, and ids of empty nodes.
    Every parity Alice sends is one disclosed bit; Bob never asks for a
    parity he can infer (the sibling of an asked half, the last block of a
    pass from the frame parity, halves made only of bits already known).
``cascade.end``
    ``{sid}`` -> ``{}``. Alice drops the batch.

Scheduling (what makes it efficient)
------------------------------------
Bob keeps, per frame, every node whose parity Alice disclosed or that he
inferred, with its error parity kept current through every correction
(sub-block reuse, Martinez-Mateo et al., QIC 15, 2015, Sec. 4). Each round
he first applies what he can without asking, then asks only for the
smallest pending blocks (``slack`` levels of tolerance), so that corrections
in small blocks cancel the searches of larger blocks they made even before
those are paid for. Frames progress independently; one round trip carries
every frame's requests.
"""

from __future__ import annotations

import mmap
import secrets
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

import numpy as np

from ...bits import as_bits, pack_bits, unpack_bits
from ...channel import Channel, Handler, LoopbackChannel, Responder
from ...errors import ConfigError, InputError, ProtocolError
from ..result import ReconcileResult
from . import _kernels as K
from .presets import block_sizes, get_preset

__all__ = ["CascadeConfig", "CascadeAlice", "CascadeBob", "reconcile_cascade"]

MAX_PASSES = 64
# passes whose inverse permutation Bob keeps position-major (one 64-byte row per bit)
INV_COLS = 16
_PERM_CACHE_SIZE = 2


@dataclass(frozen=True, kw_only=True)
class CascadeConfig:
    """Bob's Cascade settings (field names are the CLI flags and config keys).

    Attributes
    ----------
    preset : str
        One of :data:`~qkdpost.reconcile.cascade.PRESETS`.
    slack : int
        Scheduling tolerance in tree levels: each round asks for pending
        blocks at most ``slack`` levels above the smallest pending one. 0 is
        strict smallest-first (fewest parities, most round trips); large
        values search every pending block in parallel. Default 1: at
        n = 10^6, Q = 2 % it costs +0.0003 in f for half the round trips
        of strict order (docs/cascade.md).
    local_max : int
        Pending blocks of up to this many bits are scheduled locally: one is
        asked about as soon as no smaller pending block (nor an equal one
        already chosen) shares a bit with it, instead of waiting for every
        smaller block of the frame. 0 turns this off (global smallest-first
        with ``slack``). Costs O(block size) per pending block and round.
    max_rounds : int
        Safety cap on rounds per frame; a frame that hits it is reported as
        not reconciled.
    passes : int
        Passes to run instead of the preset's own count (0: the preset's;
        later passes repeat its last block-size rule, n/2 for the option
        presets). A permutation set has, on average, up to about half a pair
        of positions that share a block in every pass of option7 (14 passes);
        a frame with errors on both never sees them, so a session that keeps
        its seed can sit on a frame error rate of ~q^2 (measured: 4 of 2608
        frames, n = 10^6, Q = 5 %, all on the same pair). Each further n/2
        pass halves the number of such pairs for about one parity per frame
        (docs/cascade.md, "FER at n = 10^6").
    """

    preset: str = "option7"
    slack: int = 1
    local_max: int = 4096
    max_rounds: int = 1_000_000
    passes: int = 0

    def __post_init__(self) -> None:
        get_preset(self.preset)
        if not (isinstance(self.slack, (int, np.integer)) and 0 <= self.slack <= 64):
            raise ConfigError(f"slack={self.slack!r}: must be an integer in 0..64 (0 = smallest first)")
        if not (isinstance(self.local_max, (int, np.integer)) and self.local_max >= 0):
            raise ConfigError(f"local_max={self.local_max!r}: must be an integer >= 0 (0 = off)")
        if not (isinstance(self.max_rounds, (int, np.integer)) and self.max_rounds >= 1):
            raise ConfigError(f"max_rounds={self.max_rounds!r}: must be a positive integer")
        if not (isinstance(self.passes, (int, np.integer)) and 0 <= self.passes <= MAX_PASSES):
            raise ConfigError(f"passes={self.passes!r}: must be an integer in 0..{MAX_PASSES} "
                              "(0 = the preset's own count)")


class _Perms:
    """Public permutations of one (seed, n), built pass by pass on first use.

    ``pi[0, q]`` is the order of pass q. Its inverse is only built when
    ``inverse=True`` is asked, i.e. on Bob's side: for q < INV_COLS in column
    q of the position-major table ``inv`` (int32[n, INV_COLS], rows aligned
    to 64 bytes, so a correction finds the bit's place in every pass in one
    cache line), for later passes in ``pi[1, q]``; pass 1's also in ``pi[1, 1]``
    (Bob's scheduler reads it in sequence). Arrays are allocated with
    ``np.empty`` so untouched passes cost no memory.
    """

    def __init__(self, seed: int, n: int):
        self.seed = np.uint64(seed)
        self.n = n
        self.pi = np.empty((2, MAX_PASSES, n), dtype=np.int32)
        self.done = np.zeros((2, MAX_PASSES), dtype=bool)
        self.masks = np.empty((MAX_PASSES, (n + 63) // 64), dtype=np.uint64)
        self.maskk = np.zeros(MAX_PASSES, dtype=np.int64)
        self._inv: np.ndarray | None = None
        # sessions in threads of one process may share these tables (same seed and n): one builder at a time
        self._lock = threading.RLock()

    @property
    def inv(self) -> np.ndarray:
        with self._lock:
            return self._inv_table()

    def _inv_table(self) -> np.ndarray:
        if self._inv is None:
            raw = np.empty(self.n * INV_COLS + 16, dtype=np.int32)
            skip = (-raw.ctypes.data % 64) // 4  # first row on a cache-line boundary
            self._inv = raw[skip : skip + self.n * INV_COLS].reshape(self.n, INV_COLS)
        return self._inv

    def ensure_mask(self, q: int, k: int) -> None:
        """Packed membership mask of block 0 of pass q (for passes of two blocks)."""
        with self._lock:
            if self.maskk[q] != k:
                self.ensure(q, inverse=False)
                K.fill_block0_mask(self.pi[0, q], np.int64(k), self.masks[q])
                self.maskk[q] = k

    def ensure(self, q: int, inverse: bool) -> None:
        with self._lock:
            if not self.done[0, q]:
                K.fill_permutation(self.seed, np.int64(q), self.pi[0, q])
                self.done[0, q] = True
            if inverse and not self.done[1, q] and q > 0:
                if q < INV_COLS:
                    K.fill_inverse_column(self.pi[0, q], self._inv_table(), np.int64(q))
                if q >= INV_COLS or q == 1:  # pass 1's also pass-major: Bob's scheduler reads it in sequence
                    K.fill_inverse(self.pi[0, q], self.pi[1, q])
                self.done[1, q] = True


class _PermCache:
    """Small LRU of :class:`_Perms`; one per party class (never shared between the parties)."""

    def __init__(self) -> None:
        self._items: OrderedDict[tuple[int, int], _Perms] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, seed: int, n: int) -> _Perms:
        key = (int(seed), int(n))
        with self._lock:
            item = self._items.get(key)
            if item is None:
                item = _Perms(seed, n)
                self._items[key] = item
                while len(self._items) > _PERM_CACHE_SIZE:
                    self._items.popitem(last=False)
            else:
                self._items.move_to_end(key)
            return item


# Process-wide caches, one per party: permutations are public and depend only on
# (seed, n), so runs with the same agreed seed reuse them. Alice's and Bob's
# caches are separate, so each party pays for its own, as it would in its own process.
_ALICE_PERMS = _PermCache()
_BOB_PERMS = _PermCache()


def _geometry(ks: list[int], n: int) -> np.ndarray:
    P = len(ks)
    geo = np.zeros((K.NGEO, P + 1), dtype=np.int64)
    geo[K.G_KSLOT] = -1
    base = 0
    slots = 0
    for q, k in enumerate(ks):
        if q > 0 and k <= K.KQ_MAX_K:  # small-block pass: Bob keeps its known positions in its own order too
            geo[K.G_KSLOT, q] = slots
            slots += 1
        nb = -(-n // k)
        stride = 2 * (1 << max(0, (k - 1).bit_length()))
        geo[K.G_K, q] = k
        geo[K.G_NB, q] = nb
        geo[K.G_STRIDE, q] = stride
        geo[K.G_BASE, q] = base
        base += nb * stride
    geo[K.G_BASE, P] = base
    geo[K.G_K, P] = 1
    geo[K.G_STRIDE, P] = 1
    return geo


class CascadeAlice:
    """Alice's side of Cascade: answers parity requests about her own frames.

    Parameters
    ----------
    frames : mapping of int -> ndarray of uint8, shape (n,)
        Her sifted bits per frame id. They are read, never modified, and
        never sent; only parities Bob asks for leave this object.

    Attributes
    ----------
    leaked : dict of int -> int
        Parities disclosed per frame id (her side of the leakage count).
    """

    def __init__(self, frames: Mapping[int, np.ndarray]):
        self._frames = {int(k): as_bits(v, f"frames[{k}]") for k, v in frames.items()}
        self._sessions: dict[int, dict[str, Any]] = {}
        self._perms = _ALICE_PERMS
        self.leaked: dict[int, int] = {}

    def add_frames(self, frames: Mapping[int, np.ndarray]) -> None:
        """Make more frames available (e.g. the pipeline's next blocks)."""
        for k, v in frames.items():
            self._frames[int(k)] = as_bits(v, f"frames[{k}]")

    def drop_frames(self, frame_ids: Any) -> None:
        """Forget frames once reconciled."""
        for k in np.atleast_1d(frame_ids):
            self._frames.pop(int(k), None)

    def handlers(self) -> dict[str, Handler]:
        """``{kind: fn}`` to register on a :class:`~qkdpost.channel.Responder`."""
        return {
            "cascade.start": self._on_start,
            "cascade.parities": self._on_parities,
            "cascade.end": self._on_end,
        }

    def _on_start(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            sid, n, passes = int(body["sid"]), int(body["n"]), int(body["passes"])
            seed = int.from_bytes(bytes(body["seed"]), "little")
            ids = np.asarray(body["frames"], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"cascade.start: missing or bad field ({exc})") from None
        if not (1 <= passes <= MAX_PASSES) or not (1 <= n < 2**31) or not (0 <= seed < 2**64):
            raise ProtocolError(f"cascade.start: passes={passes}, n={n} or seed out of range")
        try:
            ks = np.asarray(body["ks"]).reshape(-1)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"cascade.start: missing or bad field ks ({exc})") from None
        if ks.dtype.kind not in "iu" or ks.shape[0] != passes or ks.min() < 1 or ks.max() > n:
            raise ProtocolError(f"cascade.start: ks must be {passes} integer block sizes in 1..n={n}")
        if ids.ndim != 1:
            raise ProtocolError(f"cascade.start: frames must be a 1-D list of ids, got shape {ids.shape}")
        N = ids.shape[0]
        mine = []
        for fid in ids.tolist():  # validate against her frames before allocating anything sized by Bob's n
            bits = self._frames.get(int(fid))
            if bits is None:
                raise ProtocolError(f"cascade.start: Alice has no frame {int(fid)}")
            if bits.shape[0] != n:
                raise ProtocolError(
                    f"cascade.start: frame {int(fid)} has {bits.shape[0]} bits on Alice's side, Bob has {n}"
                )
            mine.append(bits)
        abits = np.empty((N, n), dtype=np.uint8)
        for i, (fid, bits) in enumerate(zip(ids.tolist(), mine)):
            abits[i] = bits
            self.leaked.setdefault(int(fid), 0)
        eng = (
            abits,
            pack_bits(abits),
            _sparse_zeros((N, passes, (n + 1 + 63) // 64)),  # prefix parities: only passes asked about are built
            np.full((N, passes), -1, dtype=np.int64),
            np.zeros((N, 1, 1), dtype=np.uint64),
            np.zeros(2, dtype=np.int64),
        )
        # an empty batch needs no permutations (and must not make Alice build tables for an unchecked n)
        perms = self._perms.get(seed, n) if N else None
        geo = _geometry([int(k) for k in ks], n)
        self._sessions[sid] = {
            "eng": eng, "ids": ids, "passes": passes, "perms": perms, "geo": geo,
            "dec": np.empty((4, 0), dtype=np.int64), "used": np.zeros(passes, dtype=np.uint8),
        }
        return {"n_frames": int(ids.shape[0])}

    def _on_parities(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            sess = self._sessions[int(body["sid"])]
            counts = np.asarray(body["c"]).reshape(-1)
            nodes = np.asarray(body["v"]).reshape(-1)
            t = np.asarray(body["t"]).reshape(-1, 4)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"cascade.parities: unknown session or bad field ({exc})") from None
        eng, perms, P, geo = sess["eng"], sess["perms"], sess["passes"], sess["geo"]
        N, n = eng[0].shape
        nr = nodes.shape[0]
        if counts.dtype.kind not in "iu" or nodes.dtype.kind not in "iu" or t.dtype.kind not in "iu":
            raise ProtocolError("cascade.parities: c (counts), v (node ids) and t must be integer arrays")
        if counts.shape[0] != N:
            raise ProtocolError(f"cascade.parities: c (counts) must hold {N}, one per frame, got {counts.shape[0]}")
        # one dtype per field for the kernel (no compilation per peer-chosen dtype); ids out of
        # int64 range cannot name a node, and the kernel refuses every id >= the node count
        counts = counts.astype(np.int64, copy=False)
        if nodes.dtype not in (np.dtype(np.uint32), np.dtype(np.int64)):
            if nodes.dtype.kind == "u" and nr and int(nodes.max()) >= 2**63:
                raise ProtocolError("cascade.parities: a node id is outside the batch's geometry")
            nodes = nodes.astype(np.int64)
        t = np.ascontiguousarray(t, dtype=np.int64)
        nt = t.shape[0]
        if sess["dec"].shape[1] < nr:  # decoded requests (frame, pass, start, end), grown on demand
            sess["dec"] = np.empty((4, max(nr, 2 * sess["dec"].shape[1])), dtype=np.int64)
        dec, used = sess["dec"], sess["used"]
        if perms is None:  # empty batch: nothing can validly be asked, and no tables exist
            status = K.alice_check_requests(geo, np.int64(n), counts, nodes, t, dec, used)
            if status:
                raise ProtocolError("cascade.parities: " + _REQUEST_ERRORS.get(status, f"invalid request ({status})"))
            return {"r": np.zeros(0, np.uint8), "t": np.zeros(0, np.uint8)}
        # top-level answers: each row's c is checked against n by the kernel; bound the total
        # here too, since the reply is sized from it before the kernel runs
        ntop = int(t[:, 3].sum()) if nt else 0
        if not 0 <= ntop <= nt * n:
            raise ProtocolError("cascade.parities: " + _REQUEST_ERRORS[K.RQ_TOP])
        per = np.zeros(N, dtype=np.int64)
        for ask_masks in (True, False):
            rpk = np.zeros((nr + 7) // 8, dtype=np.uint8)
            tpk = np.zeros((ntop + 7) // 8, dtype=np.uint8)
            status = K.alice_answer(
                geo, np.int64(n), counts, nodes, t, eng, perms.pi, perms.done[0], perms.masks, perms.maskk,
                ask_masks, dec, used, per, rpk, tpk,
            )
            if status != K.RQ_NEED_TABLES:
                break
            # first use of a pass (or of a big single block): build its tables, then answer
            for q in np.flatnonzero(used[:P] > perms.done[0, :P]):
                perms.ensure(int(q), inverse=False)
            for q, k, c in t[:, 1:4].tolist():
                if c == 1 and k > K.BIG_RANGE:
                    perms.ensure_mask(q, k)
        if status:
            raise ProtocolError("cascade.parities: " + _REQUEST_ERRORS.get(status, f"invalid request ({status})"))
        for i in np.flatnonzero(per):  # her own leakage count, per frame id
            fid = int(sess["ids"][i])
            self.leaked[fid] = self.leaked.get(fid, 0) + int(per[i])
        return {"r": rpk, "t": tpk}

    def _on_end(self, body: dict[str, Any]) -> dict[str, Any]:
        self._sessions.pop(int(body.get("sid", -1)), None)
        return {}


class CascadeBob:
    """Bob's side of Cascade: drives the protocol over any :class:`Channel`.

    Parameters
    ----------
    config : CascadeConfig, optional
    seed : int, optional
        Seed of the shared public permutations for every run of this
        object. None draws a fresh one from :mod:`secrets` per run, unless
        ``run(..., seed=...)`` gives one. A fixed seed lets permutations be
        computed once and reused (they are public; only the error pattern
        must be fresh, and it is).
    """

    def __init__(self, config: CascadeConfig | None = None, *, seed: int | None = None):
        self.config = config if config is not None else CascadeConfig()
        self.seed = seed
        self._perms = _BOB_PERMS

    def run(
        self,
        channel: Channel,
        frame_ids: Any,
        bob_bits_2d: np.ndarray,
        qber: float,
        *,
        seed: int | None = None,
    ) -> ReconcileResult:
        """Reconcile a batch of frames with Alice's side behind ``channel``.

        Parameters
        ----------
        channel : Channel
            Alice's :class:`CascadeAlice` must answer on the other end.
        frame_ids : array_like of int, shape (N,)
            Ids under which Alice holds the same frames.
        bob_bits_2d : ndarray of uint8, shape (N, n)
            Bob's bits; not modified (the corrected copy is returned).
        qber : float
            Estimated QBER in (0, 0.5) from parameter estimation; sets block sizes.
        seed : int, optional
            Overrides the object's seed for this run.

        Returns
        -------
        ReconcileResult
            ``leaked_bits`` counts the parities Alice sent for each frame.
        """
        bob = as_bits(bob_bits_2d, "bob_bits", ndim=(2,))
        ids = np.asarray(frame_ids, dtype=np.int64).reshape(-1)
        N, n = bob.shape
        if ids.shape[0] != N:
            raise InputError(f"frame_ids: {ids.shape[0]} ids for {N} frames; give one id per row of bob_bits")
        _check_qber(qber)
        if n < 1 or n >= 2**31:
            raise InputError(f"frame length n={n}: must be in 1..2^31-1")
        cfg = self.config
        preset = get_preset(cfg.preset)
        if cfg.passes:
            preset = replace(preset, passes=int(cfg.passes))
        ks = block_sizes(preset, qber, n)
        P = len(ks)
        if seed is None:
            seed = self.seed if self.seed is not None else secrets.randbits(64)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise InputError(f"seed={seed!r}: must be an integer in 0..2^64-1 (or None for a fresh one)")
        if not (0 <= int(seed) < 2**64):
            raise InputError(f"seed={seed!r}: must be in 0..2^64-1")
        perms = self._perms.get(int(seed), n)
        geo = _geometry(ks, n)
        M = int(geo[K.G_BASE, P])
        node_dtype = np.uint32 if M <= 2**32 else np.int64  # wire type of node ids
        rt0, by0 = channel.stats.snapshot()
        sid = secrets.randbits(62)
        channel.request(
            "cascade.start",
            {
                "sid": sid,
                "seed": int(seed).to_bytes(8, "little"),
                "n": n,
                "frames": ids,
                "passes": P,
                "ks": np.asarray(ks, dtype=np.int64),
            },
        )
        eng = (
            bob,  # read for its shape only: the kernels correct the packed copy
            pack_bits(bob),
            _sparse_zeros((N, P, (n + 1 + 63) // 64)),  # prefix parities and flip logs: built per pass on use
            np.full((N, P), -1, dtype=np.int64),
            _sparse_zeros((N, P, (n + 63) // 64)),
            np.empty(2 * K.PEEL_STACK, dtype=np.int64),
        )
        tree = _sparse_zeros((N, (M + 63) // 64, 3))
        kpos = np.zeros((N, K.KP_KQ + int((geo[K.G_KSLOT] >= 0).sum()), (n + 63) // 64), dtype=np.uint64)
        # pending lists and the planner's scratch (reused by every frame): sized for the worst case,
        # touched only as far as the lists grow
        pend = _sparse_zeros((N, n // 2 + 4096, K.NPCOL), np.int64)
        scr = _sparse_zeros((n // 2 + 4096, K.NSCR), np.int64)
        heads = np.zeros(int(geo[K.G_NB, 1]) if P > 1 else 0, dtype=np.int32)  # pass-1 rows by block
        st = np.zeros((N, K.NST), dtype=np.int64)
        kcfg = np.zeros(K.NCFG, dtype=np.int64)
        kcfg[K.C_PASSES] = P
        kcfg[K.C_CLEAN_STOP] = preset.clean_stop
        kcfg[K.C_CLEAN_FROM] = preset.clean_from
        kcfg[K.C_SLACK] = cfg.slack
        kcfg[K.C_MAXROUNDS] = cfg.max_rounds
        kcfg[K.C_LOCAL] = cfg.local_max
        offs = np.zeros((2, N + 1), dtype=np.int64)
        built_for = -1  # q0 of the last round's permutation check
        q0 = 0  # passes started by any frame so far
        inv = perms.inv
        par = None
        try:
            while True:
                # permutations the next kernel call may use: the pass whose
                # top-level parities may arrive, the next one (planned right
                # after), and the one-block passes started locally after it
                q = q0 if q0 != built_for else P  # the same passes as last round: built already
                built_for = q0
                while q < P:
                    perms.ensure(q, inverse=True)
                    if geo[K.G_NB, q] == 2 and geo[K.G_K, q] > K.BIG_RANGE:
                        perms.ensure_mask(q, int(geo[K.G_K, q]))
                    if q == q0 or (q >= 1 and geo[K.G_NB, q] == 1):
                        q += 1
                    else:
                        break
                if par is None:
                    K.bob_plan(eng, tree, kpos, pend, st, perms.pi, inv, geo, kcfg, scr, heads)
                else:
                    K.bob_absorb_plan(
                        eng, tree, kpos, pend, st, perms.pi, inv, geo, kcfg, par, offs, perms.masks, perms.maskk,
                        scr, heads,
                    )
                counts = np.empty(N, dtype=np.int32)  # fresh per round: a channel may keep the body it sent
                nr, nt, ntr, q0 = K.bob_layout(st, offs, counts)
                if nr < 0:
                    break  # every frame is finished
                nodes = np.empty(nr, dtype=node_dtype)
                trows = np.empty((ntr, 4), dtype=np.int32)
                K.bob_emit(pend, st, geo, offs[0], nodes, trows)
                reply = channel.request("cascade.parities", {"sid": sid, "c": counts, "v": nodes, "t": trows})
                par = _unpack_reply(reply, nr, nt)
        finally:
            try:
                channel.request("cascade.end", {"sid": sid})
            except Exception:  # noqa: BLE001 - best effort; the original error matters more
                pass
        rt1, by1 = channel.stats.snapshot()
        bits = unpack_bits(eng[1], n)  # the kernels correct the packed copy only
        return ReconcileResult(
            bits=bits,
            leaked_bits=st[:, K.S_LEAK].copy(),
            success=st[:, K.S_DONE] == 1,
            errors_corrected=st[:, K.S_FLIPS].copy(),
            round_trips=rt1 - rt0,
            bytes_sent=by1 - by0,
            method="cascade",
            preset=preset.name,
            extra={
                "seed": int(seed),
                "block_sizes": ks,
                "config": asdict(cfg),
                "passes_run": st[:, K.S_PASS].copy(),
                "rounds_per_frame": st[:, K.S_ROUNDS].copy(),
                "inferred_parities": st[:, K.S_INFERRED].copy(),
                "source": preset.source,
            },
        )


_REQUEST_ERRORS = {
    K.RQ_COUNTS: "c (counts) are negative or do not add up to the node ids sent",
    K.RQ_NODE_RANGE: "a node id is outside the batch's geometry",
    K.RQ_NODE_EMPTY: "a node id names an empty node",
    K.RQ_TOP: "a block request is out of bounds",
}


def _unpack_reply(reply: Any, nr: int, nt: int) -> np.ndarray:
    """Alice's packed parities of one round as uint8 0/1: ``nr`` range answers, then ``nt`` top-level ones.

    Each field must hold exactly ``ceil(count / 8)`` bytes: ``np.unpackbits``
    pads a short field instead of failing (and returns uninitialised bytes
    for an empty one), which would feed made-up parities to the kernels.
    """
    try:
        rb = np.asarray(reply["r"], dtype=np.uint8).reshape(-1)
        tb = np.asarray(reply["t"], dtype=np.uint8).reshape(-1) if nt else np.empty(0, dtype=np.uint8)
    except (KeyError, ValueError, TypeError, OverflowError) as exc:
        raise ProtocolError(f"cascade.parities reply: bad parity field ({exc})") from None
    if rb.size != (nr + 7) // 8 or tb.size != (nt + 7) // 8:
        raise ProtocolError(
            f"cascade.parities reply: {rb.size} + {tb.size} bytes of parities for {nr} range and {nt} "
            f"top-level requests (need {(nr + 7) // 8} + {(nt + 7) // 8}); Alice's answer is short or long"
        )
    par = np.unpackbits(rb, count=nr, bitorder="little")
    if nt:
        par = np.concatenate([par, np.unpackbits(tb, count=nt, bitorder="little")])
    return par


def _sparse_zeros(shape: tuple[int, ...], dtype: Any = np.uint64) -> np.ndarray:
    """Zeroed array (uint64 unless ``dtype``) in anonymous memory without transparent huge pages.

    Bob's node bitsets are large (~11 MB per frame at n = 10^6, mostly the
    heap trees of the n/2-bit blocks) and touched sparsely: with huge pages
    every touch makes the kernel clear 2 MB; with 4 KB pages only what is
    used gets cleared. The same holds for both parties' per-pass prefix
    parities and Bob's flip logs (built only for the passes actually
    searched), and for Bob's worst-case-sized pending lists and planner
    scratch. NumPy asks for huge pages on every allocation of 4 MB or more
    (``madvise(MADV_HUGEPAGE)``), so with plain ``np.empty`` the first touch
    of each pass's 125 KB row cleared 2 MB (perf: ``clear_page_erms`` under
    ``do_huge_pmd_anonymous_page``); at n = 10^6 and 16 frames the rounds
    that start passes 0 and 1 took 2-3x as long, the whole run ~9 % more CPU.

    The advice is best effort: platforms without it (Windows, macOS) and
    Linux kernels built without transparent huge pages (where ``madvise``
    fails with EINVAL) just get plain zeroed anonymous memory. The array
    keeps the mapping alive (its base is a memoryview exporting the mmap).
    """
    dtype = np.dtype(dtype)
    size = int(np.prod(shape))
    if size == 0:  # e.g. an empty batch: mmap cannot map 0 bytes
        return np.zeros(shape, dtype=dtype)
    mm = mmap.mmap(-1, size * dtype.itemsize)
    advice = getattr(mmap, "MADV_NOHUGEPAGE", None)
    if advice is not None:
        try:
            mm.madvise(advice)
        except OSError:
            pass  # kernel without THP support: the pages are 4 KB already
    return np.frombuffer(mm, dtype=dtype).reshape(shape)


def _check_qber(qber: Any) -> None:
    try:
        ok = 0.0 < float(qber) < 0.5
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"qber={qber!r}: must be an estimate in (0, 0.5); pass the sifting stage's estimate")


def reconcile_cascade(
    alice_bits: np.ndarray,
    bob_bits: np.ndarray,
    *,
    qber: float,
    seed: int | None = None,
    rtt_s: float = 0.0,
    preset: str = "option7",
    slack: int = 1,
    local_max: int = 4096,
    max_rounds: int = 1_000_000,
) -> ReconcileResult:
    """Run both Cascade parties over an in-memory loopback channel.

    Parameters
    ----------
    alice_bits, bob_bits : array_like of uint8 0/1, shape (n,) or (N, n)
        One frame or N frames. Alice's array is handed to :class:`CascadeAlice`
        only, Bob's to :class:`CascadeBob` only.
    qber : float
        Estimated QBER in (0, 0.5) (sets the block sizes).
    seed : int, optional
        Seed of the public permutations; None draws one from :mod:`secrets`.
    rtt_s : float
        Simulated round-trip time of the loopback channel, seconds.
    preset, slack, local_max, max_rounds
        See :class:`CascadeConfig` and :data:`PRESETS`.

    Returns
    -------
    ReconcileResult
        ``bits`` has the shape of ``bob_bits``.
    """
    a = as_bits(alice_bits, "alice_bits", ndim=(1, 2))
    b = as_bits(bob_bits, "bob_bits", ndim=(1, 2))
    if a.shape != b.shape:
        raise InputError(
            f"alice_bits shape {a.shape} != bob_bits shape {b.shape}; both parties need frames of equal length"
        )
    _check_qber(qber)
    one = a.ndim == 1
    a2 = a.reshape(1, -1) if one else a
    b2 = b.reshape(1, -1) if one else b
    if a2.shape[1] == 0:
        raise InputError("alice_bits/bob_bits: frames are empty; give at least one bit per frame")
    config = CascadeConfig(preset=preset, slack=slack, local_max=local_max, max_rounds=max_rounds)
    alice = CascadeAlice({i: a2[i] for i in range(a2.shape[0])})
    channel = LoopbackChannel(Responder(alice.handlers()), rtt_s=rtt_s)
    res = CascadeBob(config, seed=seed).run(channel, np.arange(a2.shape[0]), b2, qber)
    if one:
        res = ReconcileResult(
            bits=res.bits.reshape(-1),
            leaked_bits=res.leaked_bits,
            success=res.success,
            errors_corrected=res.errors_corrected,
            round_trips=res.round_trips,
            bytes_sent=res.bytes_sent,
            method=res.method,
            preset=res.preset,
            extra=res.extra,
        )
    return res
