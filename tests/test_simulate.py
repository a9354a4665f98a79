"""Simulator kernels against the oracles, the public API, config errors, files and CLI."""

from __future__ import annotations

import json
import math
import os
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkdpost.errors import ConfigError, InputError
from qkdpost.simulate import (
    BBM92Config,
    DecoyConfig,
    DetectorConfig,
    generate,
    joint_table,
    simulate,
    write_link,
)
from qkdpost.simulate import _kernels as K
from qkdpost.simulate.link import _decoy_table

from oracles import simulate as O

# ---------------------------------------------------------------------------
# kernels vs oracles
# ---------------------------------------------------------------------------


def test_splitmix64_known_answer_and_kernel_match():
    # Provenance: SplitMix64 from state 0 (Vigna, prng.di.unimi.it/splitmix64.c)
    # gives 0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F first.
    o = O.SplitMix64(0)
    assert [o.next_u64() for _ in range(3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    rs = np.array([987654321], np.uint64)
    o = O.SplitMix64(987654321)
    got = [K.u01(rs) for _ in range(200)]
    want = [o.u01() for _ in range(200)]
    assert got == want
    assert int(rs[0]) == o.state


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1e-3, allow_nan=False), max_size=60), st.integers(0, 2**32))
def test_insertion_sort_matches_stable_sort(ts, seed):
    t = np.array(ts, dtype=float)
    key = np.arange(t.size, dtype=np.int64) * 8 + (seed % 5)
    want_t, want_k = O.sort_events(list(t), list(key))
    K.insertion_sort(t, key)
    assert list(t) == want_t and list(key) == want_k


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 20), max_size=40), st.lists(st.integers(0, 20), max_size=40))
def test_merge_sorted_is_stable_merge(a, b):
    t1 = np.sort(np.array(a, float))
    t2 = np.sort(np.array(b, float))
    k1 = np.arange(t1.size, dtype=np.int64)
    k2 = 1000 + np.arange(t2.size, dtype=np.int64)
    ot = np.empty(t1.size + t2.size)
    ok = np.empty(t1.size + t2.size, np.int64)
    K.merge_sorted(t1, k1, t2, k2, ot, ok)
    want_t, want_k = O.sort_events(list(t1) + list(t2), list(k1) + list(k2))
    assert list(ot) == want_t and list(ok) == want_k


def _state(n_det, last=None):
    s = np.full((n_det, 1 + K.MAX_PENDING), np.inf)
    s[:, 0] = -np.inf if last is None else last
    return s


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(0, 300),
    seed=st.integers(0, 2**63),
    dead=st.floats(0, 2e-6),
    p_ap=st.sampled_from([0.0, 0.05, 0.3]),
    cutoff_frac=st.floats(0.3, 1.2),
    cap=st.integers(1, 400),
)
def test_dead_time_matches_event_driven_oracle(n, seed, dead, p_ap, cutoff_frac, cap):
    rng = np.random.default_rng(seed % 2**32)
    t = np.sort(rng.random(n) * 1e-4)
    det = rng.integers(0, 4, n)
    lab = np.where(rng.random(n) < 0.2, -1, np.arange(n))
    key = (lab.astype(np.int64) << 3) | det
    det_par = np.array([[dead, p_ap, 3e-7]] * 4)
    cutoff = 1e-4 * cutoff_frac
    o = O.SplitMix64(seed)
    want_t, want_k, lost, last, pend = O.dead_time(list(t), list(key), cutoff, det_par.tolist(),
                                                    _state(4).tolist(), o, K.MAX_PENDING)
    # kernel, called repeatedly with a small output buffer (resumption path)
    state = _state(4)
    ctr = np.zeros((4, 8), np.int64)
    rs = np.array([seed], np.uint64)
    got_t, got_k = [], []
    start = 0
    while True:
        ot = np.empty(cap)
        ok = np.empty(cap, np.int64)
        n_o, used = K.dead_time(t[start:], key[start:], cutoff, det_par, state, ot, ok, ctr, rs)
        got_t += list(ot[:n_o])
        got_k += list(ok[:n_o])
        start += used
        if n_o < cap:
            break
    assert got_t == want_t and got_k == want_k
    assert list(ctr[:, K.CTR_LOST]) == lost
    assert list(state[:, 0]) == last
    assert sorted((x, d) for d in range(4) for x in state[d, 1:] if x != np.inf) == pend
    assert int(ctr[:, K.CTR_REGISTERED].sum()) == len(want_t)
    labs = np.array(want_k, np.int64) >> 3
    assert int(ctr[:, K.CTR_DARK].sum()) == int(np.sum(labs == -1))
    assert int(ctr[:, K.CTR_AFTERPULSE].sum()) == int(np.sum(labs == -2))
    # unprocessed candidates are exactly those at or after the cutoff
    assert np.all(t[start:] >= cutoff) and np.all(t[:start] < cutoff)


