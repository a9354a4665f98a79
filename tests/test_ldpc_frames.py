"""Frame lengths chosen per QBER (adapt.frame_length): shortening-only plans and their leak."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_ldpc import RecordingChannel, _disclosed

from qkdpost.bits import binary_entropy
from qkdpost.channel import Responder
from qkdpost.errors import InputError
from qkdpost.reconcile.ldpc import LdpcAlice, LdpcBob, available_codes
from qkdpost.reconcile.ldpc.adapt import MIN_FILL, default_f_start, frame_length, plan_frame


def _code(name):
    return next(e for e in available_codes() if e["name"] == name)


@pytest.mark.parametrize("n", [2**14, 2**16, 2**18])
@pytest.mark.parametrize("q", [0.025, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09])
def test_frame_length_is_the_longest_frame_a_code_takes_by_shortening_alone(n, q):
    """The plan of a frame_length frame does not puncture and starts at f_start; one bit more and
    the same code could no longer reach f_start without puncturing; no code of that length
    gives a longer shortening-only frame."""
    L = frame_length(q, n)
    plan = plan_frame(L, q)
    e = _code(plan.code)
    fs = default_f_start(n, e["design_rate"])
    h = float(binary_entropy(q))
    assert plan.n == n and plan.n_punct == 0 and plan.n_short == n - L
    assert MIN_FILL * n <= L <= n
    assert plan.m / (L * h) >= fs > plan.m / ((L + 1) * h)
    for other in available_codes():
        if other["n"] == n:
            L2 = int(other["m"] / (default_f_start(n, other["design_rate"]) * h))
            assert not (L < L2 <= n)


@pytest.mark.parametrize("n", [2**16, 2**18])
def test_frame_length_punctures_the_least_where_shortening_cannot_reach(n):
    """Below the highest-rate code's range (Q = 1.5 %: R 0.85 discloses too much even
    unshortened) the whole codeword is used with the least puncturing that reaches f_start,
    within the code's untainted positions."""
    L = frame_length(0.015, n)
    plan = plan_frame(L, 0.015)
    assert plan.code.startswith("elk2009-r0.85")
    assert plan.n_punct > 0 and plan.n_short <= 1 and plan.n_key + plan.n_punct + plan.n_short == n
    assert plan.n_punct <= 0.1 * n
    assert plan.efficiency_start(0.015) == pytest.approx(default_f_start(n, 0.85), abs=1e-3)


@settings(max_examples=60, deadline=None)
@given(q=st.floats(0.0125, 0.11), n=st.sampled_from([2**14, 2**16, 2**18]))
def test_frame_length_plans_start_at_f_start_in_that_code_length(q, n):
    """For any QBER the codes of a length cover, the frame fits that length and its plan starts
    at the length's f_start (shortening only, or the least puncturing where shortening cannot)."""
    try:
        L = frame_length(q, n)
    except InputError:
        assert n == 2**18 and q < 0.015  # below the 2^18 R 0.85 code's range
        return
    plan = plan_frame(L, q)
    assert plan.n == n and MIN_FILL * n <= L <= n
    fs = default_f_start(n, _code(plan.code)["design_rate"])
    assert fs <= plan.efficiency_start(q) < fs + 2e-3
    assert plan.n_punct == 0 or plan.n_short <= 1


def test_frame_length_bad_inputs():
    with pytest.raises(InputError, match="no shipped LDPC code has this length"):
        frame_length(0.05, 1000)
    with pytest.raises(InputError, match=r"\(0, 0.5\)"):
        frame_length(0.6, 2**16)
    with pytest.raises(InputError, match="no shipped LDPC code of length 262144"):
        frame_length(0.005, 2**18)  # the R 0.85 code discloses too much even unshortened


def test_shortened_only_frames_leak_the_syndrome_and_the_revealed_bits():
    """p = 0 frames with Bob's reliability reveals: the leak is m + revealed, recounted from the
    recorded messages; the frames reconcile. The true error rate is above the planned one so
    that blind rounds happen."""
    q_plan = 0.03
    L = frame_length(q_plan, 2**14)
    rng = np.random.default_rng(11)
    a = rng.integers(0, 2, (6, L), dtype=np.uint8)
    b = a ^ (rng.random(a.shape) < 0.033).astype(np.uint8)
    alice = LdpcAlice({i: a[i] for i in range(6)}, sim_seed=3)
    chan = RecordingChannel(Responder(alice.handlers()))
    bob = LdpcBob(seed=3, reveal="hybrid", fallback="drop")
    res = bob.run(chan, np.arange(6, dtype=np.int64), b, q_plan)
    assert res.extra["n_punct"] == 0
    assert np.any(res.extra["adaptive_reveals"]), "no Bob-chosen reveal happened: the test lost its point"
    assert np.all(res.success) and np.array_equal(res.bits, a)
    want = _disclosed(chan.log, res.extra["max_rounds"], chosen="reliability")
    assert res.leaked_bits.tolist() == want.tolist()
    assert np.all(res.leaked_bits == res.extra["m"] + res.extra["revealed"])
