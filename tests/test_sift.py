"""Sifting: kernels vs plain-loop oracles, the two-party protocol, bad inputs."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from oracles.sift import DEFAULT_MAP, detections_oracle, match_oracle, synth_bbm92
from qkdpost.channel import LoopbackChannel, Responder
from qkdpost.errors import AlignmentError, ConfigError, InputError, ProtocolError
from qkdpost.io.model import StreamInfo, iter_arrays
from qkdpost.sift import (
    AliceSift,
    BobSift,
    SiftConfig,
    channel_lut,
    condition,
    match,
    seeded_bits,
    sift_streams,
)
from qkdpost.sift import _kernels as K

INFO = StreamInfo(tick_s=1e-12, channel_map=DEFAULT_MAP)


def zeros(n):
    return np.zeros(n, np.uint8)


# --------------------------------------------------------------------------- conditioning


clicks = st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 5)), max_size=120)


@settings(max_examples=200, deadline=None)
@given(clicks, st.integers(0, 200), st.integers(0, 400), st.integers(1, 7))
def test_condition_matches_oracle_in_any_chunking(events, mc, dead, n_chunks):
    """Kernel (fed in chunks) == plain loop on the whole stream; channels 4, 5 carry no key."""
    events = sorted(events)
    t = np.array([e[0] for e in events], np.int64)
    ch = np.array([e[1] for e in events], np.uint8)
    cmap = {0: "H", 1: "V", 2: "D", 3: "A", 4: "sync"}
    ref_t, ref_basis, ref_bit, ref_flag, ref_dead = detections_oracle(t, ch, cmap, dead, mc)

    lut = channel_lut(cmap)
    state = np.zeros(5, np.int64)
    counts = np.zeros(5, np.int64)
    outs = []
    cuts = np.linspace(0, len(t), n_chunks + 1).astype(int)
    for a, b in zip(cuts[:-1], cuts[1:]):
        n = b - a
        ot, ob, obit, of = np.empty(n, np.int64), zeros(n), zeros(n), zeros(n)
        k = K.condition_clicks(t[a:b], ch[a:b], lut, dead, mc, state, ot, ob, obit, of, counts)
        outs.append((ot[:k], ob[:k], obit[:k], of[:k]))
    if state[0]:
        outs.append((np.array([state[1]]), np.array([state[2]], np.uint8), np.array([state[3]], np.uint8),
                     np.array([state[4]], np.uint8)))
    got = [np.concatenate([o[i] for o in outs]) if outs else np.empty(0) for i in range(4)]
    np.testing.assert_array_equal(got[0], ref_t)
    np.testing.assert_array_equal(got[1], ref_basis)
    np.testing.assert_array_equal(got[2], ref_bit)
    np.testing.assert_array_equal(got[3], ref_flag)
    assert counts[K.C_DEAD] == ref_dead
    assert counts[K.C_IGNORED] == int(np.count_nonzero(ch >= 4))
    assert counts[K.C_MULTI_SAME] == int(np.count_nonzero(ref_flag == 1))
    assert counts[K.C_MULTI_CROSS] == int(np.count_nonzero(ref_flag == 2))


def test_condition_known_answers():
    # H at 0, V at 5 (same basis double click), D at 100, A at 102 and H at 103 (cross basis),
    # V at 150 lost to a 100-tick dead time after 100, sync at 300, A at 400
    t = np.array([0, 5, 100, 102, 103, 150, 300, 400], np.int64)
    ch = np.array([0, 1, 2, 3, 0, 1, 4, 3], np.uint8)
    d, counts = condition(t, ch, {0: "H", 1: "V", 2: "D", 3: "A", 4: "sync"}, tick_s=1e-12,
                          multi_click_window_ps=10, dead_time_ps=100, random_bits=lambda n: np.ones(n, np.uint8))
    np.testing.assert_array_equal(d.t, [0, 100, 400])
    np.testing.assert_array_equal(d.flag, [1, 2, 0])
    np.testing.assert_array_equal(d.basis, [0, 1, 1])  # cross-basis double click: random basis (here 1)
    np.testing.assert_array_equal(d.bit, [1, 1, 1])
    assert counts == {"clicks": 7, "ignored": 1, "lost_dead_time": 1, "multi_click_same_basis": 1,
                      "multi_click_cross_basis": 1}


def test_double_click_bits_come_from_the_csprng_by_default():
    t = np.arange(0, 4000, 2, dtype=np.int64)  # pairs of clicks 2 ticks apart, H then V
    ch = np.tile(np.array([0, 1], np.uint8), 1000)
    d, _ = condition(t, ch, DEFAULT_MAP, tick_s=1e-12, multi_click_window_ps=2)
    assert np.all(d.flag == 1) and d.t.size == 1000
    assert 400 < int(d.bit.sum()) < 600  # random, not a fixed assignment


# --------------------------------------------------------------------------- coincidences


times = st.lists(st.integers(0, 2000), max_size=80)


@settings(max_examples=300, deadline=None)
@given(times, times, st.integers(0, 60))
def test_match_matches_oracle(a, b, window):
    ta = np.sort(np.array(a, np.int64))
    tb = np.sort(np.array(b, np.int64))
    ia, ib = match(ta, tb, window)
    ra, rb = match_oracle(ta, tb, window)
    np.testing.assert_array_equal(ia, ra)
    np.testing.assert_array_equal(ib, rb)
    assert len(set(ib.tolist())) == ib.size  # one to one
    assert np.all(np.abs(tb[ib] - ta[ia]) <= window)


def test_match_edges():
    e = np.empty(0, np.int64)
    assert match(e, e, 5)[0].size == 0
    assert match(np.array([7]), e, 5)[0].size == 0
    ia, ib = match(np.array([10]), np.array([4, 15, 16]), 5)  # tie 5 vs 5: the earlier
    assert ia.tolist() == [0] and ib.tolist() == [1] or ib.tolist() == [0]
    assert match_oracle(np.array([10]), np.array([4, 15, 16]), 5)[1].tolist() == ib.tolist()
    with pytest.raises(InputError, match="sorted"):
        match(np.array([3, 1]), np.array([1]), 1)
    with pytest.raises(InputError, match="window"):
        match(np.array([1]), np.array([1]), -1)


def test_classify_pairs_against_numpy():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, 1000).astype(np.uint8)
    b = rng.integers(0, 2, 1000).astype(np.uint8)
    for key in (0, 1):
        cls = np.empty(1000, np.uint8)
        counts = np.zeros(3, np.int64)
        K.classify_pairs(a, b, np.uint8(key), cls, counts)
        ref = np.where(a != b, 2, np.where(a == key, 0, 1))
        np.testing.assert_array_equal(cls, ref)
        np.testing.assert_array_equal(counts, np.bincount(ref, minlength=3))


# --------------------------------------------------------------------------- two-party protocol


def _run(link, cfg=None, chunk=1 << 16, **kw):
    ia = StreamInfo(tick_s=link.tick_a_s, party="alice", channel_map=DEFAULT_MAP)
    ib = StreamInfo(tick_s=link.tick_b_s, party="bob", channel_map=DEFAULT_MAP)
    return sift_streams(ia, iter_arrays(link.t_a, link.ch_a, chunk), ib, iter_arrays(link.t_b, link.ch_b, chunk),
                        cfg or SiftConfig(), random_bits_alice=seeded_bits(1), random_bits_bob=seeded_bits(2), **kw)


@pytest.fixture(scope="module")
def clean_link():
    # no background, no bit errors: every pair both see must be found, keys identical
    return synth_bbm92(duration_s=2.0, pair_rate=100e3, bg_rate=0.0, qber=0.0, offset_s=-0.2, freq=60e-6,
                       jitter_s=100e-12, seed=7)


def test_clean_link_gives_identical_keys_and_all_pairs(clean_link):
    run = _run(clean_link)
    st_a, st_b = run.alice_stats, run.bob_stats
    # the only errors: two pairs within one multi-click window (random bit) -- a handful
    multi = sum(v for k, v in st_a.conditioning.items() if k.startswith("multi")) + sum(
        v for k, v in st_b.conditioning.items() if k.startswith("multi"))
    n_err = int(np.count_nonzero(run.alice.key != run.bob.key)) + run.bob.test_errors
    assert n_err <= multi + 2 and multi < 40
    assert run.alice.test_errors == run.bob.test_errors == int(np.count_nonzero(run.alice.test != run.bob.test))
    assert st_a.pairs == st_b.pairs
    # 3-sigma window: ~99.7 % of the true pairs
    assert 0.99 * clean_link.n_pairs_both <= st_b.pairs <= clean_link.n_pairs_both
    assert st_b.key_pairs + st_b.test_pairs + st_b.basis_mismatch == st_b.pairs
    assert abs(st_b.key_pairs / st_b.pairs - 0.25) < 0.01
    # traffic: one hello, then one round trip per window (+ the last bases, + a few
    # polls when Bob asked before Alice's data reached the window end)
    assert run.channel["by_kind"]["sift.hello"]["round_trips"] == 1
    assert 1 + st_b.windows + 1 <= run.channel["round_trips"] <= 1 + st_b.windows + 1 + 5


def test_keys_symmetric_and_errors_where_physics_put_them():
    link = synth_bbm92(duration_s=2.0, pair_rate=150e3, bg_rate=20e3, qber=0.04, offset_s=0.33, freq=-25e-6, seed=8)
    run = _run(link)
    a, b = run.alice, run.bob
    assert a.key.size == b.key.size and a.test.size == b.test.size
    assert a.test_errors == b.test_errors == int(np.count_nonzero(a.test != b.test))
    key_err = np.count_nonzero(a.key != b.key) / a.key.size
    test_err = a.test_errors / a.test.size
    # true same-basis error fraction among pairs is 4 %; accidentals add a little
    for q in (key_err, test_err):
        assert 0.035 < q < 0.05
    rep = run.report()
    assert rep["qber_test"]["lower"] < test_err < rep["qber_test"]["upper"]
    assert abs(rep["alignment"]["offset_s"] - 0.33) < 1e-9


def test_chunk_size_does_not_change_the_result(clean_link):
    r1 = _run(clean_link, chunk=1 << 12)
    r2 = _run(clean_link, chunk=1 << 20)
    np.testing.assert_array_equal(r1.bob.key, r2.bob.key)
    np.testing.assert_array_equal(r1.alice.key, r2.alice.key)


def test_anticorrelated_source_with_bob_flip():
    link = synth_bbm92(duration_s=2.0, bg_rate=0.0, qber=0.0, seed=9)
    link.ch_b = link.ch_b ^ 1  # singlet-like: Bob's bits inverted in both bases
    run = _run(link, SiftConfig(bob_flip=("Z", "X")))
    assert np.count_nonzero(run.alice.key != run.bob.key) < 0.005 * run.alice.key.size
    run = _run(link)
    assert np.count_nonzero(run.alice.key != run.bob.key) > 0.995 * run.alice.key.size


def test_key_basis_x():
    link = synth_bbm92(duration_s=2.0, bg_rate=0.0, qber=0.0, seed=10)
    rz = _run(link)
    rx = _run(link, SiftConfig(key_basis="X"))
    assert rx.bob_stats.key_pairs == rz.bob_stats.test_pairs
    np.testing.assert_array_equal(rx.bob.key, rz.bob.test)


def test_streaming_alice_late_bob_early(clean_link):
    """Bob has all his data long before Alice's arrives: Bob waits, then sifts as she feeds."""
    link = clean_link
    alice = AliceSift(StreamInfo(tick_s=1e-12, channel_map=DEFAULT_MAP), SiftConfig(), random_bits=seeded_bits(1))
    bob = BobSift(StreamInfo(tick_s=1e-12, channel_map=DEFAULT_MAP), SiftConfig(), random_bits=seeded_bits(2))
    chan = LoopbackChannel(Responder(alice.handlers()))
    bob.feed(link.t_b, link.ch_b)
    bob.finish()
    assert not bob.step(chan)  # Alice has nothing yet
    keys_a, keys_b = [], []
    for c in iter_arrays(link.t_a, link.ch_a, 1 << 14):
        alice.feed(c.t, c.ch)
        bob.step(chan)
        keys_a.append(alice.take().key)
        keys_b.append(bob.take().key)
    alice.finish()
    bob.run(chan)
    keys_a.append(alice.take().key)
    keys_b.append(bob.take().key)
    ka, kb = np.concatenate(keys_a), np.concatenate(keys_b)
    assert ka.size == kb.size > 0 and np.count_nonzero(ka != kb) < 0.005 * ka.size
    assert bob.done


