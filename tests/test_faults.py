"""Fault injection over real SeedLink into ``rtpick run`` (issue 14, acceptance 1 and 2).

One fault server serves the bundled Oklahoma archive plus renamed copies of its
stations (network ``XX``), one copy per fault kind, and ONE daemon runs against
it: the seven untouched ``OK`` stations must give exactly the clean replay's
picks while every bad input is counted by cause, memory stays bounded and
SIGTERM ends the daemon within its drain time.

What "the clean run's picks" means for a live daemon
-----------------------------------------------------
``rtpick replay`` reaches the end of its data and closes everything there
(``flush``: SeisBench's end-aligned last window). A live daemon never sees an
end of data: on SIGTERM it publishes only final picks and leaves the rest to the
next process. So a pick within :data:`TAIL_S` of its station's last sample is
*allowed* to be missing from a live run, but if published it must equal the
replay's. Every other replay pick must be published exactly once, with the same
``pick_id`` and the same probability (within 1e-6: messages carry 6 decimals).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from rtpick.seedlink_server.faults import Fault, FaultArchive, FaultServer, with_nominal_rate, write_miniseed
from tests.conftest import OKLAHOMA, free_port
from tests.daemonproc import RtpickRun, by_label, replay_picks, scrape, state_stations

pytestmark = pytest.mark.timeout(600)

TAIL_S = 60.0  # a window (30 s), a stride (15 s) and margin: picks this close to the data end may stay open
PROB_TOL = 1e-6 + 1e-9  # messages round probabilities to 6 decimals
DRAIN_S = 30.0  # the daemon's drain limit on SIGTERM (Daemon.drain_timeout_s default)
RSS_LIMIT_KIB = 1_200_000  # a clean 22-station daemon peaks near 0.6 GB; a 10-day gap in a buffer costs GBs
NS = 1_000_000_000
BEGIN = "2013-06-16T15:37:00Z"
OK_STATIONS = ("OK_FNO", "OK_LC30", "OK_OKCFA", "OK_SIO", "OK_U32A", "OK_W35A", "OK_X34A")
POISON_MAX = 20  # a poison packet may be met again after a reconnect, but not forever

# (copy, source station, kind, value, where): where = "mid" (record 100), "first" (the station's
# first record), "second_channel" (first record of a channel after another channel already has
# data), "bh_mid" (a 40 Hz BH? record); one copy per bad input of issue 14.
CASES = [
    ("XX_F01", "OK_FNO", "rate", 99.99, "mid"),
    ("XX_F02", "OK_OKCFA", "rate", 100.0000992, "mid"),
    ("XX_F03", "OK_U32A", "rate", 39.9999, "bh_mid"),
    ("XX_F04", "OK_SIO", "rate", 0.0, "mid"),
    ("XX_F05", "OK_X34A", "rate", 1e6, "mid"),
    ("XX_F06", "OK_W35A", "dated", 4070908800.0, "mid"),  # 2099-01-01
    ("XX_F07", "OK_FNO", "dated", 86400.0, "first"),  # 1970-01-02, the station's very first record
    ("XX_F08", "OK_OKCFA", "shift", 3600.0, "mid"),
    ("XX_F09", "OK_SIO", "shift", 86400.0, "mid"),
    ("XX_F10", "OK_X34A", "shift", 864000.0, "mid"),
    ("XX_F11", "OK_W35A", "nan", 0.0, "mid"),
    ("XX_F12", "OK_FNO", "garbage", 0.0, "mid"),
    ("XX_F13", "OK_OKCFA", "bad_doy", 0.0, "mid"),
    ("XX_F14", "OK_SIO", "outage", 86400.0, "mid"),
    ("XX_F15", "OK_X34A", "dated", 86400.0, "second_channel"),  # 1970 while the other channels are in 2013
]
# Clean copies: the same picks as their source. XX_F16 also sorts after the poisoned XX_F12 (same
# source, so the same sequence numbers): when the non-miniSEED packet arrives, two stations expect
# that sequence number, so a client cannot tell from the numbers alone whose packet it is.
TWINS = {"XX_F16": "OK_FNO"}
SNAPPED = {"XX_F01": 100, "XX_F02": 100, "XX_F03": 40}  # rates within tolerance of a nominal rate (snapped)
# a channel's first record dated 1970 (the station's first, or after another channel's): only that record's
# data is lost, so every pick from HEAD_S after the station's data start on equals the source's
FIRST_RECORD_CASES = ("XX_F07", "XX_F15")
HEAD_S = 60.0  # a window (30 s), a stride (15 s) and margin: the windows that held the lost record
# causes that must have counted at least this many records (rtpick_records_rejected_total{cause})
REJECTED_AT_LEAST = {"bad_sampling_rate": 2, "future_time": 1, "time_jump": 4, "non_finite": 1}
POISON_CAUSES = ("bad_header", "not_miniseed", "bad_record")  # rtpick_ingest_errors{cause}


def _where(packets, station: str, where: str) -> int:
    """Index (= sequence number - 1) of the record a fault hits, from the clean packet order."""
    own = [p for p in packets if p.station == station]
    if where == "mid":
        return 100
    if where == "first":
        return 0
    if where == "bh_mid":
        return [i for i, p in enumerate(own) if p.cha.startswith("BH")][50]
    if where == "second_channel":
        return next(i for i, p in enumerate(own) if p.cha != own[0].cha)
    raise AssertionError(where)


@pytest.fixture(scope="module")
def fault_archive() -> FaultArchive:
    copies = {copy: src for copy, src, *_ in CASES} | TWINS
    clean = FaultArchive([OKLAHOMA], copies=copies).packets()
    faults = [Fault(copy, kind, _where(clean, copy, where), value) for copy, _src, kind, value, where in CASES]
    return FaultArchive([OKLAHOMA], faults, copies=copies)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


def _config(path: Path, metrics_port: int | None = None) -> Path:
    text = "[inference]\nthreads = 1\n[logging]\nlevel = \"INFO\"\n"
    text += "[seedlink]\nnetto_s = 10.0\nreconnect_min_s = 0.05\nreconnect_max_s = 0.5\n"
    if metrics_port is not None:
        text += f"[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def reference(workdir) -> dict[str, dict]:
    """The clean ``rtpick replay`` picks by pick_id."""
    picks = replay_picks([str(OKLAHOMA)], _config(workdir / "replay.toml"), workdir)
    assert picks
    return {p["pick_id"]: p for p in picks}


def _data_bounds() -> dict[str, tuple[int, int]]:
    """Per NET.STA: (start, end) of its data in the clean archive."""
    out: dict[str, tuple[int, int]] = {}
    for trace in FaultArchive([OKLAHOMA]).traces:
        key = f"{trace.stats.network}.{trace.stats.station}"
        start, end = int(trace.stats.starttime.ns), int(trace.stats.endtime.ns)
        old = out.get(key, (start, end))
        out[key] = (min(old[0], start), max(old[1], end))
    return out


@pytest.fixture(scope="module")
def data_end_ns() -> dict[str, int]:
    """Per NET.STA: the end of its data in the clean archive."""
    return {key: end for key, (_, end) in _data_bounds().items()}


@pytest.fixture(scope="module")
def data_start_ns() -> dict[str, int]:
    """Per NET.STA: the start of its data in the clean archive."""
    return {key: start for key, (start, _) in _data_bounds().items()}


@pytest.fixture(scope="module")
def snapped_reference(fault_archive, workdir) -> dict[str, dict]:
    """Replay picks of the SNAPPED copies with their odd-rate record at the nominal rate.

    A record rewritten at a rate that needs blockette 100 holds fewer samples than the
    original (:func:`~rtpick.seedlink_server.faults._with_rate`), so the reference is
    the faulted data itself with only the rate made nominal: snapping must give
    exactly its picks.
    """
    at = {f.station: f.at_record for f in fault_archive.faults}
    packets = [p for p in fault_archive.packets() if p.station in SNAPPED]
    for p in packets:
        if p.seq - 1 == at[p.station]:
            p.data = with_nominal_rate(p.data, SNAPPED[p.station])
    path = write_miniseed(packets, workdir / "snapped.mseed")
    return {p["pick_id"]: p for p in replay_picks([str(path)], _config(workdir / "replay.toml"), workdir, "snapped")}


def _station(pick_or_id) -> str:
    sid = pick_or_id["stream_id"] if isinstance(pick_or_id, dict) else pick_or_id.split("/", 1)[0]
    return ".".join(sid.split(".")[:2])


def _time_ns(pick_id: str) -> int:
    return int(pick_id.rsplit("/", 1)[1])


def assert_same_picks(published: list[dict], reference: dict[str, dict], data_end: dict[str, int], what: str) -> None:
    """Published picks (all processes together) against the replay: none twice, none different,
    none missing except within TAIL_S of the station's data end (module docstring)."""
    counts = Counter(p["pick_id"] for p in published)
    twice = sorted(pid for pid, n in counts.items() if n > 1)
    assert not twice, f"{what}: picks published twice: {twice}"
    extra = sorted(pid for pid in counts if pid not in reference)
    assert not extra, f"{what}: picks the replay does not have (truncated or spurious): {extra}"
    wrong = sorted((p["pick_id"], p["probability"], reference[p["pick_id"]]["probability"]) for p in published
                   if abs(p["probability"] - reference[p["pick_id"]]["probability"]) > PROB_TOL)
    assert not wrong, f"{what}: probabilities differ from the replay: {wrong}"
    missing = sorted(pid for pid in reference if pid not in counts
                     and _time_ns(pid) < data_end[_station(pid)] - TAIL_S * NS)
    assert not missing, f"{what}: replay picks never published: {missing}"


