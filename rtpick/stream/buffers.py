"""Per-channel continuity tracking and per-station ring buffers at the model rate.

Records of one channel are joined into *segments* (contiguous runs: each record
starts within half a sample of where the previous one ended, as libmseed joins
records). Each segment is placed on the model-rate sample grid anchored at the
Unix epoch, as SeisBench does: the segment's first sample gets grid index
``round(t0 * fs)`` and the sub-sample remainder is kept as the segment's offset
(SeisBench's ``t_offset``). Channels at other rates are resampled per segment
(:class:`~rtpick.stream.dsp.Resampler`) on the way in.

A :class:`GroupBuffer` holds one station's channel family (e.g. ``OK.W35A..EH?``)
as a (components × capacity) ring of float32 samples plus a "have data" mask;
missing samples read as zeros, as SeisBench imputes them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from rtpick.stream.dsp import Resampler, ring_clear, ring_first, ring_put
from rtpick.types import NS_PER_S, Record

log = logging.getLogger(__name__)

# Segments looked at when a write extends one or a scan asks whether one spans a range:
# each component's open segment is usually among the last few (a station has up to 3
# components); one older is only found again by a ring scan or started anew, never lost.
RECENT_SEGMENTS = 6


def grid_ns(index: int, sampling_rate: float) -> int:
    """Time (integer ns) of grid index ``index``; exact integer arithmetic for integer rates.

    Float arithmetic at epoch scale (~1.4e18 ns) has a resolution of 256 ns, enough
    to flip the microsecond of a published pick time between two runs.
    """
    if sampling_rate == int(sampling_rate):
        return index * NS_PER_S // int(sampling_rate)
    return round(index * (NS_PER_S / sampling_rate))


@dataclass(slots=True)
class Segment:
    """A contiguous run of one component on the grid: ``[first, last]`` and its sub-sample offset."""

    component: int
    first: int
    last: int
    offset_ns: float


class GroupBuffer:
    """Ring buffer of one station's components at the model rate, indexed by absolute grid index."""

    def __init__(self, key: str, n_components: int, capacity: int, sampling_rate: float, pooled: bool = False):
        """``pooled``: ``data``/``have`` are set by :meth:`RingPool.add` (the lane's rings), none of its own are allocated."""
        self.key = key
        self.capacity = capacity
        self.sampling_rate = sampling_rate
        shape = (n_components, 0 if pooled else capacity)
        self.data = np.zeros(shape, dtype=np.float32)
        self.have = np.zeros(shape, dtype=np.bool_)
        # absolute index one past the last sample written per component; None = never seen
        self.filled_to: list[int | None] = [None] * n_components
        self.lead: int | None = None  # max of filled_to: the station's data frontier (kept, not recomputed per record)
        self.segments: list[Segment] = []
        self.floor = 0  # samples below this were consumed by the scheduler: late data is dropped
        self.first_index: int | None = None  # first sample ever written (start-up grace for components)
        self._spans = np.zeros((n_components, 4), dtype=np.int64)  # write_pieces' ring write plan, reused

    def write(self, component: int, start: int, samples: np.ndarray, offset_ns: float) -> tuple[int, int]:
        """Write model-rate samples at absolute index ``start``.

        Returns ``(accepted, late)``: samples already covered by this component or
        below the consumed floor are dropped (duplicates and late data never reach
        the model twice).
        """
        return self.write_pieces([(component, start, 0, len(samples), offset_ns)], samples)[0]

    def write_pieces(self, pieces: list[tuple[int, int, int, int, float]], values: np.ndarray) -> list[tuple[int, int]]:
        """:meth:`write` of several pieces of ``values`` in one ring write (one numba call).

        Each piece is ``(component, start, offset in values, length, offset_ns)``; the
        pieces are written in order, as by one :meth:`write` each, and ``(accepted,
        late)`` is returned per piece. A station's staged channels are committed this
        way once per window step (:meth:`ChannelFeed.commit_all`).
        """
        spans = self._spans
        if len(pieces) > len(spans):
            self._spans = spans = np.zeros((len(pieces), 4), dtype=np.int64)
        done = []
        k = 0
        for component, start, src, n, offset_ns in pieces:
            filled = self.filled_to[component]
            late = min(n, self.floor - start) if start < self.floor else 0
            skip = max(late, filled - start if filled is not None else 0, 0)
            if skip >= n:
                done.append((0, late))
                continue
            first = start + skip
            end = start + n
            if filled is not None and first > filled:
                self._clear(component, filled, first)
            keep = min(end - first, self.capacity)  # only the newest capacity samples fit
            spans[k] = component, end - keep, src + n - keep, keep
            k += 1
            if self.first_index is None:
                self.first_index = first
            self.filled_to[component] = end
            if self.lead is None or end > self.lead:
                self.lead = end
            self._extend_segment(component, first, end - 1, offset_ns)
            done.append((n - skip, late))
        if k:
            ring_put(self.data, self.have, spans[:k], values)
        return done

    def _extend_segment(self, component: int, first: int, last: int, offset_ns: float) -> None:
        for seg in reversed(self.segments[-RECENT_SEGMENTS:]):
            if seg.component == component and seg.last == first - 1 and seg.offset_ns == offset_ns:
                seg.last = last
                return
        self.segments.append(Segment(component, first, last, offset_ns))
        if len(self.segments) > 64:  # keep only what can still overlap unfinished blocks
            horizon = self.floor - self.capacity
            self.segments = [s for s in self.segments if s.last >= horizon][-64:]

    def _clear(self, component: int, first: int, end: int) -> None:
        if end > first:
            ring_clear(self.data, self.have, component, first, min(end - first, self.capacity))

    def expire(self, ready: int) -> None:
        """Components that did not deliver up to ``ready`` are given up there: zeros, not stale ring data."""
        for component, filled in enumerate(self.filled_to):
            if filled is not None and filled < ready:
                self._clear(component, filled, ready)
                self.filled_to[component] = ready

    def first(self, start: int, stop: int, covered: bool) -> int:
        """Offset from ``start`` of the first index in ``[start, stop)`` where some component has data (``covered``) or none has; ``stop - start`` if none.

        At most ``capacity`` indices: older ones are no longer in the ring (the caller
        must never ask for more, so the cost never grows with a time gap).
        """
        if stop - start > self.capacity:
            raise ValueError(f"{self.key}: scan of {stop - start} samples asked, the ring holds {self.capacity}")
        if not covered and self._spanned(start, stop):
            return stop - start
        return int(ring_first(self.have, start, stop, covered))

    def _spanned(self, start: int, stop: int) -> bool:
        """Does one recent segment span ``[start, stop)``, so that no index there lacks data (no ring scan needed)?

        A segment's samples stay marked in the ring until a write one capacity later
        (which marks them again) or a clear of that component beyond its data; with
        the frontier at most one capacity past ``start``, neither can reach the range.
        The usual case of a station streaming without gaps: its next window's scan
        then costs no numba call.
        """
        if self.lead is None or self.lead - start > self.capacity:
            return False
        for seg in self.segments[-RECENT_SEGMENTS:]:
            if seg.first <= start and seg.last >= stop - 1:
                return True
        return False

    def reset(self) -> None:
        """Forget all data (time jump beyond the ring, or a fault): O(capacity), never O(gap)."""
        self.have[:] = False
        self.data[:] = 0.0  # the ring holds zeros where it has no data (see rtpick.stream.dsp.ring_clear)
        self.filled_to = [None] * len(self.filled_to)
        self.lead = None
        self.segments = []
        self.floor = 0
        self.first_index = None

    def offset_ns(self, first: int, last: int) -> float:
        """Mean sub-sample offset of the segments overlapping ``[first, last]`` (SeisBench's t_offset)."""
        offsets = [s.offset_ns for s in self.segments if s.last >= first and s.first <= last]
        return float(np.mean(offsets)) if offsets else 0.0

    def ready_to(self, wait_samples: int) -> int | None:
        """Index up to which every live component has delivered data.

        A component lagging more than ``wait_samples`` behind the most advanced one
        is not waited for: its missing samples become zeros, as in SeisBench. A
        component never seen is waited for only during a start-up grace of
        ``wait_samples`` after the station's first sample; after that the station
        is taken to have only the components it has shown (e.g. vertical-only).
        """
        lead = self.lead
        if lead is None or self.first_index is None:
            return None
        seen = [f for f in self.filled_to if f is not None]
        if len(seen) < len(self.filled_to) and lead - self.first_index < wait_samples:
            return self.first_index
        return max(min(seen), lead - wait_samples)


