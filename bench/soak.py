"""Soak: many stations, hours of data faster than real time, random faults; prints figures, asserts nothing.

``rtpick run`` reads a fault-injecting SeedLink server (rtpick.seedlink_server.faults)
serving renamed copies of the bundled Oklahoma stations, re-dated so that the
data looks live (it catches up with the wall clock and never runs ahead of it,
so the daemon's future-time check sees what it would see from a real network
catching up after an outage). The archive is looped to cover ``--minutes`` of data.

Random faults (seeded, printed): poison packets (non-miniSEED payloads and a
day-of-year 400 header, re-sent whenever a client resumes there), gaps, single
records dated +1 h (a clock glitch), station outages (+6 h jumps), NaN records,
drifting rates, server restarts, and slow ZeroMQ subscribers next to one that
collects every pick.

Figures: RSS over time (flat after warm-up?), data lag, picks lost / duplicated /
different against ``rtpick replay`` of the same data without faults (stations
with a fault are checked for duplicates only; picks within 60 s of a station's
last released sample may still be open when the daemon stops, as in
tests/test_faults.py), counts by cause from the daemon's Prometheus endpoint.

    .venv/bin/python bench/soak.py                                 # 1 h, 300 stations, 10x (about 6 min + replay)
    .venv/bin/python bench/soak.py --minutes 5 --stations 30       # smoke check
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rtpick.seedlink_server.archive import NS, Packet  # noqa: E402
from rtpick.seedlink_server.faults import Fault, FaultArchive, FaultServer, write_miniseed  # noqa: E402
from rtpick.types import ns_to_iso  # noqa: E402
from tests.daemonproc import RtpickRun, by_label, replay_picks, scrape, state_stations  # noqa: E402

OKLAHOMA = REPO / "rtpick" / "data" / "oklahoma_2013-06-16"
SOURCES = ("OK_FNO", "OK_LC30", "OK_OKCFA", "OK_SIO", "OK_U32A", "OK_W35A", "OK_X34A")
TAIL_S = 60.0
PROB_TOL = 1e-6 + 1e-9
# record faults drawn at random, (kind, value, records): each hits a random station at a random record.
# The data is live, so a station back from an outage sends current data: an outage is a long gap
# (about 10 minutes), and a record dated +1 h lies in the future (a clock glitch), -1 h in the past.
RECORD_FAULTS = (("garbage", 0.0, 1), ("bad_doy", 0.0, 1), ("gap", 0.0, 30), ("shift", 3600.0, 1),
                 ("gap", 0.0, 450), ("nan", 0.0, 1), ("rate", 99.99, 1), ("shift", -3600.0, 1))
COUNTED = ("rejected", "error", "drop", "quarantin", "jump", "reset", "gap", "overlap", "stale", "duplicate", "reconnect")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0, help="minutes of data (default 60)")
    p.add_argument("--stations", type=int, default=300, help="stations (copies of the 7 Oklahoma ones; default 300)")
    p.add_argument("--speed", type=float, default=10.0, help="times real time (default 10)")
    p.add_argument("--faults", type=int, help="record faults in all (default: one per 10 stations per hour, at least 7)")
    p.add_argument("--restarts", type=int, help="server restarts (default: 5 per hour of data, at least 1)")
    p.add_argument("--slow-subscribers", type=int, default=2, help="ZeroMQ subscribers that read one message a second")
    p.add_argument("--sndhwm", type=int, default=1000, help="the daemon's ZeroMQ high-water mark (default 1000: "
                   "above a burst of picks, below what a slow subscriber falls behind in a long run)")
    p.add_argument("--seed", type=int, help="random seed (default: random, printed)")
    p.add_argument("--threads", type=int, default=2, help="inference threads of the daemon")
    p.add_argument("--no-reference", action="store_true", help="skip the rtpick replay reference (lost/duplicated)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p.parse_args()


def build(args, rng: random.Random) -> tuple[FaultArchive, FaultArchive, int]:
    """(faulted archive, the same without faults, passes); data re-dated to end near 'now + run time'."""
    copies = {f"SK_S{i:03d}": SOURCES[i % len(SOURCES)] for i in range(args.stations)}
    probe = FaultArchive([OKLAHOMA], copies=copies, keep_originals=False)
    passes = max(1, math.ceil(args.minutes * 60 / probe.span_s))
    run_s = passes * probe.span_s / args.speed
    # the data never runs ahead of the wall clock: the last sample is released about when it was "recorded"
    shift_s = round(time.time() - (args.speed - 1) * run_s - 30 - probe.start_ns / NS)
    per_pass = Counter(p.station for p in probe.packets())
    hours = args.minutes / 60
    n_faults = args.faults if args.faults is not None else max(len(RECORD_FAULTS), round(args.stations / 10 * hours))
    n_restarts = args.restarts if args.restarts is not None else max(1, round(5 * hours))
    faults = []
    stations = sorted(copies)
    for i in range(n_faults):
        kind, value, count = RECORD_FAULTS[i % len(RECORD_FAULTS)]
        station = rng.choice(stations)
        at = rng.randrange(20, per_pass[station] * passes - 20)
        faults.append(Fault(station, kind, at, value, count=count))
    total = sum(per_pass.values()) * passes
    for _ in range(n_restarts):
        faults.append(Fault("*", "restart", rng.randrange(total // 20, total * 19 // 20)))
    faulted = FaultArchive([OKLAHOMA], faults, copies=copies, keep_originals=False, shift_s=shift_s)
    clean = FaultArchive([OKLAHOMA], copies=copies, keep_originals=False, shift_s=shift_s)
    return faulted, clean, passes


class Subscriber(threading.Thread):
    """A ZeroMQ SUB on the daemon's endpoint: collects pick documents; ``delay_s`` > 0 reads slowly."""

    def __init__(self, endpoint: str, delay_s: float = 0.0):
        super().__init__(daemon=True)
        import zmq

        self.context = zmq.Context.instance()
        self.sock = self.context.socket(zmq.SUB)
        if delay_s:
            self.sock.setsockopt(zmq.RCVHWM, 10)
            self.sock.setsockopt(zmq.RCVBUF, 4096)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)
        self.delay_s = delay_s
        self.picks: list[dict] = []
        self.messages = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.sock.poll(200):
                continue
            frames = self.sock.recv_multipart()
            self.messages += 1
            doc = json.loads(frames[-1])
            if doc.get("schema") == "rtpick.pick/1":
                self.picks.append(doc)
            if self.delay_s:
                self.stop.wait(self.delay_s)

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        self.sock.close(linger=0)


