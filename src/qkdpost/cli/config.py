"""``qkdpost config --show``: print the effective configuration."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..config import add_config_arguments

    p = sub.add_parser(
        "config",
        help="print the effective configuration (defaults < --config FILE < flags)",
        description="Print the effective configuration as TOML (or JSON). Every field can be set "
        "in a TOML file (section = stage) and overridden by a flag of the same name.",
    )
    p.add_argument("--show", action="store_true", help="print the effective configuration (the default action)")
    p.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    add_config_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..config import config_from_args, to_toml

    cfg = config_from_args(args)
    if args.json:
        print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    else:
        print(to_toml(cfg), end="")
    return 0
