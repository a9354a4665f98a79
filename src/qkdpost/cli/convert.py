"""``qkdpost convert IN OUT``: any time-tagger file to the native Arrow format."""

from __future__ import annotations

import argparse

from ._io_args import add_reader_arguments, progress_bar, reader_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a time-tagger file (PTU, qcrypto raw, quTAG, Arrow) to the native Arrow format",
        description="Stream IN through the matching importer and write OUT as an Arrow IPC timestamp file "
        "(atomically: nothing is left behind on error).",
    )
    p.add_argument("input", metavar="IN", help="input file")
    p.add_argument("output", metavar="OUT", help="output .arrow file")
    p.add_argument("--channel-map", help="channel roles merged over the reader's map, e.g. 0=H,1=V,2=D,3=A "
                   "(roles: H V D A sync marker unused)")
    p.add_argument("--party", choices=["alice", "bob", ""], help="party stored in the metadata")
    add_reader_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io.tools import convert

    update, close = progress_bar("convert")
    try:
        res = convert(args.input, args.output, format=args.format, channel_map=args.channel_map,
                      party=args.party, progress=update, **reader_options(args))
    finally:
        close()
    stats = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in res.items() if k not in ("events", "output", "info"))
    print(f"wrote {res['events']} events to {res['output']}" + (f" ({stats})" if stats else ""))
    return 0
