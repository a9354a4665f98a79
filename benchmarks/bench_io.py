"""Decode throughput of the importers on warm (page-cached) files, one core.

Run:  /tmp/venv/bin/pytest benchmarks/bench_io.py --benchmark-only -q \
          --benchmark-columns=min,mean,rounds --benchmark-sort=name

Three implementations side by side on the same file in the same run:

- ``reader``: the full public reader (``read_qcrypto`` / ``read_ptu``):
  file reads into a reused buffer, the Numba decoder, the reordering window
  and the chunk iterator, consumed to the end;
- ``kernel``: the Numba decoder alone on the records already in memory;
- ``numpy``: a plain vectorised NumPy decoder (the simple reference) that
  reads the whole file with ``np.fromfile`` and decodes with array ops.

Throughput (million events per second) is in ``extra_info``; the goal of
issue 2 is >= 100 M events/s/core.
"""

from __future__ import annotations

import numpy as np
import pytest

from qkdpost.io import _kernels as K
from qkdpost.io import read_ptu, read_qcrypto

N_EVENTS = 1 << 22  # 4 M events: 32 MiB qcrypto, ~17 MiB PTU


# --------------------------------------------------------------------------- test data

def _times(n, mean_gap, seed=1):
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.integers(1, 2 * mean_gap, n)).astype(np.int64)


@pytest.fixture(scope="module")
def qcrypto_file(tmp_path_factory):
    t = _times(N_EVENTS, 1000)  # 1000 x 125 ps: 8 M events/s
    pat = np.left_shift(1, np.random.default_rng(2).integers(0, 4, N_EVENTS)).astype(np.uint64)
    raw = (t.astype(np.uint64) << np.uint64(15)) | pat
    p = tmp_path_factory.mktemp("bench") / "events.dat"
    raw.astype("<u8").tofile(p)
    return p, N_EVENTS


def _ptu_records(t, chan):
    """HydraHarp v2 / Generic T2 records with counted overflow records (vectorised encoder)."""
    period = t >> 25
    jumps = np.diff(period, prepend=0)
    n_ofl = int(np.count_nonzero(jumps))
    out = np.empty(len(t) + n_ofl, dtype="<u4")
    pos = np.arange(len(t)) + np.cumsum(jumps != 0)  # where each photon record goes
    out[pos] = (chan.astype(np.uint32) << 25) | (t & 0x1FFFFFF).astype(np.uint32)
    ofl_pos = pos[jumps != 0] - 1
    out[ofl_pos] = np.uint32(1 << 31) | np.uint32(0x3F << 25) | jumps[jumps != 0].astype(np.uint32)
    return out


@pytest.fixture(scope="module")
def ptu_file(tmp_path_factory):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from oracles.io import PTU_TYPES, ptu_header

    t = _times(N_EVENTS, 2000)  # 2000 x 1 ps: 500 M events/s of tags, an overflow every ~17k events
    chan = np.random.default_rng(3).integers(0, 4, N_EVENTS)
    recs = _ptu_records(t, chan)
    p = tmp_path_factory.mktemp("bench") / "events.ptu"
    p.write_bytes(ptu_header(PTU_TYPES["GenericT2"], len(recs), 1e-12) + recs.tobytes())
    return p, N_EVENTS


# --------------------------------------------------------------------------- NumPy references

def numpy_qcrypto(path):
    raw = np.fromfile(path, dtype="<u8")
    t = (raw >> np.uint64(15)).astype(np.int64)
    ch = (raw & np.uint64(0xF)).astype(np.uint8)
    keep = (raw & np.uint64(0x10)) == 0
    t, ch = t[keep], ch[keep]
    if np.any(t[1:] < t[:-1]):  # the reference only checks order, it does not re-sort
        raise ValueError("unsorted")
    return t, ch


