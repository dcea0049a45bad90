"""1D layered velocity model (TauP ``.nd``) and first-arrival times of direct and head waves.

Enough ray theory for local distances (< 200 km): a stack of constant-velocity
layers, the direct up-going ray from the source and the head waves along every
interface below it, whichever arrives first. Returns the ray parameter too, for
the angle of incidence at the surface (P/S partition on Z vs horizontals).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class LayeredModel:
    """Constant-velocity layers: ``tops`` (km, increasing from 0), ``vp`` and ``vs`` (km/s)."""

    tops: np.ndarray
    vp: np.ndarray
    vs: np.ndarray

    @classmethod
    def from_nd(cls, path: str | Path, max_depth_km: float = 120.0) -> "LayeredModel":
        rows = []
        for line in Path(path).read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue  # named discontinuities ("mantle", "outer-core") and blank lines
            z, vp, vs = (float(v) for v in parts[:3])
            if z > max_depth_km:
                break
            rows.append((z, vp, vs))
        tops, vps, vss = [], [], []
        for (z0, p0, s0), (z1, p1, s1) in zip(rows, rows[1:]):
            if z1 > z0:  # a layer; gradients are replaced by their mean velocity
                tops.append(z0)
                vps.append(0.5 * (p0 + p1))
                vss.append(0.5 * (s0 + s1))
        z_last, p_last, s_last = rows[-1]
        if not tops or z_last > tops[-1]:
            tops.append(z_last)
            vps.append(p_last)
            vss.append(s_last)
        return cls(np.array(tops), np.array(vps), np.array(vss))

    def first_arrival(self, phase: str, depth_km: float, distance_km: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First-arrival time (s) and ray parameter (s/km) of ``P`` or ``S`` at epicentral distances."""
        v = self.vp if phase.upper() == "P" else self.vs
        dist = np.atleast_1d(np.asarray(distance_km, float))
        bottoms = np.append(self.tops[1:], np.inf)
        # thickness of each layer above the source (up leg) and between source and each interface
        above = np.clip(np.minimum(bottoms, depth_km) - self.tops, 0, None)
        src_layer = int(np.searchsorted(self.tops, depth_km, side="right") - 1)

        # direct up-going ray
        if depth_km <= 0:
            t_direct, p_direct = dist / v[0], np.full_like(dist, 1 / v[0])
        else:
            vmax = v[: src_layer + 1].max()
            theta = np.linspace(0.0, np.pi / 2 * 0.9999, 4000)
            p = np.sin(theta) / vmax
            eta = np.sqrt(np.clip(1.0 / v[None, :] ** 2 - p[:, None] ** 2, 1e-12, None))
            x = (above[None, :] * p[:, None] / eta).sum(axis=1)
            t = (above[None, :] / (v[None, :] ** 2 * eta)).sum(axis=1)
            t_direct = np.interp(dist, x, t)
            p_direct = np.interp(dist, x, p)
            far = dist > x[-1]
            t_direct[far] = t[-1] + (dist[far] - x[-1]) * p[-1]
        best_t, best_p = t_direct, p_direct

        # head waves along the top of each faster layer below the source
        for k in range(src_layer + 1, len(v)):
            if v[k] <= v[:k].max():
                continue
            pk = 1.0 / v[k]
            legs = above.copy()
            legs[src_layer:k] += 2 * np.clip(np.minimum(bottoms[src_layer:k], self.tops[k]) - np.maximum(self.tops[src_layer:k], depth_km), 0, None)
            eta = np.sqrt(np.clip(1.0 / v[:k] ** 2 - pk**2, 1e-12, None))
            x_crit = (legs[:k] * pk / eta).sum()
            t_head = dist * pk + (legs[:k] * eta).sum()
            use = (dist >= x_crit) & (t_head < best_t)
            best_t = np.where(use, t_head, best_t)
            best_p = np.where(use, pk, best_p)
        return best_t, best_p
