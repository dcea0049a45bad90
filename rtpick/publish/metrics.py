"""Prometheus metrics: the pipeline observer, a scrape-time collector, the HTTP endpoint.

:class:`Metrics` implements the pipeline's observer protocol (``on_record`` …
``on_pick``); hot-loop calls only increment cached label children, and the
per-record and per-window series (records, samples, data and stage latencies) are
plain Python tallies exported at scrape time (:class:`HotCollector`): updating
prometheus_client's counters and histograms (a lock per value, a walk over the
buckets per observation) cost a few microseconds per record, a large share of
rtpick's own work on one. Values that
are read at scrape time (last-data age, buffer fill, stations live) come from
:class:`PipelineCollector`, which reads the pipeline's state when Prometheus
scrapes. Labels are bounded: ``station`` (NET.STA for the first
``metrics.max_station_labels`` stations seen, ``_other`` for the rest, see
:class:`StationLabels`), ``phase``, ``region``, ``kind`` and a capped set of
rejection causes.

The HTTP endpoint (:func:`start_http_server`) is bounded too: at most
:data:`HTTP_MAX_CONCURRENT` requests are served at once (one more gets ``503``),
each connection times out after :data:`HTTP_TIMEOUT_S` of silence, and closing
the server ends its open connections, so shutdown never waits on a client.
"""

from __future__ import annotations

import logging
import platform
import socket
import threading
import time
from bisect import bisect_left
from socketserver import ThreadingMixIn
from typing import Any, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from rtpick.ingest.seedlink import ERROR_CAUSES as INGEST_ERROR_CAUSES  # every cause starts at 0
from rtpick.types import NS_PER_S, Pick

log = logging.getLogger(__name__)

OTHER_STATION = "_other"  # the station label shared by every station beyond metrics.max_station_labels
DEFAULT_MAX_STATION_LABELS = 1000
HTTP_MAX_CONCURRENT = 8  # requests served at once; Prometheus scrapes one target one request at a time
HTTP_TIMEOUT_S = 5.0  # per socket read/write: a silent or half-open client frees its slot after this
MAX_CAUSES = 16  # distinct rejection causes before further ones are counted as "other"
# Declared at 0 from the start, so rate()/increase() have data before the first one happens
# (the pipeline's and the SeedLink client's cause names; others still appear when they occur).
REJECT_CAUSES = ("bad_sampling_rate", "bad_samples", "non_finite", "bad_stream_id", "channel_not_selected", "unknown_component",
                 "future_time", "time_jump", "unsupported_sampling_rate", "processing_error", "quarantined", "late",
                 "no_region")
LATENCY_BUCKETS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 300)
DATA_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
INFERENCE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
STAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
# Latency stages of a pick (Lane._observe_stages, on_record, on_published), in data-flow order
STAGES = ("record_to_arrival", "arrival_to_batch", "batch_wait", "forward", "picking", "publish")
PICK_STATUSES = ("preliminary", "final", "retracted")


class MetricsError(Exception):
    """A start-up problem of the metrics endpoint; the message names the config key."""


def station_of(stream_id: str) -> str:
    """NET.STA of a NET.STA.LOC.CHA stream id (the ``station`` label)."""
    parts = stream_id.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else "invalid"


class StationLabels:
    """NET.STA → its ``station`` label: itself for the first ``cap`` stations seen, ``_other`` after.

    Every per-station series is multiplied by this count, so it is what bounds a
    scrape (10,000 station ids would otherwise be >100,000 series). First seen
    wins: a network's stations all arrive within the first seconds, so the cap
    only bites for an unexpected flood of ids (a misconfigured selector, a
    hostile server), and those share one label. Overflow stations are not stored.
    """

    def __init__(self, cap: int = DEFAULT_MAX_STATION_LABELS) -> None:
        if cap < 1:
            raise ValueError("metrics.max_station_labels must be at least 1")
        self.cap = cap
        self._own: set[str] = set()
        self._lock = threading.Lock()  # the pipeline thread and the scrape thread both assign

    def __call__(self, station: str) -> str:
        if station in self._own:
            return station
        with self._lock:
            if station in self._own or len(self._own) < self.cap:
                self._own.add(station)
                return station
        return OTHER_STATION


