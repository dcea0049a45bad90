"""Picks + a waveform archive → a SeisBench training folder, with every unusable pick counted by cause.

One trace per (event, station): the three components of one channel family, from
``before_s`` before the event's first pick at that station, ``trace_length_s``
long, resampled to the model's rate exactly as SeisBench ``annotate`` does
(:meth:`seisbench.models.WaveformModel.resample`: low-pass + decimate for integer
factors, Fourier resampling otherwise). Samples stay raw counts: PhaseNet-style
models normalise every window (demean, divide by its standard deviation or peak),
so digitiser gain and instrument sensitivity cancel, and no instrument response is
needed to pick. Components ``1``/``2`` are rotated to N/E with the StationXML
orientation when it is given, else taken as N/E.

A trace is written only when it is complete; otherwise all its picks are counted
under the first cause that applies, in this order:

``unknown_station``     the station is not in the inventory (when one is given)
``no_waveform``         the archive has nothing for the station's channel family in the trace window
``sampling_rate``       a rate below ``min_sampling_rate`` or one that changes inside the window
``pick_outside_data``   there are data, but not at the pick time (the archive starts or ends before it)
``missing_components``  fewer than three components
``gap``                 a sample missing anywhere in the trace window on any component
``clipped``             ``clip_run`` consecutive samples at the trace's extreme value (flat top),
                        or a value at or beyond ``clip_counts`` when given
``beyond_trace``        the pick lies outside the trace window (S more than
                        ``trace_length_s - before_s`` after P)
``uncertain_pick``      (pseudo-labels) a teacher pick below the confidence threshold lies inside
                        the window, so the window would teach "no arrival here" where there is one

Noise traces come from pick-free times of the same stations: no pick of any phase
on the station within 30 s before to 10 s after the window, no origin time within
60 s before it, and complete data; the event split key of a noise trace is its own
id. Splits are drawn by event (all traces of an event in one split).
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import obspy
from obspy import UTCDateTime

from rtpick.adapt.archive import WaveformSource
from rtpick.adapt.catalog import EventInfo, LabelledPick, Tally
from rtpick.adapt.datasets import COMPONENT_ORDER, P_COL, S_COL, assign_splits, snr_db

log = logging.getLogger("rtpick.adapt.build")

REPORT_SCHEMA = "rtpick.dataset_build/1"
FAMILY_PREFERENCE = ("HH", "BH", "EH", "SH", "HN")
NOISE_CODA_S, NOISE_LEAD_S, NOISE_AFTER_ORIGIN_S = 30.0, 10.0, 60.0  # pick-free margins of noise windows


@dataclass
class BuildConfig:
    sampling_rate: float = 100.0  # the model's rate; traces are resampled to it
    trace_length_s: float = 60.0
    before_s: float = 20.0  # trace start before the first pick of the event at the station
    noise_fraction: float = 0.1  # noise traces per earthquake trace
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    seed: int = 0
    min_sampling_rate: float = 20.0
    clip_run: int = 5
    clip_min_counts: float = 1000.0  # a flat top below this is quiet integer data, not clipping
    clip_counts: float | None = None

    @property
    def samples(self) -> int:
        return int(round(self.trace_length_s * self.sampling_rate))


class Unusable(Exception):
    """A trace that cannot be written; ``cause`` is its report key."""

    def __init__(self, cause: str, detail: str = ""):
        super().__init__(detail)
        self.cause = cause


@dataclass(frozen=True)
class StationInfo:
    latitude: float
    longitude: float
    families: tuple[str, ...]


def load_station_info(path: str | Path | None) -> tuple[dict[str, StationInfo], object | None]:
    """``NET.STA.LOC`` (and ``NET.STA``) → coordinates and channel families; plus the ObsPy inventory for rotation."""
    if not path:
        return {}, None
    from rtpick.inference.regions import load_inventory

    stations: dict[str, StationInfo] = {}
    families: dict[str, set[str]] = defaultdict(set)
    coords: dict[str, tuple[float, float]] = {}
    for item in load_inventory(path):
        for key in (f"{item.network}.{item.station}.{item.location}" if item.location is not None else None, f"{item.network}.{item.station}"):
            if key is None:
                continue
            coords.setdefault(key, (item.latitude, item.longitude))
            if item.family:
                families[key].add(item.family)
    for key, (lat, lon) in coords.items():
        stations[key] = StationInfo(lat, lon, tuple(sorted(families[key], key=family_rank)))
    inventory = None
    if Path(path).suffix.lower() not in (".csv", ".db", ".sqlite"):
        inventory = obspy.read_inventory(str(path))
    return stations, inventory


def family_rank(family: str) -> tuple[int, str]:
    """Sort key: the preferred channel family first (HH, BH, EH, SH, HN, then others)."""
    prefix = family[:2]
    return (FAMILY_PREFERENCE.index(prefix) if prefix in FAMILY_PREFERENCE else len(FAMILY_PREFERENCE), family)


class DatasetBuilder:
    """Cuts, checks and writes traces; collects the report."""

    def __init__(self, source: WaveformSource, cfg: BuildConfig, stations: dict[str, StationInfo] | None = None, inventory=None):
        self.source, self.cfg = source, cfg
        self.stations = stations or {}
        self.inventory = inventory
        self.pick_tally = Tally()
        self.trace_tally = Tally()
        self.resampled: Counter = Counter()
        self.noise_rejected: Counter = Counter()

    # ------------------------------------------------------------------ one trace
    def family_for(self, picks: list[LabelledPick]) -> str:
        for p in picks:
            if len(p.channel) == 3:
                return p.channel[:2] + "?"
        first = picks[0]
        info = self.stations.get(first.station_key) or self.stations.get(f"{first.network}.{first.station}")
        if info and info.families:
            return info.families[0]
        held = sorted(self.source.families(first.network, first.station, first.location), key=family_rank)
        return held[0] if held else "HH?"

    def cut(self, net: str, sta: str, loc: str, family: str, t0: UTCDateTime, must_cover: list[UTCDateTime]) -> tuple[np.ndarray, UTCDateTime, float]:
        """(3, samples) float32 Z, N, E at the model rate starting at ~t0; the exact start; the native rate."""
        cfg = self.cfg
        n = cfg.samples
        t1 = t0 + (n - 1) / cfg.sampling_rate
        pad = 2.0
        st = self.source.get(net, sta, loc, family, t0 - pad, t1 + pad)
        st = obspy.Stream([tr for tr in st if tr.stats.npts > 0])
        if not len(st):
            raise Unusable("no_waveform", f"nothing for {net}.{sta}.{loc}.{family} in {t0} – {t1}")
        rates = {float(tr.stats.sampling_rate) for tr in st}
        if min(rates) < cfg.min_sampling_rate:
            raise Unusable("sampling_rate", f"{min(rates):g} Hz is below the minimum of {cfg.min_sampling_rate:g} Hz")
        if len({(tr.stats.channel, tr.stats.sampling_rate) for tr in st}) != len({tr.stats.channel for tr in st}):
            raise Unusable("sampling_rate", f"the sampling rate changes inside the window ({sorted(rates)})")
        st.merge(method=1, fill_value=None)
        for t in must_cover:
            if not any(_covers(tr, t) for tr in st):
                raise Unusable("pick_outside_data", f"data {min(tr.stats.starttime for tr in st)} – {max(tr.stats.endtime for tr in st)} do not cover {t}")
        st = self._to_zne(st)
        missing = [c for c in COMPONENT_ORDER if not st.select(component=c)]
        if missing:
            raise Unusable("missing_components", f"no {'/'.join(missing)} component ({', '.join(tr.id for tr in st)})")
        rate = float(st[0].stats.sampling_rate)
        out = np.zeros((3, n), np.float32)
        start = None
        for i, comp in enumerate(COMPONENT_ORDER):
            tr = st.select(component=comp)[0]
            if not _complete(tr, t0, t1):
                raise Unusable("gap", f"{tr.id}: samples missing between {t0} and {t1}")
            raw = np.ma.getdata(tr.data)[_index(tr, t0) : _index(tr, t1) + 1]
            clip = _clipped(raw, cfg)
            if clip:
                raise Unusable("clipped", f"{tr.id}: {clip}")
            tr = tr.copy()
            tr.data = np.ma.getdata(tr.data).astype(np.float64)
            if tr.stats.sampling_rate != cfg.sampling_rate:
                from seisbench.models import WaveformModel

                tmp = obspy.Stream([tr])
                WaveformModel.resample(tmp, cfg.sampling_rate)
                tr = tmp[0]
            i0 = int(round((t0 - tr.stats.starttime) * cfg.sampling_rate))
            if start is None:
                start = tr.stats.starttime + i0 / cfg.sampling_rate
            seg = tr.data[i0 : i0 + n]
            if len(seg) < n:
                raise Unusable("gap", f"{tr.id}: {len(seg)} of {n} samples after resampling")
            out[i] = seg
        if rate != cfg.sampling_rate:
            self.resampled[f"{rate:g}"] += 1
        return out - out.mean(axis=1, keepdims=True), start, rate

    def _to_zne(self, st: obspy.Stream) -> obspy.Stream:
        comps = {tr.stats.channel[-1] for tr in st}
        if comps & {"1", "2"}:
            if self.inventory is not None:
                try:
                    st = st.copy()
                    st.rotate("->ZNE", inventory=self.inventory)
                    return st
                except Exception as exc:  # noqa: BLE001 - missing orientation or unequal spans
                    log.warning("%s: cannot rotate Z12 to ZNE (%s); 1/2 taken as N/E", st[0].id, exc)
            for tr in st:
                tr.stats.channel = tr.stats.channel[:-1] + {"1": "N", "2": "E"}.get(tr.stats.channel[-1], tr.stats.channel[-1])
        return st

    # ------------------------------------------------------------------ all traces
    def earthquake_rows(self, events: dict[str, EventInfo], picks: list[LabelledPick], uncertain: list[LabelledPick] = ()):
        """Yield (row, waveform) per usable (event, station); tally the rest."""
        cfg = self.cfg
        groups: dict[tuple[str, str], list[LabelledPick]] = defaultdict(list)
        for p in picks:
            groups[(p.event_id, p.station_key)].append(p)
        doubtful: dict[str, list[UTCDateTime]] = defaultdict(list)
        for p in uncertain:
            doubtful[p.station_key].append(p.time)
        for (event_id, key), group in sorted(groups.items(), key=lambda kv: min(p.time for p in kv[1])):
            group.sort(key=lambda p: p.time)
            first = group[0]
            net, sta, loc = first.network, first.station, first.location
            family = self.family_for(group)
            t0 = min(p.time for p in group) - cfg.before_s
            t1 = t0 + (cfg.samples - 1) / cfg.sampling_rate
            where = f"{key}.{family} event {event_id}"
            try:
                if self.stations and key not in self.stations and f"{net}.{sta}" not in self.stations:
                    raise Unusable("unknown_station", f"{net}.{sta}.{loc} is not in the inventory")
                outside = [p for p in group if p.time > t1 - 1.0]
                if outside:
                    raise Unusable("beyond_trace", f"{outside[0].phase} {outside[0].time} is more than {cfg.trace_length_s - cfg.before_s - 1:g} s after the first pick")
                if any(t0 <= t <= t1 for t in doubtful.get(key, [])):
                    raise Unusable("uncertain_pick", "a low-confidence teacher pick lies inside the window")
                wave, start, rate = self.cut(net, sta, loc, family, t0, [p.time for p in group])
            except Unusable as exc:
                self.trace_tally.add(exc.cause, f"{where}: {exc}")
                for p in group:
                    self.pick_tally.add(exc.cause, f"{p.describe()}: {exc}")
                if self.trace_tally.counts[exc.cause] == 1:
                    log.warning("unusable trace (%s) %s: %s", exc.cause, where, exc)
                continue
            ev = events.get(event_id) or EventInfo(event_id, None)
            row = self._station_columns(net, sta, loc, family, start, rate)
            row.update(
                trace_name=f"{event_id}.{key}.{family}",
                trace_category="earthquake",
                source_id=event_id,
                source_origin_time=str(ev.origin_time) if ev.origin_time is not None else "",
                source_latitude_deg=ev.latitude,
                source_longitude_deg=ev.longitude,
                source_depth_km=ev.depth_km,
                source_magnitude=ev.magnitude,
                source_magnitude_type=ev.magnitude_type,
            )
            row[P_COL] = row[S_COL] = np.nan
            for p in group:
                col = P_COL if p.phase == "P" else S_COL
                row[col] = round((p.time - start) * cfg.sampling_rate, 2)
                row[f"trace_{p.phase.lower()}_status"] = p.mode
                if np.isfinite(p.probability):
                    row[f"trace_{p.phase.lower()}_probability"] = round(p.probability, 4)
                self.pick_tally.add(f"used_{p.phase}", p.describe())
            info = self.stations.get(key) or self.stations.get(f"{net}.{sta}")
            if info is not None and np.isfinite(ev.latitude):
                from rtpick.associate.stations import distance_km

                row["path_ep_distance_km"] = round(float(distance_km(ev.latitude, ev.longitude, info.latitude, info.longitude)), 3)
            row["trace_snr_db"] = snr_db(wave, row[P_COL], cfg.sampling_rate)
            yield row, wave

    def noise_rows(self, stations: dict[str, tuple[str, str, str, str]], avoid: dict[str, list[UTCDateTime]], origins: list[UTCDateTime], span: tuple[UTCDateTime, UTCDateTime], wanted: int):
        """Yield up to ``wanted`` pick-free noise traces from the stations' data within ``span``."""
        cfg = self.cfg
        if wanted <= 0 or not stations:
            return
        rng = np.random.default_rng(cfg.seed + 7)
        keys = sorted(stations)
        origins_arr = np.array([float(t) for t in origins]) if origins else np.zeros(0)
        length = cfg.samples / cfg.sampling_rate
        made = 0
        for _ in range(20 * wanted):
            if made >= wanted:
                break
            key = keys[int(rng.integers(len(keys)))]
            net, sta, loc, family = stations[key]
            t0 = span[0] + float(rng.uniform(0, max(0.0, span[1] - span[0] - length)))
            t1 = t0 + length
            times = np.array([float(t) for t in avoid.get(key, [])])
            if len(times) and ((times >= float(t0) - NOISE_CODA_S) & (times <= float(t1) + NOISE_LEAD_S)).any():
                self.noise_rejected["near_pick"] += 1
                continue
            if len(origins_arr) and ((origins_arr >= float(t0) - NOISE_AFTER_ORIGIN_S) & (origins_arr <= float(t1))).any():
                self.noise_rejected["near_origin"] += 1
                continue
            try:
                wave, start, rate = self.cut(net, sta, loc, family, t0, [])
            except Unusable as exc:
                self.noise_rejected[exc.cause] += 1
                continue
            made += 1
            row = self._station_columns(net, sta, loc, family, start, rate)
            name = f"noise.{key}.{family}.{start.strftime('%Y%m%dT%H%M%S')}"
            row.update(trace_name=name, trace_category="noise", source_id=name, trace_snr_db=np.nan)
            row[P_COL] = row[S_COL] = np.nan
            yield row, wave

    def _station_columns(self, net, sta, loc, family, start, rate) -> dict:
        return {
            "station_network_code": net,
            "station_code": sta,
            "station_location_code": loc,
            "trace_channel": family,
            "trace_start_time": str(start),
            "trace_sampling_rate_hz": self.cfg.sampling_rate,
            "trace_native_sampling_rate_hz": float(rate),
        }