def test_dead_time_gaps_and_nonparalysable():
    # three clicks 40 ns apart on one detector with 50 ns dead time: the second
    # is lost and does NOT extend the dead time, so the third registers (80 ns
    # after the first); a paralysable detector would have lost it.
    t = np.array([0.0, 40e-9, 80e-9])
    key = np.array([0, 8, 16], np.int64)
    state = _state(1)
    ot, ok = np.empty(4), np.empty(4, np.int64)
    ctr = np.zeros((1, 8), np.int64)
    n_o, used = K.dead_time(t, key, 1.0, np.array([[50e-9, 0.0, 1e-7]]), state, ot, ok, ctr,
                            np.array([1], np.uint64))
    assert (n_o, used) == (2, 3) and list(ot[:2]) == [0.0, 80e-9] and ctr[0, K.CTR_LOST] == 1


@settings(max_examples=60, deadline=None)
@given(
    xs=st.lists(st.floats(-1e-5, 0.2, allow_nan=False), min_size=1, max_size=30),
    k=st.integers(0, 5000),
    off=st.floats(-0.5, 0.5),
    ppm=st.floats(-100, 100),
    drift=st.floats(-1e-2, 1e-2),
    tick=st.sampled_from([1e-12, 125e-12, 1e-9, 4e-12]),
)
def test_to_ticks_matches_exact_rational_clock(xs, k, off, ppm, drift, tick):
    from qkdpost.simulate.link import _Clock

    clk = _Clock(tick, off, ppm, drift)
    a = Fraction(k * 1000) * Fraction(tick)
    t = np.array(xs)
    got = clk.convert(t, a)
    f, d = Fraction(ppm * 1e-6), Fraction(drift * 1e-6)
    want = [O.to_ticks_exact(x, a, Fraction(tick), Fraction(off), f, d) for x in xs]
    # float64 evaluation of the local part may land on the other side of a bin
    # edge only when the exact value is within ~1e-5 ticks of it
    assert all(abs(g - w) <= 1 for g, w in zip(got, want))
    assert np.mean(np.array(got) == np.array(want)) >= 0.9 or len(xs) < 10


def test_to_ticks_exact_on_many_values():
    from qkdpost.simulate.link import _Clock

    rng = np.random.default_rng(5)
    clk = _Clock(1e-12, -0.31, 73.5, 0.02)
    a = Fraction(3) * Fraction(1, 7)
    x = rng.random(2000) * 0.05
    got = clk.convert(x, a)
    want = np.array([O.to_ticks_exact(v, a, Fraction(1e-12), Fraction(-0.31), Fraction(73.5e-6), Fraction(0.02e-6))
                     for v in x])
    assert np.abs(got - want).max() <= 1
    assert np.mean(got == want) > 0.999


def test_decoy_choices_matches_decoder():
    rng = np.random.default_rng(11)
    x = rng.bit_generator.random_raw(5000)
    thr = np.array([int(0.7 * 2**31), int(0.5 * 2**32), int(0.8 * 2**32)], np.uint64)
    packed = np.empty(x.size, np.uint8)
    counts = np.zeros(16, np.int64)
    K.decoy_choices(x, thr, packed, counts)
    want = [O.decode_slot(int(w), int(thr[0]), int(thr[1]), int(thr[2])) for w in x]
    assert packed.tolist() == want
    assert counts.tolist() == np.bincount(want, minlength=16).tolist()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 3)), max_size=50), st.integers(0, 2**32))
