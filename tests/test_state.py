"""The resume state file: any corruption is moved aside, never a crash; where the file lives."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from rtpick.ingest.state import STATE_FORMAT, IngestState, load_state, resolve_state_file, save_state

GOOD = {"format": STATE_FORMAT, "stations": {"OK_FNO": 12}, "channels": {"OK.FNO.01.HHZ": 1371397430000000000},
        "picks": {"OK.FNO.01.HHZ|P": [1371397137120000000]},
        "resume": {"OK.FNO.01.HH?": {"anchor": 137139700000, "picked_to": 137139740000, "pick_from": {"P": 137139740000},
                                      "sampling_rate": 100.0}}}


def _bad(**changes) -> str:
    doc = json.loads(json.dumps(GOOD))
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = doc
        for name in parents:
            node = node[name]
        node[leaf] = value
    return json.dumps(doc)


CORRUPT = {
    "random bytes": os.urandom(4096) + b"\xff\xfe",  # not UTF-8: was a UnicodeDecodeError traceback
    "zeros": bytes(512),
    "truncated": json.dumps(GOOD)[:40].encode(),
    "not an object": b"[1, 2, 3]",
    "absurd channel time": _bad(channels__x=10**30).encode(),  # was 'timestamp out of range'
    "channel time in 2200": _bad(channels__x=7258118400 * 10**9).encode(),
    "huge float": b'{"format": "%s", "channels": {"x": 1e400}}' % STATE_FORMAT.encode(),
    "negative seq": _bad(stations__OK_FNO=-1).encode(),
    "seq too large": _bad(stations__OK_FNO=0x1000000).encode(),
    "seq as string": _bad(stations__OK_FNO="12").encode(),
    "seq as bool": _bad(stations__OK_FNO=True).encode(),
    "stations a list": _bad(stations=[1]).encode(),
    "picks not a list": _bad(picks__x=5).encode(),
    "resume not an object": _bad(resume__x=5).encode(),
    "resume with a string": _bad(resume__OK_X={"picked_to": "soon"}).encode(),
    "resume nested too deep": _bad(resume__OK_X={"pick_from": {"P": {"x": 1}}}).encode(),
    "negative audit bytes": _bad(audit_bytes=-5).encode(),
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("content", CORRUPT.values(), ids=CORRUPT.keys())
def test_any_corrupt_state_is_moved_aside_and_logged_once(tmp_path, caplog, content):
    path = tmp_path / "sl.state"
    path.write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="rtpick.ingest.state"):
        assert load_state(path) == IngestState()
    assert not path.exists() and (tmp_path / "sl.state.corrupt").read_bytes() == content
    assert len([r for r in caplog.records if "corrupt" in r.getMessage()]) == 1


def test_good_state_roundtrips_with_resume_points(tmp_path):
    path = tmp_path / "sl.state"
    path.write_text(json.dumps(GOOD))
    state = load_state(path)
    assert state.resume == GOOD["resume"] and state.stations == {"OK_FNO": 12}
    save_state(path, state)
    assert load_state(path) == state


def test_published_is_by_identity_not_tolerance():
    state = IngestState()
    state.remember_pick("S|P", 10**18)
    assert state.is_published("S|P", 10**18)
    assert not state.is_published("S|P", 10**18 + 1) and not state.is_published("S|S", 10**18)


def test_relative_state_file_location(tmp_path, monkeypatch):
    config = tmp_path / "etc" / "rtpick.toml"
    monkeypatch.chdir(tmp_path)
    assert resolve_state_file("/abs/x.state", str(config), {"STATE_DIRECTORY": "/var/lib/rtpick"}) == Path("/abs/x.state")
    # systemd StateDirectory= first (the one place a hardened unit may write); the first of several
    assert resolve_state_file("x.state", str(config), {"STATE_DIRECTORY": "/var/lib/rtpick:/var/lib/other"}) == \
        Path("/var/lib/rtpick/x.state")
    assert resolve_state_file("x.state", str(config), {}) == tmp_path / "etc" / "x.state"  # next to the config
    assert resolve_state_file("x.state", None, {}) == tmp_path / "x.state"  # working directory
