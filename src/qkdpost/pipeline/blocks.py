"""The back half of the pipeline: sifted key blocks → verified final keys.

After sifting, each key block goes reconcile → verify → finite-key length →
amplify → key store, independently of the others. Bob drives
(:class:`BobBlocks`), Alice answers (:class:`AliceBlocks`); the two talk only
through a :class:`~qkdpost.channel.Channel` with these messages of their own
(besides the stages' ``cascade.*``, ``ldpc.*``, ``verify.*``, ``amplify.*``):

``pipe.batch``    Bob announces blocks (ids, offsets in the sifted stream,
                  public statistics, the EC method); Alice journals them as
                  started and builds her protocol objects, or reports ids she
                  already knows (re-run) so both skip them.
``pipe.final``    the verdicts and secure lengths; Alice drops the rest.
``pipe.prepare``  Alice writes her final keys as *pending* (two-phase commit).
``pipe.commit``   after Bob has written his, Alice's become final.
``pipe.drop``     blocks dropped on Bob's side, with the reason.
``pipe.pending`` / ``pipe.resolve``  crash recovery at session start: Alice's
                  pending blocks are committed iff Bob holds them final.

Invariants: no key is written on one side only (Bob writes his final key only
after Alice's pending copy is durable; Alice's becomes final only when Bob's
is); a block that started (disclosed anything) is never processed again; a
dropped block is dropped on both sides with its reason in both reports.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Mapping

import numpy as np

from ..channel import Channel
from ..config import Config
from ..errors import ChannelError, InputError, ProtocolError
from ..keystore import KeyStore
from ..report import BlockRecord, Report, versions
from . import stages
from .kit import frame_id

__all__ = ["SiftedBlock", "BobBlocks", "AliceBlocks", "block_id"]

log = logging.getLogger(__name__)


def block_id(run_id: str, index: int) -> str:
    """The id both parties give block ``index`` of run ``run_id``."""
    return f"{run_id}-{index:07d}"


@dataclass
class SiftedBlock:
    """One party's sifted key block before reconciliation.

    Attributes
    ----------
    block_id : str
        Same on both sides.
    index : int
        Position of the block in the run.
    start : int
        Offset of the block's first bit in the session's sifted key stream.
    bits : ndarray of uint8, shape (n,)
        This party's key bits.
    stats : dict
        Public statistics for the finite-key bound (counts per basis and
        intensity, test-basis errors), identical on both sides.
    qber_estimate : float
        QBER estimated from the test basis.
    stream_time_s : float
        Capture time (seconds from stream start) at the block's end.
    labels : ndarray of uint8, shape (n,), optional
        Decoy BB84: the public intensity class of each key bit (Bob counts
        the bits error correction changed per class for the one-decoy bound).
    """

    block_id: str
    index: int
    start: int
    bits: np.ndarray = field(repr=False)  # never show key bits
    stats: dict[str, Any] = field(default_factory=dict)
    qber_estimate: float = float("nan")
    stream_time_s: float = float("nan")
    labels: np.ndarray | None = field(default=None, repr=False)


@dataclass
class StoreJob:
    """A batch after amplification, waiting for the two-phase store.

    ``items`` are (block id, Bob's final key, metadata) of the blocks that
    produced a key; the other blocks of ``batch`` already carry their drop
    reason in ``recs``.
    """

    batch: list[SiftedBlock]
    recs: dict[str, Any]
    clock: Any
    items: list[tuple[str, np.ndarray, dict[str, Any]]] = field(repr=False)  # final keys: never shown


def _seed_for(cfg: Config, index: int, stage: int) -> int | None:
    s = cfg.pipeline.seed
    return None if s < 0 else (s * 1_000_003 + index * 16 + stage) % (1 << 62)


class _Clock:
    """Times a stage and diffs the channel's traffic counters around it."""

    def __init__(self, channel: Channel | None):
        self.channel = channel
        self.times: dict[str, float] = {}
        self.rt: dict[str, int] = {}
        self.nbytes: dict[str, int] = {}

    def __call__(self, stage: str) -> "_Span":
        return _Span(self, stage)


class _Span:
    def __init__(self, clock: _Clock, stage: str):
        self.clock, self.stage = clock, stage

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()
        self.s0 = self.clock.channel.stats.snapshot() if self.clock.channel else (0, 0)

    def __exit__(self, *exc: object) -> None:
        c = self.clock
        c.times[self.stage] = c.times.get(self.stage, 0.0) + time.perf_counter() - self.t0
        if c.channel is not None:
            rt, nb = c.channel.stats.snapshot()
            c.rt[self.stage] = c.rt.get(self.stage, 0) + rt - self.s0[0]
            c.nbytes[self.stage] = c.nbytes.get(self.stage, 0) + nb - self.s0[1]


def _rows(a: np.ndarray, idx: list[int]) -> np.ndarray:
    """``a[idx]`` without the copy when ``idx`` takes every row in order (the usual batch)."""
    return a if idx == list(range(a.shape[0])) else a[idx]


def _choose_method(cfg: Config, qber: float) -> str:
    m = cfg.reconcile.ec_method
    if m == "auto":
        return "ldpc" if qber >= cfg.reconcile.ldpc_min_qber else "cascade"
    return m


class BobBlocks:
    """Bob's back half: drives every block through the two-party stages.

    Parameters
    ----------
    cfg : Config
    channel : Channel
        To Alice's :class:`AliceBlocks` (loopback or TCP).
    store : KeyStore
        Bob's key store.
    report : Report
        Receives one :class:`BlockRecord` per block.
    run_info : mapping
        Recorded in every key's metadata (run id, inputs).
    kit : StageKit, optional
        The stage implementations (default: qkdpost's own).
    store_channel : Channel, optional
        Channel (view) for the two-phase store when it runs in its own thread
        (:meth:`process` with ``defer_store=True``, then :meth:`store_batch`).
    """

    def __init__(self, cfg: Config, channel: Channel, store: KeyStore, report: Report,
                 run_info: Mapping[str, Any] | None = None, kit: "stages.StageKit | None" = None,
                 store_channel: Channel | None = None):
        self.kit = kit if kit is not None else stages.default_kit()
        self.cfg = cfg
        self.channel = channel
        self.store_channel = store_channel if store_channel is not None else channel
        self.store = store
        self.report = report
        self.run_info = dict(run_info or {})
        self._versions = versions()

    # -- crash recovery ------------------------------------------------------
    def recover(self) -> dict[str, list[str]]:
        """Resolve Alice's pending blocks against Bob's store (two-phase commit)."""
        pending = [str(x) for x in self.channel.request("pipe.pending", {})["ids"].split()]
        commit = [b for b in pending if self.store.state(b) in ("final", "consumed")]
        abort = [b for b in pending if b not in commit]
        if pending:
            self.channel.request("pipe.resolve", {"commit": " ".join(commit), "abort": " ".join(abort)})
            log.info("recovery: %d pending blocks on Alice's side committed, %d aborted", len(commit), len(abort))
        return {"commit": commit, "abort": abort}

    # -- one batch -----------------------------------------------------------
    def process(self, batch: list[SiftedBlock], *, defer_store: bool = False,
                turn: ContextManager[Any] | None = None) -> Any:
        """Run a batch of blocks through reconcile → … → store.

        Returns one (record, Bob's final key or None) per block. Channel
        failures drop the affected blocks (reason ``peer_disconnected``) and
        are re-raised after the records are made, so the caller can
        reconnect and go on with the next block. With ``defer_store`` the
        batch stops after amplification and a :class:`StoreJob` is returned
        for :meth:`store_batch` (run by another thread, so the store's fsyncs
        overlap the next batch's computation). ``turn`` is entered around the
        ``pipe.batch`` announcement (lanes announce their batches in stream
        order, the order Alice reads her key bits in).
        """
        clock = _Clock(self.channel)
        recs = {
            b.block_id: BlockRecord(
                block_id=b.block_id, index=b.index, n_sifted=int(b.bits.size),
                qber_estimate=float(b.qber_estimate), stream_time_s=float(b.stream_time_s),
            )
            for b in batch
        }

        def drop(blocks: list[SiftedBlock], reason: str) -> None:
            # Bob's side only: Alice learns these verdicts from pipe.batch / pipe.final
            for b in blocks:
                recs[b.block_id].status, recs[b.block_id].reason = "dropped", reason
                if reason not in ("already_stored", "interrupted_earlier"):
                    self.store.mark_dropped(b.block_id, reason)

        try:
            job = self._stages(batch, recs, clock, drop, turn if turn is not None else nullcontext())
        except (ChannelError, ProtocolError) as exc:
            self._fail(batch, recs, exc, self.channel)
            self._finish(batch, recs, {}, clock)
            raise
        return self._handoff(job, defer_store)

    def _stages(self, batch: list[SiftedBlock], recs: dict[str, BlockRecord], clock: "_Clock",
                drop: Callable[..., None], turn: ContextManager[Any]) -> "StoreJob":
        """Skip/journal, reconcile, verify, length, amplify; returns the store job."""
        cfg = self.cfg
        live = list(batch)
        # 1. skip blocks either side already knows; journal the rest as started
        mine = [b for b in live if self.store.known(b.block_id)]
        for b in mine:
            st = self.store.state(b.block_id)
            recs[b.block_id].status = "dropped"
            recs[b.block_id].reason = "already_stored" if st in ("final", "consumed") else "interrupted_earlier"
        live = [b for b in live if b not in mine]
        too_noisy = [b for b in live if b.qber_estimate > cfg.estimate.qber_abort]  # NaN: unknown, not aborted
        live = [b for b in live if b not in too_noisy]
        self.store.mark_started_many([b.block_id for b in live + too_noisy])  # one directory sync
        qs = [b.qber_estimate for b in live if np.isfinite(b.qber_estimate)]
        qber = max([cfg.reconcile.ec_qber_floor] + qs)
        method = _choose_method(cfg, qber)
        with clock("reconcile"), turn:
            reply = self.channel.request("pipe.batch", {
                "ids": " ".join(b.block_id for b in live),
                "starts": np.array([b.start for b in live], dtype=np.int64),
                "lengths": np.array([b.bits.size for b in live], dtype=np.int64),
                "skip": " ".join(b.block_id for b in mine),
                "noisy": " ".join(b.block_id for b in too_noisy),
                "method": method,
                "ec_qber": qber,
            })
        drop(too_noisy, "qber_abort")  # Alice dropped them from the batch message
        known_alice = set(reply["known"].split())
        if known_alice:
            gone = [b for b in live if b.block_id in known_alice]
            for b in gone:
                recs[b.block_id].status, recs[b.block_id].reason = "dropped", "interrupted_earlier"
                self.store.mark_dropped(b.block_id, "interrupted_earlier")
            live = [b for b in live if b.block_id not in known_alice]
        if not live:
            return StoreJob(batch, recs, clock, [])

        # 2. reconcile
        ids = [b.block_id for b in live]
        bob_bits = np.stack([b.bits for b in live])
        with clock("reconcile"):
            res = self.kit.reconcile_bob(self.channel, method, ids, bob_bits, qber, cfg,
                                       seed=_seed_for(cfg, live[0].index, 1))
        corrected = np.asarray(res.bits).reshape(len(live), -1)
        for i, b in enumerate(live):
            r = recs[b.block_id]
            r.ec_method = method
            r.leak_ec = int(res.leaked_bits[i])
            r.errors_corrected = int(res.errors_corrected[i])
            r.qber_observed = r.errors_corrected / max(1, b.bits.size)
        failed_ec = [b for i, b in enumerate(live) if not bool(res.success[i])]

        # 3. verify (every block that Bob believes reconciled)
        cand = [i for i, b in enumerate(live) if bool(res.success[i])]
        ok = np.zeros(len(live), dtype=bool)
        if cand:
            with clock("verify"):
                v_ok, tag_bits, eps_cor = self.kit.verify_bob(self.channel, [ids[i] for i in cand],
                                                              _rows(corrected, cand), cfg)
            for j, i in enumerate(cand):
                ok[i] = bool(v_ok[j])
                recs[ids[i]].leak_verify = int(tag_bits)
                recs[ids[i]].extra["eps_cor"] = float(eps_cor)
        failed_v = [b for i, b in enumerate(live) if i in cand and not ok[i]]

        # 4. finite-key length on Bob's side (public inputs only)
        lengths = np.zeros(len(live), dtype=np.int64)
        with clock("finitekey"):
            for i, b in enumerate(live):
                if not ok[i]:
                    continue
                r = recs[b.block_id]
                stats = b.stats
                if b.labels is not None:
                    # key-basis errors per intensity (one-decoy bound): the bits EC changed, exact after verification
                    changed = np.bincount(b.labels[corrected[i] != b.bits], minlength=2)
                    stats = dict(stats, **{f"m_key_c{c}": int(v) for c, v in enumerate(changed.tolist())})
                ell, bound, details = self.kit.secure_length(stats, int(b.bits.size), r.leak_ec, r.leak_verify,
                                                             r.extra.get("eps_cor", cfg.verify.eps_cor), cfg)
                r.secure_length, r.bound = int(ell), bound
                r.extra["finitekey"] = details
                lengths[i] = max(0, int(ell))
        short = [b for i, b in enumerate(live) if ok[i] and lengths[i] <= 0]
        keep = [i for i in range(len(live)) if ok[i] and lengths[i] > 0]
        verdict = {b.block_id: "ec_failed" for b in failed_ec}
        verdict.update({b.block_id: "verify_failed" for b in failed_v})
        verdict.update({b.block_id: "no_secure_length" for b in short})
        with clock("finitekey"):
            self.channel.request("pipe.final", {
                "ids": " ".join(ids[i] for i in keep),
                "lengths": lengths[keep],
                "dropped": " ".join(verdict),
                "reasons": " ".join(verdict.values()),
            })
        drop(failed_ec, "ec_failed")
        drop(failed_v, "verify_failed")
        drop(short, "no_secure_length")
        if not keep:
            return StoreJob(batch, recs, clock, [])

        # 5. amplify
        with clock("amplify"):
            finals = self.kit.amplify_bob(self.channel, [ids[i] for i in keep], _rows(corrected, keep),
                                        lengths[keep], cfg, seed=_seed_for(cfg, live[0].index, 2))
        if len(finals) != len(keep) or any(int(np.asarray(finals[j]).size) != int(lengths[i])
                                           for j, i in enumerate(keep)):
            raise ProtocolError(f"amplification returned {[int(np.asarray(k).size) for k in finals]} bits, "
                                f"pipe.final agreed {lengths[keep].tolist()}: the batch is dropped on both sides")
        items = []
        for j, i in enumerate(keep):
            r = recs[ids[i]]
            r.final_length = int(finals[j].size)
            items.append((ids[i], finals[j], self._meta(r, live[i])))
        return StoreJob(batch, recs, clock, items)
    def _handoff(self, job: "StoreJob", defer: bool) -> Any:
        return job if defer else self.store_batch(job)

    def store_batch(self, job: "StoreJob") -> list[tuple[BlockRecord, np.ndarray | None]]:
        """Two-phase store of a processed batch: Alice pending → Bob final → Alice final."""
        recs, keys = job.recs, {}
        sclock = _Clock(self.store_channel)
        error: BaseException | None = None
        try:
            if job.items:
                with sclock("store"):
                    metas = {bid: meta for bid, _, meta in job.items}
                    self.store_channel.request("pipe.prepare", {
                        "ids": " ".join(metas), "metas": json.dumps(metas, sort_keys=True),
                    })
                    self.store.put_many(job.items)  # the commit point; one directory sync per batch
                    for bid, final, meta in job.items:
                        keys[bid] = final
                        recs[bid].status, recs[bid].reason = "ok", ""
                    self.store_channel.request("pipe.commit", {"ids": " ".join(metas)})
        except (ChannelError, ProtocolError) as exc:
            error = exc
            self._fail(job.batch, recs, exc, self.store_channel)
        for stage, t in sclock.times.items():
            job.clock.times[stage] = job.clock.times.get(stage, 0.0) + t
            job.clock.rt[stage] = job.clock.rt.get(stage, 0) + sclock.rt.get(stage, 0)
            job.clock.nbytes[stage] = job.clock.nbytes.get(stage, 0) + sclock.nbytes.get(stage, 0)
        out = self._finish(job.batch, recs, keys, job.clock)
        if error is not None:
            raise error
        return out

    def _fail(self, batch: list[SiftedBlock], recs: dict[str, BlockRecord], exc: BaseException,
              channel: Channel) -> None:
        reason = "peer_disconnected" if isinstance(exc, ChannelError) else "protocol_error"
        for b in batch:
            r = recs[b.block_id]
            if r.status != "ok" and not r.reason:
                r.status, r.reason = "dropped", reason
                r.extra["error"] = str(exc)
                if self.store.state(b.block_id) == "started":
                    self.store.mark_dropped(b.block_id, reason)
        # Blocks Bob already holds final ("ok") are not Alice's to drop: her
        # pending copy is committed by recovery at the next session.
        gone = [bid for bid, r in recs.items() if r.status != "ok"]
        if isinstance(exc, ProtocolError) and gone:
            try:  # Alice may still be there: make her drop the batch too
                channel.request("pipe.drop", {"ids": " ".join(gone), "reason": reason})
            except (ChannelError, ProtocolError):
                pass

    def _finish(self, batch, recs, keys, clock) -> list[tuple[BlockRecord, np.ndarray | None]]:
        n = max(1, len(batch))
        for i, b in enumerate(batch):
            r = recs[b.block_id]
            if r.status != "ok" and not r.reason:  # pragma: no cover - every path sets a reason
                r.status, r.reason = "dropped", "internal"
            r.times_s = {k: v / n for k, v in clock.times.items()}
            # integer shares: the first v % n blocks carry one more, so they add up to the batch total
            r.round_trips = {k: v // n + (i < v % n) for k, v in clock.rt.items()}
            r.bytes = {k: v // n + (i < v % n) for k, v in clock.nbytes.items()}
            self.report.add_block(r)
            if r.status != "ok":
                log.info("block %s dropped: %s", r.block_id, r.reason)
        return [(recs[b.block_id], keys.get(b.block_id)) for b in batch]

    def _meta(self, r: BlockRecord, b: SiftedBlock) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "block_id": r.block_id,
            "index": r.index,
            "n_sifted": r.n_sifted,
            "final_length": r.final_length,
            "secure_length": r.secure_length,
            "qber_estimate": r.qber_estimate,
            "qber_observed": r.qber_observed,
            "ec_method": r.ec_method,
            "leakage": {"ec": r.leak_ec, "verify": r.leak_verify},
            "eps": {"eps_sec": cfg.finitekey.eps_sec, "eps_cor": r.extra.get("eps_cor", cfg.verify.eps_cor)},
            "bound": r.bound,
            "finitekey": r.extra.get("finitekey", {}),
            "stats": b.stats,
            "config": cfg.to_dict(),
            "versions": self._versions,
            "randomness": "os-csprng" if cfg.pipeline.seed < 0 else f"seeded:{cfg.pipeline.seed} (simulation/test only)",
            **self.run_info,
        }


class AliceBlocks:
    """Alice's back half: answers ``pipe.*`` and routes stage messages.

    Parameters
    ----------
    cfg : Config
    store : KeyStore
        Alice's key store.
    report : Report
        Receives one record per block Alice took part in.
    key_bits : callable (start, n) -> ndarray of uint8
        Alice's sifted key bits ``[start, start + n)`` of this session's
        stream (her own data only).
    kit : StageKit, optional
        The stage implementations (default: qkdpost's own).
    """

    def __init__(self, cfg: Config, store: KeyStore, report: Report,
                 key_bits: Callable[[int, int], np.ndarray], kit: "stages.StageKit | None" = None):
        self.kit = kit if kit is not None else stages.default_kit()
        self.cfg = cfg
        self.store = store
        self.report = report
        self.key_bits = key_bits
        self._frames: dict[str, np.ndarray] = {}
        self._recs: dict[str, BlockRecord] = {}
        self._routes: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
        # block id -> function giving Alice's final key once amplified; kept per
        # block because Bob's store of batch k may come after his batch k + 1
        self._outputs: dict[str, Callable[[str], np.ndarray]] = {}
        self._agreed: dict[str, int] = {}  # block id -> final length agreed at pipe.final
        self.finished: list[tuple[str, np.ndarray]] = []  # (block_id, final key) committed this session

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {
            "pipe.pending": self._pending,
            "pipe.resolve": self._resolve,
            "pipe.batch": self._batch,
            "pipe.final": self._final,
            "pipe.prepare": self._prepare,
            "pipe.commit": self._commit,
            "pipe.drop": self._drop,
        }

    def route(self, kind: str) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
        """The current batch's stage handler for ``kind`` (None if none)."""
        return self._routes.get(kind)

    # -- recovery ---------------------------------------------------------------
    def _pending(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"ids": " ".join(self.store.ids("pending"))}

    def _resolve(self, body: dict[str, Any]) -> dict[str, Any]:
        self.store.commit_many(body["commit"].split())
        for b in body["abort"].split():
            self.store.abort(b)
        return {}

    # -- blocks -------------------------------------------------------------------
    def _record(self, bid: str, index: int = -1, n: int = 0) -> BlockRecord:
        r = self._recs.get(bid)
        if r is None:
            r = self._recs[bid] = BlockRecord(block_id=bid, index=index, n_sifted=n)
        return r

    def _close(self, bid: str, status: str, reason: str) -> None:
        r = self._recs.pop(bid, None) or BlockRecord(block_id=bid, index=_index_of(bid), n_sifted=0)
        r.status, r.reason = status, reason
        self.report.add_block(r)
        self._frames.pop(bid, None)

    def _batch(self, body: dict[str, Any]) -> dict[str, Any]:
        ids = body["ids"].split()
        starts, lengths = body["starts"], body["lengths"]
        if len(starts) != len(ids) or len(lengths) != len(ids):
            raise ProtocolError(f"pipe.batch: {len(ids)} ids but {len(starts)} starts, {len(lengths)} lengths")
        for bid in body["skip"].split():
            if self.store.state(bid) not in ("final", "consumed"):
                self.store.mark_started(bid)
                self.store.mark_dropped(bid, "interrupted_earlier")
            self._close(bid, "dropped", "already_stored" if self.store.state(bid) in ("final", "consumed")
                        else "interrupted_earlier")
        for bid in body["noisy"].split():
            self.store.mark_started(bid)
            self.store.mark_dropped(bid, "qber_abort")
            self._close(bid, "dropped", "qber_abort")
        known, frames = [], {}
        fresh = self.store.mark_started_many(ids)  # one directory sync
        for bid, start, n, new in zip(ids, starts, lengths, fresh):
            if not new:
                known.append(bid)
                self._close(bid, "dropped", "interrupted_earlier")
                continue
            frames[bid] = self.key_bits(int(start), int(n))
            self._record(bid, _index_of(bid), int(n))
        self._frames = frames
        self._routes = {}
        if frames:
            self._routes.update(self.kit.reconcile_alice(body["method"], frames, self.cfg,
                                                          qber=float(body["ec_qber"])))
            self._routes.update(self.kit.verify_alice(frames, self.cfg))
        return {"known": " ".join(known)}

    def _final(self, body: dict[str, Any]) -> dict[str, Any]:
        for bid, reason in zip(body["dropped"].split(), body["reasons"].split()):
            self.store.mark_dropped(bid, reason)
            self._close(bid, "dropped", reason)
        ids = body["ids"].split()
        if len(body["lengths"]) != len(ids):
            raise ProtocolError(f"pipe.final: {len(ids)} ids but {len(body['lengths'])} lengths; Bob is out of step")
        lengths = {bid: int(m) for bid, m in zip(ids, body["lengths"])}
        unknown = [bid for bid in ids if bid not in self._frames]
        if unknown:
            raise ProtocolError(f"pipe.final: block {unknown[0]} is not in Alice's current batch "
                                f"({len(unknown)} unknown id(s)); Bob is out of step")
        bad = [bid for bid in ids if not 0 < lengths[bid] <= self._frames[bid].size]
        if bad:
            raise ProtocolError(f"pipe.final: block {bad[0]} has final length {lengths[bad[0]]}, outside "
                                f"1..{self._frames[bad[0]].size} (its sifted bits); Bob is out of step")
        frames = {bid: self._frames[bid] for bid in ids}
        self._frames = frames
        if frames:
            routes, outputs = self.kit.amplify_alice(frames, lengths, self.cfg)
            self._routes.update(routes)
            for bid in frames:
                self._outputs[bid] = outputs
                self._agreed[bid] = lengths[bid]
        return {}

    def _prepare(self, body: dict[str, Any]) -> dict[str, Any]:
        metas = json.loads(body["metas"])
        keys = {}
        for bid in body["ids"].split():  # check the whole batch before writing any of it
            out = self._outputs.get(bid)
            if out is None or bid not in metas:
                raise ProtocolError(f"pipe.prepare of block {bid} before its amplification; Bob is out of step")
            try:
                key = out(bid)
            except KeyError:
                raise ProtocolError(f"pipe.prepare of block {bid} before its amplification; "
                                    "Bob is out of step") from None
            agreed = self._agreed.get(bid)
            if not key.size == int(metas[bid]["final_length"]) == agreed:
                raise ProtocolError(f"block {bid}: Alice's final key has {key.size} bits, pipe.final agreed "
                                    f"{agreed}, Bob's metadata says {metas[bid]['final_length']}")
            keys[bid] = key
        self.store.prepare_many([(bid, key, metas[bid]) for bid, key in keys.items()])
        for bid in keys:
            r = self._record(bid)
            for k in ("n_sifted", "final_length", "secure_length", "qber_estimate", "qber_observed",
                      "ec_method", "bound"):
                setattr(r, k, metas[bid][k])
            r.leak_ec, r.leak_verify = metas[bid]["leakage"]["ec"], metas[bid]["leakage"]["verify"]
        return {}

    def _commit(self, body: dict[str, Any]) -> dict[str, Any]:
        ids = body["ids"].split()
        self.store.commit_many(ids)
        for bid in ids:
            out = self._outputs.pop(bid, None)
            self._agreed.pop(bid, None)
            if out is not None:
                self.finished.append((bid, out(bid)))
            self._close(bid, "ok", "")
        return {}

    def _drop(self, body: dict[str, Any]) -> dict[str, Any]:
        for bid in body["ids"].split():
            if self.store.state(bid) == "pending":
                self.store.abort(bid)
            elif self.store.state(bid) in (None, "started"):
                self.store.mark_started(bid)
                self.store.mark_dropped(bid, body["reason"])
            self._outputs.pop(bid, None)
            self._agreed.pop(bid, None)
            if bid in self._recs or bid in self._frames:
                self._close(bid, "dropped", body["reason"])
        return {}

    def abandon(self, reason: str) -> None:
        """The session ended mid-batch: drop every block still in flight."""
        for bid in list(self._recs):
            st = self.store.state(bid)
            if st == "started":
                self.store.mark_dropped(bid, reason)
            if st == "pending":  # Bob decides at the next session (two-phase commit)
                self._close(bid, "pending", f"{reason}; awaiting Bob's commit at the next session")
            else:
                self._close(bid, "dropped", reason)
        self._routes = {}
        self._outputs = {}
        self._agreed = {}


def _index_of(bid: str) -> int:
    """A block's index in its run, parsed by :func:`.kit.frame_id`; -1 if the id is malformed."""
    try:
        return frame_id(bid)
    except InputError:
        return -1
