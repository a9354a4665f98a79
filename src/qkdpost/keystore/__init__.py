"""The key store: final key blocks on disk, crash-safe, owner-only, used once.

Layout of a store directory (mode 0700)::

    STORE/
      keys/<block_id>/key.bin      final key, packed bits (LSB first), mode 0600
      keys/<block_id>/meta.json    metadata sidecar, mode 0600
      pending/<block_id>/...       prepared, not yet committed (two-phase commit)
      consumed/<block_id>/meta.json  tombstone of a delivered key (key.bin removed)
      started/<block_id>           journal: the block's protocol began (disclosures
                                   happened); it is never processed again
      tmp/                         work area; anything left here after a crash is junk

Every block is written into ``tmp/`` (files fsynced), then the block's
directory is renamed into place in one atomic step and the parent directory
fsynced, so a crash leaves either the whole block or nothing. A block id is
never reused: :meth:`KeyStore.put` and :meth:`KeyStore.prepare` refuse an id
that is already final, pending or consumed, which is what makes a re-run over
the same input unable to duplicate keys.

Two-phase commit keeps Alice's and Bob's stores equal across crashes: both
sides first :meth:`prepare` a block (pending, never deliverable), the
coordinator (Bob) then commits his own copy, and finally tells Alice to
commit hers. After a crash, a pending block is committed if and only if the
coordinator holds it final (see :mod:`qkdpost.pipeline`).

:meth:`consume` delivers a key at most once, also across processes: the
block directory is first renamed to ``consumed/`` (only one caller can win
that rename), then read, then the key file is overwritten and removed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..bits import as_bits
from ..errors import ConfigError, FileFormatError, InputError

_log = logging.getLogger(__name__)

__all__ = ["KeyStore", "KeyBlock"]

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_KEY = "key.bin"
_META = "meta.json"


class KeyBlock:
    """One key read from a store: ``bits`` (uint8 0/1) and its ``meta`` dict."""

    __slots__ = ("block_id", "bits", "meta")

    def __init__(self, block_id: str, bits: np.ndarray, meta: dict[str, Any]):
        self.block_id = block_id
        self.bits = bits
        self.meta = meta

    def __repr__(self) -> str:  # never show key material
        return f"KeyBlock(block_id={self.block_id!r}, n_bits={len(self.bits)})"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


class KeyStore:
    """A directory of final key blocks with metadata sidecars.

    Parameters
    ----------
    path : str or Path
        Store directory; created (mode 0700) if missing.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        old = os.umask(0o077)
        try:
            for sub in ("", "keys", "pending", "consumed", "started", "tmp", "captures"):
                (self.path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        finally:
            os.umask(old)
        # Leftovers in tmp/ are blocks a crash interrupted before their rename.
        # Work directories of live processes (a writer running while a consumer
        # opens the store) are not leftovers: removing them would break its write.
        for junk in (self.path / "tmp").iterdir():
            if not _owner_alive(junk.name):
                _shred_dir(junk)
        # A crash between a block's rename into place and the removal of its
        # journal entry leaves an empty entry behind: the block is done.
        for entry in (self.path / "started").iterdir():
            if any((self.path / area / entry.name).is_dir() for area in ("keys", "pending", "consumed")):
                if not (entry / "dropped").exists():
                    entry.rmdir()

    # -- captures ------------------------------------------------------------
    def claim_capture(self, capture_id: str, fingerprint: str, describe: str, *,
                      legacy_fingerprint: str | None = None) -> None:
        """Record that a capture is cut into blocks one way, and refuse any other way.

        Block ids are deterministic, so a re-run with the same settings
        skips every block it already did. A re-run that cuts the same
        detections differently (another block size, sifting or alignment
        setting) would get blocks over bits already turned into keys, i.e.
        correlated keys. The first run records ``fingerprint`` for
        ``capture_id``; a later run with another fingerprint raises
        ConfigError.

        Parameters
        ----------
        capture_id : str
            Names the pair of input streams (hex).
        fingerprint : str
            Hash of the settings that decide where blocks fall.
        describe : str
            Those settings in words, for the error message.
        legacy_fingerprint : str, optional
            The fingerprint the same settings had in records written before
            records carried a ``version`` (block size and sifting only, no
            alignment). Such a record that matches it is accepted once and
            rewritten with ``fingerprint`` (docs/pipeline.md, "Capture
            claims"); one that does not is refused like any other mismatch.
        """
        self.check_id(capture_id)
        path = self.path / "captures" / f"{capture_id}.json"
        if path.exists():
            try:
                seen = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise FileFormatError(path, None, f"unreadable capture record ({exc}); "
                                      "restore it or remove it only if this store's keys are discarded") from None
            if seen.get("fingerprint") == fingerprint:
                return
            if ("version" not in seen and legacy_fingerprint is not None
                    and seen.get("fingerprint") == legacy_fingerprint):
                _log.warning("capture %s: record without alignment settings (older qkdpost) matches this run's "
                             "block and sifting settings; recording this run's alignment settings from now on",
                             capture_id)
                self._write_capture(path, fingerprint, describe, created=seen.get("created_utc"),
                                    legacy=str(seen.get("settings")))
                return
            raise ConfigError(
                f"this key store already holds keys from capture {capture_id} cut with "
                f"{seen.get('settings')}; now {describe}{_settings_diff(seen.get('settings'), describe)}. "
                "Cutting the same detections differently would "
                "derive correlated keys from bits already used: rerun with the earlier settings, "
                "or use a new store only after discarding every key of the old one")
        self._write_capture(path, fingerprint, describe)

    def _write_capture(self, path: Path, fingerprint: str, describe: str, *, created: str | None = None,
                       legacy: str | None = None) -> None:
        rec: dict[str, Any] = {"version": 2, "fingerprint": fingerprint, "settings": describe,
                               "created_utc": created or _utc_now()}
        if legacy is not None:
            rec.update(upgraded_utc=_utc_now(), legacy_settings=legacy)
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
        _write_private(tmp, json.dumps(rec).encode())
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    # -- queries -----------------------------------------------------------
    @staticmethod
    def check_id(block_id: str) -> str:
        if not isinstance(block_id, str) or not _ID_RE.match(block_id):
            raise InputError(
                f"block_id={block_id!r}: must be 1-128 characters of letters, digits, '.', '_' or '-' "
                "and start with a letter or digit"
            )
        return block_id

    def _dir(self, area: str, block_id: str) -> Path:
        return self.path / area / self.check_id(block_id)

    def state(self, block_id: str) -> str | None:
        """``"final"``, ``"pending"``, ``"consumed"``, ``"started"``, ``"dropped"`` or None."""
        for area, name in (("keys", "final"), ("pending", "pending"), ("consumed", "consumed"), ("started", "started")):
            if self._dir(area, block_id).is_dir():
                if name == "started" and (self._dir(area, block_id) / "dropped").exists():
                    return "dropped"
                return name
        return None

    def mark_started(self, block_id: str) -> bool:
        """Journal (durably) that a block's two-party protocol is starting.

        Reconciliation discloses parities before a key exists; a block whose
        protocol was interrupted must never be processed again (its leakage
        would go uncounted), so :meth:`known` is true from here on. Returns
        False if the block was already known.
        """
        return self.mark_started_many([block_id])[0]

    def mark_started_many(self, block_ids: Sequence[str]) -> list[bool]:
        """:meth:`mark_started` for several blocks with one directory sync.

        Durable for all of them when this returns; per id, False if it was
        already known.
        """
        out = []
        for block_id in block_ids:
            if self.known(block_id):
                out.append(False)
                continue
            self._dir("started", block_id).mkdir(mode=0o700)
            out.append(True)
        if any(out):
            _fsync_dir(self.path / "started")
        return out

    def known(self, block_id: str) -> bool:
        """True if the id was ever written here (final, pending or consumed)."""
        return self.state(block_id) is not None

    def ids(self, area: str = "keys") -> list[str]:
        """Sorted block ids in ``keys`` (default), ``pending`` or ``consumed``."""
        if area not in ("keys", "pending", "consumed", "started"):
            raise InputError(f"area={area!r}: choose 'keys', 'pending', 'consumed' or 'started'")
        return sorted(p.name for p in (self.path / area).iterdir() if p.is_dir())

    def __len__(self) -> int:
        return len(self.ids())

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())

    def meta(self, block_id: str) -> dict[str, Any]:
        """Metadata of a final, pending or consumed block.

        Raises FileFormatError if the metadata file is not a JSON object.
        """
        for area in ("keys", "pending", "consumed"):
            p = self._dir(area, block_id) / _META
            if p.is_file():
                try:
                    meta = json.loads(p.read_text())
                except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                    raise FileFormatError(p, None, f"key metadata is damaged ({type(exc).__name__}: {exc}); "
                                          "discard this block on both sides") from None
                if not isinstance(meta, dict):
                    raise FileFormatError(p, None, f"key metadata is a JSON {type(meta).__name__}, not an "
                                          "object; discard this block on both sides")
                return meta
        raise InputError(f"block_id={block_id!r}: not in key store {str(self.path)!r}")

    def total_bits(self) -> int:
        return sum(int(self.meta(i)["n_bits"]) for i in self.ids())

    # -- writing -----------------------------------------------------------
    def _stage(self, block_id: str, bits: np.ndarray, meta: Mapping[str, Any]) -> Path:
        self.check_id(block_id)
        if self.state(block_id) not in (None, "started"):  # a started block may finish once
            raise InputError(
                f"block_id={block_id!r}: already in key store {str(self.path)!r} "
                f"({self.state(block_id)}); a key id is never written twice"
            )
        bits = as_bits(bits, "bits")
        record = dict(meta)
        record.update(block_id=block_id, n_bits=int(bits.size), written_utc=_utc_now(), format="packbits-lsb")
        work = self.path / "tmp" / _work_name(block_id)
        work.mkdir(mode=0o700)
        try:
            _write_private(work / _KEY, np.packbits(bits, bitorder="little").tobytes())
            _write_private(work / _META, (json.dumps(record, sort_keys=True, indent=1) + "\n").encode())
            _fsync_dir(work)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return work

    def _move_many(self, moves: Sequence[tuple[Path, str]], area: str) -> None:
        """Rename staged/pending block dirs into ``area`` and sync ``area`` once.

        Every destination is checked before the first rename, so a clash
        renames nothing (the staged dirs are removed). Each rename is atomic;
        all are durable once the one parent sync returns.
        """
        clash = [bid for _, bid in moves if self._dir(area, bid).exists()]
        if clash:
            for src, _ in moves:
                if src.parent == self.path / "tmp":
                    shutil.rmtree(src, ignore_errors=True)
            raise InputError(f"block_id={clash[0]!r}: already in {area}/ of {str(self.path)!r}")
        for src, bid in moves:
            os.rename(src, self._dir(area, bid))
        if moves:
            _fsync_dir(self.path / area)  # the renames are durable once the new parent is synced
        for _, bid in moves:
            journal = self._dir("started", bid)
            if journal.is_dir():  # the block is now pending/final: the journal entry is done
                journal.rmdir()  # not synced: a stale entry is harmless and removed on open

    def _stage_many(self, items: Sequence[tuple[str, np.ndarray, Mapping[str, Any]]]) -> list[tuple[Path, str]]:
        ids = [bid for bid, _, _ in items]
        if len(set(ids)) != len(ids):
            raise InputError(f"block ids {ids!r}: each id at most once per write; a key id is never written twice")
        staged: list[tuple[Path, str]] = []
        try:
            for bid, bits, meta in items:
                staged.append((self._stage(bid, bits, meta), bid))
        except BaseException:
            for work, _ in staged:
                shutil.rmtree(work, ignore_errors=True)
            raise
        return staged

    def put(self, block_id: str, bits: np.ndarray, meta: Mapping[str, Any]) -> None:
        """Write a final key block atomically (one-phase)."""
        self.put_many([(block_id, bits, meta)])

    def put_many(self, items: Sequence[tuple[str, np.ndarray, Mapping[str, Any]]]) -> None:
        """Write several final key blocks; each atomic, all durable on return.

        Each block is built in ``tmp/`` (files fsynced) and renamed into
        ``keys/``; one sync of ``keys/`` covers the renames of the batch
        (instead of one per block). If any id is already known, nothing is
        written.
        """
        self._move_many(self._stage_many(items), "keys")

    def prepare(self, block_id: str, bits: np.ndarray, meta: Mapping[str, Any]) -> None:
        """Write a block as pending (durable, not deliverable) for two-phase commit."""
        self.prepare_many([(block_id, bits, meta)])

    def prepare_many(self, items: Sequence[tuple[str, np.ndarray, Mapping[str, Any]]]) -> None:
        """:meth:`prepare` for several blocks (as :meth:`put_many`, into ``pending/``)."""
        self._move_many(self._stage_many(items), "pending")

    def commit(self, block_id: str) -> bool:
        """Make a pending block final. True if it was pending (idempotent on final)."""
        return self.commit_many([block_id])[0]

    def commit_many(self, block_ids: Sequence[str]) -> list[bool]:
        """:meth:`commit` for several blocks with one directory sync; all durable on return."""
        out, moves = [], []
        for block_id in block_ids:
            st = self.state(block_id)
            if any(bid == block_id for _, bid in moves):
                out.append(False)  # listed twice: committed once
            elif st == "pending":
                moves.append((self._dir("pending", block_id), block_id))
                out.append(True)
            elif st in ("final", "consumed"):
                out.append(False)
            else:
                raise InputError(f"block_id={block_id!r}: cannot commit, it was never prepared in "
                                 f"{str(self.path)!r}")
        self._move_many(moves, "keys")
        return out

    def abort(self, block_id: str) -> bool:
        """Discard a pending block, leaving its journal entry. True if one was discarded.

        The id stays known (state ``"started"``), so the block is never
        processed again.
        """
        d = self._dir("pending", block_id)
        if d.is_dir():
            self.mark_dropped(block_id, "aborted")
            gone = self.path / "tmp" / _work_name(block_id + ".abort")
            os.rename(d, gone)
            _fsync_dir(d.parent)
            _shred_dir(gone)
            return True
        return False

    def mark_dropped(self, block_id: str, reason: str) -> None:
        """Journal that a block was dropped (it stays known, never reprocessed)."""
        journal = self._dir("started", block_id)
        journal.mkdir(mode=0o700, exist_ok=True)
        tmp = journal / "dropped.tmp"
        tmp.unlink(missing_ok=True)
        _write_private(tmp, reason.encode()[:200])
        os.replace(tmp, journal / "dropped")
        _fsync_dir(journal)
        _fsync_dir(journal.parent)

    def drop_reason(self, block_id: str) -> str | None:
        p = self._dir("started", block_id) / "dropped"
        return p.read_text() if p.is_file() else None

    # -- reading -----------------------------------------------------------
    def read(self, block_id: str) -> KeyBlock:
        """Read a final key without consuming it (tests, comparisons)."""
        d = self._dir("keys", block_id)
        if not d.is_dir():
            raise InputError(f"block_id={block_id!r}: no final key in {str(self.path)!r}")
        return _load(d, block_id)

    def consume(self, block_id: str | None = None) -> KeyBlock:
        """Deliver one key at most once: claim it, read it, erase it.

        With ``block_id=None`` the final key with the smallest id (plain
        string order, as :meth:`ids` sorts) is taken; that is not necessarily
        the oldest one written. Within one run, ids ``<run>-<index>`` carry a
        zero-padded index, so this is the run's earliest remaining block.
        Raises InputError if there is no such key (or another consumer won).
        """
        candidates = [block_id] if block_id is not None else self.ids()
        for bid in candidates:
            src = self._dir("keys", bid)
            dst = self._dir("consumed", bid)
            try:
                os.rename(src, dst)  # the claim: exactly one caller succeeds
            except FileNotFoundError:
                continue
            _fsync_dir(src.parent)
            try:
                block = _load(dst, bid)
            finally:
                _shred_file(dst / _KEY)  # claimed: erased whether or not it could be read
            meta = dict(block.meta)
            meta["consumed_utc"] = _utc_now()
            tmp = dst / (_META + ".tmp")
            _write_private(tmp, (json.dumps(meta, sort_keys=True, indent=1) + "\n").encode())
            os.replace(tmp, dst / _META)
            _fsync_dir(dst)
            return block
        raise InputError(
            f"block_id={block_id!r}: no final key to consume in {str(self.path)!r}"
            if block_id is not None
            else f"key store {str(self.path)!r} has no final key left to consume"
        )


