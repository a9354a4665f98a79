"""Cascade benchmarks: throughput of the two-party protocol, and the stored curves.

pytest-benchmark part (``pytest benchmarks/bench_cascade.py``): reconciled
bits per second of CPU, every message serialised by the loopback channel,
side by side with the plain textbook Cascade of ``tests/oracles/cascade.py``
(run on a smaller frame: it is pure Python).

Script part: regenerate the reference curves stored in ``data/``::

    python benchmarks/bench_cascade.py curves --n 10000 --frames 400 --out data/cascade_n10000.json
    python benchmarks/bench_cascade.py curves --n 1000000 --frames 16 --batch 8 \\
        --presets option7 --out data/cascade_n1000000.json
    python benchmarks/bench_cascade.py throughput --n 1000000 --frames 8 --qber 0.02 --rtt 0.001

f = leaked / (n h(Q)) with Q the frame's true error fraction; FER = frames
with a residual error / frames. Random data come from seeded NumPy
generators (simulation only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

from qkdpost.bits import binary_entropy  # noqa: E402
from qkdpost.reconcile.cascade import PRESETS, block_sizes, reconcile_cascade  # noqa: E402


def bsc_pair(rng, N, n, q):
    a = rng.integers(0, 2, size=(N, n), dtype=np.uint8)
    e = (rng.random((N, n)) < q).astype(np.uint8)
    return a, a ^ e


# ---------------------------------------------------------------- pytest-benchmark


def test_throughput_qkdpost_n1e6_q2(benchmark):
    import pytest  # noqa: F401

    rng = np.random.default_rng(1)
    n, N, q = 10**6, 4, 0.02
    a, b = bsc_pair(rng, N, n, q)
    reconcile_cascade(a[:1], b[:1], qber=q, seed=7)  # warm-up: JIT and permutations
    res = benchmark.pedantic(lambda: reconcile_cascade(a, b, qber=q, seed=7), rounds=2, iterations=1)
    assert (res.bits == a).all()
    t = benchmark.stats.stats.mean
    benchmark.extra_info.update(
        mbit_per_s=N * n / t / 1e6,
        round_trips=res.round_trips,
        f=float((res.leaked_bits / (n * binary_entropy((a != b).mean(1)))).mean()),
    )


def test_throughput_plain_oracle_n1e4_q2(benchmark):
    from oracles import cascade as oracle

    rng = np.random.default_rng(1)
    n, q = 10**4, 0.02
    a, b = bsc_pair(rng, 1, n, q)
    ks = block_sizes("option7", q, n)
    perms = [oracle.permutation(7, p, n) for p in range(len(ks))]
    out = benchmark.pedantic(lambda: oracle.plain_cascade(a[0], b[0], ks, perms), rounds=1, iterations=1)
    assert (out[0] == a[0]).all()
    benchmark.extra_info.update(mbit_per_s=n / benchmark.stats.stats.mean / 1e6)


def test_throughput_qkdpost_n1e4_q2(benchmark):
    rng = np.random.default_rng(1)
    n, N, q = 10**4, 64, 0.02
    a, b = bsc_pair(rng, N, n, q)
    reconcile_cascade(a[:1], b[:1], qber=q, seed=7)
    res = benchmark.pedantic(lambda: reconcile_cascade(a, b, qber=q, seed=7), rounds=3, iterations=1)
    benchmark.extra_info.update(mbit_per_s=N * n / benchmark.stats.stats.mean / 1e6, round_trips=res.round_trips)


# ---------------------------------------------------------------- curves and throughput scripts


def measure(preset, n, q, frames, batch, seed0, slack, local_max=4096, passes=0, keep_seed=False):
    """f, FER and costs over ``frames`` frames in batches; batch i's data come from the seeds
    [seed0, Q, n, i] and its permutations from seed0 + i, or from seed0 for every batch when
    ``keep_seed`` (a session that keeps its seed, as the pipeline does)."""
    import dataclasses

    name = preset
    if passes:
        preset = dataclasses.replace(PRESETS[preset], name=f"{preset}+{passes}", passes=passes)
    fs, fails, rts, leaks, cpu, rounds, residual = [], 0, [], [], 0.0, [], []
    done = 0
    b_i = 0
    while done < frames:
        N = min(batch, frames - done)
        rng = np.random.default_rng([seed0, int(q * 1e6), n, b_i])
        a, b = bsc_pair(rng, N, n, q)
        t0 = time.process_time()
        res = reconcile_cascade(a, b, qber=q, seed=seed0 if keep_seed else seed0 + b_i, preset=preset, slack=slack,
                                local_max=local_max)
        cpu += time.process_time() - t0
        qt = (a != b).mean(axis=1)
        ok = (res.bits == a).all(axis=1)
        fails += int((~ok).sum())
        residual.extend(np.flatnonzero(res.bits[i] != a[i]).tolist() for i in np.flatnonzero(~ok))
        fs.extend((res.leaked_bits / (n * binary_entropy(qt))).tolist())
        leaks.extend(res.leaked_bits.tolist())
        rts.append(res.round_trips)
        rounds.extend(res.extra["rounds_per_frame"].tolist())
        done += N
        b_i += 1
    fs = np.array(fs)
    return {
        "preset": name,
        "passes": passes or PRESETS[name].passes,
        "n": n,
        "qber": q,
        "slack": slack,
        "local_max": local_max,
        "frames": frames,
        "batch": batch,
        "f_mean": float(fs.mean()),
        "f_std": float(fs.std(ddof=1)) if frames > 1 else 0.0,
        "frame_errors": fails,
        "fer": fails / frames,
        "fer_upper95": (1 - 0.05 ** (1 / frames)) if fails == 0 else None,
        "leaked_mean": float(np.mean(leaks)),
        "round_trips_per_batch_mean": float(np.mean(rts)),
        "rounds_per_frame_mean": float(np.mean(rounds)),
        "cpu_s_per_frame": cpu / frames,
        "block_sizes_first3": block_sizes(name, q, n)[:3],
        "keep_seed": bool(keep_seed),
        "residual_errors": residual[:20],  # positions left wrong, per failed frame (first 20 frames)
    }


@contextlib.contextmanager
def _timed_kernels():
    """Wall time spent in each of the protocol's per-round kernel calls (both parties), by name."""
    from qkdpost.reconcile.cascade import _kernels as K

    names = ("bob_plan", "bob_absorb_plan", "bob_layout", "bob_emit", "alice_answer")
    total = dict.fromkeys(names, 0.0)
    saved = {name: getattr(K, name) for name in names}

    def timed(name, fn):
        def call(*args):
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                total[name] += time.perf_counter() - t0
        return call

    for name, fn in saved.items():
        setattr(K, name, timed(name, fn))
    try:
        yield total
    finally:
        for name, fn in saved.items():
            setattr(K, name, fn)


