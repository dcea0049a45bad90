"""What the streaming spine costs per record, counted in CPU instructions (noise-free).

Wall-clock timings of the stubbed-model pipeline (``bench/throughput.py``) move by
±30 % from run to run on a shared 2-core machine, more than most single changes
to the spine. This counts instead: it runs the same workload under valgrind's
callgrind with instrumentation switched on only around one pipeline run (after a
warm-up run, so numba's compilation and cache loads are left out) and prints the
instructions executed per record, which is the same from run to run to a fraction
of a percent. Also prints user CPU microseconds per record of uninstrumented runs
in the same process tree, for scale.

The workload is ``bench/throughput.py``'s: synthetic 100 Hz three-component stations
in 412-sample int32 records in arrival order, stride 10 s, batch 64, the model
stubbed out (the forward returns zeros), fed and flushed.

Needs valgrind (``apt install valgrind``). ``--against PATH`` runs the same in
another checkout (e.g. a ``git worktree`` of an older commit) for a baseline
measured alike; each tree imports its own ``rtpick``.

    python bench/spine_cost.py                              # 20 stations x 300 s
    python bench/spine_cost.py --against ../rtpick-base --stations 50 --seconds 600
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs inside the measured tree (its own rtpick on PYTHONPATH): a warm-up run, then one
# run with callgrind's instrumentation on (when under callgrind), then timed runs.
CHILD = r"""
import gc, os, resource, subprocess, sys
sys.path.insert(0, "bench")
import throughput as tp
from rtpick.inference.models import load_model
stations, seconds, timed, under_callgrind = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
loaded = load_model("seisbench:PhaseNet/original")
records = tp.make_records(stations, seconds)
config = tp.bench_config(10.0, 1, 64)

def run():
    tp.run_rtpick(config, loaded, records, stub=True)

def toggle(on):
    if under_callgrind:
        subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())], check=True, capture_output=True)

run()
gc.collect()
toggle(True)
run()
toggle(False)
per = []
for _ in range(timed):
    gc.collect()
    t0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    run()
    per.append((resource.getrusage(resource.RUSAGE_SELF).ru_utime - t0) / len(records) * 1e6)
print("records", len(records))
print("cpu_us", " ".join(f"{p:.2f}" for p in per))
"""


def measure(tree: Path, stations: int, seconds: int, timed: int, env: dict[str, str]) -> tuple[int, float, list[float]]:
    """(records, instructions per record, user-CPU µs per record of ``timed`` plain runs) for one checkout."""
    env = {**env, "PYTHONPATH": str(tree)}
    with tempfile.TemporaryDirectory(prefix="rtpick-spine-") as tmp:
        out_file = Path(tmp) / "callgrind.out"
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}",
               sys.executable, "-c", CHILD, str(stations), str(seconds), "0", "1"]
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{tree}: callgrind run failed:\n{proc.stderr[-3000:]}")
        refs = re.search(r"Collected : (\d+)", proc.stderr)
        records = int(re.search(r"records (\d+)", proc.stdout).group(1))
    plain = subprocess.run([sys.executable, "-c", CHILD, str(stations), str(seconds), str(timed), "0"],
                           cwd=tree, env=env, capture_output=True, text=True, check=True)
    cpu = [float(v) for v in re.search(r"cpu_us (.*)", plain.stdout).group(1).split()]
    return records, int(refs.group(1)) / records, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stations", type=int, default=20)
    ap.add_argument("--seconds", type=int, default=300)
    ap.add_argument("--timed", type=int, default=5, help="uninstrumented runs per tree for user-CPU µs per record")
    ap.add_argument("--against", type=Path, help="another checkout of rtpick, measured alike (the baseline)")
    args = ap.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind (callgrind) is needed: apt install valgrind")
    env = dict(os.environ)
    if "SEISBENCH_CACHE_ROOT" not in env:
        cache = Path(tempfile.mkdtemp(prefix="rtpick-bench-cache-"))
        shutil.copytree(REPO.parent / "shared" / "seisbench-cache", cache, dirs_exist_ok=True)
        env["SEISBENCH_CACHE_ROOT"] = str(cache)
    trees = [REPO] + ([args.against.resolve()] if args.against else [])
    print(f"# stubbed-model spine: {args.stations} stations x {args.seconds} s, stride 10 s, batch 64, 412-sample records")
    for tree in trees:
        records, instructions, cpu = measure(tree, args.stations, args.seconds, args.timed, env)
        cpu.sort()
        print(f"{str(tree):40s} {records} records: {instructions:,.0f} instructions per record; "
              f"user CPU {cpu[len(cpu) // 2]:.1f} us per record (min {cpu[0]:.1f}, max {cpu[-1]:.1f})")


if __name__ == "__main__":
    main()
