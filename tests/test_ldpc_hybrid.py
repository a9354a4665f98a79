"""LDPC blind rounds with reveal="hybrid": punctured positions in the public order, then Bob's
least reliable key positions; the leak recounted from the messages on the channel."""

from __future__ import annotations

import math

import numpy as np
import pytest

from test_ldpc import RecordingChannel

from qkdpost.channel import LoopbackChannel, Responder
from qkdpost.errors import InputError
from qkdpost.reconcile.ldpc import LdpcAlice, LdpcBob, load_code
from qkdpost.reconcile.ldpc.protocol import frame_layout, shortened_subgraph


def _run(monkeypatch, reveal, nf=4, n_key=14746, q_true=0.075, q_told=0.05):
    """Frames at q_true, Bob told q_told (so the first attempt fails), one blind round that reveals
    every punctured position (step > n_punct), later rounds on key positions only."""
    from qkdpost.reconcile.ldpc import protocol as P

    rng = np.random.default_rng(41)
    a = rng.integers(0, 2, (nf, n_key), dtype=np.uint8)
    b = a ^ (rng.random(a.shape) < q_true).astype(np.uint8)
    seen = []
    real = P.K.decode_batch

    def spy(row_ptr, col_idx, syn, limits, L, R, which, it, lut):
        real(row_ptr, col_idx, syn, limits, L, R, which, it, lut)
        seen.append(L.copy())

    monkeypatch.setattr(P.K, "decode_batch", spy)
    alice = LdpcAlice({i: a[i] for i in range(nf)}, sim_seed=3)
    chan = RecordingChannel(Responder(alice.handlers()))
    bob = LdpcBob(seed=5, f_start=1.0, f_step=0.4, max_rounds=5, trap_checks=0, reveal=reveal, fallback="drop")
    res = bob.run(chan, np.arange(nf), b, q_told)
    return a, b, bob, chan, res, seen


def test_hybrid_reveals_punctured_publicly_then_least_reliable_key_positions(monkeypatch):
    n_key, q = 14746, 0.05
    a, b, bob, chan, res, seen = _run(monkeypatch, "hybrid")
    plan = bob.plan(n_key, q)
    assert plan.n_punct > 0 and plan.step > plan.n_punct
    code = load_code(plan.code)
    lay = frame_layout(code, n_key, plan.n_punct, np.random.default_rng([5, 0xB0B]).bytes(16))
    cols = shortened_subgraph(code, lay.short_pos, lay.short_vals)[2]
    punct = set(lay.punct_pos.tolist())
    key = set(lay.key_pos.tolist())
    kinds = [k for k, _, _ in chan.log]
    # public order: exactly the punctured positions, once, before any position Bob chose
    pub = [(int(body["start"]), int(body["stop"])) for k, body, _ in chan.log if k == "ldpc.reveal"]
    assert pub == [(0, plan.n_punct)]
    assert "ldpc.reveal_at" in kinds and kinds.index("ldpc.reveal_at") > kinds.index("ldpc.reveal")
    # each reveal_at names, per frame, the step least reliable columns not yet known (key positions only)
    known = {f: set(lay.punct_pos.tolist()) for f in range(a.shape[0])}
    calls = iter(seen[1:])  # seen[0]: first attempt; seen[1]: after the public round
    L = next(calls)
    for kind, body, _ in chan.log:
        if kind != "ldpc.reveal_at":
            continue
        parts = np.split(np.asarray(body["positions"], np.int64), np.cumsum(body["counts"])[:-1])
        for f, p in zip(np.asarray(body["frame_ids"]).tolist(), parts):
            assert set(p.tolist()) <= key and not (set(p.tolist()) & punct)
            mag = np.abs(L[f]).astype(np.float64)
            inv = {int(c): i for i, c in enumerate(cols.tolist())}
            mag[[inv[x] for x in known[f]]] = np.inf
            want = cols[np.sort(np.argsort(mag, kind="stable")[:plan.step])]
            np.testing.assert_array_equal(p, want)
            known[f] |= set(p.tolist())
        L = next(calls)
    # leak recounted from the messages: frames with Bob-chosen positions m + revealed key bits, others
    # m - p + revealed + ceil(log2(max_rounds + 2)) (protocol.leak_bits)
    rev = np.zeros(a.shape[0], np.int64)
    rev_key = np.zeros(a.shape[0], np.int64)
    chosen = np.zeros(a.shape[0], bool)
    for kind, body, _ in chan.log:
        if kind == "ldpc.reveal":
            rev[np.asarray(body["frame_ids"])] += body["stop"] - body["start"]
        elif kind == "ldpc.reveal_at":
            ids = np.asarray(body["frame_ids"])
            rev[ids] += body["counts"]
            rev_key[ids] += body["counts"]
            chosen[ids] = True
    want = np.where(chosen, plan.m + rev_key,
                    plan.m - plan.n_punct + rev + math.ceil(math.log2(plan.max_rounds + 2)))
    assert chosen.any()
    np.testing.assert_array_equal(res.leaked_bits, want)
    np.testing.assert_array_equal(res.extra["revealed"], rev)
    # decoded frames carry Alice's key
    assert res.success.any()
    assert np.array_equal(res.bits[res.success], a[res.success])


