"""``qkdpost run``: timestamp files in, verified keys out.

One process (both captured logs, loopback channel)::

    qkdpost run --alice alice.arrow --bob bob.arrow --out keys/

Bob's side of a live link (Alice runs ``qkdpost serve``)::

    qkdpost run --role bob --input bob.arrow --peer alice-host:7421 --out keys/
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    from ..config import add_config_arguments

    p = sub.add_parser(
        "run",
        help="post-process timestamp files into keys (both parties, or Bob against 'qkdpost serve')",
        description="Read -> align -> sift -> estimate -> reconcile -> verify -> finite-key length -> "
        "amplify -> key store. Without --role, both parties run in this process over a loopback "
        "channel; with --role bob, Bob connects to Alice's 'qkdpost serve'.",
    )
    p.add_argument("--role", choices=["both", "bob"], default="both", help="'both' (default, one process) or 'bob'")
    p.add_argument("--alice", metavar="FILE", help="Alice's timestamp file (one-process run)")
    p.add_argument("--bob", "--input", dest="bob", metavar="FILE", help="Bob's timestamp file")
    p.add_argument("--peer", metavar="HOST:PORT", help="Alice's address (with --role bob)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory: key store(s) and report")
    p.add_argument("--retries", type=int, default=3, help="reconnects after a lost connection (--role bob)")
    p.add_argument("--no-plot", action="store_true", help="skip report.png")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    add_config_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import config_from_args
    from ..errors import ConfigError

    cfg = config_from_args(args)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    if not args.bob:
        raise ConfigError("--bob FILE (or --input FILE) is required: Bob's timestamp file")
    if args.role == "both":
        if not args.alice:
            raise ConfigError("--alice FILE is required for a one-process run (or use --role bob --peer HOST:PORT)")
        if args.peer:
            raise ConfigError("--peer is for --role bob; a one-process run needs no peer")
        from ..pipeline.run import run_local

        rep = run_local(args.alice, args.bob, args.out, cfg, progress=progress, plot=not args.no_plot)
    else:
        if not args.peer:
            raise ConfigError("--role bob needs --peer HOST:PORT (Alice's 'qkdpost serve' address)")
        if args.alice:
            raise ConfigError("--alice is for one-process runs; with --role bob Alice's file stays with Alice")
        from ..pipeline.run import run_bob
        from ..transport import parse_address

        rep = run_bob(args.bob, args.out, parse_address(args.peer), cfg, progress=progress, retries=args.retries,
                      plot=not args.no_plot)
    print(rep.summary())
    print(f"report: {args.out}/report.json")
    return 0
