"""Daemon mechanics with a fake ingest and a fake pipeline (no model, no sockets): fast."""

from __future__ import annotations

import argparse
import io
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rtpick.config import Config
from rtpick.ingest.state import IngestState, load_state
from rtpick.service.daemon import Daemon, DaemonHook, ListSink, StdoutSink
from rtpick.types import Pick, Record

pytestmark = pytest.mark.timeout(60)


def _record(i: int) -> Record:
    return Record("OK.FNO.01.HHZ", i * 10**9, 100.0, np.full(100, i, dtype=np.int32))


def _pick(t_s: float, phase: str = "P") -> Pick:
    ns = int(t_s * 1e9)
    return Pick("OK.FNO.01.HHZ", phase, ns, 0.9, 0.1, ns, ns, "fake")


class FakeIngest:
    def __init__(self, n: int, endless: bool = False, delay: float = 0.0):
        self.n, self.endless, self.delay = n, endless, delay
        self._stop = threading.Event()

    def records_with_position(self):
        i = 0
        while not self._stop.is_set() and (self.endless or i < self.n):
            i += 1
            if self.delay:
                time.sleep(self.delay)
            yield _record(i), ("OK_FNO", i)

    def stop(self):
        self._stop.set()


class FakePipeline:
    """Emits a pick on every 10th record, one on flush (closed at the data edge), none on drain."""

    def __init__(self, fail_at: int | None = None):
        self.fed: list[Record] = []
        self.flushed = self.drained = False
        self.fail_at = fail_at
        self.threads: set[str] = set()
        self.restored: dict | None = None

    def feed(self, record):
        self.threads.add(threading.current_thread().name)
        if self.fail_at is not None and len(self.fed) == self.fail_at:
            raise RuntimeError("boom")
        self.fed.append(record)
        n = len(self.fed)
        return [_pick(n)] if n % 10 == 0 else []

    def feed_many(self, records):
        return [pick for record in records for pick in self.feed(record)]

    def poll(self):
        return []

    def flush(self):
        self.flushed = True
        return [_pick(10_000, "S")]

    def drain(self):
        self.drained = True
        return []

    def resume_points(self):
        return {"OK.FNO.01.HH?": {"anchor": 0, "picked_to": len(self.fed) * 100, "pick_from": {"P": 0, "S": 0},
                                  "sampling_rate": 100.0}}

    def restore(self, points):
        self.restored = points


class RecordingHook(DaemonHook):
    def __init__(self):
        self.calls: list[str] = []

    def on_ready(self, daemon):
        self.calls.append("ready")

    def on_tick(self, daemon):
        self.calls.append("tick")

    def on_reload(self, daemon):
        self.calls.append("reload")

    def on_stopping(self, daemon):
        self.calls.append("stopping")


