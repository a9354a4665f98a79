"""Error verification: a keyed epsilon-universal tag of each reconciled block.

After reconciliation Bob draws a fresh key per block from the OS CSPRNG (or a
supplied QRNG source), sends it to Alice, and Alice answers with her tag of
her block; Bob compares it with his own tag in constant time
(:func:`hmac.compare_digest`) and tells Alice the verdict. Blocks whose tags
differ are dropped on both sides; the tag bits Alice disclosed are counted as
leakage of every verified block. If the blocks differ, they pass with
probability at most ``eps_cor`` (:func:`collision_bound`), which is the
correctness parameter of the finite-key bound (Tomamichel et al., Nat.
Commun. 3, 634 (2012), doi:10.1038/ncomms1631, "Error verification").

Tag families (``method``)
-------------------------
``"poly-toeplitz"`` (default)
    The polynomial hash over GF(2^128) (:mod:`qkdpost.verify._kernels`,
    collision probability ``<= (L+1)/2^128`` for ``L = ceil(n/128)``)
    followed by a ``t x 128`` Toeplitz hash (universal_2, ``2^-t``; Krawczyk,
    CRYPTO '94, doi:10.1007/3-540-48658-5_15). Composition bound:
    ``eps = 2^-t + (L+1)/2^128``. Short key: ``128 + (128 + t - 1)`` bits.
``"toeplitz"``
    A ``t x n`` Toeplitz hash of the whole block (``eps = 2^-t``); the key
    has ``n + t - 1`` bits, so the traffic grows with the block.
``"poly128"``
    The GF(2^128) polynomial hash alone; ``t = 128``,
    ``eps = (L+1)/2^128``.
"""

from __future__ import annotations

import hmac
import math
import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..amplify import _kernels as _ak
from ..amplify import toeplitz_hash_packed
from ..bits import as_bits, pack_bits
from ..errors import InputError, ProtocolError
from . import _kernels as _k

__all__ = [
    "METHODS",
    "collision_bound",
    "tag_bits_for",
    "key_words",
    "draw_key",
    "tag",
    "tags",
    "tags_equal",
    "VerifyResult",
    "VerifyAlice",
    "VerifyBob",
]

METHODS = ("poly-toeplitz", "toeplitz", "poly128")

RandomSource = Callable[[int], bytes]


def _check(n: Any, tag_bits: Any, method: str) -> tuple[int, int]:
    if method not in METHODS:
        raise InputError(f"method={method!r}: choose one of {METHODS}")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise InputError(f"n={n!r}: a block must hold at least 1 bit")
    if not isinstance(tag_bits, (int, np.integer)) or isinstance(tag_bits, bool):
        raise InputError(f"tag_bits={tag_bits!r}: must be an int")
    if method == "poly128":
        if tag_bits != 128:
            raise InputError(f"tag_bits={tag_bits}: method 'poly128' gives exactly 128 tag bits")
    elif method == "poly-toeplitz":
        if not 1 <= tag_bits <= 128:
            raise InputError(f"tag_bits={tag_bits}: method 'poly-toeplitz' supports 1..128 tag bits")
    elif not 1 <= tag_bits <= n:
        raise InputError(f"tag_bits={tag_bits}: method 'toeplitz' needs 1 <= tag_bits <= n = {n}")
    return int(n), int(tag_bits)