class Metrics:
    """Every metric rtpick's hot loop updates; implements the pipeline observer protocol."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True,
                 max_station_labels: int = DEFAULT_MAX_STATION_LABELS) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.station_label = StationLabels(max_station_labels)
        r = self.registry
        if process:
            ProcessCollector(registry=r)
        self.hot = HotCollector(self.station_label)
        r.register(self.hot)
        self.gaps = Counter("rtpick_gaps_total", "Gaps in a channel's data, by station.", ["station"], registry=r)
        self.overlaps = Counter("rtpick_overlaps_total", "Overlapping or duplicate records dropped, by station.", ["station"], registry=r)
        self.rejected = Counter("rtpick_records_rejected_total", "Records rejected as invalid or not selected, by cause.", ["cause"], registry=r)
        self.windows = Counter("rtpick_windows_total", "Model windows computed.", registry=r)
        self.batch_size = Histogram("rtpick_batch_size", "Windows per forward pass.", buckets=BATCH_BUCKETS, registry=r)
        self.inference = Histogram("rtpick_inference_seconds", "Duration of one forward pass (one batch).", buckets=INFERENCE_BUCKETS, registry=r)
        self.picks = Counter("rtpick_picks_total", "Final picks, by phase and region.", ["phase", "region"], registry=r)
        self.pick_latency = Histogram(
            "rtpick_pick_latency_seconds",
            "End-to-end latency: arrival of the data that completed a pick to the pick's publication.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pick_added = Histogram(
            "rtpick_pick_added_latency_seconds", "Latency rtpick added to a pick: its publication minus the arrival of the newest data it depended on, by status.",
            ["status"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.pick_delay = Histogram(
            "rtpick_pick_delay_seconds", "Pick latency: its publication minus the pick (phase arrival) time, by status (preliminary, final, retracted).",
            ["status"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.early_picks = Counter("rtpick_early_picks_total", "Preliminary picks and retractions (early.enabled), by status.", ["status"], registry=r)
        self._stages = self.hot.stages
        for status in PICK_STATUSES:
            self.pick_added.labels(status)
            self.pick_delay.labels(status)
        for status in ("preliminary", "retracted"):
            self.early_picks.labels(status)
        self.events = Counter("rtpick_events_total", "Event messages (every revision), by whether the revision is final.", ["final"], registry=r)
        self.model_info = Gauge("rtpick_model_info", "Loaded models (value 1), with identity labels.", ["region", "model", "version", "sha256"], registry=r)
        self.model_reload_failures = Counter(
            "rtpick_model_reload_failures_total", "Model reloads refused (SIGHUP, `rtpick models reload`); the old model kept running, by region.", ["region"], registry=r
        )
        self.build_info = Gauge("rtpick_build_info", "rtpick build (value 1).", ["version", "python"], registry=r)
        self.start_time = Gauge("rtpick_start_time_seconds", "Unix time the daemon started.", registry=r)
        self.ready = Gauge("rtpick_ready", "1 once models are loaded and ingest is connected, 0 while starting or stopping.", registry=r)
        self.build_info.labels(rtpick_version(), platform.python_version()).set(1)
        self.start_time.set(time.time())
        for phase in ("P", "S"):
            self.picks.labels(phase, "default")
        for final in ("false", "true"):
            self.events.labels(final)
        self._causes: dict[str, Any] = {cause: self.rejected.labels(cause) for cause in REJECT_CAUSES}

    # -- pipeline observer protocol -----------------------------------------------------------

    def on_record(self, stream_id: str, n_samples: int, arrival_latency_s: float) -> None:
        tally = self.hot.streams.get(stream_id)
        if tally is None:
            station = self.station_label(station_of(stream_id))
            tally = self.hot.add_stream(stream_id, station)
            self.gaps.labels(station)  # every station shows its gap/overlap counters, at 0 until one happens
            self.overlaps.labels(station)
        tally[0] += 1
        tally[1] += n_samples
        self.hot.data_latency.observe(arrival_latency_s)
        self._stages["record_to_arrival"].observe(max(arrival_latency_s, 0.0))

    def on_gap(self, stream_id: str) -> None:
        self.gaps.labels(self.station_label(station_of(stream_id))).inc()

    def on_overlap(self, stream_id: str) -> None:
        self.overlaps.labels(self.station_label(station_of(stream_id))).inc()

    def on_rejected(self, stream_id: str, cause: str) -> None:  # noqa: ARG002 - per-stream detail goes to the log
        child = self._causes.get(cause)
        if child is None:
            label = cause if len(self._causes) < MAX_CAUSES else "other"
            child = self._causes[cause] = self.rejected.labels(label)
        child.inc()

    def on_batch(self, size: int, seconds: float) -> None:
        self.windows.inc(size)
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def on_pick(self, pick: Pick, latency_s: float) -> None:
        if pick.status != "final":
            self.early_picks.labels(pick.status).inc()
            return
        self.picks.labels(pick.phase, str(pick.extra.get("region") or "default")).inc()
        self.pick_latency.observe(max(latency_s, 0.0))

    def on_stage(self, stage: str, seconds: float) -> None:
        """One latency observation of a pipeline stage (``STAGES``)."""
        self._stages[stage].observe(max(seconds, 0.0))

    def on_published(self, pick: Pick, published_ns: int) -> None:
        """A pick left on ZeroMQ at ``published_ns`` (wall clock): publish stage, added latency and pick latency by status."""
        if pick.made_ns:
            self._stages["publish"].observe(max(published_ns - pick.made_ns, 0) / NS_PER_S)
        if pick.data_arrived_ns:
            self.pick_added.labels(pick.status).observe(max(published_ns - pick.data_arrived_ns, 0) / NS_PER_S)
        self.pick_delay.labels(pick.status).observe(max(published_ns - pick.time_ns, 0) / NS_PER_S)

    # -- other components ---------------------------------------------------------------------

    def on_event(self, final: bool) -> None:
        """An event revision was published."""
        self.events.labels("true" if final else "false").inc()

    def set_model(self, model_id: str, version: str, sha256: str, region: str = "default") -> None:
        """Declare the model a region's lane runs (``rtpick_model_info``; one call per lane)."""
        self.model_info.labels(region, model_id, version, sha256).set(1)

    def swap_model(self, region: str, old: tuple[str, str, str], new: tuple[str, str, str]) -> None:
        """A region's model was hot-swapped: ``rtpick_model_info`` loses the old (model, version, sha256), gains the new."""
        try:
            self.model_info.remove(region, *old)
        except KeyError:
            pass  # never declared (a pipeline attached without models)
        self.set_model(*new, region=region)

    def on_model_reload_failed(self, region: str) -> None:
        """A reload refused the region's new model (``rtpick_model_reload_failures_total``)."""
        self.model_reload_failures.labels(region).inc()

    def watch(self, pipeline: Any, live_after_s: float = 60.0) -> PipelineCollector:
        """Register the scrape-time collector of ``pipeline``'s state."""
        collector = PipelineCollector(pipeline, live_after_s, labels=self.station_label)
        self.registry.register(collector)
        return collector

    def watch_daemon(self, daemon: Any) -> DaemonCollector:
        """Register the scrape-time collector of the daemon's own counters (state writes, de-duplication)."""
        collector = DaemonCollector(daemon)
        self.registry.register(collector)
        return collector

    def watch_ingest(self, ingest: Any) -> IngestCollector | None:
        """Register the scrape-time collector of a SeedLink ingest's counters (if it has ``stats``)."""
        if getattr(ingest, "stats", None) is None:
            return None
        collector = IngestCollector(ingest)
        self.registry.register(collector)
        return collector


