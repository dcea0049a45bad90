"""``rtpick plot PATH... (--start T --end T | --event ID --messages FILE) -o out.png``.

Runs the configured model over the window exactly as the daemon does and draws,
per station, the vertical waveform, the P/S probability traces with the
thresholds, and the picks, sorted by distance when coordinates are known.

- ``--event ID --messages FILE``: FILE holds ``rtpick listen`` output (JSON lines);
  the latest revision of the event sets the window (origin − 10 s to its last
  pick + 30 s, at least origin + 60 s) and the origin from which distances are measured; its picks are
  drawn dashed.
- ``--picks FILE``: ``rtpick.pick/1`` JSON lines (from ``rtpick replay`` or
  ``listen``) drawn dashed over the model's own picks, to compare.
- ``--stations CSV`` (network, station, latitude, longitude); by default a
  ``stations.csv`` next to the data is used.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rtpick.config import ConfigError, load_config
from rtpick.types import NS_PER_S, iso_to_ns


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH", help="miniSEED files or directories")
    parser.add_argument("--start", help="window start, ISO-8601 UTC")
    parser.add_argument("--end", help="window end, ISO-8601 UTC (default: start + 120 s)")
    parser.add_argument("--event", metavar="ID", help="event_id of an rtpick.event/1 message in --messages")
    parser.add_argument("--messages", metavar="FILE", help="JSON lines recorded with `rtpick listen` (for --event)")
    parser.add_argument("--picks", metavar="FILE", help="rtpick.pick/1 JSON lines to overlay (dashed)")
    parser.add_argument("--stations", metavar="CSV", help="station coordinates: network,station,latitude,longitude")
    parser.add_argument("--config", help="config TOML (model, thresholds; default: built-in defaults)")
    parser.add_argument("-o", "--output", default="rtpick-plot.png", help="PNG to write (default rtpick-plot.png)")


def read_jsonl(path: str) -> list[dict]:
    docs = []
    for line in Path(path).read_text().splitlines():
        line = line.split("\t", 1)[-1].strip()  # `rtpick listen --with-topic` lines too
        if line:
            docs.append(json.loads(line))
    return docs


def find_event(messages: list[dict], event_id: str) -> dict | None:
    revisions = [m for m in messages if m.get("schema") == "rtpick.event/1" and m.get("event_id") == event_id]
    return max(revisions, key=lambda m: m["revision"]) if revisions else None


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    origin = None
    overlay: list[dict] = read_jsonl(args.picks) if args.picks else []
    if args.event:
        if not args.messages:
            print("rtpick plot: --event needs --messages FILE (recorded with `rtpick listen`)", file=sys.stderr)
            return 2
        event = find_event(read_jsonl(args.messages), args.event)
        if event is None:
            print(f"rtpick plot: no rtpick.event/1 with event_id {args.event!r} in {args.messages}", file=sys.stderr)
            return 2
        origin = (event["latitude"], event["longitude"])
        pick_times = [iso_to_ns(p["time"]) for p in event["picks"]] or [iso_to_ns(event["origin_time"])]
        start_ns = iso_to_ns(event["origin_time"]) - 10 * NS_PER_S
        end_ns = max(max(pick_times) + 30 * NS_PER_S, iso_to_ns(event["origin_time"]) + 60 * NS_PER_S)
        overlay += event["picks"]
    elif args.start:
        start_ns = iso_to_ns(args.start)
        end_ns = iso_to_ns(args.end) if args.end else start_ns + 120 * NS_PER_S
    else:
        print("rtpick plot: give --start [--end] or --event ID --messages FILE", file=sys.stderr)
        return 2
    if end_ns <= start_ns:
        print("rtpick plot: the window ends before it starts", file=sys.stderr)
        return 2

    from rtpick.publish.plot import compute, load_coordinates, order_rows, render

    coords = {}
    stations_csv = args.stations or next((str(p / "stations.csv") for p in map(Path, args.paths) if (p / "stations.csv").is_file()), None)
    if stations_csv:
        coords = load_coordinates(stations_csv)
    views, pipeline = compute(args.paths, start_ns, end_ns, config)
    rows = order_rows(views, coords, origin)
    title = f"event {args.event} — " if args.event else ""
    out = render(rows, pipeline, args.paths, start_ns, end_ns, args.output, extra_picks=overlay,
                 title=(title + f"model {pipeline.loaded.model_id}") if args.event else "")
    n_picks = sum(len(v.picks) for v in rows)
    print(f"{out}: {len(rows)} stations, {n_picks} picks")
    return 0
