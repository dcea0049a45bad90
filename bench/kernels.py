"""Per-window cost of the lane's batch kernels: gather, stack, take_stacked, old vs new.

Prints (never asserts) microseconds per window, median (min/max) over repeats, for
64-window batches drawn from 50 stations of a lane-level ring pool with capacity
12000 samples, PhaseNet-shaped windows (3 channels / 3 classes x 3001 samples):

* ``gather``        — :func:`rtpick.stream.dsp.gather_batch` (std norm; ``--norm peak``)
* ``stack``         — :func:`rtpick.stream.dsp.stack_batch` (avg; ``max`` as well),
  predictions laid out as PhaseNet's ``annotate_batch_post`` returns them (a
  (batch, samples, classes) view of (batch, classes, samples))
* ``take_stacked``  — per window, its station's ``--step`` samples that it made final
  (one call each, as the lane does after a batch)

Stations take turns and each window starts one step after its station's last (the
steady state of a 10 s stride), so consecutive windows of a station overlap in the
rings as they do in the daemon. ``old`` is a verbatim copy of the kernels before the
rewrite (kept here only as the baseline) on the stacking dtypes of that time
(float64 sums, int32 counts); ``new`` uses :class:`~rtpick.stream.buffers.RingPool`'s.
Contenders run interleaved on the same inputs, alternating order, and the largest
differences between their outputs are printed too (stacking: float32 vs float64 sums).

    python bench/kernels.py                # 300 repeats
    python bench/kernels.py --repeats 1000 --norm peak
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np

from rtpick.stream import dsp
from rtpick.stream.buffers import RingPool

NORM_STD, NORM_PEAK, NORM_NONE = dsp.NORM_STD, dsp.NORM_PEAK, dsp.NORM_NONE


# ----------------------------------------------------------- baseline (old kernels)
@numba.njit(nogil=True, inline="always")
def _old_gather_one(data, have, start, n_samples, norm, out):
    cap = data.shape[1]
    s0 = start % cap
    for c in range(data.shape[0]):
        total = 0.0
        for i in range(n_samples):
            j = s0 + i
            if j >= cap:
                j -= cap
            v = data[c, j] if have[c, j] else 0.0
            out[c, i] = v
            total += v
        if norm == NORM_NONE:
            continue
        mean = total / n_samples
        if norm == NORM_STD:
            acc = 0.0
            for i in range(n_samples):
                d = out[c, i] - mean
                acc += d * d
            scale = np.sqrt(acc / (n_samples - 1)) + 1e-10
        else:
            peak = 0.0
            for i in range(n_samples):
                d = abs(out[c, i] - mean)
                if d > peak:
                    peak = d
            scale = peak + 1e-10
        for i in range(n_samples):
            out[c, i] = (out[c, i] - mean) / scale


@numba.njit(nogil=True)
def old_gather_batch(data, have, slots, starts, rows, n_samples, norm, out):
    for k in range(slots.shape[0]):
        _old_gather_one(data[slots[k]], have[slots[k]], starts[k], n_samples, norm, out[rows[k]])


@numba.njit(nogil=True, inline="always")
def _old_stack_one(acc, cnt, start, pred, skip, use_max):
    cap = acc.shape[1]
    s0 = (start + skip) % cap
    for i in range(pred.shape[0] - skip):
        j = s0 + i
        if j >= cap:
            j -= cap
        for k in range(pred.shape[1]):
            v = pred[skip + i, k]
            if np.isnan(v):
                continue
            if use_max:
                if cnt[k, j] == 0 or v > acc[k, j]:
                    acc[k, j] = v
            else:
                acc[k, j] += v
            cnt[k, j] += 1


@numba.njit(nogil=True)
def old_stack_batch(acc, cnt, slots, starts, skips, rows, preds, use_max):
    for k in range(slots.shape[0]):
        _old_stack_one(acc[slots[k]], cnt[slots[k]], starts[k], preds[rows[k]], skips[k], use_max)


@numba.njit(nogil=True)
def old_take_stacked(acc, cnt, start, stop, use_max, out):
    cap = acc.shape[1]
    for i in range(stop - start):
        j = (start + i) % cap
        for k in range(acc.shape[0]):
            c = cnt[k, j]
            if c == 0:
                out[k, i] = np.nan
            elif use_max:
                out[k, i] = acc[k, j]
            else:
                out[k, i] = acc[k, j] / c
            acc[k, j] = 0.0
            cnt[k, j] = 0


# ------------------------------------------------------------------------ setup
def ring_pool(rng: np.random.Generator, stations: int, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Lane-level data/have: noise on a DC offset, with a few gaps (zeros in the data, as the ring holds them)."""
    data = (rng.normal(0, 1e3, (stations, 3, capacity)) + rng.normal(0, 1e5, (stations, 3, 1))).astype(np.float32)
    have = rng.random((stations, 3, capacity)) > 0.01
    data[~have] = 0.0
    return data, have


