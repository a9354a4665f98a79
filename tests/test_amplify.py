"""Toeplitz privacy amplification: exact against explicit matrices, galois and stored vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qkdpost import amplify
from qkdpost.amplify import _kernels as K
from qkdpost.bits import pack_bits, unpack_bits
from qkdpost.channel import LoopbackChannel, Responder
from qkdpost.errors import InputError

from oracles import amplify as oracle

VECTORS = Path(__file__).parent / "vectors" / "toeplitz_kat.json"


def _bits(rng, n):
    return rng.integers(0, 2, n, dtype=np.uint8)


@pytest.mark.parametrize("n,m", [(1, 1), (2, 1), (2, 2), (63, 5), (64, 64), (65, 33), (127, 1), (130, 129), (200, 100)])
def test_toeplitz_matches_explicit_matrix(n, m):
    rng = np.random.default_rng(n * 1000 + m)
    x = _bits(rng, n)
    s = _bits(rng, n + m - 1)
    np.testing.assert_array_equal(amplify.toeplitz_hash(x, s, m), oracle.toeplitz_hash(x, s, m))


@pytest.mark.parametrize("n,m", [(1, 1), (2, 1), (65, 33), (130, 129), (200, 100), (300, 7)])
def test_modified_matches_explicit_matrix(n, m):
    rng = np.random.default_rng(n * 7 + m)
    x = _bits(rng, n)
    s = _bits(rng, n - 1)
    np.testing.assert_array_equal(amplify.modified_toeplitz_hash(x, s, m), oracle.modified_toeplitz_hash(x, s, m))


def test_random_small_sizes_match_matrix():
    rng = np.random.default_rng(5)
    for _ in range(40):
        n = int(rng.integers(1, 400))
        m = int(rng.integers(1, n + 1))
        x = _bits(rng, n)
        s = _bits(rng, n + m - 1)
        np.testing.assert_array_equal(amplify.toeplitz_hash(x, s, m), oracle.toeplitz_hash(x, s, m))


@pytest.mark.parametrize("n,m", [(4097, 2049), (25000, 12501), (14000, 13999), (20000, 700)])
def test_toeplitz_matches_galois_mid_size(n, m):
    """Above the Karatsuba threshold (96 words = 6144 bits): odd and even splits, column and row blocks."""
    rng = np.random.default_rng(n + m)
    x = _bits(rng, n)
    s = _bits(rng, n + m - 1)
    np.testing.assert_array_equal(amplify.toeplitz_hash(x, s, m), oracle.toeplitz_hash_galois(x, s, m))


def test_toeplitz_matches_float64_fft_at_200k_bits():
    """Independent route: scipy float64 FFT convolution (exact at this size), mod 2."""
    from scipy.signal import fftconvolve

    rng = np.random.default_rng(11)
    n, m = 200_003, 100_001
    x = _bits(rng, n)
    s = _bits(rng, n + m - 1)
    conv = fftconvolve(s.astype(np.float64), x.astype(np.float64))
    ref = (np.rint(conv[n - 1 : n - 1 + m]).astype(np.int64) & 1).astype(np.uint8)
    np.testing.assert_array_equal(amplify.toeplitz_hash(x, s, m), ref)


def test_known_answer_vectors():
    data = json.loads(VECTORS.read_text())
    assert len(data["vectors"]) >= 18
    for v in data["vectors"]:
        n, m = v["n"], v["m"]
        x = np.unpackbits(np.frombuffer(bytes.fromhex(v["x"]), np.uint8), bitorder="little")[:n]
        s = np.unpackbits(np.frombuffer(bytes.fromhex(v["seed"]), np.uint8), bitorder="little")[: v["seed_bits"]]
        y = np.unpackbits(np.frombuffer(bytes.fromhex(v["y"]), np.uint8), bitorder="little")[:m]
        fn = amplify.toeplitz_hash if v["method"] == "toeplitz" else amplify.modified_toeplitz_hash
        np.testing.assert_array_equal(fn(x, s, m), y, err_msg=f"{v['method']} n={n} m={m}")


@pytest.mark.parametrize("M,Nc", [(1, 1), (33, 33), (65, 65), (64, 130), (130, 64), (97, 301), (301, 97), (257, 513)])
def test_kernel_portable_and_pclmul_agree_with_bigint_oracle(M, Nc):
    rng = np.random.default_rng(M * 31 + Nc)
    S = rng.integers(0, 2**64, M + Nc, dtype=np.uint64, endpoint=False)
    X = rng.integers(0, 2**64, Nc, dtype=np.uint64, endpoint=False)
    want = oracle.words_product_oracle(S, X, M)
    modes = [K.SW] + ([K.HW] if K.has_pclmul() else []) + ([K.HW2] if K.has_vpclmul() else [])
    for mode in modes:
        B = np.zeros(2 * (M + Nc) + K.workspace_words(M, Nc), np.uint64)
        B[: M + Nc] = S
        B[M + Nc : M + 2 * Nc] = X
        assert K.toeplitz_words(B, 0, M + Nc, M + 2 * Nc, M, Nc, 2 * (M + Nc), mode) == 0
        np.testing.assert_array_equal(B[M + 2 * Nc : 2 * (M + Nc)], want, err_msg=str(mode.dtype))


def test_kernel_reports_small_workspace_as_status():
    M = Nc = 200
    B = np.zeros(2 * (M + Nc) + 10, np.uint64)
    assert K.toeplitz_words(B, 0, M + Nc, M + 2 * Nc, M, Nc, 2 * (M + Nc), K.default_mode()) == K.ST_WORKSPACE


def test_clmul_portable_matches_python_integers():
    rng = np.random.default_rng(3)
    for _ in range(50):
        a, b = (int(v) for v in rng.integers(0, 2**64, 2, dtype=np.uint64, endpoint=False))
        want = 0
        for i in range(64):
            if (b >> i) & 1:
                want ^= a << i
        lo, hi = K.clmul_sw(np.uint64(a), np.uint64(b))
        assert (int(lo), int(hi)) == (want & (2**64 - 1), want >> 64)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_toeplitz_is_gf2_linear_and_length_exact(data):
    n = data.draw(st.integers(1, 400))
    m = data.draw(st.integers(1, n))
    seed = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n + m - 1, max_size=n + m - 1)), np.uint8)
    a = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), np.uint8)
    b = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), np.uint8)
    ya, yb, yab = (amplify.toeplitz_hash(v, seed, m) for v in (a, b, a ^ b))
    assert ya.shape == (m,) and ya.dtype == np.uint8
    np.testing.assert_array_equal(yab, ya ^ yb)
    # linear in the seed too (T is linear in s)
    seed2 = np.roll(seed, 1)
    np.testing.assert_array_equal(
        amplify.toeplitz_hash(a, seed ^ seed2, m), ya ^ amplify.toeplitz_hash(a, seed2, m)
    )


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_modified_is_gf2_linear(data):
    n = data.draw(st.integers(1, 500))
    m = data.draw(st.integers(1, n))
    seed = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n - 1, max_size=n - 1)), np.uint8)
    a = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), np.uint8)
    b = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), np.uint8)
    f = amplify.modified_toeplitz_hash
    np.testing.assert_array_equal(f(a ^ b, seed, m), f(a, seed, m) ^ f(b, seed, m))


def test_packed_api_ignores_tail_bits_and_matches_unpacked():
    rng = np.random.default_rng(8)
    n, m = 1000, 333
    x = _bits(rng, n)
    s = _bits(rng, n + m - 1)
    xw = pack_bits(x)
    xw[-1] |= np.uint64(1) << np.uint64(63)  # garbage above bit n must not matter
    y = amplify.toeplitz_hash_packed(xw, n, pack_bits(s), m)
    np.testing.assert_array_equal(unpack_bits(y, m), oracle.toeplitz_hash(x, s, m))
    assert int(y[-1]) >> (m % 64) == 0


def test_bad_inputs_raise_clear_errors():
    x = np.ones(10, np.uint8)
    with pytest.raises(InputError, match="seed: has 5 bits.*n \\+ m - 1 = 14"):
        amplify.toeplitz_hash(x, np.zeros(5, np.uint8), 5)
    with pytest.raises(InputError, match="1 <= m <= n"):
        amplify.toeplitz_hash(x, np.zeros(20, np.uint8), 11)
    with pytest.raises(InputError, match="1 <= m <= n"):
        amplify.toeplitz_hash(x, np.zeros(9, np.uint8), 0)
    with pytest.raises(InputError, match="not 0 or 1"):
        amplify.toeplitz_hash(np.full(10, 2, np.uint8), np.zeros(14, np.uint8), 5)
    with pytest.raises(InputError, match="dtype"):
        amplify.toeplitz_hash(np.ones(10, np.float64), np.zeros(14, np.uint8), 5)
    with pytest.raises(InputError, match="dimensions"):
        amplify.toeplitz_hash(np.ones((2, 5), np.uint8), np.zeros(14, np.uint8), 5)
    with pytest.raises(InputError, match="at least 1 bit"):
        amplify.toeplitz_hash(np.zeros(0, np.uint8), np.zeros(0, np.uint8), 1)
    with pytest.raises(InputError, match="n - 1 = 9"):
        amplify.modified_toeplitz_hash(x, np.zeros(14, np.uint8), 5)
    with pytest.raises(InputError, match="uint64"):
        amplify.toeplitz_hash_packed(np.ones(1, np.int64), 10, np.ones(1, np.uint64), 5)


def test_draw_seed_uses_qrng_and_checks_its_length():
    calls = []

    def qrng(nbytes):
        calls.append(nbytes)
        return b"\xff" * nbytes

    s = amplify.draw_seed(70, qrng=qrng)
    assert calls == [16] and s.shape == (70,) and s.dtype == np.uint8 and s.all()
    with pytest.raises(InputError, match="exactly 16 bytes"):
        amplify.draw_seed(70, qrng=lambda k: b"\x00")
    a, b = amplify.draw_seed(256), amplify.draw_seed(256)
    assert a.shape == (256,) and not np.array_equal(a, b)  # 2^-256 chance of a false failure


@pytest.mark.parametrize("method", amplify.METHODS)
@pytest.mark.parametrize("threads", [1, 2])
def test_two_party_amplification_gives_equal_keys(method, threads):
    rng = np.random.default_rng(21)
    n = 3000
    blocks = rng.integers(0, 2, (3, n), dtype=np.uint8)
    ids = [7, 8, 9]
    lengths = [1000, 1, 2999]
    alice = amplify.AmplifyAlice({i: blocks[k] for k, i in enumerate(ids)}, method=method, threads=threads)
    chan = LoopbackChannel(Responder(alice.handlers()))
    bob_keys = amplify.AmplifyBob(method=method, threads=3 - threads).run(chan, ids, blocks.copy(), lengths)
    assert chan.stats.round_trips == 1
    for fid, m in zip(ids, lengths):
        assert bob_keys[fid].shape == (m,)
        np.testing.assert_array_equal(bob_keys[fid], alice.keys[fid])
    # fresh seeds per run: a second run gives different keys
    alice2 = amplify.AmplifyAlice({i: blocks[k] for k, i in enumerate(ids)}, method=method)
    chan2 = LoopbackChannel(Responder(alice2.handlers()))
    again = amplify.AmplifyBob(method=method).run(chan2, ids, blocks.copy(), lengths)
    assert not np.array_equal(again[7], bob_keys[7])


def test_seed_length():
    assert amplify.seed_length(10, 4) == 13
    assert amplify.seed_length(10, 4, "modified") == 9
    with pytest.raises(InputError):
        amplify.seed_length(10, 4, "shake256")


@pytest.mark.parametrize("threads", [2, 3])
def test_threaded_product_is_identical(threads):
    rng = np.random.default_rng(40 + threads)
    for n, m in ((10_007, 5003), (9000, 9000), (130, 64), (5000, 17)):
        x = _bits(rng, n)
        s = _bits(rng, n + m - 1)
        np.testing.assert_array_equal(amplify.toeplitz_hash(x, s, m, threads=threads), amplify.toeplitz_hash(x, s, m))
        s2 = _bits(rng, n - 1)
        np.testing.assert_array_equal(
            amplify.modified_toeplitz_hash(x, s2, m, threads=threads), oracle.modified_toeplitz_hash(x, s2, m)
        ) if n <= 5000 else None
    with pytest.raises(InputError, match="threads"):
        amplify.toeplitz_hash(np.ones(8, np.uint8), np.ones(11, np.uint8), 4, threads=0)


# ---------------------------------------------------------------- additive FFT


def _gf64():
    import galois

    return galois.GF(2**64, irreducible_poly=(1 << 64) | 0x1B, verify=False)


def test_cantor_basis_property_and_rank():
    GF = _gf64()
    b = [int(v) for v in K.CANTOR_BASIS]
    assert b[0] == 1
    for i in range(1, 64):
        x = GF(b[i])
        assert int(x * x + x) == b[i - 1], i
    # linearly independent over GF(2): rank 64
    rows = list(b)
    rank = 0
    for bit in range(63, -1, -1):
        piv = next((r for r in rows if (r >> bit) & 1), None)
        if piv is None:
            continue
        rows = [r ^ piv if (r >> bit) & 1 else r for r in rows if r != piv]
        rank += 1
    assert rank == 64


def test_gf64_mul_matches_galois():
    GF = _gf64()
    rng = np.random.default_rng(12)
    for a, b in rng.integers(0, 2**64, (40, 2), dtype=np.uint64, endpoint=False):
        want = int(GF(int(a)) * GF(int(b)))
        for mode in [K.SW] + ([K.default_mode()] if K.has_pclmul() else []):
            assert int(K.gf64_mul(a, b, mode)) == want


@pytest.mark.parametrize("L", [1, 2, 3, 4, 6, 8])
def test_afft_evaluates_at_subspace_points_and_inverts(L):
    """F[u] after the forward transform is f(omega_u), omega_u = sum_i bit_i(u) beta_i."""
    GF = _gf64()
    rng = np.random.default_rng(L)
    coeffs = rng.integers(0, 2**64, 1 << L, dtype=np.uint64, endpoint=False)
    F = coeffs.copy()
    lam, terms, tstart = K.afft_tables(L)
    K.afft_forward(F, L, lam, terms, tstart, K.default_mode())
    for u in range(1 << L):
        w = 0
        for i in range(L):
            if (u >> i) & 1:
                w ^= int(K.CANTOR_BASIS[i])
        x = GF(w)
        val = GF(0)
        for c in coeffs[::-1]:
            val = val * x + GF(int(c))
        assert int(F[u]) == int(val), u
    K.afft_inverse(F, L, lam, terms, tstart, K.default_mode())
    np.testing.assert_array_equal(F, coeffs)


@pytest.mark.parametrize("n,m", [(1, 1), (2, 1), (31, 5), (33, 33), (64, 1), (65, 64), (200, 100), (999, 500)])
def test_afft_toeplitz_matches_explicit_matrix(n, m):
    rng = np.random.default_rng(n + 3 * m)
    x = _bits(rng, n)
    s = _bits(rng, n + m - 1)
    y = amplify.toeplitz_hash_packed(pack_bits(x), n, pack_bits(s), m, algorithm="afft")
    np.testing.assert_array_equal(unpack_bits(y, m), oracle.toeplitz_hash(x, s, m))
    if n > 1:
        s2 = _bits(rng, n - 1)
        y2 = amplify.modified_toeplitz_hash_packed(pack_bits(x), n, pack_bits(s2), m, algorithm="afft")
        np.testing.assert_array_equal(unpack_bits(y2, m), oracle.modified_toeplitz_hash(x, s2, m))


@pytest.mark.parametrize("n,m", [(70_001, 35_000), (300_000, 150_001), (3_000_001, 1_500_000)])
def test_afft_and_karatsuba_agree(n, m):
    rng = np.random.default_rng(n)
    xw = pack_bits(_bits(rng, n))
    sw = pack_bits(_bits(rng, n + m - 1))
    a = amplify.toeplitz_hash_packed(xw, n, sw, m, algorithm="afft")
    b = amplify.toeplitz_hash_packed(xw, n, sw, m, algorithm="karatsuba")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(amplify.toeplitz_hash_packed(xw, n, sw, m), a)  # auto, whichever it picks


@pytest.mark.parametrize("n,m,blocks", [(2000, 1000, 4), (2000, 200, 3), (2001, 1999, 2), (4746, 4746, 1)])
def test_afft_column_blocks_match_explicit_matrix(n, m, blocks):
    """The split into column blocks summed in the transform domain (``_afft_plan``) is exact."""
    assert amplify._afft_plan(n, m)[0] == blocks  # the case really exercises that many blocks
    rng = np.random.default_rng(n * m)
    x, s = _bits(rng, n), _bits(rng, n + m - 1)
    y = amplify.toeplitz_hash_packed(pack_bits(x), n, pack_bits(s), m, algorithm="afft")
    np.testing.assert_array_equal(unpack_bits(y, m), oracle.toeplitz_hash(x, s, m))


@pytest.mark.parametrize("n,m,wrapped", [(1_000_000, 500_000, True), (1_398_048, 699_024, True),
                                         (838_871, 419_435, True), (838_870, 419_435, False),
                                         (1_398_049, 699_024, False)])
def test_afft_wrapped_transform_at_its_boundaries(n, m, wrapped):
    """A 2^16-point transform computes S X mod y^65536 + y; used only where the wrap misses the output."""
    k, w, size = amplify._afft_plan(n, m)
    unwrapped = 1 << (((m + w - 1 + 31) >> 5) + ((w + 31) >> 5) - 2).bit_length()
    assert (size < unwrapped) == wrapped  # the case really sits on that side of the boundary
    rng = np.random.default_rng(m)
    xw = rng.integers(0, 2**64, (n + 63) >> 6, dtype=np.uint64, endpoint=False)
    sw = rng.integers(0, 2**64, (n + m + 62) >> 6, dtype=np.uint64, endpoint=False)
    np.testing.assert_array_equal(amplify.toeplitz_hash_packed(xw, n, sw, m, algorithm="afft"),
                                  amplify.toeplitz_hash_packed(xw, n, sw, m, algorithm="karatsuba"))


def test_afft_pointwise_vector_loop_matches_scalar():
    rng = np.random.default_rng(78)
    modes = [K.SW] + ([K.HW] if K.has_pclmul() else []) + ([K.HW2] if K.has_vpclmul() else [])
    for n in (1, 3, 4, 5, 17, 1000):
        a = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
        b = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
        want = np.array([K.gf64_mul(u, v, K.SW) for u, v in zip(a, b)], dtype=np.uint64)
        for mode in modes:
            got = a.copy()
            K.afft_pointwise(got, b, mode)
            np.testing.assert_array_equal(got, want, err_msg=str(mode.dtype))


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_afft_is_gf2_linear(data):
    n = data.draw(st.integers(1, 300))
    m = data.draw(st.integers(1, n))
    seed = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n + m - 1, max_size=n + m - 1)), np.uint8)
    a = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), np.uint8)
    b = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), np.uint8)
    f = lambda v: amplify.toeplitz_hash_packed(pack_bits(v), n, pack_bits(seed), m, algorithm="afft")  # noqa: E731
    np.testing.assert_array_equal(f(a ^ b), f(a) ^ f(b))
    np.testing.assert_array_equal(unpack_bits(f(a), m), oracle.toeplitz_hash(a, seed, m))


def test_unknown_algorithm_is_rejected():
    with pytest.raises(InputError, match="algorithm"):
        amplify.toeplitz_hash_packed(np.ones(1, np.uint64), 10, np.ones(1, np.uint64), 5, algorithm="fft32")


def test_vectorised_multiply_accumulate_matches_scalar():
    from qkdpost._jit import kernel

    @kernel(None)
    def call(y, p, lam, mode):
        K._mul_acc(y, p, lam, mode)

    rng = np.random.default_rng(77)
    modes = [K.SW] + ([K.HW] if K.has_pclmul() else []) + ([K.HW2] if K.has_vpclmul() else [])
    for n in (0, 1, 3, 4, 5, 17, 1000):
        p = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
        y = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
        lam = rng.integers(0, 2**64, dtype=np.uint64, endpoint=False)
        want = y.copy()
        for k in range(n):
            want[k] ^= K.gf64_mul(p[k], lam, K.SW)
        for mode in modes:
            got = y.copy()
            call(got, p, lam, mode)
            np.testing.assert_array_equal(got, want, err_msg=str(mode.dtype))


@pytest.mark.parametrize("n,m", [(40_000, 20_001), (1_000_003, 400_000)])  # the second splits 2^13-blocks
def test_afft_with_two_threads_is_identical(n, m):
    rng = np.random.default_rng(5)
    xw, sw = pack_bits(_bits(rng, n)), pack_bits(_bits(rng, n + m - 1))
    one = amplify.toeplitz_hash_packed(xw, n, sw, m, algorithm="afft")
    two = amplify.toeplitz_hash_packed(xw, n, sw, m, algorithm="afft", threads=2)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, amplify.toeplitz_hash_packed(xw, n, sw, m, algorithm="karatsuba"))


@pytest.mark.slow
def test_afft_matches_karatsuba_on_a_random_sweep_of_shapes():
    """Review sweep: every n < 140 and word-boundary n with edge m (1, 31..65, n/2, n-1, n), random
    shapes up to 6*10^4 bits (1-4 column blocks), and random shapes of 0.4-3*10^6 bits where the plan
    uses the wrapped 2^16-point transform; one and two threads, all equal to Karatsuba."""
    rng = np.random.default_rng(20261128)
    cases = []
    for n in list(range(1, 140)) + [191, 192, 193, 255, 256, 257, 511, 512, 513, 2047, 2048, 2049, 4095, 4097]:
        cases += [(n, m) for m in sorted({1, 2, 31, 32, 33, 63, 64, 65, n // 2, n - 1, n}) if 1 <= m <= n]
    for _ in range(150):
        n = int(rng.integers(1, 60_000))
        cases.append((n, int(rng.integers(1, n + 1))))
    wrapped = 0
    while wrapped < 12:
        n = int(rng.integers(400_000, 3_000_000))
        m = int(n * rng.uniform(0.3, 0.7))
        k, w, size = amplify._afft_plan(n, m)
        if size < 1 << (((m + w - 1 + 31) >> 5) + ((w + 31) >> 5) - 2).bit_length():
            cases.append((n, m))
            wrapped += 1
    for n, m in cases:
        xw = rng.integers(0, 2**64, (n + 63) >> 6, dtype=np.uint64, endpoint=False)
        sw = rng.integers(0, 2**64, (n + m + 62) >> 6, dtype=np.uint64, endpoint=False)
        want = amplify.toeplitz_hash_packed(xw, n, sw, m, algorithm="karatsuba")
        for threads in (1, 2):
            got = amplify.toeplitz_hash_packed(xw, n, sw, m, algorithm="afft", threads=threads)
            np.testing.assert_array_equal(got, want, err_msg=f"n={n} m={m} threads={threads}")