def test_alice_never_sends_bits_before_the_bases():
    """Her replies carry times, bases and test-basis bits only; count her bits disclosed."""
    link = synth_bbm92(duration_s=2.0, seed=12)
    seen = []

    class Spy(LoopbackChannel):
        def request(self, kind, body):
            reply = super().request(kind, body)
            seen.append((kind, sorted(body), sorted(reply)))
            return reply

    run = _run(link, channel_factory=Spy)
    fields = set()
    for kind, req, rep in seen:
        fields.update(rep)
    assert fields <= {"tick_s", "t_first", "has_data", "avail", "finished", "key_basis", "wid_new", "hi_eff",
                      "done", "n", "t0", "dt", "basis", "test_bits", "ready"}
    assert run.alice.test.size == run.alice_stats.test_pairs


def test_unrelated_streams_fail_with_alignment_error():
    a = synth_bbm92(duration_s=2.0, seed=13)
    b = synth_bbm92(duration_s=2.0, seed=14)
    a.t_b, a.ch_b = b.t_b, b.ch_b
    with pytest.raises(AlignmentError):
        _run(a)


def test_known_alignment_skips_acquisition(clean_link):
    from qkdpost.align import ClockModel

    m = ClockModel.from_offset(-0.2, 60e-6, 1e-12, 1e-12)
    run = _run(clean_link, SiftConfig(coincidence_window_ps=400), alignment=m)
    assert run.alignment is None
    assert run.bob.key.size > 0 and np.count_nonzero(run.alice.key != run.bob.key) < 0.005 * run.bob.key.size


