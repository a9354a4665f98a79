"""The tuned Cascade preset ``qkdpost`` (docs/cascade_efficiency.md).

Fast tests: its block sizes at known QBERs (worked out by hand below), the
rule's invariants over a QBER range, and small runs where both sides end
equal, the textbook oracle agrees, and the clean-stop rule ends the runs.

Slow tests (``-m slow``): replay of the stored n = 10^6 point at Q = 2 %
(data/cascade_presets_n1000000.json, written by
``benchmarks/bench_cascade.py curves``) with fresh data, and a paired
comparison with option7 on the same frames and permutations.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from oracles import cascade as oracle
from qkdpost.bits import binary_entropy
from qkdpost.reconcile import reconcile
from qkdpost.reconcile.cascade import PRESETS, block_sizes, reconcile_cascade

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "cascade_presets_n1000000.json")


def bsc_pair(rng, N, n, q):
    a = rng.integers(0, 2, size=(N, n), dtype=np.uint8)
    e = (rng.random((N, n)) < q).astype(np.uint8)
    return a, a ^ e


# ---------------------------------------------------------------- schedule


def test_qkdpost_block_sizes_known_answers():
    # Worked by hand from the rules (pow2, 0.8), (pow2, 16), (half,):
    #   Q = 1 %: 0.8/Q = 80 -> 2^7 = 128;  16/Q = 1600 -> 2^11 = 2048
    #   Q = 2 %: 40 -> 64;                 800 -> 1024
    #   Q = 5 %: 16 -> 16 (exact power);   320 -> 512
    #   Q = 8 %: 10 -> 16;                 200 -> 256
    # then n // 2 for every later pass, 40 passes at most.
    n = 10**6
    assert block_sizes("qkdpost", 0.01, n) == [128, 2048] + [500_000] * 38
    assert block_sizes("qkdpost", 0.02, n) == [64, 1024] + [500_000] * 38
    assert block_sizes("qkdpost", 0.05, n)[:3] == [16, 512, 500_000]
    assert block_sizes("qkdpost", 0.08, n)[:3] == [16, 256, 500_000]
    # clipped to the frame: at n = 1000, Q = 1 % the second pass is the whole frame
    assert block_sizes("qkdpost", 0.01, 1000)[:3] == [128, 1000, 500]
    p = PRESETS["qkdpost"]
    assert (p.passes, p.clean_stop, p.clean_from) == (40, 18, 2)
    assert "tuned" in p.source and "opt. (7)" in p.source


@settings(max_examples=200, deadline=None)
@given(q=st.floats(1e-4, 0.3))
def test_qkdpost_rule_invariants(q):
    # powers of two with k1 Q in [0.8, 1.6) and k2 Q in [16, 32) whenever not clipped
    n = 2**30
    k1, k2, k3 = block_sizes("qkdpost", q, n)[:3]
    for k in (k1, k2):
        assert k & (k - 1) == 0
    assert 0.8 <= k1 * q * (1 + 1e-12) and k1 * q < 1.6 * (1 + 1e-12)
    assert 16 <= k2 * q * (1 + 1e-12) and k2 * q < 32 * (1 + 1e-12)
    assert k2 >= 16 * k1 // 2  # the second pass is at least 8x the first
    assert k3 == n // 2


# ---------------------------------------------------------------- protocol runs


@pytest.mark.parametrize("q", [0.01, 0.03, 0.08])
def test_qkdpost_both_sides_end_equal_and_oracle_agrees(q):
    rng = np.random.default_rng([31, int(q * 1e4)])
    n, N = 3000, 4
    a, b = bsc_pair(rng, N, n, q)
    res = reconcile(a, b, method="cascade", qber=q, preset="qkdpost", seed=17)
    assert res.preset == "qkdpost"
    assert res.success.all()
    np.testing.assert_array_equal(res.bits, a)
    np.testing.assert_array_equal(res.errors_corrected, (a != b).sum(axis=1))
    # the clean-stop rule: at least pass 1, pass 2 and 18 clean n/2 passes, at most 40
    runs = res.extra["passes_run"]
    assert ((runs >= 20) & (runs <= 40)).all()
    # the textbook Cascade (no reuse, no inference, no scheduling) with the same
    # block sizes and permutations also ends equal and never discloses less
    ks = block_sizes("qkdpost", q, n)[: int(runs.max())]
    perms = [oracle.permutation(17, p, n) for p in range(len(ks))]
    asked = []
    for i in range(N):
        corrected, n_asked, _ = oracle.plain_cascade(a[i], b[i], ks, perms)
        np.testing.assert_array_equal(corrected, a[i])
        asked.append(n_asked)
    assert res.leaked_bits.mean() <= np.mean(asked)


def test_qkdpost_tiny_frames_and_no_errors():
    rng = np.random.default_rng(5)
    for n in (1, 2, 63, 65, 257):
        a, b = bsc_pair(rng, 2, n, 0.05)
        res = reconcile_cascade(a, b, qber=0.05, seed=3, preset="qkdpost")
        np.testing.assert_array_equal(res.bits, a)
    # no errors at all: nothing is flipped, and the run stops after 2 + 18 passes
    a, _ = bsc_pair(rng, 3, 5000, 0.0)
    res = reconcile_cascade(a, a.copy(), qber=0.02, seed=3, preset="qkdpost")
    np.testing.assert_array_equal(res.bits, a)
    assert (res.errors_corrected == 0).all()
    assert (res.extra["passes_run"] == 20).all()


def test_qkdpost_discloses_less_than_option7_at_moderate_n():
    # Paired: same frames, same permutations. At n = 2^17, Q = 2 % the sweep
    # measured f = 1.0235 (qkdpost) vs 1.0266 (option7), per-frame spread
    # ~0.002: over 8 frames the mean leak of qkdpost is clearly lower.
    rng = np.random.default_rng(2026)
    n, N, q = 2**17, 8, 0.02
    a, b = bsc_pair(rng, N, n, q)
    new = reconcile_cascade(a, b, qber=q, seed=9, preset="qkdpost")
    old = reconcile_cascade(a, b, qber=q, seed=9, preset="option7")
    np.testing.assert_array_equal(new.bits, a)
    np.testing.assert_array_equal(old.bits, a)
    assert new.leaked_bits.mean() < old.leaked_bits.mean()


# ---------------------------------------------------------------- slow: stored curves


def _stored(preset, q):
    if not os.path.exists(DATA):
        return None
    with open(DATA) as fh:
        rows = json.load(fh)["rows"]
    for r in rows:
        if r["preset"] == preset and abs(r["qber"] - q) < 1e-12:
            return r
    return None


@pytest.mark.slow
def test_replay_stored_qkdpost_n1e6_q2():
    """Fresh data (other seeds than the stored run), same n, Q and scheduling.

    Tolerance: |f_replay - f_stored| <= 4 combined standard errors + 0.001
    (0.001 allows for kernel changes that move disclosures slightly); no
    residual frame error in 16 frames (stored: 0 in 64); and the replay
    stays below the issue's goal f <= 1.025.
    """
    row = _stored("qkdpost", 0.02)
    assert row is not None, "data/cascade_presets_n1000000.json has no qkdpost row at Q = 2 %"
    n, q, frames = row["n"], row["qber"], 16
    fs = []
    for i in range(frames // 8):
        rng = np.random.default_rng([4242, i])
        a, b = bsc_pair(rng, 8, n, q)
        res = reconcile_cascade(
            a, b, qber=q, seed=31 + i, preset="qkdpost", slack=row["slack"], local_max=row["local_max"]
        )
        assert (res.bits == a).all()
        fs.extend((res.leaked_bits / (n * binary_entropy((a != b).mean(axis=1)))).tolist())
    fs = np.asarray(fs)
    se = math.sqrt(fs.var(ddof=1) / frames + row["f_std"] ** 2 / row["frames"])
    assert abs(fs.mean() - row["f_mean"]) <= 4 * se + 0.001, (fs.mean(), row["f_mean"], se)
    assert fs.mean() <= 1.025


@pytest.mark.slow
@pytest.mark.parametrize("q", [0.01, 0.02, 0.05, 0.08])
def test_qkdpost_beats_option7_paired_n2e18(q):
    # sweep (32 frames, n = 2^18): qkdpost - option7 = -0.0022 / -0.0032 /
    # -0.0060 / -0.0047 at Q = 1 / 2 / 5 / 8 %, paired spread ~0.001 per frame
    rng = np.random.default_rng([77, int(q * 1e6)])
    n, N = 2**18, 16
    a, b = bsc_pair(rng, N, n, q)
    nh = n * binary_entropy((a != b).mean(axis=1))
    new = reconcile_cascade(a, b, qber=q, seed=5, preset="qkdpost")
    old = reconcile_cascade(a, b, qber=q, seed=5, preset="option7")
    assert (new.bits == a).all() and (old.bits == a).all()
    d = new.leaked_bits / nh - old.leaked_bits / nh
    assert d.mean() + 3 * d.std(ddof=1) / math.sqrt(N) < 0, d