def test_decoy_tally_matches_oracle(clicks, seed):
    clicks.sort(key=lambda c: c[0])
    rng = np.random.default_rng(seed)
    slot = np.array([c[0] for c in clicks], np.int64)
    det = np.array([c[1] for c in clicks], np.int64)
    per_slot_combo = rng.integers(0, 12, 31)
    per_slot_n = rng.integers(0, 6, 31)
    combo = per_slot_combo[slot] if slot.size else slot
    nph = per_slot_n[slot] if slot.size else slot
    tally = np.zeros((16, 4, 5), np.int64)
    K.decoy_tally(slot, det, combo, nph, tally)
    want = O.decoy_tally(slot.tolist(), det.tolist(), combo.tolist(), nph.tolist())
    got = {tuple(int(v) for v in idx): int(tally[idx]) for idx in zip(*np.nonzero(tally))}
    assert got == want


@pytest.mark.parametrize("thermal", [0.0, 1.0])
def test_bbm92_pairs_kernel_matches_replica(thermal):
    cfg = BBM92Config(duration_s=1e-3, p_z_alice=0.3, alice_detectors=DetectorConfig(efficiency=(0.9, 0.5, 0.7, 0.6)))
    P = joint_table(cfg)
    flat = P.ravel().copy()
    flat[0] = 0
    order = np.argsort(-flat, kind="stable")
    order = order[flat[order] > 0]
    cum = np.cumsum(flat[order]) / flat[order].sum()
    cum[-1] = 1.0
    # a large mean per window exercises the multi-pair branch
    prm = np.array([2e-4, 3e6, 0.4, 1e-9, thermal, 17.0])
    out_t = np.empty((2, 4000))
    out_k = np.empty((2, 4000), np.int64)
    n_out = np.zeros(2, np.int64)
    stats = np.zeros(3, np.int64)
    status, pairs = K.bbm92_pairs(prm, cum, order.astype(np.int64), out_t, out_k, n_out, stats, np.array([42], np.uint64))
    assert status == 0
    want, wstats = O.bbm92_pairs(prm.tolist(), cum.tolist(), order.tolist(), O.SplitMix64(42))
    for party in (0, 1):
        w = [(t, k) for p, t, k in want if p == party]
        assert list(zip(out_t[party, : n_out[party]], out_k[party, : n_out[party]])) == w
    assert stats.tolist() == wstats and pairs == wstats[1] and wstats[2] > 0
    # a too-small buffer is reported, not overrun
    small_t = np.empty((2, 3))
    status, _ = K.bbm92_pairs(prm, cum, order.astype(np.int64), small_t, np.empty((2, 3), np.int64), n_out, stats,
                              np.array([42], np.uint64))
    assert status == -1


def test_decoy_photons_kernel_matches_replica():
    cfg = DecoyConfig(loss_db=2.0, intensities=(0.8, 0.3, 0.0), sync_every=97)
    tab = _decoy_table(cfg)
    rng = np.random.default_rng(3)
    packed = np.empty(20000, np.uint8)
    K.decoy_choices(rng.bit_generator.random_raw(packed.size), np.array([2**30, 2**31, 3 * 2**30], np.uint64),
                    packed, np.zeros(16, np.int64))
    pmax = float(tab[:, 6].max())
    prm = np.array([1e-8, pmax, 97.0, 0.0])
    cap = 30000
    ct, ck, sn = np.empty(cap), np.empty(cap, np.int64), np.empty((cap, 2), np.int64)
    ne, ns = K.decoy_photons(packed, 1000, tab, prm, ct, ck, sn, np.array([7], np.uint64))
    ev, wsn = O.decoy_photons(packed.tolist(), 1000, tab.tolist(), 1e-8, pmax, 97, O.SplitMix64(7))
    assert list(zip(ct[:ne], ck[:ne])) == ev
    assert [tuple(r) for r in sn[:ns].tolist()] == wsn
    # sync ticks exactly at global slots that are multiples of 97
    sync_slots = [round(t / 1e-8) + 1000 for t, k in ev if k & 7 == 4]
    assert sync_slots == [s for s in range(1000, 21000) if s % 97 == 0]
    small = K.decoy_photons(packed, 1000, tab, prm, ct[:5], ck[:5], sn[:5], np.array([7], np.uint64))
    assert small == (-1, -1)


