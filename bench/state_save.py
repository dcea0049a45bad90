"""Cost of persisting the resume state, to choose how often (and how) the daemon writes it.

    .venv/bin/python bench/state_save.py [--stations 500] [--repeat 50] [--dir DIR]

Times, on the file system of ``--dir`` (default: the working directory, where a
state file would lie), with a realistic state of N stations x 3 channels, their
resume points and 10 remembered picks per stream:

- ``save``     :func:`rtpick.ingest.state.save_state` (JSON, temp file, fsync, rename, fsync dir):
               what the daemon does at most once per ``state_flush_s``
- ``journal``  the alternative: append one line of pick ids to a journal and fsync it,
               which would have to run for every pick batch

Prints medians with min/max. Never asserts on times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from rtpick.ingest.state import IngestState, save_state

T0 = 1_700_000_000 * 10**9


def build_state(stations: int) -> IngestState:
    state = IngestState()
    for i in range(stations):
        key, sid = f"XX_S{i:04d}", f"XX.S{i:04d}.00.HH"
        state.stations[key] = 100_000 + i
        for comp in "ZNE":
            state.channels[sid + comp] = T0 + i
        state.resume[sid + "?"] = {"anchor": 170_000_000_000 + i, "picked_to": 170_000_003_000 + i,
                                   "pick_from": {"P": 170_000_003_000 + i, "S": 170_000_003_000 + i},
                                   "sampling_rate": 100.0}
        for phase in "PS":
            state.picks[f"{sid}Z|{phase}"] = [T0 + k * 10**10 for k in range(10)]
    return state


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stations", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--dir", default=".")
    args = parser.parse_args()
    state = build_state(args.stations)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "rtpick.state")
        save = timed(lambda: save_state(path, state), args.repeat)
        size = os.path.getsize(path)
        with open(os.path.join(tmp, "journal"), "ab") as fh:
            line = b"XX.S0001.00.HHZ/P/1700000000120000000\n"

            def append() -> None:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())

            journal = timed(append, args.repeat)
    for name, values in (("save", save), ("journal", journal)):
        print(f"{name:8s} {statistics.median(values) * 1e3:7.2f} ms  (min {min(values) * 1e3:.2f}, "
              f"max {max(values) * 1e3:.2f}, n {len(values)})")
    print(f"state file: {args.stations} stations, {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
