"""Event location with uncertainties: robust, damped least squares on the 1D travel-time tables.

The associator's grid search finds *which* picks belong together and a rough
hypocentre; this module turns every event revision into a catalogue-style
solution (Geiger's method as in HYPOINVERSE/HYPOELLIPSE):

* unknowns ``x, y`` (km east/north of the start epicentre, local projection),
  depth ``z`` (km below sea level) and origin time; travel times and their
  derivatives from the same :class:`TravelTimeTable` the associator votes with
  (central finite differences over one table cell, so the piecewise-bilinear
  table gives smooth enough gradients), plus each station's elevation term;
* Levenberg–Marquardt steps (damped, step length capped) from a few starting
  depths, the best misfit wins: depth/origin-time trade-offs have local minima;
* pick weights ``1 / σ²`` with ``σ² = uncertainty_s² + floor(phase)² +
  (fraction · travel time)²`` (picker and model error; S floors are larger),
  divided by the pick probability (a 0.5 pick counts half);
* Huber reweighting (``c = 1.5``) while iterating, then explicit rejection of the
  worst pick while ``|residual| > outlier_k · max(σ, outlier_floor_s)``; each
  rejected pick is reported and leaves the event (at most 20 % of them);
* a weak Gaussian depth prior (``depth_prior_km ± depth_prior_sigma_km``): where
  the network resolves depth the data dominate, where it cannot (no station
  within about a focal depth) the depth falls back towards the regional mean
  and its uncertainty says so;
* covariance ``s² (JᵀWJ + prior)⁻¹`` with the variance factor ``s²`` blended
  between a priori (1) and a posteriori (weighted χ² per degree of freedom) with
  ``prior_dof`` pseudo degrees of freedom, as HYPOELLIPSE does: few picks
  cannot claim tiny errors from a lucky fit, many picks with a bad model widen
  the ellipse. The 68 % horizontal ellipse scales the 2×2 block by
  χ²₂(0.68) = 2.28; depth and time uncertainties are 1 σ (68 %).
  ``bench/association.py`` checks the coverage (60–76 % of true epicentres
  inside the ellipse).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from rtpick.associate.stations import Stations, distance_km
from rtpick.associate.traveltime import TravelTimeTable, tt_lookup

CHI2_2D_68 = -2.0 * np.log(1.0 - 0.68)  # 68 % quantile of chi-square with 2 degrees of freedom
_HUBER_C = 1.5
_FD_KM = 0.5  # finite-difference half step (one table cell)


@dataclass(frozen=True)
class LocatorSettings:
    """Tuning of :class:`Locator` (the ``locate_*`` keys of ``[associate]``)."""

    depth_prior_km: float = 8.0  # regional mean depth the weak prior pulls towards
    depth_prior_sigma_km: float = 8.0  # its standard deviation (weak: a few stations within ~z resolve depth)
    sigma_p_s: float = 0.03  # P model error floor (s), added to the pick's own uncertainty_s
    sigma_s_s: float = 0.05  # S model error floor (vs is known less well than vp)
    sigma_fraction: float = 0.005  # model error growing with the travel time
    outlier_k: float = 4.0  # reject |residual| > outlier_k * max(sigma, outlier_floor_s)
    outlier_floor_s: float = 0.1
    max_rejected_fraction: float = 0.2
    prior_dof: float = 4.0  # pseudo degrees of freedom of the a-priori variance factor
    max_iterations: int = 25
    max_depth_km: float = 25.0


@dataclass
class Location:
    """One solution: hypocentre, fit, uncertainties and network geometry."""

    latitude: float
    longitude: float
    depth_km: float
    origin_s: float  # same time base as the input pick times
    residuals_s: np.ndarray  # observed - predicted, every input pick (rejected ones too)
    used: np.ndarray  # bool, False for rejected picks
    rms_s: float
    semi_major_km: float  # 68 % horizontal error ellipse
    semi_minor_km: float
    azimuth_deg: float  # of the semi-major axis, clockwise from north, 0-180
    depth_uncertainty_km: float  # 1 sigma
    time_uncertainty_s: float  # 1 sigma
    gap_deg: float  # largest azimuthal gap between stations used
    nearest_km: float  # epicentral distance of the nearest station used
    n_p: int
    n_s: int
    iterations: int
    sigma_scale: float  # sqrt of the variance factor used for the covariance

    def message_fields(self) -> dict:
        """The ``rtpick.event/1`` fields this solution adds (see docs/messages.md)."""
        return {
            "error_ellipse": {"semi_major_km": round(self.semi_major_km, 3), "semi_minor_km": round(self.semi_minor_km, 3),
                              "azimuth_deg": round(self.azimuth_deg, 1), "confidence": 0.68},
            "azimuthal_gap_deg": round(self.gap_deg, 1),
            "nearest_station_km": round(self.nearest_km, 2),
            "locator": "rtpick.geiger",
        }


class Locator:
    """Locates a set of picks (station row, phase 0/1, time in s) from a starting hypocentre."""

    def __init__(self, stations: Stations, table: TravelTimeTable, settings: LocatorSettings | None = None):
        self.stations = stations
        self.table = table
        self.s = settings or LocatorSettings()
        self._ky = np.pi / 180.0 * 6371.0
        self._corr = np.stack([stations.elevation_m / 1000.0 / table.surface_velocity[0],
                               stations.elevation_m / 1000.0 / table.surface_velocity[1]], axis=1)
        self._zmax = min(self.s.max_depth_km, table.max_depth_km - 2 * _FD_KM)

    def _tt(self, ph: np.ndarray, r: np.ndarray, z: float) -> np.ndarray:
        out = np.empty(len(r))
        _travel_times(self.table.times, self.table.depth_step_km, self.table.distance_step_km, ph, r, float(z), out)
        return out

    def _model(self, m, xs, ys, ph, corr):
        """Predicted times and the Jacobian (n, 4) at m = (x, y, z, t0)."""
        pred = np.empty(len(xs))
        jac = np.empty((len(xs), 4))
        _predict(self.table.times, self.table.depth_step_km, self.table.distance_step_km, ph, xs, ys, corr,
                 float(m[0]), float(m[1]), float(m[2]), float(m[3]), pred, jac)
        return pred, jac

    def _objective(self, res, sigma, z):
        e = np.abs(res / sigma)
        rho = np.where(e <= _HUBER_C, 0.5 * e**2, _HUBER_C * e - 0.5 * _HUBER_C**2)
        return rho.sum() + 0.5 * ((z - self.s.depth_prior_km) / self.s.depth_prior_sigma_km) ** 2

    def _solve(self, m, xs, ys, ph, corr, t, sigma):
        """Damped Gauss-Newton with Huber weights; returns (m, objective, iterations)."""
        lam = 1e-2
        pred, jac = self._model(m, xs, ys, ph, corr)
        obj = self._objective(t - pred, sigma, m[2])
        it = 0
        for it in range(1, self.s.max_iterations + 1):
            res = t - pred
            e = np.abs(res / sigma)
            w = np.where(e <= _HUBER_C, 1.0, _HUBER_C / np.maximum(e, 1e-12)) / sigma**2
            a = jac.T @ (jac * w[:, None])
            g = jac.T @ (w * res)
            a[2, 2] += 1.0 / self.s.depth_prior_sigma_km**2
            g[2] += (self.s.depth_prior_km - m[2]) / self.s.depth_prior_sigma_km**2
            improved = False
            for _ in range(8):
                try:
                    step = np.linalg.solve(a + lam * np.diag(np.diag(a) + 1e-9), g)
                except np.linalg.LinAlgError:
                    lam *= 10.0
                    continue
                h = np.hypot(step[0], step[1])
                if h > 10.0:
                    step[:3] *= 10.0 / h
                step[2] = np.clip(step[2], -5.0, 5.0)
                trial = m + step
                trial[2] = np.clip(trial[2], 0.0, self._zmax)
                tpred, tjac = self._model(trial, xs, ys, ph, corr)
                tobj = self._objective(t - tpred, sigma, trial[2])
                if tobj <= obj:
                    moved = np.abs(trial - m)
                    m, pred, jac, obj = trial, tpred, tjac, tobj
                    lam = max(lam / 3.0, 1e-6)
                    improved = True
                    break
                lam *= 4.0
            if not improved or (moved[:3].max() < 0.005 and moved[3] < 0.0005):
                break
        return m, obj, it

    def locate(self, sta: np.ndarray, ph: np.ndarray, t: np.ndarray, uncertainty_s: np.ndarray,
               probability: np.ndarray, start: tuple[float, float, float, float]) -> Location | None:
        """Locate picks ``(station row, phase 0=P/1=S, time s)`` from ``start = (lat, lon, depth, t0)``.

        None when fewer than 4 picks on 3 stations are given (nothing to solve for).
        """
        sta = np.asarray(sta, np.int64)
        ph = np.asarray(ph, np.int64)
        t = np.asarray(t, float)
        if len(t) < 4 or len(np.unique(sta)) < 3:
            return None
        lat0, lon0, dep0, t00 = (float(v) for v in start)
        kx = self._ky * np.cos(np.radians(lat0))
        xs = (self.stations.longitude[sta] - lon0) * kx
        ys = (self.stations.latitude[sta] - lat0) * self._ky
        corr = self._corr[sta, ph]
        floor = np.where(ph == 0, self.s.sigma_p_s, self.s.sigma_s_s)
        prob = np.clip(np.asarray(probability, float), 0.1, 1.0)
        unc = np.nan_to_num(np.asarray(uncertainty_s, float), nan=0.0)

        def sigma_at(m):
            tt = self._tt(ph, np.hypot(m[0] - xs, m[1] - ys), m[2])
            return np.sqrt(unc**2 + floor**2 + (self.s.sigma_fraction * tt) ** 2) / np.sqrt(prob)

        # a few starting depths: the origin-time/depth trade-off has local minima
        best = None
        for z in sorted({round(np.clip(dep0, 0.0, self._zmax), 1), 3.0, self.s.depth_prior_km, 15.0}):
            m0 = np.array([0.0, 0.0, min(z, self._zmax), t00])
            m, obj, it = self._solve(m0, xs, ys, ph, corr, t, sigma_at(m0))
            if best is None or obj < best[1]:
                best = (m, obj, it)
        m, _, iterations = best
        used = np.ones(len(t), bool)
        max_reject = int(self.s.max_rejected_fraction * len(t))
        while True:
            sigma = sigma_at(m)
            m, _, it = self._solve(m, xs[used], ys[used], ph[used], corr[used], t[used], sigma[used])
            iterations += it
            res = t - self._model(m, xs, ys, ph, corr)[0]
            excess = np.where(used, np.abs(res) / (self.s.outlier_k * np.maximum(sigma, self.s.outlier_floor_s)), 0.0)
            worst = int(np.argmax(excess))
            if excess[worst] <= 1.0 or (~used).sum() >= max_reject or used.sum() <= 5:
                break
            used[worst] = False
        return self._summary(m, sta, ph, t, xs, ys, corr, sigma_at(m), used, res, lat0, lon0, kx, iterations)

    def _summary(self, m, sta, ph, t, xs, ys, corr, sigma, used, res, lat0, lon0, kx, iterations) -> Location:
        _, jac = self._model(m, xs[used], ys[used], ph[used], corr[used])
        w = 1.0 / sigma[used] ** 2
        a = jac.T @ (jac * w[:, None])
        a[2, 2] += 1.0 / self.s.depth_prior_sigma_km**2
        dof = max(int(used.sum()) - 4, 0)
        chi2 = float((res[used] ** 2 * w).sum())
        var = (chi2 + self.s.prior_dof) / (dof + self.s.prior_dof)
        cov = np.linalg.pinv(a) * var
        vals, vecs = np.linalg.eigh(cov[:2, :2])
        vals = np.clip(vals, 0.0, None)
        major = vecs[:, 1]
        azimuth = float(np.degrees(np.arctan2(major[0], major[1])) % 180.0)
        lat = lat0 + m[1] / self._ky
        lon = lon0 + m[0] / kx
        used_sta = np.unique(sta[used])
        az = np.sort(np.degrees(np.arctan2(xs[used] - m[0], ys[used] - m[1])) % 360.0)
        gap = float(np.max(np.diff(np.r_[az, az[0] + 360.0]))) if len(az) > 1 else 360.0
        dist = distance_km(lat, lon, self.stations.latitude[used_sta], self.stations.longitude[used_sta])
        return Location(
            latitude=float(lat), longitude=float(lon), depth_km=float(m[2]), origin_s=float(m[3]),
            residuals_s=res, used=used, rms_s=float(np.sqrt(np.mean(res[used] ** 2))),
            semi_major_km=float(np.sqrt(vals[1] * CHI2_2D_68)), semi_minor_km=float(np.sqrt(vals[0] * CHI2_2D_68)),
            azimuth_deg=azimuth, depth_uncertainty_km=float(np.sqrt(max(cov[2, 2], 0.0))),
            time_uncertainty_s=float(np.sqrt(max(cov[3, 3], 0.0))), gap_deg=gap, nearest_km=float(dist.min()),
            n_p=int((used & (ph == 0)).sum()), n_s=int((used & (ph == 1)).sum()), iterations=iterations,
            sigma_scale=float(np.sqrt(var)),
        )


@numba.njit(cache=True)
def _travel_times(times, depth_step, dist_step, ph, r, z, out):
    for i in range(len(r)):
        out[i] = tt_lookup(times, depth_step, dist_step, ph[i], r[i], z)


@numba.njit(cache=True)
def _predict(times, depth_step, dist_step, ph, xs, ys, corr, x, y, z, t0, pred, jac):
    """Arrival times and their derivatives by x, y, z (central differences over one cell) and t0."""
    z_lo = max(z - _FD_KM, 0.0)
    z_hi = z + _FD_KM
    for i in range(len(xs)):
        dx = x - xs[i]
        dy = y - ys[i]
        r = np.sqrt(dx * dx + dy * dy)
        p = ph[i]
        r_lo = max(r - _FD_KM, 0.0)
        dtdr = (tt_lookup(times, depth_step, dist_step, p, r + _FD_KM, z)
                - tt_lookup(times, depth_step, dist_step, p, r_lo, z)) / (r + _FD_KM - r_lo)
        dtdz = (tt_lookup(times, depth_step, dist_step, p, r, z_hi)
                - tt_lookup(times, depth_step, dist_step, p, r, z_lo)) / (z_hi - z_lo)
        rs = max(r, 1e-3)
        pred[i] = t0 + tt_lookup(times, depth_step, dist_step, p, r, z) + corr[i]
        jac[i, 0] = dtdr * dx / rs
        jac[i, 1] = dtdr * dy / rs
        jac[i, 2] = dtdz
        jac[i, 3] = 1.0
