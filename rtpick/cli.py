"""``rtpick`` command line: one sub-command per module in :mod:`rtpick.commands`.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``
and is imported only when its command runs, so ``rtpick --help`` stays fast and
a broken optional dependency of one command cannot break the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> (module under rtpick.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "replay": ("replay", "Pick on miniSEED files as a stream; picks as JSON lines on stdout."),
    "check-config": ("check_config", "Validate a config file (or print the example config)."),
    "models": ("models", "Regions, their stations and model cards (thresholds in force and where they came from)."),
    "listen": ("listen", "Subscribe to a running rtpick over ZeroMQ and print its messages as JSON lines."),
    "plot": ("plot", "PNG of waveforms, P/S probabilities and picks for a time window or an event."),
    "run": ("run", "The daemon: SeedLink ingest -> picks (JSON lines on stdout with --stdout)."),
    "serve-seedlink": ("serve_seedlink", "Replay miniSEED files as a SeedLink 3.1 server (tests, demo, rehearsals)."),
    "demo": ("demo", "Replay the bundled Oklahoma data over SeedLink into the daemon and print its picks."),
    "simulate": ("simulate", "Labelled target-region synthetics (Brune source, Q, site, real noise) as a SeisBench dataset."),
    "adapt": ("adapt", "Fine-tune a picker on target-region data; SeisBench weights + model card."),
    "evaluate": ("evaluate", "P/S precision, recall, F1, residuals, recall by SNR/magnitude; JSON report + plots."),
    "associate": ("associate", "Associate picks (ZeroMQ or JSON lines) into events; rtpick.event/1 as JSON lines or on ZeroMQ."),
    "distill": ("distill", "Distil a picker into a small fast student on unlabelled target data."),
    "dataset": ("dataset", "Build a training set from a catalogue (QuakeML/SeisComP XML) and a waveform archive, or from a teacher's picks."),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="rtpick", description="Real-time deep-learning phase picking.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = argv[0] if argv else None
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(_module=module_name)
        if name == chosen:
            importlib.import_module(f"rtpick.commands.{module_name}").add_arguments(cmd)
    args = parser.parse_args(argv)
    module = importlib.import_module(f"rtpick.commands.{args._module}")
    from rtpick.commands.startup import StartupError

    try:
        return int(module.run(args) or 0)
    except StartupError as exc:
        print(exc, file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