def test_joint_table_matches_closed_form():
    cfg = BBM92Config(alice_loss_db=2.0, loss_db=7.5, p_z_alice=0.4, p_z_bob=0.65, misalignment_z=0.03,
                      misalignment_x=0.07, alice_detectors=DetectorConfig(efficiency=(0.5, 0.6, 0.7, 0.8)),
                      bob_detectors=DetectorConfig(efficiency=(0.9, 0.3, 0.45, 0.55)))
    P = joint_table(cfg)
    want = O.joint_table_closed_form(10**-0.2, 10**-0.75, (0.4, 0.6), (0.65, 0.35), (0.03, 0.07),
                                     cfg.alice_detectors.efficiency, cfg.bob_detectors.efficiency)
    np.testing.assert_allclose(P, np.array(want), rtol=1e-12, atol=1e-15)
    assert abs(P.sum() - 1) < 1e-12 and P.min() >= 0


def test_decoy_table_single_photon_detection_probability():
    cfg = DecoyConfig(loss_db=3.0, p_z_bob=0.6, misalignment_z=0.02,
                      bob_detectors=DetectorConfig(efficiency=(0.5, 0.6, 0.7, 0.8)))
    tab = _decoy_table(cfg)
    # Z-prepared bit 0, signal: rho_H = mu * T * p_z_bob * (1 - e) * eta_H, rho_D = mu T (1 - p_z) / 2 eta_D
    mu, T = 0.5, 10**-0.3
    assert tab[0, 0] == pytest.approx(mu * T * 0.6 * 0.98 * 0.5)
    assert tab[0, 1] == pytest.approx(mu * T * 0.6 * 0.02 * 0.6)
    assert tab[0, 2] == pytest.approx(mu * T * 0.4 * 0.5 * 0.7)
    assert tab[0, 6] == pytest.approx(1 - math.exp(-tab[0, :4].sum()))
    assert tab[0, 5] == pytest.approx(mu - tab[0, 4])


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------
SMALL_BBM92 = BBM92Config(duration_s=0.02, pair_rate_hz=2e6)
SMALL_DECOY = DecoyConfig(duration_s=0.01, rep_rate_hz=1e8, loss_db=6.0)


@pytest.mark.parametrize("cfg", [SMALL_BBM92, SMALL_DECOY], ids=["bbm92", "decoy"])
def test_reproducible_from_seed_and_sorted(cfg):
    a = generate(cfg, seed=7)
    b = generate(cfg, seed=7)
    c = generate(cfg, seed=8)
    for x, y in ((a.alice, b.alice), (a.bob, b.bob)):
        np.testing.assert_array_equal(x.t, y.t)
        np.testing.assert_array_equal(x.ch, y.ch)
        np.testing.assert_array_equal(x.labels, y.labels)
    assert a.truth == b.truth and a.truth["seed"] == 7
    assert not np.array_equal(a.bob.t[:100], c.bob.t[:100])
    for p in (a.alice, a.bob):
        assert p.t.dtype == np.int64 and p.ch.dtype == np.uint8 and p.labels.dtype == np.int64
        assert p.t.size == p.ch.size == p.labels.size > 0
        assert np.all(np.diff(p.t) >= 0)
    assert a.truth["alice" if isinstance(cfg, BBM92Config) else "bob"]["events"] > 0
    json.dumps(a.truth)  # JSON-ready


