"""Sifting throughput, one core: the Numba kernels beside plain NumPy references.

Run:  /tmp/venv/bin/pytest benchmarks/bench_sift.py --benchmark-only -q \
          --benchmark-columns=min,mean,rounds --benchmark-sort=name \
          --benchmark-timer=time.process_time

CPU time (``time.process_time``) is the per-core figure; wall time on the shared
2-core machine is inflated by other processes.

Data: 10 s of a synthetic BBM92 link at 1 M detections/s per side (360 k/s
pair photons + 640 k/s background per side, 300 ps jitter, Bob's clock
+0.2 s, +40 ppm), built by ``tests/oracles/sift.py``.

- ``condition``: click conditioning (channel map, multi clicks, dead time),
  Numba kernel vs a vectorised NumPy reference (channel lookup and a
  "previous click too close" mask -- a simplification: it compares with the
  previous *click*, not the opening click of the detection);
- ``match``: coincidence pairing of both parties' detections (Bob's already
  mapped to Alice's clock), Numba two-pointer kernel vs NumPy
  ``searchsorted`` nearest neighbour with duplicate removal;
- ``protocol``: the whole two-party sift (both parties, alignment, drift
  servo, every message encoded/decoded on the loopback channel).

Throughput is in ``extra_info`` as M events/s, events = Alice's + Bob's.
Goal of issue 2: sifting kernel >= 100 M events/s/core.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from oracles.sift import DEFAULT_MAP, synth_bbm92  # noqa: E402

from qkdpost.align import ClockModel  # noqa: E402
from qkdpost.io.model import StreamInfo, iter_arrays  # noqa: E402
from qkdpost.sift import SiftConfig, channel_lut, seeded_bits, sift_streams  # noqa: E402
from qkdpost.sift import _kernels as K  # noqa: E402

WINDOW = 1300  # ticks (ps): 3 sigma of the 425 ps combined jitter


@pytest.fixture(scope="module")
def link():
    return synth_bbm92(duration_s=10.0, pair_rate=600e3, eta_a=0.6, eta_b=0.6, bg_rate=640e3, offset_s=0.2,
                       freq=40e-6, seed=5)


@pytest.fixture(scope="module")
def mapped(link):
    m = ClockModel.from_offset(0.2, 40e-6, 1e-12, 1e-12)
    return link.t_a, m.to_alice(link.t_b)


def _record(benchmark, n):
    benchmark.extra_info["events"] = int(n)
    benchmark.extra_info["Mevents_per_s_best"] = round(n / benchmark.stats.stats.min / 1e6, 1)
    benchmark.extra_info["Mevents_per_s_mean"] = round(n / benchmark.stats.stats.mean / 1e6, 1)


# --------------------------------------------------------------------------- conditioning


def test_condition_kernel(benchmark, link):
    t, ch = link.t_a, link.ch_a
    n = t.size
    lut = channel_lut(DEFAULT_MAP)
    out = (np.empty(n, np.int64), np.empty(n, np.uint8), np.empty(n, np.uint8), np.empty(n, np.uint8))

    def run():
        return K.condition_clicks(t, ch, lut, 0, 1000, np.zeros(5, np.int64), *out, np.zeros(5, np.int64))

    run()
    benchmark.pedantic(run, rounds=10, warmup_rounds=1)
    _record(benchmark, n)


def numpy_condition(t, ch, lut, mc):
    code = lut[ch]
    keep = code != 255
    t, code = t[keep], code[keep]
    close = np.empty(t.size, bool)
    close[0] = False
    np.less_equal(np.diff(t), mc, out=close[1:])
    return t[~close], code[~close] >> 1, code[~close] & 1


def test_condition_numpy(benchmark, link):
    lut = channel_lut(DEFAULT_MAP)
    benchmark.pedantic(lambda: numpy_condition(link.t_a, link.ch_a, lut, 1000), rounds=5, warmup_rounds=1)
    _record(benchmark, link.t_a.size)


# --------------------------------------------------------------------------- coincidences


def test_match_kernel(benchmark, mapped):
    ta, tb = mapped
    n = min(ta.size, tb.size)
    ia, ib = np.empty(n, np.int64), np.empty(n, np.int64)

    def run():
        return K.match_coincidences(ta, tb, WINDOW, np.zeros(tb.size, np.uint8), ia, ib)

    k = run()
    assert k > 0.18 * ta.size
    benchmark.pedantic(run, rounds=10, warmup_rounds=1)
    benchmark.extra_info["pairs"] = int(k)
    _record(benchmark, ta.size + tb.size)


def numpy_match(ta, tb, window):
    j = np.searchsorted(tb, ta)
    jl = np.clip(j - 1, 0, tb.size - 1)
    jr = np.clip(j, 0, tb.size - 1)
    dl = np.abs(tb[jl] - ta)
    dr = np.abs(tb[jr] - ta)
    best = np.where(dl <= dr, jl, jr)
    d = np.minimum(dl, dr)
    ok = d <= window
    ia = np.flatnonzero(ok)
    ib = best[ok]
    _, first = np.unique(ib, return_index=True)  # each Bob event once
    first.sort()
    return ia[first], ib[first]


def test_match_numpy(benchmark, mapped):
    ta, tb = mapped
    ia, _ = numpy_match(ta, tb, WINDOW)
    assert ia.size > 0.18 * ta.size
    benchmark.pedantic(lambda: numpy_match(ta, tb, WINDOW), rounds=5, warmup_rounds=1)
    _record(benchmark, ta.size + tb.size)


# --------------------------------------------------------------------------- whole protocol


def test_protocol_two_party(benchmark, link):
    ia = StreamInfo(tick_s=1e-12, channel_map=DEFAULT_MAP)

    def run():
        return sift_streams(ia, iter_arrays(link.t_a, link.ch_a, 1 << 20), ia, iter_arrays(link.t_b, link.ch_b, 1 << 20),
                            SiftConfig(), random_bits_alice=seeded_bits(1), random_bits_bob=seeded_bits(2))

    r = run()
    benchmark.pedantic(run, rounds=3, warmup_rounds=0)
    benchmark.extra_info["key_bits"] = int(r.bob.key.size)
    benchmark.extra_info["round_trips"] = r.channel["round_trips"]
    benchmark.extra_info["bytes"] = r.channel["bytes_sent"] + r.channel["bytes_received"]
    _record(benchmark, link.t_a.size + link.t_b.size)


# --------------------------------------------------------------------------- decoy BB84


@pytest.fixture(scope="module")
def decoy_link():
    from qkdpost.simulate import DecoyConfig, generate

    # 0.5 s at 100 MHz: 50 M slots in Alice's log, ~130 k detections at Bob
    return generate(DecoyConfig(duration_s=0.5), seed=3)


def test_decoy_protocol_two_party(benchmark, decoy_link):
    link = decoy_link

    def run():
        return sift_streams(link.alice.info, iter_arrays(link.alice.t, link.alice.ch, 1 << 22), link.bob.info,
                            iter_arrays(link.bob.t, link.bob.ch, 1 << 20), SiftConfig(),
                            random_bits_bob=seeded_bits(2))

    r = run()
    benchmark.pedantic(run, rounds=3, warmup_rounds=0)
    benchmark.extra_info["key_bits"] = int(r.bob.key.size)
    benchmark.extra_info["slots"] = int(link.alice.t.size)
    benchmark.extra_info["Mslots_per_s_best"] = round(link.alice.t.size / benchmark.stats.stats.min / 1e6, 1)
    _record(benchmark, link.alice.t.size + link.bob.t.size)
