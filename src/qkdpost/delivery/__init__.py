"""Key delivery to applications: the ETSI GS QKD 014 key-management interface.

ETSI GS QKD 014 V1.1.1 (2019-02), "Protocol and data format of REST-based key
delivery API", has a pair of key-management entities (KMEs), one per site:
the *master* SAE (secure application entity) asks its KME for keys
(``enc_keys``) and gets key IDs with the keys; it hands the IDs to the
*slave* SAE, which asks the KME on its own site for the same keys by ID
(``dec_keys``). Here Alice's key store backs one KME and Bob's the other;
which side is master is a deployment choice.

How keys are cut and named
--------------------------
Both stores hold identical final blocks under identical ids. A KME keeps the
last ``ID_SECRET_BITS`` of every block as a naming secret (never delivered),
cuts the rest, in block-id order, into keys of ``key_size`` bits (bits left
over at the end are not delivered either) and names key ``i`` of block ``b``
by the first 16 bytes of ``HMAC-SHA256(secret_b, f"{b}:{key_size}:{i}")`` as a
UUID: both sides derive the same IDs without talking to each other, an ID
reveals nothing about any delivered key (the secret is independent key
bits), and nobody without the key can name a key the master has not handed
out yet.

At most once, and no key lost in a crash
----------------------------------------
A KME takes a block out of the store into its own pool (``STORE/delivery/``,
mode 0700, files 0600): it first writes the pool copy and its ledger entry
(atomically, fsynced), then consumes the block from the store (the store's
own at-most-once claim); a crash in between is repaired at the next start by
consuming the block again, so it sits in one place only. Before keys are
returned, the ledger records them as delivered (fsynced); a crash after that
may lose keys an application never received, but never hands a key out
twice. A pool block whose keys are all delivered is overwritten and removed.

The HTTP layer is :mod:`qkdpost.delivery.server`; this module has the KME
logic and is usable on its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import threading
import uuid
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..bits import pack_bits
from ..errors import ConfigError, InputError
from ..keystore import KeyStore, _fsync_dir, _shred_file, _write_private

__all__ = ["Kme", "DeliveryError", "ID_SECRET_BITS", "key_id", "key_bits"]

#: Bits at the end of each block kept as its key-naming secret (never delivered).
ID_SECRET_BITS = 128

_SAE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class DeliveryError(InputError):
    """A request the KME refuses; ``status`` is the HTTP status ETSI 014 prescribes (400, 401, 503)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = int(status)


def key_id(block_id: str, key_size: int, index: int, secret: bytes) -> str:
    """The ETSI key_ID of key ``index`` of a block cut into ``key_size``-bit keys (``secret``: its naming bits)."""
    mac = hmac.new(secret, f"{block_id}:{key_size}:{index}".encode(), hashlib.sha256).digest()
    return str(uuid.UUID(bytes=mac[:16], version=4))


def _keys_in(nbits: int, key_size: int) -> int:
    """Keys a block of ``nbits`` final bits gives (its naming secret set aside)."""
    return max(0, nbits - ID_SECRET_BITS) // key_size


