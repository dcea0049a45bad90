"""One region's model lane: its stations, window queue, batches, stacking and picking.

A :class:`Lane` holds everything that depends on the model: the loaded model and its
:class:`~rtpick.inference.engine.InferenceEngine`, the model's sampling rate, window
and step (in the model's own samples), labels, component map, thresholds,
stacking/blinding, the ring capacity, the window queue and the batch buffer. The
:class:`~rtpick.pipeline.Pipeline` routes records to stations, each station lives in
exactly one lane, and the pipeline runs the lanes; windows of different lanes never
share a batch (each lane forwards through its own model).

The lane's hot path is :meth:`Lane.run_batch`: gather (copy + normalise) of the
queued windows, one forward pass, stacking. Gathering and stacking are each called
in one place there, so they can be vectorised without touching the rest.

With the forward worker (``inference.forward_worker``; on for CUDA by default) the
forward runs on the engine's worker thread: ``run_batch`` gathers the next batch
into the other of two batch buffers while the batch in flight runs, then hands the
new one over and stacks the previous one. At most one batch is in flight per lane;
its windows stay in their block's ``pending`` until stacked, so finality, the
at-risk check and resume points treat them exactly like queued windows.
:meth:`Lane.settle` stacks the batch in flight wherever results are needed (the
pipeline's poll, flush, drain, time jumps; a hot swap).

Hot swap (:meth:`Lane.swap`) replaces the model between two batches: windows
already queued are computed once, by the new model; the stations, their buffers
and their window grid stay, so the new model must keep the lane's rate, window,
step, labels, components and stacking (checked, ``ValueError`` naming the region).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rtpick.inference.engine import InferenceEngine
from rtpick.inference.models import LoadedModel
from rtpick.inference.regions import LaneSpec
from rtpick.picking.early import EarlyBook, OpenPick, tip_triggers
from rtpick.picking.extract import PhasePickers, ScanScratch
from rtpick.stream import dsp
from rtpick.stream.buffers import ChannelFeed, GroupBuffer, RingPool, grid_ns
from rtpick.stream.windows import Block, Window, WindowScheduler
from rtpick.types import Pick

if TYPE_CHECKING:
    from rtpick.pipeline import Pipeline

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Station:
    """Everything kept for one station's channel family (e.g. OK.W35A..EH?), in its lane."""

    key: str
    lane: "Lane"
    buffer: GroupBuffer
    scheduler: WindowScheduler
    acc: np.ndarray  # stacked prediction sums (classes, capacity)
    cnt: np.ndarray  # windows stacked per sample (classes, capacity)
    pickers: PhasePickers  # class index -> picker
    feeds: list[ChannelFeed] = field(default_factory=list)  # the station's channels
    pick_id: str = ""  # NET.STA.LOC.CHA named on picks: the vertical channel when there is one
    arrivals: deque = field(default_factory=deque)  # (frontier index, wall time) of recent records
    last_data_ns: int = 0  # end time of the newest record
    last_arrival: float = 0.0  # wall time of the newest record
    early: EarlyBook | None = None  # open preliminary picks (early.enabled)
    tip_end: int = -1  # data end of the last tip window (no second one on the same data)
    final_arrival: float = 0.0  # arrival of the newest record behind the latest finality step (latency of final picks)
    slot: int = -1  # the station's slot in its lane's RingPool (ring and stacking sums)
    write_at: int = 0  # staged records are written once the slowest component reaches this index (its next window end + lane.stage_extra)

    def frontier(self) -> int | None:
        """Index one past the station's newest sample (None before its first record)."""
        return self.buffer.lead


@dataclass(eq=False)
class Flight:
    """One batch from its gather to its stacking: its windows with their batch rows, and its forward.

    ``rows`` pairs each window with its row in the batch (and in ``future``'s
    predictions); ``gathered`` holds the rows whose data was copied (the others were
    overwritten in the ring: dropped, counted). ``future`` gives (predictions, forward
    seconds), or the exception of the gather or the forward.
    """

    size: int  # windows taken from the queue (counted as run or failed)
    rows: list[tuple[int, Window]]
    gathered: set[int]
    wall0: float  # wall and monotonic time the batch was formed (stage latencies)
    mono0: float
    future: Future = field(default_factory=Future)

    def forget(self, station: Station) -> None:
        """Leave out the station's windows: it restarts, their block and sums are gone."""
        self.rows = [(i, win) for i, win in self.rows if win.group is not station]


