"""The pipeline over TCP between two processes on 127.0.0.1 (Alice serves, Bob runs the lanes).

Run:  python benchmarks/bench_pipeline_tcp.py --qber 0.02 --blocks 24 [--delay-ms 1]

Alice's process answers with the pipeline's own engine (``qkdpost.transport.serve``),
Bob's drives ``BobEngine`` over a ``TcpChannel``: the same code as
``qkdpost serve`` / ``qkdpost run --role bob --peer``, with sifted blocks given
directly (as ``bench_pipeline.py``). A warm-up session (4 blocks: JIT loading,
Cascade's permutations in both processes) comes first; the second session is
timed on Bob's side. ``--delay-ms`` makes Alice hold every reply that long, as
a link with that round-trip time would (this machine has no network emulator):
it shows how far Bob's lanes, each with a request out on the one connection,
hide the link's latency. Prints one JSON line; throughput is Mbit/s of sifted
key into final key (wall).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import N, _blocks  # noqa: E402  (benchmarks/ is not a package)

WARMUP_BLOCKS = 4


def _config(lanes: int, batch: int):
    from qkdpost.config import Config

    return Config().replace(block_bits=N, batch_blocks=batch, lanes=lanes, ec_method="cascade")


def _alice(port_q, args, tmp: str) -> None:
    from qkdpost.keystore import KeyStore
    from qkdpost.pipeline.engine import AliceEngine
    from qkdpost.pipeline.kit import QkdpostKit
    from qkdpost.pipeline.segments import Segment
    from qkdpost.report import Report
    from qkdpost.transport import serve

    data, cfg, kit = _blocks(args.qber, args.blocks, 3), _config(args.lanes, args.batch), QkdpostKit(cascade_seed=12345)
    sessions = iter([WARMUP_BLOCKS, args.blocks])
    delay = args.delay_ms / 1000

    class Delayed:  # every reply leaves `delay` later, as over a link with that round-trip time
        def __init__(self, eng):
            self.eng = eng
            self.concurrent = getattr(eng, "concurrent", False)

        def handle(self, kind, body):
            time.sleep(delay)
            return self.eng.handle(kind, body)

    def make():
        k = next(sessions)
        eng = AliceEngine(cfg, KeyStore(Path(tmp) / f"alice{k}"), Report("alice", {}), stream_id=f"A{k}", kit=kit)
        for a, _, _ in data[:k]:
            eng.push(Segment(a))
        return Delayed(eng) if delay else eng

    serve(make, "127.0.0.1", 0, max_sessions=2, on_listen=port_q.put, timeout_s=300)


def _bob(port: int, args, tmp: str, k: int, kit) -> float:
    from qkdpost.keystore import KeyStore
    from qkdpost.pipeline.engine import BobEngine
    from qkdpost.pipeline.segments import Segment
    from qkdpost.report import Report
    from qkdpost.transport import TcpChannel

    data = _blocks(args.qber, args.blocks, 3)[:k]
    with TcpChannel("127.0.0.1", port, timeout_s=300) as chan:
        bob = BobEngine(_config(args.lanes, args.batch), chan, KeyStore(Path(tmp) / f"bob{k}"), Report("bob", {}),
                        stream_id=f"B{k}", kit=kit)
        t0 = time.perf_counter()
        bob.start()
        keys = 0
        for _, b, st in data:
            keys += len(bob.push(Segment(b, st)))
        keys += len(bob.finish())
        wall = time.perf_counter() - t0
    if keys != k:
        raise SystemExit(f"only {keys} of {k} blocks became keys")
    return wall


def main(argv=None) -> None:
    from qkdpost.pipeline.kit import QkdpostKit

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qber", type=float, default=0.02)
    ap.add_argument("--blocks", type=int, default=24, help="10^6-bit blocks in the timed session")
    ap.add_argument("--lanes", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4, help="blocks per reconciliation")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="hold every reply this long (a link's round trip)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        port_q = mp.get_context("fork").Queue()
        alice = mp.get_context("fork").Process(target=_alice, args=(port_q, args, tmp))
        alice.start()
        port = port_q.get(timeout=300)
        kit = QkdpostKit(cascade_seed=12345)
        _bob(port, args, tmp, WARMUP_BLOCKS, kit)
        wall = _bob(port, args, tmp, args.blocks, kit)
        alice.join(60)
    print(json.dumps({"qber": args.qber, "blocks": args.blocks, "lanes": args.lanes, "batch_blocks": args.batch,
                      "delay_ms": args.delay_ms, "wall_s": round(wall, 3),
                      "sifted_Mbps": round(args.blocks * N / wall / 1e6, 2)}))


if __name__ == "__main__":
    main()
