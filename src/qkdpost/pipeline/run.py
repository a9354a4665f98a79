"""Batch and networked runs over timestamp files.

- :func:`run_local`: both parties in one process over a loopback channel
  (captured logs, tests, ``qkdpost run --alice A --bob B``).
- :func:`serve_alice`: Alice's TCP server (``qkdpost serve --role alice``);
  each Bob session re-reads her file from the start.
- :func:`run_bob`: Bob connects to Alice (``qkdpost run --role bob --peer``);
  when the connection drops, the block in flight is dropped on both sides,
  Bob reconnects and a new session starts from the beginning of both inputs,
  skipping every block already stored or started (ids are deterministic).

Each party writes its key store and ``report.json`` (+ ``report.png``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from ..channel import Channel, LoopbackChannel
from ..config import Config
from ..errors import FileFormatError, PeerDisconnected
from ..io.model import Chunk, StreamInfo
from ..keystore import KeyBlock, KeyStore
from ..report import Report
from .engine import AliceEngine, BobEngine
from .front import AliceFront, BobFront

__all__ = ["run_local", "serve_alice", "run_bob", "stream_id", "open_input"]

log = logging.getLogger(__name__)


def stream_id(path: str | os.PathLike[str], info: StreamInfo) -> str:
    """A stable id of an input file: its metadata, size and first and last MiB."""
    p = Path(path)
    h = hashlib.sha256()
    h.update(json.dumps(info.to_json(), sort_keys=True).encode())
    size = p.stat().st_size
    h.update(size.to_bytes(8, "little"))
    with open(p, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 1 << 20:
            fh.seek(max(1 << 20, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:24]


def open_input(path: str | os.PathLike[str], cfg: Config) -> tuple[StreamInfo, Iterator[Chunk]]:
    from ..io import open_stream

    if cfg.io.input_format == "auto":
        return open_stream(path, chunk_events=cfg.io.chunk_events)
    return open_stream(path, format=cfg.io.input_format, chunk_events=cfg.io.chunk_events)


def _progress(total: int | None, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="ev", unit_scale=True, disable=not enabled or None, leave=False)


class _AliceParty:
    """Alice's engine + front for one session over her file."""

    concurrent = True  # handle() is AliceEngine's, which locks for itself

    def __init__(self, cfg: Config, path: str | os.PathLike[str], store: KeyStore, report: Report, kit: Any = None):
        info, chunks = open_input(path, cfg)
        self.engine: AliceEngine
        self.front = AliceFront(cfg, info, chunks=iter(chunks), emit=lambda seg: self.engine.push(seg))
        self.engine = AliceEngine(cfg, store, report, stream_id=stream_id(path, info),
                                  extra_handlers=self.front.handlers(), kit=kit)

    def handle(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.engine.handle(kind, body)


def _bob_session(cfg: Config, path: str | os.PathLike[str], channel: Channel, store: KeyStore, report: Report,
                 *, progress: bool, kit: Any = None, on_key: Callable[[KeyBlock], None] | None = None) -> int:
    """One Bob session over his file; returns the number of keys stored."""
    info, chunks = open_input(path, cfg)
    engine = BobEngine(cfg, channel, store, report, stream_id=stream_id(path, info), kit=kit,
                       run_info={"input_bob": str(path)})
    engine.start()
    front = BobFront(cfg, info, engine.front_channel)
    n_keys = 0

    def take(keys: list[KeyBlock]) -> None:
        nonlocal n_keys
        n_keys += len(keys)
        if on_key:
            for k in keys:
                on_key(k)

    bar = _progress(None, "bob", progress)
    try:
        try:
            _bob_loop(cfg, chunks, front, engine, engine.front_channel, report, take, bar)
        except FileFormatError as exc:
            # Bob's input is corrupt from here on: every full block before the
            # damage was processed; the sifted bits after it never form a block.
            dropped = engine.abort_queue("corrupt_input")
            engine.drain()  # blocks already handed to the back half finish normally
            report.info["input_error"] = {"file": str(path), "error": str(exc), "blocks_dropped": dropped,
                                          "sifted_bits_dropped": engine.cutter.pending_bits}
            raise
        except BaseException as exc:
            engine.abandon(exc)  # no back-half thread outlives a failed session
            raise
    finally:
        bar.close()
        report.counts["detections_bob"] = front.events
        report.info["front"] = front.summary()
        report.info["stream_duration_s"] = front._t_end_s()
    return n_keys


def _bob_loop(cfg: Config, chunks: Iterator[Chunk], front: BobFront, engine: BobEngine, channel: Channel,
              report: Report, take: Callable[[list[KeyBlock]], None], bar: Any) -> None:
    it = iter(chunks)
    while True:
        t0 = time.perf_counter()
        c = next(it, None)
        report.add_time("read", time.perf_counter() - t0)
        if c is None:
            break
        t0 = time.perf_counter()
        rt0 = channel.stats.snapshot()
        seg = front.push(c.t, c.ch)
        rt1 = channel.stats.snapshot()
        report.add_time("sift", time.perf_counter() - t0, rt1[0] - rt0[0], rt1[1] - rt0[1])
        take(engine.push(seg))
        bar.update(len(c.t))
    t0 = time.perf_counter()
    rt0 = channel.stats.snapshot()
    seg = front.finish()
    rt1 = channel.stats.snapshot()
    report.add_time("sift", time.perf_counter() - t0, rt1[0] - rt0[0], rt1[1] - rt0[1])
    take(engine.push(seg))
    take(engine.finish())


def run_local(alice: str | os.PathLike[str], bob: str | os.PathLike[str], out_dir: str | os.PathLike[str],
              cfg: Config | None = None, *, progress: bool = False, plot: bool = True, kit: Any = None,
              rtt_s: float = 0.0) -> Report:
    """Both parties in one process over a loopback channel.

    Writes ``OUT/alice`` and ``OUT/bob`` (key stores, each with its
    ``report.json``) and ``OUT/report.json`` + ``OUT/report.png`` (Bob's
    view, with Alice's totals). Returns Bob's report.
    """
    cfg = cfg or Config()
    out = Path(out_dir)
    store_a, store_b = KeyStore(out / "alice"), KeyStore(out / "bob")
    rep_a = Report("alice", cfg.to_dict(), input=str(alice))
    rep_b = Report("bob", cfg.to_dict(), input_alice=str(alice), input_bob=str(bob), mode="local")
    alice_party = _AliceParty(cfg, alice, store_a, rep_a, kit=kit)
    channel = LoopbackChannel(alice_party, rtt_s=rtt_s)  # type: ignore[arg-type]
    try:
        _bob_session(cfg, bob, channel, store_b, rep_b, progress=progress, kit=kit)
    finally:
        rep_a.counts["detections_alice"] = alice_party.front.events
        rep_b.counts["detections_alice"] = alice_party.front.events
        rep_a.info["front"] = alice_party.front.summary()
        rep_a.finish()
        rep_b.finish()
        rep_b.info["alice_totals"] = rep_a.totals()
        rep_a.write(out / "alice", plot=False)
        rep_b.write(out / "bob", plot=False)
        rep_b.write(out, plot=plot)
    return rep_b


def serve_alice(path: str | os.PathLike[str], out_dir: str | os.PathLike[str], cfg: Config | None = None, *,
                host: str = "127.0.0.1", port: int = 0, max_sessions: int | None = None,
                idle_timeout_s: float | None = None, on_listen: Callable[[int], None] | None = None,
                kit: Any = None, plot: bool = True) -> Report:
    """Alice's server: answer Bob's sessions over TCP, each from the start of her file."""
    from ..transport import auth_key_of, serve

    cfg = cfg or Config()
    _warn_if_unauthenticated(cfg)
    out = Path(out_dir)
    store = KeyStore(out)
    report = Report("alice", cfg.to_dict(), input=str(path), mode="tcp")
    current: list[_AliceParty] = []

    def make() -> _AliceParty:
        party = _AliceParty(cfg, path, store, report, kit=kit)
        current.append(party)
        return party

    def ended(party: Any, reason: str) -> None:
        party.engine.abandon("peer_disconnected" if reason != "closed" else "session_ended")
        report.counts["detections_alice"] = party.front.events
        report.info.setdefault("sessions", []).append({"end": reason, "utc": time.strftime("%H:%M:%S", time.gmtime())})
        report.finish()
        report.write(out, plot=False)

    try:
        serve(make, host, port, timeout_s=cfg.transport.timeout_s,
              handshake_timeout_s=cfg.transport.connect_timeout_s, max_sessions=max_sessions,
              on_listen=on_listen, on_session_end=ended, idle_timeout_s=idle_timeout_s,
              auth_key=auth_key_of(cfg))
    finally:
        report.finish()
        report.write(out, plot=plot)
    return report


def run_bob(path: str | os.PathLike[str], out_dir: str | os.PathLike[str], peer: tuple[str, int],
            cfg: Config | None = None, *, progress: bool = False, retries: int = 3, retry_wait_s: float = 1.0,
            kit: Any = None, plot: bool = True) -> Report:
    """Bob's side over TCP, reconnecting after a lost connection (up to ``retries`` times)."""
    from ..transport import TcpChannel, auth_key_of

    cfg = cfg or Config()
    _warn_if_unauthenticated(cfg)
    out = Path(out_dir)
    store = KeyStore(out)
    report = Report("bob", cfg.to_dict(), input=str(path), peer=f"{peer[0]}:{peer[1]}", mode="tcp")
    attempt = 0
    try:
        while True:
            try:
                with TcpChannel(peer[0], peer[1], timeout_s=cfg.transport.timeout_s,
                                connect_timeout_s=cfg.transport.connect_timeout_s, auth_key=auth_key_of(cfg)) as chan:
                    _bob_session(cfg, path, chan, store, report, progress=progress, kit=kit)
                break
            except PeerDisconnected as exc:
                attempt += 1
                report.info.setdefault("reconnects", []).append(str(exc))
                if attempt > retries:
                    raise
                log.warning("lost Alice (%s); reconnecting (%d/%d)", exc, attempt, retries)
                time.sleep(retry_wait_s)
    finally:
        report.finish()
        report.write(out, plot=plot)
    return report


def _warn_if_unauthenticated(cfg: Config) -> None:
    if not cfg.transport.auth_key_file:
        log.warning("the channel to the peer is not authenticated (no auth_key_file): fine on a link "
                    "authenticated below qkdpost or for tests, not for a deployment; see docs/pipeline.md")