# --------------------------------------------------------------------------- bad inputs


def test_config_errors():
    with pytest.raises(ConfigError, match="key_basis"):
        SiftConfig(key_basis="Y")
    with pytest.raises(ConfigError, match="bob_flip"):
        SiftConfig(bob_flip=("Q",))
    with pytest.raises(ConfigError, match="window_s"):
        SiftConfig(window_s=0)
    with pytest.raises(ConfigError, match="coincidence_window_ps"):
        SiftConfig(coincidence_window_ps=-1)
    with pytest.raises(ConfigError, match="channel_map"):
        AliceSift(StreamInfo(tick_s=1e-12, channel_map={0: "sync"}))
    with pytest.raises(ConfigError, match="slot"):
        BobSift(StreamInfo(tick_s=1e-12, kind="slots", slot_period_ticks=10, channel_map=DEFAULT_MAP))


def test_decoy_topology_on_timestamp_streams_is_refused_clearly():
    link = synth_bbm92(duration_s=0.1, seed=15)
    with pytest.raises(ConfigError, match="slot log"):
        _run(link, SiftConfig(topology="decoy"))


def test_feed_rejects_unsorted_and_wrong_dtypes():
    alice = AliceSift(INFO)
    with pytest.raises(InputError, match="backwards"):
        alice.feed(np.array([5, 3], np.int64), np.array([0, 1], np.uint8))
    alice.feed(np.array([5, 9], np.int64), np.array([0, 1], np.uint8))
    with pytest.raises(InputError, match="backwards"):
        alice.feed(np.array([7], np.int64), np.array([0], np.uint8))
    with pytest.raises(InputError, match="int64"):
        alice.feed(np.array([10.0]), np.array([0], np.uint8))
    with pytest.raises(InputError, match="equal length"):
        alice.feed(np.array([10], np.int64), np.array([0, 1], np.uint8))
    alice.finish()
    with pytest.raises(InputError, match="finish"):
        alice.feed(np.array([11], np.int64), np.array([0], np.uint8))