def test_seed_none_is_recorded_and_slices_iterate():
    sim = simulate(BBM92Config(duration_s=0.005, slice_s=0.001), seed=None)
    with pytest.raises(InputError, match="iterate"):
        sim.truth()
    n = sum(1 for _ in sim)
    assert n == sim.n_slices == 5
    tr = sim.truth()
    assert isinstance(tr["seed"], int)
    link = generate(BBM92Config(duration_s=0.005, slice_s=0.001), seed=tr["seed"])
    assert link.truth["alice"]["events"] == tr["alice"]["events"]


def test_bbm92_stream_metadata_and_channel_map():
    cfg = BBM92Config(duration_s=0.005, bob_detectors=DetectorConfig(channels=(7, 3, 12, 1)))
    link = generate(cfg, seed=1)
    assert link.bob.info.channel_map == {7: "H", 3: "V", 12: "D", 1: "A"}
    assert set(np.unique(link.bob.ch)) <= {7, 3, 12, 1}
    assert link.alice.info.party == "alice" and link.bob.info.party == "bob"
    assert link.alice.info.tick_s == cfg.tick_s and link.alice.info.kind == "timestamps"


def test_decoy_alice_log_is_slot_stream():
    cfg = DecoyConfig(duration_s=0.002, rep_rate_hz=5e7, tick_s=1e-12)
    link = generate(cfg, seed=2)
    a = link.alice
    assert a.info.kind == "slots" and a.info.slot_period_ticks == 20000
    np.testing.assert_array_equal(a.t, np.arange(100000))
    from qkdpost.io.model import unpack_slot

    bit, basis, cls = unpack_slot(a.ch)
    assert set(np.unique(cls)) <= {0, 1, 2}
    assert link.bob.info.channel_map[4] == "sync"
    assert link.truth["sync"]["ticks"] == 100 == np.count_nonzero(link.bob.ch == 4)


def test_one_decoy_variant():
    cfg = DecoyConfig(duration_s=0.005, intensities=(0.6, 0.2), intensity_probs=(0.8, 0.2), loss_db=3)
    link = generate(cfg, seed=4)
    assert set(link.truth["counts"]) == {"signal", "decoy"}
    from qkdpost.io.model import unpack_slot

    assert set(np.unique(unpack_slot(link.alice.ch)[2])) == {0, 1}


# ---------------------------------------------------------------------------
# configuration errors
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: BBM92Config(duration_s=0), "duration_s"),
        (lambda: BBM92Config(duration_s=float("nan")), "duration_s"),
        (lambda: BBM92Config(loss_db=-1), "loss_db"),
        (lambda: BBM92Config(misalignment_z=0.7), "misalignment_z"),
        (lambda: BBM92Config(p_z_bob=1.5), "p_z_bob"),
        (lambda: BBM92Config(pair_statistics="bose"), "pair_statistics"),
        (lambda: BBM92Config(pair_rate_hz=1e9, coherence_time_s=1e-6), "pair_rate_hz"),
        (lambda: BBM92Config(bob_freq_ppm=5000), "bob_freq_ppm"),
        (lambda: BBM92Config(tick_s=0), "tick_s"),
        (lambda: BBM92Config(alice_detectors="x"), "alice_detectors"),
        (lambda: DetectorConfig(efficiency=(0.5, 0.5)), "efficiency"),
        (lambda: DetectorConfig(efficiency=0.0), "efficiency"),
        (lambda: DetectorConfig(dark_rate_hz=-1), "dark_rate_hz"),
        (lambda: DetectorConfig(jitter_s=1e-3), "jitter_s"),
        (lambda: DetectorConfig(afterpulse_prob=0.9), "afterpulse_prob"),
        (lambda: DetectorConfig(channels=(0, 0, 1, 2)), "channels"),
        (lambda: DecoyConfig(rep_rate_hz=3e8), "rep_rate_hz"),
        (lambda: DecoyConfig(intensities=(0.1, 0.5, 0.0)), "intensities"),
        (lambda: DecoyConfig(intensities=(0.5,), intensity_probs=(1.0,)), "intensities"),
        (lambda: DecoyConfig(intensity_probs=(0.5, 0.2, 0.2)), "intensity_probs"),
        (lambda: DecoyConfig(sync_channel=2), "sync_channel"),
        (lambda: DecoyConfig(sync_every=-1), "sync_every"),
    ],
)
def test_config_errors_name_the_field(make, field):
    with pytest.raises(ConfigError, match=field):
        make()


