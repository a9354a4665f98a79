"""Link simulator throughput: events generated per second on one core.

``ours`` = :func:`qkdpost.simulate.simulate` (Numba kernels, slices), side by
side with ``numpy_ref``, a plain vectorised NumPy generator of the same BBM92
physics (SPDC pairs, losses, passive basis choice, misalignment, efficiencies,
dark counts, Gaussian jitter, full sort) with the dead time applied by a
Python loop and without afterpulsing (so it does less work than ours).

Run: ``pytest benchmarks/bench_simulate.py --benchmark-only`` (warm-up first;
``extra_info`` holds events/s by wall clock and by process CPU time: the
machine is shared, CPU time is the one-core figure).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from qkdpost.simulate import BBM92Config, DecoyConfig, joint_table, simulate


def _run_ours(cfg, seed=1):
    n = 0
    for sl in simulate(cfg, seed=seed):
        n += sl.alice.t.size + sl.bob.t.size
    return n


def numpy_reference(cfg: BBM92Config, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Straightforward NumPy BBM92 generator (no slices, no afterpulses)."""
    rng = np.random.default_rng(seed)
    P = joint_table(cfg)
    n_pairs = rng.poisson(cfg.pair_rate_hz * cfg.duration_s)
    t = np.sort(rng.random(n_pairs) * cfg.duration_s)
    cell = rng.choice(25, size=n_pairs, p=P.ravel() / P.sum())
    a = cell // 5 - 1
    b = cell % 5 - 1
    out = []
    for party, det, sel_det in (("alice", cfg.alice_detectors, a), ("bob", cfg.bob_detectors, b)):
        keep = sel_det >= 0
        tt = t[keep] + rng.normal(0.0, det.jitter_s, keep.sum())
        dd = sel_det[keep]
        nd = rng.poisson(np.array(det.dark_rate_hz) * cfg.duration_s)
        tt = np.concatenate([tt, rng.random(nd.sum()) * cfg.duration_s])
        dd = np.concatenate([dd, np.repeat(np.arange(4), nd)])
        order = np.argsort(tt, kind="stable")
        tt, dd = tt[order], dd[order]
        keep = np.ones(tt.size, bool)
        last = [-np.inf] * 4
        dead = det.dead_time_s
        for i, (x, d) in enumerate(zip(tt.tolist(), dd.tolist())):
            if x - last[d] < dead:
                keep[i] = False
            else:
                last[d] = x
        tt, dd = tt[keep], dd[keep]
        if party == "bob":
            f, dr = cfg.bob_freq_ppm * 1e-6, cfg.bob_drift_ppm_per_s * 1e-6
            tt = cfg.bob_offset_s + (1 + f) * tt + 0.5 * dr * tt * tt
        out += [np.floor(tt / cfg.tick_s).astype(np.int64), dd.astype(np.uint8)]
    return out[0], out[1], out[2], out[3]


def _bench(benchmark, fn, *args):
    fn(*args)  # warm-up (JIT compile or cache load)
    cpu = []

    def timed():
        c = time.process_time()
        n = fn(*args)
        cpu.append(time.process_time() - c)
        return n

    n = benchmark.pedantic(timed, rounds=3, iterations=1)
    benchmark.extra_info["events"] = int(n)
    benchmark.extra_info["events_per_s_wall"] = n / benchmark.stats.stats.min
    benchmark.extra_info["events_per_s_cpu"] = n / min(cpu)
    return n


@pytest.mark.parametrize("duration", [0.1, 1.0])
def test_bbm92_ours(benchmark, duration):
    benchmark.group = "simulate bbm92 (default link, 2.25 M events/s)"
    cfg = BBM92Config(duration_s=duration)
    _bench(benchmark, _run_ours, cfg)
    benchmark.extra_info["simulated_s_per_cpu_s"] = duration * benchmark.extra_info["events_per_s_cpu"] / benchmark.extra_info["events"]


@pytest.mark.parametrize("duration", [0.1])
def test_bbm92_numpy_ref(benchmark, duration):
    benchmark.group = "simulate bbm92 (default link, 2.25 M events/s)"
    cfg = BBM92Config(duration_s=duration)
    _bench(benchmark, lambda c: sum(a.size for a in numpy_reference(c)[::2]), cfg)


@pytest.mark.parametrize("duration", [0.05])
def test_decoy_ours(benchmark, duration):
    benchmark.group = "simulate decoy (1e8 slots/s)"
    cfg = DecoyConfig(duration_s=duration)

    def slots(c):
        n = 0
        for sl in simulate(c, seed=1):
            n += sl.alice.t.size
        return n

    _bench(benchmark, slots, cfg)
