"""Association benchmark: rtpick's swarm associator against PyOcto on the same synthetic picks.

Synthetic picks in the style of the PyOcto paper (Münchmeyer 2024): real Oklahoma
station geometry (a 150 x 150 km box of ~50 stations from tt_stations_1D.db),
Gutenberg-Richter magnitudes (b = 1), detection probability falling with distance
by magnitude, Gaussian timing noise of max(1 % of the travel time, 0.1 s), false
picks as a multiple of the true ones, swapped P/S labels, a few station clock
offsets, and swarm sequences with inter-event gaps down to 0.3 s. Both associators
get the same picks and the same 1D velocity model (Oklahoma.nd, tabulated by
rtpick and written in PyOcto's binary table format).

    .venv/bin/python bench/association.py              # location, sparse-100, swarm-20k (~3 min)
    .venv/bin/python bench/association.py --scenario all   # every scenario (~12 min with PyOcto)
    .venv/bin/python bench/association.py --scenario swarm-2k --seed 3

The ``location`` scenario measures the locator: well separated events (40 s apart)
at known hypocentres 2-15 km deep inside the network, realistic pick errors (P
sigma max(0.05 s, 1 % of the travel time), S max(0.1 s, 1.5 %), each pick
reporting its sigma within a factor ~1.3 as ``uncertainty_s``), 3 % outliers off
by 1-3 s, few false picks. For every scenario the epicentre, depth and origin-time
errors (median and 90th percentile) of matched events are printed for both
associators, and for rtpick the share of true epicentres inside the reported
68 % error ellipse.

A predicted event matches a true one if >= 60 % of its picks belong to that event
(one-to-one, greedy by overlap). Recall counts detectable events (>= min_picks true
picks on >= 4 stations); a prediction matching an undetectable event still counts
as correct for precision. PyOcto is optional (``pip install --no-deps pyocto==0.2.2
pyproj``; see docs/association.md); without it only rtpick runs.
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtpick.associate.stations import Stations, distance_km, load_stations
from rtpick.associate.swarm import AssociatorSettings, SwarmAssociator
from rtpick.associate.traveltime import TravelTimeTable, load_table
from rtpick.types import NS_PER_S, Pick

DATA = Path(__file__).resolve().parents[1] / "rtpick" / "data" / "oklahoma_2013-06-16"
CENTRE = (35.8, -97.0)
HALF_KM = 75.0
T_BASE = 1_700_000_000.0  # arbitrary epoch of the synthetic day


@dataclass
class Scenario:
    name: str
    events_per_day: float
    duration_s: float
    noise_factor: float
    swarm_fraction: float = 0.5
    location_test: bool = False  # well separated events with realistic pick errors (generate_location_test)


SCENARIOS = {
    "location": Scenario("location", 2160, 6000, 0.2, location_test=True),
    "sparse-100": Scenario("sparse-100", 100, 6 * 3600, 1.0),
    "swarm-2k": Scenario("swarm-2k", 2000, 3600, 1.0),
    "swarm-20k": Scenario("swarm-20k", 20000, 240, 1.0),
    "swarm-20k-noise0.1": Scenario("swarm-20k-noise0.1", 20000, 240, 0.1),
    "swarm-2k-noise2": Scenario("swarm-2k-noise2", 2000, 1800, 2.0),
}
DEFAULT_SCENARIOS = ("location", "sparse-100", "swarm-20k")


def bench_stations() -> Stations:
    st = load_stations(DATA / "tt_stations_1D.db", network="OK")
    _, first = np.unique(np.round(np.c_[st.latitude, st.longitude], 3), axis=0, return_index=True)
    st = st.subset(np.sort(first))
    dlat = HALF_KM / 111.19
    dlon = dlat / np.cos(np.radians(CENTRE[0]))
    inside = (np.abs(st.latitude - CENTRE[0]) < dlat) & (np.abs(st.longitude - CENTRE[1]) < dlon)
    return st.subset(np.flatnonzero(inside))


def generate_location_test(sc: Scenario, stations: Stations, table: TravelTimeTable, seed: int):
    """Well separated events inside the network with realistic pick errors; as :func:`generate`."""
    rng = np.random.default_rng(seed)
    n = int(round(sc.events_per_day * sc.duration_s / 86400))
    dlat = (HALF_KM - 25.0) / 111.19
    dlon = dlat / np.cos(np.radians(CENTRE[0]))
    events = np.c_[20.0 + np.arange(n) * sc.duration_s / n, CENTRE[0] + rng.uniform(-dlat, dlat, n),
                   CENTRE[1] + rng.uniform(-dlon, dlon, n), rng.uniform(2.0, 15.0, n), np.full(n, 1.5)]
    rows = []  # (station, phase, time, prob, uncertainty, event)
    for e, (et, elat, elon, edep, _) in enumerate(events):
        d = distance_km(elat, elon, stations.latitude, stations.longitude)
        for ph in (0, 1):
            p_det = 1 / (1 + np.exp((d - (45.0 if ph == 0 else 36.0)) / 7.0))
            hit = np.flatnonzero(rng.random(len(d)) < p_det)
            tt = table(ph, d[hit], edep, stations.elevation_m[hit])
            sigma = np.maximum(0.05, 0.01 * tt) if ph == 0 else np.maximum(0.1, 0.015 * tt)
            err = rng.normal(0, sigma)
            bad = rng.random(len(hit)) < 0.03
            err[bad] = rng.choice([-1.0, 1.0], bad.sum()) * rng.uniform(1.0, 3.0, bad.sum())
            reported = sigma * np.exp(rng.normal(0, 0.3, len(hit)))
            for s, t, u in zip(hit, et + tt + err, reported):
                rows.append((s, ph, t, 0.3 + 0.7 * rng.beta(4, 2), u, e))
    n_false = int(sc.noise_factor * len(rows))
    for s, ph, t, p in zip(rng.integers(0, len(stations), n_false), rng.integers(0, 2, n_false),
                           rng.uniform(0, sc.duration_s + 60, n_false), 0.3 + 0.7 * rng.beta(2, 4, n_false)):
        rows.append((s, ph, t, p, 0.1, -1))
    return events, *_as_picks(rows, stations)


def _as_picks(rows, stations: Stations):
    """(picks in time order, true event per pick) from (station, phase, time, prob, uncertainty, event) rows."""
    rows.sort(key=lambda r: r[2])
    picks, truth = [], []
    for s, ph, t, p, u, e in rows:
        ns = int((T_BASE + t) * NS_PER_S)
        picks.append(Pick(f"{stations.keys[s]}..HHZ", "PS"[ph], ns, float(p), float(u), ns, ns, "synthetic"))
        truth.append(e)
    return picks, np.asarray(truth)


def generate(sc: Scenario, stations: Stations, table: TravelTimeTable, seed: int):
    """Returns (events array [t0, lat, lon, depth, mag], picks list, true event index per pick or -1)."""
    if sc.location_test:
        return generate_location_test(sc, stations, table, seed)
    rng = np.random.default_rng(seed)
    n_events = max(2, int(round(sc.events_per_day * sc.duration_s / 86400)))
    n_swarm = int(sc.swarm_fraction * n_events)
    dlat = HALF_KM / 111.19
    dlon = dlat / np.cos(np.radians(CENTRE[0]))
    times, lats, lons = [], [], []
    # background: Poisson in time, uniform in the box
    nb = n_events - n_swarm
    times += list(rng.uniform(0, sc.duration_s, nb))
    lats += list(CENTRE[0] + rng.uniform(-dlat, dlat, nb))
    lons += list(CENTRE[1] + rng.uniform(-dlon, dlon, nb))
    # swarms: bursts of 5-25 events within 3 km, gaps log-uniform in [0.3, 10] s
    left = n_swarm
    while left > 0:
        k = min(left, int(rng.integers(5, 26)))
        t = rng.uniform(0, sc.duration_s * 0.95)
        clat, clon = CENTRE[0] + rng.uniform(-0.8, 0.8) * dlat, CENTRE[1] + rng.uniform(-0.8, 0.8) * dlon
        for _ in range(k):
            times.append(t)
            lats.append(clat + rng.normal(0, 1.5) / 111.19)
            lons.append(clon + rng.normal(0, 1.5) / 111.19 / np.cos(np.radians(clat)))
            t += np.exp(rng.uniform(np.log(0.3), np.log(10.0)))
        left -= k
    order = np.argsort(times)
    t0 = np.asarray(times)[order]
    lat = np.asarray(lats)[order]
    lon = np.asarray(lons)[order]
    depth = rng.uniform(2.0, 12.0, len(t0))
    mag = 0.5 + rng.exponential(1 / np.log(10), len(t0))  # Gutenberg-Richter, b = 1, Mc = 0.5
    events = np.c_[t0, lat, lon, depth, mag]
    clock = np.where(rng.random(len(stations)) < 0.1, rng.normal(0, 0.15, len(stations)), 0.0)

    rows = []  # (station, phase, time, prob, event)
    for e, (et, elat, elon, edep, emag) in enumerate(events):
        d = distance_km(elat, elon, stations.latitude, stations.longitude)
        radius = 30.0 * 10 ** (0.5 * (emag - 0.5))  # 50 % detection distance
        for ph in (0, 1):
            p_det = 1 / (1 + np.exp((d - radius * (1.0 if ph == 0 else 0.8)) / (0.15 * radius)))
            hit = np.flatnonzero(rng.random(len(d)) < p_det)
            tt = table(ph, d[hit], edep, stations.elevation_m[hit])
            noise = rng.normal(0, np.maximum(0.01 * tt, 0.1))
            swap = rng.random(len(hit)) < 0.05
            for s, t, n, sw in zip(hit, tt, noise, swap):
                rows.append((s, (1 - ph) if sw else ph, et + t + n + clock[s], 0.3 + 0.7 * rng.beta(4, 2), 0.05, e))
    n_true = len(rows)
    n_false = int(sc.noise_factor * n_true)
    for s, ph, t, p in zip(rng.integers(0, len(stations), n_false), rng.integers(0, 2, n_false),
                           rng.uniform(0, sc.duration_s + 60, n_false), 0.3 + 0.7 * rng.beta(2, 4, n_false)):
        rows.append((s, ph, t, p, 0.05, -1))
    return events, *_as_picks(rows, stations)


class PeakRSS:
    """Peak resident memory increase during a block (sampled every 5 ms, psutil)."""

    def __enter__(self):
        import psutil

        self._proc = psutil.Process()
        self.start = self._proc.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)
        self.mb = (self.peak - self.start) / 2**20


def run_rtpick(picks, stations, table, settings):
    assoc = SwarmAssociator(stations, table, settings)
    emitted_at = {}
    latencies = []
    out = {}
    step = settings.step_s
    with PeakRSS() as mem:
        t_start = time.perf_counter()
        next_ns = None
        for pick in picks:
            if next_ns is not None and pick.time_ns >= next_ns:
                for ev in assoc.step(next_ns):
                    out[ev.event_id] = ev
                    if ev.event_id not in emitted_at:
                        emitted_at[ev.event_id] = next_ns
                        last = max(p.time_ns for p, _ in ev.picks)
                        latencies.append((next_ns - last) / NS_PER_S)
                next_ns = None
            assoc.push(pick)
            if next_ns is None:
                next_ns = pick.time_ns + int(step * NS_PER_S)
        for ev in assoc.flush():
            out[ev.event_id] = ev
        runtime = time.perf_counter() - t_start
    pick_index = {id(p): i for i, p in enumerate(picks)}
    preds = []
    for ev in out.values():
        preds.append(((ev.origin_time_ns / NS_PER_S) - T_BASE, ev.latitude, ev.longitude,
                      {pick_index[id(p)] for p, _ in ev.picks}, ev.depth_km, ev.extra.get("location", {}).get("error_ellipse")))
    return preds, runtime, mem.mb, np.asarray(latencies)


def write_pyocto_table(table: TravelTimeTable, path: Path) -> None:
    """PyOcto's binary 1D table: int nx, int nz, double delta, then P and S times [x, z] (C order)."""
    assert table.depth_step_km == table.distance_step_km
    with open(path, "wb") as fh:
        fh.write(struct.pack("iid", table.times.shape[2], table.times.shape[1], table.distance_step_km))
        fh.write(np.ascontiguousarray(table.times[0].T).tobytes())
        fh.write(np.ascontiguousarray(table.times[1].T).tobytes())