def _replace_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically (temp file fsynced, rename, directory fsynced), mode 0600."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a leftover of a crash
    _write_private(tmp, data)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Kme:
    """One site's key-management entity over a :class:`~qkdpost.keystore.KeyStore`.

    Parameters
    ----------
    store : KeyStore or path
        This site's key store (Alice's or Bob's).
    role : {"master", "slave"}
        ``"master"``: serves ``enc_keys`` to the master SAE; ``"slave"``:
        serves ``dec_keys`` to the slave SAE.
    kme_id, peer_kme_id : str
        This KME's and the other site's KME IDs (reported in ``status``).
    master_sae_id, slave_sae_id : str
        The SAE pair this KME pair serves.
    key_size : int
        Bits per key, a multiple of 8 (both KMEs must use the same value).
    max_keys_per_request : int
        Cap on ``number`` in one request.
    """

    def __init__(self, store: KeyStore | str | os.PathLike[str], *, role: str, kme_id: str, peer_kme_id: str,
                 master_sae_id: str, slave_sae_id: str, key_size: int = 256, max_keys_per_request: int = 128):
        if role not in ("master", "slave"):
            raise ConfigError(f"role={role!r}: must be 'master' (enc_keys) or 'slave' (dec_keys)")
        for name, v in (("kme_id", kme_id), ("peer_kme_id", peer_kme_id), ("master_sae_id", master_sae_id),
                        ("slave_sae_id", slave_sae_id)):
            if not isinstance(v, str) or not _SAE_RE.match(v):
                raise ConfigError(f"{name}={v!r}: 1-128 characters of letters, digits and ._:- are allowed")
        if not isinstance(key_size, int) or key_size < 8 or key_size % 8 or key_size > 1 << 16:
            raise ConfigError(f"key_size={key_size!r}: must be a multiple of 8 in [8, 65536] bits, e.g. 256")
        if not isinstance(max_keys_per_request, int) or not 1 <= max_keys_per_request <= 10_000:
            raise ConfigError(f"max_keys_per_request={max_keys_per_request!r}: must be in [1, 10000]")
        self.store = store if isinstance(store, KeyStore) else KeyStore(store)
        self.role, self.kme_id, self.peer_kme_id = role, kme_id, peer_kme_id
        self.master_sae_id, self.slave_sae_id = master_sae_id, slave_sae_id
        self.key_size, self.max_keys = key_size, max_keys_per_request
        self._dir = Path(self.store.path) / "delivery"
        self._dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self._dir, 0o700)
        self._lock = threading.Lock()
        self._ledger_path = self._dir / "ledger.json"
        self._ledger = self._load_ledger()
        self._recover()

    # -- ledger and pool ------------------------------------------------------------
    def _load_ledger(self) -> dict[str, Any]:
        if not self._ledger_path.exists():
            return {"key_size": self.key_size, "blocks": {}}
        try:
            led = json.loads(self._ledger_path.read_text())
            blocks = led["blocks"]
            assert isinstance(blocks, dict)
        except (ValueError, KeyError, AssertionError) as exc:
            raise ConfigError(f"{str(self._ledger_path)!r}: damaged delivery ledger ({exc}); keys in its pool "
                              "cannot be delivered safely — move the delivery/ directory aside to start over") from None
        if led.get("key_size") != self.key_size:
            raise ConfigError(f"key_size={self.key_size}: this store's keys were cut into {led.get('key_size')}-bit "
                              "keys already; both KMEs must keep the key size they started with")
        return led

    def _save_ledger(self) -> None:
        _replace_private(self._ledger_path, (json.dumps(self._ledger, sort_keys=True) + "\n").encode())

    def _pool_file(self, block_id: str) -> Path:
        return self._dir / f"{KeyStore.check_id(block_id)}.key"

    def _recover(self) -> None:
        """Finish or undo takes a crash interrupted, so no block is ever in the pool and elsewhere.

        A ledger entry is written before the store claim and marked ``claimed``
        after it. Unclaimed and still in the store: claim it now. Unclaimed and
        gone from the store: someone else may hold it (a claim lost just
        before the crash), so it is dropped, never delivered. Pool files
        without an entry (a crash before the ledger write) are shredded.
        """
        for bid, ent in list(self._ledger["blocks"].items()):
            if not ent.get("claimed"):
                try:
                    self.store.consume(bid)  # raises InputError if the block is gone (or someone else won)
                    ent["claimed"] = True
                except InputError:
                    del self._ledger["blocks"][bid]
            if bid in self._ledger["blocks"] and not self._pool_file(bid).exists():
                del self._ledger["blocks"][bid]  # fully delivered and shredded before the ledger said so
        self._save_ledger()
        for f in self._dir.glob("*.key"):
            if f.stem not in self._ledger["blocks"]:
                _shred_file(f)

    def _take(self, block_id: str) -> None:
        """Move a block from the store into the pool (pool copy and ledger first, then the store's claim)."""
        blk = self.store.read(block_id)
        n = _keys_in(blk.bits.size, self.key_size)
        _replace_private(self._pool_file(block_id), pack_bits(blk.bits).tobytes())
        self._ledger["blocks"][block_id] = {"keys": n, "bits": int(blk.bits.size), "delivered": [], "claimed": False}
        self._save_ledger()
        try:
            self.store.consume(block_id)
        except InputError:
            # another consumer of the store won the claim: that block is theirs, the pool copy must go
            del self._ledger["blocks"][block_id]
            self._save_ledger()
            _shred_file(self._pool_file(block_id))
            raise DeliveryError(503, f"block {block_id} was taken from the key store by another consumer "
                                     "while this KME claimed it; retry") from None
        self._ledger["blocks"][block_id]["claimed"] = True
        self._save_ledger()

    def _secret(self, block_id: str) -> bytes:
        """The block's naming secret: its last ID_SECRET_BITS bits (pool copy, or the store's before the take)."""
        if block_id in self._ledger["blocks"]:
            data = np.frombuffer(self._pool_file(block_id).read_bytes(), dtype=np.uint8)
            bits = np.unpackbits(data, bitorder="little")[: self._ledger["blocks"][block_id]["bits"]]
        else:
            bits = self.store.read(block_id).bits
        return pack_bits(bits[bits.size - ID_SECRET_BITS :]).tobytes()

    def _key_bytes(self, block_id: str, index: int) -> bytes:
        """Key ``index`` of a pooled block: its bytes only (LSB-first packing: bit k*S.. is byte k*S/8..)."""
        nbytes = self.key_size // 8
        with open(self._pool_file(block_id), "rb") as fh:
            fh.seek(index * nbytes)
            data = fh.read(nbytes)
        if len(data) != nbytes:  # the ledger promised a key the pool file does not hold
            raise DeliveryError(500, f"key pool of block {block_id} is short: key {index} is missing; "
                                "the pool file was truncated outside qkdpost (restore it or drop the block)")
        return data

    def _finish(self, block_id: str) -> None:
        ent = self._ledger["blocks"][block_id]
        if len(ent["delivered"]) >= ent["keys"]:
            _shred_file(self._pool_file(block_id))
            del self._ledger["blocks"][block_id]

    def _blocks_in_order(self) -> Iterable[str]:
        """Pooled blocks, then the store's, in block-id order (the order both sides cut in)."""
        return sorted(set(self._ledger["blocks"]) | set(self.store.ids()))

    def _available(self) -> int:
        n = sum(e["keys"] - len(e["delivered"]) for e in self._ledger["blocks"].values())
        for bid in self.store.ids():
            if bid not in self._ledger["blocks"]:
                n += _keys_in(int(self.store.meta(bid).get("final_length", 0)), self.key_size)
        return n

    # -- ETSI 014 operations ------------------------------------------------------------
    def _check_peer_sae(self, sae_id: str, expected: str, what: str) -> None:
        if sae_id != expected:
            raise DeliveryError(401, f"{what} {sae_id!r} is not served by this KME (it serves {expected!r})")

    def status(self, slave_sae_id: str) -> dict[str, Any]:
        """ETSI 014 Status: the key stock between this SAE pair."""
        self._check_peer_sae(slave_sae_id, self.slave_sae_id, "slave SAE")
        with self._lock:
            stored = self._available()
        return {
            "source_KME_ID": self.kme_id, "target_KME_ID": self.peer_kme_id,
            "master_SAE_ID": self.master_sae_id, "slave_SAE_ID": self.slave_sae_id,
            "key_size": self.key_size, "stored_key_count": stored, "max_key_count": stored,
            "max_key_per_request": self.max_keys, "max_key_size": self.key_size, "min_key_size": self.key_size,
            "max_SAE_ID_count": 0,
        }

    def enc_keys(self, slave_sae_id: str, number: int = 1, size: int | None = None,
                 additional_slave_sae_ids: list[str] | None = None) -> dict[str, Any]:
        """ETSI 014 Get key (master side): ``number`` fresh keys, each delivered once."""
        if self.role != "master":
            raise DeliveryError(400, "this KME is the slave side: ask it for dec_keys, and the master KME for enc_keys")
        self._check_peer_sae(slave_sae_id, self.slave_sae_id, "slave SAE")
        if additional_slave_sae_ids:
            raise DeliveryError(400, "additional_slave_SAE_IDs: key multicast is not supported (max_SAE_ID_count 0)")
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= self.max_keys:
            raise DeliveryError(400, f"number={number!r}: must be an integer in [1, {self.max_keys}]")
        if size is not None and size != self.key_size:
            raise DeliveryError(400, f"size={size!r}: this KME delivers {self.key_size}-bit keys only")
        with self._lock:
            if self._available() < number:
                raise DeliveryError(503, f"{number} keys asked, {self._available()} in stock; retry when more "
                                         "key blocks have been distilled")
            picks: list[tuple[str, int]] = []
            for bid in self._blocks_in_order():
                if len(picks) == number:
                    break
                if bid not in self._ledger["blocks"]:
                    self._take(bid)
                ent = self._ledger["blocks"][bid]
                done = set(ent["delivered"])
                for i in range(ent["keys"]):
                    if len(picks) == number:
                        break
                    if i not in done:
                        picks.append((bid, i))
            naming = {b: self._secret(b) for b in {b for b, _ in picks}}
            out = [(key_id(b, self.key_size, i, naming[b]), self._key_bytes(b, i)) for b, i in picks]
            for b, i in picks:  # delivered before they leave: never twice
                self._ledger["blocks"][b]["delivered"].append(i)
            self._save_ledger()
            for b in {b for b, _ in picks}:
                self._finish(b)
            self._save_ledger()
        return {"keys": [{"key_ID": kid, "key": base64.b64encode(k).decode("ascii")} for kid, k in out]}

    def dec_keys(self, master_sae_id: str, key_ids: list[str]) -> dict[str, Any]:
        """ETSI 014 Get key with key IDs (slave side): the keys the master handed out, each once."""
        if self.role != "slave":
            raise DeliveryError(400, "this KME is the master side: ask it for enc_keys, and the slave KME for dec_keys")
        self._check_peer_sae(master_sae_id, self.master_sae_id, "master SAE")
        if not key_ids or len(key_ids) > self.max_keys:
            raise DeliveryError(400, f"key_IDs: give 1 to {self.max_keys} key IDs")
        want = []
        for k in key_ids:
            try:
                want.append(str(uuid.UUID(str(k))))
            except ValueError:
                raise DeliveryError(400, f"key_ID {str(k)[:64]!r} is not a UUID") from None
        if len(set(want)) != len(want):
            raise DeliveryError(400, "key_IDs: the same key ID is asked twice")
        with self._lock:
            found: dict[str, tuple[str, int]] = {}
            for bid in self._blocks_in_order():  # the master delivers in block order: early blocks first
                if len(found) == len(want):
                    break
                if bid in self._ledger["blocks"]:
                    nkeys = self._ledger["blocks"][bid]["keys"]
                else:
                    nkeys = _keys_in(int(self.store.meta(bid).get("final_length", 0)), self.key_size)
                if nkeys == 0:
                    continue
                secret = self._secret(bid)
                ids = {key_id(bid, self.key_size, i, secret): i for i in range(nkeys)}
                for k in want:
                    if k in ids:
                        found[k] = (bid, ids[k])
            missing = [k for k in want if k not in found]
            if missing:
                raise DeliveryError(400, f"key_ID {missing[0]} is not here: already delivered, or not (yet) "
                                         "distilled on this side")
            for bid in {b for b, _ in found.values()}:
                if bid not in self._ledger["blocks"]:
                    self._take(bid)
            twice = [k for k, (b, i) in found.items() if i in self._ledger["blocks"][b]["delivered"]]
            if twice:
                raise DeliveryError(400, f"key_ID {twice[0]} was already delivered (keys are delivered once)")
            out = [(k, self._key_bytes(*found[k])) for k in want]
            for b, i in found.values():
                self._ledger["blocks"][b]["delivered"].append(i)
            self._save_ledger()
            for b in {b for b, _ in found.values()}:
                self._finish(b)
            self._save_ledger()
        return {"keys": [{"key_ID": k, "key": base64.b64encode(v).decode("ascii")} for k, v in out]}


def key_bits(key_b64: str) -> np.ndarray:
    """The bits (uint8 0/1, LSB first per byte, as the store packs them) of a delivered key."""
    raw = np.frombuffer(base64.b64decode(key_b64), dtype=np.uint8)
    return np.unpackbits(raw, bitorder="little")
