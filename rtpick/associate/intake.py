"""Picks into the associator from outside: decode, de-duplicate, check the station file covers them.

``rtpick associate`` subscribes to several pickers; sharded or redundant pickers
(two instances on the same stations for fail-over) publish the same pick twice,
so picks are de-duplicated by ``pick_id`` (the last :data:`DEDUP_CAPACITY` ids are
remembered: a few hours of picks of a large network, a few MB). A station file
that does not cover the picks is the classic silent failure of an associator
(every pick ignored, no event, all green), so the share of picks from unknown
stations is watched: once :data:`CHECK_AFTER` picks arrived and more than half of
them came from stations without coordinates, an ERROR names the stations (again
at most every :data:`REPEAT_S` seconds while it lasts); at the end
``coverage_failed(1)`` (any number of picks) tells the command to exit non-zero.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from typing import Any

from rtpick.associate import pick_from_message
from rtpick.associate.swarm import SwarmAssociator
from rtpick.types import Pick

log = logging.getLogger("rtpick.associate")

DEDUP_CAPACITY = 200_000
CHECK_AFTER = 50  # picks before the unknown-station share is judged
UNKNOWN_SHARE = 0.5  # above this share of unknown-station picks the station file is wrong
REPEAT_S = 600.0
MAX_NAMES = 1000  # distinct unknown station names remembered (bounded memory for hostile input)


class PickIntake:
    """Feeds ``rtpick.pick/1`` documents to an associator; counts what it refuses and why."""

    def __init__(self, associator: SwarmAssociator, capacity: int = DEDUP_CAPACITY, clock=time.monotonic):
        self.associator = associator
        self.capacity = capacity
        self.counters: Counter = Counter()  # messages_bad, picks_duplicate, picks_accepted
        self.unknown: Counter = Counter()  # NET.STA -> picks
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._clock = clock
        self._last_error = -float("inf")

    def feed(self, doc: dict[str, Any]) -> Pick | None:
        """One message; the pick if the associator took it, else None (counted by cause)."""
        try:
            pick = pick_from_message(doc)
        except ValueError as exc:
            self.counters["messages_bad"] += 1
            if self.counters["messages_bad"] <= 5:
                log.warning("ignored message: %s", exc)
            return None
        # a preliminary and its final or retraction share pick_id (topic pick_early): one message per status
        pid = f"{doc.get('pick_id') or f'{pick.stream_id}/{pick.phase}/{pick.time_ns}'}|{pick.status}"
        if pid in self._seen:
            self.counters["picks_duplicate"] += 1
            return None
        self._seen[pid] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        if not self.associator.push(pick):
            if not self.associator.knows_station(pick.station_key):
                self._note_unknown(pick)
            return None
        self.counters["picks_accepted"] += 1
        return pick

    def _note_unknown(self, pick: Pick) -> None:
        key = pick.station_key
        if key in self.unknown or len(self.unknown) < MAX_NAMES:
            self.unknown[key] += 1
        if self.coverage_failed() and self._clock() - self._last_error >= REPEAT_S:
            self._last_error = self._clock()
            log.error("%s", self.coverage_message())

    @property
    def n_unknown(self) -> int:
        return int(self.associator.counters.get("picks_unknown_station", 0))

    def coverage_failed(self, min_picks: int = CHECK_AFTER) -> bool:
        """More than half of (at least ``min_picks``) picks came from stations without coordinates
        (while running: :data:`CHECK_AFTER`; at the end any number, one is enough to judge)."""
        total = self.n_unknown + self.counters["picks_accepted"]
        return total >= max(min_picks, 1) and self.n_unknown > UNKNOWN_SHARE * total

    def coverage_message(self) -> str:
        total = self.n_unknown + self.counters["picks_accepted"]
        names = ", ".join(name for name, _ in self.unknown.most_common(20))
        more = f" and {len(self.unknown) - 20} more" if len(self.unknown) > 20 else ""
        return (f"{self.n_unknown} of {total} picks come from stations missing in the station file "
                f"({len(self.associator.stations)} stations): {names}{more}; "
                "check associate.stations / --stations (and associate.network for files without network codes)")
