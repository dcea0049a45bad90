"""``rtpick associate``: picks in (ZeroMQ from sharded pickers, or JSON lines), events out.

    rtpick associate --subscribe tcp://picker1:5555 --subscribe tcp://picker2:5555 \\
        [--publish tcp://*:5556] [--config config.toml]
    rtpick replay DATA/*.msd | rtpick associate --input -

Events are ``rtpick.event/1`` documents, one per revision: JSON lines on stdout, or
on a ZeroMQ PUB socket (topic ``event``) with ``--publish``. Picks from stations
without coordinates are counted and ignored (summary on stderr at exit).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from rtpick.types import NS_PER_S

log = logging.getLogger("rtpick.associate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subscribe", action="append", default=[], metavar="ENDPOINT",
                        help="ZeroMQ endpoint of an rtpick picker (repeatable); subscribes to 'pick.' topics")
    parser.add_argument("--input", metavar="FILE", help="read rtpick.pick/1 JSON lines from FILE ('-' = stdin) instead")
    parser.add_argument("--publish", metavar="ENDPOINT", help="bind a ZeroMQ PUB socket here for the events (default: JSON lines on stdout)")
    parser.add_argument("--config", metavar="FILE", help="config TOML (its [associate] section)")
    parser.add_argument("--stations", metavar="FILE", help="override associate.stations")
    parser.add_argument("--velocity-model", metavar="SPEC", help="override associate.velocity_model ('.nd' file or '0d:VP,VS')")
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


def run(args: argparse.Namespace) -> int:
    from rtpick.associate import VelocityModelError, build_associator, pick_from_message
    from rtpick.config import ConfigError, load_config
    from rtpick.publish.messages import encode, event_message

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if bool(args.subscribe) == bool(args.input):
        print("rtpick associate: give --subscribe ENDPOINT... or --input FILE", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config).associate
        if args.stations:
            config.stations = args.stations
        if args.velocity_model:
            config.velocity_model = args.velocity_model
        assoc = build_associator(config)
    except (ConfigError, VelocityModelError, ValueError, OSError) as exc:
        print(f"rtpick associate: {exc}", file=sys.stderr)
        return 2

    publisher = None
    if args.publish:
        from rtpick.publish.zmq import PublishError, Publisher

        try:
            publisher = Publisher(args.publish).start()
        except PublishError as exc:
            print(f"rtpick associate: {exc}", file=sys.stderr)
            return 2
    latest: dict[str, object] = {}

    def emit(events) -> None:
        for ev in events:
            if args.final_only:
                latest[ev.event_id] = ev
            elif publisher is not None:
                publisher.publish_event(ev)
            else:
                sys.stdout.write(encode(event_message(ev)).decode() + "\n")
                sys.stdout.flush()

    bad = 0

    def feed(doc):
        nonlocal bad
        try:
            pick = pick_from_message(doc)
        except ValueError as exc:
            bad += 1
            if bad <= 5:
                log.warning("ignored message: %s", exc)
            return None
        assoc.push(pick)
        return pick

    try:
        if args.input:
            next_ns = None
            now_ns = None
            for doc in _messages_from_file(args.input):
                if doc.get("schema") != "rtpick.pick/1":
                    continue
                pick = feed(doc)
                if pick is None:
                    continue
                now_ns = pick.time_ns if now_ns is None else max(now_ns, pick.time_ns)
                if next_ns is None or now_ns >= next_ns:
                    emit(assoc.step(now_ns))
                    next_ns = now_ns + int(config.step_s * NS_PER_S)
            emit(assoc.flush())
        else:
            _subscribe_loop(args.subscribe, config.step_s, feed, lambda: emit(assoc.step()))
            emit(assoc.flush())
    except KeyboardInterrupt:
        emit(assoc.flush())
    finally:
        if args.final_only:
            for ev in latest.values():
                ev.final = True
                if publisher is not None:
                    publisher.publish_event(ev)
                else:
                    sys.stdout.write(encode(event_message(ev)).decode() + "\n")
        if publisher is not None:
            publisher.close()
        counters = dict(assoc.counters)
        counters["messages_bad"] = bad
        print("rtpick associate: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())), file=sys.stderr)
    return 0


def _subscribe_loop(endpoints, step_s, feed, tick) -> None:
    """SUB to every endpoint (topic 'pick.'); feed picks, tick every ``step_s`` of wall time."""
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"pick.")
    try:
        for endpoint in endpoints:
            sock.connect(endpoint)
        next_tick = time.monotonic() + step_s
        while True:
            timeout_ms = max(0, int((next_tick - time.monotonic()) * 1000))
            if sock.poll(timeout_ms):
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if len(frames) == 2:
                        try:
                            feed(json.loads(frames[1]))
                        except (json.JSONDecodeError, UnicodeDecodeError):
                            feed({})
            if time.monotonic() >= next_tick:
                tick()
                next_tick = time.monotonic() + step_s
    finally:
        sock.close()
        context.term()
