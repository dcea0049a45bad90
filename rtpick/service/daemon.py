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
  the position of what it has fed and saves the state file (at most once per
  ``state_flush_s``, see below).
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

Shutdown: the first SIGTERM/SIGINT (or :meth:`Daemon.stop`) stops the ingest,
feeds what is queued (at most ``drain_timeout_s``) and calls ``pipeline.drain()``,
which publishes only picks that are final: a block or trigger still open at the
data edge is left to the next process, which rebuilds it from re-fed context.
``pipeline.flush()`` (close everything at the edge, as SeisBench does) is only
for the end of the data: an ingest that ended by itself (replay, dial-up END) or
``stop(end_of_data=True)``. A second SIGTERM/SIGINT exits at once with code
128 + signal number (143, 130), logging what was not drained; the state file
then holds the last save, so the restart re-requests and re-picks the rest.

Resume and duplicates: the state file holds, per station, the sequence number of
the last record *handed to the pipeline*, ``pipeline.resume_points()`` (window
anchor and picked-to position per station, restored with ``pipeline.restore``
before the first record) and the identities (stream, phase, time in ns) of the
picks published in the last ``pick_memory_s`` of data. After a restart the
ingest re-feeds context from before the saved position; the restored pipeline
reproduces bit-identical picks there, and a pick is suppressed only if its
identity was published or it lies before its station's restored ``picked_to``.
Stations without a resume point (a state file from before resume points) keep
the old guard: picks older than ``resume_guard_s`` before the saved channel end.
Two genuine picks close in time are both published.

State writes are off the hot path: at most one save per ``state_flush_s``
(and one at shutdown). Picks are held until the next save, which remembers
them as published, and leave right after it: a kill -9 at any moment can
lose the picks of one save (those between its rename and the sinks), never
publish one twice. A pick that arrives after a quiet second is saved and
published at once; in a burst, picks wait at most ``state_flush_s``. A failed
write (full or read-only disk) is counted (``stats.state_write_errors``),
logged at most once a minute, and retried at the next save; the held picks are
published anyway, since picks matter more than the duplicate a crash during
the outage could cause.
Measured (``bench/state_save.py``, 500 stations, 348 KiB): a save takes
about 7 ms, so one per second costs the pipeline thread under 1 %; a journal
of pick ids would cost 0.16 ms per batch but needs its own replay and
compaction, and still an fsync on every batch. Holding picks for the save
keeps one file and one write path.
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
from rtpick.pipeline import FEED_CHUNK
from rtpick.stream.buffers import grid_ns
from rtpick.types import NS_PER_S, Pick, Record

log = logging.getLogger(__name__)

