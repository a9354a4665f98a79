"""``qkdpost info FILE``: counts per channel, rate, duration and metadata of a timestamp file."""

from __future__ import annotations

import argparse

from ._io_args import add_reader_arguments, progress_bar, reader_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="summarise a timestamp file: events per channel, rate, duration, metadata",
        description="Read FILE (any supported format) to the end and print what it holds.",
    )
    p.add_argument("file", metavar="FILE", help="timestamp file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_reader_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..io.tools import summarize

    update, close = progress_bar("info")
    try:
        s = summarize(args.file, format=args.format, progress=update, **reader_options(args))
    finally:
        close()
    if args.json:
        print(json.dumps(s, indent=2, sort_keys=True))
        return 0
    info = s["info"]
    print(f"file       {s['path']}")
    print(f"format     {info['extra'].get('format', 'arrow')}  device {info['device'] or '-'}  "
          f"party {info['party'] or '-'}  kind {info['kind']}")
    print(f"tick       {info['tick_s']:.6g} s")
    print(f"events     {s['events']}")
    if s["events"]:
        rate = f"{s['rate_hz']:.6g} /s" if s["rate_hz"] else "-"
        print(f"time       ticks {s['first_tick']} .. {s['last_tick']}  duration {s['duration_s']:.6g} s  rate {rate}")
    print("channel    events       share   role")
    for ch, (n, role) in sorted(s["counts"].items()):
        print(f"{ch:>7}    {n:<12} {n / s['events']:6.2%}   {role}")
    extras = {k: v for k, v in s.items() if k not in ("path", "events", "first_tick", "last_tick", "duration_s",
                                                       "rate_hz", "counts", "info")}
    for k, v in extras.items():
        print(f"{k.replace('_', ' ')}: {v}")
    for k, v in info["extra"].items():
        if k != "format":
            print(f"meta       {k} = {v}")
    if info["channel_map"]:
        print("channel map " + ", ".join(f"{k}={v}" for k, v in info["channel_map"].items()))
    return 0