class TallyHistogram:
    """A histogram counted in plain Python: a bucket search in C and two additions per observation.

    Exported by :class:`HotCollector` with prometheus_client's bucket semantics (an
    observation counts in the first bucket whose bound is at or above it). A lock
    keeps the counts exact if more than one thread observes (the pipeline thread
    does nearly all of it); a scrape copies them.
    """

    __slots__ = ("bounds", "counts", "sum", "_lock")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect_left(self.bounds, value)] += 1
            self.sum += value

    def buckets(self) -> tuple[list[tuple[str, int]], float]:
        """(le, cumulative count) per bucket, +Inf last, and the sum: a consistent copy."""
        with self._lock:
            counts, total = list(self.counts), self.sum
        cumulative, out = 0, []
        for bound, count in zip((*self.bounds, float("inf")), counts):
            cumulative += count
            out.append((floatToGoString(bound), cumulative))
        return out, total


class HotCollector(Collector):
    """The series updated per record and per window, kept as plain tallies and exported at scrape time.

    ``rtpick_records_total``/``rtpick_samples_total`` by station (each stream id's
    [records, samples] list, summed per ``station`` label when scraped),
    ``rtpick_data_latency_seconds`` and ``rtpick_stage_latency_seconds`` by stage.
    Only the pipeline thread adds stream ids; a scrape reads a snapshot of them.
    """

    def __init__(self, labels: StationLabels) -> None:
        self.labels = labels
        self.streams: dict[str, list[int]] = {}  # stream id -> [records, samples]
        self._stream_label: dict[str, str] = {}
        self.data_latency = TallyHistogram(DATA_LATENCY_BUCKETS)
        self.stages = {stage: TallyHistogram(STAGE_BUCKETS) for stage in STAGES}

    def add_stream(self, stream_id: str, station_label: str) -> list[int]:
        """A new stream id's tally, counted under ``station_label``."""
        self._stream_label[stream_id] = station_label
        tally = self.streams[stream_id] = [0, 0]
        return tally

    def collect(self) -> Iterable:
        records = CounterMetricFamily("rtpick_records", "Records (data packets) accepted, by station.", labels=["station"])
        samples = CounterMetricFamily("rtpick_samples", "Samples accepted, by station.", labels=["station"])
        by_station: dict[str, list[int]] = {}
        for stream_id, label in list(self._stream_label.items()):
            tally = self.streams[stream_id]
            total = by_station.setdefault(label, [0, 0])
            total[0] += tally[0]
            total[1] += tally[1]
        for label, (n_records, n_samples) in by_station.items():
            records.add_metric([label], n_records)
            samples.add_metric([label], n_samples)
        data = HistogramMetricFamily("rtpick_data_latency_seconds", "Wall clock at arrival minus the end time of the record's last sample.")
        data.add_metric([], *self.data_latency.buckets())
        stages = HistogramMetricFamily(
            "rtpick_stage_latency_seconds",
            "Latency per stage: record_to_arrival (record end to arrival), arrival_to_batch (arrival of a window's newest record to its batch), "
            "batch_wait (window due to its batch), forward (one forward pass), picking (stacking and picking of one batch), publish (pick made to published).",
            labels=["stage"],
        )
        for stage, histogram in self.stages.items():
            stages.add_metric([stage], *histogram.buckets())
        return [records, samples, data, stages]


