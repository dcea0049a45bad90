"""Associator: travel times, hand-built pick sets, bad input, the command line."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from rtpick.associate import (
    AssociatorSettings,
    SwarmAssociator,
    VelocityModelError,
    load_stations,
    load_table,
    pick_from_message,
)
from rtpick.associate.stations import distance_km
from rtpick.associate.traveltime import read_nd, table_0d
from rtpick.publish.messages import event_message, pick_message, validate_message
from rtpick.types import NS_PER_S, Pick

T0 = 1_700_000_000 * NS_PER_S


def _picks(stations, table, lat, lon, depth, origin_ns, max_km=60.0, phases=(0, 1), prob=0.8, tag=""):
    d = distance_km(lat, lon, stations.latitude, stations.longitude)
    out = []
    for i in np.flatnonzero(d < max_km):
        for ph in phases:
            t = origin_ns + int(table(ph, d[i], depth, stations.elevation_m[i]) * NS_PER_S)
            out.append(Pick(f"{stations.keys[i]}..HHZ", "PS"[ph], t, prob, 0.05, t, t, "test", extra={"tag": tag}))
    return out


# -- travel times -------------------------------------------------------------------------


def test_1d_table_matches_the_bundled_table_for_a_5_km_source(oklahoma_dir, table):
    with sqlite3.connect(oklahoma_dir / "tt_stations_1D.db") as con:
        rows = np.array(con.execute("SELECT d_km, p_tt, s_tt FROM traveltimes WHERE d_km BETWEEN 5 AND 200").fetchall())
    assert np.abs(table("P", rows[:, 0], 5.0) - rows[:, 1]).max() < 0.12
    assert np.abs(table("S", rows[:, 0], 5.0) - rows[:, 2]).max() < 0.2


def test_0d_table_is_straight_rays_and_elevation_adds_time():
    tab = table_0d(6.0, 3.5)
    assert tab("P", 30.0, 40.0) == pytest.approx(50.0 / 6.0, abs=1e-6)
    assert tab("S", 30.0, 40.0, elevation_m=350.0) == pytest.approx(50.0 / 3.5 + 0.1, abs=1e-6)


@pytest.mark.parametrize(
    "lines, line_no, words",
    [
        (["0.0 5.0 3.0", "1.0 5.5", "2.0 6.0 3.5"], 2, "expected 'depth vp vs"),
        (["0.0 5.0 3.0", "1.0 fast 3.2"], 2, "must be numbers"),
        (["0.0 5.0 3.0", "5.0 6.0 3.5", "4.0 6.0 3.5"], 3, "above the previous row"),
        (["0.0 5.0 3.0", "mantle", "2.0 -6.0 3.5"], 3, "positive"),
    ],
)
def test_malformed_velocity_model_names_file_and_line(tmp_path, lines, line_no, words):
    path = tmp_path / "bad.nd"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(VelocityModelError) as err:
        read_nd(path)
    assert f"{path}:{line_no}:" in str(err.value)
    assert words in str(err.value)


def test_missing_velocity_model_is_a_clear_error(tmp_path):
    with pytest.raises(VelocityModelError, match="cannot read velocity model"):
        load_table(str(tmp_path / "nope.nd"))


# -- hand-built pick sets -----------------------------------------------------------------


def test_two_events_one_and_a_half_seconds_apart_at_different_places(stations, table):
    picks = _picks(stations, table, 35.7, -97.3, 5.0, T0, tag="a") + _picks(
        stations, table, 36.0, -96.9, 7.0, T0 + int(1.5 * NS_PER_S), tag="b")
    assoc = SwarmAssociator(stations, table)
    events = assoc.run(picks)
    last = {}
    for ev in events:
        last[ev.event_id] = ev
    assert len(last) == 2
    found = sorted(last.values(), key=lambda e: e.origin_time_ns)
    for ev, (lat, lon, origin, tag) in zip(found, [(35.7, -97.3, T0, "a"), (36.0, -96.9, T0 + 1.5 * NS_PER_S, "b")]):
        assert distance_km(ev.latitude, ev.longitude, lat, lon) < 3.0
        assert abs(ev.origin_time_ns - origin) < 0.3 * NS_PER_S
        tags = [p.extra["tag"] for p, _ in ev.picks]
        assert tags.count(tag) >= 0.95 * len(tags)
        assert len(tags) >= 0.8 * sum(1 for p in picks if p.extra["tag"] == tag)


def test_a_lone_false_pick_creates_nothing(stations, table):
    assoc = SwarmAssociator(stations, table)
    pick = Pick(f"{stations.keys[0]}..HHZ", "P", T0, 0.99, 0.05, T0, T0, "test")
    assert assoc.run([pick]) == []
    assert assoc.counters["events"] == 0


def test_random_false_picks_create_no_event(stations, table):
    rng = np.random.default_rng(5)
    picks = []
    for _ in range(300):  # 300 picks over 10 minutes on 50 stations
        t = T0 + int(rng.uniform(0, 600) * NS_PER_S)
        picks.append(Pick(f"{stations.keys[rng.integers(len(stations))]}..HHZ", "PS"[rng.integers(2)], t, 0.6, 0.05, t, t, "test"))
    assert SwarmAssociator(stations, table).run(picks) == []


def test_late_s_picks_bring_a_revision_of_the_same_event(stations, table):
    p_picks = _picks(stations, table, 35.9, -97.1, 6.0, T0, phases=(0,))
    s_picks = _picks(stations, table, 35.9, -97.1, 6.0, T0, phases=(1,))
    assoc = SwarmAssociator(stations, table)
    first = []
    for pick in p_picks:
        assoc.push(pick)
    first += assoc.step(max(p.time_ns for p in p_picks))
    assert len(first) >= 1 and first[0].revision == 0 and first[0].n_s == 0
    later = []
    for pick in sorted(s_picks, key=lambda p: p.time_ns):
        assoc.push(pick)
        later += assoc.step(pick.time_ns)
    later += assoc.flush()
    assert later, "no revision after the S picks"
    assert {ev.event_id for ev in later} == {first[0].event_id}
    assert later[-1].revision > first[-1].revision
    assert later[-1].n_s >= 0.8 * len(s_picks)
    assert later[-1].final
    validate_message(event_message(later[-1]))


def test_picks_of_unknown_stations_are_counted_and_ignored(stations, table):
    assoc = SwarmAssociator(stations, table)
    picks = _picks(stations, table, 35.8, -97.0, 5.0, T0)
    strangers = [Pick("XX.NOPE..HHZ", "P", T0 + i * NS_PER_S, 0.9, 0.05, T0, T0, "test") for i in range(5)]
    events = assoc.run(picks + strangers)
    assert assoc.counters["picks_unknown_station"] == 5
    assert {ev.event_id for ev in events} and all(
        p.station_key != "XX.NOPE" for ev in events for p, _ in ev.picks)


def test_a_station_clock_offset_and_missing_s_are_tolerated(stations, table):
    picks = _picks(stations, table, 35.6, -97.2, 4.0, T0, phases=(0,))  # P only
    key = picks[0].station_key
    picks = [Pick(p.stream_id, p.phase, p.time_ns + (int(0.25 * NS_PER_S) if p.station_key == key else 0),
                  p.probability, 0.05, p.time_ns, p.time_ns, "test") for p in picks]
    events = SwarmAssociator(stations, table).run(picks)
    assert len({ev.event_id for ev in events}) == 1
    assert distance_km(events[-1].latitude, events[-1].longitude, 35.6, -97.2) < 3.0


def test_pick_message_round_trip():
    pick = Pick("OK.SIO..HHZ", "S", T0 + 123456789, 0.75, 0.08, T0, T0 + 5, "seisbench:PhaseNet/original", "1", (T0, T0 + 30 * NS_PER_S))
    back = pick_from_message(json.loads(json.dumps(pick_message(pick))))
    assert (back.stream_id, back.phase, back.probability, back.model_id) == (pick.stream_id, "S", 0.75, pick.model_id)
    assert abs(back.time_ns - pick.time_ns) < 1000  # microsecond precision on the wire
    with pytest.raises(ValueError, match="not an rtpick.pick/1"):
        pick_from_message({"schema": "rtpick.event/1"})


# -- command line -------------------------------------------------------------------------


def test_associate_command_reads_json_lines_and_prints_events(tmp_path, oklahoma_dir, table):
    demo = load_stations(oklahoma_dir / "stations.csv")
    picks = _picks(demo, table, 35.45, -97.1, 5.0, T0, max_km=400.0)
    picks.append(Pick("XX.NOPE..HHZ", "P", T0, 0.9, 0.05, T0, T0, "test"))
    path = tmp_path / "picks.jsonl"
    path.write_text("".join(json.dumps(pick_message(p)) + "\n" for p in picks) + "not json\n")
    out = subprocess.run([sys.executable, "-m", "rtpick", "associate", "--input", str(path), "--final-only"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(events) == 1 and events[0]["final"]
    validate_message(events[0])
    assert distance_km(events[0]["latitude"], events[0]["longitude"], 35.45, -97.1) < 5.0
    assert "picks_unknown_station=1" in out.stderr


def test_associate_command_rejects_a_bad_velocity_model(tmp_path):
    bad = tmp_path / "bad.nd"
    bad.write_text("0 5 3\n1 x 3\n")
    out = subprocess.run([sys.executable, "-m", "rtpick", "associate", "--input", "-", "--velocity-model", str(bad)],
                         input="", capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"{bad}:2:" in out.stderr


def test_settings_mirror_the_config_section():
    from rtpick.associate import settings_from_config
    from rtpick.config import AssociateConfig

    settings = settings_from_config(AssociateConfig(min_picks=9, depths_km=[2.0, 8.0]))
    assert settings.min_picks == 9 and settings.depths_km == (2.0, 8.0)
    assert settings.tolerance_s == AssociatorSettings().tolerance_s


def test_daemon_sink_publishes_revisions_and_a_final_one(stations, table):
    from rtpick.associate.sink import AssociatorSink

    published = []
    sink = AssociatorSink(SwarmAssociator(stations, table), published.append)
    picks = sorted(_picks(stations, table, 35.8, -97.1, 5.0, T0), key=lambda p: p.time_ns)
    for i in range(0, len(picks), 10):  # the daemon hands over batches and ticks about once a second
        sink.publish_picks(picks[i:i + 10])
        sink.tick()
    sink.close()
    assert published and len({ev.event_id for ev in published}) == 1
    assert [ev.revision for ev in published] == list(range(len(published)))
    assert published[-1].final and not any(ev.final for ev in published[:-1])
    for ev in published:
        validate_message(event_message(ev))


def test_associate_command_subscribes_to_pickers_over_zeromq(oklahoma_dir, table):
    import signal
    import time

    import zmq

    from tests.conftest import free_port

    demo = load_stations(oklahoma_dir / "stations.csv")
    picks = sorted(_picks(demo, table, 35.45, -97.1, 5.0, T0, max_km=400.0), key=lambda p: p.time_ns)
    port = free_port()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)  # XPUB: we see the subscription arrive, no sleep-and-hope
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(f"tcp://127.0.0.1:{port}")
    proc = subprocess.Popen([sys.executable, "-m", "rtpick", "associate", "--subscribe", f"tcp://127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert pub.poll(60_000), "the associator never subscribed"
        assert pub.recv() == b"\x01pick."
        for pick in picks:
            msg = pick_message(pick)
            net, sta = pick.stream_id.split(".")[:2]
            pub.send_multipart([f"pick.{net}.{sta}".encode(), json.dumps(msg).encode()])
        time.sleep(3.0)  # a few ticks
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        pub.close()
        ctx.term()
    events = [json.loads(line) for line in out.splitlines()]
    assert events, err
    assert len({e["event_id"] for e in events}) == 1
    assert events[-1]["final"] and events[-1]["n_p"] >= 5
    for doc in events:
        validate_message(doc)
