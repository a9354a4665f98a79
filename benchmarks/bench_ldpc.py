"""LDPC reconciliation: decoder speed and efficiency/FER curves.

pytest-benchmark part (``pytest benchmarks/bench_ldpc.py``): the shipped
frame-parallel layered float32 LUT decoder (8 frames per AVX2 register)
against the previous one-frame scalar decoder (``tests/oracles/ldpc.py``,
bit-identical results) and a simple reference (layered sum-product with the
exact tanh rule in float64, O(d^2) per check) on the same frames, after a
warm-up; throughput and edge updates per second in ``extra_info``. The
whole protocol (``test_reconcile_ldpc_2_16``: ``reconcile(..., method="ldpc")``,
32 frames, Q = 2 / 5 / 8 %) runs against the same protocol with every frame
decoded alone by that scalar decoder (same leak and bits), CPU time in
``extra_info``::

    NUMBA_NUM_THREADS=1 pytest benchmarks/bench_ldpc.py -k reconcile_ldpc --benchmark-columns=mean

Curve part (``python benchmarks/bench_ldpc.py --curves``): runs
``reconcile_ldpc`` (both parties over the loopback channel) over a grid of
code lengths and QBERs, one Numba thread, and writes ``data/ldpc_curves.json``
(f, FER with its denominator, undetected errors, iterations, rounds,
throughput per core). ``tests/test_ldpc_curves.py`` replays it.

Trade-off part (``python benchmarks/bench_ldpc.py --tradeoff 1.08,1.10,1.20
--qber 0.05``): the same protocol on frames of ``frame_length(Q, code_bits,
f_start=F)`` for each starting efficiency F, printed as JSON lines (speed
against f; nothing is written).

Frames: Alice's bits uniform, Bob's = Alice's with exactly round(Q n_key)
flipped positions (fixed-weight BSC), so f = leaked / (n_key h(Q)) uses the
true error fraction.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numba
import numpy as np

from qkdpost.bits import binary_entropy
from qkdpost.reconcile.ldpc import _kernels as K
from qkdpost.reconcile.ldpc import load_code, reconcile_ldpc
from qkdpost.reconcile.ldpc.adapt import frame_length

ROOT = Path(__file__).resolve().parent.parent
CURVES = ROOT / "data" / "ldpc_curves.json"
sys.path.insert(0, str(ROOT / "tests"))
from oracles.ldpc import scalar_layered_decode  # noqa: E402  (the previous one-frame decoder)


def fixed_weight_frames(rng: np.random.Generator, nf: int, n_key: int, qber: float) -> tuple[np.ndarray, np.ndarray]:
    a = rng.integers(0, 2, (nf, n_key), dtype=np.uint8)
    b = a.copy()
    k = int(round(qber * n_key))
    for i in range(nf):
        b[i, rng.choice(n_key, k, replace=False)] ^= 1
    return a, b


@numba.njit(cache=True, error_model="numpy")
def reference_decode(row_ptr, col_idx, syn, max_iter, L, R):  # pragma: no cover - benchmark reference
    """Layered sum-product, exact tanh rule, float64, O(d^2) per check: the yardstick."""
    m = row_ptr.shape[0] - 1
    T = np.empty(128)
    TH = np.empty(128)
    for it in range(max_iter):
        for j in range(m):
            lo = row_ptr[j]
            hi = row_ptr[j + 1]
            for e in range(lo, hi):
                t = L[col_idx[e]] - R[e]
                T[e - lo] = t
                TH[e - lo] = math.tanh(max(min(t, 40.0), -40.0) / 2.0)
            for e in range(lo, hi):
                p = -1.0 if syn[j] else 1.0
                for e2 in range(lo, hi):
                    if e2 != e:
                        p *= TH[e2 - lo]
                p = max(min(p, 1 - 1e-12), -1 + 1e-12)
                r = 2.0 * math.atanh(p)
                R[e] = r
                L[col_idx[e]] = T[e - lo] + r
        ok = True
        for j in range(m):
            s = syn[j]
            for e in range(row_ptr[j], row_ptr[j + 1]):
                s ^= L[col_idx[e]] < 0
            if s:
                ok = False
                break
        if ok:
            return it + 1
    return -(max_iter + 1)


def _decoder_case(name: str, qber: float, nf: int):
    code = load_code(name)
    rng = np.random.default_rng(1)
    x, y = fixed_weight_frames(rng, nf, code.n, qber)
    syn = code.syndrome(x)
    z = np.zeros(code.n, np.uint8)
    llr = np.empty((nf, code.n), np.float32)
    for i in range(nf):
        K.bsc_llr(y[i], qber, z, z, llr[i])
    return code, x, syn, llr


# ------------------------------------------------------------- pytest-benchmark
try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

if pytest is not None:

    @pytest.mark.parametrize("impl", ["ours", "scalar", "reference"])
    @pytest.mark.parametrize("name,qber", [("mm2012-r0.70-n16384", 0.042), ("mm2012-r0.70-n65536", 0.042)])
    def test_decoder_throughput(benchmark, impl, name, qber):
        nf = 8
        code, x, syn, llr = _decoder_case(name, qber, nf)
        iters = np.zeros(nf, np.int64)

        def ours():
            L = llr.copy()
            R = np.zeros((nf, code.n_edges), np.float32)
            K.decode_batch(code.row_ptr, code.col_idx, syn, np.array([60, 0]), L, R, np.arange(nf, dtype=np.int64), iters, K.PHI_LUT)
            return L

        def scalar():
            out = np.empty((nf, code.n), np.float32)
            for i in range(nf):
                L = llr[i].copy()
                R = np.zeros(code.n_edges, np.float32)
                iters[i] = scalar_layered_decode(code.row_ptr, code.col_idx, syn[i], 60, 0, L, R, K.PHI_LUT)
                out[i] = L
            return out

        def reference():
            out = np.empty((nf, code.n))
            for i in range(nf):
                L = llr[i].astype(np.float64)
                R = np.zeros(code.n_edges)
                iters[i] = reference_decode(code.row_ptr, code.col_idx, syn[i], 60, L, R)
                out[i] = L
            return out

        fn = {"ours": ours, "scalar": scalar, "reference": reference}[impl]
        fn()  # JIT warm-up
        L = benchmark.pedantic(fn, rounds=3, iterations=1)
        secs = benchmark.stats.stats.mean
        ok = iters >= 0
        assert np.array_equal((L[ok] < 0).astype(np.uint8), x[ok])
        benchmark.extra_info.update({
            "frames": nf, "n": code.n, "qber": qber, "threads": numba.get_num_threads(),
            "mbit_per_s": nf * code.n / secs / 1e6,
            "edge_updates_per_s": float(np.where(iters >= 0, iters, -iters - 1).sum() * code.n_edges / secs),
            "mean_iterations": float(np.where(iters >= 0, iters, -iters - 1).mean()), "fer": float(1 - ok.mean()),
        })

    def _scalar_decode_batch(row_ptr, col_idx, syn, limits, L, R, which, iters_out, lut):
        """Reference for the whole-protocol benchmark: decode_batch's contract, one frame at a time
        through the one-frame scalar decoder (no lanes, no prefetch; results are bit-identical)."""
        for i, f in enumerate(which.tolist()):
            iters_out[i] = scalar_layered_decode(row_ptr, col_idx, syn[f], int(limits[0]), int(limits[1]),
                                                 L[f], R[f], lut)

    @pytest.mark.parametrize("impl", ["ours", "scalar-frames"])
    @pytest.mark.parametrize("qber", [0.02, 0.05, 0.08])
    def test_reconcile_ldpc_2_16(benchmark, monkeypatch, impl, qber):
        """The whole protocol, ``reconcile(a, b, method="ldpc")``: both parties, every message
        serialised, blind rounds and rate adaptation; 32 frames of frame_length(Q, 2^16) bits (no
        puncturing: 64835 / 62981 / 59802 at Q = 2 / 5 / 8 %). "scalar-frames" runs
        the same protocol with each frame decoded alone by the scalar one-frame decoder (the
        reference: same leak, same bits). Mbit/s per core when run with NUMBA_NUM_THREADS=1."""
        import time

        from qkdpost.reconcile import reconcile
        from qkdpost.reconcile.ldpc import protocol

        n_key, nf = frame_length(qber, 2**16), 32
        rng = np.random.default_rng(2)
        a, b = fixed_weight_frames(rng, nf, n_key, qber)
        if impl == "scalar-frames":
            monkeypatch.setattr(protocol.K, "decode_batch", _scalar_decode_batch)
        reconcile(a[:2], b[:2], method="ldpc", qber=qber, seed=0)  # warm-up (JIT, code loading)
        cpu = []

        def run():
            t0 = time.process_time()
            r = reconcile(a, b, method="ldpc", qber=qber, seed=1)
            cpu.append(time.process_time() - t0)
            return r

        res = benchmark.pedantic(run, rounds=1, iterations=1)
        assert np.array_equal(res.bits[res.success], a[res.success])
        it = res.extra["iterations"]
        h = float(binary_entropy(round(qber * n_key) / n_key))
        benchmark.extra_info.update({
            "mbit_per_s_wall": a.size / benchmark.stats.stats.mean / 1e6,
            "mbit_per_s_cpu": a.size / cpu[-1] / 1e6,
            "edge_updates_per_s_cpu": float(it.sum() * res.extra["edges"] / cpu[-1]),
            "mean_iterations": float(it.mean()), "mean_rounds": float(res.extra["rounds"].mean()),
            "f": float(np.mean(res.leaked_bits) / (n_key * h)), "fer": float(1 - res.success.mean()),
            "code": res.preset, "frames": nf, "round_trips": res.round_trips,
            "threads": numba.get_num_threads(),
        })


# ------------------------------------------------------------------ curves
def measure(n_key: int, qber: float, frames: int, seed: int, chunk: int = 16, **options) -> dict:
    """Run reconcile_ldpc on ``frames`` frames, ``chunk`` per call, and summarise (CPU time of this process).

    FER counts frames not reconciled by LDPC after all blind rounds (whatever
    the fallback then did); ``fallback_failed`` counts frames not reconciled
    at all; f includes the fallback's disclosures."""
    rng = np.random.default_rng([seed, n_key, int(qber * 1e6)])
    h = float(binary_entropy(round(qber * n_key) / n_key))
    f_all, ok_all, undet, iters, rounds, leaked, fb, adaptive = [], [], 0, [], [], [], [], []
    cpu = 0.0
    edges = None
    code = None
    reconcile_ldpc(*fixed_weight_frames(rng, 1, n_key, qber), qber=qber, seed=seed, **options)  # warm-up
    done = 0
    while done < frames:
        k = min(chunk, frames - done)
        a, b = fixed_weight_frames(rng, k, n_key, qber)
        t0 = time.process_time()
        res = reconcile_ldpc(a, b, qber=qber, seed=seed + done, **options)
        cpu += time.process_time() - t0
        correct = np.all(res.bits == a, axis=1)
        undet += int(np.sum(res.success & ~correct))
        ok_all.extend((res.success & correct).tolist())
        fb.extend(res.extra["fallback"].tolist())
        f_all.extend((res.leaked_bits / (n_key * h)).tolist())
        iters.extend(res.extra["iterations"].tolist())
        rounds.extend(res.extra["rounds"].tolist())
        adaptive.extend(res.extra["adaptive_reveals"].tolist())
        leaked.extend(res.leaked_bits.tolist())
        edges = res.extra["edges"]
        code = res.preset
        done += k
    f = np.array(f_all)
    ok = np.array(ok_all) & ~np.array(fb, dtype=bool)  # reconciled by LDPC itself
    final_ok = np.array(ok_all)
    it = np.array(iters)
    return {
        "n_key": n_key, "qber": qber, "code": code, "frames": frames,
        "f_mean": round(float(f.mean()), 5), "f_std": round(float(f.std()), 5),
        "fer": float(1 - ok.mean()), "failed": int((~ok).sum()), "fallback_failed": int((~final_ok).sum()),
        "undetected": undet, "chunk": chunk, "load_avg_1min": round(os.getloadavg()[0], 2),
        "mean_iterations": round(float(it.mean()), 2), "mean_rounds": round(float(np.mean(rounds)), 3),
        "adaptive_frames": int(np.sum(adaptive)),  # frames with Bob-chosen reveals (trap/reliability)
        "mbit_per_s_per_core": round(frames * n_key / cpu / 1e6, 4),
        "edge_updates_per_s": round(float(it.sum() * edges / cpu), 0),
        "options": options,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--curves", action="store_true", help="measure and write data/ldpc_curves.json")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--n-key", type=int, action="append", default=[], help="fixed frame lengths")
    ap.add_argument("--code-bits", type=int, action="append", default=[],
                    help="code lengths: frames of adapt.frame_length(qber, code_bits) key bits (default 16384, "
                         "65536 when no --n-key is given)")
    ap.add_argument("--qber", type=float, action="append", default=[])
    ap.add_argument("--out", type=Path, default=CURVES)
    ap.add_argument("--tradeoff", type=str, default="",
                    help="comma-separated f_start values: print speed against efficiency for frames of "
                         "frame_length(qber, code_bits, f_start=...) (nothing is written)")
    args = ap.parse_args(argv)
    if args.tradeoff:
        return _tradeoff(args)
    if not args.curves:
        ap.print_help()
        return 2
    if numba.get_num_threads() != 1:
        print("note: set NUMBA_NUM_THREADS=1 for per-core figures", file=sys.stderr)
    qbers = args.qber or [0.02, 0.03, 0.05, 0.07, 0.08, 0.10]
    sizes = args.code_bits or ([] if args.n_key else [2**14, 2**16])
    runs = [(n_key, q) for n_key in args.n_key for q in qbers]
    runs += [(frame_length(q, size), q) for size in sizes for q in qbers]
    old = json.loads(args.out.read_text()) if args.out.exists() else {"points": []}
    points = {(p["n_key"], p["qber"]): p for p in old["points"]}
    for n_key, q in runs:
        p = measure(n_key, q, args.frames, seed=7)
        points[(n_key, q)] = p
        print(json.dumps(p), flush=True)
        out = {
            "what": "reconcile_ldpc default options (fallback='cascade'), fixed-weight BSC frames, 16 frames per "
                    "call, 1 Numba thread, CPU time; failed = not reconciled by LDPC after all blind rounds "
                    "(these went to Cascade; fallback_failed = not reconciled at all)",
            "command": "NUMBA_NUM_THREADS=1 python benchmarks/bench_ldpc.py --curves --frames N [--code-bits N]",
            "threads_env": os.environ.get("NUMBA_NUM_THREADS", ""),
            "points": sorted(points.values(), key=lambda p: (p["n_key"], p["qber"])),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def _tradeoff(args: argparse.Namespace) -> int:
    """Speed against efficiency: the same protocol on frames sized for each starting efficiency."""
    for size in args.code_bits or [2**16]:
        for q in args.qber or [0.05]:
            for f_start in (float(x) for x in args.tradeoff.split(",")):
                p = measure(frame_length(q, size, f_start=f_start), q, args.frames, seed=7, f_start=f_start)
                keep = ("n_key", "qber", "code", "f_mean", "failed", "undetected", "mean_iterations", "mean_rounds",
                        "mbit_per_s_per_core", "edge_updates_per_s", "load_avg_1min")
                print(json.dumps({"code_bits": size, "f_start": f_start} | {k: p[k] for k in keep}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