def run_pyocto(picks, stations, table, settings, min_interevent_time, workdir):
    import pandas as pd
    import pyocto

    path = Path(workdir) / "oklahoma_pyocto.bin"
    if not path.exists():
        write_pyocto_table(table, path)
    dlat = (HALF_KM + settings.margin_km) / 111.19
    dlon = dlat / np.cos(np.radians(CENTRE[0]))
    model = pyocto.VelocityModel1D(str(path), tolerance=1.0)
    assoc = pyocto.OctoAssociator.from_area(
        lat=(CENTRE[0] - dlat, CENTRE[0] + dlat), lon=(CENTRE[1] - dlon, CENTRE[1] + dlon),
        zlim=(0.0, settings.max_depth_km), time_before=60.0, velocity_model=model,
        n_picks=settings.min_picks, n_p_picks=settings.min_p, n_s_picks=settings.min_s, n_p_and_s_picks=0,
        min_interevent_time=min_interevent_time, n_threads=1,
    )
    st_df = pd.DataFrame({"id": list(stations.keys), "latitude": stations.latitude, "longitude": stations.longitude,
                          "elevation": stations.elevation_m})
    st_df = assoc.transform_stations(st_df)
    pk_df = pd.DataFrame({"station": [p.station_key for p in picks], "phase": [p.phase for p in picks],
                          "time": [p.time_ns / NS_PER_S - T_BASE for p in picks]})
    with PeakRSS() as mem:
        t_start = time.perf_counter()
        events, assignments = assoc.associate(pk_df, st_df)
        runtime = time.perf_counter() - t_start
    preds = []
    if len(events):
        events = assoc.transform_events(events)
        groups = assignments.groupby("event_idx")["pick_idx"].apply(set).to_dict()
        for _, row in events.iterrows():
            preds.append((row["time"], row["latitude"], row["longitude"], groups.get(row["idx"], set()), row["depth"], None))
    return preds, runtime, mem.mb