class PipelineCollector(Collector):
    """Scrape-time gauges read from a :class:`rtpick.pipeline.Pipeline` (per NET.STA).

    Stations beyond the label cap share the ``_other`` series, which shows the worst
    of them (oldest data, largest lag, fullest buffer): an alert on it still fires.
    The station counts (``rtpick_stations``, ``rtpick_stations_live``) count every station.
    """

    def __init__(self, pipeline: Any, live_after_s: float = 60.0, clock=time.time,
                 labels: StationLabels | None = None) -> None:
        self.pipeline = pipeline
        self.live_after_s = live_after_s
        self.clock = clock
        self.labels = labels if labels is not None else StationLabels()

    def station_state(self) -> dict[str, dict[str, float]]:
        """NET.STA -> {last_arrival (wall s), last_data_ns, fill (0..1)}; families merged (newest, fullest)."""
        now_state: dict[str, dict[str, float]] = {}
        for station in _snapshot(self.pipeline.stations):
            key = station_of(station.key)
            buf = station.buffer
            filled = [f for f in list(buf.filled_to) if f is not None]
            fill = 0.0
            if filled and buf.capacity:
                fill = min(1.0, max(0.0, (max(filled) - max(buf.floor, max(filled) - buf.capacity)) / buf.capacity))
            cur = now_state.setdefault(key, {"last_arrival": 0.0, "last_data_ns": 0, "fill": 0.0})
            cur["last_arrival"] = max(cur["last_arrival"], station.last_arrival)
            cur["last_data_ns"] = max(cur["last_data_ns"], station.last_data_ns)
            cur["fill"] = max(cur["fill"], fill)
        return now_state

    def collect(self) -> Iterable:
        now = self.clock()
        state = self.station_state()
        age = GaugeMetricFamily("rtpick_station_last_data_age_seconds", "Seconds since data last arrived from the station.", labels=["station"])
        lag = GaugeMetricFamily("rtpick_station_data_lag_seconds", "Wall clock minus the end of the station's newest sample (large in replay).", labels=["station"])
        fill = GaugeMetricFamily("rtpick_buffer_fill_ratio", "Fraction of the station's ring buffer holding data not yet consumed by the window scheduler.", labels=["station"])
        live = 0
        worst: dict[str, tuple[float, float, float]] = {}  # label -> (age, lag, fill)
        for key, values in state.items():
            station_age = now - values["last_arrival"] if values["last_arrival"] else float("inf")
            live += station_age <= self.live_after_s
            # a station just created has no data yet (its first record is being processed): no lag to report
            station_lag = now - values["last_data_ns"] / NS_PER_S if values["last_data_ns"] else 0.0
            row = (station_age, station_lag, values["fill"])
            label = self.labels(key)
            prev = worst.get(label)
            worst[label] = row if prev is None else tuple(max(a, b) for a, b in zip(prev, row))
        for label, (station_age, station_lag, station_fill) in sorted(worst.items()):
            age.add_metric([label], station_age)
            lag.add_metric([label], station_lag)
            fill.add_metric([label], station_fill)
        yield age
        yield lag
        yield fill
        yield GaugeMetricFamily("rtpick_stations", "Stations seen since start.", value=len(state))
        yield GaugeMetricFamily("rtpick_stations_live", "Stations whose newest data arrived within metrics.live_after_s.", value=live)
        yield GaugeMetricFamily("rtpick_windows_queued", "Windows waiting for the next batch.", value=self.pipeline.queued)
        stats = self.pipeline.stats
        yield CounterMetricFamily("rtpick_windows_dropped", "Windows lost to a buffer overrun (data overwritten before inference).", value=stats.windows_dropped)
        yield CounterMetricFamily("rtpick_windows_failed", "Windows of batches whose inference raised (not stacked; the stations go on).", value=stats.windows_failed)
        yield CounterMetricFamily("rtpick_station_time_jumps", "Station restarts after a forward time jump beyond the ring buffer (outage, clock jump).", value=stats.time_jumps)
        yield CounterMetricFamily("rtpick_station_errors", "Station restarts after its scheduling or picking raised (the other stations go on).", value=stats.station_errors)


