"""``rtpick associate``: picks in (ZeroMQ from sharded pickers, or JSON lines), events out.

    rtpick associate --subscribe tcp://picker1:5555 --subscribe tcp://picker2:5555 \\
        [--publish tcp://*:5556] [--config config.toml] [--metrics 127.0.0.1:9734]
    rtpick replay DATA/*.msd | rtpick associate --input -

Events are ``rtpick.event/1`` documents, one per revision: JSON lines on stdout, or
on a ZeroMQ PUB socket (topic ``event``) with ``--publish``. Picks are
de-duplicated by ``pick_id`` (several pickers may publish the same pick). Picks
from stations without coordinates are counted; when most picks are (the station
file does not cover the network) an ERROR names the stations and the command
exits with status 3 at the end.

As a service (``systemd/rtpick-associate.service``, ``Type=notify``): READY once
the sockets are up, WATCHDOG while the loop runs, SIGTERM/SIGINT drain (the
picks already queued are read, every open event gets its final revision, the
PUB socket lingers to deliver them), SIGHUP re-reads the config and applies the
settings that can change live (:data:`rtpick.associate.settings.LIVE_SETTINGS`;
others are logged as needing a restart). Exit status: 0 done, 2 configuration
or start-up error, 3 most picks came from stations missing in the station file.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from typing import Any

from rtpick.types import NS_PER_S

log = logging.getLogger("rtpick.associate")

EXIT_CONFIG = 2
EXIT_STATIONS = 3
STATUS_EVERY_S = 10.0
DRAIN_MAX_MESSAGES = 1_000_000  # bound on the messages read from the socket queue when stopping


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subscribe", action="append", default=[], metavar="ENDPOINT",
                        help="ZeroMQ endpoint of an rtpick picker (repeatable); subscribes to 'pick.' topics")
    parser.add_argument("--input", metavar="FILE", help="read rtpick.pick/1 JSON lines from FILE ('-' = stdin) instead")
    parser.add_argument("--publish", metavar="ENDPOINT", help="bind a ZeroMQ PUB socket here for the events (default: JSON lines on stdout)")
    parser.add_argument("--config", metavar="FILE", help="config TOML (its [associate] section); re-read on SIGHUP")
    parser.add_argument("--stations", metavar="FILE", help="override associate.stations")
    parser.add_argument("--velocity-model", metavar="SPEC", help="override associate.velocity_model ('.nd' file or '0d:VP,VS')")
    parser.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics here (overrides associate.metrics_listen)")
    parser.add_argument("--early", action="store_true",
                        help="subscribe to the pick life cycle (topic 'pick_early.': preliminary picks, their finals and retractions) "
                             "instead of final picks ('pick.'): first revisions seconds after the P wave (pickers need early.enabled)")
    parser.add_argument("--final-only", action="store_true", help="print only the last revision of each event")


def _messages_from_file(path: str):
    fh = sys.stdin if path == "-" else open(path)
    try:
        for number, line in enumerate(fh, start=1):
            line = line.strip()
            if line:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    log.warning("%s:%d: not JSON (%s); skipped", path, number, exc)
    finally:
        if fh is not sys.stdin:
            fh.close()


def _section(config: Any, args: argparse.Namespace) -> Any:
    """The ``[associate]`` section with the command-line overrides applied."""
    section = config.associate
    if args.stations:
        section.stations = args.stations
    if args.velocity_model:
        section.velocity_model = args.velocity_model
    return section


class _Signals:
    """SIGTERM/SIGINT ask for a drain, SIGHUP for a reload; the loop polls the flags."""

    def __init__(self) -> None:
        self.stop = False
        self.reload = False
        self._old = {}
        for sig, handler in ((signal.SIGTERM, self._on_stop), (signal.SIGINT, self._on_stop), (signal.SIGHUP, self._on_hup)):
            self._old[sig] = signal.signal(sig, handler)

    def _on_stop(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        if self.stop:  # a second one: stop draining
            raise KeyboardInterrupt
        self.stop = True

    def _on_hup(self, signum, frame) -> None:  # noqa: ARG002
        self.reload = True

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def run(args: argparse.Namespace) -> int:
    from rtpick.associate import VelocityModelError, build_associator, settings_from_config
    from rtpick.associate.intake import PickIntake
    from rtpick.associate.metrics import AssociatorMetrics
    from rtpick.config import ConfigError, load_config
    from rtpick.publish.messages import encode, event_message
    from rtpick.publish.metrics import MetricsError, start_http_server
    from rtpick.service.systemd import Notifier, reload_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if bool(args.subscribe) == bool(args.input):
        print("rtpick associate: give --subscribe ENDPOINT... or --input FILE", file=sys.stderr)
        return EXIT_CONFIG
    try:
        full_config = load_config(args.config)
        config = _section(full_config, args)
        assoc = build_associator(config)
    except (ConfigError, VelocityModelError, ValueError, OSError) as exc:
        print(f"rtpick associate: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    intake = PickIntake(assoc)
    metrics = AssociatorMetrics()
    metrics.watch(assoc, intake)
    server = publisher = None
    listen = args.metrics or config.metrics_listen
    if listen:
        try:
            server, _ = start_http_server(listen, metrics.registry)
        except MetricsError as exc:
            print(f"rtpick associate: {exc} (--metrics / associate.metrics_listen)", file=sys.stderr)
            return EXIT_CONFIG
        log.info("metrics on http://%s:%d/metrics", *server.server_address[:2])
    if args.publish:
        from rtpick.publish.zmq import PublishError, Publisher

        try:
            publisher = Publisher(args.publish).start()
        except PublishError as exc:
            print(f"rtpick associate: {exc}", file=sys.stderr)
            if server is not None:
                server.shutdown()
                server.server_close()
            return EXIT_CONFIG
    latest: dict[str, object] = {}

    def emit(events) -> None:
        for ev in events:
            metrics.on_event(ev)
            if args.final_only:
                latest[ev.event_id] = ev
            elif publisher is not None:
                publisher.publish_event(ev)
            else:
                sys.stdout.write(encode(event_message(ev)).decode() + "\n")
                sys.stdout.flush()

    def reload() -> None:
        nonlocal full_config
        notifier.reloading()
        new = reload_config(args.config, full_config)
        if new is not full_config:
            full_config = new
            restart = assoc.apply_live_settings(settings_from_config(_section(new, args)))
            log.info("reload: associator settings applied%s",
                     f"; these need a restart to change: {', '.join(restart)}" if restart else "")
        notifier.ready(status_line())

    def status_line() -> str:
        return (f"associating on {len(assoc.stations)} stations: {assoc.counters.get('events', 0)} events, "
                f"{assoc.pool_size} picks in the pool, {intake.n_unknown} from unknown stations")

    notifier = Notifier()
    signals = _Signals()
    try:
        if args.input:
            notifier.ready(status_line())
            _read_file(args.input, config.step_s, intake, assoc, emit, signals)
        else:
            _subscribe_loop(args.subscribe, config.step_s, intake, assoc, emit, signals, notifier, reload, status_line,
                            topic=b"pick_early." if args.early else b"pick.")
        notifier.stopping("draining: final revisions of open events")
        emit(assoc.flush())
    except KeyboardInterrupt:
        log.warning("second stop signal: exiting without final revisions")
    finally:
        signals.restore()
        if args.final_only:
            for ev in latest.values():
                ev.final = True
                if publisher is not None:
                    publisher.publish_event(ev)
                else:
                    sys.stdout.write(encode(event_message(ev)).decode() + "\n")
        if publisher is not None:
            publisher.close()
        if server is not None:
            server.shutdown()
            server.server_close()
        notifier.close()
        counters = dict(assoc.counters)
        counters.update(intake.counters)
        print("rtpick associate: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())), file=sys.stderr)
    if intake.coverage_failed(min_picks=1):
        log.error("%s", intake.coverage_message())
        return EXIT_STATIONS
    return 0


def _read_file(path: str, step_s: float, intake, assoc, emit, signals: _Signals) -> None:
    """JSON lines in pick-time order; a step every ``step_s`` of pick time (as the daemon would)."""
    next_ns = None
    now_ns = None
    for doc in _messages_from_file(path):
        if signals.stop:
            break
        if doc.get("schema") != "rtpick.pick/1":
            continue
        pick = intake.feed(doc)
        if pick is None:
            continue
        now_ns = pick.time_ns if now_ns is None else max(now_ns, pick.time_ns)
        if next_ns is None or now_ns >= next_ns:
            emit(assoc.step(now_ns))
            next_ns = now_ns + int(step_s * NS_PER_S)


def _subscribe_loop(endpoints, step_s, intake, assoc, emit, signals: _Signals, notifier, reload, status_line,
                    topic: bytes = b"pick.") -> None:
    """SUB to every endpoint (``topic``: 'pick.', or 'pick_early.' with --early); feed picks, step every ``step_s`` of wall time, until a stop
    signal; then read what is already queued (bounded) so those picks still make it into events."""
    import zmq

    from rtpick.service.systemd import watchdog_interval

    context = zmq.Context()
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, topic)
    watchdog_s = watchdog_interval()
    try:
        for endpoint in endpoints:
            sock.connect(endpoint)
        notifier.ready(status_line())
        next_tick = time.monotonic() + step_s
        next_status = time.monotonic() + STATUS_EVERY_S
        while not signals.stop:
            timeout_ms = max(0, int((next_tick - time.monotonic()) * 1000))
            if sock.poll(min(timeout_ms, 1000)):
                _receive(sock, intake, 10_000)  # then tick: a flood cannot starve the steps
            if signals.reload:
                signals.reload = False
                reload()
            now = time.monotonic()
            if now >= next_tick:
                emit(assoc.step())
                next_tick = time.monotonic() + step_s
                if watchdog_s is not None:
                    notifier.watchdog()
                if now >= next_status:
                    notifier.status(status_line())
                    next_status = now + STATUS_EVERY_S
        drained = _receive(sock, intake, DRAIN_MAX_MESSAGES)
        log.info("stopping: %d queued messages read", drained)
    finally:
        sock.close()
        context.term()


def _receive(sock, intake, limit: int) -> int:
    """Read queued messages without blocking (at most ``limit``); returns how many."""
    import zmq

    n = 0
    while n < limit:
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            break
        n += 1
        if len(frames) != 2:
            intake.feed({})
            continue
        try:
            intake.feed(json.loads(frames[1]))
        except (json.JSONDecodeError, UnicodeDecodeError):
            intake.feed({})
    return n