def test_read_only_chunks_are_accepted():
    t = np.arange(0, 100, 10, dtype=np.int64)
    ch = (np.arange(10) % 4).astype(np.uint8)
    t.flags.writeable = False
    ch.flags.writeable = False
    alice = AliceSift(INFO)
    alice.feed(t, ch)


def test_every_sift_kernel_takes_read_only_inputs_like_writable_ones():
    """Memory-mapped chunks are read-only; the kernels' input arrays are typed read-only (no copy needed)."""
    from qkdpost.sift import _kernels as K

    def ro(a):
        a = a.copy()
        a.flags.writeable = False
        return a

    rng = np.random.default_rng(3)
    t = np.cumsum(rng.integers(1, 50, 400)).astype(np.int64)
    ch = rng.integers(0, 5, 400).astype(np.uint8)
    lut = np.full(256, 255, np.uint8)
    lut[:4] = np.arange(4, dtype=np.uint8)
    outs = []
    for conv in (lambda a: a, ro):
        st, cnt = np.zeros(5, np.int64), np.zeros(5, np.int64)
        ot, ob, obit, of = np.empty(400, np.int64), *(np.empty(400, np.uint8) for _ in range(3))
        k = K.condition_clicks(conv(t), conv(ch), conv(lut), 5, 2, st, ot, ob, obit, of, cnt)
        used, ia, ib = np.zeros(400, np.uint8), np.empty(400, np.int64), np.empty(400, np.int64)
        m = K.match_coincidences(conv(t[::2]), conv(t[1::2]), 30, used, ia, ib)
        cls, cc = np.empty(200, np.uint8), np.zeros(3, np.int64)
        K.classify_pairs(conv(ch[:200] & 1), conv(ch[200:] & 1), np.uint8(0), cls, cc)
        slots = np.empty(400, np.int64)
        K.map_slots(conv(t), conv(t[::40]), conv(np.arange(10, dtype=np.int64) * 40), 0.0, slots)
        score, n = np.zeros((2, 3)), np.zeros((2, 3), np.int64)
        K.score_slot_offsets(conv(np.arange(50, dtype=np.int64)), 0, conv(ch % 3), np.array([0.5, 0.1, 0.0]),
                             8, 0, 1, -1, 1, score, n)
        outs.append((k, ot[:k], ob[:k], obit[:k], of[:k], cnt, m, ia[:m], ib[:m], cls, cc, slots, score, n))
    for x, y in zip(*outs):
        np.testing.assert_array_equal(x, y)


