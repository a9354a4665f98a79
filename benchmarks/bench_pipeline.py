"""The pipeline end to end: sifted key -> final key, and files -> keys.

Run:  /tmp/venv/bin/pytest benchmarks/bench_pipeline.py --benchmark-only -q \
          --benchmark-columns=min,mean,rounds --benchmark-sort=name

Issue 6 goal: >= 20 Mbit/s of sifted key processed into final key at
Q = 2-5 % with 10^6-bit blocks, one process, loopback channel, 2 cores.
``sifted_to_final`` times a whole session (8 blocks, default batching and
lanes), so it includes building Cascade's permutations once; ``lanes_steady``
times the steady state of a long session.

- ``pipeline``: :class:`~qkdpost.pipeline.engine.BobEngine` driving
  :class:`~qkdpost.pipeline.engine.AliceEngine` over a serialising loopback
  channel: reconcile -> verify -> finite-key length -> amplify -> two-phase
  key store (fsync) on both sides, journal, report; back half in its own
  thread.
- ``direct``: the simple reference in the same run -- the same stage
  functions called one after the other on both parties' arrays
  (``qkdpost.reconcile.reconcile`` over its own loopback, tags compared in
  place, ``finitekey.tomamichel2012``, ``amplify.toeplitz_hash`` on both
  sides), no journal, no key store, no report: the floor the stages set.
- ``no_ec``: the pipeline with reconciliation replaced by a stand-in that
  returns Bob's (already equal) bits and charges 0.12 n bits of leakage:
  everything the pipeline does around error correction (verify, length,
  PA on both sides, journal, two-phase fsync'd store, report), i.e. the
  ceiling the orchestration itself sets.
- ``files``: a simulated BBM92 link (timestamps in Arrow files) through
  ``run_local``; throughput in detections/s.

Throughput is in ``benchmark.extra_info`` (``sifted_Mbps``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from qkdpost.channel import LoopbackChannel
from qkdpost.config import Config
from qkdpost.keystore import KeyStore
from qkdpost.pipeline.engine import AliceEngine, BobEngine
from qkdpost.pipeline.segments import Segment
from qkdpost.report import Report

N = 10**6
BLOCKS = 8


def _blocks(q, k, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        a = rng.integers(0, 2, N, dtype=np.uint8)
        b = a ^ (rng.random(N) < q).astype(np.uint8)
        out.append((a, b, {"n_test": N, "test_errors": int(rng.binomial(N, q))}))
    return out


class _NoEcKit:
    """Stand-in reconciliation for the ceiling measurement (inputs already equal)."""

    def __new__(cls):
        from qkdpost.pipeline.kit import QkdpostKit
        from qkdpost.reconcile.result import ReconcileResult

        class K(QkdpostKit):
            def reconcile_alice(self, method, frames, cfg, *, qber):
                return {}

            def reconcile_bob(self, channel, method, ids, bits, qber, cfg, *, seed):
                n = bits.shape[0]
                return ReconcileResult(bits=bits.copy(), leaked_bits=np.full(n, int(0.12 * bits.shape[1])),
                                       success=np.ones(n, bool), errors_corrected=np.zeros(n, np.int64),
                                       round_trips=0, bytes_sent=0, method="none")

        return K()


def _pipeline(data, cfg, tmp, kit=None):
    sa, sb = KeyStore(tmp / "a"), KeyStore(tmp / "b")
    ra, rb = Report("alice", {}), Report("bob", {})
    alice = AliceEngine(cfg, sa, ra, stream_id=f"A{tmp.name}", kit=kit)
    bob = BobEngine(cfg, LoopbackChannel(alice), sb, rb, stream_id=f"B{tmp.name}", kit=kit)
    bob.start()
    for a, b, st in data:
        alice.push(Segment(a))
        bob.push(Segment(b, st))
    bob.finish()
    return rb.totals()


def _direct(data, method, q):
    from qkdpost import finitekey
    from qkdpost.amplify import draw_seed, toeplitz_hash
    from qkdpost.reconcile import reconcile
    from qkdpost.verify import draw_key, key_words, tags, tags_equal

    final = 0
    for a, b, st in data:
        r = reconcile(a, b, method=method, qber=q)
        key = draw_key(N, 64).reshape(1, key_words(N, 64))
        ok = tags_equal(tags(a.reshape(1, -1), key, 64)[0], tags(r.bits.reshape(1, -1), key, 64)[0])
        ell = finitekey.tomamichel2012(N, st["n_test"], st["test_errors"], leak_ec=r.leaked_total, tag_bits=64,
                                       eps_cor=2.0**-64).length
        if ok and ell > 0:
            seed = draw_seed(N + ell - 1)
            ka, kb = toeplitz_hash(a, seed, ell), toeplitz_hash(r.bits, seed, ell)
            final += int(np.array_equal(ka, kb)) * ell
    return final


@pytest.fixture(scope="module", autouse=True)
def warm():
    """Compile every kernel on small inputs first."""
    from qkdpost.reconcile import reconcile

    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, 20000, dtype=np.uint8)
    b = a ^ (rng.random(20000) < 0.03).astype(np.uint8)
    reconcile(a, b, method="cascade", qber=0.03, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        _pipeline([(a, b, {"n_test": 20000, "test_errors": 600})],
                  Config().replace(block_bits=20000), Path(tmp))


@pytest.mark.parametrize("q", [0.02, 0.05])
@pytest.mark.parametrize("impl", ["pipeline", "direct"])
def test_sifted_to_final(benchmark, impl, q):
    data = _blocks(q, BLOCKS, 3)
    cfg = Config().replace(block_bits=N, ec_method="cascade")  # default batching and lanes
    if impl == "pipeline":
        def go():
            with tempfile.TemporaryDirectory() as tmp:
                return _pipeline(data, cfg, Path(tmp))["final_bits"]
    else:
        def go():
            return _direct(data, "cascade", q)
    final = benchmark.pedantic(go, rounds=1, iterations=1)
    sec = benchmark.stats.stats.min
    benchmark.extra_info.update(sifted_Mbps=BLOCKS * N / sec / 1e6, final_bits=int(final), blocks=BLOCKS,
                                block_bits=N, qber=q, method="cascade")


@pytest.mark.parametrize("q", [0.02, 0.05])
@pytest.mark.parametrize("batch_blocks", [1, 2, 4, 8])
def test_batch_blocks(benchmark, batch_blocks, q):
    """The pipeline on 8 blocks of 10^6 bits with 1, 2, 4 or 8 blocks per reconciliation."""
    k = 8
    data = _blocks(q, k, 3)
    cfg = Config().replace(block_bits=N, batch_blocks=batch_blocks, ec_method="cascade")

    def go():
        with tempfile.TemporaryDirectory() as tmp:
            return _pipeline(data, cfg, Path(tmp))

    t = benchmark.pedantic(go, rounds=1, iterations=1)
    sec = benchmark.stats.stats.min
    benchmark.extra_info.update(sifted_Mbps=k * N / sec / 1e6, final_bits=t["final_bits"], blocks=k,
                                batch_blocks=batch_blocks, qber=q, round_trips=t.get("round_trips"))


@pytest.mark.parametrize("q", [0.02, 0.05])
@pytest.mark.parametrize("lanes", [1, 2])
def test_lanes_steady_state(benchmark, lanes, q):
    """16 blocks of 10^6 bits, 4 per reconciliation (the default), 1 or 2 back-half lanes, in the
    steady state of a long session: the Cascade permutations are built before the timed run (a
    fixed public seed, as one session reuses its seed for every block), so only per-block work
    is timed."""
    from qkdpost.pipeline.kit import QkdpostKit

    k = 16
    data = _blocks(q, k, 3)
    cfg = Config().replace(block_bits=N, batch_blocks=4, lanes=lanes, ec_method="cascade")
    with tempfile.TemporaryDirectory() as tmp:  # builds both parties' permutations for this seed
        _pipeline(data[:4], cfg, Path(tmp), kit=QkdpostKit(cascade_seed=12345))

    def go():
        with tempfile.TemporaryDirectory() as tmp:
            return _pipeline(data, cfg, Path(tmp), kit=QkdpostKit(cascade_seed=12345))

    t = benchmark.pedantic(go, rounds=1, iterations=1)
    sec = benchmark.stats.stats.min
    benchmark.extra_info.update(sifted_Mbps=k * N / sec / 1e6, final_bits=t["final_bits"], blocks=k,
                                lanes=lanes, qber=q, round_trips=t.get("round_trips"))


def test_no_ec_ceiling(benchmark):
    k = 16
    rng = np.random.default_rng(4)
    data = []
    for _ in range(k):
        a = rng.integers(0, 2, N, dtype=np.uint8)
        data.append((a, a.copy(), {"n_test": N, "test_errors": int(0.02 * N)}))
    cfg = Config().replace(block_bits=N, batch_blocks=2)

    def go():
        with tempfile.TemporaryDirectory() as tmp:
            return _pipeline(data, cfg, Path(tmp), kit=_NoEcKit())

    t = benchmark.pedantic(go, rounds=1, iterations=1)
    sec = benchmark.stats.stats.min
    benchmark.extra_info.update(sifted_Mbps=k * N / sec / 1e6, final_bits=t["final_bits"], blocks=k,
                                time_per_stage_s=t["time_per_stage_s"])


def test_files_to_keys(benchmark):
    from qkdpost.pipeline.run import run_local
    from qkdpost.simulate import BBM92Config, write_link

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        write_link(BBM92Config(duration_s=6.0), d / "link", seed=2)
        cfg = Config().replace(block_bits=1 << 18)
        k = [0]

        def go():
            k[0] += 1
            return run_local(d / "link/alice.arrow", d / "link/bob.arrow", d / f"out{k[0]}", cfg, plot=False)

        rep = benchmark.pedantic(go, rounds=1, iterations=1)
        t = rep.totals()
        sec = benchmark.stats.stats.min
        benchmark.extra_info.update(detections_per_s=t.get("detections_bob", 0) / sec,
                                    sifted_Mbps=t["sifted_bits_in_blocks"] / sec / 1e6,
                                    final_bits=t["final_bits"], link_s=6.0)


def _rss_mb(field="VmRSS"):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return float("nan")


def test_memory_one_hour_stream(benchmark):
    """RSS over a long simulated stream fed slice by slice through qkdpost.Session.

    ``QKD_MEM_SECONDS`` (default 3600) simulated seconds of a BBM92 link at
    1e5 pairs/s (about 16k detections/s at Bob), 1 s slices, 2^18-bit blocks,
    both parties in this process over a loopback channel. RSS samples every
    300 simulated seconds go to ``extra_info["rss_mb"]``.
    """
    import os

    import qkdpost
    from qkdpost.simulate import BBM92Config, simulate

    dur = float(os.environ.get("QKD_MEM_SECONDS", 3600))
    samples = []

    def go():
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            sim = simulate(BBM92Config(duration_s=dur, pair_rate_hz=1e5, slice_s=1.0), seed=8)
            cfg = Config().replace(block_bits=1 << 18)
            alice = qkdpost.Session(cfg, role="alice", info=sim.alice_info, store=d / "a", stream_id="memA")
            bob = qkdpost.Session(cfg, role="bob", info=sim.bob_info, store=d / "b", stream_id="memB",
                                  channel=LoopbackChannel(alice.responder))
            bits = 0
            for i, sl in enumerate(sim):
                alice.feed(sl.alice.t, sl.alice.ch)
                bits += sum(k.bits.size for k in bob.feed(sl.bob.t, sl.bob.ch))
                if i % 300 == 0:
                    samples.append((i, round(_rss_mb(), 1), bits))
            alice.close()
            bits += sum(k.bits.size for k in bob.close())
            samples.append((dur, round(_rss_mb(), 1), bits))
            return bob.report.totals()

    t = benchmark.pedantic(go, rounds=1, iterations=1)
    benchmark.extra_info.update(stream_s=dur, rss_mb=samples, peak_rss_mb=round(_rss_mb("VmHWM"), 1),
                                final_bits=t["final_bits"], blocks_ok=t["blocks_ok"])


@pytest.fixture(scope="module")
def link3s(tmp_path_factory):
    from qkdpost.simulate import BBM92Config, write_link

    d = tmp_path_factory.mktemp("link3s")
    write_link(BBM92Config(duration_s=3.0), d, seed=1)
    return d


@pytest.mark.parametrize("chunks", ["as_read", "copied"])
def test_front_half_read_only_chunks(benchmark, link3s, chunks):
    """Both front halves (read, align, sift over the loopback) on a 3 s BBM92 link from Arrow files.

    ``as_read``: the chunks as the reader gives them (read-only, memory-mapped
    views), what the pipeline does now; ``copied``: each read-only chunk
    copied first, what it did before the sift kernels' read-only inputs
    were relied on (the reference).
    """
    from qkdpost.channel import Responder
    from qkdpost.io import read_stream
    from qkdpost.io.model import Chunk
    from qkdpost.pipeline.front import AliceFront, BobFront

    cfg = Config().replace(seed=3)
    w = (lambda a: a if a.flags.writeable else a.copy()) if chunks == "copied" else (lambda a: a)

    def go():
        ia, ca = read_stream(link3s / "alice.arrow")
        ib, cb = read_stream(link3s / "bob.arrow")
        af = AliceFront(cfg, ia, chunks=(Chunk(w(c.t), w(c.ch)) for c in ca), emit=lambda seg: None)
        bf = BobFront(cfg, ib, LoopbackChannel(Responder(af.handlers())))
        n = bits = 0
        for c in cb:
            n += len(c.t)
            bits += bf.push(w(c.t), w(c.ch)).bits.size
        return n, bits + bf.finish().bits.size

    go()  # warm-up
    n, bits = benchmark.pedantic(go, rounds=5, iterations=1)
    sec = benchmark.stats.stats.min
    benchmark.extra_info.update(events_bob=n, Mevents_per_s=n / sec / 1e6, sifted_bits=bits)


def main(argv=None):
    """One steady-state pipeline run with any batching and lanes (the table in docs/pipeline.md)."""
    import argparse
    import json
    import resource
    import time

    from qkdpost.pipeline.kit import QkdpostKit

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--qber", type=float, default=0.02)
    ap.add_argument("--batch", type=int, default=4, help="blocks per reconciliation")
    ap.add_argument("--lanes", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=16, help="10^6-bit blocks in the timed run")
    ap.add_argument("--preset", default="option7", help="Cascade preset")
    ap.add_argument("--ec-method", default="cascade", choices=("cascade", "ldpc"))
    ap.add_argument("--ldpc-code-bits", type=int, default=0, help="longest LDPC code (0: the longest shipped)")
    ap.add_argument("--passes", type=int, default=Config().reconcile.cascade_passes,
                    help="Cascade passes (0: the preset's own)")
    a = ap.parse_args(argv)
    data = _blocks(a.qber, a.blocks, 3)
    cfg = Config().replace(block_bits=N, batch_blocks=a.batch, lanes=a.lanes, ec_method=a.ec_method,
                           cascade_preset=a.preset, cascade_passes=a.passes, ldpc_code_bits=a.ldpc_code_bits)
    with tempfile.TemporaryDirectory() as tmp:  # compiles, and builds the permutations of this seed
        _pipeline(data[: a.batch], cfg, Path(tmp), kit=QkdpostKit(cascade_seed=12345))
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        t = _pipeline(data, cfg, Path(tmp), kit=QkdpostKit(cascade_seed=12345))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"qber": a.qber, "batch_blocks": a.batch, "lanes": a.lanes, "blocks": a.blocks,
                      "preset": a.preset, "passes": a.passes, "ec_method": a.ec_method,
                      "ldpc_code_bits": a.ldpc_code_bits, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "sifted_Mbps": round(a.blocks * N / wall / 1e6, 2), "final_bits": t["final_bits"],
                      "mean_efficiency": t.get("mean_efficiency"),
                      "round_trips": t.get("round_trips")}))


if __name__ == "__main__":
    main()