def test_hybrid_leaks_no_more_than_public_order_on_the_same_frames(monkeypatch):
    """Same frames, same layout: once the punctured positions are spent, a key position Bob picks
    costs what a public one does (m + revealed key bits), and decodes the frames in fewer rounds."""
    a, _, _, _, hyb, _ = _run(monkeypatch, "hybrid")
    _, _, _, _, pub, _ = _run(monkeypatch, "punctured")
    assert hyb.success.sum() >= pub.success.sum()
    both = hyb.success & pub.success
    assert both.any()
    assert np.all(hyb.leaked_bits[both] <= pub.leaked_bits[both])
    assert np.all(hyb.extra["rounds"][both] <= pub.extra["rounds"][both])


def test_unknown_reveal_mode_is_refused():
    with pytest.raises(InputError, match="hybrid"):
        LdpcBob(reveal="reliable")


def test_2_18_defaults_by_length():
    """The 2^18 plans use 200 iterations with patience 20 (adapt.DEFAULT_ITERATIONS); 2^14 and
    2^16 keep 60 and 6. Every length reveals "hybrid" by default (adapt.DEFAULT_REVEAL)."""
    from qkdpost.reconcile.ldpc.adapt import DEFAULT_REVEAL, default_iterations, plan_frame

    assert default_iterations(2**18) == (200, 20)
    assert default_iterations(2**16) == default_iterations(2**14) == (60, 6)
    assert DEFAULT_REVEAL == "hybrid" and LdpcBob().reveal is None
    assert plan_frame(235930, 0.05).n == 2**18 and plan_frame(58982, 0.05).n == 2**16


def test_iteration_limits_default_by_length_and_can_be_overridden(monkeypatch):
    """Bob passes the per-length (max_iter, patience) to the decoder unless given explicitly."""
    from qkdpost.reconcile.ldpc import protocol as P

    got = []
    real = P.K.decode_batch

    def spy(row_ptr, col_idx, syn, limits, L, R, which, it, lut):
        got.append(limits[:2].tolist())
        real(row_ptr, col_idx, syn, limits, L, R, which, it, lut)

    monkeypatch.setattr(P.K, "decode_batch", spy)
    rng = np.random.default_rng(4)
    a = rng.integers(0, 2, (1, 14746), dtype=np.uint8)
    b = a ^ (rng.random(a.shape) < 0.03).astype(np.uint8)
    for kw, want in (({}, [60, 6]), ({"max_iter": 33, "patience": 4}, [33, 4])):
        got.clear()
        alice = LdpcAlice({0: a[0]}, sim_seed=1)
        res = LdpcBob(seed=1, **kw).run(LoopbackChannel(Responder(alice.handlers())), np.arange(1), b, 0.03)
        assert res.success.all() and got[0] == want and res.extra["max_iter"] == want[0]
