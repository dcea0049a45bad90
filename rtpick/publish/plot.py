"""Why was (or wasn't) something picked? Waveforms, P/S probabilities and picks in one PNG.

:func:`compute` streams the archive through the real :class:`~rtpick.pipeline.Pipeline`
(same model, thresholds and stacking as the daemon) and taps its final stacked
probabilities; :func:`render` draws one row per station: the vertical waveform,
the P and S probability traces against the thresholds, and the picks. Rows are
sorted by epicentral distance when station coordinates are known (from the event
origin, else from the station with the earliest P pick), else by first pick.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtpick.types import NS_PER_S, Pick, ns_to_iso

PHASE_COLOURS = {"P": "tab:blue", "S": "tab:red"}


@dataclass
class StationView:
    """What one row of the figure shows."""

    key: str  # NET.STA.LOC.FAM
    chunks: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (first grid index, (classes, n))
    picks: list[Pick] = field(default_factory=list)
    distance_km: float | None = None

    @property
    def station(self) -> str:
        return ".".join(self.key.split(".")[:2])


def load_coordinates(path: str | Path) -> dict[str, tuple[float, float]]:
    """NET.STA -> (latitude, longitude) from a CSV with network, station, latitude, longitude columns."""
    coords = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            coords[f"{row['network']}.{row['station']}"] = (float(row["latitude"]), float(row["longitude"]))
    return coords


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine, mean Earth radius)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def compute(paths: list[str], start_ns: int, end_ns: int, config: Any, model: Any = None, margin_s: float = 60.0) -> tuple[dict[str, StationView], Any]:
    """Run the pipeline over ``[start - margin, end + margin]`` of the archive; keep what the plot needs."""
    from rtpick.ingest.replay import ReplayIngest
    from rtpick.pipeline import Pipeline

    pipeline = Pipeline(config, model)
    views: dict[str, StationView] = {}

    def tap(key: str, first: int, values: np.ndarray) -> None:
        views.setdefault(key, StationView(key)).chunks.append((first, values.astype(np.float32)))

    pipeline.on_stacked = tap
    lo, hi = start_ns - int(margin_s * NS_PER_S), end_ns + int(margin_s * NS_PER_S)
    picks: list[Pick] = []
    horizon_s = max(lane.spec.buffer_samples / lane.spec.fs for lane in pipeline.lanes.values())
    for record in ReplayIngest(paths, speed=0.0, record_samples=config.replay.record_samples, max_jump_s=horizon_s).records():
        if record.end_ns >= lo and record.start_ns <= hi:
            picks += pipeline.feed(record)
    picks += pipeline.flush()
    family = {station.pick_id: key for key, station in pipeline.stations.items()}
    for pick in picks:
        key = family.get(pick.stream_id)
        if key is not None and start_ns <= pick.time_ns <= end_ns:
            views.setdefault(key, StationView(key)).picks.append(pick)
    return views, pipeline


def order_rows(views: dict[str, StationView], coords: dict[str, tuple[float, float]], origin: tuple[float, float] | None) -> list[StationView]:
    """By distance when coordinates are known, else by first pick time, then by name."""
    rows = list(views.values())
    if coords and origin is None:
        first_p = [(min(p.time_ns for p in v.picks if p.phase == "P"), v.station) for v in rows if any(p.phase == "P" for p in v.picks)]
        if first_p and min(first_p)[1] in coords:
            origin = coords[min(first_p)[1]]
    for view in rows:
        if origin is not None and view.station in coords:
            view.distance_km = distance_km(origin, coords[view.station])
    far = float("inf")
    return sorted(rows, key=lambda v: (v.distance_km if v.distance_km is not None else far,
                                       min((p.time_ns for p in v.picks), default=far), v.key))


def render(rows: list[StationView], pipeline: Any, paths: list[str], start_ns: int, end_ns: int, out: str | Path,
           title: str = "", extra_picks: list[dict] | None = None) -> Path:
    """Draw the figure to ``out`` (PNG) with the Agg backend; returns the path."""
    import obspy
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from rtpick.ingest.replay import expand_paths

    t0, t1 = obspy.UTCDateTime(ns=start_ns), obspy.UTCDateTime(ns=end_ns)
    stream = obspy.Stream()
    for path in expand_paths(paths):
        try:
            stream += obspy.read(str(path), starttime=t0 - 1, endtime=t1 + 1)
        except Exception:  # noqa: BLE001 - unreadable files were already reported by the replay
            continue
    stream.merge(method=1, fill_value=None)
    fs = pipeline.fs
    labels = list(pipeline.labels)
    thresholds = pipeline.thresholds
    n = max(len(rows), 1)
    fig = Figure(figsize=(12, 1.6 * n + 1.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    span = (end_ns - start_ns) / NS_PER_S
    for ax, view in zip(axes, rows):
        net, sta, loc, fam = view.key.split(".")
        traces = stream.select(network=net, station=sta, location=loc, channel=fam[:2] + "?")
        vertical = [tr for tr in traces if tr.stats.channel.endswith("Z")] or list(traces)
        if vertical:
            tr = vertical[0].copy().trim(t0, t1)
            data = np.ma.masked_invalid(np.ma.filled(tr.data.astype(float), np.nan))
            data = data - np.ma.median(data)
            scale = float(np.ma.max(np.ma.abs(data))) or 1.0
            times = (tr.stats.starttime.ns - start_ns) / NS_PER_S + np.arange(tr.stats.npts) / tr.stats.sampling_rate
            ax.plot(times, data / scale, color="0.25", lw=0.5)
        ax.set_ylim(-1.05, 1.05)
        ax.set_yticks([])
        prob_ax = ax.twinx()
        prob_ax.set_ylim(0, 1.05)
        prob_ax.tick_params(labelsize=7)
        for first, values in sorted(view.chunks, key=lambda c: c[0]):
            times = (first + np.arange(values.shape[1])) / fs - start_ns / NS_PER_S
            inside = (times >= -1) & (times <= span + 1)
            if not inside.any():
                continue
            for k, label in enumerate(labels):
                if label in PHASE_COLOURS:
                    prob_ax.plot(times[inside], values[k, inside], color=PHASE_COLOURS[label], lw=1.0)
        for phase, thr in thresholds.items():
            if phase in PHASE_COLOURS:
                prob_ax.axhline(thr, color=PHASE_COLOURS[phase], lw=0.6, ls=":")
        for pick in view.picks:
            x = (pick.time_ns - start_ns) / NS_PER_S
            ax.axvline(x, color=PHASE_COLOURS.get(pick.phase, "k"), lw=1.4)
            prob_ax.annotate(f"{pick.phase} {pick.probability:.2f}", (x, 1.0), fontsize=7, ha="left", va="top",
                             color=PHASE_COLOURS.get(pick.phase, "k"), xytext=(2, 0), textcoords="offset points")
        for doc in extra_picks or []:
            if doc.get("stream_id", "").split(".")[:2] == [net, sta]:
                from rtpick.types import iso_to_ns

                x = (iso_to_ns(doc["time"]) - start_ns) / NS_PER_S
                ax.axvline(x, color=PHASE_COLOURS.get(doc.get("phase"), "k"), lw=1.2, ls="--")
        where = f"\n{view.distance_km:.1f} km" if view.distance_km is not None else ""
        ax.set_ylabel(f"{net}.{sta}.{loc}.{fam}{where}", rotation=0, ha="right", va="center", fontsize=8)
        ax.set_xlim(0, span)
    if not rows:
        axes[0].text(0.5, 0.5, "no data in this window", ha="center", va="center", transform=axes[0].transAxes)
    axes[-1].set_xlabel(f"seconds after {ns_to_iso(start_ns)}")
    model = getattr(getattr(pipeline, "loaded", None), "model_id", "")
    heading = title or f"{ns_to_iso(start_ns)} to {ns_to_iso(end_ns)}, model {model}"
    fig.suptitle(heading + "\nblack: vertical waveform; blue/red: P/S probability (dotted: threshold); "
                 "solid lines: the model's picks; dashed: given picks", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (1.6 * n + 1.2)))
    out = Path(out)
    fig.savefig(out, format="png")
    return out