_END = object()
WRITE_ERROR_LOG_S = 60.0  # at most one log line per this many seconds while state writes keep failing
BUSY_POLL_S = 0.5  # while records queue up, poll the pipeline at most this often (it stages records meanwhile)


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

        for pick in picks:  # a preliminary's life cycle in its own form (status, shared pick_id), a plain final as ever
            lifecycle = pick.status != "final" or bool(pick.lifecycle_id)
            self.stream.write(json.dumps(pick_message(pick, lifecycle=lifecycle)) + "\n")
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
    picks_published: int = 0  # picks handed to the sinks, every status
    picks_suppressed: int = 0  # duplicates of already published picks (after a restart)
    state_saves: int = 0
    state_write_errors: int = 0  # failed state (or audit log) writes: full or read-only disk
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
        self._pick_floor = self._pick_floors(int(resume_guard_s * NS_PER_S))
        self._pick_memory_ns = int(pick_memory_s * NS_PER_S)
        if self.state.resume:
            self.pipeline.restore(self.state.resume)
        self.stats = DaemonStats()
        self.queue: queue.Queue = queue.Queue(maxsize=queue_records)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._pipeline_done = threading.Event()
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._dirty = False
        self._last_save = -float("inf")
        self._held: list[Pick] = []  # final picks waiting for the state save that remembers them
        self._urgent = False  # a preliminary pick is held: save and release at the next chance
        self._end_of_data = False
        self._signals = 0
        self._write_errors_logged = (0, -float("inf"))  # (error count, monotonic time) of the last log line
        self._error: BaseException | None = None
        self._threads: list[threading.Thread] = []

    # -- control ----------------------------------------------------------------
    def stop(self, end_of_data: bool = False) -> None:
        """Request a graceful stop (thread- and signal-safe).

        ``end_of_data``: no more data will ever come (the demo once the server has sent
        everything): flush the pipeline like an ingest that ended by itself, rather than
        drain it (final picks only) as for a shutdown of a live stream.
        """
        self._end_of_data = self._end_of_data or end_of_data
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
                previous[sig] = signal.signal(sig, lambda signum, _: self._on_signal(signum))
            if hasattr(signal, "SIGHUP"):
                previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        try:
            self.start()
            return self.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int) -> None:
        """First SIGTERM/SIGINT: graceful stop; the second: exit now (128 + signal number)."""
        self._signals += 1
        if self._signals == 1:
            self.stop()
            return
        log.error("second %s: exiting without draining: %d queued records not fed, %d final picks not published "
                  "(state file as last saved: the restart re-requests and re-picks them)",
                  signal.Signals(signum).name, self.queue.qsize(), len(self._held))
        logging.shutdown()
        os._exit(128 + signum)

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
            else:
                if not self._stop.is_set():  # ended by itself: replay end, dial-up END
                    self._end_of_data = True
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
            self._publish(self.pipeline.flush() if self._end_of_data else self.pipeline.drain())
        except Exception as exc:  # noqa: BLE001
            log.exception("pipeline failed: %s", exc)
            self._error = exc
        finally:
            self._stop.set()
            try:
                self._save(force=True)
            except Exception as exc:  # noqa: BLE001 - a failing sink: still close the others
                log.error("publishing the last picks failed: %s", exc)
                self._error = self._error or exc
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception as exc:  # noqa: BLE001 - one failing sink must not keep the others open
                    log.error("closing %s failed: %s", type(sink).__name__, exc)
            self._pipeline_done.set()

    def _consume(self) -> None:
        deadline = None
        next_tick = time.monotonic() + self.tick_s
        last_poll = 0.0
        while True:
            if self._stop.is_set() and deadline is None:
                deadline = time.monotonic() + self.drain_timeout_s
            if deadline is not None and time.monotonic() > deadline:
                left = self.queue.qsize()
                self.stats.dropped_at_shutdown += left
                log.warning("drain timed out: %d queued records not processed (they are re-requested on restart)", left)
                return
            items = self._take_queued()
            while not self._calls.empty():
                fn = self._calls.get()
                try:
                    fn(self.pipeline)
                except Exception as exc:  # noqa: BLE001 - e.g. a reload that does not apply: keep running
                    log.error("call in the pipeline thread failed: %s", exc)
            ended = bool(items) and items[-1] is _END
            if ended:
                items.pop()
            picks: list[Pick] = []
            if items:
                picks.extend(self.pipeline.feed_many([record for record, _ in items]))
                for record, position in items:
                    self._commit(record, position)
            if ended:
                self._publish(picks)
                return
            now = time.monotonic()
            # real time (queue empty after each record): every record is processed at once; a backlog
            # (catching up after an outage or restart) is fed FEED_CHUNK records at a time and written per
            # station in chunks of windows (see Pipeline.feed_many)
            if not items or self.queue.empty() or now - last_poll >= BUSY_POLL_S:
                picks.extend(self.pipeline.poll())
                last_poll = now
            self._publish(picks)
            if now >= next_tick:
                next_tick = now + self.tick_s
                for sink in self.sinks:
                    tick = getattr(sink, "tick", None)
                    if tick is not None:
                        tick()
            self._save()

    def _take_queued(self) -> list:
        """What the ingest queued: the next item (waiting at most 0.1 s), then as many more as are there, at most FEED_CHUNK; ``_END`` only last."""
        try:
            items = [self.queue.get(timeout=0.1)]
        except queue.Empty:
            return []
        while items[-1] is not _END and len(items) < FEED_CHUNK:
            try:
                items.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return items

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

    def _pick_floors(self, guard_ns: int) -> dict[str, int]:
        """Per stream: picks before this time were dealt with by the previous process.

        A station with a resume point: its restored ``picked_to`` (a model-rate grid index)
        less one sample, as a pick's time carries the sub-sample offset of its segment; the
        restored pipeline makes no pick below ``picked_to`` anyway, this only makes sure.
        Without one (a station that had no full window yet, or a state from an older
        version): the saved channel end minus ``guard_ns`` (the first window of re-fed
        context has no data before it, so its picks would differ).
        """
        floors = {}
        for sid, end in self.state.channels.items():
            point = self.state.resume.get(_station_key(sid))
            if point is not None:
                floors[sid] = grid_ns(int(point["picked_to"]) - 1, float(point["sampling_rate"]))
            elif guard_ns:
                floors[sid] = end - guard_ns
        return floors

    def _publish(self, picks: list[Pick]) -> None:
        """Hold new picks for the next state save; drop final picks the previous process dealt with.

        Preliminary picks and retractions are held too (the save that remembers a
        preliminary as open in the resume points must precede it, so a restart can
        still close it), but never suppressed: each is made once per process, and a
        restarted pipeline makes none for data before its restored ``picked_to``.
        A preliminary makes the next save due at once (not after ``state_flush_s``):
        it is about latency, and a save per round of tip windows is cheap.
        """
        for pick in picks:
            if pick.status != "final":
                self._held.append(pick)
                self._dirty = True
                self._urgent = self._urgent or pick.status == "preliminary"
                continue
            key = f"{pick.stream_id}|{pick.phase}"
            if pick.time_ns < self._pick_floor.get(pick.stream_id, pick.time_ns) or self.state.is_published(key, pick.time_ns):
                self.stats.picks_suppressed += 1
                continue
            self.state.remember_pick(key, pick.time_ns, self._pick_memory_ns)
            self._held.append(pick)
            self._dirty = True

    def _release(self) -> None:
        """Hand the held picks (remembered in the state just saved) to the filters and sinks."""
        fresh, self._held = self._held, []
        for filt in self.pick_filters:
            fresh = filt(fresh)
        if not fresh:
            return
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
        """Save the state if due (or ``force``), then release the held picks.

        Due: dirty and ``state_flush_s`` since the last try, so a disk that fails is
        retried once per interval, not once per record.
        """
        if not self.state_path:
            self._release()
            return
        now = time.monotonic()
        if not force and not self._urgent and now - self._last_save < self.state_flush_s:
            return
        self._urgent = False
        if self._dirty:
            self._last_save = now
            self._write_state()
        self._release()

    def _write_state(self) -> None:
        self.state.resume = self.pipeline.resume_points()
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
            self.stats.state_write_errors += 1
            self._log_write_error(exc)
            return
        if self._write_errors_logged[0]:
            log.warning("state file %s written again after %d failed writes", self.state_path,
                        self.stats.state_write_errors)
            self._write_errors_logged = (0, -float("inf"))
        self._dirty = False
        self.stats.state_saves += 1

    def _log_write_error(self, exc: OSError) -> None:
        """One ERROR line per ``WRITE_ERROR_LOG_S`` while writes keep failing (the count is in the stats)."""
        now = time.monotonic()
        logged, at = self._write_errors_logged
        if now - at < WRITE_ERROR_LOG_S:
            return
        log.error("cannot save state file %s: %s (%d failed writes so far, %d since the last message; retried every "
                  "%.0f s, picks are still published)", self.state_path, exc, self.stats.state_write_errors,
                  self.stats.state_write_errors - logged, self.state_flush_s)
        self._write_errors_logged = (self.stats.state_write_errors, now)


def _station_key(stream_id: str) -> str:
    """The pipeline's station key of a channel: ``NET.STA.LOC.HH?`` (the channel family)."""
    return stream_id[:-1] + "?"
