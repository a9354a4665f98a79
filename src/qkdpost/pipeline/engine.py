"""One party's run: front half output (segments) → blocks → keys.

:class:`BobEngine` and :class:`AliceEngine` hold one party's state for one
session over one channel. Both take sifted :class:`~.segments.Segment` s
from their own front half (the timestamp front in :mod:`.front`, or sifted
bits given directly), and the back half in :mod:`.blocks` turns blocks into
keys. The session starts with ``pipe.hello``: both sides check that the
settings that must agree do agree, exchange stream ids and derive the same
run id, from which every block id follows (so a re-run over the same inputs
finds its blocks already stored and skips them). Then Alice's pending blocks
from an earlier crash are resolved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from .. import __version__
from ..channel import Channel
from ..config import MAX_LANES, Config
from ..errors import ConfigError, ProtocolError, QkdpostError
from ..keystore import KeyBlock, KeyStore
from ..report import Report
from .blocks import AliceBlocks, BobBlocks, SiftedBlock, block_id
from .segments import BlockCutter, KeyBuffer, Segment, qber_from_stats
from .stages import StageKit, default_kit

__all__ = ["BobEngine", "AliceEngine", "shared_config", "make_run_id", "PROTOCOL"]

log = logging.getLogger(__name__)

PROTOCOL = 3  # 2: back-half lanes (LANE_FIELD); 3: pipe.batch carries ec_qber (LDPC frame lengths)
# Request field naming the back-half lane a message belongs to (absent: lane 0).
LANE_FIELD = "_lane"
# Message kinds that read and write only their lane's current reconciliation
# (Cascade's rounds): Alice answers them under that lane's lock, so on an
# in-process channel the lanes' rounds overlap. Every other kind runs under
# her session lock, one at a time.
LANE_KINDS = frozenset({"cascade.parities"})
# Settings both parties must share (the rest, e.g. workers, timeouts, chunk
# sizes, are each party's own business).
_SHARED = ("sift", "estimate", "reconcile", "verify", "finitekey", "amplify")
_LOCAL = (("amplify", "pa_threads"),)  # fields of shared sections that stay per machine (same keys either way)


def shared_config(cfg: Config) -> str:
    d = {k: v for k, v in cfg.to_dict().items() if k in _SHARED}
    d["pipeline"] = {k: cfg.to_dict()["pipeline"][k] for k in ("block_bits", "seed")}
    for sec, k in _LOCAL:  # how one machine computes, not what: the parties may differ
        d[sec].pop(k, None)
    return json.dumps(d, sort_keys=True)


def make_run_id(alice_stream: str, bob_stream: str, cfg: Config) -> str:
    """Deterministic run id from both stream ids and the block size."""
    h = hashlib.sha256(f"{alice_stream}|{bob_stream}|{cfg.pipeline.block_bits}".encode()).hexdigest()
    return "r" + h[:15]


def cut_settings(cfg: Config, align: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings that decide where a capture's blocks fall.

    The block size, the sifting section and Bob's alignment section (he
    acquires the clock offset, frequency and drift; every alignment field can
    move the estimate by a fraction of a bin or decide whether acquisition
    succeeds, so which detections pair, so every later block boundary).
    ``align`` is Bob's section as sent at ``pipe.hello`` (Alice's own one is
    not used by sifting); default: this config's.
    """
    d = cfg.to_dict()
    return {"block_bits": cfg.pipeline.block_bits, "sift": d["sift"],
            "align": dict(align) if align is not None else d["align"]}


def claim_capture(store: KeyStore, alice_stream: str, bob_stream: str, cfg: Config,
                  align: Mapping[str, Any] | None = None) -> None:
    """Tie this pair of streams, in ``store``, to the settings that decide where blocks fall.

    Run ids (hence block ids) depend on the streams and the block size only, so
    a re-run with other block, sifting or alignment settings would re-key
    detections that already gave keys; :meth:`KeyStore.claim_capture` refuses
    that. Both parties fingerprint the same settings: the shared block and
    sifting settings (equal, checked at hello) and Bob's ``align``.
    """
    capture_id = "c" + hashlib.sha256(f"{alice_stream}|{bob_stream}".encode()).hexdigest()[:15]
    cut = cut_settings(cfg, align)
    settings = json.dumps(cut, sort_keys=True)
    # records of earlier versions fingerprinted block_bits + sift only
    legacy = json.dumps({"block_bits": cut["block_bits"], "sift": cut["sift"]}, sort_keys=True)
    store.claim_capture(capture_id, hashlib.sha256(settings.encode()).hexdigest(), settings,
                        legacy_fingerprint=hashlib.sha256(legacy.encode()).hexdigest())


