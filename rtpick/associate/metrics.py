"""Prometheus metrics of the associator (``rtpick associate``; served by the bounded endpoint of
:mod:`rtpick.publish.metrics`).

Counters that the associator already keeps (picks in, unknown stations,
candidates rejected, locator rejections, time per stage) and the pick-pool size
are read at scrape time by :class:`AssociatorCollector`; what describes each
published revision (RMS, azimuthal gap, ellipse size) is observed by
:meth:`AssociatorMetrics.on_event` when it is published.
"""

from __future__ import annotations

from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from rtpick.types import Event

RMS_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0)
GAP_BUCKETS = (45, 90, 135, 180, 225, 270, 315, 360)
ELLIPSE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50)
# associator counters exported as rtpick_associate_<name>_total (0 from the start)
COUNTERS = {
    "picks_in": "Pick messages handed to the associator.",
    "picks_unknown_station": "Picks ignored: their station is not in the station file.",
    "picks_unknown_phase": "Picks ignored: phase other than P or S.",
    "candidates_rejected": "Candidate events rejected (minimum configuration not met above chance, or pinned to the search edge).",
    "merges": "Candidates merged into an open event instead of becoming a new one.",
    "locations": "Locator runs (one per event revision with enough picks).",
    "picks_rejected_by_locator": "Picks the locator rejected as outliers and returned to the pool.",
}
INTAKE_COUNTERS = {
    "picks_duplicate": "Picks dropped as duplicates (same pick_id from several pickers).",
    "messages_bad": "Messages that are not valid rtpick.pick/1 documents.",
}


class AssociatorCollector(Collector):
    """Scrape-time view of a running associator (and its intake, when there is one)."""

    def __init__(self, associator: Any, intake: Any = None) -> None:
        self.associator = associator
        self.intake = intake

    def collect(self) -> Iterable:
        counters = _copy(self.associator.counters)
        for name, doc in COUNTERS.items():
            family = CounterMetricFamily(f"rtpick_associate_{name}", doc)
            family.add_metric([], float(counters.get(name, 0)))
            yield family
        if self.intake is not None:
            intake = _copy(self.intake.counters)
            for name, doc in INTAKE_COUNTERS.items():
                family = CounterMetricFamily(f"rtpick_associate_{name}", doc)
                family.add_metric([], float(intake.get(name, 0)))
                yield family
        stages = CounterMetricFamily("rtpick_associate_stage_seconds", "Wall time spent per associator stage.", labels=["stage"])
        for stage, seconds in _copy(self.associator.stage_seconds).items():
            stages.add_metric([stage], float(seconds))
        yield stages
        yield GaugeMetricFamily("rtpick_associate_pick_pool", "Free picks waiting in the associator's pool.",
                                value=float(self.associator.pool_size))
        yield GaugeMetricFamily("rtpick_associate_open_events", "Events not yet final.",
                                value=float(self.associator.open_events))


def _copy(mapping: dict) -> dict:
    """A copy of a dict another thread may be adding keys to (retried; values are plain numbers)."""
    for _ in range(10):
        try:
            return dict(mapping)
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    return {}


class AssociatorMetrics:
    """Per-revision metrics; ``watch`` registers the scrape-time collector."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter("rtpick_associate_events", "New events (first revisions).", registry=r)
        self.revisions = Counter("rtpick_associate_revisions", "Event revisions published, by whether final.", ["final"], registry=r)
        for final in ("true", "false"):
            self.revisions.labels(final)
        self.rms = Histogram("rtpick_associate_rms_seconds", "RMS travel-time residual of published revisions.",
                             buckets=RMS_BUCKETS, registry=r)
        self.gap = Histogram("rtpick_associate_azimuthal_gap_degrees", "Azimuthal gap of located revisions.",
                             buckets=GAP_BUCKETS, registry=r)
        self.ellipse = Histogram("rtpick_associate_ellipse_semi_major_km", "Semi-major axis of the 68 % error ellipse of located revisions.",
                                 buckets=ELLIPSE_BUCKETS, registry=r)

    def watch(self, associator: Any, intake: Any = None) -> AssociatorCollector:
        collector = AssociatorCollector(associator, intake)
        self.registry.register(collector)
        return collector

    def on_event(self, event: Event) -> None:
        if event.revision == 0:
            self.events.inc()
        self.revisions.labels("true" if event.final else "false").inc()
        self.rms.observe(event.rms_residual_s)
        location = event.extra.get("location")
        if location:
            self.gap.observe(location["azimuthal_gap_deg"])
            self.ellipse.observe(location["error_ellipse"]["semi_major_km"])
