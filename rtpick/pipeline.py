"""Records in, picks out: the streaming spine of rtpick.

:class:`Pipeline` routes each :class:`~rtpick.types.Record` to its channel's
continuity tracker and its station's ring buffer, schedules the windows that are
due, runs them through the model in batches, stacks the predictions exactly as
SeisBench's ``annotate`` and turns final samples into picks as ``classify`` does.
It is single-threaded and does not know where records come from (replay or
SeedLink); the daemon drives it from one thread.

Contract: for the same data and model, the stacked probabilities equal SeisBench
``annotate`` (same overlap/stacking/blinding) within 1e-4 and the picks equal
``classify`` (tests/test_oracle.py).

Fault isolation (no input may stop other stations): a record that cannot be
processed is rejected with its cause (``unsupported_sampling_rate``, ``late``,
``processing_error``, ...); a channel whose records keep failing is quarantined
for ``stream.quarantine_s``; a batch whose inference fails loses its windows
(``stats.windows_failed``) and the stations go on with the windows they have; a
station whose picking fails is restarted empty (``stats.station_errors``).

Time jumps: a record more than half the ring (and more than the component wait)
beyond the station's data closes the station's block where its data ended (its
picks come out exactly as at a gap) and restarts the station at the new time,
in O(capacity) whatever the gap; a record ending more than the ring behind the
station's data is rejected as ``late``.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from rtpick.config import Config
from rtpick.inference.engine import InferenceEngine
from rtpick.inference.models import LoadedModel, load_model
from rtpick.picking.extract import TriggerPicker
from rtpick.stream import dsp
from rtpick.stream.buffers import ChannelFeed, GroupBuffer, grid_ns
from rtpick.stream.windows import Block, Resume, Window, WindowScheduler
from rtpick.types import NS_PER_S, Pick, Record

log = logging.getLogger(__name__)


class PipelineObserver(Protocol):
    """Hot-loop hooks (implemented by the Prometheus metrics)."""

    def on_record(self, stream_id: str, n_samples: int, arrival_latency_s: float) -> None: ...
    def on_gap(self, stream_id: str) -> None: ...
    def on_overlap(self, stream_id: str) -> None: ...
    def on_rejected(self, stream_id: str, cause: str) -> None: ...
    def on_batch(self, size: int, seconds: float) -> None: ...
    def on_pick(self, pick: Pick, latency_s: float) -> None: ...


@dataclass
class PipelineStats:
    """Counters of the whole pipeline; per-channel counters live on each feed."""

    records: int = 0
    samples: int = 0
    windows: int = 0
    batches: int = 0
    picks: int = 0
    windows_dropped: int = 0  # buffer overrun: data overwritten before its window ran
    windows_failed: int = 0  # windows of batches whose inference raised (not stacked)
    time_jumps: int = 0  # station restarts after a forward jump beyond the ring
    station_errors: int = 0  # station restarts after its picking raised
    short_blocks: int = 0  # data runs shorter than one window (not picked)
    rejected: dict[str, int] = field(default_factory=dict)  # cause -> records
    inference_seconds: float = 0.0


@dataclass(eq=False)
class Station:
    """Everything the pipeline keeps for one station's channel family (e.g. OK.W35A..EH?)."""

    key: str
    buffer: GroupBuffer
    scheduler: WindowScheduler
    acc: np.ndarray  # stacked prediction sums (classes, capacity)
    cnt: np.ndarray  # windows stacked per sample (classes, capacity)
    pickers: dict[int, TriggerPicker]  # class index -> picker
    pick_id: str = ""  # NET.STA.LOC.CHA named on picks: the vertical channel when there is one
    arrivals: deque = field(default_factory=deque)  # (frontier index, wall time) of recent records
    last_data_ns: int = 0  # end time of the newest record
    last_arrival: float = 0.0  # wall time of the newest record


def _component_map(order: str) -> dict[str, int]:
    """Component letter -> model input channel; Z12 accepted as ZNE (SeisBench's flexible components)."""
    mapping = {c: i for i, c in enumerate(order)}
    for a, b in (("1", "N"), ("2", "E")):
        if b in mapping:
            mapping[a] = mapping[b]
        elif a in mapping:
            mapping[b] = mapping[a]
    return mapping


