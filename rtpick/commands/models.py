"""``rtpick models --config FILE [-v]``: regions, their stations and the model card of each lane.

For every region in force: the stations it takes (count, the list with ``-v``; from
``stream.inventory``, else "matched at run time"), the model card (architecture,
source, version, sha256, sampling rate, window, labels, components, default_args,
the adapted model's ``model_card.json``) and the settings in force with where each
came from. Stations no region takes and regions taking no station are reported.
Exit codes as ``check-config``: 2 for any configuration or model problem.

``rtpick models reload --pid PID [--config FILE]`` hot-swaps the models of a running
daemon: it sends SIGHUP (as ``systemctl reload rtpick`` does through ``ExecReload``),
after checking that PID is an rtpick process (SIGHUP ends most other programs) and,
with ``--config``, that the file resolves (the daemon's own checks then verify each
new model; refusals are in its log and ``rtpick_model_reload_failures_total``).
The daemon writes no PID file: under systemd use ``systemctl reload rtpick``
(or ``rtpick@NAME``), else ``--pid`` or ``--pid-file`` of your supervisor.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from rtpick.commands.startup import EXIT_CONFIG
from rtpick.config import ConfigError, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("show", "reload"), default="show",
                        help="show (default): regions and model cards; reload: SIGHUP a running daemon to hot-swap changed models")
    parser.add_argument("--config", help="config TOML file (default: built-in defaults); with reload: checked before signalling")
    parser.add_argument("--pid", type=int, help="reload: process id of the running `rtpick run`")
    parser.add_argument("--pid-file", help="reload: file holding that process id")
    parser.add_argument("-v", "--verbose", action="store_true", help="list each region's stations and the full model card")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of text")


def run(args: argparse.Namespace) -> int:
    if args.action == "reload":
        return reload(args)
    from rtpick.inference.models import describe_model
    from rtpick.inference.regions import RegionError, coverage_warnings, plan_lanes

    try:
        config = load_config(args.config)
        plan = plan_lanes(config)
    except (ConfigError, RegionError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    coverage = plan.router.coverage()
    have_inventory = bool(config.stream.inventory)
    regions = []
    for spec in plan.specs:
        stations = coverage.stations.get(spec.region, [])
        regions.append({
            "region": spec.region,
            "stations": stations if have_inventory else None,
            "model": describe_model(plan.model_of(spec)),
            "settings": {
                "device": spec.device,
                "window_samples": spec.in_samples,
                "overlap_samples": spec.overlap,
                "step_samples": spec.step,
                "stacking": spec.stacking,
                "blinding": list(spec.blinding),
                "buffer_samples": spec.buffer_samples,
                "batch_size": spec.batch_size,
                "channels": list(spec.channels),
                "thresholds": dict(spec.thresholds),
                "detection_threshold": spec.detection_threshold,
                "preprocessing": spec.preprocessing.__dict__,
            },
            "sources": {**dict(spec.sources), **{f"threshold {k}": v for k, v in spec.threshold_sources.items()}},
        })
    warnings = coverage_warnings(coverage, have_inventory)
    if args.json:
        json.dump({"inventory": config.stream.inventory or None, "regions": regions, "warnings": warnings}, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
        return 0
    inventory = f"inventory {config.stream.inventory} ({len(plan.router.inventory)} stations)" if have_inventory else "no inventory (stations matched at run time)"
    print(f"{len(regions)} region(s); {inventory}")
    for entry, spec in zip(regions, plan.specs):
        _print_region(entry, spec, args.verbose)
    for line in warnings:
        print(f"WARNING: {line}")
    return 0


def _print_region(entry: dict, spec, verbose: bool) -> None:
    card, src = entry["model"], entry["sources"]
    stations = entry["stations"]
    taken = "matched at run time" if stations is None else f"{len(stations)} station(s)"
    print(f"\nregion {spec.region!r}: {taken}")
    if verbose and stations:
        print("  stations: " + " ".join(stations))
    print(f"  model     {card['model_id']}  ({card['architecture']}, {card['source']}, version {card['version'] or '?'})")
    print(f"  sha256    {card['sha256'] or '(unknown)'}")
    fs = spec.fs
    print(f"  window    {spec.in_samples} samples at {fs:g} Hz ({spec.in_samples / fs:g} s), labels {''.join(spec.labels) if all(len(x) == 1 for x in spec.labels) else list(spec.labels)}, components {spec.component_order}")
    print(f"  overlap   {spec.overlap} samples, step {spec.step} ({src['overlap']})")
    print(f"  stacking  {spec.stacking} ({src['stacking']}); blinding {list(spec.blinding)} ({src['blinding']})")
    print(f"  buffer    {spec.buffer_samples} samples = {spec.buffer_samples / fs:g} s ({src['buffer']})")
    thresholds = ", ".join(f"{phase} {value:g} ({spec.threshold_sources[phase]})" for phase, value in spec.thresholds.items())
    print(f"  thresholds {thresholds}" + (f"; detection {spec.detection_threshold:g}" if spec.detection_threshold is not None else ""))
    print(f"  device    {spec.device}, batch {spec.batch_size}, channels {' '.join(spec.channels)}")
    pre = spec.preprocessing
    print(f"  normalise demean, {pre.scale or 'no scaling'} per {pre.scale_axis}" + (", detrend" if pre.detrend else "") + (", peak per component" if pre.amp_per_comp else "") + (f", taper {pre.taper_samples}" if pre.taper_samples else ""))
    if verbose:
        print(f"  default_args {json.dumps(card['default_args'], default=str)}")
    if "model_card" in card:
        adapted = card["model_card"]
        if verbose:
            print("  model_card.json " + json.dumps(adapted, default=str, indent=1).replace("\n", "\n  "))
        else:
            keys = ("source_model", "strategy", "n_examples", "thresholds")
            print("  model card " + ", ".join(f"{k} {json.dumps(adapted[k], default=str)}" for k in keys if k in adapted))


def reload(args: argparse.Namespace) -> int:
    """SIGHUP the daemon named by ``--pid``/``--pid-file``; 2 if it cannot be found or the config does not resolve."""
    if args.pid is None and not args.pid_file:
        print("reload: give --pid PID or --pid-file FILE; under systemd run `systemctl reload rtpick` "
              "(ExecReload sends SIGHUP to the daemon)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        pid = args.pid if args.pid is not None else int(Path(args.pid_file).read_text().split()[0])
    except (OSError, ValueError, IndexError) as exc:
        print(f"reload: cannot read a process id from {args.pid_file}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():
        print(f"reload: no process {pid}", file=sys.stderr)
        return EXIT_CONFIG
    command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace").strip() if cmdline.exists() else "rtpick"
    if "rtpick" not in command:
        print(f"reload: process {pid} is not rtpick ({command}); not signalled", file=sys.stderr)
        return EXIT_CONFIG
    if args.config:
        from rtpick.inference.regions import RegionError, plan_lanes

        try:
            plan_lanes(load_config(args.config))
        except (ConfigError, RegionError) as exc:
            print(f"reload: not signalled, {args.config} has problems:\n{exc}", file=sys.stderr)
            return EXIT_CONFIG
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        print(f"reload: cannot signal process {pid}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"reload: SIGHUP sent to {pid}; the daemon's log says which regions swapped and which kept their model")
    return 0