def test_configs_are_frozen_and_bad_seed():
    cfg = BBM92Config()
    with pytest.raises(Exception):
        cfg.loss_db = 3  # type: ignore[misc]
    with pytest.raises(ConfigError, match="seed"):
        simulate(cfg, seed=-1)
    with pytest.raises(ConfigError, match="cfg"):
        simulate({"duration_s": 1})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# files and CLI
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [SMALL_BBM92, SMALL_DECOY], ids=["bbm92", "decoy"])
def test_write_link_matches_in_memory(tmp_path, cfg):
    from qkdpost.io import read_stream

    truth = write_link(cfg, tmp_path / "out", seed=3, labels=True)
    mem = generate(cfg, seed=3)
    for name, party in (("alice", mem.alice), ("bob", mem.bob)):
        info, chunks = read_stream(tmp_path / "out" / f"{name}.arrow")
        assert info == party.info
        parts = list(chunks)
        np.testing.assert_array_equal(np.concatenate([c.t for c in parts]), party.t)
        np.testing.assert_array_equal(np.concatenate([c.ch for c in parts]), party.ch)
        np.testing.assert_array_equal(np.load(tmp_path / "out" / f"{name}_labels.npy"), party.labels)
    on_disk = json.loads((tmp_path / "out" / "truth.json").read_text())
    assert on_disk == json.loads(json.dumps(truth))
    assert truth["files"]["alice_events"] == mem.alice.t.size


def test_write_link_leaves_nothing_on_error(tmp_path, monkeypatch):
    from qkdpost.simulate import link as L

    def boom(self):
        yield from []
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(L.LinkSimulation, "__iter__", boom)
    out = tmp_path / "o"
    with pytest.raises(RuntimeError):
        write_link(SMALL_BBM92, out, seed=1, labels=True)
    assert os.listdir(out) == []
    f = tmp_path / "file"
    f.write_text("x")
    monkeypatch.undo()
    with pytest.raises(InputError, match="out_dir"):
        write_link(SMALL_BBM92, f / "sub", seed=1)


