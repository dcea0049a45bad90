"""What a second model lane costs: the same stations through one lane vs split across two.

Prints (never asserts), for the same synthetic 100 Hz stations (bench/throughput.py's
``make_records``):

* ``one lane``          — every station in the implicit ``default`` region (PhaseNet original)
* ``two lanes, same``   — half the stations in a second region with the same model
* ``two lanes, 100+50`` — half the stations in a 50 Hz PhaseNet lane (the original's
  weights at 50 Hz; those stations are resampled 100 → 50 Hz)

For each: station-seconds of data per wall second, the model forward time of each lane
(its own windows), and the rest of the wall time (records, buffers, resampling,
gathering, stacking, picking). A second lane costs no more than its own windows'
forward time when that rest stays where it is with one lane. Contenders are
interleaved and repeated; medians with min/max.

    python bench/lanes.py                        # 20 stations x 300 s, 3 repeats
    python bench/lanes.py --stations 40 --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import make_records  # noqa: E402 - also points SeisBench at the shared weights cache

import torch  # noqa: E402

from rtpick.config import parse_config  # noqa: E402
from rtpick.inference.regions import plan_lanes  # noqa: E402
from rtpick.pipeline import Pipeline  # noqa: E402


def save_pn50(folder: Path) -> Path:
    """PhaseNet at 50 Hz with the original's weights, in SeisBench's format."""
    import seisbench.models as sbm

    model = sbm.PhaseNet(sampling_rate=50)
    model.load_state_dict(sbm.PhaseNet.from_pretrained("original").state_dict())
    base = folder / "pn50"
    model.save(base)
    return base


def configs(stations: int, threads: int, batch: int, pn50: Path) -> dict[str, dict]:
    """Config documents of the contenders; the second region takes the odd-numbered stations."""
    inference = {"threads": threads, "batch_size": batch}
    half = [f"XX.S{s:04d}.*.*" for s in range(1, stations, 2)]
    return {
        "one lane": {"inference": inference},
        "two lanes, same": {"inference": inference, "regions": [{"name": "second", "stations": half}, {"name": "default"}]},
        "two lanes, 100+50": {"inference": inference, "regions": [{"name": "second", "stations": half, "model": f"file:{pn50}"}, {"name": "default"}]},
    }


def run(config, plan, records) -> tuple[float, dict[str, tuple[int, float, int]]]:
    """Wall seconds of feed + flush, and per lane (windows, forward seconds, batches)."""
    pipe = Pipeline(config, plan=plan)
    t0 = time.perf_counter()
    for rec in records:
        pipe.feed(rec)
    pipe.flush()
    wall = time.perf_counter() - t0
    return wall, {region: (lane.windows, lane.inference_seconds, lane.batches) for region, lane in pipe.lanes.items()}


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stations", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    records = make_records(args.stations, args.seconds)
    station_seconds = args.stations * args.seconds
    with tempfile.TemporaryDirectory(prefix="rtpick-bench-lanes-") as tmp:
        docs = configs(args.stations, args.threads, args.batch, save_pn50(Path(tmp)))
        contenders = {}
        for name, doc in docs.items():
            config = parse_config(doc)
            contenders[name] = (config, plan_lanes(config))
        for config, plan in contenders.values():  # warm-up: numba kernels (resampling too), torch
            run(config, plan, records[: len(records) // 10])
        results: dict[str, list] = {name: [] for name in contenders}
        for _ in range(args.repeats):
            for name, (config, plan) in contenders.items():
                results[name].append(run(config, plan, records))
    print(f"{args.stations} stations x {args.seconds} s at 100 Hz, batch {args.batch}, {args.threads} thread(s), "
          f"{args.repeats} repeats; medians (min-max)")
    print(f"{'contender':20s} {'station-s/s':>22s} {'wall s':>18s} {'rest s (wall - forward)':>24s}   per lane: windows, batches, forward s")
    for name, runs in results.items():
        walls = [wall for wall, _ in runs]
        rest = [wall - sum(f for _, f, _ in lanes.values()) for wall, lanes in runs]
        lanes = ", ".join(
            f"{region}: {runs[0][1][region][0]} windows in {runs[0][1][region][2]} batches, {spread([r[1][region][1] for r in runs])} s"
            for region in runs[0][1]
        )
        print(f"{name:20s} {spread([station_seconds / w for w in walls], '{:.0f}'):>22s} {spread(walls):>18s} {spread(rest):>24s}   {lanes}")


if __name__ == "__main__":
    main()
