"""Travel times for association: homogeneous (0D) and 1D layered models.

Both kinds end up as the same thing, a :class:`TravelTimeTable`: first-arrival P
and S times tabulated once over (source depth, epicentral distance) and evaluated
by bilinear interpolation, in numpy (vectorised) or numba (``tt_lookup``).

1D models are read from the TauP ``.nd`` format (``depth vp vs [rho ...]`` per
line, named discontinuities such as ``mantle`` on their own line). Velocities are
linear between the given depths, as TauP reads them, so the rays are traced
exactly with the closed-form expressions for a linear velocity gradient (circle
arcs). Receivers sit at depth 0 of the model (sea level); a station's elevation
adds ``elevation / v_surface`` (vertical path through the top layer), as PyOcto
does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

PHASES = ("P", "S")
_ND_NAMES = {"mantle", "outer-core", "inner-core", "crust", "moho", "cmb", "icb"}


class VelocityModelError(ValueError):
    """A velocity model file that cannot be used; the message names file and line."""


@dataclass(frozen=True)
class LayeredModel:
    """Depth nodes with P and S velocity; linear in between, repeated depth = discontinuity."""

    depth_km: np.ndarray
    vp: np.ndarray
    vs: np.ndarray
    source: str = "<model>"


def read_nd(path: str | Path, max_depth_km: float = 300.0) -> LayeredModel:
    """Read a TauP ``.nd`` file down to ``max_depth_km`` (deeper rows are ignored).

    Raises :class:`VelocityModelError` naming the file and line for anything that
    is not a depth/velocity row or a named discontinuity, for depths that go up,
    and for non-positive velocities above ``max_depth_km``.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise VelocityModelError(f"{path}: cannot read velocity model: {exc.strerror}") from exc
    depths: list[float] = []
    vps: list[float] = []
    vss: list[float] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#")[0].strip()
        if not line or line.lower() in _ND_NAMES:
            continue
        parts = line.split()
        if len(parts) < 3:
            raise VelocityModelError(
                f"{path}:{number}: expected 'depth vp vs [rho ...]' or a discontinuity name, got {raw.strip()!r}"
            )
        try:
            depth, vp, vs = (float(v) for v in parts[:3])
        except ValueError:
            raise VelocityModelError(
                f"{path}:{number}: depth, vp and vs must be numbers, got {raw.strip()!r}"
            ) from None
        if depths and depth < depths[-1]:
            raise VelocityModelError(f"{path}:{number}: depth {depth} km is above the previous row ({depths[-1]} km)")
        if depths and depths[-1] >= max_depth_km:
            break
        if vp <= 0 or vs <= 0 or not np.isfinite(vp + vs + depth):
            raise VelocityModelError(f"{path}:{number}: velocities must be positive, got vp={vp} vs={vs}")
        depths.append(depth)
        vps.append(vp)
        vss.append(vs)
    if len(depths) < 2:
        raise VelocityModelError(f"{path}: a velocity model needs at least two depth rows, found {len(depths)}")
    if depths[0] != 0.0:
        raise VelocityModelError(f"{path}: the first row must be at depth 0 km, got {depths[0]}")
    return LayeredModel(np.array(depths), np.array(vps), np.array(vss), source=str(path))


def _layers(model_depth: np.ndarray, model_v: np.ndarray, z_source: float):
    """Linear-gradient layers (top, bottom, v_top, v_bottom) split at the source depth."""
    depth = model_depth
    v = model_v
    tops, bots, vtops, vbots = [], [], [], []
    for i in range(len(depth) - 1):
        z1, z2, v1, v2 = depth[i], depth[i + 1], v[i], v[i + 1]
        if z2 <= z1:
            continue  # discontinuity
        if z1 < z_source < z2:
            vm = v1 + (v2 - v1) * (z_source - z1) / (z2 - z1)
            tops += [z1, z_source]
            bots += [z_source, z2]
            vtops += [v1, vm]
            vbots += [vm, v2]
        else:
            tops.append(z1)
            bots.append(z2)
            vtops.append(v1)
            vbots.append(v2)
    return np.array(tops), np.array(bots), np.array(vtops), np.array(vbots)