def _ready(metrics_port: int) -> bool:
    """The daemon says it is ready (model loaded, ingest connected): ``rtpick_ready`` is 1."""
    try:
        return scrape(f"http://127.0.0.1:{metrics_port}/metrics", timeout_s=2.0).get(("rtpick_ready", frozenset())) == 1.0
    except OSError:
        return False


def _behind(state: Path, last: dict[str, int]) -> str:
    """Stations whose saved position has not reached their last sequence number, for failure messages."""
    saved = state_stations(state)
    return "stations behind (saved/last seq): " + ", ".join(
        f"{k} {saved.get(k, 0)}/{s}" for k, s in sorted(last.items()) if saved.get(k, 0) < s)


def _renamed(reference: dict[str, dict], source: str, copy: str) -> dict[str, dict]:
    """The reference picks of station ``source`` as its copy ``copy`` has them (NET_STA keys)."""
    src, dst = source.replace("_", ".") + ".", copy.replace("_", ".") + "."
    return {dst + pid[len(src):]: dict(p, pick_id=dst + pid[len(src):], stream_id=dst + p["stream_id"][len(src):])
            for pid, p in reference.items() if pid.startswith(src)}


def test_one_daemon_survives_every_bad_input(fault_archive, reference, snapped_reference, data_end_ns, data_start_ns,
                                             workdir):
    """Acceptance 1: odd rates, 2099/1970/future dates, NaN, poison packets, a 24 h outage, all at once."""
    mport = free_port()
    config = _config(workdir / "faults.toml", mport)
    state = workdir / "faults.state"
    packets = fault_archive.packets()
    last = {}
    for p in packets:
        last[p.station] = p.seq
    with FaultServer(fault_archive) as server:
        run = RtpickRun(["--config", str(config), "--seedlink", f"127.0.0.1:{server.port}", "--streams", "OK_*,XX_*",
                         "--state-file", str(state), "--begin-time", BEGIN, "--stdout"], workdir, "faults")
        try:
            run.wait_for(lambda: all(state_stations(state).get(k, 0) >= s for k, s in last.items()), 150,
                         "state file at the last sequence number of every station", explain=lambda: _behind(state, last))
            time.sleep(2.0)  # a tick: metrics and picks of the last records
            run.sample_rss()
            metrics = scrape(f"http://127.0.0.1:{mport}/metrics")
            assert run.alive()
            took = run.stop(signal.SIGTERM, timeout_s=DRAIN_S + 15)
        finally:
            run.kill()
    print(f"peak RSS {run.peak_rss_kib / 1024:.0f} MiB, SIGTERM → exit {took:.1f} s")
    assert run.proc.returncode == 0, run.stderr()
    assert 0 < run.peak_rss_kib < RSS_LIMIT_KIB
    published = run.picks()
    ok = [p for p in published if _station(p).startswith("OK.")]
    ok_ref = {pid: p for pid, p in reference.items() if pid.startswith("OK.")}
    assert_same_picks(ok, ok_ref, data_end_ns, "untouched OK stations")
    for twin, source in TWINS.items():
        mine = [p for p in published if _station(p) == twin.replace("_", ".")]
        ends = {twin.replace("_", "."): data_end_ns[source.replace("_", ".")]}
        assert_same_picks(mine, _renamed(reference, source, twin), ends, f"{twin} (clean copy of {source})")
    for copy, source, *_ in CASES:
        mine = [p for p in published if _station(p) == copy.replace("_", ".")]
        if copy in SNAPPED:  # a drifting rate is snapped: the very same picks as at the nominal rate
            ends = {copy.replace("_", "."): data_end_ns[source.replace("_", ".")]}
            ref = {pid: p for pid, p in snapped_reference.items() if _station(pid) == copy.replace("_", ".")}
            assert ref, f"{copy}: the reference replay has no picks"
            assert_same_picks(mine, ref, ends, f"{copy} (snapped rate)")
        elif copy in FIRST_RECORD_CASES:  # genuine records around a bogus first record are all kept
            ends = {copy.replace("_", "."): data_end_ns[source.replace("_", ".")]}
            after = data_start_ns[source.replace("_", ".")] + HEAD_S * NS
            ref = {pid: p for pid, p in _renamed(reference, source, copy).items() if _time_ns(pid) >= after}
            assert ref, f"{copy}: the reference replay has no picks after the head"
            mine = [p for p in mine if _time_ns(p["pick_id"]) >= after]
            assert_same_picks(mine, ref, ends, f"{copy} (1970 first record)")
        else:
            twice = [pid for pid, n in Counter(p["pick_id"] for p in mine).items() if n > 1]
            assert not twice, f"{copy}: picks published twice: {twice}"
    rejected = by_label(metrics, "rtpick_records_rejected_total", "cause")
    for cause, least in REJECTED_AT_LEAST.items():
        assert rejected.get(cause, 0) >= least, f"rejected {cause}: {rejected}"
    errors = by_label(metrics, "rtpick_ingest_errors_total", "cause") or by_label(metrics, "rtpick_ingest_errors", "cause")
    poison = sum(errors.get(c, 0) for c in POISON_CAUSES)
    assert 2 <= poison <= 2 * POISON_MAX, f"poison packets counted {poison} times: {errors}"


