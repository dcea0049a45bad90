"""`rtpick plot`: a PNG from the real pipeline over the Oklahoma event, rows by distance."""

from __future__ import annotations

import json

import pytest

from rtpick.cli import main
from rtpick.publish.plot import StationView, distance_km, order_rows
from rtpick.types import Pick
from tests.conftest import OKLAHOMA


def pick(station: str, phase: str, t: int) -> Pick:
    return Pick(f"OK.{station}..HHZ", phase, t, 0.9, 0.1, t, t, "m")


def test_rows_sorted_by_distance_from_the_origin_or_the_first_p():
    coords = {"OK.A": (35.0, -97.0), "OK.B": (35.5, -97.0), "OK.C": (36.0, -97.0)}
    views = {k: StationView(f"OK.{k}..HH?", picks=[pick(k, "P", t)]) for k, t in (("C", 1), ("A", 3), ("B", 2))}
    views["D"] = StationView("OK.D..HH?")  # no coordinates, no picks: last
    rows = order_rows(views, coords, origin=(36.1, -97.0))
    assert [r.station for r in rows] == ["OK.C", "OK.B", "OK.A", "OK.D"]
    assert rows[0].distance_km == pytest.approx(distance_km((36.1, -97.0), (36.0, -97.0)))
    rows = order_rows(views, coords, origin=None)  # reference: C has the first P
    assert [r.station for r in rows][:3] == ["OK.C", "OK.B", "OK.A"] and rows[0].distance_km == 0
    rows = order_rows(views, {}, origin=None)  # no coordinates: by first pick
    assert [r.station for r in rows] == ["OK.C", "OK.B", "OK.A", "OK.D"]


def test_plot_an_event_from_recorded_messages(tmp_path, capsys):
    event = {
        "schema": "rtpick.event/1", "event_id": "ev1", "revision": 1, "final": True, "origin_time": "2013-06-16T15:38:48.000000Z",
        "latitude": 35.66, "longitude": -97.13, "depth_km": 5.0, "picks": [
            {"pick_id": "x", "stream_id": "OK.LC30..HHZ", "phase": "P", "time": "2013-06-16T15:38:55.700000Z", "probability": 0.9,
             "residual_s": 0.0, "model_id": "m"}],
    }
    messages = tmp_path / "messages.jsonl"
    messages.write_text(json.dumps(dict(event, revision=0, picks=[])) + "\n" + json.dumps(event) + "\n")
    out = tmp_path / "event.png"
    config = tmp_path / "config.toml"
    config.write_text("[inference]\nthreads = 1\n")
    assert main(["plot", str(OKLAHOMA), "--event", "ev1", "--messages", str(messages), "--config", str(config), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "8 stations" in printed  # U32A has two channel families
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    assert main(["plot", str(OKLAHOMA), "--event", "nope", "--messages", str(messages)]) == 2
    assert main(["plot", str(OKLAHOMA)]) == 2
