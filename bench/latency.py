"""Latency of picks and events in real time, per record length; preliminary-pick quality; prints, asserts nothing.

A synthetic network (``--stations`` stations in a 90 x 70 km box, three components at
100 Hz, Gaussian noise plus a P and an S wavelet per station for an event every
``--event-every`` s inside the box, arrivals from a homogeneous 6.0/3.5 km/s model,
amplitude falling with distance) is written next to the bundled Oklahoma records
(7 real stations, one real event), all starting at the Oklahoma start time. For
each record length (1 s of data as Earthworm tracebufs, and full 512-byte
Steim-2 records), ``rtpick serve-seedlink --speed 1 --shift-to-now`` replays it in
real time into ``rtpick run`` (2 torch threads, early picks on, in-daemon associator
on the same velocity model); a ZeroMQ subscriber collects every message with its
receive time. Printed, p50/p95/p99:

(a) data latency: record end -> arrival (``rtpick_stage_latency_seconds``, from the
    daemon's Prometheus histogram, bucket-interpolated);
(b) rtpick-added latency: ``published - data_arrived`` of every pick;
(c) pick latency ``published - time`` for preliminary and final picks;
(d) event latency: first revision (``created``) - true origin time of synthetic events
    inside the network.
Then preliminary quality against the final picks: recall (share of final P picks
preceded by a preliminary within 0.2 s), share of preliminaries retracted.

Finally the ``early.min_context_s`` trade-off, offline (``Pipeline`` fed the synthetic
records of ``--table-stations`` stations in data time, tip windows every
``early.interval_s`` of data time): per value, recall/precision of preliminary P
picks against the final ones and their data-time latency (tip window end - pick
time; the real-time latency adds the record length and processing).

    .venv/bin/python bench/latency.py                            # 200 stations, 3 min per record length
    .venv/bin/python bench/latency.py --stations 50 --minutes 3  # what fits a shared 2-core machine
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.daemonproc import RtpickRun, rtpick_env, scrape  # noqa: E402

OKLAHOMA = REPO / "rtpick" / "data" / "oklahoma_2013-06-16"
FS = 100.0
VP, VS = 6.0, 3.5
BOX = (35.4, 36.03, -97.6, -96.6)  # lat_min, lat_max, lon_min, lon_max: about 70 x 90 km
KM_PER_DEG = 111.19
MATCH_S = 0.2  # a preliminary "precedes" a final within this


def percentiles(values, qs=(50, 95, 99)) -> str:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "n=0"
    p = np.percentile(values, qs)
    return f"n={len(values)} " + " ".join(f"p{q}={v:.2f}" for q, v in zip(qs, p))


# -- the synthetic network ----------------------------------------------------------------

def make_network(n: int, rng: np.random.Generator) -> list[tuple[str, float, float]]:
    lat = rng.uniform(BOX[0], BOX[1], n)
    lon = rng.uniform(BOX[2], BOX[3], n)
    return [(f"S{i:04d}", float(a), float(b)) for i, (a, b) in enumerate(zip(lat, lon))]


def distance_km(lat1, lon1, lat2, lon2):
    dy = (lat2 - lat1) * KM_PER_DEG
    dx = (lon2 - lon1) * KM_PER_DEG * np.cos(np.radians((lat1 + lat2) / 2))
    return np.hypot(dx, dy)


def wavelet(t: np.ndarray, amp: float, freq: float, decay: float, rng: np.random.Generator) -> np.ndarray:
    env = np.where(t > 0, np.exp(-np.clip(t, 0, None) / decay) * (1 - np.exp(-np.clip(t, 0, None) / 0.03)), 0.0)
    rough = np.convolve(rng.normal(0, 1, len(t)), np.ones(5) / 5, "same")
    return amp * env * (np.sin(2 * np.pi * freq * t) + 0.5 * rough)


def write_archive(folder: Path, stations, duration_s: float, start, rng, event_every_s: float) -> list[dict]:
    """miniSEED of the synthetic network; returns the catalog (origin time, location, arrivals)."""
    import obspy

    n = int(duration_s * FS)
    t = np.arange(n) / FS
    catalog = []
    for k, origin in enumerate(np.arange(20.0, duration_s - 30.0, event_every_s)):
        ev = {"origin_s": float(origin + rng.uniform(-3, 3)), "lat": float(rng.uniform(BOX[0] + 0.1, BOX[1] - 0.1)),
              "lon": float(rng.uniform(BOX[2] + 0.1, BOX[3] - 0.1)), "depth": float(rng.uniform(3, 8)), "arrivals": {}}
        catalog.append(ev)
    for code, lat, lon in stations:
        traces = {c: rng.normal(0, 1, n) for c in "ZNE"}
        for ev in catalog:
            hypo = float(np.hypot(distance_km(ev["lat"], ev["lon"], lat, lon), ev["depth"]))
            if hypo > 60:
                continue
            p, s = ev["origin_s"] + hypo / VP, ev["origin_s"] + hypo / VS
            ev["arrivals"][code] = (p, s)
            amp = 40.0 * 10.0 / max(hypo, 10.0)
            lo = max(0, int((p - 1) * FS))
            hi = min(n, int((s + 25) * FS))
            for c in "ZNE":
                seg = t[lo:hi]
                traces[c][lo:hi] += wavelet(seg - p, amp * (1.0 if c == "Z" else 0.4), 8.0, 1.5, rng)
                traces[c][lo:hi] += wavelet(seg - s, 2 * amp * (1.0 if c != "Z" else 0.4), 4.0, 3.0, rng)
        stream = obspy.Stream([obspy.Trace((traces[c] * 100).astype(np.int32),
                                           header={"network": "SY", "station": code, "channel": "HH" + c,
                                                   "sampling_rate": FS, "starttime": start}) for c in "ZNE"])
        stream.write(str(folder / f"{code}.mseed"), format="MSEED", reclen=4096, encoding="STEIM2")
    return catalog


def write_stations_csv(path: Path, stations) -> None:
    lines = ["network,station,location,latitude,longitude,elevation_m"]
    lines += [f"SY,{code},,{lat:.5f},{lon:.5f},0" for code, lat, lon in stations]
    bundled = (REPO / "rtpick" / "data" / "oklahoma_2013-06-16" / "stations.csv")
    if bundled.exists():
        lines += [line for line in bundled.read_text().splitlines()[1:] if line.strip()]
    path.write_text("\n".join(lines) + "\n")


# -- one real-time run --------------------------------------------------------------------

class Collector(threading.Thread):
    """SUB to everything; keeps (receive wall time, topic, document)."""

    def __init__(self, endpoint: str):
        super().__init__(daemon=True)
        import zmq

        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(endpoint)
        self.messages: list[tuple[float, str, dict]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.sock.poll(200):
                topic, payload = self.sock.recv_multipart()
                self.messages.append((time.time(), topic.decode(), json.loads(payload)))
        self.sock.close()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def histogram_quantiles(samples, name: str, label: tuple[str, str], qs=(0.5, 0.95, 0.99)) -> str:
    """Quantiles of a scraped Prometheus histogram (linear inside buckets, as histogram_quantile)."""
    buckets = []
    for (metric, labels), value in samples.items():
        d = dict(labels)
        if metric == name + "_bucket" and d.get(label[0]) == label[1]:
            buckets.append((float("inf") if d["le"] == "+Inf" else float(d["le"]), value))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return "n=0"
    total = buckets[-1][1]
    out = []
    for q in qs:
        rank, prev_le, prev_c = q * total, 0.0, 0.0
        for le, c in buckets:
            if c >= rank:
                v = le if le == float("inf") else prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9)
                out.append(f"p{int(q * 100)}={v:.2f}")
                break
            prev_le, prev_c = le, c
    return f"n={int(total)} " + " ".join(out)


def run_realtime(args, work: Path, archive_dirs: list[Path], stations_csv: Path, record_seconds: float | None,
                 start_ns: int, catalog) -> None:
    label = f"{record_seconds:g} s records" if record_seconds else "512-byte records"
    port, mport, pport = free_port(), free_port(), free_port()
    # the data starts at a whole second after the server has packed the archive (else it would come in a burst)
    origin_s = int(time.time() + 10 + (0.5 if record_seconds else 0.15) * args.stations)
    server_cmd = [sys.executable, "-m", "rtpick", "serve-seedlink", *map(str, archive_dirs), "--port", str(port),
                  "--speed", "1", "--shift-to-now", "--origin", str(origin_s), "--log-level", "WARNING"]
    if record_seconds:
        server_cmd += ["--record-seconds", str(record_seconds)]
    server_log = (work / f"server-{label[:3].strip()}.log").open("wb")
    server = subprocess.Popen(server_cmd, cwd=REPO, env=rtpick_env(), stdout=subprocess.PIPE, stderr=server_log)
    line = server.stdout.readline().decode()  # "listening on HOST:PORT" once the archive is packed
    if time.time() > origin_s:
        print(f"   (packing took longer than planned: the first {time.time() - origin_s:.0f} s of data come in a burst)")
    if "listening" not in line:
        server.kill()
        server.wait()
        raise SystemExit(f"serve-seedlink did not start: {line!r}")
    endpoint = f"tcp://127.0.0.1:{pport}"
    config = work / "rtpick.toml"
    config.write_text(
        f"[inference]\nthreads = {args.threads}\n[logging]\nlevel = \"WARNING\"\n"
        f"[early]\nenabled = true\ninterval_s = {args.interval}\nmin_context_s = {args.min_context}\n"
        f"[seedlink]\nnetto_s = 10.0\nreconnect_min_s = 0.1\n"
        f"[metrics]\nlisten = \"127.0.0.1:{mport}\"\n[publish]\nendpoint = \"{endpoint}\"\n"
        f"[associate]\nenabled = true\nstations = \"{stations_csv}\"\nvelocity_model = \"0d:{VP},{VS}\"\n"
        f"min_picks = 6\nmin_p = 4\nmin_stations = 4\n")
    collector = Collector(endpoint)
    collector.start()
    state = work / f"{label[:3].strip()}.state"
    state.unlink(missing_ok=True)
    run = RtpickRun(["--config", str(config), "--seedlink", f"127.0.0.1:{port}", "--streams", "SY_*,OK_*",
                     "--state-file", str(state)], work, f"run-{label[:3].strip()}")
    try:
        deadline = time.monotonic() + max(origin_s - time.time(), 0) + args.minutes * 60
        while time.monotonic() < deadline and run.alive():
            time.sleep(2.0)
            run.sample_rss()
        samples = scrape(f"http://127.0.0.1:{mport}/metrics") if run.alive() else {}
        run.stop(timeout_s=120)
    finally:
        if run.alive():
            run.kill()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server_log.close()
        time.sleep(0.5)
        collector.stop.set()
        collector.join(timeout=5)
    shift_ns = (origin_s * 10**9 - start_ns) // 10**9 * 10**9  # the server shifts by whole seconds
    report(label, collector.messages, samples, catalog, shift_ns, start_ns, run.peak_rss_kib)


def report(label: str, messages, samples, catalog, shift_ns: int, start_ns: int, rss_kib: int) -> None:
    from rtpick.types import iso_to_ns

    picks = [(t, topic, d) for t, topic, d in messages if d.get("schema") == "rtpick.pick/1"]
    early = [d for _, topic, d in picks if topic.startswith("pick_early.")]
    finals = [d for _, topic, d in picks if topic.startswith("pick.")]
    events = [d for _, _, d in messages if d.get("schema") == "rtpick.event/1"]
    sec = 1e9

    def lat(d, a, b):
        return (iso_to_ns(d[a]) - iso_to_ns(d[b])) / sec if d.get(a) and d.get(b) else None

    print(f"\n== {label}: {len(finals)} final picks, {len(early)} life-cycle messages, {len(events)} event revisions, "
          f"peak RSS {rss_kib / 1024:.0f} MiB")
    print(f"(a) data latency (record end -> arrival, s):   {histogram_quantiles(samples, 'rtpick_stage_latency_seconds', ('stage', 'record_to_arrival'))}")
    for stage in ("arrival_to_batch", "batch_wait", "forward", "picking", "publish"):
        print(f"    stage {stage:17s} (s):             {histogram_quantiles(samples, 'rtpick_stage_latency_seconds', ('stage', stage))}")
    print(f"(b) rtpick-added (published - data arrival):  final {percentiles([lat(d, 'published', 'data_arrived') for d in finals])}")
    prelim = [d for d in early if d.get("status") == "preliminary"]
    print(f"                                              preliminary {percentiles([lat(d, 'published', 'data_arrived') for d in prelim])}")
    print(f"(c) pick latency (published - pick time, s):  preliminary {percentiles([lat(d, 'published', 'time') for d in prelim])}")
    print(f"                                              final {percentiles([lat(d, 'published', 'time') for d in finals])}")
    print(f"                                              preliminary P {percentiles([lat(d, 'published', 'time') for d in prelim if d['phase'] == 'P'])}")
    steady = start_ns + shift_ns + 60 * 10**9  # after the start-up (a station's first window is scored at once)
    print(f"    after the first minute:                   preliminary P {percentiles([lat(d, 'published', 'time') for d in prelim if d['phase'] == 'P' and iso_to_ns(d['time']) >= steady])}")
    print(f"                                              final {percentiles([lat(d, 'published', 'time') for d in finals if iso_to_ns(d['time']) >= steady])}")
    firsts = {}
    for d in events:
        firsts.setdefault(d["event_id"], d)
    delays = []
    for ev in catalog:
        origin = start_ns + int(ev["origin_s"] * sec) + shift_ns
        near = [d for d in firsts.values() if abs(iso_to_ns(d["origin_time"]) - origin) < 3 * sec]
        if near:
            first = min(near, key=lambda d: iso_to_ns(d["created"]))
            delays.append((iso_to_ns(first["created"]) - origin) / sec)
    print(f"(d) event latency (first revision - origin):  {percentiles(delays)} ({len(delays)} of {len(catalog)} synthetic events found; "
          "origin from the catalog)")
    cancelled = sum(1 for d in events if d.get("cancelled"))
    print(f"    events cancelled: {cancelled}; first revisions with preliminary picks: "
          f"{sum(1 for d in firsts.values() if d.get('n_preliminary'))} of {len(firsts)}")
    quality("real time", early)
    quality("real time, after the first minute", early, after_ns=steady)


def quality(label: str, lifecycle: list[dict], after_ns: int = 0) -> tuple[float, float, float]:
    """Recall of final P picks by preceding preliminaries, precision and share retracted of preliminaries.

    ``after_ns``: only picks after this time (leaves out the start-up, where a station's first
    window of data is scored at once and its picks are older than a tip window's second half).
    """
    from rtpick.types import iso_to_ns

    lifecycle = [d for d in lifecycle if iso_to_ns(d["time"]) >= after_ns]
    prelim = {d["pick_id"]: d for d in lifecycle if d.get("status") == "preliminary"}
    closed = {d["pick_id"]: d for d in lifecycle if d.get("status") in ("final", "retracted") and d["pick_id"] in prelim}
    final_p = [d for d in lifecycle if d.get("status") == "final" and d["phase"] == "P"]
    preceded = sum(1 for d in final_p if d["pick_id"] in prelim
                   and abs(iso_to_ns(prelim[d["pick_id"]]["time"]) - iso_to_ns(d["time"])) <= MATCH_S * 1e9)
    retracted = sum(1 for d in closed.values() if d["status"] == "retracted")
    recall = preceded / len(final_p) if final_p else float("nan")
    share_retracted = retracted / len(prelim) if prelim else float("nan")
    print(f"    preliminary ({label}): final P preceded within {MATCH_S} s {preceded}/{len(final_p)} = {recall:.1%}; "
          f"{len(prelim)} preliminary, retracted {retracted} = {share_retracted:.1%}, still open {len(prelim) - len(closed)}")
    return recall, 1 - share_retracted, share_retracted


# -- the min_context_s table (offline, data time) ---------------------------------------------

def context_table(args, folder: Path, n_stations: int) -> None:
    import obspy
    import torch

    from rtpick.config import Config
    from rtpick.ingest.replay import records_from_arrays
    from rtpick.pipeline import Pipeline
    from rtpick.publish.messages import pick_message

    torch.set_num_threads(args.threads)
    files = sorted(folder.glob("S*.mseed"))[:n_stations]
    stream = obspy.Stream()
    for f in files:
        stream += obspy.read(str(f))
    records = []
    for tr in stream:
        records += list(records_from_arrays(tr.id, tr.stats.starttime.ns, FS, tr.data, 100))
    records.sort(key=lambda r: (r.end_ns, r.stream_id))
    print(f"\n== early.min_context_s trade-off (offline, {len(files)} synthetic stations, {stream[0].stats.npts / FS:.0f} s, "
          f"tip windows every {args.interval:g} s of data time, 1 s records)")
    print("min_context_s  recall(P within 0.2 s)  precision  retracted  prelim P latency data-time p50/p95 (s)")
    for context in args.table:
        config = Config()
        config.inference.threads = args.threads
        config.inference.max_wait_s = 1e9
        config.early.enabled = True
        config.early.interval_s = args.interval
        config.early.min_context_s = context
        pipe = Pipeline(config)
        picks, tip_end = [], {}
        next_tick = records[0].end_ns
        for rec in records:
            if rec.end_ns >= next_tick:
                out = pipe.poll(now=next_tick / 1e9)
                for p in out:
                    if p.status == "preliminary":
                        tip_end[p.lifecycle_id] = (rec.end_ns - p.time_ns) / 1e9
                picks += out
                next_tick += int(args.interval * 1e9)
            picks += pipe.feed(rec)
        picks += pipe.flush()
        life = [pick_message(p, lifecycle=True) for p in picks]
        with open(os.devnull, "w") as null:
            stdout, sys.stdout = sys.stdout, null
            try:
                recall, precision, retracted = quality(f"min_context {context:g}", life)
            finally:
                sys.stdout = stdout
        lat = [v for k, v in tip_end.items() if k.split("/")[1] == "P"]
        p50, p95 = (np.percentile(lat, [50, 95]) if lat else (float("nan"),) * 2)
        print(f"{context:13g}  {recall:22.1%}  {precision:9.1%}  {retracted:9.1%}  {p50:.2f} / {p95:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stations", type=int, default=200, help="synthetic stations (plus the 7 Oklahoma ones)")
    parser.add_argument("--minutes", type=float, default=3.0, help="real-time run per record length (the archive is 1 min longer)")
    parser.add_argument("--event-every", type=float, default=20.0, help="seconds between synthetic events")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--interval", type=float, default=2.0, help="early.interval_s")
    parser.add_argument("--min-context", type=float, default=1.0, help="early.min_context_s of the real-time runs")
    parser.add_argument("--records", default="1,512", help="record kinds: seconds of data, or 512 for full 512-byte records")
    parser.add_argument("--table", type=lambda s: [float(x) for x in s.split(",") if x.strip()], default=[1.0, 2.0, 3.0, 5.0],
                        help="min_context_s values of the trade-off table ('' to skip)")
    parser.add_argument("--table-stations", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    import obspy

    rng = np.random.default_rng(args.seed)
    work = Path(tempfile.mkdtemp(prefix="rtpick-latency-"))
    try:
        if "SEISBENCH_CACHE_ROOT" not in os.environ:  # a writable copy of the offline weights (never download)
            shutil.copytree(REPO.parent / "shared" / "seisbench-cache", work / "seisbench-cache")
            os.environ["SEISBENCH_CACHE_ROOT"] = str(work / "seisbench-cache")
        synth = work / "synthetic"
        synth.mkdir()
        stations = make_network(args.stations, rng)
        start = obspy.UTCDateTime("2013-06-16T15:37:50")
        t0 = time.monotonic()
        catalog = write_archive(synth, stations, args.minutes * 60 + 60, start, rng, args.event_every)
        stations_csv = work / "stations.csv"
        write_stations_csv(stations_csv, stations)
        print(f"archive: {args.stations} synthetic stations + Oklahoma, {args.minutes * 60 + 60:.0f} s, {len(catalog)} synthetic events, "
              f"written in {time.monotonic() - t0:.1f} s; early.interval_s={args.interval:g}, min_context_s={args.min_context:g}, "
              f"{args.threads} torch threads, {os.cpu_count()} CPUs")
        for kind in filter(None, args.records.split(",")):
            seconds = None if kind.strip() == "512" else float(kind)
            run_realtime(args, work, [synth, OKLAHOMA], stations_csv, seconds, int(start.ns), catalog)
        if args.table:
            context_table(args, synth, args.table_stations)
    finally:
        if not os.environ.get("RTPICK_BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()
