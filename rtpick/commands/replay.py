"""``rtpick replay PATH... --config FILE``: pick on miniSEED files as if they were streaming.

Picks go to stdout as JSON lines (``rtpick.pick/1``), a summary to stderr, and a
progress bar to stderr when it is a terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter

from rtpick.commands import startup


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", help="miniSEED files or directories")
    parser.add_argument("--config", help="config TOML (default: built-in defaults)")
    parser.add_argument("--speed", type=float, help="override replay.speed (0 = as fast as possible, 1 = real time)")
    parser.add_argument("--progress", choices=["auto", "always", "never"], default="auto", help="progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    config = startup.configure(args.config)
    plan = startup.plan_lanes(config)

    from rtpick.ingest.replay import ReplayIngest
    from rtpick.pipeline import FEED_CHUNK, Pipeline
    from rtpick.publish.messages import pick_message

    speed = config.replay.speed if args.speed is None else args.speed
    pipeline = Pipeline(config, plan=plan)
    ingest = ReplayIngest(args.paths, speed=speed, record_samples=config.replay.record_samples,
                          max_jump_s=startup.horizon_s(plan))
    records = list(ingest.records()) if speed == 0 else ingest.records()
    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    if show:
        from tqdm import tqdm

        records = tqdm(records, unit="rec", file=sys.stderr, total=len(records) if isinstance(records, list) else None)

    t0 = time.perf_counter()

    def emit(picks) -> None:
        for pick in picks:
            sys.stdout.write(json.dumps(pick_message(pick)) + "\n")
        sys.stdout.flush()

    chunk = FEED_CHUNK if speed == 0 else 1  # as fast as possible: fed as the daemon feeds a backlog
    pending: list = []
    for record in records:
        pending.append(record)
        if len(pending) >= chunk:
            emit(pipeline.feed_many(pending))
            pending = []
    emit(pipeline.feed_many(pending))
    emit(pipeline.flush())
    elapsed = time.perf_counter() - t0
    stats = pipeline.stats
    rejected = dict(Counter(ingest.guard.rejected) + Counter(stats.rejected))  # by the ingest's guard or the pipeline
    channel_seconds = sum(f.counters["samples"] / f.sampling_rate for f in pipeline.feeds.values() if f.sampling_rate)
    station_seconds = channel_seconds * len(pipeline.stations) / max(len(pipeline.feeds), 1)
    print(
        f"rtpick replay: {len(pipeline.stations)} stations, {stats.records} records, {stats.windows} windows "
        f"in {stats.batches} batches, {stats.picks} picks; {elapsed:.2f} s wall "
        f"({station_seconds / max(elapsed, 1e-9):.0f} station-seconds/s, model {stats.inference_seconds:.2f} s); "
        f"files read {ingest.files_read}, failed {len(ingest.files_failed)}; rejected {rejected or 0}; "
        f"windows dropped {stats.windows_dropped}, short blocks {stats.short_blocks}",
        file=sys.stderr,
    )
    return 0 if not ingest.files_failed or ingest.files_read else 1
