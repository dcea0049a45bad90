"""Preliminary picks from tip windows: finals stay exact, every preliminary is closed exactly once.

The data is the bundled Oklahoma 2013 replay, fed in records of random size; a
simulated clock calls ``poll`` as the daemon does, so tip windows run between
regular ones. Nothing here is timed.
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections import Counter

import numpy as np
import obspy
import pytest
import torch

from rtpick.config import Config
from rtpick.inference.models import LoadedModel
from rtpick.ingest.replay import records_from_arrays
from rtpick.pipeline import Pipeline
from rtpick.publish.messages import pick_id, pick_message, topic_for, validate_message
from rtpick.types import Pick
from tests.oracle import match_picks, shuffled_records

FAMILIES = ["FNO.HH", "W35A.EH", "X34A.HH"]  # W35A has a 20 s gap on every component


@pytest.fixture(scope="module")
def loaded(phasenet) -> LoadedModel:
    torch.set_num_threads(1)
    return LoadedModel(phasenet, "seisbench:PhaseNet/original", "1", "")


def make_config(early: bool) -> Config:
    cfg = Config()
    cfg.stream.component_wait_s = 60.0
    cfg.inference.batch_size = 16
    cfg.inference.max_wait_s = 1e9  # partial batches only when the test says (poll with a clock far ahead)
    cfg.early.enabled = early
    cfg.early.interval_s = 1.0
    return cfg


def family_stream(oklahoma_dir, family: str) -> obspy.Stream:
    station, band = family.split(".")
    return obspy.read(str(oklahoma_dir / f"{station}.{band}?.*"))


def run(pipe: Pipeline, records, polls_every: int = 7, flush: bool = True, clock: list[float] | None = None) -> list[Pick]:
    """Feed ``records``, poll tip windows on a simulated clock (one interval per ``polls_every`` records)."""
    clock = clock if clock is not None else [0.0]
    picks: list[Pick] = []
    for k, rec in enumerate(records):
        picks += pipe.feed(rec)
        if k % polls_every == 0:
            clock[0] += pipe.config.early.interval_s
            picks += pipe.poll(now=clock[0])
    picks += pipe.flush() if flush else pipe.drain()
    return picks


def classic(pick: Pick) -> dict:
    """The pick.NET.STA message without its wall-clock fields."""
    message = pick_message(pick)
    message.pop("published")
    message.pop("data_arrived", None)
    return message


def lifecycles(picks: list[Pick]) -> dict[str, list[str]]:
    """lifecycle id -> statuses in publication order (a final without preliminary under its own id)."""
    out: dict[str, list[str]] = {}
    for pick in picks:
        out.setdefault(pick.lifecycle_id or pick_id(pick), []).append(pick.status)
    return out


def assert_closed_once(picks: list[Pick]) -> None:
    for ident, statuses in lifecycles(picks).items():
        assert statuses in (["final"], ["preliminary", "final"], ["preliminary", "retracted"]), f"{ident}: {statuses}"


@pytest.mark.parametrize("family", FAMILIES)
def test_finals_equal_classify_with_tip_windows(oklahoma_dir, loaded, family):
    """The oracle holds for final picks with tip windows on; and equals the run with them off."""
    stream = family_stream(oklahoma_dir, family)
    records = shuffled_records(stream, np.random.default_rng(zlib.crc32(family.encode())))
    on = run(Pipeline(make_config(True), loaded), records)
    off = run(Pipeline(make_config(False), loaded), records)
    finals = [p for p in on if p.status == "final"]
    theirs = loaded.model.classify(stream.copy()).picks
    extra, missing = match_picks(finals, theirs, tolerance_s=0.0101)
    assert not extra and not missing, f"{family}: extra {extra}, missing {missing}"
    assert [classic(p) for p in off] == [classic(p) for p in finals]
    assert all(p.status == "final" and not p.lifecycle_id for p in off)
    assert_closed_once(on)
    assert any(p.status == "preliminary" for p in on), "no preliminary pick at all"


def test_messages_and_topics(oklahoma_dir, loaded):
    """Finals keep today's message on pick.NET.STA; the lifecycle goes to pick_early.NET.STA (schema-valid)."""
    stream = family_stream(oklahoma_dir, "FNO.HH")
    records = shuffled_records(stream, np.random.default_rng(3))
    picks = run(Pipeline(make_config(True), loaded), records)
    for pick in picks:
        early = pick_message(pick, lifecycle=True)
        validate_message(early)
        assert topic_for(early).startswith("pick_early.")
        assert early["status"] == pick.status and early["pick_id"] == (pick.lifecycle_id or pick_id(pick))
        if pick.status == "final":
            classic = pick_message(pick)
            validate_message(classic)
            assert topic_for(classic).startswith("pick.") and "status" not in classic
            assert classic["pick_id"] == pick_id(pick) == early["final_pick_id"]