@pytest.mark.parametrize("content", [
    pytest.param(bytes(random.Random(14).randrange(256) for _ in range(4096)), id="random-bytes"),
    pytest.param(b'{"format": "rtpick.seedlink-state/1", "saved": "2013-06-16T15:40:00Z", "stations": {"OK_FNO": 100},'
                 b' "channels": {"OK.FNO.01.HHZ": 99999999999999999999999}, "picks": {}}', id="absurd-time"),
    pytest.param(b'{"format": "rtpick.seedlink-state/1", "saved": "2013-06-16T15:40:00Z", "stations": {"OK_FNO": -7},'
                 b' "channels": {}, "picks": {"OK.FNO.01.HHZ|P": [-1e300]}}', id="absurd-seq"),
])
def test_bad_state_file_is_moved_aside(content, reference, workdir, tmp_path):
    """Acceptance 1: a non-UTF-8 or absurd state file → moved aside, the daemon starts from begin_time and picks."""
    state = tmp_path / "bad.state"
    state.write_bytes(content)
    config = _config(tmp_path / "rtpick.toml")
    fno = {pid for pid in reference if pid.startswith("OK.FNO.")}
    with FaultServer(FaultArchive([OKLAHOMA])) as server:
        run = RtpickRun(["--config", str(config), "--seedlink", f"127.0.0.1:{server.port}", "--streams", "OK_FNO",
                         "--state-file", str(state), "--begin-time", BEGIN, "--stdout"], tmp_path, "state")
        try:
            run.wait_for(lambda: any(p["pick_id"] in fno for p in run.picks()), 120, "a pick of OK.FNO")
            run.stop(signal.SIGTERM, timeout_s=DRAIN_S + 15)
        finally:
            run.kill()
    assert run.proc.returncode == 0, run.stderr()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("bad.state") and p != state and p.read_bytes() == content]
    assert aside, f"the bad state file was not kept aside: {sorted(p.name for p in tmp_path.iterdir())}"
    assert state_stations(state).get("OK_FNO", 0) > 0  # a new, valid state replaced it