def numpy_ptu_generic(path, data_offset):
    rec = np.fromfile(path, dtype="<u4", offset=data_offset).astype(np.int64)
    special = rec >> 31
    chan = (rec >> 25) & 0x3F
    tt = rec & 0x1FFFFFF
    is_ofl = (special == 1) & (chan == 0x3F)
    ofl = np.cumsum(np.where(is_ofl, np.where(tt == 0, 1, tt) << 25, 0))
    keep = ~is_ofl
    t = (ofl + tt)[keep]
    ch = np.where(special == 1, np.where(chan == 0, 0, 0x80 | chan), chan + 1)[keep].astype(np.uint8)
    if np.any(t[1:] < t[:-1]):
        raise ValueError("unsorted")
    return t, ch


def _drain(result):
    _, it = result
    n = 0
    for c in it:
        n += len(c.t)
    return n


def _record(benchmark, n):
    benchmark.extra_info["events"] = n
    benchmark.extra_info["Mevents_per_s_best"] = round(n / benchmark.stats.stats.min / 1e6, 1)
    benchmark.extra_info["Mevents_per_s_mean"] = round(n / benchmark.stats.stats.mean / 1e6, 1)


# --------------------------------------------------------------------------- qcrypto

def test_qcrypto_reader(benchmark, qcrypto_file):
    path, n = qcrypto_file
    assert _drain(read_qcrypto(path)) == n  # warm-up: JIT cache and page cache
    got = benchmark.pedantic(lambda: _drain(read_qcrypto(path)), rounds=5, warmup_rounds=1)
    assert got == n
    _record(benchmark, n)


def test_qcrypto_kernel(benchmark, qcrypto_file):
    path, n = qcrypto_file
    raw = np.fromfile(path, dtype="<u8")
    t_out = np.empty(n, np.int64)
    ch_out = np.empty(n, np.uint8)

    def run():
        return K.decode_qcrypto(raw, False, 15, False, 0, K.new_state(), t_out, ch_out, 0)

    assert run() == n
    assert benchmark.pedantic(run, rounds=10, warmup_rounds=1) == n
    _record(benchmark, n)


def test_qcrypto_numpy(benchmark, qcrypto_file):
    path, n = qcrypto_file
    t, ch = numpy_qcrypto(path)
    ours = np.concatenate([c.t for c in read_qcrypto(path)[1]])
    np.testing.assert_array_equal(t, ours)  # same answer as ours
    benchmark.pedantic(lambda: numpy_qcrypto(path), rounds=5, warmup_rounds=1)
    _record(benchmark, n)


# --------------------------------------------------------------------------- PTU

def test_ptu_reader(benchmark, ptu_file):
    path, n = ptu_file
    assert _drain(read_ptu(path)) == n
    got = benchmark.pedantic(lambda: _drain(read_ptu(path)), rounds=5, warmup_rounds=1)
    assert got == n
    _record(benchmark, n)


def test_ptu_kernel(benchmark, ptu_file):
    from qkdpost.io.ptu import read_ptu_header

    path, n = ptu_file
    _, off = read_ptu_header(path)
    rec = np.fromfile(path, dtype="<u4", offset=off)
    t_out = np.empty(len(rec), np.int64)
    ch_out = np.empty(len(rec), np.uint8)

    def run():
        return K.decode_ptu_t2(rec, K.PTU_HYDRAHARP2, True, 0, K.new_state(), t_out, ch_out, 0)

    assert run() == n
    assert benchmark.pedantic(run, rounds=10, warmup_rounds=1) == n
    _record(benchmark, n)


def test_ptu_numpy(benchmark, ptu_file):
    from qkdpost.io.ptu import read_ptu_header

    path, n = ptu_file
    _, off = read_ptu_header(path)
    t, ch = numpy_ptu_generic(path, off)
    info, it = read_ptu(path)
    chunks = list(it)
    np.testing.assert_array_equal(t, np.concatenate([c.t for c in chunks]))
    np.testing.assert_array_equal(ch, np.concatenate([c.ch for c in chunks]))
    benchmark.pedantic(lambda: numpy_ptu_generic(path, off), rounds=5, warmup_rounds=1)
    _record(benchmark, n)
