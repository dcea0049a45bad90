"""Records in, picks out: the streaming spine of rtpick.

:class:`Pipeline` routes each :class:`~rtpick.types.Record` to its channel's
continuity tracker and its station's ring buffer; each station belongs to the
model *lane* (:class:`~rtpick.inference.lane.Lane`) of its region
(:class:`~rtpick.inference.regions.RegionRouter`). A lane schedules the windows that
are due, runs them through its own model in batches, stacks the predictions exactly
as SeisBench's ``annotate`` and turns final samples into picks as ``classify`` does.
Without ``[[regions]]`` there is one lane, ``default``, built from ``[inference]``.
The pipeline is single-threaded (only a lane's model forward may run on its engine's
worker thread, ``inference.forward_worker``: see :class:`~rtpick.inference.lane.Lane`)
and does not know where records come from (replay or SeedLink); the daemon drives it
from one thread.

Contract: for the same data and model, each station's stacked probabilities equal
SeisBench ``annotate`` of its lane's model (same overlap/stacking/blinding) within
1e-4 and the picks equal ``classify`` (tests/test_oracle.py, tests/test_lanes.py).

Scheduling across lanes: a lane runs a batch as soon as it has a full one (only the
lane of the station just fed can have become full), or when one of its stations is
at risk of overwriting a pending window; ``poll`` (after ``max_wait_s``), ``drain``
and ``flush`` serve the lanes round-robin, one batch each in turn, so a large lane
cannot starve a small one.

Fault isolation (no input may stop other stations): a record that cannot be
processed is rejected with its cause (``unsupported_sampling_rate``, ``late``,
``processing_error``, ``no_region`` for a station no region takes, ...); a channel whose records keep failing is quarantined
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
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from rtpick.config import Config
from rtpick.inference.lane import Lane, Station
from rtpick.inference.models import LoadedModel
from rtpick.inference.regions import LanePlan, LaneSpec, RegionRouter, build_lane_specs, plan_lanes
from rtpick.picking.early import OpenPick
from rtpick.stream import dsp
from rtpick.stream.buffers import ChannelFeed
from rtpick.stream.windows import Resume
from rtpick.types import NS_PER_S, Pick, Record

log = logging.getLogger(__name__)

# a channel's staged records are written at the latest after this many (a bound for odd record sizes)
MAX_STAGED_RECORDS = 256
# records per feed_many call of a caller with a backlog at hand (the daemon's queue, a replay as fast as possible)
FEED_CHUNK = 256


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
    """Counters of the whole pipeline (all lanes); per-channel counters live on each feed, per-lane inference on each lane."""

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


class Pipeline:
    """The streaming picker: ``feed`` records, ``poll`` in real time, ``flush`` at end of data, ``drain`` at shutdown.

    Lanes come from ``plan`` (:func:`~rtpick.inference.regions.plan_lanes`: one per
    region, with model-derived defaults); else, given ``model``, one ``default`` lane
    of that model with the settings of ``config``; else the plan of ``config`` is
    built here (loads the models; :class:`~rtpick.inference.regions.RegionError` on
    a configuration problem).
    """

    def __init__(self, config: Config, model: LoadedModel | None = None, observer: PipelineObserver | None = None,
                 *, plan: LanePlan | None = None):
        self.config = config
        self.observer = observer
        self.stats = PipelineStats()
        self.feeds: dict[str, ChannelFeed] = {}
        self.stations: dict[str, Station] = {}  # all lanes' stations by key
        self._out: list[Pick] = []
        # optional tap on final stacked probabilities: (station key, first index, values (classes, n))
        # used by the equivalence tests and by `rtpick plot`
        self.on_stacked: Callable[[str, int, np.ndarray], None] | None = None
        self._logged: set[tuple[str, str]] = set()
        self._ignored: set[str] = set()
        self._resume: dict[str, tuple[Resume, float]] = {}  # station key -> (resume point, its sampling rate)
        self._early_open: dict[str, tuple[list[OpenPick], float]] = {}  # station key -> (open preliminaries, rate)
        self._staged: dict[str, Station] = {}  # stations with staged records (see feed)
        if plan is None and model is None:
            plan = plan_lanes(config)
        if plan is not None:
            lanes = [(spec, plan.model_of(spec)) for spec in plan.specs]
            self.router = plan.router
        else:
            specs = build_lane_specs(config, {(config.inference.model, config.inference.device): model})
            lanes = [(spec, model) for spec in specs]
            self.router = RegionRouter.from_config(config)
        self.lanes: dict[str, Lane] = {spec.region: Lane(spec, loaded, self) for spec, loaded in lanes}

    # ------------------------------------------------- the first lane (single-model tools)
    @property
    def _first(self) -> Lane:
        return next(iter(self.lanes.values()))

    @property
    def loaded(self) -> LoadedModel:
        """The first lane's model (the only one without ``[[regions]]``)."""
        return self._first.loaded

    @property
    def fs(self) -> float:
        """The first lane's model sampling rate."""
        return self._first.fs

    @property
    def labels(self) -> list[str]:
        """The first lane's model labels."""
        return self._first.labels

    @property
    def thresholds(self) -> dict[str, float]:
        """The first lane's thresholds in force (mutable: a SIGHUP reload changes them in place)."""
        return self._first.thresholds

    @property
    def queued(self) -> int:
        """Windows waiting for a batch, all lanes."""
        return sum(len(lane.queue) for lane in self.lanes.values())

    # ------------------------------------------------------------------ input
    def feed(self, record: Record) -> list[Pick]:
        """Ingest one record, run the full batches of its lane, return the picks made so far (see :meth:`feed_many`)."""
        return self.feed_many((record,))

    def feed_many(self, records: Sequence[Record]) -> list[Pick]:
        """Ingest records in order, as :meth:`feed` of each; return the picks made so far.

        A record that continues its channel exactly is *staged* (accepted, written
        later): a station's staged records are written and scanned together once
        its slowest component completes its next windows, as many as its lane queues
        at once (``Lane.stage_extra``), or when ``poll``, ``drain``, ``flush`` or an
        irregular record of the station comes first.
        Windows, stacked values and picks are the same as writing each record at
        once; picks may come out a few records later within a burst, never later
        than the next ``poll`` (the daemon polls whenever its input queue is empty),
        except that what a write within a burst made final before the windows it
        queued is picked with those windows, when their batch runs (see
        :meth:`_write_staged`: a backlog, where latency is moot).
        A station's newest data time and arrival (``last_data_ns``, ``last_arrival``:
        its lag and age on the metrics) move when its staged records are written.

        Exactly: same rate as the open segment and no resampling (``stage_rate``),
        starting within half a sample of where the segment ends (as
        :meth:`ChannelFeed.push` tells gaps and overlaps), with samples the pipeline
        would accept (one-dimensional, integer or finite float, not empty). Any
        other record takes the full path (:meth:`_feed_one`), which checks, counts
        and writes it at once. The staging below is the hot loop of a catching-up
        or replaying daemon: it runs once per record, so every check and update is
        written out here (no call, no dict per record) and the counters are summed
        once per call; it moves a feed's segment bookkeeping as ``ChannelFeed.push``
        would, and only the ring write waits (:meth:`ChannelFeed.commit_all`).

        Never raises for bad input: whatever goes wrong with a record is counted
        by cause and logged, and the other channels go on.
        """
        feeds = self.feeds
        observer = self.observer
        now = time.time()
        last = records[-1] if records else None  # a write before it is made while records keep coming (see _write_staged)
        staged_records = staged_samples = 0
        try:
            for record in records:
                feed = feeds.get(record.stream_id)
                if feed is not None and record.sampling_rate == feed.stage_rate:  # stage_rate: NaN where it cannot be staged
                    samples = record.samples
                    half = feed.half_ns
                    if -half <= record.start_ns - feed.expected_ns <= half and samples.ndim == 1 and (n := len(samples)):
                        kind = samples.dtype.kind
                        if kind in "iu" or kind == "f" and np.isfinite(samples).all():
                            n_in = feed.seg_n_in = feed.seg_n_in + n
                            step = feed.ns_step  # as ChannelFeed._extend
                            end_ns = feed.expected_ns = feed.seg_start_ns + (n_in * step if step else round(n_in * NS_PER_S / feed.sampling_rate))
                            staged = feed.staged
                            staged.append(samples)
                            feed.staged_arrival = now
                            staged_records += 1
                            staged_samples += n
                            if observer is not None:
                                observer.on_record(record.stream_id, n, now - end_ns / NS_PER_S)
                            station: Station = feed.group.owner  # type: ignore[attr-defined]
                            if len(staged) == 1:  # (a station is listed while any of its channels holds staged records)
                                self._staged[station.key] = station
                            # (feed.staged_to, written out)
                            if (feed.seg_base + n_in >= station.write_at and self._staged_due(station)) or len(staged) >= MAX_STAGED_RECORDS:
                                self._write_staged(station, burst=record is not last)
                                self._run_full(station.lane)
                            continue
                self._feed_one(record, feed, now)
        finally:
            self.stats.records += staged_records
            self.stats.samples += staged_samples
        return self._take()

    def _feed_one(self, record: Record, feed: ChannelFeed | None, now: float) -> None:
        """The full path of one record (a new channel, a gap, an overlap, a rate change, bad samples, ...): checked, counted, written at once."""
        feed = feed or self._new_feed(record)
        if feed is None or not self._valid(record, feed):
            return
        station: Station = feed.group.owner  # type: ignore[attr-defined]
        if self.observer is not None:
            self.observer.on_record(record.stream_id, len(record.samples), now - record.end_ns / NS_PER_S)
        self._write_staged(station)  # the station's staged records go first
        try:
            self._ingest(feed, record, now)
        except Exception as exc:  # noqa: BLE001 - one record must never stop the pipeline
            self._record_failed(feed, exc)
        else:
            feed.failures = 0
        self._run_full(station.lane)

    @staticmethod
    def _run_full(lane: Lane) -> None:
        """Run the lane's full batches (only the lane of the station just written can have become full)."""
        while lane.batch_due():
            lane.run_batch()

    @staticmethod
    def _staged_due(station: Station) -> bool:
        """Has the station's staged data reached its write point (``write_at``: slowest live component there, or the lead past the component wait)?"""
        filled = station.buffer.filled_to
        write_at = station.write_at
        lead_at = write_at + station.lane.wait_samples
        behind = False
        for f in station.feeds:  # (runs a few times per write: a loop, not lists and min/max)
            end = f.staged_to if f.staged else filled[f.component] or 0
            if end >= lead_at:
                return True
            behind = behind or end < write_at
        return not behind

    def _write_staged(self, station: Station, burst: bool = False) -> None:
        """Write the station's staged records (one ring write for all its channels), then schedule and pick as for each record.

        ``burst``: written while records keep coming (``feed_many``'s write point before
        the last record of the call: a backlog; in real time the daemon feeds one record
        at a time): samples that became final before the windows this write queues are
        picked with those windows after their stacking, not at once (the same picks,
        one picking call fewer per write of a backlog).
        """
        if self._staged.pop(station.key, None) is None:
            return
        lane = station.lane
        frontier = station.buffer.lead
        if frontier is not None:
            frontier = max([feed.staged_to for feed in station.feeds if feed.staged] + [frontier])
            while lane.at_risk(station, frontier):
                lane.run_batch()
        staged = [feed for feed in station.feeds if feed.staged]  # (a batch above may have restarted the station)
        for feed in staged:  # the newest record's end and arrival (feed_many moves them here, not per record)
            if feed.expected_ns > station.last_data_ns:
                station.last_data_ns = feed.expected_ns
            if feed.staged_arrival > station.last_arrival:
                station.last_arrival = feed.staged_arrival
        try:
            ChannelFeed.commit_all(staged)
        except Exception as exc:  # noqa: BLE001 - the write of the station's channels failed: they restart (counted), the rest goes on
            for feed in staged:
                self._record_failed(feed, exc)
            staged = []
        filled = station.buffer.filled_to
        for feed in staged:
            feed.failures = 0
            if filled[feed.component] is not None:
                station.arrivals.append((filled[feed.component], feed.staged_arrival))
        try:
            self._advance(station, defer_picking=burst)
        except Exception as exc:  # noqa: BLE001 - one station must never stop the others
            self.station_failed(station, exc)

    def _write_all_staged(self) -> None:
        for station in list(self._staged.values()):
            self._write_staged(station)

    def _advance(self, station: Station, defer_picking: bool = False) -> None:
        """Queue the station's due windows, pick what became final, run batches its ring needs; note where its next window ends."""
        lane = station.lane
        try:
            lane.advance(station, final=False, defer_picking=defer_picking)
            while lane.at_risk(station):
                lane.run_batch()
        finally:
            end = station.scheduler.next_window_end()
            station.write_at = end + lane.stage_extra if end else 0

    def _ingest(self, feed: ChannelFeed, record: Record, now: float) -> None:
        station: Station = feed.group.owner  # type: ignore[attr-defined]
        lane = station.lane
        frontier = station.frontier()
        if frontier is not None:
            start = round(record.start_ns * lane.fs / NS_PER_S)
            end = round(record.end_ns * lane.fs / NS_PER_S)
            if end <= frontier - lane.capacity:
                self._reject(record.stream_id, "late", f"data {(frontier - end) / lane.fs:.0f} s older than the station's newest (beyond the buffer)")
                return
            if start - frontier > lane.jump_samples:
                self._time_jump(station, record.stream_id, (start - frontier) / lane.fs)
            else:
                while lane.at_risk(station, end):
                    lane.run_batch()
        for cause in feed.push(record):
            self._irregular(record.stream_id, cause)
        self.stats.records += 1
        self.stats.samples += len(record.samples)
        station.last_data_ns = max(station.last_data_ns, record.end_ns)
        station.last_arrival = now
        filled = feed.group.filled_to[feed.component]
        if filled is not None:
            station.arrivals.append((filled, now))
        self._advance(station)

    def _time_jump(self, station: Station, stream_id: str, seconds: float) -> None:
        """Close the station's data where it ended (exact picks, as at a gap), then restart it empty."""
        lane = station.lane
        self.stats.time_jumps += 1
        self.log_once(stream_id, "time_jump", f"data jumps {seconds:.0f} s ahead of the station's newest: block closed, station restarted at the new time (counted)")
        for feed in station.feeds:
            feed.end_segment()
        lane.advance(station, final=True)
        self._serve([lane])
        lane.reset_station(station)

    def poll(self, now: float | None = None) -> list[Pick]:
        """Run a lane's partial batches once its oldest window waited ``max_wait_s`` (real-time mode)."""
        self._write_all_staged()
        now = time.monotonic() if now is None else now
        tips = [lane for lane in self.lanes.values() if lane.queue_tips(now)]  # a round of tip windows runs at once
        wait = self.config.inference.max_wait_s
        self._serve([lane for lane in self.lanes.values() if lane.queue and (lane in tips or now - lane.queue[0].queued_at >= wait)], wait=False)
        for lane in self.lanes.values():  # and every lane's forward that finished meanwhile (forward worker)
            lane.settle(wait=False)
        return self._take()

    def flush(self) -> list[Pick]:
        """End of data (replay end, dial-up END): close every segment and block, emit all picks.

        Blocks end at the data edge with SeisBench's end-aligned window, exactly as
        ``annotate`` on the whole data. Not for shutdown while data goes on: see :meth:`drain`.
        """
        self._write_all_staged()
        for feed in self.feeds.values():
            try:
                feed.end_segment()
            except Exception as exc:  # noqa: BLE001 - one channel must not stop the others
                self._record_failed(feed, exc)
        for station in self.stations.values():
            try:
                station.lane.advance(station, final=True)
            except Exception as exc:  # noqa: BLE001
                self.station_failed(station, exc)
        self._serve(list(self.lanes.values()))
        for station in self.stations.values():
            station.lane.finalize(station)
        self.stats.short_blocks = sum(s.scheduler.short_blocks for s in self.stations.values())
        return self._take()

    def drain(self) -> list[Pick]:
        """Shutdown while data goes on: run every queued window, return only picks final by streaming rules.

        No block or trigger is closed at the data frontier, so nothing truncated is
        published; what is held back is rebuilt after a restart from the re-fed
        context (see :meth:`resume_points`).
        """
        self._write_all_staged()
        self._serve(list(self.lanes.values()))
        return self._take()

    def _serve(self, lanes: list[Lane], wait: bool = True) -> None:
        """Run the lanes' queued windows round-robin, one batch per lane in turn, until all are empty;
        then settle their batches in flight (forward worker), or with ``wait`` False those already done."""
        pending = [lane for lane in lanes if lane.queue]
        while pending:
            for lane in pending:
                lane.run_batch()
            pending = [lane for lane in pending if lane.queue]
        for lane in lanes:
            lane.settle(wait)

    # --------------------------------------------------------------- hot swap
    def swap_model(self, region: str, loaded: LoadedModel, spec: LaneSpec) -> None:
        """Switch ``region``'s lane to ``loaded``/``spec`` (pipeline thread, between batches).

        The next batch uses the new model; windows already queued are computed once,
        by it. ValueError naming the region when there is no such lane or the model
        does not fit its stations (:meth:`Lane.swap`); the old model then keeps running.
        """
        lane = self.lanes.get(region)
        if lane is None:
            raise ValueError(f"region {region!r}: no such lane (lanes: {', '.join(self.lanes)})")
        lane.swap(loaded, spec)

    # ----------------------------------------------------------------- resume
    def resume_points(self) -> dict[str, dict]:
        """Per station key, where a restarted pipeline must resume to publish exactly the same picks.

        ``anchor``: an absolute index of the window grid of the oldest unfinished
        block (window starts are anchor + k*step); ``picked_to``: the lowest index a
        pick not yet emitted can start at (the start of a trigger still open, else
        how far picking got); ``pick_from``: that per phase; ``sampling_rate``: the
        rate of the station's lane model the indices are counted in. JSON-serialisable.
        Nothing is run or written here, since that could make picks the caller has not
        seen (the daemon saves these points with the picks it has already published):
        records still staged (see :meth:`feed`) lie within the context a restart
        re-feeds, and windows queued or in flight on a forward worker are still pending
        in their blocks, so the point lies before them and a restart recomputes them.
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
            labels = station.lane.labels
            pick_from = {}
            for k, picker in station.pickers.items():
                since = picker.open_since
                pick_from[labels[k]] = picked_to if since is None else min(since, picked_to)
            points[key] = {
                "anchor": int(anchor),
                "picked_to": int(min(pick_from.values(), default=picked_to)),
                "pick_from": pick_from,
                "sampling_rate": station.lane.fs,
            }
            if station.early is not None and station.early.open:  # preliminaries the restart must close
                points[key]["early"] = [o.to_json() for o in station.early.open]
        return points

    def restore(self, points: dict[str, dict]) -> None:
        """Before feeding: align each station's first block to the saved window grid and picking position.

        Applies to a station whose first block starts at least one window before its
        ``picked_to`` (else that station starts as usual, logged); a point saved at
        another sampling rate than the station's lane model now runs at is ignored
        (logged, when the station appears). Picks below ``picked_to`` were handled
        before the restart and are not made again. Preliminary picks still open in a
        point (``early``) are handed back to their station, whatever ``early.enabled``
        is now, so each is still finalised or retracted exactly once.
        """
        for key, point in points.items():
            try:
                opened = [OpenPick.from_json(o) for o in point.get("early", [])]
                rate = float(point["sampling_rate"])
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("%s: open preliminary picks %r ignored: %s", key, point.get("early"), exc)
            else:
                station = self.stations.get(key)
                if opened and station is not None:
                    station.lane.reopen(station, opened, same_grid=rate == station.lane.fs)
                elif opened:
                    self._early_open[key] = (opened, rate)
            try:
                rate = float(point["sampling_rate"])
                picked_to = int(point["picked_to"])
                pick_from = {str(k): int(v) for k, v in point.get("pick_from", {}).items()}
                resume = Resume(anchor=int(point["anchor"]), picked_to=picked_to, pick_from=pick_from)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("%s: resume point %r ignored: %s", key, point, exc)
                continue
            station = self.stations.get(key)
            if station is not None:
                station.scheduler.resume = self._resume_at(key, resume, rate, station.lane)
            else:
                self._resume[key] = (resume, rate)

    @staticmethod
    def _resume_at(key: str, resume: Resume, rate: float, lane: Lane) -> Resume | None:
        """``resume`` if it was saved at the lane's model rate, else None (logged)."""
        if rate != lane.fs:
            log.warning("%s: resume point at %s Hz ignored: the model of region %r runs at %s Hz", key, rate, lane.region, lane.fs)
            return None
        return resume

    # ----------------------------------------------------------------- checks
    def _valid(self, record: Record, feed: ChannelFeed) -> bool:
        if feed.quarantined_until:
            if time.monotonic() < feed.quarantined_until:
                self._reject(record.stream_id, "quarantined", "channel quarantined after repeated processing errors")
                return False
            feed.quarantined_until = 0.0  # over: the channel's records may be staged again
        rate = record.sampling_rate
        if not (rate == feed.sampling_rate and rate > 0):  # a segment's rate was checked at its start
            fs = feed.group.owner.lane.fs  # type: ignore[attr-defined]
            if rate != fs:
                try:
                    dsp.resample_ratio(float(rate), fs)
                except (TypeError, ValueError) as exc:
                    self._reject(record.stream_id, "unsupported_sampling_rate", f"unsupported sampling rate: {exc}")
                    return False
        samples = record.samples
        kind = samples.dtype.kind
        if samples.ndim != 1 or kind not in "iuf":
            self._reject(record.stream_id, "bad_samples", f"samples of dtype {samples.dtype} shape {samples.shape}")
            return False
        if kind == "f" and not np.isfinite(samples).all():
            self._reject(record.stream_id, "non_finite", "NaN or infinite samples")
            return False
        return len(samples) > 0

    def _new_feed(self, record: Record) -> ChannelFeed | None:
        """The channel's feed in the station of its lane; None (rejected once, counted) if it is not picked."""
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
        key = f"{net}.{sta}.{loc}.{family}"
        station = self.stations.get(key)
        if station is None:
            region = self.router.route(key)
            lane = self.lanes.get(region) if region is not None else None
            if lane is None:
                self._ignored.add(sid)
                self._reject(key, "no_region", "matches no region (add a 'default' region to pick it)")
                return None
        else:
            lane = station.lane
        if not any(fnmatch.fnmatchcase(family, pattern) for pattern in lane.spec.channels):
            self._ignored.add(sid)
            where = "stream.channels" if len(self.lanes) == 1 and lane.region == "default" else f"the channels of region {lane.region!r}"
            self._reject(sid, "channel_not_selected", f"channel family {family} not in {where}")
            return None
        comp = lane.components.get(cha[2])
        if comp is None:
            self._ignored.add(sid)
            self._reject(sid, "unknown_component", f"component code {cha[2]!r} is not one of {sorted(lane.components)}")
            return None
        station = station or self._new_station(key, lane)
        if cha[2] == "Z" or not station.pick_id:
            station.pick_id = sid
        feed = ChannelFeed(stream_id=sid, group=station.buffer, component=comp, resample_response=self.config.stream.resample_response)
        station.feeds.append(feed)
        self.feeds[sid] = feed
        return feed

    def _new_station(self, key: str, lane: Lane) -> Station:
        station = lane.new_station(key)
        saved = self._resume.pop(key, None)
        if saved is not None:
            station.scheduler.resume = self._resume_at(key, *saved, lane)
        opened, rate = self._early_open.pop(key, ([], lane.fs))
        if opened:
            lane.reopen(station, opened, same_grid=rate == lane.fs)
        self.stations[key] = station
        return station

    # ---------------------------------------------------------------- picks
    def emit(self, pick: Pick, station: Station, trigger_end: int) -> None:
        """A lane's pick (final, preliminary or retraction): count finals, queue it for the caller, report its latency."""
        if pick.status == "final":
            self.stats.picks += 1
        self._out.append(pick)
        if self.observer is not None:
            arrival = next((t for idx, t in station.arrivals if idx > trigger_end), time.time())
            self.observer.on_pick(pick, time.time() - arrival)

    def _take(self) -> list[Pick]:
        out = self._out
        if not out:
            return []  # (a new list: callers may keep or extend what they get)
        self._out = []
        return out

    # ---------------------------------------------------------------- errors
    def _reject(self, stream_id: str, cause: str, detail: str) -> None:
        self.stats.rejected[cause] = self.stats.rejected.get(cause, 0) + 1
        if self.observer is not None:
            self.observer.on_rejected(stream_id, cause)
        self.log_once(stream_id, cause, f"record rejected: {detail}")

    def _record_failed(self, feed: ChannelFeed, exc: Exception) -> None:
        """A record raised: reject it (``processing_error``), restart the channel's segment, quarantine if it keeps failing."""
        feed.drop_segment()
        feed.failures += 1
        self._reject(feed.stream_id, "processing_error", f"processing failed: {exc!r}")
        if feed.failures >= self.config.stream.quarantine_after:
            feed.failures = 0
            feed.quarantined_until = time.monotonic() + self.config.stream.quarantine_s
            log.warning("%s: quarantined for %.0f s after %d consecutive processing errors (last: %r)", feed.stream_id, self.config.stream.quarantine_s, self.config.stream.quarantine_after, exc)

    def station_failed(self, station: Station, exc: Exception) -> None:
        """Scheduling or picking of a station raised: restart it empty; the others go on."""
        self.stats.station_errors += 1
        log.warning("%s: station restarted after an error in scheduling or picking (counted): %r", station.key, exc, exc_info=(station.key, "station_error") not in self._logged)
        self._logged.add((station.key, "station_error"))
        station.lane.reset_station(station)

    def _irregular(self, stream_id: str, cause: str) -> None:
        if self.observer is not None:
            if cause == "gap":
                self.observer.on_gap(stream_id)
            elif cause in ("overlap", "duplicate"):
                self.observer.on_overlap(stream_id)
        self.log_once(stream_id, cause, {
            "gap": "gap in the data: the station's block ends here if all components stop (counted)",
            "overlap": "overlapping data: samples already received were dropped (counted)",
            "duplicate": "duplicate record dropped (counted)",
            "rate_change": "sampling rate changed: new segment started (counted)",
        }.get(cause, cause))

    def log_once(self, stream_id: str, cause: str, message: str) -> None:
        """Log a warning the first time ``cause`` happens on ``stream_id``; later ones are only counted."""
        if (stream_id, cause) in self._logged:
            return
        self._logged.add((stream_id, cause))
        log.warning("%s: %s (further %s events for this stream are only counted)", stream_id, message, cause)
