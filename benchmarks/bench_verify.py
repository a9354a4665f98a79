"""Verification-hash throughput (GF(2^128) polynomial hash + Toeplitz tag) vs galois Horner.

    QKDPOST_BENCH_SIZES=1e6,1e8 /tmp/venv/bin/pytest benchmarks/bench_verify.py \
        --benchmark-only -p no:cacheprovider -o addopts=""

The reference is galois GF(2^128) arithmetic over the first 10^4 chunks only
(it is ~10^5 times slower); its throughput is extrapolated per chunk.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

SIZES = [int(float(s)) for s in os.environ.get("QKDPOST_BENCH_SIZES", "1e6,1e7,1e8").split(",")]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("method", ["poly-toeplitz", "poly128"])
def test_tag_throughput(benchmark, n, method):
    from qkdpost import verify
    from qkdpost.bits import pack_bits
    from qkdpost.verify import _kernels

    rng = np.random.default_rng(1)
    x = rng.integers(0, 2, n, dtype=np.uint8)
    t = 128 if method == "poly128" else 64
    key = verify.draw_key(n, t, method).reshape(1, -1)
    words = pack_bits(x).reshape(1, -1)
    _kernels._warmup()
    fn = verify._tags_packed
    fn(words, n, key, t, method)
    benchmark.pedantic(fn, args=(words, n, key, t, method), rounds=5, iterations=1)
    benchmark.extra_info.update(n=n, method=method, gbit_per_s=n / benchmark.stats.stats.min / 1e9)


def test_galois_reference_throughput(benchmark):
    import galois

    GF = galois.GF(2**128, irreducible_poly=(1 << 128) | 0x87, verify=False)
    rng = np.random.default_rng(2)
    chunks = [int(v) for v in rng.integers(0, 2**63, 10**4, dtype=np.uint64)]
    k = GF(123456789)

    def horner():
        h = GF(0)
        for c in chunks:
            h = (h + GF(c)) * k
        return h

    benchmark.pedantic(horner, rounds=1, iterations=1)
    benchmark.extra_info.update(gbit_per_s=128 * len(chunks) / benchmark.stats.stats.min / 1e9)
