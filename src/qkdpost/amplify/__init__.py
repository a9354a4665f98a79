"""Privacy amplification by exact Toeplitz hashing over GF(2).

Conventions
-----------
Toeplitz hashing of an ``n``-bit block ``x`` to ``m`` bits with an
``(n + m - 1)``-bit seed ``s`` is ``y = T x`` over GF(2) with the ``m x n``
matrix ``T[i, j] = s[i - j + n - 1]``; equivalently ``y[i]`` is the
coefficient of ``z^(i + n - 1)`` in ``S(z) X(z)`` over GF(2), where
``S(z) = sum_k s[k] z^k`` and ``X(z) = sum_j x[j] z^j``. Random Toeplitz
matrices form a universal_2 family (Krawczyk, CRYPTO '94, LNCS 839, 129,
doi:10.1007/3-540-48658-5_15), so by the leftover hash lemma the output is
``eps_pa``-close to uniform when ``m`` is the secure length of
:mod:`qkdpost.finitekey`.

The *modified* Toeplitz hash of Hayashi and Tsurumaru (IEEE Trans. Inf.
Theory 62, 2213 (2016), doi:10.1109/TIT.2016.2526018) is
``y = [I_m | T'] x`` with the ``m x (n - m)`` Toeplitz matrix
``T'[i, j] = s[i - j + n - m - 1]`` of an ``(n - 1)``-bit seed: a universal_2
family with a shorter seed and a smaller product.

Both are computed exactly on packed 64-bit words, whichever a cost model
expects to be faster: a carry-less (GF(2)[z]) middle product by transposed
Karatsuba above ``LEAF_WORDS`` words with PCLMULQDQ leaves (thin products,
small blocks), or an additive FFT over GF(2^64) with a Cantor basis (32-bit
chunks, so the field never reduces a chunk product; see docs/amplify.md). Without PCLMULQDQ a portable
carry-less loop gives identical output (:mod:`qkdpost.amplify._kernels`).

Public API
----------
``toeplitz_hash(bits, seed, m)``, ``modified_toeplitz_hash(bits, seed, m)``
take and return ``uint8`` 0/1 arrays; ``toeplitz_hash_packed`` /
``modified_toeplitz_hash_packed`` are the expert layer on packed words.
``draw_seed`` draws a seed from the OS CSPRNG or a supplied QRNG source.
``AmplifyAlice`` / ``AmplifyBob`` run PA as a two-party step over a
:class:`qkdpost.channel.Channel` (message kind ``amplify.seeds``).
"""

from __future__ import annotations

import functools
import secrets
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..bits import as_bits, pack_bits, unpack_bits
from ..errors import InputError, ProtocolError
from . import _kernels as _k

__all__ = [
    "METHODS",
    "seed_length",
    "toeplitz_hash",
    "modified_toeplitz_hash",
    "toeplitz_hash_packed",
    "ALGORITHMS",
    "modified_toeplitz_hash_packed",
    "draw_seed",
    "AmplifyAlice",
    "AmplifyBob",
]

METHODS = ("toeplitz", "modified")

#: A QRNG source: ``qrng(nbytes) -> bytes`` of uniformly random bytes.
RandomSource = Callable[[int], bytes]


def seed_length(n: int, m: int, method: str = "toeplitz") -> int:
    """Seed bits needed to hash ``n`` bits to ``m`` bits.

    ``n + m - 1`` for ``"toeplitz"``, ``n - 1`` for ``"modified"``.
    """
    n, m = _check_nm(n, m, method)
    return n + m - 1 if method == "toeplitz" else n - 1


def _check_nm(n: Any, m: Any, method: str) -> tuple[int, int]:
    if method not in METHODS:
        raise InputError(f"method={method!r}: choose one of {METHODS}")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise InputError(f"n={n!r}: the input block must hold at least 1 bit")
    if not isinstance(m, (int, np.integer)) or isinstance(m, bool):
        raise InputError(f"m={m!r}: the output length must be an int")
    if m < 1 or m > n:
        raise InputError(
            f"m={m}: the output length must satisfy 1 <= m <= n = {n}; "
            "a secure length <= 0 means the block yields no key (do not call PA)"
        )
    return int(n), int(m)