def test_alice_rejects_malformed_requests():
    alice = AliceSift(INFO)
    alice.feed(np.arange(0, 1_000_000, 10_000, dtype=np.int64), np.zeros(100, np.uint8))
    h = alice.handlers()
    with pytest.raises(ProtocolError, match="version"):
        h["sift.hello"]({"version": 99})
    with pytest.raises(ProtocolError, match="unknown"):
        h["sift.step"]({"wid": 5, "ia": np.zeros(0, np.uint32), "basis": np.zeros(0, np.uint8),
                        "test_bits": np.zeros(0, np.uint8), "lo": None})
    assert h["sift.step"]({"wid": None, "lo": 0, "hi": 5_000_000})["ready"] is False  # not all there yet
    rep = h["sift.step"]({"wid": None, "lo": 0, "hi": 500_000})
    assert rep["n"] == 50
    with pytest.raises(ProtocolError, match="increasing"):
        h["sift.step"]({"wid": rep["wid_new"], "ia": np.array([3, 2], np.uint32),
                        "basis": np.zeros(1, np.uint8), "test_bits": np.zeros(0, np.uint8), "lo": None})
    rep = h["sift.step"]({"wid": None, "lo": 500_000, "hi": 900_000})
    with pytest.raises(ProtocolError, match="packed"):
        h["sift.step"]({"wid": rep["wid_new"], "ia": np.array([1, 2], np.uint32),
                        "basis": np.zeros(3, np.uint8), "test_bits": np.zeros(0, np.uint8), "lo": None})
    with pytest.raises(ProtocolError, match="reversed"):
        h["sift.step"]({"wid": None, "lo": 900_000, "hi": 100})


# --------------------------------------------------------------------------- protocol vs oracle


events = st.lists(st.tuples(st.integers(0, 20_000), st.integers(0, 3)), min_size=0, max_size=60)