def test_feeds_everything_publishes_picks_and_saves_state(tmp_path):
    pipeline, sink, hook = FakePipeline(), ListSink(), RecordingHook()
    state_path = tmp_path / "d.state"
    daemon = Daemon(Config(), FakeIngest(35), [sink], pipeline=pipeline, hooks=[hook], state_path=str(state_path),
                    tick_s=0.05)
    assert daemon.run(install_signals=False) == 0
    assert [int(r.samples[0]) for r in pipeline.fed] == list(range(1, 36))
    assert pipeline.flushed and pipeline.threads == {"rtpick-pipeline"}
    assert [p.time_ns // 10**9 for p in sink.picks] == [10, 20, 30, 10_000]
    state = load_state(state_path)
    assert state.stations == {"OK_FNO": 35}
    assert state.channels == {"OK.FNO.01.HHZ": 35 * 10**9 + 10**9}
    assert hook.calls[0] == "ready" and hook.calls[-1] == "stopping"


def test_graceful_stop_drains_not_flushes(tmp_path):
    """A stop of a live stream publishes final picks only: nothing closed at the data edge."""
    pipeline, sink = FakePipeline(), ListSink()
    ingest = FakeIngest(0, endless=True, delay=0.001)
    daemon = Daemon(Config(), ingest, [sink], pipeline=pipeline, state_path=str(tmp_path / "s"), tick_s=0.05)
    threading.Timer(0.5, daemon.stop).start()
    assert daemon.run(install_signals=False) == 0
    assert pipeline.drained and not pipeline.flushed and all(p.phase == "P" for p in sink.picks)
    state = load_state(tmp_path / "s")
    assert state.stations["OK_FNO"] == len(pipeline.fed)  # state = exactly what was fed
    assert state.resume == pipeline.resume_points()


def test_stop_at_end_of_data_flushes(tmp_path):
    pipeline, sink = FakePipeline(), ListSink()
    daemon = Daemon(Config(), FakeIngest(0, endless=True, delay=0.001), [sink], pipeline=pipeline, tick_s=0.05)
    threading.Timer(0.3, lambda: daemon.stop(end_of_data=True)).start()
    assert daemon.run(install_signals=False) == 0
    assert pipeline.flushed and not pipeline.drained and sink.picks[-1].phase == "S"


def test_published_picks_are_never_published_again(tmp_path):
    """After a restart the state remembers published picks by identity: the same pick is suppressed."""
    state = IngestState(picks={"OK.FNO.01.HHZ|P": [20 * 10**9]})
    sink = ListSink()
    daemon = Daemon(Config(), FakeIngest(25), [sink], pipeline=FakePipeline(), state=state,
                    state_path=str(tmp_path / "s"), tick_s=0.05)
    daemon.run(install_signals=False)
    assert [p.time_ns // 10**9 for p in sink.picks] == [10, 10_000]
    assert daemon.stats.picks_suppressed == 1
    assert 10 * 10**9 in load_state(tmp_path / "s").picks["OK.FNO.01.HHZ|P"]


class ClosePicksPipeline(FakePipeline):
    """A genuine second P 0.13 s after the first on the same stream (seen on a real network)."""

    def feed(self, record):
        picks = super().feed(record)
        return [*picks, _pick(len(self.fed) + 0.13)] if picks else []


def test_two_picks_close_in_time_are_both_published(tmp_path):
    """Not a time tolerance: a pick 0.13 s after a published one (also after a restart) is a different pick."""
    sink = ListSink()
    state = IngestState(picks={"OK.FNO.01.HHZ|P": [10 * 10**9]})  # the first of the pair came before a restart
    daemon = Daemon(Config(), FakeIngest(20), [sink], pipeline=ClosePicksPipeline(), state=state,
                    state_path=str(tmp_path / "s"), tick_s=0.05)
    assert daemon.run(install_signals=False) == 0
    assert [p.time_ns for p in sink.picks if p.phase == "P"] == [10_130_000_000, 20 * 10**9, 20_130_000_000]
    assert daemon.stats.picks_suppressed == 1


class StateCheckingSink(ListSink):
    """Asserts at-most-once: every pick is in the state file on disk before it reaches a sink."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def publish_picks(self, picks):
        saved = load_state(self.path).picks
        assert all(p.time_ns in saved.get(f"{p.stream_id}|{p.phase}", ()) for p in picks)
        super().publish_picks(picks)


def test_picks_leave_after_the_save_that_remembers_them_and_saves_are_rate_limited(tmp_path):
    path = tmp_path / "s"
    sink = StateCheckingSink(path)
    daemon = Daemon(Config(), FakeIngest(300), [sink], pipeline=FakePipeline(), state_path=str(path),
                    tick_s=0.05, state_flush_s=3600)
    assert daemon.run(install_signals=False) == 0
    assert len(sink.picks) == 31  # 30 from feed, 1 from flush
    assert daemon.stats.state_saves == 2  # the first (due at once) and the last: not one per pick batch


def test_state_write_failures_are_counted_logged_once_and_picks_still_flow(tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    sink = ListSink()
    daemon = Daemon(Config(), FakeIngest(0, endless=True, delay=0.001), [sink], pipeline=FakePipeline(),
                    state_path=str(blocker / "s"), tick_s=0.05, state_flush_s=0.01)
    threading.Timer(0.5, daemon.stop).start()
    with caplog.at_level(logging.ERROR, logger="rtpick.service.daemon"):
        assert daemon.run(install_signals=False) == 0
    assert daemon.stats.state_write_errors >= 3 and daemon.stats.state_saves == 0
    assert len([r for r in caplog.records if "cannot save state file" in r.getMessage()]) == 1
    assert sink.picks  # picks are the product: published even while the state cannot be saved


def test_restore_is_called_and_picks_before_picked_to_are_suppressed(tmp_path):
    point = {"anchor": 0, "picked_to": 1500, "sampling_rate": 100.0}  # grid index: 15 s at 100 Hz
    state = IngestState(stations={"OK_FNO": 5}, channels={"OK.FNO.01.HHZ": 6 * 10**9}, resume={"OK.FNO.01.HH?": point})
    sink, pipeline = ListSink(), FakePipeline()
    daemon = Daemon(Config(), FakeIngest(25), [sink], pipeline=pipeline, state=state, state_path=str(tmp_path / "s"),
                    resume_guard_s=100.0, tick_s=0.05)
    assert pipeline.restored == {"OK.FNO.01.HH?": point}
    assert daemon.run(install_signals=False) == 0
    # the resume point wins over the guard (which would suppress everything before 6 s - 100 s)
    assert [p.time_ns // 10**9 for p in sink.picks] == [20, 10_000]
    assert daemon.stats.picks_suppressed == 1


SECOND_SIGNAL_SCRIPT = """
import sys, time
sys.path[:0] = [{repo!r}, {tests!r}]
from test_daemon import FakeIngest, FakePipeline
from rtpick.config import Config
from rtpick.service.daemon import Daemon, DaemonHook, ListSink

class SlowDrain(FakePipeline):
    def drain(self):
        time.sleep(60)
        return []

class Ready(DaemonHook):
    def on_ready(self, daemon):
        print("ready", flush=True)

sys.exit(Daemon(Config(), FakeIngest(0, endless=True, delay=0.001), [ListSink()], pipeline=SlowDrain(),
                hooks=[Ready()], tick_s=0.05).run())
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_second_signal_forces_exit(sig):
    """The first signal drains (here: forever); the second exits at once with 128 + signal number."""
    tests = Path(__file__).resolve().parent
    script = SECOND_SIGNAL_SCRIPT.format(repo=str(tests.parent), tests=str(tests))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(sig)
        time.sleep(0.5)
        assert proc.poll() is None  # still draining
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + sig
    assert f"second {signal.Signals(sig).name}: exiting without draining" in err


def test_reload_hook_and_calls_in_pipeline_thread():
    hook, seen = RecordingHook(), []
    ingest = FakeIngest(0, endless=True, delay=0.002)
    daemon = Daemon(Config(), ingest, [ListSink()], pipeline=FakePipeline(), hooks=[hook], tick_s=0.05)
    daemon.call_in_pipeline(lambda pipeline: seen.append(threading.current_thread().name))
    threading.Timer(0.2, daemon.request_reload).start()
    threading.Timer(0.6, daemon.stop).start()
    daemon.run(install_signals=False)
    assert seen == ["rtpick-pipeline"]
    assert "reload" in hook.calls and "tick" in hook.calls


def test_pipeline_failure_exits_nonzero_and_closes_sinks():
    closed = []

    class Sink(ListSink):
        def close(self):
            closed.append(True)

    daemon = Daemon(Config(), FakeIngest(0, endless=True), [Sink()], pipeline=FakePipeline(fail_at=5), tick_s=0.05)
    assert daemon.run(install_signals=False) == 1
    assert closed == [True]


def test_stdout_sink_writes_pick_messages():
    out = io.StringIO()
    StdoutSink(out).publish_picks([_pick(1.5)])
    doc = json.loads(out.getvalue())
    assert doc["schema"] == "rtpick.pick/1" and doc["stream_id"] == "OK.FNO.01.HHZ" and doc["phase"] == "P"


def test_command_line_overrides_win(tmp_path):
    from rtpick.commands.run import apply_overrides

    cfg = tmp_path / "c.toml"
    cfg.write_text('[seedlink]\nserver = "example.org:18000"\nstreams = ["GE_*"]\nstate_file = "a.state"\n')
    from rtpick.config import load_config

    args = argparse.Namespace(seedlink="127.0.0.1:18001", streams="OK_FNO:HH?,OK_X3*", state_file=None, begin_time=None)
    config = apply_overrides(load_config(cfg), args)
    assert config.seedlink.server == "127.0.0.1:18001"
    assert config.seedlink.streams == ["OK_FNO:HH?", "OK_X3*"]
    assert config.seedlink.state_file == "a.state"  # not overridden: the file's value stays


class WarmIngest(FakeIngest):
    """Yields 5 context records (seq -1) then fresh ones, as SeedLinkIngest does after a restart."""

    def records_with_position(self):
        for i in range(1, 6):
            yield _record(i), ("OK_FNO", -1)
        for i in range(6, self.n + 1):
            yield _record(i), ("OK_FNO", i)


def test_context_records_are_fed_not_committed_and_old_picks_are_suppressed(tmp_path):
    state = IngestState(stations={"OK_FNO": 5}, channels={"OK.FNO.01.HHZ": 16 * 10**9})
    audit, sink, pipeline = tmp_path / "audit", ListSink(), FakePipeline()
    daemon = Daemon(Config(), WarmIngest(30), [sink], pipeline=pipeline, state=state, state_path=str(tmp_path / "s"),
                    audit_path=str(audit), resume_guard_s=0.5, tick_s=0.05)
    assert daemon.run(install_signals=False) == 0
    assert len(pipeline.fed) == 30 and daemon.stats.warmup_fed == 5
    assert [int(line.split()[1]) // 10**9 for line in audit.read_text().splitlines()] == list(range(6, 31))
    # a pick older than the saved end minus the guard (16 s - 0.5 s) was final before the restart
    assert [p.time_ns // 10**9 for p in sink.picks] == [20, 30, 10_000]
    assert daemon.stats.picks_suppressed == 1


def test_audit_log_is_cut_back_to_the_saved_state(tmp_path):
    audit = tmp_path / "audit"
    audit.write_text("committed 1 1 1\nafter-the-save 2 2 2\n")
    state = IngestState(audit_bytes=len("committed 1 1 1\n"))
    Daemon(Config(), FakeIngest(0), [ListSink()], pipeline=FakePipeline(), state=state,
           state_path=str(tmp_path / "s"), audit_path=str(audit))
    assert audit.read_text() == "committed 1 1 1\n"
