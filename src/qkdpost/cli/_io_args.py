"""Reader options shared by ``qkdpost convert`` and ``qkdpost info``."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable


def add_reader_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input format options (only those of the chosen format apply)")
    g.add_argument("--format", default="auto",
                   help="input format: auto (magic bytes, then extension), arrow, ptu, qcrypto, qutag")
    g.add_argument("--variant", choices=["49bit", "54bit"], help="qcrypto: 49-bit 1/8 ns (default) or 54-bit 1/256 ns time")
    g.add_argument("--word-swap", action="store_true", default=None, help="qcrypto: legacy layout, high word first")
    g.add_argument("--keep-flagged", action="store_true", default=None,
                   help="qcrypto: keep rollover/dummy-flagged events (bit 4) as channel 16|pattern")
    g.add_argument("--no-markers", dest="keep_markers", action="store_false", default=None,
                   help="ptu: drop marker records")
    g.add_argument("--tick-s", type=float, help="qutag: device base unit in seconds (default 1e-12)")
    g.add_argument("--reorder-window-s", type=float,
                   help="importers: events may come this much before the latest one and are re-sorted "
                        "(default 1e-6; ptu 1e-5)")
    g.add_argument("--chunk-events", type=int, help="events per chunk (default 1048576)")


_OPTION_NAMES = ("variant", "word_swap", "keep_flagged", "keep_markers", "tick_s", "reorder_window_s", "chunk_events")


def reader_options(args: argparse.Namespace) -> dict[str, Any]:
    """The reader options the user actually gave (others keep the reader's defaults)."""
    return {k: getattr(args, k) for k in _OPTION_NAMES if getattr(args, k, None) is not None}


def progress_bar(desc: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A tqdm byte progress bar on stderr (hidden when stderr is not a terminal)."""
    from tqdm import tqdm

    bar = tqdm(total=0, unit="B", unit_scale=True, desc=desc, file=sys.stderr, disable=None, leave=False)

    def update(done: int, total: int) -> None:
        if total and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    return update, bar.close