INGEST_STATES = ("idle", "connecting", "streaming", "backoff", "stopped")


class IngestCollector(Collector):
    """Scrape-time counters of the SeedLink ingest (``ingest.stats``)."""

    def __init__(self, ingest: Any) -> None:
        self.ingest = ingest

    def collect(self) -> Iterable:
        stats = self.ingest.stats
        yield CounterMetricFamily("rtpick_ingest_connects", "Successful connections to the SeedLink server.", value=stats.connects)
        yield CounterMetricFamily("rtpick_ingest_reconnects", "Connections after the first one (each follows a disconnect or error).", value=max(0, stats.connects - 1))
        yield CounterMetricFamily("rtpick_ingest_packets", "SeedLink data packets received.", value=stats.packets)
        yield CounterMetricFamily("rtpick_ingest_duplicates", "Packets dropped as already received (resume overlap).", value=stats.duplicates)
        yield CounterMetricFamily("rtpick_ingest_stale", "Packets dropped as older than the buffer horizon.", value=stats.stale)
        errors = CounterMetricFamily("rtpick_ingest_errors", "Ingest errors by cause (connection refused, timeouts, corrupt packets...).", labels=["cause"])
        counts = dict.fromkeys(INGEST_ERROR_CAUSES, 0)
        counts.update(dict(stats.errors))
        for cause, count in sorted(counts.items())[:MAX_CAUSES]:
            errors.add_metric([cause], count)
        yield errors
        state = GaugeMetricFamily("rtpick_ingest_state", "Current ingest state (1 for the current one).", labels=["state"])
        for name in INGEST_STATES:
            state.add_metric([name], 1.0 if stats.state == name else 0.0)
        yield state
        missing = sorted(getattr(stats, "missing_stations", ()))
        yield GaugeMetricFamily("rtpick_ingest_missing_stations", "Selected stations the SeedLink server does not have (last connect); the log names them.", value=len(missing))