class SharedChannel:
    """One channel used by several threads.

    :meth:`view` gives each thread its own :class:`Channel` whose ``stats``
    count only that thread's traffic (the inner channel counts the total).
    A view of back-half lane ``i > 0`` adds the field ``_lane = i`` to every
    request, so Alice answers it with that lane's state; lane 0 (and the
    front half) add nothing. Requests go one at a time, unless the inner
    channel is ``concurrent`` (the in-process loopback): then Alice's
    :meth:`AliceEngine.handle` serialises what must be, and the lanes'
    Cascade rounds overlap.
    """

    def __init__(self, inner: Channel):
        self.inner = inner
        self.lock = threading.Lock()

    def view(self, lane: int = 0) -> Channel:
        return _ChannelView(self, lane)


class _ChannelView(Channel):
    def __init__(self, shared: SharedChannel, lane: int = 0):
        super().__init__()
        self._shared = shared
        self._lane = lane

    def request(self, kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
        sh = self._shared
        if self._lane:
            body = {**body, LANE_FIELD: self._lane}
        if sh.inner.concurrent:
            reply, sent, received = sh.inner.exchange(kind, body)
        else:
            with sh.lock:
                reply, sent, received = sh.inner.exchange(kind, body)
        self.stats.record(kind, sent, received)
        return reply

    def close(self) -> None:
        self._shared.inner.close()


class _Turns:
    """Hands out turns in sequence order: lane threads announce their batches
    (``pipe.batch``) in the order the front half cut them, which is the order
    Alice reads her key bits in. Every sequence number must be marked
    :meth:`done` once (announced, skipped or failed), or later ones wait.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._next = 0
        self._done: set[int] = set()

    @contextmanager
    def turn(self, seq: int) -> Iterator[None]:
        with self._cv:
            self._cv.wait_for(lambda: self._next >= seq)
        try:
            yield
        finally:
            self.done(seq)

    def done(self, seq: int) -> None:
        with self._cv:
            self._done.add(seq)
            while self._next in self._done:
                self._done.discard(self._next)
                self._next += 1
            self._cv.notify_all()


class BobEngine:
    """Bob's side of one session: drives hello, recovery and every block.

    Parameters
    ----------
    cfg : Config
    channel : Channel
    store : KeyStore
    report : Report
    stream_id : str
        Stable id of Bob's input (file digest, or capture id of a device).
    kit : StageKit, optional
    """

    def __init__(self, cfg: Config, channel: Channel, store: KeyStore, report: Report, *,
                 stream_id: str, kit: StageKit | None = None, run_info: Mapping[str, Any] | None = None):
        self.cfg = cfg
        self.channel = channel
        self.store = store
        self.report = report
        self.stream_id = stream_id
        self.kit = kit if kit is not None else default_kit()  # one kit for every lane (one permutation seed)
        self.run_info = dict(run_info or {})
        self.cutter = BlockCutter(cfg.pipeline.block_bits)
        self.run_id = ""
        self._index = 0
        self._queue: list[SiftedBlock] = []
        self._queued_since = 0.0  # when the oldest queued block was cut (time.monotonic)
        self.blocks: BobBlocks | None = None  # lane 0 (the only one without threads)
        self.lanes: list[BobBlocks] = []
        # workers > 1: the back half runs in `lanes` threads of its own (Numba
        # kernels release the GIL), overlapping the front half and each other,
        # plus one store thread; all share the channel, one request at a time,
        # each with its own traffic counters.
        self.threaded = cfg.pipeline.workers > 1
        self.n_lanes = cfg.pipeline.lanes if self.threaded else 1
        self._shared = SharedChannel(channel)
        self.front_channel: Channel = self._shared.view() if self.threaded else channel
        self._work: queue.Queue[tuple[int, list[SiftedBlock]] | None] = queue.Queue(maxsize=2)
        self._stores: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._workers: list[threading.Thread] = []
        self._storer: threading.Thread | None = None
        self._turns = _Turns()
        self._seq = 0  # next batch's sequence number
        self._stored = 0  # batches handed to the store, in sequence order
        self._done: list[KeyBlock] = []
        self._done_lock = threading.Lock()
        self._error: BaseException | None = None

    def start(self) -> str:
        t0 = time.perf_counter()
        reply = self.front_channel.request("pipe.hello", {
            "protocol": PROTOCOL, "qkdpost": __version__,
            "shared": shared_config(self.cfg), "bob_stream": self.stream_id,
            "align": json.dumps(self.cfg.to_dict()["align"], sort_keys=True),
        })
        self.run_id = make_run_id(reply["alice_stream"], self.stream_id, self.cfg)
        if reply["run_id"] != self.run_id:  # pragma: no cover - same code both sides
            raise ProtocolError(f"run id mismatch: Alice {reply['run_id']!r}, Bob {self.run_id!r}")
        claim_capture(self.store, reply["alice_stream"], self.stream_id, self.cfg)
        info = dict(self.run_info, run_id=self.run_id, alice_stream=reply["alice_stream"],
                    bob_stream=self.stream_id)
        self.report.info.update(run_id=self.run_id)
        for lane in range(self.n_lanes):
            back, stores = (self._shared.view(lane), self._shared.view(lane)) if self.threaded else (
                self.channel, self.channel)
            self.lanes.append(BobBlocks(self.cfg, back, self.store, self.report, info, kit=self.kit,
                                        store_channel=stores))
        self.blocks = self.lanes[0]
        self.blocks.recover()
        self.report.add_time("store", time.perf_counter() - t0)
        return self.run_id

    def push(self, seg: Segment) -> list[KeyBlock]:
        """Add Bob's sifted segment; process every block it completes."""
        self.cutter.add(seg)
        for start, bits, stats, t_end, labels in self.cutter.blocks():
            if not self._queue:
                self._queued_since = time.monotonic()
            self._queue.append(SiftedBlock(
                block_id=block_id(self.run_id, self._index), index=self._index, start=start, bits=bits,
                stats=stats, qber_estimate=qber_from_stats(stats), stream_time_s=t_end, labels=labels,
            ))
            self._index += 1
        now = time.monotonic()
        out: list[KeyBlock] = []
        size = self.cfg.pipeline.batch_blocks
        # a full batch goes at once; a partial one once its oldest block has
        # waited batch_wait_s (a slow link must not hold keys back for long)
        while len(self._queue) >= size or (self._queue and now - self._queued_since >= self.cfg.pipeline.batch_wait_s):
            out += self._dispatch(self._queue[:size])
            self._queue = self._queue[size:]
            self._queued_since = now
        return out + self._collect()

    def finish(self) -> list[KeyBlock]:
        """Process the blocks still queued; sifted bits short of a block are left unused."""
        out = self._dispatch(self._queue) if self._queue else []
        self._queue = []
        self.report.info["unused_sifted_bits"] = self.cutter.pending_bits
        self.drain()
        return out + self._collect()

    def drain(self) -> None:
        """Wait until the back-half threads have processed everything handed to them."""
        for _ in self._workers:
            self._work.put(None)
        for t in self._workers:
            t.join()
        self._workers = []
        if self._storer is not None:
            self._storer.join()
            self._storer = None

    def abandon(self, exc: BaseException) -> None:
        """The session failed outside the back half: stop its threads.

        Batches not yet started are skipped (never journaled), a batch already
        amplified is dropped by the store thread, and both threads end, so a
        failed session leaves no thread blocked on its queues.
        """
        if not self._workers and self._storer is None:
            return
        if self._error is None:
            self._error = exc
        try:
            self.drain()
        finally:
            self._error = None

    def _dispatch(self, batch: list[SiftedBlock]) -> list[KeyBlock]:
        if not self.threaded:
            return self._run(batch)
        self._raise_pending()
        if not self._workers:
            self._workers = [threading.Thread(target=self._work_loop, args=(lane,), name=f"qkdpost-lane{lane}",
                                              daemon=True) for lane in range(self.n_lanes)]
            self._storer = threading.Thread(target=self._store_loop, args=(len(self._workers),),
                                            name="qkdpost-store", daemon=True)
            for t in self._workers:
                t.start()
            self._storer.start()
        item = (self._seq, batch)
        while True:  # bounded queue: back-pressure keeps memory at a few blocks
            try:
                self._work.put(item, timeout=0.2)
                self._seq += 1
                return []
            except queue.Full:
                self._raise_pending()

    def _work_loop(self, lane: int) -> None:
        """Lane threads: reconcile, verify, length, amplify; each batch goes on to the store thread."""
        blocks = self.lanes[lane]
        try:
            while True:
                item = self._work.get()
                if item is None:
                    return
                seq, batch = item
                job = None
                try:
                    # a failed session: the rest is never started (so never journaled)
                    if self._error is None:
                        job = blocks.process(batch, defer_store=True, turn=self._turns.turn(seq))
                except BaseException as exc:  # handed to the front thread
                    if self._error is None:
                        self._error = exc
                finally:
                    self._turns.done(seq)  # also when skipped or failed before its announcement
                    self._stores.put((seq, lane, job))
        finally:
            self._stores.put(None)

    def _store_loop(self, lanes: int) -> None:
        """The two-phase store (fsync-bound), in batch order, overlapping the lanes' next batches.

        Ends once each of the ``lanes`` threads has said it ended.
        """
        ready: dict[int, tuple[int, Any]] = {}
        ends = 0
        while ends < lanes:
            item = self._stores.get()
            if item is None:
                ends += 1
                continue
            seq, lane, job = item
            ready[seq] = (lane, job)
            while self._stored in ready:  # keys reach the store in the order the blocks were cut
                lane, job = ready.pop(self._stored)
                self._stored += 1
                if job is not None:
                    self._store_job(self.lanes[lane], job)

    def _store_job(self, blocks: BobBlocks, job: Any) -> None:
        if self._error is not None:
            # the session failed: this batch was amplified but never stored; its
            # blocks are started (journaled) and will be skipped, never reprocessed
            for bid, _, _ in job.items:
                job.recs[bid].status, job.recs[bid].reason = "dropped", "peer_disconnected"
                if self.store.state(bid) == "started":
                    self.store.mark_dropped(bid, "peer_disconnected")
            blocks._finish(job.batch, job.recs, {}, job.clock)
            return
        try:
            keys = blocks.store_batch(job)
        except BaseException as exc:
            if self._error is None:
                self._error = exc
            return
        with self._done_lock:
            self._done.extend(KeyBlock(rec.block_id, key, self.store.meta(rec.block_id))
                              for rec, key in keys if key is not None)

    def _raise_pending(self) -> None:
        if self._error is not None:
            err = self._error
            self.drain()  # with the error still set, the lanes start no further batch
            self._error = None
            raise err

    def _collect(self) -> list[KeyBlock]:
        self._raise_pending()
        with self._done_lock:
            out, self._done = self._done, []
        return out

    def abort_queue(self, reason: str) -> int:
        """Drop the blocks cut but not yet processed (e.g. the input broke); returns how many."""
        from ..report import BlockRecord

        for b in self._queue:
            self.report.add_block(BlockRecord(block_id=b.block_id, index=b.index, n_sifted=int(b.bits.size),
                                              status="dropped", reason=reason,
                                              qber_estimate=b.qber_estimate, stream_time_s=b.stream_time_s))
        n = len(self._queue)
        self._queue = []
        return n

    def _run(self, batch: list[SiftedBlock]) -> list[KeyBlock]:
        assert self.blocks is not None, "start() first"
        results = self.blocks.process(batch)
        return [KeyBlock(rec.block_id, key, self.store.meta(rec.block_id)) for rec, key in results if key is not None]


class AliceEngine:
    """Alice's side of one session: answers Bob's requests.

    Parameters
    ----------
    cfg : Config
    store : KeyStore
    report : Report
    stream_id : str
        Stable id of Alice's input.
    pull : callable, optional
        Returns Alice's next :class:`Segment` (or None at the end of her
        input) when Bob asks for key bits she has not sifted yet (file runs).
        Without it, segments come from :meth:`push` (device wrappers).
    extra_handlers : mapping, optional
        More message handlers (the front half's ``sift.*``).
    kit : StageKit, optional
    """

    # handle() locks for itself (LANE_KINDS per lane, the rest per session), so a
    # loopback channel may call it from several of Bob's threads at once
    concurrent = True

    def __init__(self, cfg: Config, store: KeyStore, report: Report, *, stream_id: str,
                 pull: Callable[[], Segment | None] | None = None,
                 extra_handlers: Mapping[str, Callable[[dict[str, Any]], dict[str, Any]]] | None = None,
                 kit: StageKit | None = None):
        self.cfg = cfg
        self.store = store
        self.report = report
        self.stream_id = stream_id
        self.buffer = KeyBuffer()
        self.pull = pull
        self._kit = kit if kit is not None else default_kit()
        self.blocks = AliceBlocks(cfg, store, report, self._key_bits, kit=self._kit)  # lane 0
        # one back-half state per lane Bob uses, made on first use; lanes share
        # the store, the report and the list of committed keys (commit order)
        self.lanes: dict[int, tuple[AliceBlocks, dict[str, Callable[[dict[str, Any]], dict[str, Any]]],
                                    threading.Lock]] = {0: (self.blocks, self.blocks.handlers(), threading.Lock())}
        self._static = {"pipe.hello": self._hello, **dict(extra_handlers or {})}
        self._lock = threading.RLock()  # Bob's threads may call in turn (loopback)
        self.run_id = ""
        self.hello_done = False

    def push(self, seg: Segment) -> None:
        with self._lock:
            self.buffer.append(seg.bits)

    def _key_bits(self, start: int, n: int) -> np.ndarray:
        while self.pull is not None and self.buffer.end < start + n:
            seg = self.pull()
            if seg is None:
                break
            self.buffer.append(seg.bits)
        return self.buffer.take(start, n)

    def _hello(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("protocol") != PROTOCOL:
            raise ProtocolError(f"Bob speaks pipeline protocol {body.get('protocol')}, Alice {PROTOCOL}; "
                                "run the same qkdpost version on both sides")
        mine, theirs = json.loads(shared_config(self.cfg)), json.loads(body["shared"])
        if mine != theirs:
            diffs = [f"{sec}.{k}: alice={mine[sec].get(k)!r} bob={theirs.get(sec, {}).get(k)!r}"
                     for sec in mine for k in mine[sec] if mine[sec].get(k) != theirs.get(sec, {}).get(k)]
            raise ConfigError("the parties' configurations differ: " + "; ".join(diffs)
                              + "; use the same config file on both sides")
        if not isinstance(body.get("align"), str):
            raise ProtocolError("pipe.hello without Bob's alignment settings; run the same qkdpost version "
                                "on both sides")
        try:
            bob_align = json.loads(body["align"])
        except ValueError:
            raise ProtocolError("pipe.hello: Bob's alignment settings are not JSON") from None
        if not isinstance(bob_align, dict):
            raise ProtocolError("pipe.hello: Bob's alignment settings must be a JSON object")
        claim_capture(self.store, self.stream_id, body["bob_stream"], self.cfg, align=bob_align)
        self.run_id = make_run_id(self.stream_id, body["bob_stream"], self.cfg)
        self.report.info.update(run_id=self.run_id)
        self.hello_done = True
        return {"alice_stream": self.stream_id, "run_id": self.run_id, "qkdpost": __version__}

    def handle(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            fn, lane_lock = self._handler(kind, body)
            if kind not in LANE_KINDS:
                return self._call(kind, fn, body)
        with lane_lock:  # only this lane's reconciliation state: other lanes go on meanwhile
            return self._call(kind, fn, body)

    def _lane(self, body: dict[str, Any]) -> tuple[AliceBlocks, dict[str, Callable[[dict[str, Any]], dict[str, Any]]],
                                                   threading.Lock]:
        lane = body.pop(LANE_FIELD, 0)
        if type(lane) is not int or not 0 <= lane < MAX_LANES:
            raise ProtocolError(f"{LANE_FIELD}={lane!r}: a back-half lane must be an int in 0..{MAX_LANES - 1}")
        got = self.lanes.get(lane)
        if got is None:
            blocks = AliceBlocks(self.cfg, self.store, self.report, self._key_bits, kit=self._kit)
            blocks.finished = self.blocks.finished
            got = self.lanes[lane] = (blocks, blocks.handlers(), threading.Lock())
        return got

    def _handler(self, kind: str, body: dict[str, Any]) -> tuple[Callable[[dict[str, Any]], dict[str, Any]],
                                                                   threading.Lock]:
        blocks, handlers, lane_lock = self._lane(body)
        fn = self._static.get(kind) or handlers.get(kind) or blocks.route(kind)
        if fn is None:
            raise ProtocolError(f"no handler for message kind {kind!r} at this point of the session")
        if not self.hello_done and kind != "pipe.hello":
            raise ProtocolError(f"{kind!r} before pipe.hello; Bob must start the session with a hello")
        return fn, lane_lock

    def _call(self, kind: str, fn: Callable[[dict[str, Any]], dict[str, Any]], body: dict[str, Any]) -> dict[str, Any]:
        try:
            return fn(body)
        except ProtocolError:
            raise
        except QkdpostError as exc:  # same shape as over TCP: Bob sees a ProtocolError
            raise ProtocolError(f"Alice could not answer {kind!r}: {type(exc).__name__}: {exc}") from exc

    def abandon(self, reason: str) -> None:
        for blocks, _, _ in self.lanes.values():
            blocks.abandon(reason)

    def take_finished(self) -> list[KeyBlock]:
        out = [KeyBlock(bid, key, self.store.meta(bid)) for bid, key in self.blocks.finished]
        self.blocks.finished.clear()
        return out
