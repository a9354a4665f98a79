"""``qkdpost warmup``: compile every Numba kernel into the cache."""

from __future__ import annotations

import argparse
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("warmup", help="compile every Numba kernel ahead of use (run at install or boot)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._jit import warmup

    start = time.perf_counter()
    done = warmup()
    print(f"compiled {len(done)} kernel modules in {time.perf_counter() - start:.1f} s")
    for name in done:
        print(f"  {name}")
    return 0