@settings(max_examples=60, deadline=None)
@given(events, events, st.integers(1, 40), st.sampled_from(["Z", "X"]))
def test_protocol_equals_plain_loop_sifting(ev_a, ev_b, window, key_basis):
    """Both parties over the channel end with exactly the bits of a plain-loop sift of both streams."""
    from oracles.sift import detections_oracle

    from qkdpost.align import ClockModel

    def arrays(ev):
        ev = sorted(ev)
        return np.array([e[0] for e in ev], np.int64), np.array([e[1] for e in ev], np.uint8)

    ta, cha = arrays(ev_a)
    tb, chb = arrays(ev_b)
    zeros = lambda n: np.zeros(n, np.uint8)  # noqa: E731
    cfg = SiftConfig(coincidence_window_ps=window, multi_click_window_ps=1, key_basis=key_basis)
    info = StreamInfo(tick_s=1e-12, channel_map=DEFAULT_MAP)
    alice = AliceSift(info, cfg, random_bits=zeros)
    bob = BobSift(info, cfg, random_bits=zeros, alignment=ClockModel.from_offset(0.0, 0.0, 1e-12, 1e-12))
    chan = LoopbackChannel(Responder(alice.handlers()))
    alice.feed(ta, cha)
    bob.feed(tb, chb)
    alice.finish()
    bob.finish()
    if ta.size == 0:
        with pytest.raises(AlignmentError, match="no detections"):
            bob.run(chan)
        return
    bob.run(chan)
    got_a, got_b = alice.take(), bob.take()

    # oracle: condition, pair, keep equal-basis bits in Alice's order
    a_t, a_basis, a_bit, a_flag, _ = detections_oracle(ta, cha, DEFAULT_MAP, 0, 1)
    b_t, b_basis, b_bit, b_flag, _ = detections_oracle(tb, chb, DEFAULT_MAP, 0, 1)
    for basis, bit, flag in ((a_basis, a_bit, a_flag), (b_basis, b_bit, b_flag)):
        basis[flag == 2] = 0  # the zero random source
        bit[flag > 0] = 0
    ia, ib = match_oracle(a_t, b_t, window)
    kb = 0 if key_basis == "Z" else 1
    same = a_basis[ia] == b_basis[ib]
    key = same & (a_basis[ia] == kb)
    test = same & (a_basis[ia] != kb)
    np.testing.assert_array_equal(got_a.key, a_bit[ia][key])
    np.testing.assert_array_equal(got_b.key, b_bit[ib][key])
    np.testing.assert_array_equal(got_a.test, a_bit[ia][test])
    np.testing.assert_array_equal(got_b.test, b_bit[ib][test])
    assert got_a.test_errors == got_b.test_errors == int(np.count_nonzero(a_bit[ia][test] != b_bit[ib][test]))
    assert alice.stats.pairs == bob.stats.pairs == ia.size


def test_sift_follows_a_drifting_clock_from_the_simulator():
    from qkdpost.simulate import BBM92Config, generate

    cfg = BBM92Config(duration_s=3.0, pair_rate_hz=2e6, bob_offset_s=0.4, bob_freq_ppm=-95.0,
                      bob_drift_ppm_per_s=0.05)
    link = generate(cfg, seed=21)
    run = sift_streams(link.alice.info, iter_arrays(link.alice.t, link.alice.ch, 1 << 18), link.bob.info,
                       iter_arrays(link.bob.t, link.bob.ch, 1 << 18), SiftConfig(),
                       random_bits_alice=seeded_bits(1), random_bits_bob=seeded_bits(2))
    z = link.truth["coincidences"]["Z"]
    # a 3-sigma window keeps ~99.7 % of the true pairs; a lost lock would lose most of them
    assert run.bob_stats.key_pairs > 0.98 * z["sifted"]
    assert abs(np.mean(run.alice.key != run.bob.key) - z["qber"]) < 0.005
    f_end = run.model.freq_ppm
    assert abs(f_end - (-95.0 + 0.05 * 3.0)) < 0.01  # the servo followed the ramp to the end


@pytest.mark.parametrize("tick_a, tick_b", [(125e-12, 1e-12), (1 / 256 * 1e-9, 125e-12)])
def test_sift_with_different_tick_lengths(tick_a, tick_b):
    """Alice and Bob with different time taggers (qcrypto 1/8 ns, 1 ps, 1/256 ns)."""
    link = synth_bbm92(duration_s=2.5, offset_s=-0.33, freq=-77e-6, tick_a_s=tick_a, tick_b_s=tick_b, qber=0.03,
                       seed=3)
    run = _run(link)
    # a 3-sigma window keeps ~99.7 % of the pairs both saw (accidentals add a few)
    assert run.bob_stats.pairs > 0.99 * link.n_pairs_both
    assert abs(np.mean(run.alice.key != run.bob.key) - 0.03) < 0.006
    assert abs(run.model.freq - (-77e-6)) < 1e-9


def test_seeded_bits_unbiased_at_every_position():
    # every bit position of the underlying 64-bit stride must be fair (a 63-bit
    # word source left position 56 of each 64 at 0); 4000 draws per position,
    # so 0.4..0.6 is > 12 sigma wide
    bits = seeded_bits(7)(64 * 4000).reshape(-1, 64)
    m = bits.mean(axis=0)
    assert m.min() > 0.4 and m.max() < 0.6, m
    # the stream is the same however it is cut into calls
    draw = seeded_bits(7)
    parts = np.concatenate([draw(k) for k in (1, 63, 1000, 7000, 64 * 4000 - 8064)])
    assert np.array_equal(parts, bits.ravel())


