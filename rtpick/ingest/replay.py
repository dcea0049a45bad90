"""Replay of miniSEED archives as a stream of records, at a speed factor.

Files are read with ObsPy (libmseed joins contiguous records into traces), cut
into packets of ``record_samples`` and emitted in the order a live feed would
deliver them: by packet end time across all channels. ``speed`` paces emission
against the wall clock (1 = real time); 0 emits as fast as possible.
An unreadable or corrupt file is logged, counted and skipped. Every record
passes the same :class:`~rtpick.ingest.records.RecordGuard` as the SeedLink
ingest (``guard``: rate snapping, non-finite samples, future times, time jumps).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import obspy

from rtpick.ingest.records import MAX_JUMP_S, RecordGuard
from rtpick.types import NS_PER_S, Record

log = logging.getLogger(__name__)

MSEED_SUFFIXES = {".mseed", ".msd", ".miniseed", ".seed"}


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and miniSEED files (by suffix) inside given directories."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in MSEED_SUFFIXES))
        else:
            out.append(p)
    return out


def trace_records(trace: obspy.Trace, record_samples: int) -> Iterator[Record]:
    """Cut one trace into records of ``record_samples`` (exact ns start times)."""
    return records_from_arrays(trace.id, trace.stats.starttime.ns, float(trace.stats.sampling_rate), trace.data, record_samples)


@dataclass
class ReplayIngest:
    """Records from miniSEED files in arrival order; see the module docstring."""

    paths: list[str | Path]
    speed: float = 0.0
    record_samples: int = 412
    max_jump_s: float = MAX_JUMP_S  # the buffer length: larger jumps are held until confirmed (see RecordGuard)
    files_read: int = 0
    files_failed: list[str] = field(default_factory=list)
    guard: RecordGuard = field(init=False)

    def __post_init__(self) -> None:
        self.guard = RecordGuard(max_jump_s=self.max_jump_s)

    def read(self) -> obspy.Stream:
        stream = obspy.Stream()
        for path in expand_paths(self.paths):
            try:
                stream += obspy.read(str(path))
                self.files_read += 1
            except Exception as exc:  # ObsPy raises many types for corrupt files
                self.files_failed.append(str(path))
                log.error("%s: cannot read as miniSEED, skipped (%s: %s)", path, type(exc).__name__, exc)
        return stream

    def records(self) -> Iterator[Record]:
        """All records that pass the guard, ordered by end time (ties by stream id), paced by ``speed``."""
        return self.guard.filter(self._ordered())

    def _ordered(self) -> Iterator[Record]:
        heap: list[tuple[int, str, int, Record]] = []
        for n, trace in enumerate(self.read()):
            for rec in trace_records(trace, self.record_samples):
                heap.append((rec.end_ns, rec.stream_id, n, rec))
        heapq.heapify(heap)
        wall0 = time.monotonic()
        data0: int | None = None
        while heap:
            end_ns, _, _, rec = heapq.heappop(heap)
            if self.speed > 0:
                data0 = end_ns if data0 is None else data0
                due = wall0 + (end_ns - data0) / NS_PER_S / self.speed
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield rec


def records_from_arrays(stream_id: str, start_ns: int, rate: float, data: np.ndarray, record_samples: int) -> Iterator[Record]:
    """Records from a plain array (synthetic data in tests and benchmarks)."""
    for i in range(0, len(data), record_samples):
        yield Record(stream_id, start_ns + round(i * NS_PER_S / rate), rate, data[i:i + record_samples])