def test_write_link_without_labels_removes_labels_of_an_earlier_run(tmp_path, monkeypatch):
    from qkdpost.simulate import link as L

    out = tmp_path / "o"
    write_link(SMALL_BBM92, out, seed=1, labels=True)
    assert (out / "alice_labels.npy").exists() and (out / "bob_labels.npy").exists()
    write_link(SMALL_BBM92, out, seed=2)  # other events: the old labels must not stay next to them
    assert sorted(os.listdir(out)) == ["alice.arrow", "bob.arrow", "truth.json"]
    assert json.loads((out / "truth.json").read_text())["seed"] == 2
    # a run that fails after the simulation, while its files are put in place,
    # leaves no label or truth file of the earlier run beside whatever stream it replaced
    write_link(SMALL_BBM92, out, seed=1, labels=True)

    def fail_truth(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(L.json, "dump", fail_truth)
    with pytest.raises(OSError, match="disk full"):
        write_link(SMALL_BBM92, out, seed=3)
    assert not any(n.endswith("_labels.npy") or n == "truth.json" for n in os.listdir(out))


def test_cli_simulate(tmp_path, capsys):
    from qkdpost.cli import main

    rc = main(["simulate", "--duration", "0.01", "--seed", "5", "--out", str(tmp_path / "b"), "--no-progress",
               "--efficiency", "0.5,0.55,0.6,0.65", "--loss-db", "4"])
    assert rc == 0
    truth = json.loads((tmp_path / "b" / "truth.json").read_text())
    assert truth["config"]["bob_detectors"]["efficiency"] == [0.5, 0.55, 0.6, 0.65]
    assert truth["config"]["loss_db"] == 4.0 and truth["seed"] == 5
    assert "QBER" in capsys.readouterr().out
    rc = main(["simulate", "--topology", "decoy", "--duration", "0.002", "--rate", "5e7", "--intensities",
               "0.6,0.2", "--intensity-probs", "0.9,0.1", "--seed", "1", "--out", str(tmp_path / "d"),
               "--no-progress"])
    assert rc == 0
    assert json.loads((tmp_path / "d" / "truth.json").read_text())["slots"] == 100000
    rc = main(["simulate", "--intensities", "0.5,0.1", "--out", str(tmp_path / "x"), "--no-progress"])
    assert rc == 1 and "intensities" in capsys.readouterr().err
    rc = main(["simulate", "--loss-db", "-3", "--out", str(tmp_path / "y"), "--no-progress"])
    assert rc == 1 and "loss_db" in capsys.readouterr().err


def test_warmup_hook_compiles_simulator_kernels():
    from qkdpost._jit import warmup

    assert warmup(["qkdpost.simulate._kernels"]) == ["qkdpost.simulate._kernels"]


def test_write_link_progress_bar(tmp_path, capsys):
    truth = write_link(BBM92Config(duration_s=0.004, slice_s=0.001), tmp_path, seed=1, progress=True)
    err = capsys.readouterr().err
    assert "simulate bbm92" in err and truth["files"]["alice_events"] > 0


def test_tick_quantisation_coarse_tdc():
    # a 125 ps TDC (qcrypto): times are whole 125 ps bins; same physics otherwise
    cfg = BBM92Config(duration_s=0.01, tick_s=125e-12, bob_offset_s=0.0, bob_freq_ppm=0.0,
                      bob_drift_ppm_per_s=0.0, alice_detectors=DetectorConfig(jitter_s=0.0),
                      bob_detectors=DetectorConfig(jitter_s=0.0))
    link = generate(cfg, seed=3)
    ia = {int(l): int(t) for l, t in zip(link.alice.labels, link.alice.t) if l >= 0}
    d = np.array([int(t) - ia[int(l)] for l, t in zip(link.bob.labels, link.bob.t) if l >= 0 and int(l) in ia])
    # no jitter and identical clocks: both photons of a pair fall in the same bin
    assert d.size > 100 and np.all(d == 0)


def test_true_pairs_give_error_positions():
    from qkdpost.simulate import true_pairs

    link = generate(BBM92Config(duration_s=0.02, misalignment_z=0.05, misalignment_x=0.05), seed=12)
    ia, ib = true_pairs(link.alice.labels, link.bob.labels, topology="bbm92")
    assert ia.size == ib.size > 0
    assert np.all(link.alice.labels[ia] == link.bob.labels[ib])
    m = np.zeros((4, 4), np.int64)
    np.add.at(m, (link.alice.ch[ia], link.bob.ch[ib]), 1)
    assert m.tolist() == link.truth["coincidences"]["matrix"]
    d = generate(DecoyConfig(duration_s=0.002, loss_db=3), seed=3)
    ia, ib = true_pairs(d.alice.labels, d.bob.labels, topology="decoy")
    assert np.all(d.alice.t[ia] == d.bob.labels[ib]) and ib.size == np.count_nonzero(d.bob.labels >= 0)
    with pytest.raises(InputError, match="topology"):
        true_pairs(ia, ib, topology="x")


@settings(max_examples=20, deadline=None)
@given(
    topology=st.sampled_from(["bbm92", "decoy"]),
    eff=st.lists(st.floats(0.05, 1.0), min_size=4, max_size=4),
    dark=st.sampled_from([0.0, 1e3, 3e4]),
    dead=st.sampled_from([0.0, 20e-9, 1e-6]),
    ap=st.sampled_from([0.0, 0.05, 0.3]),
    jitter=st.sampled_from([0.0, 50e-12, 2e-9]),
    loss=st.floats(0.0, 30.0),
    pz=st.floats(0.0, 1.0),
    tick=st.sampled_from([1e-12, 125e-12]),
    delay=st.sampled_from([0.0, (3e-9, -2e-9, 0.0, 1e-9), (-1e-6, 0.0, 1e-6, 0.0)]),
    seed=st.integers(0, 2**40),
)
def test_random_configs_give_consistent_streams(topology, eff, dark, dead, ap, jitter, loss, pz, tick, delay, seed):
    det = DetectorConfig(efficiency=tuple(eff), dark_rate_hz=dark, dead_time_s=dead, afterpulse_prob=ap,
                         jitter_s=jitter, afterpulse_tau_s=50e-9, delay_s=delay)
    if topology == "bbm92":
        cfg = BBM92Config(duration_s=0.003, pair_rate_hz=3e6, loss_db=loss, p_z_alice=pz, tick_s=tick,
                          alice_detectors=det, bob_detectors=det, slice_s=0.0005, bob_offset_s=-0.2)
    else:
        cfg = DecoyConfig(duration_s=0.0004, rep_rate_hz=1e8 if tick == 1e-12 else 8e7, loss_db=loss, p_z_bob=pz,
                          tick_s=tick, bob_detectors=det, slice_s=1e-4, sync_every=100)
    link = generate(cfg, seed=seed)
    tr = link.truth
    parties = [("bob", link.bob)] + ([("alice", link.alice)] if topology == "bbm92" else [])
    for name, p in parties:
        assert np.all(np.diff(p.t) >= 0)
        dets = tr[name]["detectors"]
        key = p.labels[p.ch != 4] if topology == "decoy" else p.labels
        assert sum(v["registered"] for v in dets.values()) == key.size
        assert sum(v["dark"] for v in dets.values()) == np.count_nonzero(key == -1)
        assert sum(v["afterpulse"] for v in dets.values()) == np.count_nonzero(key == -2)
        assert sum(v["photon"] for v in dets.values()) == np.count_nonzero(key >= 0)
        for role, v in dets.items():
            sel = p.ch == v["channel"]
            assert np.count_nonzero(sel) == v["registered"]
            if dead > 0 and np.count_nonzero(sel) > 1:
                assert np.diff(p.t[sel]).min() >= math.floor(dead / tick * (1 - 1e-4)) - 1
    if topology == "decoy":
        assert np.count_nonzero(link.bob.ch == 4) == tr["sync"]["ticks"] == -(-tr["slots"] // 100)
        total = sum(tr["counts"][c][b]["detected"] for c in tr["counts"] for b in "ZX")
        assert total <= np.count_nonzero(link.bob.ch != 4)
        assert sum(tr["counts"][c][b]["emitted"] for c in tr["counts"] for b in "ZX") == tr["slots"]


def test_intercept_resend_error_probability_and_simulated_qber():
    """Eve measuring a fraction f in a random basis: same-basis error (1-f) m + f (m/2 + 1/4) (oracle
    by hand), other basis a fair coin; the simulated truth QBER follows."""
    from qkdpost.simulate.link import _bob_bit_prob

    mis = (0.01, 0.03)
    for f in (0.0, 0.3, 1.0):
        for al in (0, 1):
            for x in (0, 1):
                for be in (0, 1):
                    p = [_bob_bit_prob(al, x, be, y, mis, f) for y in (0, 1)]
                    assert sum(p) == pytest.approx(1.0)
                    if be == al:
                        assert p[1 - x] == pytest.approx((1 - f) * mis[be] + f * (mis[be] / 2 + 0.25))
                    else:
                        assert p == pytest.approx([0.5, 0.5])
    truth = generate(BBM92Config(duration_s=0.5, intercept_resend=1.0, misalignment_z=0.0, misalignment_x=0.0),
                     seed=3).truth
    assert truth["coincidences"]["Z"]["qber"] == pytest.approx(0.25, abs=0.02)
    with pytest.raises(ConfigError, match="intercept_resend"):
        BBM92Config(intercept_resend=1.5)