def _pick_fields(pick: Pick) -> dict:
    """A pick's fields as a JSON-friendly dict (rebuilt with ``Pick(**fields)``; resume points)."""
    return {name: getattr(pick, name) for name in Pick.__slots__ if name not in ("extra",)} | {"extra": dict(pick.extra)}


def component_map(order: str) -> dict[str, int]:
    """Component letter -> model input channel; Z12 accepted as ZNE (SeisBench's flexible components)."""
    mapping = {c: i for i, c in enumerate(order)}
    for a, b in (("1", "N"), ("2", "E")):
        if b in mapping:
            mapping[a] = mapping[b]
        elif a in mapping:
            mapping[b] = mapping[a]
    return mapping


class Lane:
    """One region's model and the stations it serves (see the module docstring).

    ``host`` is the pipeline: the lane counts into its ``stats``, reports to its
    ``observer``, taps its ``on_stacked`` and appends picks to its output.
    """

    def __init__(self, spec: LaneSpec, loaded: LoadedModel, host: "Pipeline"):
        self.host = host
        self.stations: dict[str, Station] = {}
        self.queue: deque[Window] = deque()
        # this lane's own share of the pipeline's inference (benchmarks, status)
        self.windows = 0
        self.batches = 0
        self.inference_seconds = 0.0
        self._batch_failed = False  # the first failure is logged with its traceback
        self._inflight: Flight | None = None  # the batch whose forward runs on the worker (forward_worker)
        self._install(spec, loaded)
        stream = host.config.stream
        self.capacity = spec.buffer_samples
        # every station's ring and stacking sums, so a batch is gathered and stacked in one call each
        self.pool = RingPool(len(spec.component_order), len(spec.labels), self.capacity)
        self.wait_samples = int(round(stream.component_wait_s * self.fs))
        # a forward jump larger than this restarts the station (see rtpick.pipeline)
        self.jump_samples = max(self.capacity // 2, self.wait_samples)
        # a station is at risk once its oldest pending window starts this far behind its data. Every write is
        # checked beforehand with the frontier it will reach (at_risk's ``frontier``), so one window of margin
        # is plenty (it absorbs a resampler's rounding); the shortest ring (two windows plus a step, e.g. a
        # 50 Hz PhaseNet with the default ring) still keeps one step of slack to fill batches
        self.risk_samples = self.capacity - self.in_samples
        # windows per write of a station's staged records (see stage_extra): as many as the ring holds without
        # the station being at risk, and as many as leave room for a second such write while the first waits
        # in the queue (6 and 3 for PhaseNet at a 10 s stride with the default ring, 1 and 1 with the shortest)
        self._per_write_alone = max(1, (self.risk_samples - self.in_samples + self.step) // self.step)
        self._per_write_queued = max(1, (self.risk_samples - self.in_samples + self.step) // (2 * self.step))
        early = host.config.early
        self.early_on = early.enabled
        self.tip_interval = early.interval_s
        self.min_context = int(round(early.min_context_s * self.fs))
        self.match_samples = max(1, int(round(early.match_s * self.fs)))
        self._tips_due = 0.0  # monotonic time of the next round of tip windows
        self._scratch = ScanScratch()  # final values and closed triggers of _pick_final, reused station after station

    def _install(self, spec: LaneSpec, loaded: LoadedModel) -> None:
        """Take ``spec``/``loaded`` as the lane's model, engine and identity."""
        net = loaded.model
        self.spec = spec
        self.loaded = loaded
        self.region = spec.region
        self.fs = spec.fs
        self.in_samples = spec.in_samples
        self.step = spec.step
        self.labels = list(spec.labels)
        self.components = component_map(spec.component_order)
        self.use_max = spec.stacking == "max"
        self.thresholds = dict(spec.thresholds)
        self.batch_size = spec.batch_size
        inf = self.host.config.inference
        cache_dir = Path(inf.backend_cache_dir).expanduser() if inf.backend_cache_dir else None
        self.engine = InferenceEngine(net, spec.model_argdict(net), inf.threads, spec.device, spec.backend, loaded.sha256, cache_dir, spec.region, spec.forward_worker)
        self._buffers = self.engine.host_batches(spec.batch_size)  # gathered into in turn
        self._turn = 0
        self._index = np.zeros((4, spec.batch_size), dtype=np.int64)  # a batch's slots, starts, skips, rows
        self._identity = {"region": spec.region, "model_sha256": loaded.sha256}

    # ------------------------------------------------------------------ stations
    def new_station(self, key: str) -> Station:
        """An empty station of this lane."""
        scheduler = WindowScheduler(self.in_samples, self.step, self.host.config.inference.block_end == "exact", name=key)
        station = Station(
            key=key,
            lane=self,
            buffer=GroupBuffer(key, len(self.spec.component_order), self.capacity, self.fs, pooled=True),
            scheduler=scheduler,
            acc=self.pool.acc[:0],  # placeholders: pool.add below points them (and the ring) at the station's slot
            cnt=self.pool.cnt[:0],
            pickers=PhasePickers({i: self.thresholds[label] for i, label in enumerate(self.labels) if label in self.thresholds}),
            early=EarlyBook(self.match_samples) if self.early_on else None,
        )
        station.buffer.owner = station  # type: ignore[attr-defined]
        station.slot = self.pool.add(station.buffer, station)
        self.stations[key] = station
        return station

    def reset_station(self, station: Station) -> None:
        """Forget the station's data, blocks and trigger state; its queued windows are dropped."""
        if any(w.group is station for w in self.queue):
            self.queue = deque(w for w in self.queue if w.group is not station)
        if self._inflight is not None:
            self._inflight.forget(station)
        for feed in station.feeds:
            feed.drop_segment()
        station.buffer.reset()
        station.scheduler.reset()
        station.acc[:] = 0.0
        station.cnt[:] = 0
        station.pickers.reset()
        if station.early is not None:
            for gone in station.early.clear():  # no final can come for them: the data restarts
                self._retract(station, gone)
        station.tip_end = -1
        station.write_at = 0
        station.arrivals.clear()
        station.last_data_ns = 0

    # ---------------------------------------------------------------- scheduling
    def advance(self, station: Station, final: bool, defer_picking: bool = False) -> None:
        """Queue the station's windows that are due (all of them when ``final``), pick what is final.

        ``defer_picking``: if windows were queued, what is final now is picked after their
        stacking instead (which picks everything final then, these samples included).
        """
        buf = station.buffer
        if buf.lead is None:
            return
        ready = buf.lead if final else buf.ready_to(self.wait_samples)
        scanned = station.scheduler.scanned_to
        if not final and scanned is not None and ready is not None and ready <= scanned:
            return  # a leading component moved; nothing new is complete for the station yet
        due = station.scheduler.advance(buf, ready)
        if final:
            due += station.scheduler.finish()
        if due:
            now = time.monotonic()
            self.queue.extend(Window(station, block, start, now, station.last_arrival) for block, start in due)
        station.final_arrival = station.last_arrival  # new data alone can make samples final (exact block end)
        if due and defer_picking:
            return
        blocks = station.scheduler.blocks
        if blocks and (blocks[0].done or station.scheduler.final_to(blocks[0]) > blocks[0].picked_to):
            self.finalize(station)  # (skipped while windows are pending: nothing new is final before they are stacked)

    @property
    def stage_extra(self) -> int:
        """How far past its next window end a station's staged records are written (``Pipeline.feed_many``): its write, scan and scheduling run once per that many windows.

        With enough stations that the other stations' writes fill two batches (one in
        flight on the forward worker, one forming) before a station writes again, each
        write takes as many windows as the ring holds without the station being at risk;
        with fewer, half as many, so that a station's previous write may still wait in the
        queue and full batches form before an at-risk batch is forced.
        """
        per_write = self._per_write_alone
        if (len(self.stations) - 1) * per_write < 2 * self.batch_size:
            per_write = self._per_write_queued
        return (per_write - 1) * self.step

    def at_risk(self, station: Station, frontier: int | None = None) -> bool:
        """Would waiting for a fuller batch let this station's buffer overwrite a pending window?

        ``frontier``: the station's data end after the record about to be written
        (default: now). Keeps memory bounded by the ring even when data arrives
        faster than batches fill (replay as fast as possible, backfill after an
        outage, a gap shorter than a restart).
        """
        blocks = station.scheduler.blocks
        if not blocks or not blocks[0].pending or not (self.queue or self._inflight):
            return False
        oldest = blocks[0].start + blocks[0].pending[0]
        if frontier is None:
            frontier = station.frontier()
        return frontier - oldest > self.risk_samples

    @property
    def in_flight(self) -> int:
        """Windows of the batch handed to the forward worker and not stacked yet (0 without one)."""
        return len(self._inflight.rows) if self._inflight is not None else 0

    def batch_due(self) -> bool:
        """A full batch is queued."""
        return len(self.queue) >= self.batch_size

    def run_batch(self) -> None:
        """Run up to one batch of this lane's queued windows; an empty queue only settles.

        Without the forward worker: gather, forward and stack here. With it: gather
        into the free batch buffer while the batch in flight runs on the worker, hand
        the new batch to the worker (it starts once the forward in flight ends), then
        stack the previous one, waiting for its forward; the new batch stays in flight
        until the next call or :meth:`settle`. So one batch is in flight between calls,
        and the buffer gathered into next belongs to a batch already stacked.

        If gathering or inference raises, the batch's windows are dropped (counted in
        ``stats.windows_failed``, logged): their samples are stacked from the other
        windows covering them, or stay empty (no pick there), and streaming goes on.
        """
        previous, self._inflight = self._inflight, (self._launch() if self.queue else None)
        if previous is not None:
            self._stack(previous)
        if not self.engine.worker:
            self.settle()

    def settle(self, wait: bool = True) -> None:
        """Stack (and pick) the batch in flight, if any; with ``wait`` False only once its forward is done.

        The pipeline calls this wherever it needs results; ``poll`` does not wait, so
        the daemon goes on reading records while the forward runs.
        """
        flight = self._inflight
        if flight is None or not (wait or flight.future.done()):
            return
        self._inflight = None
        self._stack(flight)

    def _launch(self) -> Flight:
        """Take up to one batch of windows off the queue, copy them into the next batch buffer, submit its forward.

        The one place windows leave the rings. A window whose data was overwritten is
        dropped (counted, logged); a gather that raises gives a flight whose future
        holds the exception.
        """
        host = self.host
        wall0, mono0 = time.time(), time.monotonic()
        n = min(len(self.queue), self.batch_size)
        windows = [self.queue.popleft() for _ in range(n)]
        batch = self._buffers[self._turn][:n]
        self._turn = (self._turn + 1) % len(self._buffers)
        flight = Flight(n, list(enumerate(windows)), set(), wall0, mono0)
        slots, starts, _, rows = self._index
        try:
            m = 0
            for i, win in enumerate(windows):
                if win.group.frontier() - win.start > self.capacity:
                    host.stats.windows_dropped += 1
                    host.log_once(win.group.key, "overrun", "buffer overrun: window data overwritten before inference (raise stream.buffer_seconds or lower the load)")
                    continue
                slots[m], starts[m], rows[m] = win.group.slot, win.start, i
                m += 1
                flight.gathered.add(i)
            self.engine.gather_batch(self.pool.data, slots[:m], starts[:m], rows[:m], batch)
        except Exception as exc:  # noqa: BLE001 - a failed batch must not stop the pipeline
            flight.future.set_exception(exc)
        else:
            flight.future = self.engine.submit(batch)
        return flight

    def _stack(self, flight: Flight) -> None:
        """Stack a batch whose forward is done (waits for it otherwise), then pick the stations it touched."""
        host, stats = self.host, self.host.stats
        n = flight.size
        preds, seconds = None, 0.0
        exc = flight.future.exception()  # waits for the forward
        if exc is not None:
            stats.windows_failed += n
            log.warning("region %s: inference of a batch of %d windows failed, windows dropped (counted): %r", self.region, n, exc,
                        exc_info=exc if not self._batch_failed else None)
            self._batch_failed = True
        else:
            preds, seconds = flight.future.result()
            stats.batches += 1
            stats.windows += n
            stats.inference_seconds += seconds
            self.batches += 1
            self.windows += n
            self.inference_seconds += seconds
            if host.observer is not None:
                host.observer.on_batch(n, seconds)
        t_stack = time.perf_counter()
        touched: dict[int, Station] = {}
        tips: list[tuple[Window, np.ndarray]] = []
        stacked: list[tuple[int, int, int, int]] = []  # (slot, start, skip, row) per window, into self._index at once
        gathered = flight.gathered if preds is not None else ()
        for i, win in flight.rows:  # stack: the one place predictions enter the sums (one call below)
            station: Station = win.group  # type: ignore[assignment]
            if win.tip:  # not stacked: its predictions go to the preliminary picker
                if i in gathered:
                    tips.append((win, preds[i]))
                continue
            if id(station) not in touched:
                touched[id(station)] = station
                station.final_arrival = win.arrived
            elif win.arrived > station.final_arrival:
                station.final_arrival = win.arrived
            block = win.block
            block.pending.popleft()
            if i in gathered:
                skip = block.stack_floor - win.start
                stacked.append((station.slot, win.start, skip if skip > 0 else 0, i))
        if stacked:
            m = len(stacked)
            index = self._index[:, :m]
            index.T[:] = stacked
            dsp.stack_batch(self.pool.acc, self.pool.cnt, index[0], index[1], index[2], index[3], preds, self.use_max)
        for station in touched.values():
            self.finalize(station)
        for win, pred in tips:
            self._score_tip(win, pred)
        self._observe_stages([win for _, win in flight.rows], flight.wall0, flight.mono0, seconds, time.perf_counter() - t_stack)

    # ---------------------------------------------------------------- picking
    def finalize(self, station: Station) -> None:
        """Pick the station's newly final samples; an error restarts only this station (counted)."""
        try:
            self._pick_final(station)
        except Exception as exc:  # noqa: BLE001 - one station must not stop the others
            self.host.station_failed(station, exc)

    def _pick_final(self, station: Station) -> None:
        """Take the station's newly final stacked values out of its sums, scan them, close finished blocks.

        The values are read and scanned in one numba call (``PhasePickers.take_scan``)
        into the lane's scratch buffers; only the ``on_stacked`` tap, which may keep
        what it is given, gets an array of its own.
        """
        sched = station.scheduler
        tap = self.host.on_stacked
        while sched.blocks:
            block = sched.blocks[0]
            final_to = sched.final_to(block)
            if final_to > block.picked_to:
                skips = None
                if block.pick_from is not None:  # resumed block: each phase was picked up to its own index
                    skips = {k: block.pick_from.get(self.labels[k], 0) - block.picked_to for k in station.pickers}
                values, triggers = station.pickers.take_scan(station.acc, station.cnt, block.picked_to, final_to, self.use_max,
                                                             self._scratch, skips, keep=tap is not None)
                if tap is not None:
                    tap(station.key, block.picked_to, values)
                for k, trig in triggers:
                    self._emit(station, block, k, trig)
                if station.early is not None:  # preliminaries no later final can match any more
                    for k, picker in station.pickers.items():
                        since = picker.open_since
                        for gone in station.early.expire(self.labels[k], final_to if since is None else since):
                            self._retract(station, gone)
                block.picked_to = final_to
            if not block.done:
                break
            for k, picker in station.pickers.items():
                for trig in picker.close():
                    self._emit(station, block, k, trig)
            if station.early is not None and block.end is not None:
                for gone in station.early.before(block.end):
                    self._retract(station, gone)
            sched.blocks.popleft()
        while len(station.arrivals) > 1 and station.arrivals[1][0] <= (sched.blocks[0].picked_to if sched.blocks else station.arrivals[-1][0]):
            station.arrivals.popleft()

    def index_to_ns(self, index: int, offset_ns: float = 0.0) -> int:
        """Absolute grid index of this lane (plus sub-sample offset) to integer nanoseconds."""
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
            extra=dict(self._identity),
            data_arrived_ns=int(station.final_arrival * 1e9),
            made_ns=time.time_ns(),
        )
        if station.early is not None:
            matched = station.early.finalise(pick.phase, trig.peak)
            if matched is not None:
                pick.lifecycle_id = matched.lifecycle_id
        self.host.emit(pick, station, trig.end)

    # ---------------------------------------------------------------- tip windows
    def queue_tips(self, now: float) -> bool:
        """Every ``early.interval_s`` (monotonic ``now``): queue one tip window per station with new data.

        The window ends at the station's newest scanned data (all components
        complete, inside its open block) and is batched with the regular windows;
        its predictions go to :meth:`_score_tip`, never into the stacked sums.
        Returns whether any was queued (the pipeline then runs the lane's queue at
        once rather than after ``max_wait_s``: preliminary picks are about latency).
        """
        if not self.early_on or now < self._tips_due:
            return False
        self._tips_due = now + self.tip_interval
        queued = False
        for station in self.stations.values():
            sched = station.scheduler
            block = sched.open_block
            end = sched.scanned_to
            if block is None or end is None or end <= station.tip_end or end - block.start < self.in_samples:
                continue
            station.tip_end = end
            self.queue.append(Window(station, block, end - self.in_samples, now, station.last_arrival, tip=True))
            queued = True
        return queued

    def reopen(self, station: Station, opened: list[OpenPick], same_grid: bool) -> None:
        """Preliminary picks a previous process left open (resume points): closed here exactly once.

        Indices saved at another model rate cannot be matched: those are retracted at once.
        """
        if not same_grid:
            for gone in opened:
                self._retract(station, gone)
            return
        if station.early is None:
            station.early = EarlyBook(self.match_samples)
        station.early.open.extend(opened)

    def _score_tip(self, win: Window, pred: np.ndarray) -> None:
        """Preliminary picks from one tip window's predictions (samples, classes); see rtpick.picking.early."""
        station: Station = win.group  # type: ignore[assignment]
        sched = station.scheduler
        if station.early is None or win.block not in sched.blocks:
            return  # the station restarted, or the block was closed and picked meanwhile
        # below final_to final picks are (or will be) made anyway; the window's first half is left out: PhaseNet
        # puts spurious P peaks at a window's start edge, and a peak there was scored fresher by earlier tip windows
        floor = max(sched.final_to(win.block) - win.start, self.in_samples // 2)
        last_peak = self.in_samples - 1 - self.min_context
        offset = station.buffer.offset_ns(win.block.start, win.start)
        for k, picker in station.pickers.items():
            phase = self.labels[k]
            for trig in tip_triggers(pred[:, k], picker.threshold, last_peak):
                index = win.start + trig.peak
                if trig.peak < floor or not station.early.wanted(phase, index):
                    continue
                pick = Pick(
                    stream_id=station.pick_id,
                    phase=phase,
                    time_ns=self.index_to_ns(index, offset),
                    probability=trig.peak_value,
                    uncertainty_s=trig.spread_samples / self.fs,
                    trigger_on_ns=self.index_to_ns(win.start + trig.start, offset),
                    trigger_off_ns=self.index_to_ns(win.start + trig.end, offset),
                    model_id=self.loaded.model_id,
                    model_version=self.loaded.version,
                    window_ns=(self.index_to_ns(win.start, offset), self.index_to_ns(win.start + self.in_samples - 1, offset)),
                    extra=dict(self._identity),
                    status="preliminary",
                    data_arrived_ns=int(win.arrived * 1e9),
                    made_ns=time.time_ns(),
                )
                pick.lifecycle_id = f"{pick.stream_id}/{phase}/{pick.time_ns}"
                station.early.add(OpenPick(pick.lifecycle_id, phase, index, _pick_fields(pick)))
                self.host.emit(pick, station, index)

    def _retract(self, station: Station, gone: OpenPick) -> None:
        """Publish the retraction of a preliminary pick no final matched (same fields and lifecycle id)."""
        pick = Pick(**{**gone.fields, "status": "retracted", "lifecycle_id": gone.lifecycle_id, "made_ns": time.time_ns()})
        self.host.emit(pick, station, gone.index)

    def _observe_stages(self, windows: list[Window], wall0: float, mono0: float, forward_s: float, picking_s: float) -> None:
        """Latency per stage of one batch to the observer (Prometheus): arrival → batch, batch wait, forward, stacking/picking."""
        on_stage = getattr(self.host.observer, "on_stage", None)
        if on_stage is None:
            return
        for win in windows:
            if win.arrived:
                on_stage("arrival_to_batch", wall0 - win.arrived)
            on_stage("batch_wait", mono0 - win.queued_at)
        on_stage("forward", forward_s)
        on_stage("picking", picking_s)

    # ---------------------------------------------------------------- hot swap
    def swap(self, loaded: LoadedModel, spec: LaneSpec) -> None:
        """Replace the lane's model, engine and identity; the next batch uses the new model.

        Call between batches (the pipeline thread). Queued windows stay queued and
        are computed once, by the new model. Raises ValueError naming the region if
        the new model does not keep what the stations depend on (``LaneSpec.restart_changes``);
        the old model then stays in place. Thresholds in force follow the new spec.
        """
        if spec.region != self.region:
            raise ValueError(f"region {self.region!r}: spec is for region {spec.region!r}")
        changed = [f"{name} {getattr(self.spec, name)!r} -> {getattr(spec, name)!r}" for name in self.spec.restart_changes(spec)]
        if changed:
            raise ValueError(f"region {self.region!r}: the new model changes {', '.join(changed)}; its stations cannot switch without a restart")
        self.settle()  # the batch in flight ran on the old model: its picks carry the old identity
        old = self.engine
        self._install(spec, loaded)
        old.close()
        for station in self.stations.values():
            for k, picker in station.pickers.items():
                threshold = self.thresholds.get(self.labels[k])
                if threshold is not None:
                    picker.threshold = threshold
