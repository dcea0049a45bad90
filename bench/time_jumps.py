"""Cost of time discontinuities fed straight into the pipeline (no ingest guard).

Prints (never asserts) wall time, windows run, short blocks and peak RSS growth
for one station streaming 10 minutes of noise, then one record after a jump:
+6 h and +24 h (a station back after an outage), +86 years (a record dated
2099), and a channel whose first record is dated 1970 followed by real-time
data ("feed after jump" is then the 10 minutes after the 1970 record, with their
inference). Before the O(1) station restart, +6 h took 10 s and made 179 short blocks,
+24 h did not return within 50 s, and 1970 -> 2013 tried to allocate 1.96 TiB.

Then a network-wide outage: ``--outage-stations`` stations (bench/throughput.py's
synthetic ones) stream 300 s, all come back 10 minutes later (each station's data
jumps, so each closes its block and restarts, running its lane's queue at once), and
stream 300 s more: seconds to feed each half, and batches and windows run in it. The
restarts run small batches; this shows what they cost the catch-up.

    python bench/time_jumps.py
    python bench/time_jumps.py --outage-stations 500 --backend openvino
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if "SEISBENCH_CACHE_ROOT" not in os.environ:
    _cache = Path(tempfile.mkdtemp(prefix="rtpick-bench-cache-"))
    shutil.copytree(REPO.parent / "shared" / "seisbench-cache", _cache, dirs_exist_ok=True)
    os.environ["SEISBENCH_CACHE_ROOT"] = str(_cache)
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import argparse  # noqa: E402

import numpy as np  # noqa: E402

from rtpick.config import Config  # noqa: E402
from rtpick.inference.models import load_model  # noqa: E402
from rtpick.pipeline import Pipeline  # noqa: E402
from rtpick.types import NS_PER_S, Record  # noqa: E402
from throughput import T0_NS, bench_config, make_records  # noqa: E402

HOUR_NS = 3600 * NS_PER_S
T0 = 1_371_397_070 * NS_PER_S  # 2013-06-16


def noise_records(start_ns: int, seconds: int, rng: np.random.Generator) -> list[Record]:
    out = []
    for k in range(seconds // 4):
        for comp in "ZNE":
            out.append(Record(f"XX.JMP..HH{comp}", start_ns + k * 4 * NS_PER_S, 100.0, rng.normal(0, 100, 400).astype(np.int32)))
    return out


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def outage(stations: int, backend: str) -> None:
    """Every station's data stops for 10 minutes after 300 s, then goes on for 300 s (see the module docstring)."""
    config = bench_config(10.0, 2, 64, backend=backend)
    model = load_model(config.inference.model, config.inference.device)
    records = make_records(stations, 600)
    cut = T0_NS + 300 * NS_PER_S
    before = [r for r in records if r.end_ns <= cut]
    after = [Record(r.stream_id, r.start_ns + 600 * NS_PER_S, r.sampling_rate, r.samples) for r in records if r.end_ns > cut]
    pipe = Pipeline(config, model)
    logging.getLogger("rtpick").setLevel(logging.ERROR)  # one time-jump warning per station
    print(f"\nnetwork outage: {stations} stations, backend {backend}, 10 min without data between two 300 s halves")
    for name, half in (("before", before), ("after the outage", after)):
        batches, windows = pipe.stats.batches, pipe.stats.windows
        t0 = time.perf_counter()
        for rec in half:
            pipe.feed(rec)
        seconds = time.perf_counter() - t0
        print(f"  {name:<17} {len(half)} records in {seconds:.2f} s, {pipe.stats.batches - batches} batches, "
              f"{pipe.stats.windows - windows} windows, time jumps so far {pipe.stats.time_jumps}")
    pipe.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outage-stations", type=int, default=200, help="stations of the network-wide outage (0 = skip it)")
    ap.add_argument("--backend", default="openvino", help="inference backend of the outage case")
    args = ap.parse_args()
    config = Config()
    model = load_model(config.inference.model, config.inference.device)
    rng = np.random.default_rng(0)
    cases = {
        "+6 h": (noise_records(T0, 600, rng), noise_records(T0 + 600 * NS_PER_S + 6 * HOUR_NS, 4, rng)),
        "+24 h": (noise_records(T0, 600, rng), noise_records(T0 + 600 * NS_PER_S + 24 * HOUR_NS, 4, rng)),
        "2099": (noise_records(T0, 600, rng), noise_records(T0 + 86 * 365 * 24 * HOUR_NS, 4, rng)),
        "1970 then 2013": (noise_records(0, 4, rng), noise_records(T0, 600, rng)),
    }
    print(f"{'case':<16} {'feed after jump s':>18} {'windows':>8} {'short blocks':>13} {'time jumps':>11} {'peak RSS MiB':>13}")
    for name, (before, after) in cases.items():
        pipe = Pipeline(config, model)
        for rec in before:
            pipe.feed(rec)
        t0 = time.perf_counter()
        for rec in after:
            pipe.feed(rec)
        seconds = time.perf_counter() - t0
        pipe.flush()
        print(f"{name:<16} {seconds:>18.3f} {pipe.stats.windows:>8} {pipe.stats.short_blocks:>13} {pipe.stats.time_jumps:>11} {peak_rss_mib():>13.0f}")
    if args.outage_stations:
        outage(args.outage_stations, args.backend)


if __name__ == "__main__":
    main()