def _mode() -> Any:
    return _k.default_mode()


#: Cost model behind ``algorithm="auto"`` (ns per unit, fitted on this
#: project's benchmark machine, docs/amplify.md): Karatsuba costs about
#: ``ceil(n/m) * M^1.585`` leaf-product units (M = output words), the additive
#: FFT the butterflies of :func:`_afft_plan`. Thin products (short outputs,
#: verification tags) stay with Karatsuba, square-ish ones from ~10^5 output
#: bits go to the FFT.
_NS_PER_KARATSUBA_UNIT = 3.3
_NS_PER_BUTTERFLY = 1.4

ALGORITHMS = ("auto", "karatsuba", "afft")


#: The Cantor subspace of dimension 16 is the subfield GF(2^16), whose
#: vanishing polynomial is y^65536 + y: a transform of 2^16 points computes
#: the product modulo y^65536 + y, i.e. coefficient t >= 65536 wraps onto
#: t - 65535. When the wrapped coefficients all land below the chunks the
#: output is read from, that half-size transform gives the exact Toeplitz
#: middle product (n ~ 0.9-1.4 * 10^6 bits at m = n/2).
_WRAP_POINTS = 1 << 16


@functools.lru_cache(maxsize=8)
def _afft_tables(L: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _k.afft_tables(L)


def _afft_size(w: int, m: int) -> int:
    """Transform points for one m x w Toeplitz product (wrapped when exact, see ``_WRAP_POINTS``)."""
    ca = (m + w - 1 + 31) >> 5  # 32-bit chunks of the seed window, of the block, of the product
    cb = (w + 31) >> 5
    nprod = ((w + m - 2) >> 6) + 1  # words up to the last output bit w+m-2
    first = max(0, 2 * ((w - 1) >> 6) - 1)  # lowest chunk those words read
    size = 1 << max(1, (ca + cb - 2).bit_length())  # >= ca + cb - 1: no wrap at all
    if size > _WRAP_POINTS and ca + cb - 1 - _WRAP_POINTS < first and 2 * nprod <= _WRAP_POINTS:
        size = _WRAP_POINTS
    return size


#: Column blocks tried by the additive FFT route (each adds two forward transforms).
_AFFT_MAX_BLOCKS = 4


def _afft_plan(n: int, m: int) -> tuple[int, int, int]:
    """(blocks k, block width w, transform points) with the fewest butterflies.

    Cutting the m x n product into k column blocks of width w = ceil(n/k)
    costs 2k forward transforms and one inverse (the blocks are summed in the
    transform domain) of a size set by m + 2w instead of n + m + n: at
    n = 10^7, m = n/2, five 2^19-point transforms instead of three of 2^20.
    """
    best = None
    for k in range(1, _AFFT_MAX_BLOCKS + 1):
        w = -(-n // k)
        size = _afft_size(w, m)
        cost = (2 * k + 1) * size * (size.bit_length() - 1) + k * size
        if best is None or cost < best[0]:
            best = (cost, k, w, size)
    return best[1], best[2], best[3]


def _prefer_afft(n: int, m: int) -> bool:
    """True when the additive FFT is expected to beat Karatsuba for an m x n product."""
    M = (m + 63) >> 6
    karatsuba = -(-n // m) * M**1.585 * _NS_PER_KARATSUBA_UNIT
    k, _, size = _afft_plan(n, m)
    fft = ((2 * k + 1) * size * (size.bit_length() - 1) + k * size) * _NS_PER_BUTTERFLY
    return fft < karatsuba


def _afft_inverse_two_threads(F: np.ndarray, L: int, tables: tuple[np.ndarray, ...], mode: Any, pool: Any) -> None:
    """:func:`_kernels.afft_inverse` with each level's independent blocks split over the two threads of ``pool``.

    The same operations on disjoint blocks, so the result is identical; only
    the top level (one block) runs on one thread.
    """
    Lc = min(L, _k.AFFT_BLOCK_LOG)
    nb = 1 << (L - Lc)
    if nb >= 2:
        list(pool.map(lambda r: _k.afft_inverse_low(F, L, *tables, mode, *r), [(0, nb // 2), (nb // 2, nb)]))
    else:
        _k.afft_inverse_low(F, L, *tables, mode, 0, nb)
    for lvl in range(Lc + 1, L + 1):
        nt = 1 << (L - lvl)
        halves = [(0, nt // 2), (nt // 2, nt)] if nt >= 2 else [(0, nt)]
        list(pool.map(lambda r: _k._afft_level(F, lvl, r[0], r[1], *tables, mode, True), halves))


def _toeplitz_afft(xw: np.ndarray, n: int, sw: np.ndarray, nseed: int, m: int, threads: int = 1) -> np.ndarray:
    """Packed core by the additive FFT over GF(2^64).

    Column block b (width w, zero-padded past n) is the m x w Toeplitz product
    of the seed window starting at bit n - (b+1) w (bits below 0 are zero and
    meet only padding); its output is bits w-1 .. w+m-2 of S_b X_b, the same
    for every block, so the products are summed before one inverse transform.
    With ``threads >= 2`` the two forward transforms of a block run
    concurrently and the inverse splits each level's blocks over two threads.
    """
    mode = _mode()
    k, w, size = _afft_plan(n, m)
    L = size.bit_length() - 1
    lam, terms, tstart = _afft_tables(L)
    pad = k * w - n
    seed = np.zeros(((pad + nseed + 63) >> 6) + 1, dtype=np.uint64)
    _k.shift_up(sw, nseed, pad, seed)  # seed[pad + i] = s[i]
    x = np.zeros(((pad + n + 63) >> 6) + 1, dtype=np.uint64)
    _k.shift_down(xw, 0, n, x)
    clean = np.zeros(((m + w + 63) >> 6) + 1, dtype=np.uint64)
    ca = (m + w - 1 + 31) >> 5
    cb = (w + 31) >> 5
    acc = None
    pool = None
    if threads >= 2:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=2)
    try:
        for b in range(k):
            A = np.zeros(size, dtype=np.uint64)
            B = np.zeros(size, dtype=np.uint64)
            _k.shift_down(seed, (k - 1 - b) * w, m + w - 1, clean)
            A[:ca] = clean.view(np.uint32)[:ca]
            _k.shift_down(x, b * w, min(w, n - b * w), clean)
            B[:cb] = clean.view(np.uint32)[:cb]
            if pool is not None:
                jobs = [pool.submit(_k.afft_forward, F, L, lam, terms, tstart, mode) for F in (A, B)]
                for job in jobs:
                    job.result()
            else:
                _k.afft_forward(A, L, lam, terms, tstart, mode)
                _k.afft_forward(B, L, lam, terms, tstart, mode)
            _k.afft_pointwise(A, B, mode)
            del B
            if acc is None:
                acc = A
            else:
                np.bitwise_xor(acc, A, out=acc)
            del A
        if pool is not None:
            _afft_inverse_two_threads(acc, L, (lam, terms, tstart), mode, pool)
        else:
            _k.afft_inverse(acc, L, lam, terms, tstart, mode)
    finally:
        if pool is not None:
            pool.shutdown()
    nprod = ((w + m - 2) >> 6) + 1
    P = np.empty(nprod, dtype=np.uint64)
    _k.chunks32_to_words(acc, nprod, P)
    y = np.empty((m + 63) >> 6, dtype=np.uint64)
    _k.shift_down(P, w - 1, m, y)
    return y


def _toeplitz_words(
    xw: np.ndarray, n: int, sw: np.ndarray, nseed: int, m: int, threads: int = 1, algorithm: str = "auto"
) -> np.ndarray:
    """Packed core: y words (tail bits zero) for an m x n Toeplitz of seed ``sw``.

    ``algorithm``: ``"karatsuba"`` (transposed Karatsuba middle product),
    ``"afft"`` (additive FFT over GF(2^64)) or ``"auto"``
    (whichever :func:`_prefer_afft` expects to be faster).
    With ``threads > 1`` the Karatsuba columns are cut into ``threads`` blocks,
    each an independent Toeplitz product run on its own thread (the kernels
    release the GIL), and the partial outputs are XORed; the additive FFT runs
    its two forward transforms on two threads.
    """
    if algorithm not in ALGORITHMS:
        raise InputError(f"algorithm={algorithm!r}: choose one of {ALGORITHMS}")
    if algorithm == "afft" or (algorithm == "auto" and _prefer_afft(n, m)):
        return _toeplitz_afft(xw, n, sw, nseed, m, threads)
    Nc = (n + 63) >> 6
    M = (m + 63) >> 6
    d = 64 * Nc - n + 1
    mode = _mode()
    seed = np.empty(M + Nc, dtype=np.uint64)
    _k.shift_up(sw, nseed, d, seed)
    x = np.empty(Nc, dtype=np.uint64)
    _k.shift_down(xw, 0, n, x)
    threads = max(1, min(int(threads), Nc))
    blocks = []
    width = -(-Nc // threads)
    for xc in range(0, Nc, width):
        A = min(width, Nc - xc)
        blocks.append((xc, A))

    def run(block: tuple[int, int]) -> np.ndarray:
        xc, A = block
        # contribution of columns [xc, xc + A): Toeplitz(S[Nc - xc - A:], X[xc:], M, A)
        off = Nc - xc - A
        B = np.empty(2 * (M + A) + _k.workspace_words(M, A), dtype=np.uint64)
        B[: M + A] = seed[off : off + M + A]
        B[M + A : M + 2 * A] = x[xc : xc + A]
        st = _k.toeplitz_words(B, 0, M + A, M + 2 * A, M, A, 2 * (M + A), mode)
        if st != 0:  # pragma: no cover - the workspace bound is proven in docs/amplify.md
            raise RuntimeError(f"toeplitz kernel status {st} (n={n}, m={m}); please report")
        return B[M + 2 * A : 2 * (M + A)]

    if len(blocks) == 1:
        y = run(blocks[0]).copy()
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(blocks)) as pool:
            parts = list(pool.map(run, blocks))
        y = parts[0].copy()
        for part in parts[1:]:
            np.bitwise_xor(y, part, out=y)
    _k.mask_tail(y, m)
    return y


def _check_threads(threads: Any) -> int:
    if not isinstance(threads, (int, np.integer)) or isinstance(threads, bool) or threads < 1:
        raise InputError(f"threads={threads!r}: must be an int >= 1")
    return int(threads)


def _as_words(words: Any, nbits: int, name: str) -> np.ndarray:
    arr = np.asarray(words)
    if arr.dtype != np.uint64 or arr.ndim != 1:
        raise InputError(f"{name}: expected a 1-D uint64 array of packed bits, got {arr.dtype} with {arr.ndim} dims")
    need = (nbits + 63) >> 6
    if arr.size < need:
        raise InputError(f"{name}: has {arr.size} words, {nbits} bits need {need}; pack with qkdpost.bits.pack_bits")
    return np.ascontiguousarray(arr)


def toeplitz_hash_packed(
    x_words: np.ndarray, n: int, seed_words: np.ndarray, m: int, *, threads: int = 1, algorithm: str = "auto"
) -> np.ndarray:
    """Toeplitz hash on packed words (expert layer).

    Parameters
    ----------
    x_words : uint64[ceil(n/64)]
        The block, LSB-first packed (``qkdpost.bits.pack_bits``); bits at
        positions >= n are ignored.
    n : int
        Block length in bits.
    seed_words : uint64[ceil((n+m-1)/64)]
        The packed ``(n + m - 1)``-bit seed; higher bits are ignored.
    m : int
        Output length, ``1 <= m <= n``.
    threads : int
        Threads (Karatsuba: column blocks; additive FFT: the two forward
        transforms); default 1.
    algorithm : {"auto", "karatsuba", "afft"}
        Product algorithm (all exact; ``"auto"`` picks by measured speed).

    Returns
    -------
    uint64[ceil(m/64)]
        ``y = T x`` packed, bits >= m zero.
    """
    n, m = _check_nm(n, m, "toeplitz")
    xw = _as_words(x_words, n, "x_words")
    sw = _as_words(seed_words, n + m - 1, "seed_words")
    return _toeplitz_words(xw, n, sw, n + m - 1, m, _check_threads(threads), algorithm)


def modified_toeplitz_hash_packed(
    x_words: np.ndarray, n: int, seed_words: np.ndarray, m: int, *, threads: int = 1, algorithm: str = "auto"
) -> np.ndarray:
    """Modified Toeplitz hash ``[I_m | T'] x`` on packed words (expert layer).

    ``seed_words`` holds the packed ``(n - 1)``-bit seed; see
    :func:`modified_toeplitz_hash` for the convention.
    """
    n, m = _check_nm(n, m, "modified")
    xw = _as_words(x_words, n, "x_words")
    sw = _as_words(seed_words, n - 1, "seed_words")
    M = (m + 63) >> 6
    head = np.empty(M, dtype=np.uint64)
    _k.shift_down(xw, 0, m, head)
    if m == n:
        return head
    r = n - m
    tail = np.empty((r + 63) >> 6, dtype=np.uint64)
    _k.shift_down(xw, m, r, tail)
    y = _toeplitz_words(tail, r, sw, n - 1, m, _check_threads(threads), algorithm)
    np.bitwise_xor(y, head, out=y)
    return y


def _check_seed(seed: Any, need: int, n: int, m: int, method: str) -> np.ndarray:
    s = as_bits(seed, "seed")
    if s.size != need:
        formula = "n + m - 1" if method == "toeplitz" else "n - 1"
        raise InputError(
            f"seed: has {s.size} bits, {method} hashing of n={n} to m={m} bits needs "
            f"{formula} = {need}; draw it with qkdpost.amplify.draw_seed({need})"
        )
    return s


def toeplitz_hash(bits: Any, seed: Any, m: int, *, threads: int = 1) -> np.ndarray:
    """Hash ``n`` bits to ``m`` bits with the Toeplitz matrix of ``seed``.

    ``y[i] = XOR_j seed[i - j + n - 1] & bits[j]``, i.e. ``y = T x`` with
    ``T[i, j] = s[i - j + n - 1]`` (Krawczyk 1994; see the module docstring).

    Parameters
    ----------
    bits : array_like of uint8 0/1, shape (n,)
        The reconciled, verified block.
    seed : array_like of uint8 0/1, shape (n + m - 1,)
        Uniformly random seed, fresh per block (:func:`draw_seed`).
    m : int
        Output length, ``1 <= m <= n`` (the secure length).
    threads : int
        Threads for the product (column blocks, GIL released); default 1.

    Returns
    -------
    ndarray of uint8, shape (m,)

    Raises
    ------
    InputError
        Non-binary or non-1-D inputs, ``m`` outside ``[1, n]``, or a seed of
        the wrong length.
    """
    x = as_bits(bits, "bits")
    n, m = _check_nm(x.size, m, "toeplitz")
    s = _check_seed(seed, n + m - 1, n, m, "toeplitz")
    y = _toeplitz_words(pack_bits(x), n, pack_bits(s), s.size, m, _check_threads(threads))
    return unpack_bits(y, m)


def modified_toeplitz_hash(bits: Any, seed: Any, m: int, *, threads: int = 1) -> np.ndarray:
    """Hash ``n`` bits to ``m`` bits with ``[I_m | T']`` (Hayashi–Tsurumaru 2016).

    ``y[i] = bits[i] XOR (XOR_j seed[i - j + n - m - 1] & bits[m + j])`` for
    ``j < n - m``: the identity on the first ``m`` bits plus the
    ``m x (n - m)`` Toeplitz matrix of the ``(n - 1)``-bit seed on the rest
    (IEEE TIT 62, 2213 (2016), Sec. III, doi:10.1109/TIT.2016.2526018).

    Parameters
    ----------
    bits : array_like of uint8 0/1, shape (n,)
    seed : array_like of uint8 0/1, shape (n - 1,)
    m : int
        Output length, ``1 <= m <= n``.

    Returns
    -------
    ndarray of uint8, shape (m,)
    """
    x = as_bits(bits, "bits")
    n, m = _check_nm(x.size, m, "modified")
    s = _check_seed(seed, n - 1, n, m, "modified")
    sw = pack_bits(s) if s.size else np.zeros(1, dtype=np.uint64)
    y = modified_toeplitz_hash_packed(pack_bits(x), n, sw, m, threads=threads)
    return unpack_bits(y, m)


def draw_seed(nbits: int, qrng: RandomSource | None = None) -> np.ndarray:
    """Draw ``nbits`` uniformly random bits (uint8 0/1) for one block.

    Parameters
    ----------
    nbits : int
        Seed length (:func:`seed_length`).
    qrng : callable, optional
        ``qrng(nbytes) -> bytes`` from a quantum random number generator.
        Default: the OS CSPRNG (:func:`secrets.token_bytes`).
    """
    words = draw_seed_words(nbits, qrng)
    return unpack_bits(words, nbits)


def draw_seed_words(nbits: int, qrng: RandomSource | None = None) -> np.ndarray:
    """Like :func:`draw_seed` but packed: ``ceil(nbits/64)`` uint64 words, tail bits zero."""
    if not isinstance(nbits, (int, np.integer)) or nbits < 0:
        raise InputError(f"nbits={nbits!r}: a seed length must be a non-negative int")
    nwords = (int(nbits) + 63) >> 6
    nbytes = 8 * nwords
    source = qrng if qrng is not None else secrets.token_bytes
    raw = source(nbytes)
    if not isinstance(raw, (bytes, bytearray, memoryview)) or len(raw) != nbytes:
        raise InputError(f"qrng: returned {type(raw).__name__} of wrong length; it must return exactly {nbytes} bytes")
    words = np.frombuffer(bytes(raw), dtype="<u8").astype(np.uint64)
    _k.mask_tail(words, int(nbits))
    return words


def _hash_words(method: str, xw: np.ndarray, n: int, sw: np.ndarray, m: int, threads: int = 1) -> np.ndarray:
    if method == "toeplitz":
        return toeplitz_hash_packed(xw, n, sw, m, threads=threads)
    return modified_toeplitz_hash_packed(xw, n, sw, m, threads=threads)


class AmplifyAlice:
    """Alice's side of privacy amplification.

    Alice draws one fresh seed per block (OS CSPRNG or ``qrng``), hashes her
    own bits and sends the seed to Bob. The final keys stay with her in
    :attr:`keys` (frame_id -> uint8 bits).

    Parameters
    ----------
    blocks : mapping frame_id -> uint8 0/1 array
        Alice's verified blocks.
    method : {"toeplitz", "modified"}
    qrng : callable, optional
        ``qrng(nbytes) -> bytes``; default the OS CSPRNG.
    threads : int
        Threads per hash (see :func:`toeplitz_hash_packed`); default 1.
    """

    def __init__(self, blocks: Mapping[int, Any], *, method: str = "toeplitz", qrng: RandomSource | None = None,
                 threads: int = 1):
        if method not in METHODS:
            raise InputError(f"method={method!r}: choose one of {METHODS}")
        self.threads = _check_threads(threads)
        self._blocks = {int(k): as_bits(v, f"blocks[{k}]") for k, v in blocks.items()}
        self.method = method
        self._qrng = qrng
        self.keys: dict[int, np.ndarray] = {}

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {"amplify.seeds": self._on_seeds}

    def _on_seeds(self, body: dict[str, Any]) -> dict[str, Any]:
        ids = np.asarray(body.get("frame_ids"), dtype=np.int64)
        lengths = np.asarray(body.get("lengths"), dtype=np.int64)
        if ids.ndim != 1 or lengths.shape != ids.shape:
            raise ProtocolError("amplify.seeds: frame_ids and lengths must be equal-length 1-D arrays")
        if body.get("method") != self.method:
            raise ProtocolError(f"amplify.seeds: Bob asked for method {body.get('method')!r}, Alice uses {self.method!r}")
        seeds = []
        for fid, m in zip(ids.tolist(), lengths.tolist()):
            x = self._blocks.get(fid)
            if x is None:
                raise ProtocolError(f"amplify.seeds: Alice has no block with frame_id {fid}")
            n = x.size
            nseed = seed_length(n, int(m), self.method)
            sw = draw_seed_words(nseed, self._qrng)
            self.keys[fid] = unpack_bits(_hash_words(self.method, pack_bits(x), n, sw, int(m), self.threads), int(m))
            seeds.append(sw)
        flat = np.concatenate(seeds) if seeds else np.zeros(0, dtype=np.uint64)
        return {"seeds": flat}


class AmplifyBob:
    """Bob's side of privacy amplification (drives the exchange).

    Parameters
    ----------
    method : {"toeplitz", "modified"}
    threads : int
        Threads per hash (see :func:`toeplitz_hash_packed`); default 1.
    """

    def __init__(self, *, method: str = "toeplitz", threads: int = 1):
        if method not in METHODS:
            raise InputError(f"method={method!r}: choose one of {METHODS}")
        self.method = method
        self.threads = _check_threads(threads)

    def run(self, channel: Any, frame_ids: Sequence[int], bob_bits_2d: Any, lengths: Sequence[int]) -> dict[int, np.ndarray]:
        """Amplify Bob's blocks; one round trip for the whole batch.

        Parameters
        ----------
        channel : qkdpost.channel.Channel
        frame_ids : sequence of int, length N
        bob_bits_2d : uint8 0/1 array, shape (N, n)
            Bob's verified blocks, row k for ``frame_ids[k]``.
        lengths : sequence of int, length N
            Secure length ``m`` of each block (``1 <= m <= n``); blocks with
            no key must be left out by the caller.

        Returns
        -------
        dict frame_id -> uint8 array of shape (m,)
        """
        bits = as_bits(bob_bits_2d, "bob_bits_2d", ndim=(2,))
        ids = np.asarray(frame_ids, dtype=np.int64).reshape(-1)
        ms = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if ids.size != bits.shape[0] or ms.size != bits.shape[0]:
            raise InputError(
                f"frame_ids ({ids.size}), lengths ({ms.size}) and bob_bits_2d rows ({bits.shape[0]}) must agree"
            )
        n = bits.shape[1]
        nseeds = [seed_length(n, int(m), self.method) for m in ms.tolist()]
        if ids.size == 0:
            return {}
        reply = channel.request("amplify.seeds", {"frame_ids": ids, "lengths": ms, "method": self.method})
        flat = np.asarray(reply.get("seeds"))
        need = sum((k + 63) >> 6 for k in nseeds)
        if flat.dtype != np.uint64 or flat.ndim != 1 or flat.size != need:
            raise ProtocolError(f"amplify.seeds reply: expected {need} uint64 seed words")
        out: dict[int, np.ndarray] = {}
        pos = 0
        for row, (fid, m, ns) in enumerate(zip(ids.tolist(), ms.tolist(), nseeds)):
            nw = (ns + 63) >> 6
            sw = flat[pos : pos + nw]
            pos += nw
            out[fid] = unpack_bits(_hash_words(self.method, pack_bits(bits[row]), n, sw, int(m), self.threads), int(m))
        return out