def _index(tr, t: UTCDateTime) -> int:
    return max(0, int(round((t - tr.stats.starttime) * tr.stats.sampling_rate)))


def _complete(tr, t0: UTCDateTime, t1: UTCDateTime) -> bool:
    """Every sample between t0 and t1 present (half a sample of slack at the ends for sub-sample time offsets)."""
    half = 0.5 * tr.stats.delta
    if tr.stats.starttime > t0 + half or tr.stats.endtime < t1 - half:
        return False
    return not (np.ma.isMaskedArray(tr.data) and np.ma.getmaskarray(tr.data)[_index(tr, t0) : _index(tr, t1) + 1].any())


def _covers(tr, t: UTCDateTime) -> bool:
    """``t`` lies within the span of the (merged) trace; a pick inside a gap counts as a gap, not as outside."""
    return tr.stats.starttime <= t <= tr.stats.endtime


def _clipped(raw: np.ndarray, cfg: BuildConfig) -> str:
    """Why ``raw`` looks clipped ('' if it does not)."""
    if not len(raw):
        return ""
    peak = float(np.max(np.abs(raw)))
    if cfg.clip_counts is not None and peak >= cfg.clip_counts:
        return f"|x| reaches {peak:g} counts (clip level {cfg.clip_counts:g})"
    if peak < cfg.clip_min_counts:
        return ""
    at_peak = np.abs(raw) == peak
    run, best = 0, 0
    for flag in at_peak:
        run = run + 1 if flag else 0
        best = max(best, run)
        if best >= cfg.clip_run:
            return f"{best}+ consecutive samples at {peak:g} counts (flat top)"
    return ""


