"""The daemon: ingest thread → bounded queue → pipeline thread → sinks, with a tick loop and a bounded drain.

::

    daemon = Daemon(config, ingest, sinks=[StdoutSink()], state=state, state_path="rtpick.state")
    code = daemon.run()          # blocks; SIGTERM/SIGINT (or daemon.stop()) → graceful stop

Threads and what they own
- **ingest** iterates ``ingest.records_with_position()`` (or ``records()``) and puts
  ``(record, position)`` on a bounded queue; a full queue blocks it (back-pressure
  reaches the SeedLink server through TCP, nothing is dropped).
- **pipeline** is the only thread that touches the pipeline, the sinks and the
  resume state: it feeds records, polls partial batches, publishes picks, commits
  the position of what it has fed and saves the state file (after every published
  pick, and at least every ``state_flush_s``).
- **main** (the caller of :meth:`run`) owns signals and runs the tick loop that
  calls each hook's ``on_tick`` (the systemd watchdog belongs there).

Extension points
- ``sinks``: objects with ``publish_picks(picks)`` and ``close()`` and optionally
  ``tick()`` (called from the pipeline thread about once per second; a ZeroMQ
  socket is only ever used from that thread). ``rtpick.publish.outputs.Outputs``
  fits as is.
- ``hooks``: :class:`DaemonHook` subclasses: ``on_ready`` (after start),
  ``on_tick`` (main thread, every ``tick_s``), ``on_reload`` (SIGHUP; use
  :meth:`Daemon.call_in_pipeline` to change the pipeline safely), ``on_stopping``.
- ``pick_filters``: callables ``list[Pick] -> list[Pick]`` run before the sinks
  (e.g. the associator taps picks here).

Resume and duplicates: the state file holds, per station, the sequence number of
the last record *handed to the pipeline* and, per (stream, phase), the times of
the picks published in the last ``pick_memory_s`` of data; a pick within
``DUP_TOLERANCE_NS`` of one already published is suppressed, so a restart never
publishes a pick twice. After a restart the ingest re-feeds context from before
the saved position; picks older than ``resume_guard_s`` before it (the first
window of that context, where the pipeline lacks data before) are suppressed.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from rtpick.config import Config
from rtpick.ingest.state import IngestState, save_state
from rtpick.types import NS_PER_S, Pick, Record

log = logging.getLogger(__name__)

DUP_TOLERANCE_NS = NS_PER_S // 2  # same stream and phase within 0.5 s = the same pick
_END = object()


class Sink(Protocol):
    """Where picks go: stdout, ZeroMQ (``Outputs``), a test list…"""

    def publish_picks(self, picks: list[Pick]) -> None: ...
    def close(self) -> None: ...


class DaemonHook:
    """Life-cycle callbacks (all optional; the default does nothing)."""

    def on_ready(self, daemon: Daemon) -> None: ...
    def on_tick(self, daemon: Daemon) -> None: ...
    def on_reload(self, daemon: Daemon) -> None: ...
    def on_stopping(self, daemon: Daemon) -> None: ...


class StdoutSink:
    """``rtpick.pick/1`` JSON lines on a text stream (stdout by default), flushed per batch of picks."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stdout

    def publish_picks(self, picks: list[Pick]) -> None:
        if not picks:
            return
        from rtpick.publish.messages import pick_message

        for pick in picks:
            self.stream.write(json.dumps(pick_message(pick)) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class ListSink:
    """Collects picks in memory (tests, the demo's summary)."""

    def __init__(self):
        self.picks: list[Pick] = []

    def publish_picks(self, picks: list[Pick]) -> None:
        self.picks.extend(picks)

    def close(self) -> None:
        pass


@dataclass
class DaemonStats:
    records_fed: int = 0
    picks_published: int = 0
    picks_suppressed: int = 0  # duplicates of already published picks (after a restart)
    state_saves: int = 0
    dropped_at_shutdown: int = 0  # records received but not fed when the drain timed out
    warmup_fed: int = 0  # records re-fed for context after a restart (not committed again)
    extra: dict[str, Any] = field(default_factory=dict)


class Daemon:
    """Runs ``ingest`` into ``pipeline`` and publishes picks to ``sinks`` until stopped or ingest ends."""

    def __init__(self, config: Config, ingest: Any, sinks: Iterable[Sink], *, pipeline: Any = None,
                 hooks: Iterable[DaemonHook] = (), state: IngestState | None = None, state_path: str | None = None,
                 pick_filters: Iterable[Callable[[list[Pick]], list[Pick]]] = (), queue_records: int = 5000,
                 tick_s: float = 1.0, state_flush_s: float = 1.0, drain_timeout_s: float = 30.0,
                 record_observer: Callable[[Record], None] | None = None, audit_path: str | None = None,
                 resume_guard_s: float = 0.0, pick_memory_s: float = 600.0):
        if pipeline is None:
            from rtpick.pipeline import Pipeline

            pipeline = Pipeline(config)
        self.config, self.ingest, self.pipeline = config, ingest, pipeline
        self.sinks = list(sinks)
        self.hooks = list(hooks)
        self.pick_filters = list(pick_filters)
        self.state = state if state is not None else IngestState()
        self.state_path = state_path
        self.tick_s, self.state_flush_s, self.drain_timeout_s = tick_s, state_flush_s, drain_timeout_s
        self.record_observer = record_observer
        # audit log: one line per record, appended (and fsync'ed) just before each state save,
        # so it lists exactly the records the saved state says were handed to the pipeline
        self.audit_path = audit_path
        self._audit: list[str] = []
        if audit_path:
            self._trim_audit()
        # after a restart, picks older than (saved end of their channel - resume_guard_s) were final
        # before it: published then (suppressed by the pick memory) or never picks at all
        guard = int(resume_guard_s * NS_PER_S)
        self._pick_floor = {sid: end - guard for sid, end in self.state.channels.items()} if guard else {}
        self._pick_memory_ns = int(pick_memory_s * NS_PER_S)
        self.stats = DaemonStats()
        self.queue: queue.Queue = queue.Queue(maxsize=queue_records)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._pipeline_done = threading.Event()
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._dirty = False
        self._last_save = 0.0
        self._error: BaseException | None = None
        self._threads: list[threading.Thread] = []

    # -- control ----------------------------------------------------------------
    def stop(self) -> None:
        """Request a graceful stop (thread- and signal-safe)."""
        self._stop.set()
        self.ingest.stop()

    def request_reload(self) -> None:
        self._reload.set()

    def call_in_pipeline(self, fn: Callable[[Any], None]) -> None:
        """Run ``fn(pipeline)`` on the pipeline thread between two records."""
        self._calls.put(fn)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- life cycle ----------------------------------------------------------------
    def start(self) -> None:
        """Start the ingest and pipeline threads (``run`` does this for you)."""
        self._threads = [
            threading.Thread(target=self._ingest_loop, name="rtpick-ingest", daemon=True),
            threading.Thread(target=self._pipeline_loop, name="rtpick-pipeline", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self._hooks("on_ready")

    def run(self, install_signals: bool = True) -> int:
        """Start, tick until stopped or the ingest ends, drain, return an exit code (0 = clean)."""
        previous = {}
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda *_: self.stop())
            if hasattr(signal, "SIGHUP"):
                previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        try:
            self.start()
            return self.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def wait(self) -> int:
        """The tick loop (main thread) until the pipeline thread has finished."""
        stop_announced = False
        while not self._pipeline_done.wait(self.tick_s):
            if self._reload.is_set():
                self._reload.clear()
                self._hooks("on_reload")
            self._hooks("on_tick")
            if self._stop.is_set() and not stop_announced:
                stop_announced = True
                self._announce_stop()
        if not stop_announced:
            self._announce_stop()
        self.ingest.stop()
        for thread in self._threads:
            thread.join(timeout=self.drain_timeout_s + 10)
        return 1 if self._error is not None else 0

    def _announce_stop(self) -> None:
        log.info("stopping: draining the queue (at most %.0f s), flushing the pipeline, saving state", self.drain_timeout_s)
        self._hooks("on_stopping")
        self.ingest.stop()

    def _hooks(self, name: str) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, name)(self)
            except Exception as exc:  # noqa: BLE001 - a failing hook must not take the daemon down
                log.error("%s.%s failed: %s", type(hook).__name__, name, exc)

    # -- threads -------------------------------------------------------------------
    def _ingest_loop(self) -> None:
        source = self.ingest.records_with_position() if hasattr(self.ingest, "records_with_position") else (
            (record, None) for record in self.ingest.records())
        try:
            for item in source:
                while True:
                    try:
                        self.queue.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        if self._stop.is_set():
                            self.stats.dropped_at_shutdown += 1
                            return
                if self._stop.is_set():
                    return
        except Exception as exc:  # noqa: BLE001 - the daemon must stop cleanly whatever the ingest raises
            log.exception("ingest failed: %s", exc)
            self._error = exc
            self._stop.set()
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
            self._put_end()

    def _put_end(self) -> None:
        while True:
            try:
                self.queue.put(_END, timeout=0.2)
                return
            except queue.Full:
                if self._stop.is_set() and not any(t.name == "rtpick-pipeline" and t.is_alive() for t in self._threads):
                    return

    def _pipeline_loop(self) -> None:
        try:
            self._consume()
            self._publish(self.pipeline.flush())
        except Exception as exc:  # noqa: BLE001
            log.exception("pipeline failed: %s", exc)
            self._error = exc
        finally:
            self._stop.set()
            self._save(force=True)
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception as exc:  # noqa: BLE001 - one failing sink must not keep the others open
                    log.error("closing %s failed: %s", type(sink).__name__, exc)
            self._pipeline_done.set()

    def _consume(self) -> None:
        deadline = None
        next_tick = time.monotonic() + self.tick_s
        while True:
            if self._stop.is_set() and deadline is None:
                deadline = time.monotonic() + self.drain_timeout_s
            if deadline is not None and time.monotonic() > deadline:
                left = self.queue.qsize()
                self.stats.dropped_at_shutdown += left
                log.warning("drain timed out: %d queued records not processed (they are re-requested on restart)", left)
                return
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                item = None
            while not self._calls.empty():
                fn = self._calls.get()
                try:
                    fn(self.pipeline)
                except Exception as exc:  # noqa: BLE001 - e.g. a reload that does not apply: keep running
                    log.error("call in the pipeline thread failed: %s", exc)
            if item is _END:
                return
            picks: list[Pick] = []
            if item is not None:
                record, position = item
                picks.extend(self.pipeline.feed(record))
                self._commit(record, position)
            picks.extend(self.pipeline.poll())
            if picks:
                self._publish(picks)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + self.tick_s
                for sink in self.sinks:
                    tick = getattr(sink, "tick", None)
                    if tick is not None:
                        tick()
            self._save()

    def _commit(self, record: Record, position: tuple[str, int] | None) -> None:
        self.stats.records_fed += 1
        if self.record_observer is not None:
            self.record_observer(record)
        if position is not None and position[1] < 0:
            self.stats.warmup_fed += 1
            return  # context re-fed after a restart: committed by the previous process
        if self.audit_path:
            self._audit.append(f"{record.stream_id} {record.start_ns} {len(record.samples)} "
                               f"{zlib.crc32(np.ascontiguousarray(record.samples).tobytes())}\n")
        if position is not None and position[1] >= 0:
            self.state.stations[position[0]] = position[1]
            self.state.channels[record.stream_id] = record.end_ns
            self._dirty = True

    def _publish(self, picks: list[Pick]) -> None:
        fresh = []
        for pick in picks:
            key = f"{pick.stream_id}|{pick.phase}"
            if pick.time_ns < self._pick_floor.get(pick.stream_id, -1):
                self.stats.picks_suppressed += 1
                continue
            if any(abs(pick.time_ns - t) <= DUP_TOLERANCE_NS for t in self.state.picks.get(key, ())):
                self.stats.picks_suppressed += 1
                continue
            self.state.remember_pick(key, pick.time_ns, self._pick_memory_ns)
            fresh.append(pick)
        for filt in self.pick_filters:
            fresh = filt(fresh)
        if not fresh:
            return
        # remembered (state saved) *before* they leave: a kill in between loses them rather than
        # publishing them twice after the restart (the window is one publish call)
        self._dirty = True
        self._save(force=True)
        for sink in self.sinks:
            sink.publish_picks(fresh)
        self.stats.picks_published += len(fresh)

    def _trim_audit(self) -> None:
        """Cut the audit log back to what the state file says was committed (a kill between the two writes)."""
        try:
            size = os.path.getsize(self.audit_path)
        except OSError:
            return
        if size > self.state.audit_bytes:
            log.info("audit log %s: dropping %d bytes written after the last state save", self.audit_path,
                     size - self.state.audit_bytes)
            with open(self.audit_path, "r+b") as fh:
                fh.truncate(self.state.audit_bytes)

    def _save(self, force: bool = False) -> None:
        if not self.state_path or not self._dirty:
            return
        now = time.monotonic()
        if not force and now - self._last_save < self.state_flush_s:
            return
        try:
            if self._audit:
                with open(self.audit_path, "ab") as fh:
                    fh.write("".join(self._audit).encode())
                    fh.flush()
                    os.fsync(fh.fileno())
                    self.state.audit_bytes = fh.tell()
                self._audit.clear()
            save_state(self.state_path, self.state)
        except OSError as exc:
            log.error("cannot save state file %s: %s", self.state_path, exc)
            return
        self._dirty = False
        self._last_save = now
        self.stats.state_saves += 1
