"""Toeplitz privacy amplification throughput: qkdpost vs scipy float64 FFT, side by side.

Throughput = input bits per second, m/n = 0.5, one core (the kernels are
single-threaded). Run:

    QKDPOST_BENCH_SIZES=1e6,1e7 /tmp/venv/bin/pytest benchmarks/bench_amplify.py \
        --benchmark-only -p no:cacheprovider -o addopts="" --benchmark-columns=min,mean,rounds

and the peak-memory check (one process per size, resident set size) and the
two-core wall time (threads=1 vs 2; needs both cores idle):

    /tmp/venv/bin/python benchmarks/bench_amplify.py --peak-memory 1e8
    /tmp/venv/bin/python benchmarks/bench_amplify.py --two-threads 1e8
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

SIZES = [int(float(s)) for s in os.environ.get("QKDPOST_BENCH_SIZES", "1e6,1e7,1e8").split(",")]


def _inputs(n: int):
    rng = np.random.default_rng(n)
    m = n // 2
    x = rng.integers(0, 2, n, dtype=np.uint8)
    s = rng.integers(0, 2, n + m - 1, dtype=np.uint8)
    return x, s, m


def scipy_fft_toeplitz(x: np.ndarray, s: np.ndarray, m: int) -> np.ndarray:
    """Reference: float64 FFT convolution of length n+m-1+n-1 (scipy picks a fast size), mod 2."""
    from scipy.signal import fftconvolve

    n = x.size
    conv = fftconvolve(s.astype(np.float64), x.astype(np.float64))
    return (np.rint(conv[n - 1 : n - 1 + m]).astype(np.int64) & 1).astype(np.uint8)


def _qkdpost(x, s, m):
    from qkdpost.amplify import toeplitz_hash

    return toeplitz_hash(x, s, m)


def _qkdpost_modified(x, s, m):
    from qkdpost.amplify import modified_toeplitz_hash

    return modified_toeplitz_hash(x, s[: x.size - 1], m)


def _qkdpost_packed(xw, n, sw, m, algorithm):
    from qkdpost.amplify import toeplitz_hash_packed

    return toeplitz_hash_packed(xw, n, sw, m, algorithm=algorithm)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("impl", ["qkdpost", "qkdpost_modified", "packed_karatsuba", "packed_afft", "scipy_fft64"])
def test_toeplitz_throughput(benchmark, n, impl):
    from qkdpost.amplify import _kernels
    from qkdpost.bits import pack_bits

    if n > 10**7 and impl in ("packed_karatsuba", "scipy_fft64"):
        pytest.skip("minutes per call at 1e8 (Karatsuba ~25 s CPU; scipy needs > 1 GB)")
    x, s, m = _inputs(n)
    if impl == "qkdpost":
        fn, args = _qkdpost, (x, s, m)
    elif impl == "qkdpost_modified":
        fn, args = _qkdpost_modified, (x, s, m)
    elif impl.startswith("packed_"):
        fn, args = _qkdpost_packed, (pack_bits(x), n, pack_bits(s), m, impl.split("_")[1])
    else:
        fn, args = scipy_fft_toeplitz, (x, s, m)
    _kernels._warmup()
    if n <= 10**7:
        fn(*args)  # warm-up (caches, page faults) outside the timing
    rounds = 3 if n <= 10**7 else 1
    out = benchmark.pedantic(fn, args=args, rounds=rounds, iterations=1)
    t = benchmark.stats.stats.min
    benchmark.extra_info.update(
        n=n, m=m, impl=impl, mode=str(_kernels.default_mode().dtype), mbit_per_s=n / t / 1e6
    )
    if impl == "qkdpost" and n <= 10**7:
        np.testing.assert_array_equal(out, scipy_fft_toeplitz(x, s, m))


def _peak_memory(n: int) -> None:
    import resource
    import time

    from qkdpost.amplify import toeplitz_hash

    for warm in (10_000, 3_000_000):  # load both algorithms' compiled kernels first
        toeplitz_hash(*_inputs(warm))
    x, s, m = _inputs(n)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    c = time.process_time()
    y = toeplitz_hash(x, s, m)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"n={n} m={m}: peak RSS {peak:.0f} MiB (inputs and interpreter {before:.0f} MiB), "
          f"wall {wall:.2f} s, cpu {cpu:.2f} s, {n / cpu / 1e6:.1f} Mbit/s per core, out {y.size} bits")


def _two_threads(n: int) -> None:
    """Wall time of one hash with threads=1 and threads=2 (the two-core moonshot), best of 3."""
    from qkdpost.amplify import toeplitz_hash

    toeplitz_hash(*_inputs(3_000_000), threads=2)  # compiled kernels, thread pool code paths
    x, s, m = _inputs(n)
    for threads in (1, 2):
        best = min(_wall(toeplitz_hash, x, s, m, threads) for _ in range(3))
        print(f"n={n} m={m} threads={threads}: {best:.3f} s wall = {n / best / 1e6:.1f} Mbit/s", flush=True)


def _wall(fn, x, s, m, threads):
    import time

    t = time.perf_counter()
    fn(x, s, m, threads=threads)
    return time.perf_counter() - t


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--peak-memory":
        _peak_memory(int(float(sys.argv[2])))
    elif len(sys.argv) == 3 and sys.argv[1] == "--two-threads":
        _two_threads(int(float(sys.argv[2])))
    else:
        print(__doc__)