def _work_name(block_id: str) -> str:
    """Name of a work directory in ``tmp/``: ``p<pid>_<block_id>.<random>``."""
    return f"p{os.getpid()}_{block_id}.{secrets.token_hex(4)}"


def _owner_alive(name: str) -> bool:
    """True if the work directory ``name`` belongs to a process that is still running."""
    head, sep, _ = name.partition("_")
    if not sep or not head.startswith("p") or not head[1:].isdigit():
        return False  # not a work directory of this format: junk
    try:
        os.kill(int(head[1:]), 0)
    except PermissionError:
        return True  # exists, run by another user
    except (OSError, OverflowError):
        return False  # ProcessLookupError: the writer is gone
    return True


def _load(d: Path, block_id: str) -> KeyBlock:
    try:
        meta = json.loads((d / _META).read_text())
        n_bits = int(meta["n_bits"])
        if n_bits < 0:
            raise ValueError(f"n_bits={n_bits}")
    except (ValueError, KeyError, TypeError) as exc:
        raise FileFormatError(d / _META, None, f"key metadata is damaged ({type(exc).__name__}: {exc}); "
                              "discard this block on both sides") from None
    data = (d / _KEY).read_bytes()
    if len(data) != (n_bits + 7) // 8:
        # np.unpackbits would silently pad a short file with zero bits
        raise FileFormatError(d / _KEY, len(data), f"key file has {len(data)} bytes, its metadata says "
                              f"{n_bits} bits ({(n_bits + 7) // 8} bytes); the store is damaged, discard "
                              "this block on both sides")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n_bits, bitorder="little")
    return KeyBlock(block_id, bits, meta)


def _shred_file(p: Path) -> None:
    try:
        size = p.stat().st_size
        with open(p, "r+b") as fh:
            fh.write(b"\x00" * size)
            fh.flush()
            os.fsync(fh.fileno())
        p.unlink()
    except FileNotFoundError:
        pass


def _shred_dir(d: Path) -> None:
    _shred_file(d / _KEY)
    shutil.rmtree(d, ignore_errors=True)


def _settings_diff(old: Any, new: str) -> str:
    """`` (differs: a.b was x, now y; ...)`` when both descriptions are JSON objects, else ``""``."""

    def leaves(d: Any, pre: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {pre: d}
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(leaves(v, f"{pre}.{k}" if pre else str(k)))
        return out

    try:
        a, b = json.loads(old), json.loads(new)
    except (TypeError, ValueError):
        return ""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return ""
    la, lb = leaves(a), leaves(b)
    diffs = [f"{k} was {la.get(k)!r}, now {lb.get(k)!r}" for k in sorted(set(la) | set(lb)) if la.get(k) != lb.get(k)]
    return f" (differs: {'; '.join(diffs)})" if diffs else ""


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