def build(
    out: str | Path,
    source: WaveformSource,
    events: dict[str, EventInfo],
    picks: list[LabelledPick],
    cfg: BuildConfig,
    tally: Tally | None = None,
    stations: dict[str, StationInfo] | None = None,
    inventory=None,
    uncertain: list[LabelledPick] = (),
    provenance: dict | None = None,
) -> dict:
    """Write ``out`` (SeisBench ``metadata.csv`` + ``waveforms.hdf5``) and ``out/build_report.json``; returns the report.

    ``tally`` carries the causes counted before this step (catalogue reading, teacher
    thresholds); ``uncertain`` are picks that are not labels but mark where an
    arrival is (pseudo-labels below the confidence threshold).
    """
    import seisbench.data as sbd

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("metadata.csv", "waveforms.hdf5", "build_report.json"):
        (out / name).unlink(missing_ok=True)
    builder = DatasetBuilder(source, cfg, stations, inventory)
    if tally is not None:
        builder.pick_tally = tally
    event_split = assign_splits(sorted({p.event_id for p in picks}), cfg.split, cfg.seed)
    split_counts: Counter = Counter()
    written_events: set[str] = set()
    used_stations: dict[str, tuple[str, str, str, str]] = {}
    n_quakes = n_noise = 0
    with sbd.WaveformDataWriter(out / "metadata.csv", out / "waveforms.hdf5") as writer:
        writer.data_format = {"dimension_order": "CW", "component_order": COMPONENT_ORDER, "measurement": "velocity", "unit": "counts", "instrument_response": "not restituted"}
        for row, wave in builder.earthquake_rows(events, picks, uncertain):
            row["split"] = event_split[row["source_id"]]
            writer.add_trace(row, wave)
            split_counts[(row["split"], "earthquake")] += 1
            written_events.add(row["source_id"])
            key = f"{row['station_network_code']}.{row['station_code']}.{row['station_location_code']}"
            used_stations.setdefault(key, (row["station_network_code"], row["station_code"], row["station_location_code"], row["trace_channel"]))
            n_quakes += 1
        avoid: dict[str, list[UTCDateTime]] = defaultdict(list)
        for p in list(picks) + list(uncertain):
            avoid[p.station_key].append(p.time)
        origins = [ev.origin_time for ev in events.values() if ev.origin_time is not None]
        if picks:
            span = (min(p.time for p in picks) - 600, max(p.time for p in picks) + 600)
            noise = list(builder.noise_rows(used_stations, avoid, origins, span, int(round(cfg.noise_fraction * n_quakes))))
            noise_split = assign_splits([row["source_id"] for row, _ in noise], cfg.split, cfg.seed + 1)
            for row, wave in noise:
                row["split"] = noise_split[row["source_id"]]
                writer.add_trace(row, wave)
                split_counts[(row["split"], "noise")] += 1
                n_noise += 1
    counts = builder.pick_tally.counts
    used = {ph: counts.get(f"used_{ph}", 0) for ph in ("P", "S")}
    unusable = {k: v for k, v in sorted(counts.items()) if not k.startswith("used_")}
    report = {
        "schema": REPORT_SCHEMA,
        **(provenance or {}),
        "waveforms": source.description,
        "config": asdict(cfg),
        "picks": {"read": sum(used.values()) + sum(unusable.values()), "used": used, "unusable": unusable},
        "traces": {"earthquake": n_quakes, "noise": n_noise, "unusable": dict(sorted(builder.trace_tally.counts.items()))},
        "events": len(written_events),
        "split": {f"{s}/{c}": n for (s, c), n in sorted(split_counts.items())},
        "stations": sorted(f"{k}.{v[3]}" for k, v in used_stations.items()),
        "resampled_from_hz": dict(builder.resampled),
        "noise_windows_rejected": dict(builder.noise_rejected),
        "examples": {k: v for k, v in builder.pick_tally.examples.items() if not k.startswith("used_")},
    }
    (out / "build_report.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def summary(report: dict) -> str:
    """The printed form of a build report."""
    picks, traces = report["picks"], report["traces"]
    lines = [
        f"picks: {picks['read']} read, used P {picks['used']['P']}, S {picks['used']['S']}; "
        f"traces: {traces['earthquake']} earthquake + {traces['noise']} noise from {report['events']} events, {len(report['stations'])} stations",
        f"split: {report['split']}",
    ]
    if report["resampled_from_hz"]:
        lines.append(f"resampled to {report['config']['sampling_rate']:g} Hz from: {report['resampled_from_hz']} (traces by native rate)")
    if picks["unusable"]:
        lines.append("unusable picks by cause:")
        for cause, n in picks["unusable"].items():
            example = (report["examples"].get(cause) or [""])[0]
            lines.append(f"  {cause:<20} {n:6d}   e.g. {example}")
    else:
        lines.append("unusable picks: none")
    return "\n".join(lines)
