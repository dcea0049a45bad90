"""RecordGuard: rate snapping, non-finite samples, future times, held time jumps (no network, no model)."""

from __future__ import annotations

import logging
import math

import numpy as np
import obspy
import pytest

from rtpick.ingest.records import RecordGuard, snap_rate
from rtpick.ingest.replay import ReplayIngest
from rtpick.types import NS_PER_S, Record

T0 = 1_371_397_020 * NS_PER_S  # 2013-06-16T15:37:00Z
NOW = T0 + 3600 * NS_PER_S  # the guard's wall clock in these tests
N = 400  # samples per record: 4 s at 100 Hz


def rec(sid: str, k: float, rate: float = 100.0, data: np.ndarray | None = None) -> Record:
    """The k-th 4-s record of ``sid`` after T0 (k may be far away: jumps)."""
    samples = np.arange(N, dtype=np.int32) if data is None else data
    return Record(sid, T0 + round(k * 4 * NS_PER_S), rate, samples)


def run(guard: RecordGuard, records: list[Record]) -> list[tuple[str, int]]:
    """(stream id, record index in ``records``) of what went downstream, in order."""
    out = []
    for i, record in enumerate(records):
        out.extend((r.stream_id, pos) for r, pos in guard.check(record, i))
    return out


def make(now: int = NOW) -> RecordGuard:
    return RecordGuard(max_jump_s=120, max_future_s=300, clock=lambda: now)


@pytest.mark.parametrize(("rate", "nominal"), [
    (100.0000992, 100.0), (99.99, 100.0), (39.9999, 40.0), (100.0, 100.0), (1.0, 1.0), (1000.1, 1000.0),
    (0.0, None), (-100.0, None), (math.nan, None), (math.inf, None), (1e6, None), (1001.0, None),
    (99.9, None), (66.67, None), (0.1, None), (0.4, None),
])
def test_rate_snapping(rate, nominal):
    assert snap_rate(rate) == nominal


def test_snapped_rate_goes_downstream_and_impossible_rates_are_counted_once_logged(caplog):
    guard = make()
    with caplog.at_level(logging.WARNING, logger="rtpick.ingest.records"):
        out = guard.check(rec("OK.FNO..HHZ", 0, rate=100.0000992), "p")
        for k in range(1, 4):
            assert guard.check(rec("OK.FNO..HHN", k, rate=0.0)) == []
        assert guard.check(rec("OK.FNO..HHE", 0, rate=1e6)) == []
    assert [(r.sampling_rate, pos) for r, pos in out] == [(100.0, "p")]
    assert guard.rejected == {"bad_sampling_rate": 4}
    assert len(caplog.records) == 2  # once per stream


def test_nan_record_moves_nothing():
    """A NaN record (here longer than the genuine ones) is dropped; every genuine record after it passes."""
    bad = Record("OK.FNO..HHZ", T0 + 4 * NS_PER_S, 1.0, np.full(100, np.nan, dtype=np.float32))
    records = [rec("OK.FNO..HHZ", 0), bad] + [rec("OK.FNO..HHZ", k) for k in range(1, 20)]
    guard = make()
    assert run(guard, records) == [("OK.FNO..HHZ", i) for i in range(len(records)) if i != 1]
    assert guard.rejected == {"non_finite": 1}


@pytest.mark.parametrize("k_bad", [(4_084_000_000 - 1_371_397_020) / 4, 86_400 / 4, 10 * 86_400 / 4])  # 2099, +1 d, +10 d
def test_future_record_does_not_poison(k_bad):
    records = [rec("OK.FNO..HHZ", 0), rec("OK.FNO..HHZ", k_bad)] + [rec("OK.FNO..HHZ", k) for k in range(1, 10)]
    guard = make()
    assert [i for _, i in run(guard, records)] == [0] + list(range(2, 11))
    assert guard.rejected == {"future_time": 1}


def test_forward_jump_confirmed_by_the_next_record_goes_through_late():
    """A station back after a 6 h outage: the first record waits for the second, then both go on."""
    guard = make(now=T0 + 7 * 3600 * NS_PER_S)
    k6 = 6 * 3600 / 4
    assert run(guard, [rec("OK.FNO..HHZ", 0)]) == [("OK.FNO..HHZ", 0)]
    assert guard.check(rec("OK.FNO..HHZ", k6), "held") == []
    assert guard.held == 1
    out = guard.check(rec("OK.FNO..HHZ", k6 + 1), "next")
    assert [(r.start_ns, pos) for r, pos in out] == [(rec("", k6).start_ns, "held"), (rec("", k6 + 1).start_ns, "next")]
    assert guard.rejected == {} and guard.held == 0


