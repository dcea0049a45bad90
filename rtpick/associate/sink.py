"""The associator inside the daemon: a sink that takes the published picks and emits events.

``Daemon`` calls ``publish_picks`` with each batch of picks and ``tick`` about once
a second, both from its pipeline thread; events (every revision, ``rtpick.event/1``)
go to ``publish_event`` — ``Outputs.publish_event`` puts them on ZeroMQ topic ``event``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rtpick.associate.swarm import SwarmAssociator
from rtpick.types import Event, Pick

log = logging.getLogger(__name__)


class AssociatorSink:
    def __init__(self, associator: SwarmAssociator, publish_event: Callable[[Event], Any]):
        self.associator = associator
        self.publish_event = publish_event
        self.events_published = 0

    @classmethod
    def from_config(cls, config: Any, publish_event: Callable[[Event], Any]) -> AssociatorSink:
        """From the ``[associate]`` section; raises ``ValueError`` (bad stations/model) at start-up."""
        from rtpick.associate import build_associator

        return cls(build_associator(config), publish_event)

    def _emit(self, events: list[Event]) -> None:
        for event in events:
            try:
                self.publish_event(event)
                self.events_published += 1
            except Exception as exc:  # noqa: BLE001 - a failing output must not stop association
                log.error("publishing event %s failed: %s", event.event_id, exc)

    def publish_picks(self, picks: list[Pick]) -> None:
        for pick in picks:
            self.associator.push(pick)

    def tick(self) -> None:
        """Associate what arrived (data time: the newest pick drives expiry)."""
        self._emit(self.associator.step())

    def close(self) -> None:
        """Finalise every open event (their last, ``final`` revisions)."""
        self._emit(self.associator.flush())
        counters = dict(self.associator.counters)
        if counters.get("picks_unknown_station"):
            log.warning("associator ignored %d picks from stations without coordinates", counters["picks_unknown_station"])
        log.info("associator: %s", ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