def collision_bound(n: int, tag_bits: int, method: str = "poly-toeplitz") -> float:
    """Upper bound on Pr[tags equal] for two different ``n``-bit blocks (eps_cor).

    ``2^-t`` (toeplitz), ``(L+1) 2^-128`` (poly128) or their sum
    (poly-toeplitz), ``L = ceil(n/128)``; a rounded sum is moved up one ulp.
    """
    n, t = _check(n, tag_bits, method)
    L = -(-n // 128)
    poly = math.ldexp(L + 1, -128)
    if method == "toeplitz":
        return math.ldexp(1.0, -t)  # exact
    if method == "poly128":
        return poly  # exact for L < 2^53
    return math.nextafter(math.ldexp(1.0, -t) + poly, math.inf)  # the sum may round down


def tag_bits_for(eps_cor: float, n: int, method: str = "poly-toeplitz") -> int:
    """Smallest tag length whose :func:`collision_bound` is ``<= eps_cor``.

    Raises InputError if no tag length of ``method`` reaches ``eps_cor``.
    """
    if not (0 < eps_cor < 1):
        raise InputError(f"eps_cor={eps_cor!r}: must be in (0, 1)")
    if method == "poly128":
        candidates = [128]
    elif method == "poly-toeplitz":
        candidates = list(range(1, 129))
    else:
        candidates = list(range(1, n + 1)) if n < 4096 else list(range(1, 4097))
    for t in candidates:
        if collision_bound(n, t, method) <= eps_cor:
            return t
    raise InputError(
        f"eps_cor={eps_cor!r}: method {method!r} cannot reach it for n={n}; "
        "use method='toeplitz' or a larger eps_cor"
    )


def key_words(n: int, tag_bits: int, method: str = "poly-toeplitz") -> int:
    """Number of uint64 words in one block's key."""
    n, t = _check(n, tag_bits, method)
    if method == "toeplitz":
        return (n + t - 1 + 63) >> 6
    if method == "poly128":
        return 2
    return 2 + ((128 + t - 1 + 63) >> 6)


def draw_key(n: int, tag_bits: int, method: str = "poly-toeplitz", qrng: RandomSource | None = None) -> np.ndarray:
    """A fresh uniformly random key (uint64 words) from the OS CSPRNG or ``qrng(nbytes)``."""
    kw = key_words(n, tag_bits, method)
    source = qrng if qrng is not None else secrets.token_bytes
    raw = source(8 * kw)
    if not isinstance(raw, (bytes, bytearray, memoryview)) or len(raw) != 8 * kw:
        raise InputError(f"qrng: must return exactly {8 * kw} bytes")
    return np.frombuffer(bytes(raw), dtype="<u8").astype(np.uint64)


def _tags_packed(words: np.ndarray, n: int, keys: np.ndarray, t: int, method: str) -> np.ndarray:
    """Tags of packed rows ``words`` (N, W) with keys (N, K) -> uint64 (N, ceil(t/64))."""
    N = words.shape[0]
    tw = (t + 63) >> 6
    out = np.zeros((N, tw), dtype=np.uint64)
    if method == "toeplitz":
        for r in range(N):
            out[r] = toeplitz_hash_packed(words[r], n, keys[r], t)
        return out
    h = np.zeros((N, 2), dtype=np.uint64)
    _k.poly_hash128_batch(words, n, np.ascontiguousarray(keys[:, :2]), h, _ak.default_mode())
    if method == "poly128":
        return h
    for r in range(N):
        out[r] = toeplitz_hash_packed(h[r], 128, np.ascontiguousarray(keys[r, 2:]), t)
    return out


def tags(bits_2d: Any, keys: Any, tag_bits: int, method: str = "poly-toeplitz") -> np.ndarray:
    """Tags of N blocks at once.

    Parameters
    ----------
    bits_2d : uint8 0/1, shape (N, n)
    keys : uint64, shape (N, key_words(n, tag_bits, method))
    tag_bits : int
    method : str

    Returns
    -------
    uint64, shape (N, ceil(tag_bits/64)); tag bits LSB-first, higher bits zero.
    """
    b = as_bits(bits_2d, "bits_2d", ndim=(2,))
    n, t = _check(b.shape[1], tag_bits, method)
    k = np.asarray(keys)
    kw = key_words(n, t, method)
    if k.dtype != np.uint64 or k.shape != (b.shape[0], kw):
        raise InputError(f"keys: expected uint64 of shape ({b.shape[0]}, {kw}), got {k.dtype} {k.shape}")
    return _tags_packed(pack_bits(b), n, np.ascontiguousarray(k), t, method)


def tag(bits: Any, key: Any, tag_bits: int, method: str = "poly-toeplitz") -> np.ndarray:
    """Tag of one block (``bits`` uint8 0/1 of shape (n,), ``key`` from :func:`draw_key`)."""
    b = as_bits(bits, "bits")
    return tags(b.reshape(1, -1), np.asarray(key).reshape(1, -1), tag_bits, method)[0]


def tags_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Constant-time comparison of two tags (``hmac.compare_digest``)."""
    return hmac.compare_digest(np.ascontiguousarray(a).tobytes(), np.ascontiguousarray(b).tobytes())


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of verifying a batch of blocks (Bob's side).

    Attributes
    ----------
    frame_ids : int64 (N,)
    passed : bool (N,)
        Tags equal; failed blocks are dropped on both sides.
    leaked_bits : int64 (N,)
        Tag bits disclosed per block (add to the block's leakage).
    tag_bits : int
    eps_cor : float
        Collision bound of the tag family for this block length.
    method : str
    bits : uint8 (P, n)
        Bob's passed blocks, in order.
    round_trips, bytes_sent : int
        Channel traffic for this batch (both directions).
    """

    frame_ids: np.ndarray
    passed: np.ndarray
    leaked_bits: np.ndarray
    tag_bits: int
    eps_cor: float
    method: str
    bits: np.ndarray
    round_trips: int = 0
    bytes_sent: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed_ids(self) -> list[int]:
        return [int(f) for f, ok in zip(self.frame_ids, self.passed) if ok]

    @property
    def failed_ids(self) -> list[int]:
        return [int(f) for f, ok in zip(self.frame_ids, self.passed) if not ok]


class VerifyAlice:
    """Alice's side: answers tag requests and applies Bob's verdict.

    Parameters
    ----------
    blocks : mapping frame_id -> uint8 0/1 array
        Alice's reconciled blocks. After the verdict, :attr:`blocks` holds
        only the blocks that passed; :attr:`failed_ids` lists the dropped ones.
    """

    def __init__(self, blocks: Mapping[int, Any]):
        self.blocks: dict[int, np.ndarray] = {int(k): as_bits(v, f"blocks[{k}]") for k, v in blocks.items()}
        self.failed_ids: list[int] = []
        self.passed_ids: list[int] = []
        self.leaked_bits: dict[int, int] = {}

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {"verify.tags": self._on_tags, "verify.verdict": self._on_verdict}

    def _on_tags(self, body: dict[str, Any]) -> dict[str, Any]:
        ids = np.asarray(body.get("frame_ids"), dtype=np.int64).reshape(-1)
        keys = np.asarray(body.get("keys"))
        method = body.get("method")
        t = body.get("tag_bits")
        if method not in METHODS or not isinstance(t, int):
            raise ProtocolError(f"verify.tags: bad method {method!r} or tag_bits {t!r}")
        rows = []
        for fid in ids.tolist():
            if fid not in self.blocks:
                raise ProtocolError(f"verify.tags: Alice has no block with frame_id {fid}")
            rows.append(self.blocks[fid])
        if not rows:
            return {"tags": np.zeros((0, (t + 63) >> 6), dtype=np.uint64)}
        n = rows[0].size
        if any(r.size != n for r in rows):
            raise ProtocolError("verify.tags: blocks in one batch must have equal length")
        kw = key_words(n, t, method)
        if keys.dtype != np.uint64 or keys.shape != (len(rows), kw):
            raise ProtocolError(f"verify.tags: keys must be uint64 of shape ({len(rows)}, {kw})")
        out = tags(np.stack(rows), keys, t, method)
        for fid in ids.tolist():
            self.leaked_bits[fid] = self.leaked_bits.get(fid, 0) + t
        return {"tags": out}

    def _on_verdict(self, body: dict[str, Any]) -> dict[str, Any]:
        ids = np.asarray(body.get("frame_ids"), dtype=np.int64).reshape(-1)
        ok = np.asarray(body.get("passed"), dtype=bool).reshape(-1)
        if ok.shape != ids.shape:
            raise ProtocolError("verify.verdict: frame_ids and passed differ in length")
        for fid, good in zip(ids.tolist(), ok.tolist()):
            if good:
                self.passed_ids.append(fid)
            else:
                self.failed_ids.append(fid)
                self.blocks.pop(fid, None)
        return {"ack": int(ids.size)}


class VerifyBob:
    """Bob's side of error verification (drives the exchange).

    Parameters
    ----------
    eps_cor : float, optional
        Target correctness; the tag length is the smallest that reaches it
        (:func:`tag_bits_for`). Ignored if ``tag_bits`` is given.
    tag_bits : int, optional
    method : {"poly-toeplitz", "toeplitz", "poly128"}
    qrng : callable, optional
        ``qrng(nbytes) -> bytes`` for the keys; default the OS CSPRNG.
    """

    def __init__(
        self,
        *,
        eps_cor: float = 2.0**-64,
        tag_bits: int | None = None,
        method: str = "poly-toeplitz",
        qrng: RandomSource | None = None,
    ):
        if method not in METHODS:
            raise InputError(f"method={method!r}: choose one of {METHODS}")
        if not (0 < eps_cor < 1):
            raise InputError(f"eps_cor={eps_cor!r}: must be in (0, 1)")
        self.eps_cor = eps_cor
        self.tag_bits = tag_bits
        self.method = method
        self._qrng = qrng

    def run(self, channel: Any, frame_ids: Sequence[int], bob_bits_2d: Any) -> VerifyResult:
        """Verify N blocks in two round trips (keys -> Alice's tags; verdict).

        Parameters
        ----------
        channel : qkdpost.channel.Channel
        frame_ids : sequence of int, length N
        bob_bits_2d : uint8 0/1, shape (N, n)
        """
        bits = as_bits(bob_bits_2d, "bob_bits_2d", ndim=(2,))
        ids = np.asarray(frame_ids, dtype=np.int64).reshape(-1)
        if ids.size != bits.shape[0]:
            raise InputError(f"frame_ids has {ids.size} entries, bob_bits_2d has {bits.shape[0]} rows")
        n = max(bits.shape[1], 1)
        t = self.tag_bits if self.tag_bits is not None else tag_bits_for(self.eps_cor, n, self.method)
        _check(n, t, self.method)
        eps = collision_bound(n, t, self.method)
        rt0, by0 = channel.stats.snapshot()
        N = ids.size
        kw = key_words(n, t, self.method)
        keys = np.zeros((N, kw), dtype=np.uint64)
        for r in range(N):
            keys[r] = draw_key(n, t, self.method, self._qrng)
        mine = tags(bits, keys, t, self.method) if N else np.zeros((0, (t + 63) >> 6), np.uint64)
        reply = channel.request(
            "verify.tags", {"frame_ids": ids, "keys": keys, "method": self.method, "tag_bits": int(t)}
        )
        theirs = np.asarray(reply.get("tags"))
        if theirs.dtype != np.uint64 or theirs.shape != mine.shape:
            raise ProtocolError(f"verify.tags reply: expected uint64 tags of shape {mine.shape}")
        passed = np.array([tags_equal(mine[r], theirs[r]) for r in range(N)], dtype=bool)
        channel.request("verify.verdict", {"frame_ids": ids, "passed": passed})
        rt1, by1 = channel.stats.snapshot()
        return VerifyResult(
            frame_ids=ids,
            passed=passed,
            leaked_bits=np.full(N, t, dtype=np.int64),
            tag_bits=int(t),
            eps_cor=eps,
            method=self.method,
            bits=bits[passed].copy(),
            round_trips=rt1 - rt0,
            bytes_sent=by1 - by0,
        )
