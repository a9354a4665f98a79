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
def test_two_party_amplification_gives_equal_keys(method):
    rng = np.random.default_rng(21)
    n = 3000
    blocks = rng.integers(0, 2, (3, n), dtype=np.uint8)
    ids = [7, 8, 9]
    lengths = [1000, 1, 2999]
    alice = amplify.AmplifyAlice({i: blocks[k] for k, i in enumerate(ids)}, method=method)
    chan = LoopbackChannel(Responder(alice.handlers()))
    bob_keys = amplify.AmplifyBob(method=method).run(chan, ids, blocks.copy(), lengths)
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
