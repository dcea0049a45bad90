"""``rtpick demo``: the bundled Oklahoma data through a real SeedLink connection into the daemon.

One process, three parts that normally run apart: the replay SeedLink server
(:mod:`rtpick.seedlink_server`, on a free localhost port), the SeedLink ingest
and the daemon with a stdout sink. Picks are printed as ``rtpick.pick/1`` JSON
lines, a summary goes to stderr.

End of data: the demo stops the daemon as at the end of data (feed what is
queued, flush the pipeline so picks at the data edge are closed, save state)
once the server has released the whole archive, has sent every packet to the
daemon's connection, and the daemon's ingest has received that many packets.
A live daemon never ends by itself; this condition only exists here.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "oklahoma_2013-06-16"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="config TOML for the picker (default: built-in defaults)")
    parser.add_argument("--speed", type=float, default=0.0,
                        help="replay speed of the server: 0 = as fast as possible (default), 1 = real time")
    parser.add_argument("--data", default=str(DATA), help="miniSEED files to serve (default: bundled Oklahoma 2013-06-16)")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds (default 900)")


def run(args: argparse.Namespace) -> int:
    from rtpick.commands import startup

    config = startup.configure(args.config)
    plan = startup.plan_lanes(config)
    log = logging.getLogger("rtpick.demo")

    from rtpick.ingest.seedlink import SeedLinkIngest
    from rtpick.pipeline import Pipeline
    from rtpick.seedlink_server.archive import Archive
    from rtpick.seedlink_server.server import ServerThread
    from rtpick.service.daemon import Daemon, ListSink, StdoutSink
    from rtpick.types import ns_to_iso

    archive = Archive([args.data])
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rtpick-demo-") as tmp, \
            ServerThread(archive, host="127.0.0.1", port=0, speed=args.speed) as server:
        sl = config.seedlink.model_copy(update={
            "server": f"127.0.0.1:{server.port}", "streams": ["*_*"], "state_file": str(Path(tmp) / "demo.state"),
            "begin_time": ns_to_iso(archive.start_ns), "reconnect_min_s": 0.2})
        ingest = SeedLinkIngest(sl, horizon_s=startup.horizon_s(plan))
        collected = ListSink()
        daemon = Daemon(config, ingest, [StdoutSink(), collected], pipeline=Pipeline(config, plan=plan),
                        state_path=sl.state_file, drain_timeout_s=args.timeout)
        log.info("demo: %d stations served on 127.0.0.1:%d (speed %s); daemon connected with begin time %s",
                 len(archive.stations), server.port, args.speed or "max", sl.begin_time)

        def watch() -> None:
            deadline = time.monotonic() + args.timeout
            while not daemon.stopping:
                done = server.call(lambda: server.server.drained() and ingest.stats.packets >= server.server.packets_sent)
                if done or time.monotonic() > deadline:
                    if not done:
                        log.error("demo: timed out after %.0f s", args.timeout)
                    daemon.stop(end_of_data=done)
                    return
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, name="demo-watch", daemon=True)
        watcher.start()
        code = daemon.run()
        watcher.join(timeout=5)
        sent = server.server.packets_sent

    p_by_station: dict[str, int] = defaultdict(int)
    s_by_station: dict[str, int] = defaultdict(int)
    for pick in collected.picks:
        (p_by_station if pick.phase == "P" else s_by_station)[pick.station_key] += 1
    stations = sorted({key.replace("_", ".", 1) for key in archive.stations})
    missing = [s for s in stations if s not in p_by_station]
    print(f"rtpick demo: {sent} SeedLink packets -> {daemon.stats.records_fed} records, "
          f"{len(collected.picks)} picks ({sum(p_by_station.values())} P, {sum(s_by_station.values())} S) "
          f"in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    for station in stations:
        print(f"  {station:10s} P {p_by_station.get(station, 0)}  S {s_by_station.get(station, 0)}", file=sys.stderr)
    if missing:
        print(f"rtpick demo: no P pick on {', '.join(missing)}", file=sys.stderr)
    return code
