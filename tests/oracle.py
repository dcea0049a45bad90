"""Helpers of the equivalence oracle: stream data through rtpick and line it up with SeisBench."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import obspy

from rtpick.config import Config
from rtpick.ingest.replay import records_from_arrays
from rtpick.pipeline import Pipeline
from rtpick.types import NS_PER_S, Pick, Record


def shuffled_records(stream: obspy.Stream, rng: np.random.Generator, max_jitter_s: float = 3.0) -> list[Record]:
    """Records of random sizes, interleaved across channels in a randomly jittered arrival order."""
    keyed = []
    for trace in stream:
        i = 0
        data = trace.data
        rate = float(trace.stats.sampling_rate)
        start = trace.stats.starttime.ns
        while i < len(data):
            n = int(rng.integers(1, 1200))
            rec = next(records_from_arrays(trace.id, start + round(i * NS_PER_S / rate), rate, data[i:i + n], n))
            keyed.append((rec.end_ns + rng.uniform(0, max_jitter_s) * NS_PER_S, rec))
            i += n
    # a channel's own records must stay in order (a SeedLink server sends them in order)
    per_channel = defaultdict(list)
    for key, rec in keyed:
        per_channel[rec.stream_id].append((key, rec))
    ordered = []
    for items in per_channel.values():
        keys = sorted(k for k, _ in items)
        ordered.extend(zip(keys, (rec for _, rec in items)))
    ordered.sort(key=lambda kr: kr[0])
    return [rec for _, rec in ordered]


def stream_through(config: Config, model, records: list[Record]) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[Pick], Pipeline]:
    """Feed records, flush; return stacked values per station as (indices, values) and the picks."""
    pipe = Pipeline(config, model)
    chunks: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    pipe.on_stacked = lambda key, first, values: chunks[key].append((first, values.copy()))
    picks: list[Pick] = []
    for rec in records:
        picks += pipe.feed(rec)
    picks += pipe.flush()
    stacked = {}
    for key, parts in chunks.items():
        idx = np.concatenate([np.arange(first, first + v.shape[1]) for first, v in parts])
        vals = np.concatenate([v for _, v in parts], axis=1)
        stacked[key] = (idx, vals)
    return stacked, picks, pipe


def compare_annotations(stacked: tuple[np.ndarray, np.ndarray], annotations: obspy.Stream, labels: str, fs: float) -> tuple[int, float]:
    """Largest |rtpick - SeisBench| over every sample SeisBench annotated; returns (samples compared, max diff)."""
    idx, vals = stacked
    lookup = {int(i): k for k, i in enumerate(idx)}
    compared, worst = 0, 0.0
    for trace in annotations:
        cls = labels.index(trace.stats.channel.split("_")[-1])
        first = int(round(trace.stats.starttime.timestamp * fs))
        pos = np.array([lookup.get(first + i, -1) for i in range(len(trace.data))])
        assert (pos >= 0).all(), f"rtpick produced no value for {np.sum(pos < 0)} samples SeisBench annotated ({trace.id})"
        diff = np.abs(vals[cls, pos] - trace.data)
        compared += len(diff)
        worst = max(worst, float(np.nanmax(diff)))
    return compared, worst


def match_picks(ours: list[Pick], theirs, tolerance_s: float) -> tuple[list, list]:
    """Pair picks by phase and time; return (unmatched ours, unmatched theirs)."""
    left = [(p.phase, p.time_ns / NS_PER_S) for p in ours]
    right = [(p.phase, p.peak_time.timestamp) for p in theirs]
    unmatched_right = []
    for phase, t in right:
        best = min((k for k, (ph, tt) in enumerate(left) if ph == phase and abs(tt - t) <= tolerance_s), default=None, key=lambda k: abs(left[k][1] - t))
        if best is None:
            unmatched_right.append((phase, t))
        else:
            left.pop(best)
    return left, unmatched_right
