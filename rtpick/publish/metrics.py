"""Prometheus metrics: the pipeline observer, a scrape-time collector, the HTTP endpoint.

:class:`Metrics` implements the pipeline's observer protocol (``on_record`` …
``on_pick``); hot-loop calls only increment cached label children. Values that
are read at scrape time (last-data age, buffer fill, stations live) come from
:class:`PipelineCollector`, which reads the pipeline's state when Prometheus
scrapes. Labels are bounded: ``station`` (NET.STA, one per station of the
network), ``phase``, ``region``, ``kind`` and a capped set of rejection causes.
"""

from __future__ import annotations

import logging
import platform
import time
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from rtpick.ingest.seedlink import ERROR_CAUSES as INGEST_ERROR_CAUSES  # every cause starts at 0
from rtpick.types import NS_PER_S, Pick

log = logging.getLogger(__name__)

MAX_CAUSES = 16  # distinct rejection causes before further ones are counted as "other"
# Declared at 0 from the start, so rate()/increase() have data before the first one happens
# (the pipeline's and the SeedLink client's cause names; others still appear when they occur).
REJECT_CAUSES = ("bad_sampling_rate", "bad_samples", "non_finite", "bad_stream_id", "channel_not_selected", "unknown_component")
LATENCY_BUCKETS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 300)
DATA_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
INFERENCE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class MetricsError(Exception):
    """A start-up problem of the metrics endpoint; the message names the config key."""


def station_of(stream_id: str) -> str:
    """NET.STA of a NET.STA.LOC.CHA stream id (the ``station`` label)."""
    parts = stream_id.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else "invalid"


class Metrics:
    """Every metric rtpick's hot loop updates; implements the pipeline observer protocol."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        if process:
            ProcessCollector(registry=r)
        self.records = Counter("rtpick_records_total", "Records (data packets) accepted, by station.", ["station"], registry=r)
        self.samples = Counter("rtpick_samples_total", "Samples accepted, by station.", ["station"], registry=r)
        self.gaps = Counter("rtpick_gaps_total", "Gaps in a channel's data, by station.", ["station"], registry=r)
        self.overlaps = Counter("rtpick_overlaps_total", "Overlapping or duplicate records dropped, by station.", ["station"], registry=r)
        self.rejected = Counter("rtpick_records_rejected_total", "Records rejected as invalid or not selected, by cause.", ["cause"], registry=r)
        self.data_latency = Histogram(
            "rtpick_data_latency_seconds", "Wall clock at arrival minus the end time of the record's last sample.", buckets=DATA_LATENCY_BUCKETS, registry=r
        )
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
        self.events = Counter("rtpick_events_total", "Event messages (every revision), by whether the revision is final.", ["final"], registry=r)
        self.model_info = Gauge("rtpick_model_info", "Loaded models (value 1), with identity labels.", ["region", "model", "version", "sha256"], registry=r)
        self.build_info = Gauge("rtpick_build_info", "rtpick build (value 1).", ["version", "python"], registry=r)
        self.start_time = Gauge("rtpick_start_time_seconds", "Unix time the daemon started.", registry=r)
        self.ready = Gauge("rtpick_ready", "1 once models are loaded and ingest is connected, 0 while starting or stopping.", registry=r)
        self.build_info.labels(rtpick_version(), platform.python_version()).set(1)
        self.start_time.set(time.time())
        for phase in ("P", "S"):
            self.picks.labels(phase, "default")
        for final in ("false", "true"):
            self.events.labels(final)
        self._station: dict[str, tuple[Any, Any]] = {}
        self._causes: dict[str, Any] = {cause: self.rejected.labels(cause) for cause in REJECT_CAUSES}

    # -- pipeline observer protocol -----------------------------------------------------------

    def on_record(self, stream_id: str, n_samples: int, arrival_latency_s: float) -> None:
        children = self._station.get(stream_id)
        if children is None:
            station = station_of(stream_id)
            children = self._station[stream_id] = (self.records.labels(station), self.samples.labels(station))
            self.gaps.labels(station)  # every station shows its gap/overlap counters, at 0 until one happens
            self.overlaps.labels(station)
        children[0].inc()
        children[1].inc(n_samples)
        self.data_latency.observe(arrival_latency_s)

    def on_gap(self, stream_id: str) -> None:
        self.gaps.labels(station_of(stream_id)).inc()

    def on_overlap(self, stream_id: str) -> None:
        self.overlaps.labels(station_of(stream_id)).inc()

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
        self.picks.labels(pick.phase, str(pick.extra.get("region") or "default")).inc()
        self.pick_latency.observe(max(latency_s, 0.0))

    # -- other components ---------------------------------------------------------------------

    def on_event(self, final: bool) -> None:
        """An event revision was published."""
        self.events.labels("true" if final else "false").inc()

    def set_model(self, model_id: str, version: str, sha256: str, region: str = "default") -> None:
        """Declare a loaded model (``rtpick_model_info``)."""
        self.model_info.labels(region, model_id, version, sha256).set(1)

    def watch(self, pipeline: Any, live_after_s: float = 60.0) -> PipelineCollector:
        """Register the scrape-time collector of ``pipeline``'s state."""
        collector = PipelineCollector(pipeline, live_after_s)
        self.registry.register(collector)
        return collector

    def watch_ingest(self, ingest: Any) -> IngestCollector | None:
        """Register the scrape-time collector of a SeedLink ingest's counters (if it has ``stats``)."""
        if getattr(ingest, "stats", None) is None:
            return None
        collector = IngestCollector(ingest)
        self.registry.register(collector)
        return collector


class PipelineCollector(Collector):
    """Scrape-time gauges read from a :class:`rtpick.pipeline.Pipeline` (per NET.STA)."""

    def __init__(self, pipeline: Any, live_after_s: float = 60.0, clock=time.time) -> None:
        self.pipeline = pipeline
        self.live_after_s = live_after_s
        self.clock = clock

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
        for key, values in sorted(state.items()):
            station_age = now - values["last_arrival"] if values["last_arrival"] else float("inf")
            live += station_age <= self.live_after_s
            age.add_metric([key], station_age)
            lag.add_metric([key], now - values["last_data_ns"] / NS_PER_S)
            fill.add_metric([key], values["fill"])
        yield age
        yield lag
        yield fill
        yield GaugeMetricFamily("rtpick_stations", "Stations seen since start.", value=len(state))
        yield GaugeMetricFamily("rtpick_stations_live", "Stations whose newest data arrived within metrics.live_after_s.", value=live)
        yield GaugeMetricFamily("rtpick_windows_queued", "Windows waiting for the next batch.", value=len(self.pipeline.queue))
        stats = self.pipeline.stats
        yield CounterMetricFamily("rtpick_windows_dropped", "Windows lost to a buffer overrun (data overwritten before inference).", value=stats.windows_dropped)


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


def start_http_server(listen: str, registry: CollectorRegistry) -> tuple[Any, Any]:
    """Serve ``registry`` at ``http://listen/metrics``; :class:`MetricsError` names ``metrics.listen``.

    Returns ``(server, thread)``; stop with ``server.shutdown(); server.server_close()``.
    A port of 0 picks a free one: read it from ``server.server_address``.
    """
    from prometheus_client import start_http_server as _start

    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        return _start(int(port), addr=host, registry=registry)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise MetricsError(f"metrics.listen: cannot serve metrics on {listen!r}: {reason}") from None
