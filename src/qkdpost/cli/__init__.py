"""The ``qkdpost`` command line: a thin layer over the library.

Each subcommand lives in its own module in this package and defines
``register(subparsers)``, which adds its parser and sets ``func`` (taking the
parsed args, returning an exit code). Modules import the library lazily inside
``func`` so ``qkdpost --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

from .. import __version__
from ..errors import QkdpostError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qkdpost",
        description="QKD post-processing: detector timestamps in, verified secret keys out.",
    )
    parser.add_argument("--version", action="version", version=f"qkdpost {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except QkdpostError as exc:
        print(f"qkdpost {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # Output piped into e.g. `head` that exited early: not an error of ours.
        # Point stdout at devnull so the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        # Permission denied, disk full, missing file: say which, no traceback.
        print(f"qkdpost {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"qkdpost {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
