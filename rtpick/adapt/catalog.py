"""Analyst picks from a QuakeML or SeisComP XML catalogue, as training labels.

ObsPy's ``read_events`` reads both formats (SeisComP's ``scxml`` export included).
Every pick of every event is either kept as a :class:`LabelledPick` or counted
with the reason it is not (never silently dropped):

``rejected``           evaluation status ``rejected`` (the analyst threw it out)
``automatic``          evaluation mode ``automatic`` while only manual picks are wanted
``unsupported_phase``  a phase that is neither P-like (P, Pg, Pn, Pb) nor S-like (S, Sg, Sn, Sb),
                       e.g. amplitude picks (``IAML``) or ``Lg``
``no_station``         a waveform id without network or station code
``duplicate``          a second pick of the same phase at the same station for the same event
                       (manual beats automatic, else the first one read wins), or the same
                       pick referenced by two events

The phase comes from the pick's ``phase_hint``, else from the preferred
origin's arrival that references it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from obspy import UTCDateTime

P_LIKE = {"P", "PG", "PN", "PB", "P*"}
S_LIKE = {"S", "SG", "SN", "SB", "S*"}


@dataclass(frozen=True)
class EventInfo:
    """What a training trace records about its source (NaN where the catalogue has nothing)."""

    event_id: str
    origin_time: UTCDateTime | None
    latitude: float = float("nan")
    longitude: float = float("nan")
    depth_km: float = float("nan")
    magnitude: float = float("nan")
    magnitude_type: str = ""


@dataclass(frozen=True)
class LabelledPick:
    """One P or S onset used as a label; ``probability`` is NaN for analyst picks."""

    event_id: str
    network: str
    station: str
    location: str
    channel: str  # "" when the catalogue names no channel
    phase: str  # "P" or "S"
    time: UTCDateTime
    mode: str = ""  # "manual" | "automatic" | ""
    pick_id: str = ""
    probability: float = float("nan")

    @property
    def station_key(self) -> str:
        return f"{self.network}.{self.station}.{self.location}"

    def describe(self) -> str:
        return f"{self.station_key}.{self.channel or '?'} {self.phase} {self.time} (event {self.event_id})"


@dataclass
class Tally:
    """Counts by cause with a few examples each (the report shows them)."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 5

    def add(self, cause: str, what: str, n: int = 1) -> None:
        self.counts[cause] += n
        ex = self.examples.setdefault(cause, [])
        if len(ex) < self.max_examples:
            ex.append(what)


def normalise_phase(hint: str | None) -> str | None:
    """``P``/``S`` for P-like/S-like phase names, None for anything else."""
    name = (hint or "").strip().upper()
    if name in P_LIKE:
        return "P"
    if name in S_LIKE:
        return "S"
    return None


def _short_id(resource_id) -> str:
    text = str(resource_id)
    return text.rsplit("/", 1)[-1].replace("?", "_").replace("=", "_") or text


def _event_info(event) -> EventInfo:
    origin = event.preferred_origin() or (event.origins[0] if event.origins else None)
    mag = event.preferred_magnitude() or (event.magnitudes[0] if event.magnitudes else None)
    return EventInfo(
        event_id=_short_id(event.resource_id),
        origin_time=origin.time if origin is not None else None,
        latitude=float(origin.latitude) if origin is not None and origin.latitude is not None else float("nan"),
        longitude=float(origin.longitude) if origin is not None and origin.longitude is not None else float("nan"),
        depth_km=float(origin.depth) / 1000.0 if origin is not None and origin.depth is not None else float("nan"),
        magnitude=float(mag.mag) if mag is not None and mag.mag is not None else float("nan"),
        magnitude_type=str(mag.magnitude_type or "") if mag is not None else "",
    )


def read_catalog(path: str | Path, manual_only: bool = False, tally: Tally | None = None) -> tuple[dict[str, EventInfo], list[LabelledPick], Tally]:
    """Events and their usable P/S picks from a QuakeML / SeisComP XML file; unusable picks tallied by cause."""
    import obspy

    tally = tally or Tally()
    try:
        catalog = obspy.read_events(str(path))
    except Exception as exc:  # noqa: BLE001 - ObsPy raises many kinds for unreadable files
        raise ValueError(f"{path}: cannot read as QuakeML or SeisComP XML: {exc}") from None
    events: dict[str, EventInfo] = {}
    kept: dict[tuple[str, str, str], LabelledPick] = {}
    seen_ids: set[str] = set()
    for event in catalog:
        info = _event_info(event)
        events[info.event_id] = info
        origin = event.preferred_origin() or (event.origins[0] if event.origins else None)
        arrival_phase = {str(a.pick_id): a.phase for a in (origin.arrivals if origin is not None else []) if a.pick_id is not None}
        for pick in event.picks:
            wid = pick.waveform_id
            net, sta = (wid.network_code or "") if wid else "", (wid.station_code or "") if wid else ""
            loc, cha = (wid.location_code or "") if wid else "", (wid.channel_code or "") if wid else ""
            hint = pick.phase_hint or arrival_phase.get(str(pick.resource_id))
            label = f"{net}.{sta}.{loc}.{cha or '?'} {hint or '?'} {pick.time} (event {info.event_id})"
            if pick.evaluation_status == "rejected":
                tally.add("rejected", label)
                continue
            if manual_only and pick.evaluation_mode == "automatic":
                tally.add("automatic", label)
                continue
            phase = normalise_phase(hint)
            if phase is None:
                tally.add("unsupported_phase", label)
                continue
            if not net or not sta:
                tally.add("no_station", label)
                continue
            pid = str(pick.resource_id)
            if pid in seen_ids:
                tally.add("duplicate", label + " (same pick in two events)")
                continue
            seen_ids.add(pid)
            item = LabelledPick(info.event_id, net, sta, loc, cha, phase, pick.time, str(pick.evaluation_mode or ""), pid)
            key = (info.event_id, item.station_key, phase)
            if key in kept:
                old = kept[key]
                if item.mode == "manual" and old.mode != "manual":
                    kept[key] = item
                    tally.add("duplicate", old.describe())
                else:
                    tally.add("duplicate", item.describe())
                continue
            kept[key] = item
    return events, list(kept.values()), tally
