"""``rtpick check-config FILE``: validate a config file; ``--example`` prints the reference config.

Beyond the TOML schema it resolves every region as ``run`` would (inventory, model
metadata, lane settings such as overlap and buffer length against the model's window)
and lists every problem by region and key, exit code 2. The models are loaded for
this (SeisBench builds the network to read its metadata; weights of PhaseNet-sized
models load in about a second).
"""

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
    from rtpick.inference.regions import RegionError, coverage_warnings, plan_lanes

    try:
        config = load_config(args.file)
        plan = plan_lanes(config)
    except (ConfigError, RegionError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    for line in coverage_warnings(plan.router.coverage(), bool(config.stream.inventory)):
        print(f"WARNING: {line}", file=sys.stderr)
    lanes = ", ".join(f"{spec.region}: {spec.model_id} at {spec.fs:g} Hz" for spec in plan.specs)
    print(f"{args.file}: OK ({lanes})")
    return 0