def _layer_integrals(p: np.ndarray, z1, z2, v1, v2):
    """Horizontal distance and time through each layer for each ray parameter.

    Returns (x, t, enters, turns): arrays of shape (n_p, n_layers).
    """
    p = p[:, None]
    h = (z2 - z1)[None, :]
    v1 = v1[None, :]
    v2 = v2[None, :]
    g = (v2 - v1) / h
    enters = p * v1 < 1.0
    turns = enters & (p * v2 >= 1.0)
    v2e = np.where(turns, 1.0 / p, v2)
    eta1 = np.sqrt(np.clip(1.0 - (p * v1) ** 2, 0.0, None))
    eta2 = np.sqrt(np.clip(1.0 - (p * v2e) ** 2, 0.0, None))
    flat = np.abs(g) < 1e-9
    gs = np.where(flat, 1.0, g)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_grad = (eta1 - eta2) / (p * gs)
        t_grad = np.log((v2e / v1) * (1.0 + eta1) / (1.0 + eta2)) / gs
        x_flat = h * p * v1 / eta1
        t_flat = h / (v1 * eta1)
    x = np.where(flat, x_flat, x_grad)
    t = np.where(flat, t_flat, t_grad)
    x = np.where(enters, x, 0.0)
    t = np.where(enters, t, 0.0)
    return x, t, enters, turns


@numba.njit(cache=True)
def _first_arrivals(x_branch, t_branch, distances, out):
    """out[k] = min time over all branch segments spanning distances[k] (linear in between)."""
    step = distances[1] - distances[0]
    n = len(distances)
    for i in range(len(x_branch) - 1):
        xa, xb, ta, tb = x_branch[i], x_branch[i + 1], t_branch[i], t_branch[i + 1]
        if not (np.isfinite(xa) and np.isfinite(xb) and np.isfinite(ta) and np.isfinite(tb)):
            continue
        lo, hi = (xa, xb) if xa <= xb else (xb, xa)
        k0 = max(0, int(np.ceil((lo - distances[0]) / step)))
        k1 = min(n - 1, int(np.floor((hi - distances[0]) / step)))
        for k in range(k0, k1 + 1):
            d = distances[k]
            if xb != xa:
                f = (d - xa) / (xb - xa)
            else:
                f = 0.0
            t = ta + f * (tb - ta)
            if t < out[k]:
                out[k] = t


def _trace_1d(depth: np.ndarray, v: np.ndarray, z_source: float, distances: np.ndarray, n_rays: int = 4000) -> np.ndarray:
    """First-arrival times from a source at ``z_source`` to surface receivers at ``distances``."""
    tops, bots, vt, vb = _layers(depth, v, z_source)
    v_source = np.interp(z_source, depth, v) if z_source > 0 else v[0]
    theta = np.linspace(1e-4, np.pi / 2 - 1e-6, n_rays)
    p = np.sin(theta) / v_source
    x, t, enters, turns = _layer_integrals(p, tops, bots, vt, vb)
    above = bots <= z_source + 1e-12
    out = np.full(len(distances), np.inf)
    # direct up-going ray: must cross every layer above the source without turning
    if z_source > 0:
        ok = np.all(enters[:, above] & ~turns[:, above], axis=1)
        xu = np.where(ok, x[:, above].sum(axis=1), np.nan)
        tu = np.where(ok, t[:, above].sum(axis=1), np.nan)
        h, g = bots[above] - tops[above], (vb[above] - vt[above]) / (bots[above] - tops[above])
        flat = np.abs(g) < 1e-9
        vertical = np.where(flat, h / vt[above], np.log(vb[above] / vt[above]) / np.where(flat, 1.0, g)).sum()
        _first_arrivals(np.r_[0.0, xu], np.r_[vertical, tu], distances, out)
    else:
        out[0] = 0.0
        xu = np.zeros(len(p))
        tu = np.zeros(len(p))
    # down-going ray: continues below the source until it turns, then up to the surface
    below = ~above
    eb, tb_, xb, tt = enters[:, below], turns[:, below], x[:, below], t[:, below]
    # the ray is alive in a layer if it entered every layer above it without turning
    alive = np.cumprod(np.concatenate([np.ones((len(p), 1), bool), eb[:, :-1] & ~tb_[:, :-1]], axis=1), axis=1).astype(bool)
    alive &= eb
    turned = np.any(alive & tb_, axis=1)
    xd = np.where(turned, xu + 2.0 * (xb * alive).sum(axis=1), np.nan)
    td = np.where(turned, tu + 2.0 * (tt * alive).sum(axis=1), np.nan)
    _first_arrivals(xd, td, distances, out)
    return out