def released(server: FaultServer) -> dict[str, int]:
    return server.call(lambda: dict(server.server.ring.last_seq))


def reference_packets(clean: FaultArchive, passes: int, upto: dict[str, int], stations: set[str]) -> list[Packet]:
    """The clean packets the server had released (seq <= upto) of ``stations``, every pass."""
    out, seqs = [], {}
    for k in range(passes):
        for p in clean.packets(k * clean.span_s, seqs):
            if p.station in stations and p.seq <= upto.get(p.station, 0):
                out.append(p)
    return out


def compare(published: list[dict], reference: list[dict], data_end: dict[str, int], faulted: set[str]) -> dict:
    counts = Counter(p["pick_id"] for p in published)
    ref = {p["pick_id"]: p for p in reference}
    station = lambda pid: "_".join(pid.split("/", 1)[0].split(".")[:2])  # noqa: E731
    clean_pub = {pid: n for pid, n in counts.items() if station(pid) not in faulted}
    unpublished = [pid for pid in ref if pid not in counts]
    lost = [pid for pid in unpublished if int(pid.rsplit("/", 1)[1]) < data_end[station(pid)] - TAIL_S * NS]
    return {
        "published": len(published),
        "duplicated (all stations)": sum(n - 1 for n in counts.values()),
        "reference picks (stations without faults)": len(ref),
        "lost": f"{len(lost)} {sorted(lost)[:10]}" if lost else 0,
        "still open at the end (within 60 s of the data end)": len(unpublished) - len(lost),
        "extra (not in the reference)": sum(1 for pid in clean_pub if pid not in ref),
        "probability differs": sum(1 for p in published if p["pick_id"] in ref
                                   and abs(p["probability"] - ref[p["pick_id"]]["probability"]) > PROB_TOL),
    }


