"""systemd integration without a dependency: ``sd_notify`` over ``$NOTIFY_SOCKET``.

- :class:`Notifier` sends ``READY=1``, ``WATCHDOG=1``, ``STATUS=…``, ``RELOADING=1``
  and ``STOPPING=1`` datagrams (a no-op when not run by systemd).
- :class:`Watchdog` pings ``WATCHDOG=1`` at half of ``WatchdogSec`` *only while
  the pipeline makes progress*: it calls a progress function (e.g. records
  processed) and stays silent when the value stops changing for longer than
  ``stall_s``, so systemd restarts a wedged daemon.
- :func:`reload_config` builds a new config from the file on SIGHUP and returns
  it only if valid (the old one stays in force otherwise); :func:`apply_thresholds`
  changes a running pipeline's pick thresholds without touching its buffers.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any, Callable

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET`` (path or abstract ``@name``)."""

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self.address = address or None
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; False if not under systemd or the send failed."""
        if self._sock is None:
            return False
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]
        payload = "\n".join(lines).encode()
        try:
            with self._lock:
                self._sock.sendto(payload, target)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        lines = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            lines.append(f"STATUS={status}")
        return self.notify(*lines)

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match the reload; older ones ignore it
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings requested by systemd (half of ``WatchdogSec``), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None


class Watchdog:
    """Pings ``WATCHDOG=1`` every ``interval`` seconds while ``progress()`` keeps changing.

    ``progress`` returns something that changes whenever the pipeline does work
    (records ingested, heartbeats of an idle-but-connected ingest, …). If it has
    not changed for ``stall_s`` the pings stop and systemd's ``WatchdogSec``
    restarts the service.
    """

    def __init__(self, notifier: Notifier, progress: Callable[[], Any], interval: float, stall_s: float) -> None:
        self.notifier = notifier
        self.progress = progress
        self.interval = interval
        self.stall_s = stall_s
        self.pings = 0
        self.stalled = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtpick-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        last_value = self.progress()
        last_change = time.monotonic()
        while not self._stop.wait(self.interval):
            value = self.progress()
            now = time.monotonic()
            if value != last_value:
                last_value, last_change = value, now
            if now - last_change <= self.stall_s:
                if self.stalled:
                    log.warning("pipeline progresses again: watchdog pings resume")
                    self.stalled = False
                self.notifier.watchdog()
                self.pings += 1
            elif not self.stalled:
                self.stalled = True
                log.error("no pipeline progress for %.0f s: watchdog pings stop (systemd will restart the service)", now - last_change)
                self.notifier.status(f"stalled: no progress for {now - last_change:.0f} s")


def reload_config(path: str | None, current: Any) -> Any:
    """SIGHUP: parse ``path`` again; the new config if valid, else ``current`` (error logged)."""
    from rtpick.config import ConfigError, load_config

    try:
        new = load_config(path)
    except ConfigError as exc:
        log.error("reload rejected, keeping the running configuration: %s", exc)
        return current
    return new


def apply_thresholds(pipeline: Any, thresholds: dict[str, float]) -> list[str]:
    """Change a running pipeline's trigger thresholds in place (buffers untouched).

    Returns the phases whose threshold changed. A trigger already open keeps
    running and closes against the new half-threshold.
    """
    changed = [phase for phase, value in thresholds.items() if pipeline.thresholds.get(phase) != value]
    if not changed:
        return []
    pipeline.thresholds.update(thresholds)
    labels = list(pipeline.labels)
    for station in list(pipeline.stations.values()):
        for index, picker in station.pickers.items():
            phase = labels[index]
            if phase in thresholds:
                picker.threshold = thresholds[phase]
    pipeline.config.picking.thresholds = dict(pipeline.thresholds)
    log.info("pick thresholds now %s", pipeline.thresholds)
    return changed
