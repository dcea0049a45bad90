"""Message documents: schema validity, documented fields, topics."""

from __future__ import annotations

import re

import jsonschema
import pytest

from rtpick.publish.messages import (
    SCHEMA_FILES,
    encode,
    event_message,
    load_schema,
    pick_message,
    status_message,
    topic_for,
    validate_message,
)
from rtpick.types import NS_PER_S, Event, Pick, iso_to_ns
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

T0 = 1371397135_123456789  # 2013-06-16T15:38:55.123456789Z


def make_pick(stream_id: str = "OK.SIO..HHZ", phase: str = "P", offset_s: float = 0.0, region: str | None = None) -> Pick:
    t = T0 + int(offset_s * NS_PER_S)
    return Pick(
        stream_id=stream_id, phase=phase, time_ns=t, probability=0.87, uncertainty_s=0.05,
        trigger_on_ns=t - 30_000_000, trigger_off_ns=t + 40_000_000, model_id="seisbench:PhaseNet/original",
        model_version="1", window_ns=(t - 20 * NS_PER_S, t + 10 * NS_PER_S), extra={"region": region} if region else {},
    )


def make_event(revision: int = 0, final: bool = False) -> Event:
    picks = [(make_pick("OK.SIO..HHZ"), 0.12), (make_pick("OK.FNO.01.HHZ", "S", 3.0), -0.2)]
    return Event(
        event_id="rtpick20130616153850a", revision=revision, origin_time_ns=T0 - 5 * NS_PER_S, latitude=35.55,
        longitude=-97.12, depth_km=5.2, horizontal_uncertainty_km=1.5, depth_uncertainty_km=3.0,
        time_uncertainty_s=0.4, picks=picks, rms_residual_s=0.16, score=1.7, final=final, created_ns=T0 + 20 * NS_PER_S,
    )


def make_status() -> dict:
    return status_message(time_ns=T0, uptime_s=12.5, stations_live=6, stations_total=7, lag_s=1.25,
                          instance="1", version="0.1.0", picks_published=3, events_published=1, messages_dropped=0)


MESSAGES = {
    "pick": lambda: pick_message(make_pick()),
    "pick-region": lambda: pick_message(make_pick(region="oklahoma")),
    "event": lambda: event_message(make_event()),
    "status": make_status,
}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_message_validates_and_every_field_is_in_its_schema(name):
    message = MESSAGES[name]()
    validate_message(message)
    schema = load_schema(message["schema"])
    assert set(message) <= set(schema["properties"]), "undeclared fields"
    assert set(schema["required"]) <= set(message)


def test_pick_fields():
    message = pick_message(make_pick())
    assert message["time"] == "2013-06-16T15:38:55.123456Z"  # microseconds, UTC, Z
    assert iso_to_ns(message["time"]) == T0 // 1000 * 1000
    assert message["pick_id"] == f"OK.SIO..HHZ/P/{T0}"
    assert message["model_id"] and message["model_version"] == "1"
    assert "region" not in message
    assert pick_message(make_pick(region="oklahoma"))["region"] == "oklahoma"


def test_event_revisions_and_counts():
    message = event_message(make_event(revision=2, final=True))
    assert (message["revision"], message["final"]) == (2, True)
    assert (message["n_p"], message["n_s"], message["n_stations"]) == (1, 1, 2)
    assert [p["residual_s"] for p in message["picks"]] == [0.12, -0.2]
    assert message["picks"][0]["pick_id"] == pick_message(make_pick())["pick_id"]
    unstamped = make_event()
    unstamped.created_ns = 0
    assert event_message(unstamped)["created"] is None
    validate_message(event_message(unstamped))


def test_invalid_messages_are_rejected():
    bad = pick_message(make_pick())
    bad["phase"] = "X"
    with pytest.raises(jsonschema.ValidationError):
        validate_message(bad)
    bad = pick_message(make_pick())
    bad["time"] = "2013-06-16 15:38:55"
    with pytest.raises(jsonschema.ValidationError):
        validate_message(bad)
    with pytest.raises(ValueError, match="unknown message schema"):
        validate_message({"schema": "rtpick.pick/9"})


def test_topics():
    assert topic_for(pick_message(make_pick("OK.FNO.01.HHZ"))) == "pick.OK.FNO"
    assert topic_for(event_message(make_event())) == "event"
    assert topic_for(make_status()) == "status"


def test_encode_is_compact_and_refuses_nan():
    assert b" " not in encode({"schema": "x", "a": [1, 2]})
    status = make_status()
    status["lag_s"] = float("nan")
    with pytest.raises(ValueError):
        encode(status)


def test_every_schema_field_is_documented():
    """docs/messages.md has a table row for every property of every schema."""
    doc = (REPO / "docs" / "messages.md").read_text()
    for name in SCHEMA_FILES:
        section = doc.split(f"## `{name}`", 1)
        assert len(section) == 2, f"docs/messages.md lacks a '## `{name}`' section"
        body = section[1].split("\n## ", 1)[0]
        schema = load_schema(name)
        props = dict(schema["properties"])
        props.update({f"picks[].{k}": v for k, v in schema["properties"].get("picks", {}).get("items", {}).get("properties", {}).items()})
        for prop in props:
            assert re.search(rf"^\| `{re.escape(prop)}` \|", body, re.M), f"{name}: field {prop!r} not documented"