class Pipeline:
    """The streaming picker: ``feed`` records, ``poll`` in real time, ``flush`` at end of data, ``drain`` at shutdown."""

    def __init__(self, config: Config, model: LoadedModel | None = None, observer: PipelineObserver | None = None):
        self.config = config
        self.loaded = model or load_model(config.inference.model, config.inference.device)
        net = self.loaded.model
        self.observer = observer
        self.fs = float(net.sampling_rate)
        self.in_samples = int(net.in_samples)
        overlap = int(round(config.inference.overlap_s * self.fs))
        self.step = self.in_samples - overlap
        self.argdict = dict(net.default_args)
        self.argdict.update(blinding=tuple(config.inference.blinding_samples), stacking=config.inference.stacking)
        self.engine = InferenceEngine(net, self.argdict, config.inference.threads, config.inference.device)
        self.labels = list(net.labels)
        self.components = _component_map(net.component_order)
        self.capacity = int(round(config.stream.buffer_seconds * self.fs))
        if self.capacity < 2 * self.in_samples:
            raise ValueError(
                f"stream.buffer_seconds = {config.stream.buffer_seconds} is too small: "
                f"must hold two model windows ({2 * self.in_samples / self.fs:.1f} s)"
            )
        self.wait_samples = int(round(config.stream.component_wait_s * self.fs))
        self.use_max = config.inference.stacking == "max"
        self.thresholds = dict(config.picking.thresholds)
        self.stats = PipelineStats()
        self.feeds: dict[str, ChannelFeed] = {}
        self.stations: dict[str, Station] = {}
        self.queue: deque[Window] = deque()
        self._batch = np.zeros((config.inference.batch_size, len(net.component_order), self.in_samples), dtype=np.float32)
        self._out: list[Pick] = []
        # optional tap on final stacked probabilities: (station key, first index, values (classes, n))
        # used by the equivalence tests and by `rtpick plot`
        self.on_stacked: Callable[[str, int, np.ndarray], None] | None = None
        self._logged: set[tuple[str, str]] = set()
        self._ignored: set[str] = set()
        self._resume: dict[str, Resume] = {}  # station key -> where the run before a restart stood
        # a forward jump larger than this restarts the station (see the module docstring)
        self.jump_samples = max(self.capacity // 2, self.wait_samples)

    # ------------------------------------------------------------------ input
    def feed(self, record: Record) -> list[Pick]:
        """Ingest one record, run every full batch that is due, return final picks.

        Never raises for bad input: whatever goes wrong with this record is counted
        by cause and logged, and the other channels go on.
        """
        feed = self.feeds.get(record.stream_id) or self._new_feed(record)
        if feed is None or not self._valid(record, feed):
            return self._take()
        try:
            self._ingest(feed, record)
        except Exception as exc:  # noqa: BLE001 - one record must never stop the pipeline
            self._record_failed(feed, exc)
        else:
            feed.failures = 0
        while len(self.queue) >= self.config.inference.batch_size:
            self._run_batch()
        return self._take()

    def _ingest(self, feed: ChannelFeed, record: Record) -> None:
        station: Station = feed.group.owner  # type: ignore[attr-defined]
        frontier = self._frontier(station)
        if frontier is not None:
            start = round(record.start_ns * self.fs / NS_PER_S)
            end = round(record.end_ns * self.fs / NS_PER_S)
            if end <= frontier - self.capacity:
                self._reject(record.stream_id, "late", f"data {(frontier - end) / self.fs:.0f} s older than the station's newest (beyond the buffer)")
                return
            if start - frontier > self.jump_samples:
                self._time_jump(station, record.stream_id, (start - frontier) / self.fs)
            else:
                while self._at_risk(station, end):
                    self._run_batch()
        for cause in feed.push(record):
            self._irregular(record.stream_id, cause)
        self.stats.records += 1
        self.stats.samples += len(record.samples)
        now = time.time()
        station.last_data_ns = max(station.last_data_ns, record.end_ns)
        station.last_arrival = now
        filled = feed.group.filled_to[feed.component]
        if filled is not None:
            station.arrivals.append((filled, now))
        if self.observer is not None:
            self.observer.on_record(record.stream_id, len(record.samples), now - record.end_ns / NS_PER_S)
        self._advance(station, final=False)
        while self._at_risk(station):
            self._run_batch()

    @staticmethod
    def _frontier(station: Station) -> int | None:
        """Index one past the station's newest sample (None before its first record)."""
        return max((f for f in station.buffer.filled_to if f is not None), default=None)

    def _at_risk(self, station: Station, frontier: int | None = None) -> bool:
        """Would waiting for a fuller batch let this station's buffer overwrite a pending window?

        ``frontier``: the station's data end after the record about to be written
        (default: now). Keeps memory bounded by ``buffer_seconds`` even when data
        arrives faster than batches fill (replay as fast as possible, backfill after
        an outage, a gap shorter than a restart).
        """
        blocks = station.scheduler.blocks
        if not blocks or not blocks[0].pending or not self.queue:
            return False
        oldest = blocks[0].start + blocks[0].pending[0]
        if frontier is None:
            frontier = self._frontier(station)
        return frontier - oldest > station.buffer.capacity - 2 * self.in_samples

    def _time_jump(self, station: Station, stream_id: str, seconds: float) -> None:
        """Close the station's data where it ended (exact picks, as at a gap), then restart it empty."""
        self.stats.time_jumps += 1
        self._log_once(stream_id, "time_jump", f"data jumps {seconds:.0f} s ahead of the station's newest: block closed, station restarted at the new time (counted)")
        for feed in self.feeds.values():
            if feed.group is station.buffer:
                feed.end_segment()
        self._advance(station, final=True)
        while self.queue:
            self._run_batch()
        self._reset_station(station)

    def _reset_station(self, station: Station) -> None:
        """Forget the station's data, blocks and trigger state; its queued windows are dropped."""
        if any(w.group is station for w in self.queue):
            self.queue = deque(w for w in self.queue if w.group is not station)
        for feed in self.feeds.values():
            if feed.group is station.buffer:
                feed.drop_segment()
        station.buffer.reset()
        station.scheduler.reset()
        station.acc[:] = 0.0
        station.cnt[:] = 0
        for picker in station.pickers.values():
            picker.state[:] = 0.0
        station.arrivals.clear()
        station.last_data_ns = 0

    def poll(self, now: float | None = None) -> list[Pick]:
        """Run a partial batch once its oldest window waited ``max_wait_s`` (real-time mode)."""
        now = time.monotonic() if now is None else now
        if self.queue and now - self.queue[0].queued_at >= self.config.inference.max_wait_s:
            while self.queue:
                self._run_batch()
        return self._take()

    def flush(self) -> list[Pick]:
        """End of data (replay end, dial-up END): close every segment and block, emit all picks.

        Blocks end at the data edge with SeisBench's end-aligned window, exactly as
        ``annotate`` on the whole data. Not for shutdown while data goes on: see :meth:`drain`.
        """
        for feed in self.feeds.values():
            try:
                feed.end_segment()
            except Exception as exc:  # noqa: BLE001 - one channel must not stop the others
                self._record_failed(feed, exc)
        for station in self.stations.values():
            try:
                self._advance(station, final=True)
            except Exception as exc:  # noqa: BLE001
                self._station_failed(station, exc)
        while self.queue:
            self._run_batch()
        for station in self.stations.values():
            self._finalize(station)
        self.stats.short_blocks = sum(s.scheduler.short_blocks for s in self.stations.values())
        return self._take()

    def drain(self) -> list[Pick]:
        """Shutdown while data goes on: run every queued window, return only picks final by streaming rules.

        No block or trigger is closed at the data frontier, so nothing truncated is
        published; what is held back is rebuilt after a restart from the re-fed
        context (see :meth:`resume_points`).
        """
        while self.queue:
            self._run_batch()
        return self._take()

    # ----------------------------------------------------------------- resume
    def resume_points(self) -> dict[str, dict]:
        """Per station key, where a restarted pipeline must resume to publish exactly the same picks.

        ``anchor``: an absolute index of the window grid of the oldest unfinished
        block (window starts are anchor + k*step); ``picked_to``: the lowest index a
        pick not yet emitted can start at (the start of a trigger still open, else
        how far picking got); ``pick_from``: that per phase; ``sampling_rate``: the
        model rate the indices are counted in. JSON-serialisable.
        """
        points: dict[str, dict] = {}
        for key, station in self.stations.items():
            sched = station.scheduler
            if sched.blocks:
                block = sched.blocks[0]
                anchor, picked_to = block.grid, block.picked_to
            elif sched.scanned_to is not None:
                anchor = picked_to = sched.scanned_to  # between blocks: everything up to here is done
            else:
                continue
            pick_from = {}
            for k, picker in station.pickers.items():
                since = picker.open_since
                pick_from[self.labels[k]] = picked_to if since is None else min(since, picked_to)
            points[key] = {
                "anchor": int(anchor),
                "picked_to": int(min(pick_from.values(), default=picked_to)),
                "pick_from": pick_from,
                "sampling_rate": self.fs,
            }
        return points

    def restore(self, points: dict[str, dict]) -> None:
        """Before feeding: align each station's first block to the saved window grid and picking position.

        Applies to a station whose first block starts at least one window before its
        ``picked_to`` (else that station starts as usual, logged); a point saved at
        another model sampling rate is ignored (logged). Picks below ``picked_to``
        were handled before the restart and are not made again.
        """
        for key, point in points.items():
            try:
                if float(point["sampling_rate"]) != self.fs:
                    log.warning("%s: resume point at %s Hz ignored: the model runs at %s Hz", key, point["sampling_rate"], self.fs)
                    continue
                picked_to = int(point["picked_to"])
                pick_from = {str(k): int(v) for k, v in point.get("pick_from", {}).items()}
                resume = Resume(anchor=int(point["anchor"]), picked_to=picked_to, pick_from=pick_from)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("%s: resume point %r ignored: %s", key, point, exc)
                continue
            station = self.stations.get(key)
            if station is not None:
                station.scheduler.resume = resume
            else:
                self._resume[key] = resume

    # ----------------------------------------------------------------- checks
    def _valid(self, record: Record, feed: ChannelFeed) -> bool:
        if time.monotonic() < feed.quarantined_until:
            self._reject(record.stream_id, "quarantined", "channel quarantined after repeated processing errors")
            return False
        rate = record.sampling_rate
        if rate != self.fs and not (rate == feed.sampling_rate and feed.sampling_rate > 0):  # a segment's rate was checked at its start
            try:
                dsp.resample_ratio(float(rate), self.fs)
            except (TypeError, ValueError) as exc:
                self._reject(record.stream_id, "unsupported_sampling_rate", f"unsupported sampling rate: {exc}")
                return False
        samples = record.samples
        if samples.ndim != 1 or samples.dtype.kind not in "iuf":
            self._reject(record.stream_id, "bad_samples", f"samples of dtype {samples.dtype} shape {samples.shape}")
            return False
        if samples.dtype.kind == "f" and not np.isfinite(samples).all():
            self._reject(record.stream_id, "non_finite", "NaN or infinite samples")
            return False
        return len(samples) > 0

    def _new_feed(self, record: Record) -> ChannelFeed | None:
        sid = record.stream_id
        if sid in self._ignored:
            return None
        parts = sid.split(".")
        if len(parts) != 4 or len(parts[3]) != 3:
            self._ignored.add(sid)
            self._reject(sid, "bad_stream_id", "expected NET.STA.LOC.CHA with a 3-letter channel code")
            return None
        net, sta, loc, cha = parts
        family = cha[:2] + "?"
        if not any(fnmatch.fnmatchcase(family, pattern) for pattern in self.config.stream.channels):
            self._ignored.add(sid)
            self._reject(sid, "channel_not_selected", f"channel family {family} not in stream.channels")
            return None
        comp = self.components.get(cha[2])
        if comp is None:
            self._ignored.add(sid)
            self._reject(sid, "unknown_component", f"component code {cha[2]!r} is not one of {sorted(self.components)}")
            return None
        key = f"{net}.{sta}.{loc}.{family}"
        station = self.stations.get(key) or self._new_station(key)
        if cha[2] == "Z" or not station.pick_id:
            station.pick_id = sid
        feed = ChannelFeed(stream_id=sid, group=station.buffer, component=comp, resample_response=self.config.stream.resample_response)
        self.feeds[sid] = feed
        return feed

    def _new_station(self, key: str) -> Station:
        buffer = GroupBuffer(key, len(self.engine.model.component_order), self.capacity, self.fs)
        n_classes = len(self.labels)
        scheduler = WindowScheduler(self.in_samples, self.step, self.config.inference.block_end == "exact", name=key)
        scheduler.resume = self._resume.pop(key, None)
        station = Station(
            key=key,
            buffer=buffer,
            scheduler=scheduler,
            acc=np.zeros((n_classes, self.capacity), dtype=np.float64),
            cnt=np.zeros((n_classes, self.capacity), dtype=np.int32),
            pickers={i: TriggerPicker(self.thresholds[label]) for i, label in enumerate(self.labels) if label in self.thresholds},
        )
        buffer.owner = station  # type: ignore[attr-defined]
        self.stations[key] = station
        return station

    # ------------------------------------------------------------- scheduling
    def _advance(self, station: Station, final: bool) -> None:
        buf = station.buffer
        seen = [f for f in buf.filled_to if f is not None]
        if not seen:
            return
        ready = max(seen) if final else buf.ready_to(self.wait_samples)
        scanned = station.scheduler.scanned_to
        if not final and scanned is not None and ready is not None and ready <= scanned:
            return  # a leading component moved; nothing new is complete for the station yet
        due = station.scheduler.advance(buf, ready)
        if final:
            due += station.scheduler.finish()
        now = time.monotonic()
        for block, start in due:
            self.queue.append(Window(station, block, start, now))
        self._finalize(station)

    def _run_batch(self) -> None:
        """Run up to one batch of queued windows and stack them.

        If gathering or inference raises, the batch's windows are dropped (counted in
        ``stats.windows_failed``, logged): their samples are stacked from the other
        windows covering them, or stay empty (no pick there), and streaming goes on.
        """
        n = min(len(self.queue), self.config.inference.batch_size)
        windows = [self.queue.popleft() for _ in range(n)]
        batch = self._batch[:n]
        valid: set[int] = set()
        preds = None
        try:
            for i, win in enumerate(windows):
                buf = win.group.buffer
                if self._frontier(win.group) - win.start > buf.capacity:
                    self.stats.windows_dropped += 1
                    self._log_once(win.group.key, "overrun", "buffer overrun: window data overwritten before inference (raise stream.buffer_seconds or lower the load)")
                    continue
                self.engine.gather(buf.data, buf.have, np.array([win.start], dtype=np.int64), batch[i:i + 1])
                valid.add(i)
            t0 = time.perf_counter()
            preds = self.engine.predict(batch)
            seconds = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - a failed batch must not stop the pipeline
            self.stats.windows_failed += n
            log.warning("inference of a batch of %d windows failed, windows dropped (counted): %r", n, exc, exc_info=("*", "batch") not in self._logged)
            self._logged.add(("*", "batch"))
        else:
            self.stats.batches += 1
            self.stats.windows += n
            self.stats.inference_seconds += seconds
            if self.observer is not None:
                self.observer.on_batch(n, seconds)
        touched: dict[int, Station] = {}
        for i, win in enumerate(windows):
            station: Station = win.group  # type: ignore[assignment]
            block = win.block
            block.pending.popleft()
            if preds is not None and i in valid:
                skip = max(0, block.stack_floor - win.start)
                dsp.stack_window(station.acc, station.cnt, win.start + skip, preds[i, skip:], self.use_max)
            touched[id(station)] = station
        for station in touched.values():
            self._finalize(station)

    # ---------------------------------------------------------------- picking
    def _finalize(self, station: Station) -> None:
        """Pick the station's newly final samples; an error restarts only this station (counted)."""
        try:
            self._pick_final(station)
        except Exception as exc:  # noqa: BLE001 - one station must not stop the others
            self._station_failed(station, exc)

    def _pick_final(self, station: Station) -> None:
        sched = station.scheduler
        while sched.blocks:
            block = sched.blocks[0]
            final_to = sched.final_to(block)
            if final_to > block.picked_to:
                values = np.empty((len(self.labels), final_to - block.picked_to), dtype=np.float64)
                dsp.take_stacked(station.acc, station.cnt, block.picked_to, final_to, self.use_max, values)
                if self.on_stacked is not None:
                    self.on_stacked(station.key, block.picked_to, values)
                for k, picker in station.pickers.items():
                    skip = 0
                    if block.pick_from is not None:  # resumed block: this phase was picked up to here
                        skip = min(max(0, block.pick_from.get(self.labels[k], 0) - block.picked_to), values.shape[1])
                    for trig in picker.scan(values[k, skip:], block.picked_to + skip):
                        self._emit(station, block, k, trig)
                block.picked_to = final_to
            if not block.done:
                break
            for k, picker in station.pickers.items():
                for trig in picker.close():
                    self._emit(station, block, k, trig)
            sched.blocks.popleft()
        while len(station.arrivals) > 1 and station.arrivals[1][0] <= (sched.blocks[0].picked_to if sched.blocks else station.arrivals[-1][0]):
            station.arrivals.popleft()

    def index_to_ns(self, index: int, offset_ns: float = 0.0) -> int:
        """Absolute grid index (plus sub-sample offset) to integer nanoseconds."""
        return grid_ns(index, self.fs) + int(round(offset_ns))

    def _emit(self, station: Station, block: Block, cls: int, trig) -> None:
        offset = station.buffer.offset_ns(block.start, trig.peak)
        # windows covering the peak: regular ones on the block's grid, or the end-aligned one
        rel = trig.peak - block.grid
        first = block.grid + max(0, -(-(rel - self.in_samples + 1) // self.step)) * self.step
        last = min(block.grid + rel // self.step * self.step, (block.end or trig.peak + 1) - self.in_samples)
        last = max(last, first)
        pick = Pick(
            stream_id=station.pick_id,
            phase=self.labels[cls],
            time_ns=self.index_to_ns(trig.peak, offset),
            probability=trig.peak_value,
            uncertainty_s=trig.spread_samples / self.fs,
            trigger_on_ns=self.index_to_ns(trig.start, offset),
            trigger_off_ns=self.index_to_ns(trig.end, offset),
            model_id=self.loaded.model_id,
            model_version=self.loaded.version,
            window_ns=(
                self.index_to_ns(first, offset),
                self.index_to_ns(last + self.in_samples - 1, offset),
            ),
        )
        self.stats.picks += 1
        self._out.append(pick)
        if self.observer is not None:
            arrival = next((t for idx, t in station.arrivals if idx > trig.end), time.time())
            self.observer.on_pick(pick, time.time() - arrival)

    def _take(self) -> list[Pick]:
        out, self._out = self._out, []
        return out

    # ---------------------------------------------------------------- errors
    def _reject(self, stream_id: str, cause: str, detail: str) -> None:
        self.stats.rejected[cause] = self.stats.rejected.get(cause, 0) + 1
        if self.observer is not None:
            self.observer.on_rejected(stream_id, cause)
        self._log_once(stream_id, cause, f"record rejected: {detail}")

    def _record_failed(self, feed: ChannelFeed, exc: Exception) -> None:
        """A record raised: reject it (``processing_error``), restart the channel's segment, quarantine if it keeps failing."""
        feed.drop_segment()
        feed.failures += 1
        self._reject(feed.stream_id, "processing_error", f"processing failed: {exc!r}")
        if feed.failures >= self.config.stream.quarantine_after:
            feed.failures = 0
            feed.quarantined_until = time.monotonic() + self.config.stream.quarantine_s
            log.warning("%s: quarantined for %.0f s after %d consecutive processing errors (last: %r)", feed.stream_id, self.config.stream.quarantine_s, self.config.stream.quarantine_after, exc)

    def _station_failed(self, station: Station, exc: Exception) -> None:
        """Scheduling or picking of a station raised: restart it empty; the others go on."""
        self.stats.station_errors += 1
        log.warning("%s: station restarted after an error in scheduling or picking (counted): %r", station.key, exc, exc_info=(station.key, "station_error") not in self._logged)
        self._logged.add((station.key, "station_error"))
        self._reset_station(station)

    def _irregular(self, stream_id: str, cause: str) -> None:
        if self.observer is not None:
            if cause == "gap":
                self.observer.on_gap(stream_id)
            elif cause in ("overlap", "duplicate"):
                self.observer.on_overlap(stream_id)
        self._log_once(stream_id, cause, {
            "gap": "gap in the data: the station's block ends here if all components stop (counted)",
            "overlap": "overlapping data: samples already received were dropped (counted)",
            "duplicate": "duplicate record dropped (counted)",
            "rate_change": "sampling rate changed: new segment started (counted)",
        }.get(cause, cause))

    def _log_once(self, stream_id: str, cause: str, message: str) -> None:
        if (stream_id, cause) in self._logged:
            return
        self._logged.add((stream_id, cause))
        log.warning("%s: %s (further %s events for this stream are only counted)", stream_id, message, cause)
