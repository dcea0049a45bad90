"""Cost of time discontinuities fed straight into the pipeline (no ingest guard).

Prints (never asserts) wall time, windows run, short blocks and peak RSS growth
for one station streaming 10 minutes of noise, then one record after a jump:
+6 h and +24 h (a station back after an outage), +86 years (a record dated
2099), and a channel whose first record is dated 1970 followed by real-time
data ("feed after jump" is then the 10 minutes after the 1970 record, with their
inference). Before the O(1) station restart, +6 h took 10 s and made 179 short blocks,
+24 h did not return within 50 s, and 1970 -> 2013 tried to allocate 1.96 TiB.

    python bench/time_jumps.py
"""

from __future__ import annotations

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

import numpy as np  # noqa: E402

from rtpick.config import Config  # noqa: E402
from rtpick.inference.models import load_model  # noqa: E402
from rtpick.pipeline import Pipeline  # noqa: E402
from rtpick.types import NS_PER_S, Record  # noqa: E402

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


def main() -> None:
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


if __name__ == "__main__":
    main()
