"""``rtpick check-config FILE``: validate a config file; ``--example`` prints the reference config."""

from __future__ import annotations

import argparse
import sys

from rtpick.config import ConfigError, load_config, render_example


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", help="config TOML file to validate")
    parser.add_argument("--example", action="store_true", help="print the example config with every option")


def run(args: argparse.Namespace) -> int:
    if args.example:
        sys.stdout.write(render_example())
        return 0
    if not args.file:
        print("rtpick check-config: give a FILE or --example", file=sys.stderr)
        return 2
    try:
        load_config(args.file)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.file}: OK")
    return 0
