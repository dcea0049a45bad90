"""Versioned JSON messages that leave rtpick (stdout JSON lines, ZeroMQ).

Three documents, each with a ``"schema"`` field naming its type and major version:
``rtpick.pick/1``, ``rtpick.event/1`` and ``rtpick.status/1``. Their JSON Schema
files ship in ``rtpick/schemas/`` and every field is described in
``docs/messages.md``. Within a major version fields are only ever added, so
subscribers must ignore fields they do not know.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from importlib import resources
from typing import Any

from rtpick.types import Event, Pick, ns_to_iso

PICK_SCHEMA = "rtpick.pick/1"
EVENT_SCHEMA = "rtpick.event/1"
STATUS_SCHEMA = "rtpick.status/1"

# schema name -> file in rtpick/schemas/
SCHEMA_FILES = {
    PICK_SCHEMA: "pick-1.json",
    EVENT_SCHEMA: "event-1.json",
    STATUS_SCHEMA: "status-1.json",
}


def pick_id(pick: Pick) -> str:
    """Stable identifier of a pick: stream, phase and time in ns (picks are never emitted twice)."""
    return f"{pick.stream_id}/{pick.phase}/{int(pick.time_ns)}"


def pick_message(pick: Pick, lifecycle: bool = False, published_ns: int | None = None) -> dict[str, Any]:
    """The ``rtpick.pick/1`` document of a pick.

    Default: the final pick as published on ``pick.NET.STA`` (``pick_id`` its own
    id, no ``status``: readers of rtpick.pick/1 see exactly what they always saw).
    ``lifecycle``: the document of topic ``pick_early.NET.STA``, where every pick
    (preliminary, final, retracted) carries ``status`` and the ``pick_id`` shared by
    a preliminary and its final or retraction; a final there also names its own
    id (``final_pick_id``). ``published_ns``: the wall clock of publication
    (default: now); with ``data_arrived`` it gives the latency added by rtpick.
    """
    own = pick_id(pick)
    message = {
        "schema": PICK_SCHEMA,
        "pick_id": (pick.lifecycle_id or own) if lifecycle else own,
        "stream_id": pick.stream_id,
        "phase": pick.phase,
        "time": ns_to_iso(pick.time_ns),
        "probability": round(float(pick.probability), 6),
        "uncertainty_s": round(float(pick.uncertainty_s), 6),
        "trigger_on": ns_to_iso(pick.trigger_on_ns),
        "trigger_off": ns_to_iso(pick.trigger_off_ns),
        "model_id": pick.model_id,
        "model_version": pick.model_version,
        "window_start": ns_to_iso(pick.window_ns[0]),
        "window_end": ns_to_iso(pick.window_ns[1]),
    }
    for key in ("region", "model_sha256"):  # the lane's identity (rtpick.inference.lane); absent on hand-made picks
        value = pick.extra.get(key)
        if value:
            message[key] = str(value)
    if lifecycle:
        message["status"] = pick.status
        if pick.status == "final":
            message["final_pick_id"] = own
    if pick.data_arrived_ns:
        message["data_arrived"] = ns_to_iso(pick.data_arrived_ns)
    message["published"] = ns_to_iso(time.time_ns() if published_ns is None else published_ns)
    return message


def event_message(event: Event) -> dict[str, Any]:
    """The ``rtpick.event/1`` document of one revision of an event.

    The locator's fields (``error_ellipse``, ``azimuthal_gap_deg``,
    ``nearest_station_km``, ``locator``, ``rejected_picks``) are optional: present
    when the revision was located (see rtpick/associate/locate.py).
    """
    message = {
        "schema": EVENT_SCHEMA,
        "event_id": event.event_id,
        "revision": int(event.revision),
        "final": bool(event.final),
        "origin_time": ns_to_iso(event.origin_time_ns),
        "latitude": round(float(event.latitude), 5),
        "longitude": round(float(event.longitude), 5),
        "depth_km": round(float(event.depth_km), 3),
        "horizontal_uncertainty_km": round(float(event.horizontal_uncertainty_km), 3),
        "depth_uncertainty_km": round(float(event.depth_uncertainty_km), 3),
        "time_uncertainty_s": round(float(event.time_uncertainty_s), 4),
        "rms_residual_s": round(float(event.rms_residual_s), 4),
        "score": round(float(event.score), 4),
        "n_p": event.n_p,
        "n_s": event.n_s,
        "n_stations": event.n_stations,
        "associator": event.associator,
        "created": ns_to_iso(event.created_ns) if event.created_ns else None,
        "n_preliminary": sum(1 for pick, _ in event.picks if pick.status == "preliminary"),
        "picks": [
            {
                "pick_id": pick_id(pick),
                "stream_id": pick.stream_id,
                "phase": pick.phase,
                "time": ns_to_iso(pick.time_ns),
                "probability": round(float(pick.probability), 6),
                "residual_s": round(float(residual), 4),
                "model_id": pick.model_id,
                **{key: str(pick.extra[key]) for key in ("region", "model_sha256") if pick.extra.get(key)},
                **({"status": pick.status} if pick.status != "final" else {}),
            }
            for pick, residual in event.picks
        ],
    }
    if event.cancelled:
        message["cancelled"] = True
    arrived = max((pick.data_arrived_ns for pick, _ in event.picks), default=0)
    if arrived:
        message["data_arrived"] = ns_to_iso(arrived)
    message.update(event.extra.get("location", {}))
    if event.extra.get("rejected_picks"):
        message["rejected_picks"] = [
            {"pick_id": pick_id(pick), "stream_id": pick.stream_id, "phase": pick.phase,
             "time": ns_to_iso(pick.time_ns), "residual_s": round(float(residual), 4)}
            for pick, residual in event.extra["rejected_picks"]
        ]
    return message


def status_message(
    *,
    time_ns: int,
    uptime_s: float,
    stations_live: int,
    stations_total: int,
    lag_s: float | None,
    state: str = "running",
    instance: str = "",
    version: str = "",
    picks_published: int = 0,
    events_published: int = 0,
    messages_dropped: int = 0,
    subscribers: int = 0,
) -> dict[str, Any]:
    """The ``rtpick.status/1`` heartbeat.

    ``lag_s`` is wall clock minus the end of the newest sample processed (``None``
    before any data arrived).
    """
    return {
        "schema": STATUS_SCHEMA,
        "time": ns_to_iso(time_ns),
        "instance": instance,
        "version": version,
        "state": state,
        "uptime_s": round(float(uptime_s), 3),
        "stations_live": int(stations_live),
        "stations_total": int(stations_total),
        "lag_s": None if lag_s is None else round(float(lag_s), 3),
        "picks_published": int(picks_published),
        "events_published": int(events_published),
        "messages_dropped": int(messages_dropped),
        "subscribers": int(subscribers),
    }


def topic_for(message: dict[str, Any]) -> str:
    """ZeroMQ topic of a message: ``pick.NET.STA``, ``pick_early.NET.STA``, ``event`` or ``status``.

    ``pick.NET.STA`` carries final picks only (as ever); ``pick_early.NET.STA`` the
    pick life cycle (messages with ``status``: preliminary, final, retracted) when
    ``early.enabled``. ``pick.`` does not match ``pick_early.``.

    Subscribers filter by prefix: ``pick.`` for all picks, ``pick.OK.`` for one
    network, ``pick.OK.SIO`` for one station (note ``pick.OK.SIO`` also matches
    ``pick.OK.SIOX``; subscribe to ``pick.OK.SIO`` and check ``stream_id`` if that matters).
    """
    schema = message["schema"]
    if schema == PICK_SCHEMA:
        net, sta = message["stream_id"].split(".")[:2]
        return f"pick_early.{net}.{sta}" if "status" in message else f"pick.{net}.{sta}"
    if schema == EVENT_SCHEMA:
        return "event"
    if schema == STATUS_SCHEMA:
        return "status"
    raise ValueError(f"unknown message schema {schema!r}")


def encode(message: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON (one line, no NaN: a NaN is a bug upstream, not a value to publish)."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema document of a message type, e.g. ``load_schema("rtpick.pick/1")``."""
    try:
        filename = SCHEMA_FILES[name]
    except KeyError:
        raise ValueError(f"unknown message schema {name!r}; known: {sorted(SCHEMA_FILES)}") from None
    return json.loads(resources.files("rtpick").joinpath("schemas", filename).read_text())


def validate_message(message: dict[str, Any]) -> None:
    """Raise :class:`jsonschema.ValidationError` unless ``message`` matches its declared schema."""
    import jsonschema

    schema = load_schema(message.get("schema", ""))
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(message)