def test_last_picks_are_preliminary_before_any_flush(oklahoma_dir, loaded):
    """Data stops: the picks near its end come out as preliminaries from polling alone; drain makes no final of them."""
    stream = family_stream(oklahoma_dir, "FNO.HH")
    theirs = loaded.model.classify(stream.copy()).picks
    last = max(p.peak_time for p in theirs if p.phase == "P")
    cut = stream.copy().trim(endtime=last + 6.0)
    config = make_config(True)
    config.inference.max_wait_s = 0.0  # as the daemon after max_wait_s: a poll runs what is queued
    pipe = Pipeline(config, loaded)
    clock = [0.0]
    picks = run(pipe, shuffled_records(cut, np.random.default_rng(9)), flush=False, clock=clock)
    for _ in range(3):  # the daemon keeps polling after the data stops
        clock[0] += 1.0
        picks += pipe.poll(now=clock[0])
    prelims = [p for p in picks if p.status == "preliminary" and p.phase == "P"]
    assert any(abs(p.time_ns / 1e9 - last.timestamp) < 0.2 for p in prelims), "the last P is not published as preliminary"
    finals = [p for p in picks if p.status == "final"]
    assert all(p.time_ns / 1e9 < last.timestamp - 1 for p in finals if p.phase == "P"), "a pick with incomplete stacking was made final"