def evaluate(preds, events, truth, min_picks):
    true_sets: dict[int, set] = {}
    for i, e in enumerate(truth):
        if e >= 0:
            true_sets.setdefault(int(e), set()).add(i)
    matches = []  # (overlap, pred, true)
    for k, (_, _, _, pset, _, _) in enumerate(preds):
        counts: dict[int, int] = {}
        for i in pset:
            if truth[i] >= 0:
                counts[int(truth[i])] = counts.get(int(truth[i]), 0) + 1
        for e, c in counts.items():
            if c >= 0.6 * len(pset):
                matches.append((c, k, e))
    matches.sort(reverse=True)
    used_p, used_t, pairs = set(), set(), []
    for c, k, e in matches:
        if k not in used_p and e not in used_t:
            used_p.add(k)
            used_t.add(e)
            pairs.append((k, e))
    # detectable: >= min_picks true picks on >= 4 stations
    detectable = np.zeros(len(events), bool)
    for e, s in true_sets.items():
        detectable[e] = len(s) >= min_picks
    t0 = events[:, 0]
    gap = np.full(len(t0), np.inf)
    if len(t0) > 1:
        dt = np.diff(t0)
        gap[1:] = dt
        gap[:-1] = np.minimum(gap[:-1], dt)
    found = np.zeros(len(events), bool)
    for _, e in pairs:
        found[e] = True
    tp = len(pairs)
    precision = tp / len(preds) if preds else 0.0
    recall = found[detectable].mean() if detectable.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    by_gap = {}
    for label, lo, hi in (("<1s", 0, 1), ("1-3s", 1, 3), ("3-10s", 3, 10), (">10s", 10, np.inf)):
        m = detectable & (gap >= lo) & (gap < hi)
        by_gap[label] = (found[m].mean() if m.any() else float("nan"), int(m.sum()))
    epi = [float(distance_km(preds[k][1], preds[k][2], events[e, 1], events[e, 2])) for k, e in pairs]
    dto = [abs(preds[k][0] - events[e, 0]) for k, e in pairs]
    ddep = [abs(preds[k][4] - events[e, 3]) for k, e in pairs]
    inside = [in_ellipse(preds[k], events[e]) for k, e in pairs if preds[k][5] is not None]
    return dict(precision=precision, recall=recall, f1=f1, by_gap=by_gap, n_pred=len(preds),
                n_detectable=int(detectable.sum()), n_events=len(events),
                epi_med=float(np.median(epi)) if epi else float("nan"),
                dt_med=float(np.median(dto)) if dto else float("nan"),
                errors={"epi km": epi, "depth km": ddep, "time s": dto},
                coverage=float(np.mean(inside)) if inside else float("nan"))


