"""``rtpick listen ENDPOINT [--topic PREFIX]``: print rtpick messages as JSON lines.

The example subscriber of docs/messages.md: a ZeroMQ SUB socket that connects
to a running rtpick's ``publish.endpoint`` and writes one JSON document per
line to stdout (the topic is implied by the document; ``--with-topic`` prefixes it).
``--latency`` prints one line of latencies per pick and event instead (see
:func:`latency_line`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import zmq
import zmq.auth

from rtpick.types import NS_PER_S, iso_to_ns


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("endpoint", help="publisher endpoint, e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--topic", action="append", default=[], metavar="PREFIX",
                        help="topic prefix to subscribe to: 'pick.' (final picks), 'pick_early.' (preliminary, final, retracted), 'pick.OK.SIO', 'event', 'status' (repeatable; default: everything)")
    parser.add_argument("--count", type=int, default=0, help="exit after this many messages (default: run until interrupted)")
    parser.add_argument("--timeout", type=float, default=0.0, help="exit with status 1 if no message arrives for this many seconds")
    parser.add_argument("--with-topic", action="store_true", help="print 'TOPIC<TAB>JSON' instead of bare JSON")
    parser.add_argument("--latency", action="store_true",
                        help="print latencies per pick/event instead of JSON: pick (published - pick time), added by rtpick "
                             "(published - data arrival), transport (received - published); events: first revision - origin time")
    parser.add_argument("--curve-server-key", metavar="FILE", help="the publisher's public certificate (enables CURVE)")
    parser.add_argument("--curve-client-key", metavar="FILE", help="this client's secret certificate (default: a fresh key pair)")


def run(args: argparse.Namespace) -> int:
    context = zmq.Context()
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        if args.curve_server_key:
            try:
                server_public, _ = zmq.auth.load_certificate(args.curve_server_key)
                if args.curve_client_key:
                    client_public, client_secret = zmq.auth.load_certificate(args.curve_client_key)
                    if not client_secret:
                        raise ValueError(f"{args.curve_client_key} holds no secret key")
                else:
                    client_public, client_secret = zmq.curve_keypair()
            except (OSError, ValueError) as exc:
                print(f"rtpick listen: CURVE key: {exc}", file=sys.stderr)
                return 2
            sock.curve_serverkey = server_public
            sock.curve_publickey = client_public
            sock.curve_secretkey = client_secret
        for prefix in args.topic or [""]:
            sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        try:
            sock.connect(args.endpoint)
        except zmq.ZMQError as exc:
            print(f"rtpick listen: cannot connect to {args.endpoint!r}: {exc.strerror}", file=sys.stderr)
            return 2
        return _loop(sock, args)
    except KeyboardInterrupt:
        return 0
    finally:
        sock.close()
        context.term()


def _seconds(document: dict, later: str, earlier: str) -> str:
    """``document[later] - document[earlier]`` in seconds, or '-' when a field is missing."""
    if not document.get(later) or not document.get(earlier):
        return "-"
    return f"{(iso_to_ns(document[later]) - iso_to_ns(document[earlier])) / NS_PER_S:.3f}"


def latency_line(document: dict, received_ns: int) -> str | None:
    """One line of latencies (seconds) of a pick or event message; None for other messages.

    Pick: ``pick`` = published - pick time, ``added`` = published - data arrival
    (what rtpick added), ``transport`` = received here - published. Event:
    ``event`` = created - origin time, ``added`` = created - data arrival.
    """
    schema = document.get("schema") if isinstance(document, dict) else None
    received = f"{(received_ns - iso_to_ns(document['published'])) / NS_PER_S:.3f}" if document.get("published") else "-"
    if schema == "rtpick.pick/1":
        return (f"pick {document.get('status', 'final')} {document.get('pick_id')} pick={_seconds(document, 'published', 'time')} "
                f"added={_seconds(document, 'published', 'data_arrived')} transport={received}")
    if schema == "rtpick.event/1":
        state = "cancelled" if document.get("cancelled") else "final" if document.get("final") else "open"
        return (f"event {document.get('event_id')} rev={document.get('revision')} {state} "
                f"n_preliminary={document.get('n_preliminary', 0)} event={_seconds(document, 'created', 'origin_time')} "
                f"added={_seconds(document, 'created', 'data_arrived')}")
    return None


def _loop(sock: zmq.Socket, args: argparse.Namespace) -> int:
    received = 0
    seqs: dict[bytes, int] = {}  # topic -> last seq seen: a jump is a loss (our queue was full)
    last = time.monotonic()
    out = sys.stdout
    while not args.count or received < args.count:
        if not sock.poll(200):
            if args.timeout and time.monotonic() - last > args.timeout:
                print(f"rtpick listen: no message for {args.timeout:g} s", file=sys.stderr)
                return 1
            continue
        frames = sock.recv_multipart()
        last = time.monotonic()
        if len(frames) != 2:
            print(f"rtpick listen: ignored a message of {len(frames)} frames", file=sys.stderr)
            continue
        topic, payload = frames
        try:
            document = json.loads(payload)
        except ValueError:
            print(f"rtpick listen: ignored a non-JSON message on {topic!r}", file=sys.stderr)
            continue
        seq = document.get("seq") if isinstance(document, dict) else None
        if isinstance(seq, int):
            previous = seqs.get(topic)
            if previous is not None and seq > previous + 1:
                print(f"rtpick listen: missed {seq - previous - 1} message(s) on {topic.decode(errors='replace')} "
                      "(this subscriber fell behind the publisher's high-water mark)", file=sys.stderr)
            seqs[topic] = seq
        if args.latency:
            line = latency_line(document, time.time_ns())
            if line is None:
                continue
        else:
            line = json.dumps(document, separators=(",", ":"))
        out.write(f"{topic.decode(errors='replace')}\t{line}\n" if args.with_topic else line + "\n")
        out.flush()
        received += 1
    return 0