@dataclass(slots=True)
class ChannelFeed:
    """Continuity state of one channel: joins records into segments and feeds its group."""

    stream_id: str
    group: GroupBuffer
    component: int
    resample_response: str = "seisbench"  # see rtpick.stream.dsp.Resampler
    sampling_rate: float = 0.0
    expected_ns: int | None = None  # where the next contiguous record should start
    seg_start_ns: int = 0
    seg_n_in: int = 0  # native samples in the current segment
    seg_n_out: int = 0  # model-rate samples written for the current segment
    seg_base: int = 0  # grid index of the segment's first model-rate sample
    seg_offset_ns: float = 0.0
    half_ns: float = 0.0  # half a sample at the segment's rate: records starting this close to expected_ns continue it
    ns_step: int = 0  # a sample at the segment's rate in whole ns (100 Hz: 10,000,000); 0 where it is not whole
    resampler: Resampler | None = None
    failures: int = 0  # consecutive records whose processing raised (quarantine after too many)
    quarantined_until: float = 0.0  # monotonic time; records before it are rejected as "quarantined"
    counters: dict = field(default_factory=lambda: {"samples": 0, "gaps": 0, "overlaps": 0, "duplicates": 0, "rate_changes": 0, "late": 0})  # samples: native, counted as written (staged ones at their commit); records: the pipeline counts them
    # Staging (``rtpick.pipeline.Pipeline.feed_many``): a record that continues the open segment exactly is
    # accepted without being written yet; the pipeline moves the segment bookkeeping (seg_n_in, expected_ns)
    # at once, so the next record's continuity is checked against it, and appends its samples here; only
    # the ring write waits for commit_all, so a station's records are written and scanned once per few
    # window steps instead of once per record.
    stage_rate: float = math.nan  # the rate a record must have to be staged: the open segment's, without resampling; NaN otherwise
    staged: list = field(default_factory=list)  # native-rate sample arrays accepted but not yet written
    staged_arrival: float = 0.0  # wall time the newest staged record arrived

    @property
    def staged_to(self) -> int:
        """Grid index one past the newest sample accepted, staged ones included (meaningful while staging: native rate = model rate)."""
        return self.seg_base + self.seg_n_in

    def commit(self) -> None:
        """Write the staged samples, if any (one ring write)."""
        if self.staged:
            ChannelFeed.commit_all([self])

    @staticmethod
    def commit_all(feeds: list["ChannelFeed"]) -> None:
        """Write the staged samples of several channels of one station (one :class:`GroupBuffer`) in one ring write.

        Staged records continue their segment at the model rate, so each channel's
        samples go to the grid from where its segment's written part ends.
        """
        feeds = [f for f in feeds if f.staged]
        if not feeds:
            return
        arrays = [a for f in feeds for a in f.staged]
        values = np.concatenate(arrays, dtype=np.float32, casting="unsafe") if len(arrays) > 1 else np.asarray(arrays[0], dtype=np.float32)
        pieces = []
        src = 0
        for f in feeds:
            n = f.seg_n_in - f.seg_n_out  # staged samples: native rate = model rate while staging
            pieces.append((f.component, f.seg_base + f.seg_n_out, src, n, f.seg_offset_ns))
            f.counters["samples"] += n
            src += n
        for f, (_, late) in zip(feeds, feeds[0].group.write_pieces(pieces, values)):
            f.staged = []
            f.seg_n_out = f.seg_n_in
            if late:
                f.counters["late"] += late

    def _extend(self, n: int) -> None:
        """The open segment grows by ``n`` native samples: where the next contiguous record must start."""
        self.counters["samples"] += n
        n_in = self.seg_n_in = self.seg_n_in + n
        step = self.ns_step  # integer arithmetic where a sample is a whole number of ns (exact, and cheaper per record)
        self.expected_ns = self.seg_start_ns + (n_in * step if step else round(n_in * NS_PER_S / self.sampling_rate))

    def push(self, record: Record) -> list[str]:
        """Add a record now (staged samples first); returns the causes of any irregularity ("gap", "overlap", ...)."""
        self.commit()
        events: list[str] = []
        samples = record.samples
        if self.expected_ns is not None and record.sampling_rate != self.sampling_rate:
            events.append("rate_change")
            self.counters["rate_changes"] += 1
            self.end_segment()
        if self.expected_ns is None:
            self._start_segment(record.start_ns, record.sampling_rate)
        else:
            half = self.half_ns
            delta = record.start_ns - self.expected_ns
            if delta > half:
                events.append("gap")
                self.counters["gaps"] += 1
                self.end_segment()
                self._start_segment(record.start_ns, record.sampling_rate)
            elif delta < -half:
                n_dup = int(round(-delta * self.sampling_rate / NS_PER_S))
                if n_dup >= len(samples):
                    self.counters["duplicates"] += 1
                    return ["duplicate"]
                events.append("overlap")
                self.counters["overlaps"] += 1
                samples = samples[n_dup:]
        self._extend(len(samples))
        values = np.asarray(samples, dtype=np.float32)
        if self.resampler is not None:
            values = self.resampler.push(values)
        self._write(values)
        return events

    def end_segment(self) -> None:
        """Close the current segment (gap, rate change, end of data): write what is staged, flush the resampler."""
        self.commit()
        if self.resampler is not None and self.seg_n_in:
            self._write(self.resampler.finish())
        self.resampler = None
        self.expected_ns = None
        self.stage_rate = math.nan

    def drop_segment(self) -> None:
        """Forget the current segment without flushing (after a fault or a station restart)."""
        if self.staged:  # received and accepted: counted as if written
            self.counters["samples"] += self.seg_n_in - self.seg_n_out
        self.staged = []
        self.resampler = None
        self.expected_ns = None
        self.stage_rate = math.nan

    def _start_segment(self, start_ns: int, sampling_rate: float) -> None:
        fs = self.group.sampling_rate
        self.sampling_rate = sampling_rate
        self.half_ns = NS_PER_S / sampling_rate / 2
        rate = float(sampling_rate)
        self.ns_step = NS_PER_S // int(rate) if rate >= 1 and rate.is_integer() and NS_PER_S % int(rate) == 0 else 0
        self.seg_start_ns = start_ns
        self.seg_n_in = 0
        self.seg_n_out = 0
        self.seg_base = round(start_ns * fs / NS_PER_S)
        self.seg_offset_ns = float(start_ns - grid_ns(self.seg_base, fs))
        self.resampler = None if sampling_rate == fs else Resampler(sampling_rate, fs, self.resample_response)
        self.stage_rate = sampling_rate if self.resampler is None else math.nan
        self.expected_ns = start_ns

    def _write(self, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        _, late = self.group.write(self.component, self.seg_base + self.seg_n_out, values, self.seg_offset_ns)
        self.seg_n_out += len(values)
        if late:
            self.counters["late"] += late


class RingPool:
    """The rings of all stations of one lane, as slots of a few lane-level arrays.

    ``data``/``have`` (stations, components, capacity) hold the samples,
    ``acc``/``cnt`` (stations, classes, capacity) the stacked predictions. Each
    station's :class:`GroupBuffer` and stacking sums are views of its slot, so all
    per-station code is unchanged, while a whole batch of windows from many stations
    is gathered and stacked in one numba call each (:func:`rtpick.stream.dsp.gather_batch`,
    :func:`~rtpick.stream.dsp.stack_batch`). Slots double when full (the new arrays are
    zero pages until written, so unused slots cost address space, not RSS); the
    views of every station are then moved to the new arrays. Stations are never
    removed from a lane, so slots are never freed.

    The stacking sums are float32 and the counts int16: stacking is bound by memory
    traffic, and these halve it (stacking ~1.4x faster, bench/kernels.py) and halve
    the sums' memory. A sum of the few float32 probabilities that overlap a sample
    (3 at PhaseNet's 10 s stride) differs from a float64 one by ~1e-7, the size of
    SeisBench's own float32 result's rounding; maxima are exact. A count holds 32767
    overlapping windows, more than a window has samples.
    """

    def __init__(self, n_components: int, n_classes: int, capacity: int, slots: int = 64):
        self.data = np.zeros((slots, n_components, capacity), dtype=np.float32)
        self.have = np.zeros((slots, n_components, capacity), dtype=np.bool_)
        self.acc = np.zeros((slots, n_classes, capacity), dtype=np.float32)  # see the class docstring
        self.cnt = np.zeros((slots, n_classes, capacity), dtype=np.int16)
        self._users: list[tuple[GroupBuffer, object]] = []

    def __len__(self) -> int:
        return len(self._users)

    def add(self, buffer: GroupBuffer, sums: object) -> int:
        """A new slot for ``buffer`` (its data/have) and ``sums`` (an object with acc/cnt); returns the slot."""
        slot = len(self._users)
        if slot == self.data.shape[0]:
            self._grow(2 * slot)
        self._users.append((buffer, sums))
        self._point(slot)
        return slot

    def _grow(self, slots: int) -> None:
        for name in ("data", "have", "acc", "cnt"):
            old = getattr(self, name)
            new = np.zeros((slots, *old.shape[1:]), dtype=old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)
        for slot in range(len(self._users)):
            self._point(slot)

    def _point(self, slot: int) -> None:
        buffer, sums = self._users[slot]
        buffer.data, buffer.have = self.data[slot], self.have[slot]
        sums.acc, sums.cnt = self.acc[slot], self.cnt[slot]  # type: ignore[attr-defined]
