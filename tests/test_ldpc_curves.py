"""Slow statistical tests: replay the stored LDPC curves; regenerate every shipped code.

Run with ``pytest -m slow tests/test_ldpc_curves.py``.

Curves: ``data/ldpc_curves.json`` (written by ``benchmarks/bench_ldpc.py
--curves``). Each stored point is re-measured on K fresh frames (another
seed) with the same default options. Tolerance: the mean efficiency must lie
within 0.01 + 3 sigma/sqrt(K) of the stored mean (sigma = stored per-frame
standard deviation), and the number of failed frames must not exceed
K * FER + 3 sqrt(K * FER) + 1 (a Poisson upper band; FER = stored value or
1/frames when none failed). No frame may be wrong while reported as success.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from qkdpost.bits import binary_entropy
from qkdpost.reconcile.ldpc import available_codes, reconcile_ldpc

ROOT = Path(__file__).resolve().parent.parent
CURVES = ROOT / "data" / "ldpc_curves.json"
K_FRAMES = 16


def _points():
    if not CURVES.exists():
        return []
    return [p for p in json.loads(CURVES.read_text())["points"] if p["n_key"] <= 70000]


def _frames(rng, nf, n_key, q):
    a = rng.integers(0, 2, (nf, n_key), dtype=np.uint8)
    b = a.copy()
    k = int(round(q * n_key))
    for i in range(nf):
        b[i, rng.choice(n_key, k, replace=False)] ^= 1
    return a, b


@pytest.mark.slow
@pytest.mark.parametrize("point", _points(), ids=lambda p: f"n{p['n_key']}-q{p['qber']}")
def test_replay_stored_curve(point):
    n_key, q = point["n_key"], point["qber"]
    rng = np.random.default_rng([99, n_key, int(q * 1e6)])
    a, b = _frames(rng, K_FRAMES, n_key, q)
    res = reconcile_ldpc(a, b, qber=q, seed=1234, **point.get("options", {}))
    assert res.preset == point["code"]
    correct = np.all(res.bits == a, axis=1)
    assert not np.any(res.success & ~correct), "a frame reported as reconciled is wrong"
    h = float(binary_entropy(round(q * n_key) / n_key))
    f = res.leaked_bits / (n_key * h)
    tol = 0.01 + 3 * point["f_std"] / math.sqrt(K_FRAMES)
    assert abs(f.mean() - point["f_mean"]) <= tol, (f.mean(), point["f_mean"], tol)
    fer = max(point["fer"], 1.0 / point["frames"])
    failed = int((~(res.success & correct)).sum())
    assert failed <= K_FRAMES * fer + 3 * math.sqrt(K_FRAMES * fer) + 1


def _builder():
    spec = importlib.util.spec_from_file_location("build_ldpc_codes", ROOT / "scripts" / "build_ldpc_codes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.parametrize("entry", [c for c in available_codes() if c["n"] <= 2**16], ids=lambda c: c["name"])
def test_shipped_codes_regenerate_bit_for_bit(entry):
    """2^14 and 2^16 codes (~1 min each); the 2^18 ones take ~25 min each: run
    ``python scripts/build_ldpc_codes.py --check`` for those."""
    mod = _builder()
    new, code = mod.build_one(entry["name"], entry["distribution"], entry["n"], entry["peg_max_reach"])
    assert new == entry
    shipped = gzip.decompress((mod.OUT / entry["file"]).read_bytes())
    assert hashlib.sha256(shipped).hexdigest() == entry["sha256"]
