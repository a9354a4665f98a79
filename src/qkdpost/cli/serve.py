"""``qkdpost serve --role alice``: Alice's side of a live link over TCP.

    qkdpost serve --role alice --input alice.arrow --listen 0.0.0.0:7421 --out keys/
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..config import add_config_arguments

    p = sub.add_parser(
        "serve",
        help="Alice: answer Bob's 'qkdpost run --role bob' over TCP and store the same keys",
        description="Listen for Bob, answer his protocol requests from Alice's own timestamp file, "
        "and write Alice's key store and report. Each Bob session starts from the beginning of "
        "the file; blocks already stored or started are skipped.",
    )
    p.add_argument("--role", choices=["alice"], default="alice", help="only 'alice' serves")
    p.add_argument("--input", "--alice", dest="input", required=True, metavar="FILE", help="Alice's timestamp file")
    p.add_argument("--listen", default="127.0.0.1:7421", metavar="[HOST:]PORT",
                   help="address to listen on (default 127.0.0.1:7421; port 0 picks a free one)")
    p.add_argument("--out", required=True, metavar="DIR", help="Alice's key store and report")
    p.add_argument("--sessions", type=int, default=None, metavar="N", help="stop after N Bob sessions")
    p.add_argument("--idle-timeout", type=float, default=None, metavar="S",
                   help="stop when no Bob connects for S seconds")
    p.add_argument("--no-plot", action="store_true", help="skip report.png")
    add_config_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..config import config_from_args
    from ..pipeline.run import serve_alice
    from ..transport import parse_address

    cfg = config_from_args(args)
    host, port = parse_address(args.listen)

    def listening(p: int) -> None:
        print(f"alice listening on {host}:{p}", flush=True)
        sys.stdout.flush()

    rep = serve_alice(args.input, args.out, cfg, host=host, port=port, max_sessions=args.sessions,
                      idle_timeout_s=args.idle_timeout, on_listen=listening, plot=not args.no_plot)
    print(rep.summary())
    return 0
