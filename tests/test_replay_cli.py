"""`rtpick replay` on the bundled Oklahoma data: the demo's picks, as JSON lines."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema

from rtpick.types import iso_to_ns


def test_replay_prints_p_picks_for_all_seven_stations(oklahoma_dir):
    out = subprocess.run([sys.executable, "-m", "rtpick", "replay", str(oklahoma_dir), "--progress", "never"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    picks = [json.loads(line) for line in out.stdout.splitlines()]
    p_stations = {p["stream_id"].split(".")[1] for p in picks if p["phase"] == "P"}
    assert p_stations == {"FNO", "LC30", "OKCFA", "SIO", "U32A", "W35A", "X34A"}
    lc30 = [p for p in picks if p["stream_id"] == "OK.LC30..HHZ" and p["phase"] == "P"]
    assert len(lc30) == 1 and abs(iso_to_ns(lc30[0]["time"]) - iso_to_ns("2013-06-16T15:38:55.74Z")) <= 10_000_000
    for p in picks:
        assert {"stream_id", "phase", "time", "probability"} <= p.keys()
        assert p["time"].endswith("Z") and 0.3 <= p["probability"] <= 1
    assert len({(p["stream_id"], p["phase"], p["time"]) for p in picks}) == len(picks)  # never twice
    assert "8 stations" in out.stderr and "picks" in out.stderr


def test_pick_messages_validate_against_the_shipped_schema(oklahoma_dir):
    from importlib.resources import files

    schema = json.loads((files("rtpick") / "schemas" / "pick-1.json").read_text())
    out = subprocess.run([sys.executable, "-m", "rtpick", "replay", str(oklahoma_dir / "LC30.HHZ.OK...20130616153850.msd"), str(oklahoma_dir / "LC30.HHN.OK...20130616153850.msd"), str(oklahoma_dir / "LC30.HHE.OK...20130616153850.msd"), "--progress", "never"], capture_output=True, text=True, timeout=300)
    lines = out.stdout.splitlines()
    assert lines
    for line in lines:
        jsonschema.validate(json.loads(line), schema)
