"""Daemon mechanics with a fake ingest and a fake pipeline (no model, no sockets): fast."""

from __future__ import annotations

import argparse
import io
import json
import threading
import time

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
    """Emits a pick on every 10th record, one on poll when asked, one on flush."""

    def __init__(self, fail_at: int | None = None):
        self.fed: list[Record] = []
        self.flushed = False
        self.fail_at = fail_at
        self.threads: set[str] = set()

    def feed(self, record):
        self.threads.add(threading.current_thread().name)
        if self.fail_at is not None and len(self.fed) == self.fail_at:
            raise RuntimeError("boom")
        self.fed.append(record)
        n = len(self.fed)
        return [_pick(n)] if n % 10 == 0 else []

    def poll(self):
        return []

    def flush(self):
        self.flushed = True
        return [_pick(10_000, "S")]


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


def test_graceful_stop_drains_flushes_and_says_so(tmp_path):
    pipeline, sink = FakePipeline(), ListSink()
    ingest = FakeIngest(0, endless=True, delay=0.001)
    daemon = Daemon(Config(), ingest, [sink], pipeline=pipeline, state_path=str(tmp_path / "s"), tick_s=0.05)
    threading.Timer(0.5, daemon.stop).start()
    t0 = time.monotonic()
    assert daemon.run(install_signals=False) == 0
    assert time.monotonic() - t0 < 10
    assert pipeline.flushed and sink.picks[-1].phase == "S"
    assert load_state(tmp_path / "s").stations["OK_FNO"] == len(pipeline.fed)  # state = exactly what was fed


def test_published_picks_are_never_published_again(tmp_path):
    """After a restart the state remembers published picks; the same pick (±0.5 s) is suppressed."""
    state = IngestState(picks={"OK.FNO.01.HHZ|P": [int(20.3e9)]})
    sink = ListSink()
    daemon = Daemon(Config(), FakeIngest(25), [sink], pipeline=FakePipeline(), state=state,
                    state_path=str(tmp_path / "s"), tick_s=0.05)
    daemon.run(install_signals=False)
    assert [p.time_ns // 10**9 for p in sink.picks] == [10, 10_000]
    assert daemon.stats.picks_suppressed == 1
    assert int(10e9) in load_state(tmp_path / "s").picks["OK.FNO.01.HHZ|P"]


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