def predictions(rng: np.random.Generator, batch: int, n: int, blind: int) -> np.ndarray:
    """(batch, samples, classes) view of (batch, classes, samples), blinded edges NaN, as PhaseNet returns them."""
    raw = rng.random((batch, 3, n), dtype=np.float32)
    raw[:, :, :blind] = np.nan
    raw[:, :, n - blind:] = np.nan
    return raw.transpose(0, 2, 1)


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def summary(values: list[float]) -> str:
    us = [v * 1e6 for v in values]
    return f"{statistics.median(us):8.2f} ({min(us):7.2f} / {max(us):8.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stations", type=int, default=50)
    ap.add_argument("--capacity", type=int, default=12000)
    ap.add_argument("--samples", type=int, default=3001)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--step", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--norm", choices=["std", "peak"], default="std")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    norm = NORM_STD if args.norm == "std" else NORM_PEAK
    n, b, cap, step = args.samples, args.batch, args.capacity, args.step
    data, have = ring_pool(rng, args.stations, cap)
    pool = RingPool(3, 3, cap, args.stations)  # the production dtypes of the stacking sums
    dtypes = {"old": (np.float64, np.int32), "new": (pool.acc.dtype, pool.cnt.dtype)}
    out = {"old": np.zeros((b, 3, n), np.float32), "new": np.zeros((b, 3, n), np.float32)}
    sums = {(name, mode): (np.zeros((args.stations, 3, cap), dtypes[name][0]), np.zeros((args.stations, 3, cap), dtypes[name][1]))
            for name in ("old", "new") for mode in ("avg", "max")}
    taken = {"old": np.zeros((b, 3, step)), "new": np.zeros((b, 3, step))}
    gather = {"old": old_gather_batch, "new": dsp.gather_batch}
    stack = {"old": old_stack_batch, "new": dsp.stack_batch}
    take = {"old": old_take_stacked, "new": dsp.take_stacked}
    times: dict[tuple[str, str], list[float]] = {}
    worst = {"gather": 0.0, "stack": 0.0, "take_stacked": 0.0}
    rows = np.arange(b, dtype=np.int64)
    cursor = np.zeros(args.stations, dtype=np.int64)  # next window start of each station
    turn: list[int] = []
    warm = -(-args.stations * (cap + n) // (step * b)) + 1  # every ring slot written once (page faults), and compiled
    for rep in range(warm + args.repeats):
        slots = np.empty(b, dtype=np.int64)
        for k in range(b):  # stations take turns, as their data arrive; each window one step after its last
            if not turn:
                turn = list(rng.permutation(args.stations))
            slots[k] = turn.pop()
        starts = cursor[slots].copy()
        cursor[slots] += step
        skips = np.where(rng.random(b) < 0.05, rng.integers(0, n, b), 0)  # a resumed block now and then
        preds = predictions(rng, b, n, 100)
        for name in ("old", "new") if rep % 2 else ("new", "old"):
            ring = (data, have) if name == "old" else (data,)  # the ring holds zeros where it has no data: new reads the samples alone
            t = {"gather": timed(gather[name], *ring, slots, starts, rows, n, norm, out[name])}
            for mode in ("avg", "max"):
                acc, cnt = sums[name, mode]
                t[f"stack {mode}"] = timed(stack[name], acc, cnt, slots, starts, skips, rows, preds, mode == "max")
            acc, cnt = sums[name, "avg"]
            t["take_stacked"] = sum(timed(take[name], acc[s], cnt[s], t0, t0 + step, False, taken[name][k])  # the samples now final
                                    for k, (s, t0) in enumerate(zip(slots, starts)))
            if rep >= warm:
                for key, value in t.items():
                    times.setdefault((key, name), []).append(value / b)
        worst["gather"] = max(worst["gather"], float(np.abs(out["old"] - out["new"]).max()))
        worst["take_stacked"] = max(worst["take_stacked"], float(np.nanmax(np.abs(taken["old"] - taken["new"]), initial=0.0)))
    for mode in ("avg", "max"):
        (acc_o, cnt_o), (acc_n, cnt_n) = sums["old", mode], sums["new", mode]
        assert (cnt_o == cnt_n).all()
        worst["stack"] = max(worst["stack"], float(np.abs(acc_o - acc_n).max()))
    print(f"{args.stations} stations, capacity {cap}, batches of {b} windows of 3 x {n} samples, step {step}, "
          f"{args.repeats} repeats, norm {args.norm}; stacking sums old {dtypes['old'][0].__name__}/{dtypes['old'][1].__name__}, "
          f"new {dtypes['new'][0]}/{dtypes['new'][1]}")
    print("µs per window (take_stacked: one call of `step` samples per window): median (min / max)")
    print(f"{'kernel':14s} {'old':>28s} {'new':>28s} {'speed-up':>9s}")
    for key in ("gather", "stack avg", "stack max", "take_stacked"):
        old, new = times[key, "old"], times[key, "new"]
        print(f"{key:14s} {summary(old):>28s} {summary(new):>28s} {statistics.median(old) / statistics.median(new):8.1f}x")
    print("largest |old - new|: " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))


if __name__ == "__main__":
    main()