def in_ellipse(pred, event) -> bool:
    """Whether the true epicentre lies inside the predicted 68 % error ellipse."""
    ell = pred[5]
    ky = 111.19
    v = np.array([(event[2] - pred[2]) * ky * np.cos(np.radians(pred[1])), (event[1] - pred[1]) * ky])
    a = np.radians(ell["azimuth_deg"])
    major, minor = np.array([np.sin(a), np.cos(a)]), np.array([np.cos(a), -np.sin(a)])
    return bool((v @ major / max(ell["semi_major_km"], 1e-6)) ** 2 + (v @ minor / max(ell["semi_minor_km"], 1e-6)) ** 2 <= 1.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", action="append", choices=sorted(SCENARIOS) + ["all"],
                    help=f"default: {', '.join(DEFAULT_SCENARIOS)}; 'all' = every scenario")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-pyocto", action="store_true")
    args = ap.parse_args(argv)
    stations = bench_stations()
    t = time.perf_counter()
    table = load_table(str(DATA / "Oklahoma.nd"), max_distance_km=400.0, max_depth_km=40.0)
    print(f"stations: {len(stations)} in a {2 * HALF_KM:.0f} km box around {CENTRE}; "
          f"1D table from Oklahoma.nd in {time.perf_counter() - t:.1f} s")
    settings = AssociatorSettings()
    have_pyocto = False
    if not args.no_pyocto:
        try:
            import pyocto  # noqa: F401

            have_pyocto = True
        except ImportError as exc:
            print(f"PyOcto not available ({exc}); running rtpick only")
    # warm the numba kernels (compiled once, cached on disk) outside the timings
    warm_events, warm_picks, _ = generate(Scenario("warm", 2000, 120, 0.5), stations, table, 99)
    run_rtpick(warm_picks, stations, table, settings)
    workdir = tempfile.mkdtemp(prefix="rtpick-bench-")
    rows = []
    names = list(SCENARIOS) if "all" in (args.scenario or []) else (args.scenario or list(DEFAULT_SCENARIOS))
    for name in names:
        sc = SCENARIOS[name]
        events, picks, truth = generate(sc, stations, table, args.seed)
        print(f"\n== {name}: {len(events)} events in {sc.duration_s / 60:.0f} min "
              f"({sc.events_per_day:.0f}/day), {len(picks)} picks ({(truth >= 0).sum()} true), noise factor {sc.noise_factor}")
        results = []
        preds, rt, mb, lat = run_rtpick(picks, stations, table, settings)
        results.append(("rtpick", evaluate(preds, events, truth, settings.min_picks), rt, mb, lat))
        if have_pyocto:
            for mit in (3.0, 0.5):
                preds, rt, mb = run_pyocto(picks, stations, table, settings, mit, workdir)
                results.append((f"pyocto(mit={mit:g})", evaluate(preds, events, truth, settings.min_picks), rt, mb, None))
        print(f"{'associator':<18} {'prec':>5} {'rec':>5} {'F1':>5} {'<1s':>10} {'1-3s':>10} {'3-10s':>10} {'>10s':>10} "
              f"{'epi km':>6} {'dt s':>5} {'run s':>6} {'MB':>6} {'latency s (med/p95)':>20}")
        for label, m, rt, mb, lat in results:
            gaps = " ".join(f"{r:5.2f}({n:3d})" if n else f"{'-':>10}" for r, n in m["by_gap"].values())
            latency = f"{np.median(lat):.2f}/{np.percentile(lat, 95):.2f}" if lat is not None and len(lat) else "batch"
            print(f"{label:<18} {m['precision']:5.2f} {m['recall']:5.2f} {m['f1']:5.2f} {gaps} "
                  f"{m['epi_med']:6.2f} {m['dt_med']:5.2f} {rt:6.2f} {mb:6.0f} {latency:>20}")
            rows.append((name, label, m, rt, mb))
        print(f"(detectable events: {results[0][1]['n_detectable']}; predictions: "
              + ", ".join(f"{lab} {m['n_pred']}" for lab, m, *_ in results) + ")")
        print(f"{'location (matched)':<18} {'n':>4} " + " ".join(f"{k + ' med/p90':>17}" for k in ("epi km", "depth km", "time s"))
              + f" {'in 68% ellipse':>15}")
        for label, m, *_ in results:
            errs = " ".join(f"{np.median(v):8.2f}/{np.percentile(v, 90):<8.2f}" if v else f"{'-':>17}" for v in m["errors"].values())
            cover = "-" if np.isnan(m["coverage"]) else f"{m['coverage']:.2f}"
            print(f"{label:<18} {len(m['errors']['epi km']):4d} {errs} {cover:>15}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
