"""Station coordinates for association and the distance helpers that go with them."""

from __future__ import annotations

import csv
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EARTH_RADIUS_KM = 6371.0


@dataclass(frozen=True)
class Stations:
    """Station coordinates, indexed by ``NET.STA`` (and by ``STA`` alone as a fallback)."""

    keys: tuple[str, ...]  # "NET.STA" (or "STA" when the source has no network code)
    latitude: np.ndarray
    longitude: np.ndarray
    elevation_m: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    def index(self) -> dict[str, int]:
        """Lookup table: ``NET.STA`` and bare ``STA`` → row (the first one wins for bare names)."""
        out: dict[str, int] = {}
        for i, key in enumerate(self.keys):
            out.setdefault(key, i)
            out.setdefault(key.split(".")[-1], i)
        return out

    def subset(self, rows) -> "Stations":
        rows = np.asarray(rows)
        return Stations(tuple(self.keys[i] for i in rows), self.latitude[rows], self.longitude[rows], self.elevation_m[rows])


def load_stations(path: str | Path, network: str = "") -> Stations:
    """From a CSV (``network,station,latitude,longitude,elevation_m``) or a ``tt_stations_1D.db`` SQLite file."""
    path = Path(path)
    rows: list[tuple[str, float, float, float]] = []
    if path.suffix in (".db", ".sqlite"):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
            for sta, net, lat, lon, elev in con.execute("SELECT sta, net, latitude, longitude, elevation FROM stations ORDER BY id"):
                net = net or network
                rows.append((f"{net}.{sta}" if net else sta, lat, lon, elev or 0.0))
    else:
        with path.open(newline="") as fh:
            for number, row in enumerate(csv.DictReader(fh), start=2):
                try:
                    net = row.get("network") or network
                    key = f"{net}.{row['station']}" if net else row["station"]
                    rows.append((key, float(row["latitude"]), float(row["longitude"]), float(row.get("elevation_m") or 0.0)))
                except (KeyError, ValueError, TypeError) as exc:
                    raise ValueError(f"{path}:{number}: bad station row ({exc})") from None
    seen: dict[str, int] = {}
    uniq = []
    for row in rows:
        if row[0] not in seen:
            seen[row[0]] = len(uniq)
            uniq.append(row)
    if not uniq:
        raise ValueError(f"{path}: no stations")
    keys, lat, lon, elev = zip(*uniq)
    return Stations(tuple(keys), np.array(lat, float), np.array(lon, float), np.array(elev, float))


def distance_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance (haversine), broadcasting."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp = p2 - p1
    dl = np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


class LocalProjection:
    """Equirectangular km coordinates around a centre; good to ~0.1 % over a few hundred km."""

    def __init__(self, lat0: float, lon0: float):
        self.lat0 = lat0
        self.lon0 = lon0
        self.ky = np.pi / 180.0 * EARTH_RADIUS_KM
        self.kx = self.ky * np.cos(np.radians(lat0))

    def to_xy(self, lat, lon):
        return (np.asarray(lon) - self.lon0) * self.kx, (np.asarray(lat) - self.lat0) * self.ky

    def to_latlon(self, x, y):
        return self.lat0 + np.asarray(y) / self.ky, self.lon0 + np.asarray(x) / self.kx