@dataclass
class TravelTimeTable:
    """First-arrival times ``times[phase, depth_index, distance_index]`` (s), phase 0 = P, 1 = S."""

    times: np.ndarray  # float64 (2, n_depth, n_dist)
    depth_step_km: float
    distance_step_km: float
    surface_velocity: tuple[float, float]  # (vp, vs) at depth 0, for elevation corrections
    name: str = ""

    @property
    def max_depth_km(self) -> float:
        return (self.times.shape[1] - 1) * self.depth_step_km

    @property
    def max_distance_km(self) -> float:
        return (self.times.shape[2] - 1) * self.distance_step_km

    def __call__(self, phase: int | str, distance_km, depth_km, elevation_m=0.0) -> np.ndarray:
        """Travel time (s) by bilinear interpolation; ``phase`` is 'P'/'S' or 0/1; arrays broadcast."""
        ph = PHASES.index(phase) if isinstance(phase, str) else int(phase)
        tab = self.times[ph]
        zi = np.clip(np.asarray(depth_km, float) / self.depth_step_km, 0.0, tab.shape[0] - 1.000001)
        xi = np.clip(np.asarray(distance_km, float) / self.distance_step_km, 0.0, tab.shape[1] - 1.000001)
        z0 = zi.astype(np.int64)
        x0 = xi.astype(np.int64)
        fz = zi - z0
        fx = xi - x0
        t = (
            tab[z0, x0] * (1 - fz) * (1 - fx)
            + tab[z0 + 1, x0] * fz * (1 - fx)
            + tab[z0, x0 + 1] * (1 - fz) * fx
            + tab[z0 + 1, x0 + 1] * fz * fx
        )
        return t + np.asarray(elevation_m, float) / 1000.0 / self.surface_velocity[ph]


@numba.njit(cache=True, inline="always")
def tt_lookup(times, depth_step, dist_step, phase, distance_km, depth_km):
    """Numba twin of :meth:`TravelTimeTable.__call__` for one point (no elevation term)."""
    nz = times.shape[1]
    nx = times.shape[2]
    zi = min(max(depth_km / depth_step, 0.0), nz - 1.000001)
    xi = min(max(distance_km / dist_step, 0.0), nx - 1.000001)
    z0 = int(zi)
    x0 = int(xi)
    fz = zi - z0
    fx = xi - x0
    return (
        times[phase, z0, x0] * (1 - fz) * (1 - fx)
        + times[phase, z0 + 1, x0] * fz * (1 - fx)
        + times[phase, z0, x0 + 1] * (1 - fz) * fx
        + times[phase, z0 + 1, x0 + 1] * fz * fx
    )


def table_from_layered(
    model: LayeredModel, max_distance_km: float = 400.0, max_depth_km: float = 40.0,
    distance_step_km: float = 0.5, depth_step_km: float = 0.5,
) -> TravelTimeTable:
    """Tabulate first-arrival P and S times of a 1D layered model (a second or two, once)."""
    distances = np.arange(0.0, max_distance_km + distance_step_km / 2, distance_step_km)
    depths = np.arange(0.0, max_depth_km + depth_step_km / 2, depth_step_km)
    if depths[-1] >= model.depth_km[-1]:
        raise VelocityModelError(f"{model.source}: model ends at {model.depth_km[-1]} km, table needs {depths[-1]} km")
    times = np.empty((2, len(depths), len(distances)))
    for ph, v in enumerate((model.vp, model.vs)):
        for iz, z in enumerate(depths):
            times[ph, iz] = _trace_1d(model.depth_km, v, float(z), distances)
    if not np.all(np.isfinite(times)):
        bad = np.argwhere(~np.isfinite(times))[0]
        raise VelocityModelError(
            f"{model.source}: no ray reaches {distances[bad[2]]} km from depth {depths[bad[1]]} km; "
            "extend the model deeper or reduce max_distance_km"
        )
    return TravelTimeTable(times, depth_step_km, distance_step_km, (float(model.vp[0]), float(model.vs[0])),
                           name=f"1D:{Path(model.source).name}")


def table_0d(vp: float, vs: float, max_distance_km: float = 400.0, max_depth_km: float = 40.0,
             distance_step_km: float = 0.5, depth_step_km: float = 0.5) -> TravelTimeTable:
    """A homogeneous model (straight rays) in the same tabulated form."""
    if vp <= 0 or vs <= 0:
        raise VelocityModelError(f"0D model: velocities must be positive, got vp={vp} vs={vs}")
    distances = np.arange(0.0, max_distance_km + distance_step_km / 2, distance_step_km)
    depths = np.arange(0.0, max_depth_km + depth_step_km / 2, depth_step_km)
    r = np.hypot(depths[:, None], distances[None, :])
    return TravelTimeTable(np.stack([r / vp, r / vs]), depth_step_km, distance_step_km, (vp, vs), name=f"0D:{vp}/{vs}")


def load_table(spec: str, **kwargs) -> TravelTimeTable:
    """``"0d:6.0,3.5"`` or a path to a ``.nd`` file."""
    if spec.lower().startswith("0d:"):
        try:
            vp, vs = (float(v) for v in spec[3:].split(","))
        except ValueError:
            raise VelocityModelError(f"0D model spec must be '0d:VP,VS' (km/s), got {spec!r}") from None
        return table_0d(vp, vs, **kwargs)
    return table_from_layered(read_nd(spec), **kwargs)