def main(argv=None):
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("curves")
    c.add_argument("--n", type=int, required=True)
    c.add_argument("--frames", type=int, required=True)
    c.add_argument("--batch", type=int, default=100)
    c.add_argument("--presets", default=",".join(sorted(PRESETS)))
    c.add_argument("--qbers", default="0.01,0.02,0.05,0.08")
    c.add_argument("--slack", type=int, default=1)
    c.add_argument("--local-max", type=int, default=4096)
    c.add_argument("--passes", type=int, default=0, help="override the preset's pass count")
    c.add_argument("--seed", type=int, default=2026)
    c.add_argument("--keep-seed", action="store_true", help="one permutation seed for every batch (as a session)")
    c.add_argument("--out", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--n", type=int, default=10**6)
    t.add_argument("--frames", type=int, default=8)
    t.add_argument("--qber", type=float, default=0.02)
    t.add_argument("--rtt", type=float, default=0.0)
    t.add_argument("--slack", type=int, default=1)
    t.add_argument("--local-max", type=int, default=4096)
    t.add_argument("--fresh-seed", action="store_true", help="new permutations (seed) for the timed run")
    t.add_argument("--preset", default="option7")
    args = ap.parse_args(argv)
    if args.cmd == "curves":
        rows = []
        for preset in args.presets.split(","):
            for q in (float(x) for x in args.qbers.split(",")):
                r = measure(
                    preset, args.n, q, args.frames, args.batch, args.seed, args.slack, args.local_max, args.passes,
                    args.keep_seed,
                )
                rows.append(r)
                print(json.dumps(r), flush=True)
        meta = {
            "generator": "benchmarks/bench_cascade.py curves " + " ".join(sys.argv[2:] if argv is None else argv[1:]),
            "definition": "f = leaked/(n h(Q_true)) per frame, mean; FER = frames with residual errors / frames",
            "rows": rows,
        }
        with open(args.out, "w") as fh:
            json.dump(meta, fh, indent=1)
    else:
        rng = np.random.default_rng(5)
        a, b = bsc_pair(rng, args.frames, args.n, args.qber)
        # JIT + permutations
        reconcile_cascade(a[:1], b[:1], qber=args.qber, seed=11, slack=args.slack, preset=args.preset)
        seed = None if args.fresh_seed else 11
        with _timed_kernels() as kernel_s:
            w0, c0 = time.perf_counter(), time.process_time()
            res = reconcile_cascade(
                a, b, qber=args.qber, seed=seed, slack=args.slack, local_max=args.local_max, rtt_s=args.rtt,
                preset=args.preset,
            )
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        nbits = args.frames * args.n
        parities = max(1, int(res.leaked_bits.sum()))
        out = {
            "preset": args.preset,
            "n": args.n,
            "frames_in_flight": args.frames,
            "qber": args.qber,
            "rtt_s": args.rtt,
            "slack": args.slack,
            "local_max": args.local_max,
            "fresh_permutations": bool(args.fresh_seed),
            "all_reconciled": bool((res.bits == a).all()),
            "round_trips_batch": res.round_trips,
            "bytes_per_frame": res.bytes_sent / args.frames,
            "wall_s": wall,
            # time inside both parties' per-round kernels (the rest: Python, codec, permutations)
            "kernel_s": sum(kernel_s.values()),
            "kernel_ns_per_parity": sum(kernel_s.values()) / parities * 1e9,
            "kernel_ns_per_parity_by_name": {k: round(v / parities * 1e9, 1) for k, v in kernel_s.items()},
            "cpu_s": cpu,
            "mbit_per_s_cpu": nbits / cpu / 1e6,
            "mbit_per_s_wall": nbits / wall / 1e6,
            "sleep_s": res.round_trips * args.rtt,
            "mbit_per_s_cpu_plus_rtt": nbits / (cpu + res.round_trips * args.rtt) / 1e6,
            "f_mean": float((res.leaked_bits / (args.n * binary_entropy((a != b).mean(1)))).mean()),
        }
        print(json.dumps(out))


if __name__ == "__main__":
    main()
