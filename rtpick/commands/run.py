"""``rtpick run --config FILE``: the daemon (SeedLink ingest → pipeline → picks).

Command-line options override the config file (as with slinktool):
``--seedlink HOST:PORT`` → ``seedlink.server``, ``--streams`` → ``seedlink.streams``
(slinktool ``-S`` syntax: ``'OK_FNO:HH?,OK_*:BH? EH?'``), ``--state-file``,
``--begin-time``. SIGTERM drains: only final picks are published, nothing cut
at the data edge (the next start completes them). Picks go to stdout as ``rtpick.pick/1`` JSON lines only with
``--stdout``: under systemd stdout is the journal, and a blocked stdout would
stall the pipeline thread; the daemon's outputs are ZeroMQ (``publish.endpoint``)
and Prometheus. Logs go to stderr.

The state file (``seedlink.state_file``) is found by
:func:`rtpick.ingest.state.resolve_state_file`: a relative path lies under
``$STATE_DIRECTORY`` (systemd ``StateDirectory=``), else next to the config file,
else in the working directory; ``--state-file`` is relative to the working directory.

Exit codes: 0 clean stop, 1 runtime failure, 2 config error (also a bad command-line
override, e.g. ``--streams ""``), 3 model error, 4 start failure; 128 + signal number
(143, 130) when a second SIGTERM/SIGINT forced an exit without draining.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from rtpick.commands import startup
from rtpick.config import Config

RESTART_CONTEXT_S = 300.0  # data re-fed as context after a restart (must exceed how long a pick takes to be final)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="config TOML (default: built-in defaults)")
    parser.add_argument("--seedlink", metavar="HOST:PORT", help="override seedlink.server")
    parser.add_argument("--streams", metavar="SELECTORS", help="override seedlink.streams: 'NET_STA[:CHANNELS],...'")
    parser.add_argument("--state-file", help="override seedlink.state_file")
    parser.add_argument("--begin-time", help="override seedlink.begin_time (ISO-8601) for stations without state")
    parser.add_argument("--stdout", action="store_true", help="print picks as rtpick.pick/1 JSON lines on stdout "
                        "(off by default: a daemon publishes on ZeroMQ)")
    parser.add_argument("--audit-log", metavar="FILE", help="append one line per record handed to the pipeline "
                        "(stream, start ns, samples, CRC-32), written with each state save (testing, audits)")


def apply_overrides(config: Config, args: argparse.Namespace) -> Config:
    """A copy of ``config`` with the command-line overrides applied (validated like the file)."""
    from rtpick.ingest.seedlink import parse_selectors

    data = config.model_dump()
    sl = data["seedlink"]
    if args.seedlink:
        sl["server"] = args.seedlink
    if args.streams is not None:  # "" is not "unset": parse_selectors refuses it (a config error, exit 2)
        sl["streams"] = [f"{s.station}:{' '.join(s.channels)}" if s.channels else s.station
                         for s in parse_selectors(args.streams)]
    if args.state_file:
        sl["state_file"] = os.path.abspath(args.state_file)
    if args.begin_time:
        sl["begin_time"] = args.begin_time
    return Config.model_validate(data)


def build_sinks(config: Config, args: argparse.Namespace) -> list:
    """Pick sinks besides ``Outputs``: stdout JSON lines with ``--stdout`` only."""
    from rtpick.service.daemon import StdoutSink

    if args.stdout:
        return [StdoutSink()]
    if not config.publish.endpoint:
        logging.getLogger("rtpick.run").warning(
            "picks go nowhere: publish.endpoint is empty and --stdout not given (metrics and logs only)")
    return []


def run(args: argparse.Namespace) -> int:
    config = startup.configure(args.config, lambda cfg: apply_overrides(cfg, args))
    log = logging.getLogger("rtpick.run")

    from rtpick.ingest.seedlink import SeedLinkIngest
    from rtpick.ingest.state import load_state, resolve_state_file
    from rtpick.pipeline import Pipeline
    from rtpick.publish.outputs import STARTUP_ERRORS, Outputs
    from rtpick.service.daemon import Daemon
    from rtpick.service.systemd import SystemdHook

    plan = startup.plan_lanes(config)
    state_path = resolve_state_file(config.seedlink.state_file, args.config)
    state = load_state(state_path)
    outputs = Outputs(config)  # ZeroMQ, Prometheus, status heartbeat (rtpick.publish)
    pipeline = Pipeline(config, observer=outputs.metrics, plan=plan)
    # after a restart the pipeline is re-fed RESTART_CONTEXT_S of data before the saved position and
    # restored to its saved resume points, so picks that were not final at a kill come out again,
    # bit-identical; the previous process's published picks are suppressed by identity. Stations
    # without a resume point in the state keep the guard: no picks from the first model window of
    # the context (no data before it: edge effects)
    guard_s = RESTART_CONTEXT_S - max(spec.in_samples / spec.fs for spec in plan.specs)
    try:
        ingest = SeedLinkIngest(config.seedlink, resume=state, horizon_s=startup.horizon_s(plan),
                                warmup_s=RESTART_CONTEXT_S, max_future_s=config.stream.max_future_s)
        ingest.guard.observer = outputs.metrics  # rejected records counted by cause, like the pipeline's
        sinks = build_sinks(config, args)
        if config.associate.enabled:  # events on the daemon's ZeroMQ socket, topic 'event' (docs/association.md)
            from rtpick.associate.sink import AssociatorSink

            sinks.append(AssociatorSink.from_config(config.associate, outputs.publish_event))
        outputs.start(pipeline, ingest)
    except (ValueError, OSError, *STARTUP_ERRORS) as exc:
        print(f"start failed: {exc}", file=sys.stderr)
        return 4
    daemon = Daemon(config, ingest, [*sinks, outputs], pipeline=pipeline, state=state,
                    state_path=str(state_path), audit_path=args.audit_log, resume_guard_s=guard_s,
                    hooks=[SystemdHook(outputs, args.config, ingest)])
    outputs.metrics.watch_daemon(daemon)
    log.info("rtpick run: %s streams %s, state %s (%d stations to resume)", config.seedlink.server,
             list(config.seedlink.streams), state_path, len(state.stations))
    code = daemon.run()
    s, i = daemon.stats, ingest.stats
    log.info("rtpick run stopped: %d records fed, %d picks published (%d duplicates suppressed), ingest %d packets, "
             "%d duplicates dropped, %d re-fed as context after the restart, errors %s, %d records left unprocessed, "
             "%d failed state writes", s.records_fed, s.picks_published, s.picks_suppressed, i.packets, i.duplicates,
             i.warmup, i.errors or {}, s.dropped_at_shutdown, s.state_write_errors)
    return code