def main() -> None:
    args = parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="rtpick-soak-"))
    if "SEISBENCH_CACHE_ROOT" not in os.environ:  # a writable copy of the offline weights (never download)
        shutil.copytree(REPO.parent / "shared" / "seisbench-cache", work / "seisbench-cache")
        os.environ["SEISBENCH_CACHE_ROOT"] = str(work / "seisbench-cache")
    print(f"soak: {args.minutes:g} min of data, {args.stations} stations, {args.speed:g}x, seed {seed}, work {work}")
    t0 = time.monotonic()
    faulted, clean, passes = build(args, rng)
    faulted_stations = {f.station for f in faulted.faults if f.station != "*"}
    print(f"archive: {passes} passes of {faulted.span_s} s, data from {ns_to_iso(faulted.start_ns)}, "
          f"{len(faulted_stations)} stations with record faults, built in {time.monotonic() - t0:.1f} s")
    for kind, n in sorted(Counter(f.kind for f in faulted.faults).items()):
        print(f"  fault {kind:8s} x{n}")
    mport, pport = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{pport}"
    config = work / "rtpick.toml"
    config.write_text(f"[inference]\nthreads = {args.threads}\n[logging]\nlevel = \"INFO\"\n"
                      f"[seedlink]\nnetto_s = 10.0\nreconnect_min_s = 0.1\nreconnect_max_s = 2.0\n"
                      f"[metrics]\nlisten = \"127.0.0.1:{mport}\"\n[publish]\nendpoint = \"{endpoint}\"\n"
                      # smaller than the default, so that slow subscribers overflow theirs within a soak
                      f"sndhwm = {args.sndhwm}\n")
    server = FaultServer(faulted, speed=args.speed, loop=True, max_packets=400_000).start()
    collector = Subscriber(endpoint)
    slow = [Subscriber(endpoint, delay_s=1.0) for _ in range(args.slow_subscribers)]
    for sub in (collector, *slow):
        sub.start()
    run = RtpickRun(["--config", str(config), "--seedlink", f"127.0.0.1:{server.port}", "--streams", "SK_*",
                     "--state-file", str(work / "soak.state"), "--begin-time", ns_to_iso(faulted.start_ns), "--stdout"],
                    work, "soak")
    samples = []  # (wall s, RSS MiB, data lag s)
    run_s = passes * faulted.span_s / args.speed
    deadline = time.monotonic() + run_s
    final: dict[str, int] = {}
    try:
        start = time.monotonic()
        while time.monotonic() < deadline and run.alive():
            time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
            rss = run.sample_rss()
            try:
                lag = by_label(scrape(f"http://127.0.0.1:{mport}/metrics"), "rtpick_station_data_lag_seconds", "station")
            except OSError:
                lag = {}
            samples.append((time.monotonic() - start, (rss or 0) / 1024, statistics.median(lag.values()) if lag else math.nan))
        upto = released(server)  # the data end: the server releases nothing after this
        server.stop()
        # let the daemon take in what it has received (bounded), then stop it as an operator would
        settle = time.monotonic() + 120
        last = -1.0
        while time.monotonic() < settle and run.alive():
            metrics = scrape(f"http://127.0.0.1:{mport}/metrics")
            fed = sum(v for (n, _), v in metrics.items() if n == "rtpick_records_total")
            if fed == last:
                break
            last = fed
            time.sleep(5)
        metrics = scrape(f"http://127.0.0.1:{mport}/metrics") if run.alive() else {}
        alive = run.alive()
        sent, restarts = server.packets_sent, server.restarts
        took = run.stop(signal.SIGTERM, timeout_s=60)
        time.sleep(1.0)  # the collector reads the last messages
    finally:
        run.kill()
        server.stop()
        for sub in (collector, *slow):
            sub.close()
    print(f"\nrun: {time.monotonic() - t0:.0f} s wall, daemon alive at the end: {alive}, SIGTERM -> exit {took:.1f} s "
          f"(code {run.proc.returncode}), server restarts {restarts}, packets sent {sent}")
    saved = state_stations(work / "soak.state")
    behind = sorted(k for k, seq in upto.items() if saved.get(k, 0) < seq)
    print(f"stations whose saved position is short of the last released packet: {len(behind)} of {len(upto)}"
          + (f" (e.g. {', '.join(f'{k} {saved.get(k, 0)}/{upto[k]}' for k in behind[:5])})" if behind else ""))
    if not alive:
        print(f"the daemon died: last lines of its log:\n{run.stderr(3000)}")
    print("\nRSS and data lag over time (wall s, RSS MiB, median station lag s; the data catches up with the wall\n"
          "clock by design, ending about 30 s behind it plus whatever the daemon lags):")
    step = max(1, len(samples) // 20)
    for t, rss, lag in samples[::step]:
        print(f"  {t:7.0f} {rss:8.0f} {lag:10.1f}")
    warm = [s for s in samples if s[0] >= 0.2 * run_s]
    if len(warm) >= 2:
        (t1, r1, _), (t2, r2, _) = warm[0], warm[-1]
        print(f"after warm-up (20%): RSS {min(s[1] for s in warm):.0f}..{max(s[1] for s in warm):.0f} MiB, "
              f"change {r2 - r1:+.0f} MiB over {t2 - t1:.0f} s; peak {run.peak_rss_kib / 1024:.0f} MiB")
    print("\ncounts by cause (daemon metrics before SIGTERM):")
    for (name, labels), value in sorted(metrics.items(), key=lambda kv: (kv[0][0], sorted(kv[0][1]))):
        if value and any(word in name for word in COUNTED) and not name.endswith("_created"):
            label = ",".join(f"{k}={v}" for k, v in sorted(labels) if k != "station")
            if not any(k == "station" for k, _ in labels):
                print(f"  {name}{{{label}}} {value:g}")
    per_station = Counter()
    for (name, labels), value in metrics.items():
        if (any(k == "station" for k, _ in labels) and any(word in name for word in COUNTED)
                and not name.endswith("_created")):
            per_station[name] += value
    for name, value in sorted(per_station.items()):
        print(f"  {name} (all stations) {value:g}")
    print(f"\nZeroMQ: collector {collector.messages} messages ({len(collector.picks)} picks); slow subscribers read "
          + ", ".join(str(s.messages) for s in slow))
    stdout_picks = run.picks()  # the same picks on stdout: tells a subscriber's loss from the daemon's
    if not args.no_reference:
        t1 = time.monotonic()
        keep = {k for k in clean.stations if k not in faulted_stations}
        packets = reference_packets(clean, passes, upto, keep)
        data_end = {}
        for p in packets:
            data_end[p.station] = max(data_end.get(p.station, 0), p.end_ns)
        path = write_miniseed(packets, work / "reference.mseed")
        ref_config = work / "replay.toml"
        ref_config.write_text(f"[inference]\nthreads = {args.threads}\n")
        reference = replay_picks([str(path)], ref_config, work, "reference", timeout_s=6 * 3600)
        print(f"\nreference: rtpick replay of {len(packets)} released records of {len(keep)} stations without "
              f"faults, {time.monotonic() - t1:.0f} s")
        for source, picks in (("ZeroMQ collector", collector.picks), ("stdout", stdout_picks)):
            print(f"  {source}:")
            for key, value in compare(picks, reference, data_end, faulted_stations).items():
                print(f"    {key}: {value}")
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # the killed server's sessions write into aborted transports: asyncio warns once per write
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    main()
