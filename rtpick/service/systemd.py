"""systemd integration without a dependency: ``sd_notify`` over ``$NOTIFY_SOCKET``.

- :class:`Notifier` sends ``READY=1``, ``WATCHDOG=1``, ``STATUS=…``, ``RELOADING=1``
  and ``STOPPING=1`` datagrams (a no-op when not run by systemd).
- :class:`SystemdHook` plugs them into the daemon's life cycle (READY after
  start-up, WATCHDOG only while the pipeline makes progress, STATUS, STOPPING,
  SIGHUP reload).
- :func:`reload_config` builds a new config from the file on SIGHUP and returns
  it only if valid (the old one stays in force otherwise); :meth:`SystemdHook.on_reload`
  then re-resolves every region's lane (:func:`rtpick.inference.swap.plan_reload`:
  new weights loaded and verified beside the old ones, thresholds from the region,
  the file or the model's ``default_args``) and switches each changed lane on the
  pipeline thread between two batches (``Pipeline.swap_model``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

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


class SystemdHook:
    """Daemon hook (see :class:`rtpick.service.daemon.DaemonHook`): sd_notify, watchdog, SIGHUP reload.

    - ``READY=1`` once the daemon started (models are loaded before) *and* the
      ingest is connected (``ingest.stats.state == "streaming"``; an ingest
      without that attribute, like a replay, counts as connected);
    - ``WATCHDOG=1`` every ``WatchdogSec``/2, only while the pipeline thread makes
      progress: each tick queues a no-op on the pipeline thread
      (``daemon.call_in_pipeline``) and pings only once it ran, so a wedged
      pipeline (inference hang, deadlock) stops the pings and systemd restarts it;
    - ``STATUS=`` about every ``status_every_s``; ``STOPPING=1`` when the drain begins;
    - SIGHUP: ``RELOADING=1``, re-read the config file, hot-swap each region whose
      model, weights (sha256) or resolved settings (thresholds, blinding, batch size)
      changed, then ``READY=1`` with what changed. An invalid file is rejected and
      the running configuration stays; a region whose new model fails verification
      keeps its old model (ERROR naming the region and the reason,
      ``rtpick_model_reload_failures_total{region}``) while the others switch.
    """

    def __init__(self, outputs: Any = None, config_path: str | None = None, ingest: Any = None,
                 notifier: Notifier | None = None, status_every_s: float = 10.0) -> None:
        self.outputs = outputs
        self.config_path = config_path
        self.ingest = ingest
        self.notifier = notifier if notifier is not None else Notifier()
        self.interval = watchdog_interval()
        self.status_every_s = status_every_s
        self.ready_sent = False
        self.pings = 0
        self.reloads = 0
        self._beats = 0  # incremented on the pipeline thread
        self._beat_queued = False
        self._last_ping = 0.0
        self._last_status = 0.0

    # -- hook interface -------------------------------------------------------------------
    def on_ready(self, daemon: Any) -> None:
        self.notifier.status("starting: connecting ingest")
        self._maybe_ready(daemon)

    def on_tick(self, daemon: Any) -> None:
        self._maybe_ready(daemon)
        now = time.monotonic()
        if self.interval is not None and self._beats and now - self._last_ping >= self.interval:
            # a beat ran on the pipeline thread since the last ping: it makes progress
            self.notifier.watchdog()
            self.pings += 1
            self._last_ping = now
            self._beats = 0
        if not self._beat_queued:
            self._beat_queued = True
            daemon.call_in_pipeline(self._beat)
        if self.ready_sent and now - self._last_status >= self.status_every_s:
            self._last_status = now
            self.notifier.status(self.status_line(daemon))

    def on_reload(self, daemon: Any) -> None:
        """SIGHUP, on the main thread: load and verify here, switch on the pipeline thread."""
        from rtpick.inference.swap import plan_reload

        self.notifier.reloading()
        new = reload_config(self.config_path, daemon.config)
        if new is daemon.config:
            self.notifier.ready("reload rejected: see the log")
            return
        for line in restart_only_changes(daemon.config, new):
            log.warning("reload: %s; restart to apply it", line)
        pipeline = daemon.pipeline
        lanes = {name: (lane.spec, lane.loaded) for name, lane in pipeline.lanes.items()}
        try:
            plan = plan_reload(new, lanes, threads=daemon.config.inference.threads)
        except Exception as exc:  # noqa: BLE001 - systemd must see READY again, every model stays
            log.exception("reload failed, every region keeps its running model: %r", exc)
            self.notifier.ready("reload failed: see the log")
            return
        for line in plan.restart_needed:
            log.warning("reload: %s", line)
        for refusal in plan.refusals:
            self._refused(refusal.region, lanes[refusal.region][0], refusal.reason)
        if not plan.changes:
            self.reloads += 1
            self.notifier.ready("reloaded: nothing to change" if not plan.refusals else
                                f"reloaded: refused for region(s) {', '.join(r.region for r in plan.refusals)} (old models kept)")
            return

        def apply(pipeline: Any) -> None:
            done = []
            for change in plan.changes:
                lane = pipeline.lanes[change.region]
                old, old_loaded = lane.spec, lane.loaded
                try:
                    pipeline.swap_model(change.region, change.loaded, change.spec)
                except (ValueError, RuntimeError) as exc:
                    self._refused(change.region, old, str(exc))
                    continue
                log.info("reload: %s (at a batch boundary; %d queued windows go to it)", change.describe(old), len(lane.queue))
                if change.new_weights and self.outputs is not None:
                    self.outputs.metrics.swap_model(change.region, (old.model_id, old_loaded.version, old.sha256),
                                                    (change.spec.model_id, change.loaded.version, change.spec.sha256))
                done.append(f"{change.region}: " + (f"model {change.spec.model_id}, " if change.new_weights else "")
                            + f"thresholds {dict(change.spec.thresholds)}")
            self.reloads += 1
            self.notifier.ready("reloaded: " + ("; ".join(done) or "nothing applied, see the log"))

        daemon.call_in_pipeline(apply)

    def _refused(self, region: str, running: Any, reason: str) -> None:
        """One region's reload refused: ERROR with region and reason, counted; its model keeps running."""
        log.error("reload: region %r keeps its running model %s (sha256 %s): new model refused: %s",
                  region, running.model_id, running.sha256[:12], reason)
        if self.outputs is not None:
            self.outputs.metrics.on_model_reload_failed(region)

    def on_stopping(self, daemon: Any) -> None:  # noqa: ARG002 - hook signature
        if self.outputs is not None:
            self.outputs.state = "draining"
        self.notifier.stopping("draining: finishing pending windows, publishing picks, saving state")

    # -- helpers --------------------------------------------------------------------------
    def _beat(self, pipeline: Any) -> None:  # noqa: ARG002 - runs on the pipeline thread
        self._beats += 1
        self._beat_queued = False

    def _maybe_ready(self, daemon: Any) -> None:
        if self.ready_sent or daemon.stopping:
            return
        stats = getattr(self.ingest, "stats", None)
        if stats is not None and getattr(stats, "state", "streaming") != "streaming":
            return
        self.ready_sent = True
        if self.outputs is not None:
            self.outputs.set_ready(True)
        self.notifier.ready("running")
        log.info("ready (sd_notify READY=1%s)", f", watchdog every {self.interval:g} s" if self.interval else "")

    def status_line(self, daemon: Any) -> str:
        parts = [f"{daemon.stats.records_fed} records", f"{daemon.stats.picks_published} picks"]
        if self.outputs is not None:
            status = self.outputs.status()
            parts.append(f"{status['stations_live']}/{status['stations_total']} stations live")
            if status["lag_s"] is not None:
                parts.append(f"lag {status['lag_s']:.1f} s")
        return "running: " + ", ".join(parts)


def reload_config(path: str | None, current: Any) -> Any:
    """SIGHUP: parse ``path`` again; the new config if valid, else ``current`` (error logged)."""
    from rtpick.config import ConfigError, load_config

    try:
        new = load_config(path)
    except ConfigError as exc:
        log.error("reload rejected, keeping the running configuration: %s", exc)
        return current
    return new


def restart_only_changes(old: Any, new: Any) -> list[str]:
    """What differs between two configs that a reload does not apply (lanes are re-resolved separately)."""
    from rtpick.inference.regions import effective_regions

    lines = [f"[{section}] changed" for section in ("stream", "early", "seedlink", "publish", "metrics", "associate", "logging")
             if getattr(new, section) != getattr(old, section)]
    for key in ("threads", "max_wait_s", "block_end"):
        if getattr(new.inference, key) != getattr(old.inference, key):
            lines.append(f"inference.{key} changed")
    old_regions = {region.name: region for region, _ in effective_regions(old)}
    for region, _ in effective_regions(new):
        before = old_regions.get(region.name)
        if before is not None and (before.stations, before.polygon) != (region.stations, region.polygon):
            lines.append(f"the stations of region {region.name!r} changed (stations are routed at start-up)")
    return lines