class DaemonCollector(Collector):
    """Scrape-time counters of the daemon itself (``daemon.stats``): resume-state writes."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon

    def collect(self) -> Iterable:
        stats = self.daemon.stats
        yield CounterMetricFamily("rtpick_state_saves", "Resume-state files written.", value=stats.state_saves)
        yield CounterMetricFamily("rtpick_state_write_errors", "Failed resume-state (or audit log) writes: full or read-only disk; picks keep flowing, a crash meanwhile may repeat one.", value=stats.state_write_errors)
        yield CounterMetricFamily("rtpick_picks_suppressed", "Picks not published because the same pick was published before (restart de-duplication).", value=stats.picks_suppressed)


def _snapshot(mapping: dict) -> list:
    """Values of a dict another thread may be growing (retry on a concurrent resize)."""
    for _ in range(10):
        try:
            return list(mapping.values())
        except RuntimeError:
            continue
    return []


def rtpick_version() -> str:
    try:
        from importlib.metadata import version

        return version("rtpick")
    except Exception:  # noqa: BLE001 - not installed (source tree): still report something
        return "0+unknown"


class _QuietHandler(WSGIRequestHandler):
    """Per-request handler: the server's socket timeout, no access log (Prometheus scrapes every few seconds)."""

    def setup(self) -> None:
        self.timeout = self.server.timeout_s
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        pass


class BoundedMetricsServer(ThreadingMixIn, WSGIServer):
    """A threading WSGI server with at most ``max_concurrent`` requests in flight.

    A connection beyond the limit is answered ``503`` at once and closed (counted in
    ``rejected``) instead of getting a thread; :meth:`server_close` shuts down the
    open connections so their threads end at once, not after their timeouts.
    """

    daemon_threads = True
    block_on_close = False  # the open connections are shut down instead (server_close)
    request_queue_size = 128  # listen backlog: a burst is accepted (and answered 503) at once

    def __init__(self, address: tuple[str, int], max_concurrent: int = HTTP_MAX_CONCURRENT,
                 timeout_s: float = HTTP_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self.address_family = socket.getaddrinfo(address[0] or None, address[1], type=socket.SOCK_STREAM)[0][0]
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self.rejected = 0
        super().__init__(address, _QuietHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.rejected += 1
            try:
                request.settimeout(self.timeout_s)
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics request from %s failed", client_address, exc_info=True)  # timeouts, resets

    def server_close(self) -> None:
        super().server_close()
        with self._open_lock:
            for request in list(self._open):
                try:
                    request.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def start_http_server(listen: str, registry: CollectorRegistry, max_concurrent: int = HTTP_MAX_CONCURRENT,
                      timeout_s: float = HTTP_TIMEOUT_S) -> tuple[BoundedMetricsServer, threading.Thread]:
    """Serve ``registry`` at ``http://listen/metrics``; :class:`MetricsError` names ``metrics.listen``.

    Returns ``(server, thread)``; stop with ``server.shutdown(); server.server_close()``.
    A port of 0 picks a free one: read it from ``server.server_address``.
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        server = BoundedMetricsServer((host, int(port)), max_concurrent, timeout_s)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise MetricsError(f"metrics.listen: cannot serve metrics on {listen!r}: {reason}") from None
    server.set_app(make_wsgi_app(registry))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="metrics-http", daemon=True)
    thread.start()
    return server, thread
