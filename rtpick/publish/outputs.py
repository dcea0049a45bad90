"""Everything that leaves a running rtpick, behind one object the daemon drives.

    outputs = Outputs(config)                       # metrics objects, nothing bound yet
    pipeline = Pipeline(config, model, observer=outputs.metrics)
    outputs.start(pipeline)                          # bind ZeroMQ, serve /metrics (typed errors)
    for record in ingest:
        outputs.publish_picks(pipeline.feed(record))
        outputs.tick()                               # status heartbeat when due
    outputs.publish_picks(pipeline.flush())
    outputs.close()                                  # last status, linger, stop HTTP

:class:`~rtpick.publish.zmq.PublishError` and :class:`~rtpick.publish.metrics.MetricsError`
name the config key (``publish.endpoint``, ``publish.curve_secret_key_file``,
``metrics.listen``); ``start`` releases whatever it bound before raising.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Iterable

from prometheus_client import CollectorRegistry

from rtpick.publish.messages import pick_message, status_message
from rtpick.publish.metrics import Metrics, MetricsError, rtpick_version, start_http_server
from rtpick.publish.zmq import Publisher, PublishError
from rtpick.types import NS_PER_S, Event, Pick

log = logging.getLogger(__name__)

STARTUP_ERRORS = (PublishError, MetricsError)  # bad endpoint, port in use, missing CURVE key file


class Outputs:
    """ZeroMQ publisher + Prometheus metrics + status heartbeat of one rtpick instance."""

    def __init__(self, config: Any, *, registry: CollectorRegistry | None = None, instance: str | None = None) -> None:
        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry, max_station_labels=config.metrics.max_station_labels)
        self.publisher = Publisher.from_config(config.publish, registry=self.registry) if config.publish.endpoint else None
        self.instance = os.environ.get("RTPICK_INSTANCE", "") if instance is None else instance
        self.state = "starting"
        self.pipeline: Any = None
        self.collector: Any = None
        self.started_at = time.time()
        self._http: Any = None
        self._next_status = 0.0
        self.picks_published = 0  # final picks (the status heartbeat's count)
        self.events_published = 0
        self.lifecycle = config.early.enabled  # also publish on pick_early.NET.STA

    # -- life cycle ---------------------------------------------------------------------------

    def start(self, pipeline: Any = None, ingest: Any = None) -> Outputs:
        """Bind the PUB socket and the metrics endpoint; attach ``pipeline`` and ``ingest`` if given.

        Raises one of :data:`STARTUP_ERRORS`, whose message names the config key.
        """
        if self.publisher is not None:
            self.publisher.start()
        listen = self.config.metrics.listen
        if listen:
            try:
                self._http = start_http_server(listen, self.registry)
            except Exception:
                if self.publisher is not None:
                    self.publisher.close()
                raise
            log.info("metrics on http://%s/metrics", self.metrics_address)
        if pipeline is not None:
            self.attach(pipeline)
        if ingest is not None:
            self.metrics.watch_ingest(ingest)
        return self

    def attach(self, pipeline: Any) -> None:
        """Read ``pipeline``'s state at scrape time and declare each lane's model."""
        self.pipeline = pipeline
        self.collector = self.metrics.watch(pipeline, self.config.metrics.live_after_s)
        for region, lane in getattr(pipeline, "lanes", {}).items():
            self.metrics.set_model(lane.loaded.model_id, lane.loaded.version, lane.loaded.sha256, region)

    def set_ready(self, ready: bool = True) -> None:
        self.state = "running" if ready else self.state
        self.metrics.ready.set(1 if ready else 0)

    def close(self, state: str = "stopping") -> None:
        """Publish a last status, close the socket (lingers ``publish.linger_s``), stop HTTP."""
        self.state = state
        self.metrics.ready.set(0)
        if self.publisher is not None and self.publisher.endpoint:
            try:
                self.publisher.publish(self.status())
            except RuntimeError:
                pass  # never started
            self.publisher.close()
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._http = None

    @property
    def metrics_address(self) -> str | None:
        """``host:port`` the metrics endpoint listens on (port resolved when configured as 0)."""
        if self._http is None:
            return None
        host, port = self._http[0].server_address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # -- messages -----------------------------------------------------------------------------

    def publish_picks(self, picks: Iterable[Pick]) -> None:
        """Final picks on ``pick.NET.STA`` as ever; the life cycle (with ``early.enabled``, or a preliminary's
        final/retraction after a restart) on ``pick_early.NET.STA`` (docs/messages.md)."""
        if self.publisher is None:
            return
        now = time.time_ns()
        for pick in picks:
            if pick.status == "final":
                self.publisher.publish(pick_message(pick, published_ns=now))
                self.picks_published += 1
            if self.lifecycle or pick.status != "final" or pick.lifecycle_id:
                self.publisher.publish(pick_message(pick, lifecycle=True, published_ns=now))
            self.metrics.on_published(pick, now)

    def publish_event(self, event: Event) -> None:
        self.metrics.on_event(event.final)
        if self.publisher is not None:
            self.publisher.publish_event(event)
            self.events_published += 1

    def status(self, now: float | None = None) -> dict[str, Any]:
        """The ``rtpick.status/1`` heartbeat as of now."""
        now = time.time() if now is None else now
        live = total = 0
        lag = None
        if self.collector is not None:
            state = self.collector.station_state()
            total = len(state)
            live = sum(1 for s in state.values() if s["last_arrival"] and now - s["last_arrival"] <= self.config.metrics.live_after_s)
            newest = max((s["last_data_ns"] for s in state.values()), default=0)
            lag = now - newest / NS_PER_S if newest else None
        dropped = sum(self.publisher.dropped.values()) if self.publisher is not None else 0
        connections = self.publisher.connections if self.publisher is not None else 0
        return status_message(
            time_ns=int(now * NS_PER_S),
            uptime_s=now - self.started_at,
            stations_live=live,
            stations_total=total,
            lag_s=lag,
            state=self.state,
            instance=self.instance,
            version=rtpick_version(),
            picks_published=self.picks_published,
            events_published=self.events_published,
            messages_dropped=dropped,
            subscribers=connections,
        )

    def tick(self, now: float | None = None) -> bool:
        """Publish a status heartbeat if ``publish.status_interval_s`` elapsed; True if sent."""
        if self.publisher is None:
            return False
        mono = time.monotonic()
        if mono < self._next_status:
            return False
        self._next_status = mono + self.config.publish.status_interval_s
        self.publisher.poll_connections()
        self.publisher.publish(self.status(now))
        return True


class AssociatorSink:
    """Daemon sink feeding picks to an associator and publishing its events through ``outputs``.

    ``associator`` has ``push(pick)``, ``step() -> list[Event]`` and ``flush() -> list[Event]``
    (:class:`rtpick.associate.swarm.SwarmAssociator`). Put it *before* ``outputs`` in the
    daemon's sinks so that, on shutdown, the final revisions are published before the
    socket closes: ``sinks=[AssociatorSink(associator, outputs), outputs]``.
    """

    def __init__(self, associator: Any, outputs: Outputs) -> None:
        self.associator = associator
        self.outputs = outputs

    def publish_picks(self, picks: list[Pick]) -> None:
        for pick in picks:
            self.associator.push(pick)
        self._publish(self.associator.step())

    def tick(self) -> None:
        self._publish(self.associator.step())

    def close(self) -> None:
        self._publish(self.associator.flush())

    def _publish(self, events: list[Event]) -> None:
        for event in events:
            self.outputs.publish_event(event)
