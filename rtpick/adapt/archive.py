"""Waveform archives for building training sets: an SDS tree, a folder of miniSEED files, an FDSN service.

All three answer one question, :meth:`WaveformSource.get`: the raw traces (counts,
as recorded, no response removed) of one station's channel family in a time span.
Building a data set asks it once per (event, station) and once per noise window,
so the SDS and FDSN sources read only what is asked; the miniSEED folder reads
every file's headers once and then only the files that overlap the request.

The FDSN source is a thin wrapper of ObsPy's client for users with internet
access; it is not exercised by the tests (they run offline).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Protocol

import obspy
from obspy import UTCDateTime


class WaveformSource(Protocol):
    """Raw traces of ``NET.STA.LOC`` channel family ``family`` (e.g. ``HH?``) between ``t0`` and ``t1``."""

    description: str

    def get(self, network: str, station: str, location: str, family: str, t0: UTCDateTime, t1: UTCDateTime) -> obspy.Stream: ...

    def families(self, network: str, station: str, location: str) -> list[str]:
        """Channel families the archive holds for a station (empty when it cannot tell)."""
        ...


class SDSSource:
    """A SeisComP Data Structure tree (``YEAR/NET/STA/CHA.D/NET.STA.LOC.CHA.D.YEAR.DOY``) via ObsPy's SDS client."""

    def __init__(self, root: str | Path):
        from obspy.clients.filesystem.sds import Client

        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: SDS root is not a folder")
        self.client = Client(str(self.root))
        self.description = f"sds:{self.root}"

    def get(self, network, station, location, family, t0, t1) -> obspy.Stream:
        return self.client.get_waveforms(network, station, location, family, t0, t1, merge=False)

    def families(self, network, station, location) -> list[str]:
        found = set()
        for path in self.root.glob(f"*/{network}/{station}/*.D"):
            found.add(path.name[:2] + "?")
        return sorted(found)


class MiniSEEDFolder:
    """Every miniSEED file under a folder, indexed by trace id and time span from the headers."""

    def __init__(self, root: str | Path, pattern: str = "*"):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: miniSEED folder is not a folder")
        self.description = f"mseed:{self.root}"
        self.index: dict[tuple[str, str, str], list[tuple[UTCDateTime, UTCDateTime, Path, str]]] = defaultdict(list)
        self.unreadable: list[str] = []
        for path in sorted(p for p in self.root.rglob(pattern) if p.is_file()):
            try:
                head = obspy.read(str(path), headonly=True)
            except Exception:  # noqa: BLE001 - ObsPy raises many kinds for non-miniSEED files
                self.unreadable.append(str(path))
                continue
            for tr in head:
                s = tr.stats
                self.index[(s.network, s.station, s.location)].append((s.starttime, s.endtime, path, s.channel))

    def get(self, network, station, location, family, t0, t1) -> obspy.Stream:
        out = obspy.Stream()
        paths = {p for a, b, p, cha in self.index.get((network, station, location), []) if b >= t0 and a <= t1 and _in_family(cha, family)}
        for path in sorted(paths):
            out += obspy.read(str(path), starttime=t0, endtime=t1)
        return out.select(channel=family)

    def families(self, network, station, location) -> list[str]:
        return sorted({cha[:2] + "?" for *_, cha in self.index.get((network, station, location), [])})


class FDSNSource:
    """An FDSN dataselect service through ObsPy (needs network access; not tested offline)."""

    def __init__(self, url: str):
        from obspy.clients.fdsn import Client

        self.client = Client(url)
        self.description = f"fdsn:{url}"

    def get(self, network, station, location, family, t0, t1) -> obspy.Stream:
        from obspy.clients.fdsn.header import FDSNNoDataException

        try:
            return self.client.get_waveforms(network, station, location or "--", family, t0, t1)
        except FDSNNoDataException:
            return obspy.Stream()

    def families(self, network, station, location) -> list[str]:
        return []


def _in_family(channel: str, family: str) -> bool:
    return len(channel) == 3 and channel[:2] == family[:2]


def open_source(sds: str | None = None, mseed: str | None = None, fdsn: str | None = None) -> WaveformSource:
    """The one waveform source named; ValueError unless exactly one is given."""
    given = [(k, v) for k, v in (("sds", sds), ("mseed", mseed), ("fdsn", fdsn)) if v]
    if len(given) != 1:
        raise ValueError("give exactly one waveform source: --sds DIR, --mseed DIR or --fdsn URL")
    kind, value = given[0]
    return {"sds": SDSSource, "mseed": MiniSEEDFolder, "fdsn": FDSNSource}[kind](value)
