"""SeedLink ingest throughput: rtpick's ingest vs a bare client of the same library, same server, same run.

    .venv/bin/python bench/ingest.py [--stations 100] [--seconds 600] [--repeat 3]

Builds a synthetic archive (N stations x 3 channels x S seconds at 100 Hz,
Steim-2 noise), serves it with ``rtpick serve-seedlink`` in a separate process
(as fast as possible: the whole archive is in the ring), then times, interleaved
and repeated, three clients that each fetch the whole ring (FETCH from sequence
1, the server ends with END):

- ``bare``          seedlink-client ``SeedLink.collect()``: framing and header parse only
- ``bare+decode``   the same, plus unpacking every record's samples (pymseed)
- ``rtpick``        :class:`rtpick.ingest.seedlink.SeedLinkIngest` (wildcard expansion,
                    dedupe, Record objects with samples)

Prints medians with min/max of records/s and samples/s, and rtpick's rate as a
ratio of each bare rate. Never asserts on times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_archive(directory: Path, stations: int, seconds: int, rate: float = 100.0) -> None:
    import obspy

    rng = np.random.default_rng(42)
    start = obspy.UTCDateTime(2024, 1, 1)
    n = int(seconds * rate)
    for s in range(stations):
        st = obspy.Stream()
        for comp in "ZNE":
            data = np.cumsum(rng.normal(0, 40, n)).astype(np.int32) + rng.integers(-200, 200, n, dtype=np.int32)
            tr = obspy.Trace(data=data)
            tr.stats.update(dict(network="XX", station=f"S{s:03d}", location="", channel=f"HH{comp}",
                                 sampling_rate=rate, starttime=start))
            st += tr
        st.write(str(directory / f"XX.S{s:03d}.mseed"), format="MSEED", reclen=512, encoding="STEIM2")


def start_server(directory: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "rtpick", "serve-seedlink", str(directory), "--port", "0",
                             "--log-level", "WARNING"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("listening on"):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def run_bare(port: int, stations: list[str], decode: bool) -> tuple[int, int, float]:
    from seedlink_client import Protocol, SeedLink

    sl = SeedLink("127.0.0.1", port, timeout=30, protocol=Protocol.V3, dialup=True)
    for key in stations:
        sl.add_stream(key, None, seqnum=0)
    records = samples = 0
    t0 = time.perf_counter()
    sl.connect()
    for pkt in sl.collect(reconnect=False):
        rec = pkt.record()
        if decode:
            rec.unpack_data()
            samples += len(rec.np_datasamples)
        else:
            samples += rec.samplecnt
        records += 1
    elapsed = time.perf_counter() - t0
    sl.close()
    return records, samples, elapsed


def run_rtpick(port: int, stations: list[str]) -> tuple[int, int, float]:
    from rtpick.config import SeedLinkConfig
    from rtpick.ingest.seedlink import SeedLinkIngest
    from rtpick.ingest.state import IngestState

    cfg = SeedLinkConfig(server=f"127.0.0.1:{port}", streams=["XX_*"], netto_s=30)
    ingest = SeedLinkIngest(cfg, resume=IngestState(stations={k: 0 for k in stations}), dialup=True)
    records = samples = 0
    t0 = time.perf_counter()
    for record, _pos in ingest.records_with_position():
        records += 1
        samples += len(record.samples)
    return records, samples, time.perf_counter() - t0


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):>10,.0f} (min {min(values):,.0f}, max {max(values):,.0f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stations", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rtpick-bench-ingest-") as tmp:
        directory = Path(tmp)
        t0 = time.perf_counter()
        make_archive(directory, args.stations, args.seconds)
        print(f"archive: {args.stations} stations x 3 channels x {args.seconds} s at 100 Hz "
              f"({time.perf_counter() - t0:.1f} s to build)")
        server, port = start_server(directory)
        try:
            stations = [f"XX_S{s:03d}" for s in range(args.stations)]
            runs: dict[str, list[tuple[int, int, float]]] = {"bare": [], "bare+decode": [], "rtpick": []}
            for _ in range(args.repeat):  # interleaved, so drift in machine load hits all three alike
                runs["bare"].append(run_bare(port, stations, decode=False))
                runs["bare+decode"].append(run_bare(port, stations, decode=True))
                runs["rtpick"].append(run_rtpick(port, stations))
        finally:
            server.terminate()
            server.wait(timeout=30)
    counts = {name: {r for r, _, _ in v} for name, v in runs.items()}
    print(f"records per run: {counts}  (cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f})")
    print(f"{'client':<12} {'records/s':>42} {'samples/s':>48}")
    med = {}
    for name, values in runs.items():
        rps = [r / t for r, _, t in values]
        sps = [s / t for _, s, t in values]
        med[name] = statistics.median(rps)
        print(f"{name:<12} {summary(rps):>42} {summary(sps):>48}")
    print(f"rtpick / bare = {med['rtpick'] / med['bare']:.2f}; rtpick / bare+decode = {med['rtpick'] / med['bare+decode']:.2f} "
          f"(records/s medians, {args.repeat} interleaved runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
