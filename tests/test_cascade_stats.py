"""Slow statistical replay of the stored Cascade curves (data/cascade_*.json).

Each stored row was produced by ``benchmarks/bench_cascade.py curves`` (the
exact command is in the file's ``generator`` field). The replay runs fresh
frames (different data seeds) and checks:

- mean efficiency f within 4 combined standard errors (replay and stored)
  + 0.003 of the stored mean;
- frame errors consistent with the stored FER: at most the count a Poisson
  law with the stored rate (or, for a stored 0, with its 95 % upper bound)
  exceeds with probability < 1e-3.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from qkdpost.bits import binary_entropy
from qkdpost.reconcile.cascade import reconcile_cascade

DATA = os.path.join(os.path.dirname(__file__), "..", "data")


def _rows(name):
    path = os.path.join(DATA, name)
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return json.load(fh)["rows"]


def _poisson_limit(mean, p=1e-3):
    k, term, cdf = 0, math.exp(-mean), math.exp(-mean)
    while 1 - cdf > p:
        k += 1
        term *= mean / k
        cdf += term
    return k


ROWS = [r for r in _rows("cascade_n10000.json") if r["preset"] in ("option7", "yanetal", "original", "option8")]


@pytest.mark.slow
@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r['preset']}-{r['qber']}")
def test_replay_n10000(row):
    n, q, frames = row["n"], row["qber"], 200
    rng = np.random.default_rng([99, int(q * 1e6)])
    a = rng.integers(0, 2, size=(frames, n), dtype=np.uint8)
    b = a ^ (rng.random((frames, n)) < q).astype(np.uint8)
    res = reconcile_cascade(
        a, b, qber=q, seed=12345, preset=row["preset"], slack=row["slack"],
        local_max=row.get("local_max", 4096),
    )
    f = res.leaked_bits / (n * binary_entropy((a != b).mean(axis=1)))
    se = math.hypot(f.std(ddof=1) / math.sqrt(frames), row["f_std"] / math.sqrt(row["frames"]))
    assert abs(f.mean() - row["f_mean"]) <= 4 * se + 0.003
    fails = int((~(res.bits == a).all(axis=1)).sum())
    rate = row["fer"] if row["frame_errors"] else row["fer_upper95"]
    assert fails <= _poisson_limit(rate * frames)
