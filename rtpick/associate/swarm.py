"""Swarm-aware streaming associator: origin-time backprojection with greedy, exclusive extraction.

Every pick votes, at every node of a coarse hypocentre grid, for the origin times
it implies (``t - tt(node, station, phase) ± node tolerance``); the votes, weighted
by pick probability, accumulate in a ring buffer over origin time. Repeatedly, the
best (node, origin time) cell is refined by a coarse-to-fine grid search that keeps
at most one pick per station and phase (the best fitting one): if the minimum pick
configuration is met the event is emitted at once and its picks leave the stack,
so a second event a second later at another place is found next from the remaining
picks. Events are separated by pick exclusivity alone; the one merge rule joins a
new candidate to an open event when they share (almost) no station/phase slot and
one joint solution fits nearly all picks of both (an early, mislocated detection).
Later picks attach to the open event that predicts them best (replacing a worse
pick of the same station and phase, which returns to the pool) and trigger
revisions. Every revision is then located by :class:`rtpick.associate.locate.Locator`
(hypocentre, uncertainties, rejected outliers); the grid solution stays the
associator's own reference for attaching picks. See docs/association.md.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace

import numpy as np

from rtpick.associate import kernels
from rtpick.associate.early import close_lifecycles
from rtpick.associate.locate import Locator, LocatorSettings
from rtpick.associate.settings import LIVE_SETTINGS, AssociatorSettings
from rtpick.associate.stations import Stations, distance_km
from rtpick.associate.traveltime import TravelTimeTable
from rtpick.types import NS_PER_S, Event, Pick

log = logging.getLogger(__name__)
_PH = {"P": 0, "S": 1}
STAGES = ("ingest", "attach", "relocate", "detect", "expire", "locate")
__all__ = ["STAGES", "AssociatorSettings", "SwarmAssociator"]


@dataclass
class _OpenEvent:
    event: Event
    lat: float
    lon: float
    depth: float
    t0: float  # s after the associator's base time
    slots: dict = field(default_factory=dict)  # (station, phase) -> pick row
    pred: np.ndarray | None = None  # (n_stations, 2) predicted arrival (s after base)
    n_at_emit: int = 0
    dist: np.ndarray | None = None  # epicentral distance to every station, km
    radius: float = 0.0  # farthest associated station, km
    dirty: bool = False
    first_seen: float = 0.0
    rejected: dict = field(default_factory=dict)  # id(pick) -> (pick, residual s) the locator rejected; never swept back
    refresh: bool = False  # a preliminary pick was finalised or retracted: revise at the next step (rtpick.associate.early)


class SwarmAssociator:
    """Streaming associator. ``push`` picks, call ``step(now_ns)`` regularly, ``flush`` at the end."""

    def __init__(self, stations: Stations, table: TravelTimeTable, settings: AssociatorSettings | None = None,
                 bounds: tuple[float, float, float, float] | None = None):
        self.s = settings or AssociatorSettings()
        self.stations = stations
        self.table = table
        self._index = stations.index()
        self.counters: dict[str, int] = defaultdict(int)
        self.stage_seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)  # wall time per stage (metrics)
        self._locate_pending = 0.0  # locator time inside the current stage (booked as 'locate' instead)
        self.locator = Locator(stations, table, LocatorSettings(
            depth_prior_km=self.s.depth_prior_km, depth_prior_sigma_km=self.s.depth_prior_sigma_km,
            max_depth_km=self.s.max_depth_km))
        self._ids = itertools.count()
        self._base_ns: int | None = None
        n_sta = len(stations)
        self._sta_corr = np.stack([stations.elevation_m / 1000.0 / table.surface_velocity[0],
                                   stations.elevation_m / 1000.0 / table.surface_velocity[1]], axis=1)
        _, self._site = np.unique(np.round(np.stack([stations.latitude, stations.longitude], 1), 3), axis=0, return_inverse=True)
        self._site = self._site.ravel()
        self._build_grid(bounds)
        self._max_tt = float(self._node_tt.max() + self._node_tol.max())  # (before the voting cutoff)
        self._n_ring = int(np.ceil((self.s.horizon_s + self._max_tt + 20.0) / self.s.bin_s))
        self._stack = np.zeros((self._n_ring, self._n_nodes), np.float32)
        self._rejected = np.zeros_like(self._stack)
        self._cleared_to = None  # absolute bin below which the ring holds nothing
        # pick pool (rows appended; state 0 free, 1 in an event, -1 gone)
        self._p_sta = np.zeros(0, np.int32)
        self._p_ph = np.zeros(0, np.int8)
        self._p_t = np.zeros(0, np.float64)
        self._p_w = np.zeros(0, np.float32)
        self._p_state = np.zeros(0, np.int8)
        self._p_obj: list[Pick] = []
        self._new: list[Pick] = []
        self._closing: list[Pick] = []  # finals and retractions of preliminary picks (rtpick.associate.early)
        self._life: dict[str, Pick] = {}  # lifecycle id -> preliminary pick in the pool
        self._open: list[_OpenEvent] = []
        self._last_step: float | None = None
        self._stack_changed = False
        self._vote_window: np.ndarray | None = None
        self._newest = -np.inf
        self._n_sta = n_sta

    # ------------------------------------------------------------------ setup
    def _build_grid(self, bounds):
        st = self.stations
        if bounds is None:
            dlat = self.s.margin_km / 111.19
            dlon = dlat / np.cos(np.radians(st.latitude.mean()))
            bounds = (st.latitude.min() - dlat, st.latitude.max() + dlat, st.longitude.min() - dlon, st.longitude.max() + dlon)
        self.bounds = bounds
        lat0, lat1, lon0, lon1 = bounds
        ky = 111.19
        kx = ky * np.cos(np.radians((lat0 + lat1) / 2))
        h = self.s.grid_spacing_km
        lats = np.arange(lat0 + h / ky / 2, lat1, h / ky)
        lons = np.arange(lon0 + h / kx / 2, lon1, h / kx)
        deps = np.asarray(self.s.depths_km, float)
        size = len(lats) * len(lons) * len(deps) * len(st)
        if size > 40_000_000:
            raise ValueError(
                f"association grid too large: {len(lats)}x{len(lons)}x{len(deps)} nodes x {len(st)} stations; "
                "restrict the stations (associate.region) or coarsen associate.grid_spacing_km"
            )
        glat, glon, gdep = np.meshgrid(lats, lons, deps, indexing="ij")
        self._g_lat, self._g_lon, self._g_dep = glat.ravel(), glon.ravel(), gdep.ravel()
        self._n_nodes = len(self._g_lat)
        self._kx, self._ky = kx, ky
        n_sta = len(st)
        dz_half = np.diff(deps).max() / 2 if len(deps) > 1 else 3.0
        tt = np.zeros((self._n_nodes, n_sta, 2), np.float32)
        tol = np.zeros_like(tt)
        offsets = [(0, 0, 0)] + [(a, b, c) for a in (-0.5, 0.5) for b in (-0.5, 0.5) for c in (-1, 1)]
        for ph in (0, 1):
            vals = []
            for ox, oy, oz in offsets:
                d = distance_km(self._g_lat[:, None] + oy * h / ky, self._g_lon[:, None] + ox * h / kx,
                                st.latitude[None, :], st.longitude[None, :])
                z = np.clip(self._g_dep[:, None] + oz * dz_half, 0.0, self.table.max_depth_km)
                vals.append(self.table(ph, d, z))
            vals = np.stack(vals)
            centre = vals[0] + self._sta_corr[None, :, ph]
            spread = np.abs(vals - vals[0]).max(axis=0)
            tt[:, :, ph] = centre
            tol[:, :, ph] = spread + np.maximum(self.s.tolerance_s, self.s.tolerance_fraction * centre)
        d_centre = distance_km(self._g_lat[:, None], self._g_lon[:, None], st.latitude[None, :], st.longitude[None, :])
        tol[d_centre > self.s.vote_distance_km] = -1.0
        self._node_tt = tt
        self._node_tol = tol
        # neighbours (same and adjacent columns, all depths) for rejection marking
        ni, nj, nk = glat.shape
        idx = np.arange(self._n_nodes).reshape(ni, nj, nk)
        neigh = np.full((self._n_nodes, 27 * nk), -1, np.int64)
        for i in range(ni):
            for j in range(nj):
                cells = idx[max(0, i - 1):i + 2, max(0, j - 1):j + 2, :].ravel()
                for k in range(nk):
                    neigh[idx[i, j, k], :len(cells)] = cells
        self._neigh = neigh
        g = np.linspace(-1.0, 1.0, 5)
        gx, gy, gz = np.meshgrid(g, g, g, indexing="ij")
        self._unit_offsets = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], axis=1)
        self._buf_v = np.zeros(200_000, np.float32)
        self._buf_b = np.zeros(200_000, np.int64)
        self._buf_n = np.zeros(200_000, np.int64)

    # ------------------------------------------------------------------ input
    def push(self, pick: Pick) -> bool:
        """Queue a pick; False (and counted) if its station is unknown or its phase not P/S."""
        self.counters["picks_in"] += 1
        if not self.knows_station(pick.station_key):
            self.counters["picks_unknown_station"] += 1
            return False
        if pick.phase not in _PH:
            self.counters["picks_unknown_phase"] += 1
            return False
        if self._base_ns is None:
            self._base_ns = pick.time_ns - int(600 * NS_PER_S)
        if pick.status == "retracted" or (pick.status == "final" and pick.lifecycle_id in self._life):
            self._closing.append(pick)
            return True
        if pick.status == "retracted":
            return True
        if pick.status == "preliminary":
            self._life[pick.lifecycle_id] = pick
        self._new.append(pick)
        return True

    def knows_station(self, key: str) -> bool:
        """Whether ``NET.STA`` (or its bare ``STA``) has coordinates."""
        return key in self._index or key.split(".")[-1] in self._index

    @property
    def newest_ns(self) -> int | None:
        """Time of the newest pick processed (the associator's data clock), or None before any."""
        if self._base_ns is None or not np.isfinite(self._newest):
            return None
        return self._base_ns + int(round(self._newest * NS_PER_S))

    def _sec(self, ns: int) -> float:
        return (ns - self._base_ns) / NS_PER_S

    def _bin(self, sec: float) -> int:
        return int(np.floor(sec / self.s.bin_s))

    # ------------------------------------------------------------------ main loop
    def step(self, now_ns: int | None = None) -> list[Event]:
        """Process queued picks; returns new events and revisions. ``now_ns`` defaults to the newest pick."""
        if self._base_ns is None:
            return []
        out: list[Event] = []
        self._locate_pending = 0.0
        clock = time.perf_counter()
        rows = self._ingest()
        now = self._newest if now_ns is None else max(self._sec(now_ns), self._newest)
        self._update_rates(now)
        clock = self._lap("ingest", clock)
        self._attach(rows, out)
        if self._closing:
            closing, self._closing = self._closing, []
            close_lifecycles(self, closing, out)
        clock = self._lap("attach", clock)
        self._relocate_dirty(out)
        clock = self._lap("relocate", clock)
        self._detect(now, out)
        clock = self._lap("detect", clock)
        self._expire(now, out)
        self._lap("expire", clock)
        return out

    def _lap(self, stage: str, since: float) -> float:
        """Add the time since ``since`` to a stage (locating inside a stage counts as 'locate' only)."""
        now = time.perf_counter()
        self.stage_seconds[stage] += now - since - self._locate_pending
        self._locate_pending = 0.0
        return now

    @property
    def open_events(self) -> int:
        """Events not yet final."""
        return len(self._open)

    def apply_live_settings(self, new: AssociatorSettings) -> list[str]:
        """Take the :data:`LIVE_SETTINGS` of ``new`` now (SIGHUP); returns the other changed keys,
        which shape the grid, tables or pick pool and need a restart."""
        changed = [k for k in AssociatorSettings.__dataclass_fields__ if getattr(new, k) != getattr(self.s, k)]
        for key in changed:
            if key in LIVE_SETTINGS:
                setattr(self.s, key, getattr(new, key))
        self.locator.s = replace(self.locator.s, depth_prior_km=self.s.depth_prior_km,
                                 depth_prior_sigma_km=self.s.depth_prior_sigma_km)
        return [k for k in changed if k not in LIVE_SETTINGS]

    @property
    def pool_size(self) -> int:
        """Free picks waiting in the pool (not in an event, not expired)."""
        return int((self._p_state == 0).sum())

    def flush(self) -> list[Event]:
        """Process everything queued and finalise all open events."""
        out = self.step()
        for ev in list(self._open):
            out += self._finalise(ev)
        self._open.clear()
        return out

    def run(self, picks, step_s: float | None = None) -> list[Event]:
        """Offline convenience: feed picks in time order, stepping every ``step_s`` of pick time."""
        step = step_s or self.s.step_s
        out: list[Event] = []
        next_ns = None
        for pick in sorted(picks, key=lambda p: p.time_ns):
            if next_ns is not None and pick.time_ns >= next_ns:
                out += self.step(next_ns)
                next_ns = None
            self.push(pick)
            if next_ns is None:
                next_ns = pick.time_ns + int(step * NS_PER_S)
        out += self.flush()
        return out

    # ------------------------------------------------------------------ stages
    def _ingest(self) -> np.ndarray:
        if not self._new:
            return np.zeros(0, np.int64)
        picks, self._new = self._new, []
        sta = np.array([self._index.get(p.station_key, self._index.get(p.station_key.split(".")[-1])) for p in picks], np.int32)
        ph = np.array([_PH[p.phase] for p in picks], np.int8)
        t = np.array([self._sec(p.time_ns) for p in picks])
        w = np.array([p.probability if self.s.use_probability else 1.0 for p in picks], np.float32)
        w = np.clip(w, 0.05, 1.0)
        start = len(self._p_t)
        self._p_sta = np.concatenate([self._p_sta, sta])
        self._p_ph = np.concatenate([self._p_ph, ph])
        self._p_t = np.concatenate([self._p_t, t])
        self._p_w = np.concatenate([self._p_w, w])
        self._p_state = np.concatenate([self._p_state, np.zeros(len(picks), np.int8)])
        self._p_obj += picks
        self._newest = max(self._newest, float(t.max()))
        return np.arange(start, start + len(picks))

    def _vote(self, rows: np.ndarray, sign: float) -> None:
        if len(rows) == 0:
            return
        self._stack_changed = True
        lo = self._cleared_to if self._cleared_to is not None else -(1 << 60)
        kernels.stack_update(self._stack, self._node_tt, self._node_tol, self._p_sta[rows], self._p_ph[rows],
                             self._p_t[rows], self._p_w[rows], np.float32(sign), self.s.bin_s, 0, self._n_ring, lo)

    def _tol(self, tt):
        return np.maximum(self.s.tolerance_s, self.s.tolerance_fraction * tt)

    def _attach(self, rows: np.ndarray, out: list[Event]) -> None:
        """New picks join the open event that predicts them best, else the pool (and the stack)."""
        free = []
        if self._open and len(rows):
            pred = np.stack([ev.pred for ev in self._open])  # (E, S, 2)
            t0s = np.array([ev.t0 for ev in self._open])
            reach = np.stack([ev.dist <= 2 * ev.radius + self.s.attach_margin_km for ev in self._open])  # (E, S)
            for row in rows:
                s, ph, t = self._p_sta[row], self._p_ph[row], self._p_t[row]
                arr = pred[:, s, ph]
                res = t - arr
                norm = np.abs(res) / self._tol(arr - t0s)
                norm[~reach[:, s]] = np.inf
                order = np.argsort(norm)
                placed = False
                for e in order[:3]:
                    if norm[e] >= 1.0:
                        break
                    ev = self._open[e]
                    old = ev.slots.get((s, ph))
                    if old is None:
                        ev.slots[(s, ph)] = row
                    else:
                        old_norm = abs(self._p_t[old] - arr[e]) / self._tol(arr[e] - t0s[e])
                        if old_norm <= norm[e]:
                            continue
                        ev.slots[(s, ph)] = row
                        self._p_state[old] = 0
                        free.append(old)
                    self._p_state[row] = 1
                    ev.dirty = True
                    placed = True
                    break
                if not placed:
                    free.append(row)
        else:
            free = list(rows)
        self._vote(np.asarray(free, np.int64), +1.0)

    def _relocate_dirty(self, out: list[Event]) -> None:
        for ev in self._open:
            if not ev.dirty:
                continue
            n = len(ev.slots)
            first_s = ev.event.n_s == 0 and any(ph == 1 for (_, ph) in ev.slots)
            if n - ev.n_at_emit < max(2, 0.25 * ev.n_at_emit) and not first_s and not ev.refresh:
                continue
            ev.dirty = ev.refresh = False
            rows = np.array(list(ev.slots.values()), np.int64)
            sol = self._locate(rows, ev.lat, ev.lon, ev.depth, ev.t0, span_km=self.s.grid_spacing_km)
            if sol is None:
                continue
            lat, lon, dep, t0, keep, res = sol
            dropped = [r for r in rows if r not in set(keep)]
            if dropped:
                d = np.array(dropped, np.int64)
                self._p_state[d] = 0
                self._vote(d, +1.0)
            self._set_solution(ev, lat, lon, dep, t0, keep, res)
            self._sweep_pool(ev)
            out.append(self._emit(ev))

    def _sweep_pool(self, ev: _OpenEvent) -> None:
        """Free picks that the (re)located event now predicts, for station/phase slots it lacks
        (they arrived before its location reached them); they join at the next revision."""
        free = np.flatnonzero(self._p_state == 0)
        if not len(free):
            return
        sta, ph = self._p_sta[free], self._p_ph[free]
        arr = ev.pred[sta, ph]
        norm = np.abs(self._p_t[free] - arr) / self._tol(arr - ev.t0)
        ok = (norm < 1.0) & (ev.dist[sta] <= 2 * ev.radius + self.s.attach_margin_km)
        added = []
        for i in np.flatnonzero(ok)[np.argsort(norm[ok])]:
            key = (int(sta[i]), int(ph[i]))
            if key not in ev.slots and id(self._p_obj[free[i]]) not in ev.rejected:
                ev.slots[key] = int(free[i])
                added.append(free[i])
        if added:
            rows = np.asarray(added, np.int64)
            self._p_state[rows] = 1
            self._vote(rows, -1.0)
            ev.dirty = True

    def _detect(self, now: float, out: list[Event]) -> None:
        """Refine the strongest stack cells, best first; accepted events remove their picks."""
        if not self._stack_changed:
            return
        self._stack_changed = False
        b_hi = self._bin(now) + 1
        b_lo = max(self._bin(now - self._max_tt - 2 * self.s.step_s), self._cleared_to or -(1 << 60))
        threshold = self._node_threshold()
        k = kernels.collect_peaks(self._stack, self._rejected, b_lo, b_hi, self._n_ring, threshold,
                                  self.s.retry_margin, self._buf_v, self._buf_b, self._buf_n)
        if k == 0:
            return
        order = np.argsort(-self._buf_v[:k])[: self.s.max_candidates_per_step]
        for i in order:
            b, node = int(self._buf_b[i]), int(self._buf_n[i])
            r = b % self._n_ring
            if self._stack[r, node] < threshold[node]:
                continue  # an accepted event took these picks
            if self._stack[r, node] <= self._rejected[r, node] + self.s.retry_margin:
                continue  # next to a candidate that just failed
            t0 = (b + 0.5) * self.s.bin_s
            ev = self._candidate(node, t0)
            if ev is None:
                kernels.reject_region(self._stack, self._rejected, b, node, self._neigh, self._n_ring)
                self.counters["candidates_rejected"] += 1
            else:
                out.append(ev)

    def _candidate(self, node: int, t0: float) -> Event | None:
        tt = self._node_tt[node]  # (S, 2)
        tol = self._node_tol[node]
        pred = t0 + tt[self._p_sta, self._p_ph]
        ok = (self._p_state == 0) & (np.abs(self._p_t - pred) <= tol[self._p_sta, self._p_ph] + self.s.bin_s)
        rows = np.flatnonzero(ok)
        if len(rows) < self.s.min_picks:
            return None
        site_phase = np.unique(self._site[self._p_sta[rows]] * 2 + self._p_ph[rows])
        if len(site_phase) < self.s.min_picks or (site_phase % 2 == 0).sum() < self.s.min_p:
            return None
        sol = self._locate(rows, self._g_lat[node], self._g_lon[node], self._g_dep[node], t0,
                           span_km=2 * self.s.grid_spacing_km)
        if sol is None:
            return None
        lat, lon, dep, t0, keep, res = sol
        merged = self._try_merge(lat, lon, dep, t0, keep)
        if merged is not None:
            return merged
        ev = _OpenEvent(Event(event_id=f"rtp{next(self._ids):07d}", revision=-1, origin_time_ns=0, latitude=lat,
                              longitude=lon, depth_km=dep, horizontal_uncertainty_km=0.0, depth_uncertainty_km=0.0,
                              time_uncertainty_s=0.0), lat, lon, dep, t0)
        self._p_state[keep] = 1
        self._vote(keep, -1.0)
        self._set_solution(ev, lat, lon, dep, t0, keep, res)
        self._open.append(ev)
        self.counters["events"] += 1
        return self._emit(ev)

    def _try_merge(self, lat, lon, dep, t0, keep) -> Event | None:
        """A candidate whose picks complete an open event (no station/phase in common, one joint
        solution fits nearly all picks of both) is that event, detected early and mislocated
        from its first picks: merge instead of splitting it in two."""
        cand_slots = {(int(self._site[self._p_sta[r]]), int(self._p_ph[r])) for r in keep}
        for ev in self._open:
            if abs(ev.t0 - t0) > self.s.merge_window_s:
                continue
            ev_slots = {(int(self._site[s]), ph) for (s, ph) in ev.slots}
            if len(ev_slots & cand_slots) > 0.25 * min(len(ev_slots), len(cand_slots)):
                continue
            n_slots = len(ev_slots | cand_slots)
            union = np.unique(np.concatenate([np.array(list(ev.slots.values()), np.int64), keep]))
            starts = [(lat, lon, dep, t0), (ev.lat, ev.lon, ev.depth, ev.t0)]
            if len(ev.slots) > len(keep):
                starts.reverse()
            for slat, slon, sdep, st0 in starts:
                sol = self._locate(union, slat, slon, sdep, st0, span_km=self.s.grid_spacing_km)
                if sol is not None and len(sol[4]) >= self.s.merge_fraction * n_slots:
                    break
            else:
                continue
            nlat, nlon, ndep, nt0, nkeep, nres = sol
            newly = np.setdiff1d(keep, nkeep)  # candidate picks that did not make it back to the pool
            self._p_state[nkeep] = 1
            self._vote(np.setdiff1d(nkeep, np.array(list(ev.slots.values()), np.int64)), -1.0)
            released = np.setdiff1d(np.array(list(ev.slots.values()), np.int64), nkeep)
            if len(released):
                self._p_state[released] = 0
                self._vote(released, +1.0)
            del newly
            self._set_solution(ev, nlat, nlon, ndep, nt0, nkeep, nres)
            self.counters["merges"] += 1
            return self._emit(ev)
        return None

    def _locate(self, rows, lat, lon, dep, t0, span_km):
        """Coarse-to-fine grid search; returns the solution and the picks kept (one per station/phase)."""
        st = self.stations
        order = np.lexsort((self._p_t[rows], self._p_ph[rows], self._p_sta[rows]))
        rows = rows[order]
        sta, ph, t, w = self._p_sta[rows], self._p_ph[rows], self._p_t[rows], self._p_w[rows].astype(np.float64)
        group = sta.astype(np.int64) * 2 + ph
        best = (lat, lon, dep)
        span_z = max(4.0, span_km)
        unit = self._unit_offsets
        n_trials = len(unit)
        out_t0 = np.empty(n_trials)
        out_sc = np.empty(n_trials)
        out_n = np.empty(n_trials, np.int64)
        ph64 = ph.astype(np.int64)
        for level in range(4):
            tl = np.clip(best[0] + unit[:, 1] * span_km / self._ky, self.bounds[0], self.bounds[1])
            tn = np.clip(best[1] + unit[:, 0] * span_km / self._kx, self.bounds[2], self.bounds[3])
            td = np.clip(best[2] + unit[:, 2] * span_z, 0.0, self.s.max_depth_km)
            kernels.score_trials(tl, tn, td, sta, ph64, t, w, group, st.latitude, st.longitude,
                                 self._sta_corr, self.table.times, self.table.depth_step_km,
                                 self.table.distance_step_km, self.s.tolerance_s, self.s.tolerance_fraction,
                                 out_t0, out_sc, out_n)
            i = int(np.argmax(out_sc))
            best = (tl[i], tn[i], td[i])
            t0 = out_t0[i]
            if level == 0 and out_n[i] < self.s.min_picks - 1:
                return None  # cannot reach the minimum configuration: skip the finer levels
            span_km /= 2.5
            span_z /= 2.5
        lat, lon, dep = best
        b = self.bounds
        edge = 1.0 / self._ky
        if min(lat - b[0], b[1] - lat) < edge or min((lon - b[2]) * self._kx, (b[3] - lon) * self._kx) < 1.0:
            return None  # pinned to the search-area edge: a trade-off ghost or an event outside the area
        d = distance_km(lat, lon, st.latitude[sta], st.longitude[sta])
        tt = np.where(ph == 0, self.table(0, d, dep), self.table(1, d, dep)) + self._sta_corr[sta, ph]
        res = t - t0 - tt
        tol = self._tol(tt)
        good = np.abs(res) < tol
        kern = np.where(good, w * (1 - (res / tol) ** 2), -1.0)
        # one pick per station and phase: the best kernel value in each group
        by = np.lexsort((-kern, group))
        first = np.ones(len(by), bool)
        first[1:] = group[by][1:] != group[by][:-1]
        keep_mask = np.zeros(len(rows), bool)
        keep_mask[by[first]] = True
        keep_mask &= good
        radius = self._radius(sta, ph, keep_mask, lat, lon, dep, t0)
        keep_mask &= distance_km(lat, lon, st.latitude[sta], st.longitude[sta]) <= radius
        kept_rows = rows[keep_mask]
        if not self._config_ok(kept_rows, kern[keep_mask], lat, lon, dep, radius):
            return None
        return lat, lon, dep, t0, kept_rows, res[keep_mask]

    def _radius(self, sta, ph, keep_mask, lat, lon, dep, t0) -> float:
        """Detection radius: the farthest station with a P pick such that, of the stations whose P
        should have arrived by now that are at most this far, a ``min_pick_fraction`` share has
        one. Random picks that happen to fit far away lie outside it and are dropped."""
        st = self.stations
        d = distance_km(lat, lon, st.latitude, st.longitude)
        has = np.zeros(self._n_sta, bool)
        has[sta[keep_mask & (ph == 0)]] = True
        arrived = (t0 + self.table(0, d, dep) <= self._newest) | has
        order = np.argsort(d)
        order = order[arrived[order]]
        if not has.any():
            return 0.0
        cover = np.cumsum(has[order]) / np.arange(1, len(order) + 1)
        ok = has[order] & (cover >= self.s.min_pick_fraction)
        if not ok.any():
            return 0.0
        return float(d[order][np.flatnonzero(ok)[-1]]) + 1.0

    def _update_rates(self, now: float) -> None:
        """Background pick rate per station and phase (picks/s over the horizon), and mean weight."""
        recent = self._p_t >= now - self.s.horizon_s
        span = self.s.horizon_s  # (a short history underestimates the rate rather than mistaking one event for it)
        idx = self._p_sta[recent].astype(np.int64) * 2 + self._p_ph[recent]
        self._rate = np.bincount(idx, minlength=2 * self._n_sta).reshape(-1, 2) / span
        self._mean_w = float(self._p_w[recent].mean()) if recent.any() else 0.5

    def _node_threshold(self) -> np.ndarray:
        """Stack threshold per node: the fixed threshold over the votes random picks would give there."""
        if self._vote_window is None:  # (nodes, stations*2): seconds of origin time each slot votes for
            self._vote_window = np.where(self._node_tol >= 0, 2.0 * self._node_tol + self.s.bin_s, 0.0).reshape(self._n_nodes, -1).astype(np.float64)
        bg = (self._vote_window @ self._rate.ravel()) * self._mean_w
        return (self.s.stack_threshold + bg + 1.5 * np.sqrt(bg)).astype(np.float32)

    def _background(self, lat, lon, dep, radius) -> tuple[float, float]:
        """Expected number of random picks fitting an event here (stations within ``radius``), and their score."""
        d = distance_km(lat, lon, self.stations.latitude, self.stations.longitude)
        tt = np.stack([self.table(0, d, dep), self.table(1, d, dep)], axis=1)
        n = float((self._rate * 2 * self._tol(tt))[d <= radius].sum())
        return n, n * self._mean_w * 2.0 / 3.0

    def _config_ok(self, rows, kern, lat, lon, dep, radius) -> bool:
        s = self.s
        bg_n, bg_score = self._background(lat, lon, dep, radius)
        stations = np.unique(self._p_sta[rows])
        sites = np.unique(self._site[stations])  # co-located stations (renamed or duplicated) count once
        site_phase = np.unique(self._site[self._p_sta[rows]] * 2 + self._p_ph[rows])
        n_p = int((site_phase % 2 == 0).sum())
        if len(site_phase) < s.min_picks + int(bg_n) or n_p < s.min_p or len(site_phase) - n_p < s.min_s:
            return False
        return len(sites) >= s.min_stations and kern.sum() - bg_score >= s.min_score

    def _set_solution(self, ev: _OpenEvent, lat, lon, dep, t0, rows, res) -> None:
        ev.lat, ev.lon, ev.depth, ev.t0 = float(lat), float(lon), float(dep), float(t0)
        ev.slots = {(int(self._p_sta[r]), int(self._p_ph[r])): int(r) for r in rows}
        st = self.stations
        d = distance_km(lat, lon, st.latitude, st.longitude)
        ev.pred = t0 + np.stack([self.table(0, d, dep), self.table(1, d, dep)], axis=1) + self._sta_corr
        ev.dist = d
        ev.radius = float(d[self._p_sta[rows]].max()) if len(rows) else 0.0
        ev.n_at_emit = len(rows)
        clock = time.perf_counter()
        rows, res = self._publish_location(ev, np.asarray(rows, np.int64), np.asarray(res, float))
        elapsed = time.perf_counter() - clock
        self._locate_pending += elapsed
        self.stage_seconds["locate"] += elapsed
        e = ev.event
        e.picks = [(self._p_obj[r], float(x)) for r, x in zip(rows, res)]
        e.picks.sort(key=lambda pr: pr[0].time_ns)
        e.score = float(self._p_w[rows].sum())

    def _publish_location(self, ev: _OpenEvent, rows: np.ndarray, res: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Locate the event's picks (:class:`Locator`) and put the solution in the event message.

        Rejected picks leave the event's slots and go back to the pool (they may
        belong to another event); the rows kept and their residuals are returned.
        Without a solution (too few picks) the grid solution is published with
        rough errors: residual spread over the redundancy, scaled.
        """
        e = ev.event
        picks = [self._p_obj[r] for r in rows]
        loc = self.locator.locate(self._p_sta[rows], self._p_ph[rows], self._p_t[rows],
                                  np.array([p.uncertainty_s for p in picks]),
                                  self._p_w[rows] if self.s.use_probability else np.ones(len(rows)),
                                  (ev.lat, ev.lon, ev.depth, ev.t0))
        e.extra.pop("location", None)
        if loc is None:
            e.latitude, e.longitude, e.depth_km = ev.lat, ev.lon, ev.depth
            e.origin_time_ns = self._base_ns + int(round(ev.t0 * NS_PER_S))
            rms = float(np.sqrt(np.mean(np.square(res)))) if len(res) else 0.0
            e.rms_residual_s = rms
            e.time_uncertainty_s = rms / np.sqrt(max(len(rows) - 4, 1)) + 0.05
            e.horizontal_uncertainty_km = 6.0 * e.time_uncertainty_s + 0.5
            e.depth_uncertainty_km = 2.0 * e.horizontal_uncertainty_km
            return rows, res
        self.counters["locations"] += 1
        rejected = rows[~loc.used]
        if len(rejected):
            self.counters["picks_rejected_by_locator"] += len(rejected)
            for r, x in zip(rejected, loc.residuals_s[~loc.used]):
                ev.slots.pop((int(self._p_sta[r]), int(self._p_ph[r])), None)
                ev.rejected[id(self._p_obj[r])] = (self._p_obj[r], float(x))
            self._p_state[rejected] = 0
            self._vote(rejected, +1.0)
        e.extra["rejected_picks"] = sorted(ev.rejected.values(), key=lambda pr: pr[0].time_ns)
        e.latitude, e.longitude, e.depth_km = loc.latitude, loc.longitude, loc.depth_km
        e.origin_time_ns = self._base_ns + int(round(loc.origin_s * NS_PER_S))
        e.rms_residual_s = loc.rms_s
        e.horizontal_uncertainty_km = loc.semi_major_km
        e.depth_uncertainty_km = loc.depth_uncertainty_km
        e.time_uncertainty_s = loc.time_uncertainty_s
        e.extra["location"] = loc.message_fields()
        return rows[loc.used], loc.residuals_s[loc.used]

    def _emit(self, ev: _OpenEvent) -> Event:
        e = ev.event
        e.revision += 1
        e.created_ns = time.time_ns()
        snap = Event(**{f: getattr(e, f) for f in e.__dataclass_fields__})
        snap.picks = list(e.picks)
        snap.extra = dict(e.extra)
        return snap

    def _finalise(self, ev: _OpenEvent) -> list[Event]:
        """The last revision (``final``): relocated if picks joined since the previous one."""
        ev.event.final = True
        if ev.dirty:
            rows = np.array(list(ev.slots.values()), np.int64)
            sol = self._locate(rows, ev.lat, ev.lon, ev.depth, ev.t0, span_km=self.s.grid_spacing_km)
            if sol is not None:
                lat, lon, dep, t0, keep, res = sol
                dropped = np.setdiff1d(rows, keep)
                self._p_state[dropped] = 0
                self._vote(dropped, +1.0)
                self._set_solution(ev, lat, lon, dep, t0, keep, res)
        return [self._emit(ev)]

    def _expire(self, now: float, out: list[Event]) -> None:
        limit = now - self.s.horizon_s
        still = []
        for ev in self._open:
            if ev.t0 + self._max_tt + 5.0 < now:
                out += self._finalise(ev)
            else:
                still.append(ev)
        self._open = still
        if self._life:  # preliminaries expired from the pool: their closing picks are plain picks
            self._life = {k: p for k, p in self._life.items() if self._sec(p.time_ns) >= limit}
        old = np.flatnonzero((self._p_t < limit) & (self._p_state == 0))
        if len(old):
            self._vote(old, -1.0)
            self._p_state[old] = -1
        # clear ring bins whose origin times can no longer be reached
        clear_to = self._bin(limit - self._max_tt) - 2
        start = self._cleared_to if self._cleared_to is not None else clear_to - self._n_ring
        start = max(start, clear_to - self._n_ring)
        if clear_to > start:
            idx = np.arange(start, clear_to) % self._n_ring
            self._stack[idx] = 0.0
            self._rejected[idx] = 0.0
        self._cleared_to = clear_to
        # compact the pool when most of it is gone
        gone = (self._p_state != 0) & (self._p_t < limit)
        n_gone = int(gone.sum())
        if n_gone > 2000 and n_gone > len(self._p_t) // 2:
            keep = ~gone
            for ev in self._open:
                for r in ev.slots.values():
                    keep[r] = True
            remap = np.cumsum(keep) - 1
            for ev in self._open:
                ev.slots = {k: int(remap[r]) for k, r in ev.slots.items()}
            self._p_sta, self._p_ph, self._p_t = self._p_sta[keep], self._p_ph[keep], self._p_t[keep]
            self._p_w, self._p_state = self._p_w[keep], self._p_state[keep]
            self._p_obj = [p for p, k in zip(self._p_obj, keep) if k]