@pytest.mark.slow
def test_kill_and_sigterm_ten_times_publish_each_pick_once(reference, data_end_ns, workdir, tmp_path):
    """Acceptance 2: kill -9 and SIGTERM at random moments (alternating, 10 in all) during a replay with
    picks in flight, restarting with the same state file: the union of published picks is the replay's."""
    seed = int(os.environ.get("RTPICK_FAULT_SEED", random.randrange(1 << 30)))
    print(f"RTPICK_FAULT_SEED={seed}")
    rng = random.Random(seed)
    state = tmp_path / "restarts.state"
    archive = FaultArchive([OKLAHOMA])
    last = {}
    for p in archive.packets():
        last[p.station] = p.seq
    runs: list[RtpickRun] = []
    stops = []
    # speed 2: the 6-minute archive is released over 3 minutes, the event (data minute 1-2) while
    # the first few processes come and go, so stops hit picks in flight
    with FaultServer(archive, speed=2.0) as server:
        def start(name: str) -> tuple[RtpickRun, int]:
            mport = free_port()
            config = _config(tmp_path / f"{name}.toml", mport)
            run = RtpickRun(["--config", str(config), "--seedlink", f"127.0.0.1:{server.port}", "--streams", "OK_*",
                             "--state-file", str(state), "--begin-time", BEGIN, "--stdout"], tmp_path, name)
            runs.append(run)
            return run, mport

        try:
            for i in range(10):
                run, mport = start(f"run{i}")
                if i % 2 == 0:  # kill -9 at any moment, start-up included
                    sig, delay = signal.SIGKILL, rng.uniform(2.0, 14.0)
                else:  # SIGTERM once the daemon runs (before, Python's default action ends it: nothing to drain)
                    sig, delay = signal.SIGTERM, rng.uniform(0.5, 8.0)
                    run.wait_for(lambda m=mport: _ready(m), 120, "rtpick_ready 1")
                run.wait_for(lambda d=time.monotonic() + delay: time.monotonic() >= d, delay + 5, "the stop moment")
                stops.append((sig.name, round(delay, 2), sum(state_stations(state).values())))
                run.stop(sig, timeout_s=DRAIN_S + 15)
                if sig == signal.SIGTERM:
                    assert run.proc.returncode == 0, run.stderr()
            final, _ = start("final")
            final.wait_for(lambda: all(state_stations(state).get(k, 0) >= s for k, s in last.items()), 240,
                           "state file at the last sequence number of every station", explain=lambda: _behind(state, last))
            time.sleep(2.0)
            final.stop(signal.SIGTERM, timeout_s=DRAIN_S + 15)
        finally:
            for run in runs:
                run.kill()
    print("stops (signal, seconds after start or ready, records saved):", stops)
    assert final.proc.returncode == 0, final.stderr()
    published = [p for run in runs for p in run.picks()]
    print(f"published {len(published)} picks over {len(runs)} processes; replay {len(reference)}")
    assert_same_picks(published, reference, data_end_ns, f"seed {seed}")