def test_forward_jump_contradicted_is_dropped():
    """One record dated +1 h (still before the wall-clock limit) between genuine ones."""
    records = [rec("OK.FNO..HHZ", 0), rec("OK.FNO..HHZ", 900), rec("OK.FNO..HHZ", 1), rec("OK.FNO..HHZ", 2)]
    guard = make()
    assert [i for _, i in run(guard, records)] == [0, 2, 3]
    assert guard.rejected == {"time_jump": 1}


def test_unconfirmed_jump_at_the_end_is_dropped_by_flush():
    guard = make()
    run(guard, [rec("OK.FNO..HHZ", 0), rec("OK.FNO..HHZ", 900)])
    guard.flush()
    assert guard.rejected == {"time_jump": 1} and guard.held == 0


def test_backward_jump_far_behind_is_stale_small_overlap_passes():
    records = [rec("OK.FNO..HHZ", 100), rec("OK.FNO..HHZ", 10), rec("OK.FNO..HHZ", 100.5), rec("OK.FNO..HHZ", 101)]
    guard = make()
    assert [i for _, i in run(guard, records)] == [0, 2, 3]
    assert guard.rejected == {"time_jump": 1}


def test_first_record_of_a_channel_far_from_its_station_is_held_and_dropped_when_contradicted():
    """HHE's first record dated 1970 while HHZ/HHN are in 2013: held, contradicted by HHE's next
    record (dropped), and every genuine record passes."""
    epoch = Record("OK.FNO..HHE", 0, 100.0, np.zeros(N, dtype=np.int32))
    records = [rec("OK.FNO..HHZ", 0), rec("OK.FNO..HHN", 0), epoch, rec("OK.FNO..HHE", 1), rec("OK.OTHER..HHZ", 500)]
    guard = make()
    assert [i for _, i in run(guard, records)] == [0, 1, 3, 4]  # another station has its own time
    assert guard.rejected == {"time_jump": 1} and guard.held == 0


def test_bogus_first_record_of_a_station_loses_no_genuine_record():
    """The station's very first record is dated 1970 (accepted: nothing to compare it with). The genuine
    first records of the other channels are held until their next record confirms them, and the bogus
    channel's jump forward is held and confirmed like any other: every genuine record goes downstream."""
    epoch = Record("OK.FNO..HHZ", 86_400 * NS_PER_S, 100.0, np.zeros(N, dtype=np.int32))
    records = [epoch] + [rec(f"OK.FNO..HH{c}", k) for k in range(4) for c in "NEZ"]
    guard = make()
    out = run(guard, records)
    assert sorted(i for _, i in out) == list(range(len(records)))
    assert [i for sid, i in out if sid == "OK.FNO..HHZ"] == [0, 3, 6, 9, 12]  # each channel in order
    assert guard.rejected == {} and guard.held == 0


def test_replay_snaps_odd_rates_to_the_clean_records(tmp_path):
    """A file at 100.0000992 Hz replays as exactly the records of the same file at 100 Hz (so the same picks)."""
    data = np.random.default_rng(0).integers(-1000, 1000, 3000).astype(np.int32)
    for name, rate in (("clean", 100.0), ("odd", 100.0000992)):
        tr = obspy.Trace(data, header={"network": "OK", "station": "FNO", "channel": "HHZ", "sampling_rate": rate,
                                       "starttime": obspy.UTCDateTime(T0 / NS_PER_S)})
        (tmp_path / name).mkdir()
        tr.write(str(tmp_path / name / "x.mseed"), format="MSEED", encoding="STEIM2")
    clean = list(ReplayIngest([tmp_path / "clean"]).records())
    odd_ingest = ReplayIngest([tmp_path / "odd"])
    odd = list(odd_ingest.records())
    assert len(clean) == len(odd) > 1
    for a, b in zip(clean, odd):
        assert (a.stream_id, a.sampling_rate) == (b.stream_id, b.sampling_rate) == ("OK.FNO..HHZ", 100.0)
        # start times follow the header's rate (drift of µs): within 1 % of a sample, so the same sample slots
        assert abs(a.start_ns - b.start_ns) < NS_PER_S // 100 // 100 and np.array_equal(a.samples, b.samples)
    assert odd_ingest.guard.rejected == {}
