"""``qkdpost bench``: a short throughput table of every stage and the whole chain."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="throughput of every stage and the whole chain on this machine, next to references",
        description="Measures each stage after a warm-up (Numba compilation excluded) next to a live "
        "NumPy/SciPy reference or a peer figure measured on this machine kind, then the whole chain on "
        "a freshly simulated BBM92 link.",
    )
    p.add_argument("--bits", type=int, default=1 << 20, help="block size for the per-stage rows (default 2^20)")
    p.add_argument("--qber", type=float, default=0.02, help="error rate of the reconciliation inputs")
    p.add_argument("--seconds", type=float, default=3.0, help="simulated link length for the chain row")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions per row (best is kept)")
    p.add_argument("--no-chain", action="store_true", help="skip the whole-chain row")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..errors import ConfigError
    from ..pipeline.bench import format_table, run_bench

    if not (1024 <= args.bits <= 10**8):
        raise ConfigError(f"--bits={args.bits}: must be in [1024, 10^8]")
    if not (0 < args.qber < 0.5):
        raise ConfigError(f"--qber={args.qber}: must be in (0, 0.5)")
    if not (1.0 <= args.seconds <= 600):
        raise ConfigError(f"--seconds={args.seconds}: must be in [1, 600]")
    rows = run_bench(args.bits, args.qber, args.seconds, max(1, args.repeat), chain=not args.no_chain,
                     log=lambda s: print(f"  measuring {s} ...", file=sys.stderr, flush=True))
    print(format_table(rows))
    return 0
