"""Error verification: GF(2^128) polynomial hash vs galois, tag families, two-party protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qkdpost import verify
from qkdpost.amplify import _kernels as AK
from qkdpost.channel import LoopbackChannel, Responder
from qkdpost.errors import InputError, ProtocolError
from qkdpost.verify import _kernels as K

VECTORS = Path(__file__).parent / "vectors" / "verify_kat.json"


def _modes():
    return [AK.SW] + ([AK.HW] if AK.has_pclmul() else [])


def test_gf128_mul_matches_galois():
    import galois

    GF = galois.GF(2**128, irreducible_poly=(1 << 128) | 0x87, verify=False)
    rng = np.random.default_rng(0)
    vals = [np.array([0, 0, 1, 0], np.uint64), np.full(4, 2**64 - 1, np.uint64)]
    vals += [rng.integers(0, 2**64, 4, dtype=np.uint64, endpoint=False) for _ in range(30)]
    for a in vals:
        want = int(GF(int(a[0]) | (int(a[1]) << 64)) * GF(int(a[2]) | (int(a[3]) << 64)))
        for mode in _modes():
            lo, hi = K.gf128_mul(a[0], a[1], a[2], a[3], mode)
            assert int(lo) | (int(hi) << 64) == want


def test_poly_hash_known_answers():
    data = json.loads(VECTORS.read_text())
    for v in data["vectors"]:
        n = v["n"]
        x = np.unpackbits(np.frombuffer(bytes.fromhex(v["x"]), np.uint8), bitorder="little")[:n]
        k = int(v["key"], 16)
        key = np.array([k & (2**64 - 1), k >> 64], np.uint64)
        got = verify.tag(x, key, 128, "poly128")
        assert (int(got[0]) | (int(got[1]) << 64)) == int(v["hash"], 16), n


@pytest.mark.parametrize("method,t", [("poly-toeplitz", 64), ("poly-toeplitz", 5), ("toeplitz", 64), ("poly128", 128)])
def test_tag_shape_and_key_sensitivity(method, t):
    rng = np.random.default_rng(1)
    n = 1001
    x = rng.integers(0, 2, n, dtype=np.uint8)
    k1 = verify.draw_key(n, t, method)
    k2 = verify.draw_key(n, t, method)
    a = verify.tag(x, k1, t, method)
    assert a.shape == ((t + 63) // 64,) and a.dtype == np.uint64
    assert int(a[-1]) >> (t % 64 or 64) == 0 if t % 64 else True
    np.testing.assert_array_equal(a, verify.tag(x.copy(), k1, t, method))  # deterministic in (x, key)
    if t >= 64:
        assert not np.array_equal(a, verify.tag(x, k2, t, method))  # 2^-64 false-failure chance


@pytest.mark.parametrize("method", ["poly-toeplitz", "toeplitz"])
def test_short_tags_collide_at_most_at_the_bound(method):
    """With t = 3 bits, blocks differing in one bit collide with rate ~ 2^-3, never far above."""
    rng = np.random.default_rng(2)
    n, t, trials = 300, 3, 1500
    eps = verify.collision_bound(n, t, method)
    x = rng.integers(0, 2, (trials, n), dtype=np.uint8)
    y = x.copy()
    y[np.arange(trials), rng.integers(0, n, trials)] ^= 1
    keys = np.stack([verify.draw_key(n, t, method) for _ in range(trials)])
    same = np.all(verify.tags(x, keys, t, method) == verify.tags(y, keys, t, method), axis=1)
    rate = same.mean()
    sd = np.sqrt(eps * (1 - eps) / trials)
    assert rate <= eps + 5 * sd
    assert rate > 0.02  # the tag is not constant-free: collisions do happen at t = 3


def test_collision_bound_and_tag_bits_for():
    assert verify.collision_bound(10**8, 64, "toeplitz") >= 2.0**-64
    eps = verify.collision_bound(10**8, 64, "poly-toeplitz")
    assert 2.0**-64 < eps < 2.0**-63
    assert verify.tag_bits_for(2.0**-64, 10**8, "toeplitz") == 64
    assert verify.tag_bits_for(2.0**-64, 10**8, "poly-toeplitz") == 65
    assert verify.tag_bits_for(1e-30, 10**8, "poly128") == 128
    with pytest.raises(InputError, match="cannot reach"):
        verify.tag_bits_for(1e-40, 10**8, "poly128")
    assert verify.collision_bound(128, 128, "poly128") == pytest.approx(2 * 2.0**-128, rel=1e-12)


def test_bad_inputs():
    x = np.ones(100, np.uint8)
    with pytest.raises(InputError, match="keys"):
        verify.tag(x, np.zeros(3, np.int64), 64)
    with pytest.raises(InputError, match="1..128"):
        verify.tag(x, np.zeros(5, np.uint64), 200)
    with pytest.raises(InputError, match="not 0 or 1"):
        verify.tag(np.full(100, 3, np.uint8), verify.draw_key(100, 64), 64)
    with pytest.raises(InputError, match="method"):
        verify.collision_bound(100, 64, "md5")


def _run(blocks_a, blocks_b, **kw):
    ids = list(range(100, 100 + len(blocks_a)))
    alice = verify.VerifyAlice({i: b for i, b in zip(ids, blocks_a)})
    chan = LoopbackChannel(Responder(alice.handlers()))
    res = verify.VerifyBob(**kw).run(chan, ids, np.stack(blocks_b))
    return alice, chan, res


@pytest.mark.parametrize("method", verify.METHODS)
def test_protocol_passes_equal_blocks_and_drops_a_wrong_one_on_both_sides(method):
    rng = np.random.default_rng(4)
    a = rng.integers(0, 2, (4, 777), dtype=np.uint8)
    b = a.copy()
    b[2, 500] ^= 1
    kw = {"method": method, "tag_bits": 128} if method == "poly128" else {"method": method}
    alice, chan, res = _run(list(a), list(b), **kw)
    assert res.passed.tolist() == [True, True, False, True]
    assert res.failed_ids == [102] and alice.failed_ids == [102]
    assert sorted(alice.blocks) == [100, 101, 103] and res.bits.shape == (3, 777)
    assert res.round_trips == 2 == chan.stats.round_trips
    assert (res.leaked_bits == res.tag_bits).all() and alice.leaked_bits[100] == res.tag_bits
    assert res.eps_cor <= 2.0**-64 * 1.0001 or method == "poly128"


def test_protocol_rejects_unknown_frame():
    alice = verify.VerifyAlice({1: np.zeros(10, np.uint8)})
    chan = LoopbackChannel(Responder(alice.handlers()))
    with pytest.raises(ProtocolError, match="frame_id 2"):
        verify.VerifyBob().run(chan, [2], np.zeros((1, 10), np.uint8))