def test_lifecycle_survives_restart(oklahoma_dir, loaded):
    """Preliminaries open at a restart are finalised or retracted by the next pipeline, with their ids."""
    stream = family_stream(oklahoma_dir, "FNO.HH")
    records = shuffled_records(stream, np.random.default_rng(21), max_jitter_s=0.0)
    records.sort(key=lambda r: r.end_ns)
    reference = run(Pipeline(make_config(True), loaded), records)
    finals_ref = [pick_message(p) | {"pick_id": pick_id(p)} for p in reference if p.status == "final"]
    # cut where a preliminary is open
    for cut in range(len(records) // 4, len(records) - 50, 25):
        first = Pipeline(make_config(True), loaded)
        before = run(first, records[:cut], flush=False)
        points = first.resume_points()
        if any(point.get("early") for point in points.values()):
            break
    else:
        pytest.fail("no cut with an open preliminary pick")
    second = Pipeline(make_config(True), loaded)
    second.restore(points)
    context = [r for r in records[:cut] if r.end_ns > records[cut].start_ns - 60 * 10**9]  # the daemon re-feeds context
    after = run(second, context + records[cut:])
    published_before = {(p.phase, p.time_ns) for p in before if p.status == "final"}
    after = [p for p in after if not (p.status == "final" and (p.phase, p.time_ns) in published_before)]
    opened = {o["id"] for point in points.values() for o in point.get("early", [])}
    statuses = lifecycles(before + after)
    for ident in opened:
        assert statuses[ident][0] == "preliminary" and statuses[ident][1:] in (["final"], ["retracted"]), f"{ident}: {statuses[ident]}"
    assert_closed_once(before + after)
    finals = [pick_message(p) | {"pick_id": pick_id(p)} for p in before + after if p.status == "final"]
    assert Counter(m["pick_id"] for m in finals) == Counter(m["pick_id"] for m in finals_ref)


# -- early events ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def assoc_parts(oklahoma_dir):
    from rtpick.associate import load_stations, load_table

    table = load_table(str(oklahoma_dir / "Oklahoma.nd"))
    st = load_stations(oklahoma_dir / "tt_stations_1D.db", network="OK")
    _, first = np.unique(np.round(np.c_[st.latitude, st.longitude], 3), axis=0, return_index=True)
    st = st.subset(np.sort(first))
    inside = (np.abs(st.latitude - 35.8) < 0.675) & (np.abs(st.longitude + 97.0) < 0.83)
    return st.subset(np.flatnonzero(inside)), table


def _preliminary_p(stations, table, lat, lon, depth, origin_ns, max_km=40.0) -> list[Pick]:
    from rtpick.associate.stations import distance_km

    d = distance_km(lat, lon, stations.latitude, stations.longitude)
    out = []
    for i in np.flatnonzero(d < max_km):
        t = origin_ns + int(table(0, d[i], depth, stations.elevation_m[i]) * 1e9)
        pick = Pick(f"{stations.keys[i]}..HHZ", "P", t, 0.6, 0.05, t, t, "test", status="preliminary")
        pick.lifecycle_id = pick_id(pick)
        out.append(pick)
    return out


def _closing(pick: Pick, status: str, shift_ns: int = 0) -> Pick:
    return Pick(pick.stream_id, pick.phase, pick.time_ns + shift_ns, 0.9, 0.05, pick.time_ns, pick.time_ns, "test",
                status=status, lifecycle_id=pick.lifecycle_id)


def test_event_from_preliminary_picks_then_finals_replace_them(assoc_parts):
    """A first revision from preliminary P picks alone; the next revision carries their finals."""
    from rtpick.associate import SwarmAssociator
    from rtpick.publish.messages import event_message

    stations, table = assoc_parts
    origin = 1_700_000_000 * 10**9
    prelims = _preliminary_p(stations, table, 35.8, -97.1, 5.0, origin)
    assert len(prelims) >= 8
    assoc = SwarmAssociator(stations, table)
    for pick in prelims:
        assoc.push(pick)
    first = assoc.step()
    assert first and all(p.status == "preliminary" for p, _ in first[-1].picks)
    message = event_message(first[-1])
    validate_message(message)
    assert message["n_preliminary"] == len(first[-1].picks)
    for pick in prelims:
        assoc.push(_closing(pick, "final", shift_ns=10**7))
    later = assoc.step() + assoc.flush()
    last = later[-1]
    assert last.event_id == first[-1].event_id and not last.cancelled
    assert all(p.status == "final" for p, _ in last.picks)
    assert assoc.counters["early_finalised"] == len(prelims)


def test_event_losing_its_support_is_cancelled_once(assoc_parts):
    from rtpick.associate import SwarmAssociator
    from rtpick.publish.messages import event_message

    stations, table = assoc_parts
    origin = 1_700_000_000 * 10**9
    prelims = _preliminary_p(stations, table, 35.8, -97.1, 5.0, origin)
    assoc = SwarmAssociator(stations, table)
    for pick in prelims:
        assoc.push(pick)
    first = assoc.step()
    assert first
    for pick in prelims:
        assoc.push(_closing(pick, "retracted"))
    events = assoc.step() + assoc.flush()
    cancelled = [e for e in events if e.cancelled]
    assert len(cancelled) == 1 and cancelled[0].event_id == first[-1].event_id and cancelled[0].final
    message = event_message(cancelled[0])
    validate_message(message)
    assert message["cancelled"] is True
    assert not [e for e in events if e.event_id == first[-1].event_id and not e.cancelled]


def test_intake_takes_the_life_cycle_and_deduplicates_per_status(assoc_parts):
    """rtpick associate --early: a preliminary and its final share pick_id but are both taken; repeats are not."""
    from rtpick.associate import SwarmAssociator
    from rtpick.associate.intake import PickIntake

    stations, table = assoc_parts
    prelim = _preliminary_p(stations, table, 35.8, -97.1, 5.0, 1_700_000_000 * 10**9)[0]
    final = _closing(prelim, "final", shift_ns=10**7)
    intake = PickIntake(SwarmAssociator(stations, table))
    docs = [pick_message(prelim, lifecycle=True), pick_message(final, lifecycle=True)]
    taken = [intake.feed(doc) for doc in docs + docs]
    assert [p is not None for p in taken] == [True, True, False, False]
    assert taken[0].status == "preliminary" and taken[1].status == "final"
    assert taken[0].lifecycle_id == taken[1].lifecycle_id == prelim.lifecycle_id
    assert intake.counters["picks_duplicate"] == 2


def test_listen_latency_line():
    """rtpick listen --latency: pick latency, latency added by rtpick and transport, from the message's own times."""
    from rtpick.commands.listen import latency_line

    t = 1_700_000_000 * 10**9
    pick = Pick("OK.X..HHZ", "P", t, 0.5, 0.1, t, t, "m", status="preliminary", lifecycle_id="OK.X..HHZ/P/1",
                data_arrived_ns=t + 2 * 10**9)
    line = latency_line(pick_message(pick, lifecycle=True, published_ns=t + 2_500_000_000), t + 2_600_000_000)
    assert line == "pick preliminary OK.X..HHZ/P/1 pick=2.500 added=0.500 transport=0.100"
    assert latency_line({"schema": "rtpick.status/1"}, t) is None


def test_replay_server_records_of_one_second(oklahoma_dir):
    """serve-seedlink --record-seconds 1: every packet holds at most one second, and together the same samples."""
    from pymseed import MS3Record

    from rtpick.seedlink_server.archive import Archive

    files = sorted(oklahoma_dir.glob("FNO.HHZ.*"))
    packets = Archive(files, record_seconds=1.0).packets()
    assert packets and all(len(p.data) == 512 and p.end_ns - p.start_ns <= 10**9 for p in packets)
    samples = np.concatenate([MS3Record.parse(p.data, unpack_data=True).np_datasamples for p in packets])
    assert np.array_equal(samples, obspy.read(str(files[0]))[0].data.astype(np.int32))
    with pytest.raises(ValueError, match="positive"):
        Archive(files, record_seconds=0.0)


def test_state_file_keeps_open_preliminaries(tmp_path):
    """The daemon's state file round-trips a resume point's open preliminary picks; a malformed entry is refused."""
    from rtpick.ingest.state import IngestState, load_state, save_state
    from rtpick.picking.early import OpenPick

    t = 1_371_397_137_120_000_000
    pick = Pick("OK.FNO.01.HHZ", "P", t, 0.9, 0.05, t, t, "m", window_ns=(t - 10, t + 10), status="preliminary",
                lifecycle_id=f"OK.FNO.01.HHZ/P/{t}")
    from rtpick.inference.lane import _pick_fields

    opened = OpenPick(pick.lifecycle_id, "P", 137139713712, _pick_fields(pick))
    point = {"anchor": 137139700000, "picked_to": 137139710000, "pick_from": {"P": 137139710000}, "sampling_rate": 100.0,
             "early": [opened.to_json()]}
    path = tmp_path / "rtpick.state"
    save_state(path, IngestState(resume={"OK.FNO.01.HH?": point}))
    back = load_state(path).resume["OK.FNO.01.HH?"]["early"]
    restored = OpenPick.from_json(back[0])
    assert restored == opened and Pick(**restored.fields) == pick
    bad = json.loads(path.read_text())
    bad["resume"]["OK.FNO.01.HH?"]["early"] = [{"id": 3}]
    path.write_text(json.dumps(bad))
    assert load_state(path).resume == {}  # the corrupt file is moved aside, the daemon starts clean


class _ListIngest:
    """Yields the given (record, position) items, then waits for stop (a live feed that went quiet) unless ``ends``."""

    def __init__(self, items, ends: bool):
        self.items, self.ends = items, ends
        self._stop = threading.Event()

    def records_with_position(self):
        for item in self.items:
            if self._stop.is_set():
                return
            yield item
        if not self.ends:
            self._stop.wait(120)

    def stop(self):
        self._stop.set()


def test_lifecycle_survives_a_daemon_restart(oklahoma_dir, loaded, tmp_path):
    """Daemon stopped (drain) while a preliminary is open; the restarted daemon closes it once, with its id."""
    from rtpick.ingest.state import IngestState, load_state
    from rtpick.service.daemon import Daemon, ListSink

    stream = family_stream(oklahoma_dir, "FNO.HH")
    theirs = loaded.model.classify(stream.copy()).picks
    last_p = max(p.peak_time for p in theirs if p.phase == "P")
    records = [rec for tr in stream for rec in records_from_arrays(tr.id, tr.stats.starttime.ns, 100.0, tr.data, 100)]
    records.sort(key=lambda r: (r.end_ns, r.stream_id))  # 1 s records, as a live feed sends them
    items = [(rec, ("OK_FNO", seq)) for seq, rec in enumerate(records, start=1)]
    cut = next(k for k, rec in enumerate(records) if rec.end_ns > (last_p + 6.0).ns)
    config = make_config(True)
    config.early.interval_s = 0.05
    config.inference.max_wait_s = 0.0
    state_path = tmp_path / "rtpick.state"

    first_sink = ListSink()
    first = Daemon(config, _ListIngest(items[:cut], ends=False), [first_sink], pipeline=Pipeline(config, loaded),
                   state=IngestState(), state_path=str(state_path), state_flush_s=0.0, tick_s=0.1)

    def stop_once_preliminary():
        for _ in range(600):  # bounded: at most 60 s
            if first.stats.records_fed >= cut and any(p.status == "preliminary" and p.phase == "P" and p.time_ns > (last_p - 1).ns
                                                      for p in first_sink.picks):
                break
            time.sleep(0.1)
        first.stop()

    watcher = threading.Thread(target=stop_once_preliminary)
    watcher.start()
    assert first.run(install_signals=False) == 0
    watcher.join(timeout=70)
    state = load_state(state_path)
    opened = {o["id"] for point in state.resume.values() for o in point.get("early", [])}
    assert opened, "no preliminary open at the stop"

    context = [(rec, ("OK_FNO", -1)) for rec, _ in items[:cut] if rec.end_ns > records[cut].start_ns - 70 * 10**9]
    second_sink = ListSink()
    second = Daemon(config, _ListIngest(context + items[cut:], ends=True), [second_sink], pipeline=Pipeline(config, loaded),
                    state=state, state_path=str(state_path), state_flush_s=0.0, tick_s=0.1)
    assert second.run(install_signals=False) == 0
    published = first_sink.picks + second_sink.picks
    statuses = lifecycles(published)
    for ident in opened:
        assert statuses[ident][0] == "preliminary" and statuses[ident][1:] in (["final"], ["retracted"]), f"{ident}: {statuses[ident]}"
    assert_closed_once(published)
    finals = sorted((p.phase, p.time_ns) for p in published if p.status == "final")
    reference = sorted((p.phase, p.time_ns) for p in run(Pipeline(make_config(False), loaded), records))
    assert finals == reference


def test_finals_only_subscriber_over_zeromq():
    """Outputs with early on: a 'pick.' subscriber gets only the finals (own ids, no status); 'pick_early.' the life cycle."""
    import dataclasses

    import zmq

    from rtpick.publish.outputs import Outputs
    from tests.test_publish_messages import make_pick
    from tests.test_publish_zmq import receive, subscribe, wait_joined

    config = Config()
    config.publish.endpoint = "tcp://127.0.0.1:*"
    config.publish.linger_s = 0.2
    config.early.enabled = True
    outputs = Outputs(config).start()
    context = zmq.Context()
    finals_only = subscribe(context, outputs.publisher.endpoint, "pick.")
    early = subscribe(context, outputs.publisher.endpoint, "pick_early.")
    try:
        wait_joined(outputs.publisher, finals_only, topic=b"pick.probe")
        wait_joined(outputs.publisher, early, topic=b"pick_early.probe")
        plain = make_pick("OK.FNO.01.HHZ", "S", 3.0)
        prelim = dataclasses.replace(make_pick(), status="preliminary", lifecycle_id=pick_id(make_pick()))
        final = dataclasses.replace(make_pick(offset_s=0.05), lifecycle_id=prelim.lifecycle_id)
        gone = dataclasses.replace(make_pick(offset_s=9.0), status="retracted", lifecycle_id="OK.SIO..HHZ/P/9")
        outputs.publish_picks([prelim, plain, final, gone])
        got = receive(finals_only, 3, timeout=2.0)
        assert [(t, d["pick_id"]) for t, d in got] == [("pick.OK.FNO", pick_id(plain)), ("pick.OK.SIO", pick_id(final))]
        assert all("status" not in d for _, d in got)
        lifecycle = receive(early, 5, timeout=2.0)
        assert [(d["status"], d["pick_id"]) for _, d in lifecycle] == [
            ("preliminary", prelim.lifecycle_id), ("final", pick_id(plain)), ("final", prelim.lifecycle_id),
            ("retracted", "OK.SIO..HHZ/P/9")]
        assert lifecycle[2][1]["final_pick_id"] == pick_id(final)
    finally:
        outputs.close()
        finals_only.close()
        early.close()
        context.term()
