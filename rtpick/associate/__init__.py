"""Event association: travel times, station geometry and the swarm-aware streaming associator.

``build_associator(config.associate)`` gives a ready :class:`SwarmAssociator`;
``pick_from_message`` turns an ``rtpick.pick/1`` document back into a Pick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rtpick.associate.stations import Stations, load_stations
from rtpick.associate.swarm import AssociatorSettings, SwarmAssociator
from rtpick.associate.traveltime import TravelTimeTable, VelocityModelError, load_table
from rtpick.types import PICK_STATUSES, Pick, iso_to_ns

BUNDLED = Path(__file__).resolve().parents[1] / "data" / "oklahoma_2013-06-16"

__all__ = [
    "AssociatorSettings", "Stations", "SwarmAssociator", "TravelTimeTable", "VelocityModelError",
    "build_associator", "load_stations", "load_table", "pick_from_message", "settings_from_config",
]


def settings_from_config(config: Any) -> AssociatorSettings:
    """:class:`AssociatorSettings` from a :class:`rtpick.config.AssociateConfig` (same field names)."""
    names = set(AssociatorSettings.__dataclass_fields__)
    values = {k: v for k, v in config.model_dump().items() if k in names}
    if "depths_km" in values:
        values["depths_km"] = tuple(values["depths_km"])
    return AssociatorSettings(**values)


def build_associator(config: Any) -> SwarmAssociator:
    """Stations, travel-time table (tabulated once, ~1 s) and associator from the ``[associate]`` section."""
    stations = load_stations(config.stations or BUNDLED / "stations.csv", network=config.network)
    if config.region:
        if len(config.region) != 4:
            raise ValueError("associate.region must be [lat_min, lat_max, lon_min, lon_max]")
        lat0, lat1, lon0, lon1 = config.region
        inside = ((stations.latitude >= lat0) & (stations.latitude <= lat1)
                  & (stations.longitude >= lon0) & (stations.longitude <= lon1))
        if not inside.any():
            raise ValueError(f"associate.region {config.region} contains none of the {len(stations)} stations")
        stations = stations.subset(np.flatnonzero(inside))
    settings = settings_from_config(config)
    table = load_table(config.velocity_model or str(BUNDLED / "Oklahoma.nd"),
                       max_depth_km=max(40.0, settings.max_depth_km + 5.0))
    return SwarmAssociator(stations, table, settings)


def _status(doc: dict[str, Any]) -> str:
    """The pick's life-cycle status (absent = final, as on topic pick.NET.STA)."""
    status = str(doc.get("status", "final"))
    if status not in PICK_STATUSES:
        raise ValueError(f"rtpick.pick/1 message has an unknown status {status!r}")
    return status


def pick_from_message(doc: dict[str, Any]) -> Pick:
    """The :class:`Pick` of an ``rtpick.pick/1`` document; ``ValueError`` if it is not one."""
    if doc.get("schema") != "rtpick.pick/1":
        raise ValueError(f"not an rtpick.pick/1 message (schema {doc.get('schema')!r})")
    try:
        time_ns = iso_to_ns(doc["time"])
        window = (iso_to_ns(doc["window_start"]), iso_to_ns(doc["window_end"])) if "window_start" in doc else (0, 0)
        return Pick(
            stream_id=str(doc["stream_id"]),
            phase=str(doc["phase"]),
            time_ns=time_ns,
            probability=float(doc["probability"]),
            uncertainty_s=float(doc.get("uncertainty_s", 0.0)),
            trigger_on_ns=iso_to_ns(doc["trigger_on"]) if "trigger_on" in doc else time_ns,
            trigger_off_ns=iso_to_ns(doc["trigger_off"]) if "trigger_off" in doc else time_ns,
            model_id=str(doc.get("model_id", "")),
            model_version=str(doc.get("model_version", "")),
            window_ns=window,
            extra={k: doc[k] for k in ("region",) if k in doc},
            status=_status(doc),
            lifecycle_id=str(doc["pick_id"]) if "status" in doc and "pick_id" in doc else "",
            data_arrived_ns=iso_to_ns(doc["data_arrived"]) if "data_arrived" in doc else 0,
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"rtpick.pick/1 message lacks a valid {exc}") from None