@pytest.mark.parametrize("tick_s", [0.0, -1e-12, float("nan"), float("inf")])
def test_condition_rejects_bad_tick(tick_s):
    t = np.arange(5, dtype=np.int64)
    ch = np.zeros(5, np.uint8)
    with pytest.raises(ConfigError, match="tick_s"):
        condition(t, ch, DEFAULT_MAP, tick_s=tick_s, multi_click_window_ps=100.0)


@pytest.mark.parametrize("window", [-1.0, float("nan")])
def test_condition_rejects_bad_windows(window):
    t = np.arange(5, dtype=np.int64)
    ch = np.zeros(5, np.uint8)
    with pytest.raises(ConfigError, match="multi_click_window_ps"):
        condition(t, ch, DEFAULT_MAP, tick_s=1e-12, multi_click_window_ps=window)
    with pytest.raises(ConfigError, match="dead_time_ps"):
        condition(t, ch, DEFAULT_MAP, tick_s=1e-12, multi_click_window_ps=1.0, dead_time_ps=window)


@pytest.mark.parametrize("chan", [-1, 256, "0"])
def test_channel_lut_rejects_out_of_range_channels(chan):
    # -1 used to land silently on channel 255
    with pytest.raises(ConfigError, match="0..255"):
        channel_lut({chan: "H", 1: "V"})


def test_reprs_never_show_key_bits():
    from qkdpost.sift import DecoyBlock, Detections, SiftBlock

    key = np.array([1, 0, 1, 1, 0, 0, 1, 0] * 4, np.uint8)
    pattern = "1, 0, 1, 1"
    for obj in (SiftBlock(key, key[:8], 0), DecoyBlock(key, key * 0, key[:8], key[:8] * 0, 0),
                Detections(np.arange(32, dtype=np.int64), key, key, key * 0)):
        text = repr(obj)
        assert pattern not in text and "array" not in text, text
    assert "32 bits" in repr(SiftBlock(key, key[:8], 0))


def test_match_rejects_float_times_and_window():
    # 10.9 vs 10.0 used to be truncated to the same tick and paired with window 0
    with pytest.raises(InputError, match="integer"):
        match(np.array([0.4, 10.9]), np.array([0, 10]), 0)
    with pytest.raises(InputError, match="integer"):
        match(np.array([0, 10]), np.array([0.0, 10.0]), 0)
    with pytest.raises(InputError, match="window"):
        match(np.array([0, 10]), np.array([0, 10]), 0.9)
    assert match(np.array([0, 10]), np.array([0, 10]), np.int64(0))[0].tolist() == [0, 1]


def test_alice_rejects_float_pair_indices():
    alice = AliceSift(INFO)
    alice.feed(np.arange(0, 1_000_000, 10_000, dtype=np.int64), np.zeros(100, np.uint8))
    h = alice.handlers()
    rep = h["sift.step"]({"wid": None, "lo": 0, "hi": 500_000})
    with pytest.raises(ProtocolError, match="integer"):
        h["sift.step"]({"wid": rep["wid_new"], "ia": np.array([0.5, 1.7]),
                        "basis": np.zeros(1, np.uint8), "test_bits": np.zeros(0, np.uint8), "lo": None})


def test_peer_times_that_overflow_int64_are_a_protocol_error():
    from qkdpost.errors import ProtocolError
    from qkdpost.sift import _decode_times

    big = np.iinfo(np.int64).max
    ok = _decode_times({"n": 3, "t0": 5, "dt": np.array([1, 2], np.uint64)})
    np.testing.assert_array_equal(ok, [5, 6, 8])
    with pytest.raises(ProtocolError, match="overflow"):
        _decode_times({"n": 3, "t0": big - 10, "dt": np.array([5, 6], np.uint64)})
    with pytest.raises(ProtocolError, match="overflow"):
        _decode_times({"n": 3, "t0": 0, "dt": np.array([big, big], np.uint64)})
    with pytest.raises(ProtocolError, match="does not fit"):
        _decode_times({"n": 2, "t0": 0, "dt": np.array([2**63 + 1], np.uint64)})
