"""The record guard: plausibility checks every record passes before it goes downstream.

One :class:`RecordGuard` per ingest (SeedLink and replay use the same one, so
``rtpick run`` and ``rtpick replay`` see the same records). State is per channel
and per station, O(1) per record; a record that fails is counted by cause in
:attr:`RecordGuard.rejected`, reported to the observer's ``on_rejected`` and
logged once per (stream, cause). Rules, in order:

``bad_sampling_rate``
    A rate within :data:`RATE_TOLERANCE` (relative) of a whole number of Hz is
    snapped to it: 100.0000992, 99.99 and 39.9999 Hz are clock-drift or
    rounding artefacts of 100 and 40 Hz digitisers, and the pipeline resamples
    only rational ratios. 2e-4 is wider than any drift a digitiser reports
    (ppm) and far narrower than the gap between distinct SEED rates (the
    closest integer rates, 999 and 1000 Hz, differ by 1e-3). Everything else
    is rejected: <= 0, NaN, above ``max_rate`` (1000 Hz covers every channel
    family rtpick picks on, HH/EH/BH/HN/SH...), and rates that snap to no whole
    number of Hz >= 1 (e.g. 66.67 Hz, and long-period 0.1 Hz VH channels,
    which carry no phases to pick: exclude them with selectors).
``non_finite``
    NaN/inf samples. The record is dropped without moving any position, so
    the genuine records after it go through.
``future_time``
    A record starting more than ``max_future_s`` after the wall clock (a
    datalogger dated 2099, a GPS week roll-over).
``time_jump``
    *Forward*: a record starting more than ``max_jump_s`` after its channel's
    last accepted data is held, not yielded, until the channel's next record
    decides: if that one lies after the held record's start and within
    ``max_jump_s`` of its end (contiguous in the usual case: the station is
    back after an outage), both go downstream; otherwise the held record is
    dropped (a single bogus time stamp must not poison the channel) and the
    next record is judged against the old data. A held record still
    unconfirmed at the end of the data is dropped as well.
    *Backward*: a record ending more than ``max_jump_s`` before its channel's
    last accepted data is dropped (its samples are older than anything the
    buffers keep). Smaller overlaps go downstream; the buffers handle them.
    *First record of a channel*: accepted when it lies within ``max_jump_s``
    of the latest data of the other channels of its station (or the station
    has none yet). Otherwise it is held on probation exactly like a forward
    jump, and its own channel's next record decides: contiguous (within
    ``max_jump_s``) → both go downstream; otherwise it is dropped and the next
    record is judged as the channel's first again. This loses no genuine
    record in either order: HHE dated 1970 while HHZ and HHN are in 2013 is
    held and contradicted by HHE's next record (dropped); and when the
    station's very first record is the bogus one (HHZ dated 1970, accepted:
    nothing to compare it with), the genuine first records of HHN and HHE are
    held and confirmed by their next records, and HHZ's own next record is an
    ordinary forward jump, held and confirmed (downstream, the pipeline
    restarts the station, O(1)). Rejecting such a first record outright, as
    before, dropped every genuine first record after a bogus one. A channel's
    first record dated far *ahead* of its genuine data (possible only up to
    ``max_future_s`` past the wall clock) is not caught by this rule when it
    is its station's first record: the channel's genuine records then look
    stale until its data passes that time.

Records carry an opaque position (the SeedLink ``(NET_STA, seq)``) through the
guard, so a held record is handed on later with its own position.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Generic, Protocol, TypeVar

import numpy as np

from rtpick.types import NS_PER_S, Record

log = logging.getLogger(__name__)

P = TypeVar("P")

REJECT_CAUSES = ("bad_sampling_rate", "non_finite", "future_time", "time_jump")
RATE_TOLERANCE = 2e-4  # relative; see the module docstring
MAX_RATE_HZ = 1000.0
MAX_FUTURE_S = 300.0  # proposed config key: stream.max_future_s
MAX_JUMP_S = 120.0  # default when no buffer length is given (stream.buffer_seconds' default)
MAX_LOGGED = 10_000  # distinct (stream, cause) log keys kept; beyond it, only counted


class RejectObserver(Protocol):
    def on_rejected(self, stream_id: str, cause: str) -> None: ...


def snap_rate(rate: float, max_rate: float = MAX_RATE_HZ) -> float | None:
    """The nominal rate ``rate`` stands for (a whole number of Hz), or None when it is not plausible."""
    if not (isinstance(rate, (int, float)) and math.isfinite(rate)) or not 0 < rate <= max_rate * (1 + RATE_TOLERANCE):
        return None
    nominal = float(round(rate))
    if nominal < 1 or nominal > max_rate or abs(rate - nominal) > RATE_TOLERANCE * nominal:
        return None
    return nominal


@dataclass
class _Channel(Generic[P]):
    end_ns: int | None = None  # end of the last accepted record
    held: tuple[Record, P] | None = None  # a forward jump (or a far first record) waiting for confirmation
    held_why: str = ""  # what the held record is, for the log when nothing confirms it


class RecordGuard(Generic[P]):
    """See the module docstring; :meth:`check` per record, :meth:`flush` at the end of the data."""

    def __init__(self, *, max_jump_s: float = MAX_JUMP_S, max_future_s: float = MAX_FUTURE_S,
                 max_rate: float = MAX_RATE_HZ, clock: Callable[[], int] = time.time_ns,
                 observer: RejectObserver | None = None):
        self.max_jump_ns = int(max_jump_s * NS_PER_S)
        self.max_future_ns = int(max_future_s * NS_PER_S)
        self.max_rate = max_rate
        self.clock = clock
        self.observer = observer
        self.rejected: dict[str, int] = {}
        self._channels: dict[str, _Channel[P]] = {}
        self._station_end: dict[str, int] = {}  # NET.STA -> latest accepted end over its channels
        self._logged: set[tuple[str, str]] = set()

    def check(self, record: Record, position: P = None) -> list[tuple[Record, P]]:
        """What goes downstream now: ``[]`` (rejected or held), the record, or a held record and this one."""
        screened = self.screen(record)
        return [] if screened is None else self.place(screened, position)

    def screen(self, record: Record) -> Record | None:
        """The checks of the record alone: the record with its rate snapped, or None (rejected, counted).

        A caller that needs ``record.end_ns`` before :meth:`place` (the SeedLink dedupe) calls this first.
        """
        rate = snap_rate(record.sampling_rate, self.max_rate)
        if rate is None:
            return self._reject(record, "bad_sampling_rate", f"sampling rate {record.sampling_rate!r} Hz is not within "
                                f"{RATE_TOLERANCE:g} of a whole number of Hz in 1..{self.max_rate:g}")
        if rate != record.sampling_rate:
            record = replace(record, sampling_rate=rate)
        samples = record.samples
        if samples.dtype.kind in "fc" and not np.isfinite(samples).all():
            return self._reject(record, "non_finite", "NaN or infinite samples")
        if record.start_ns > self.clock() + self.max_future_ns:
            return self._reject(record, "future_time", f"starts more than {self.max_future_ns / NS_PER_S:g} s after the wall clock")
        return record

    def place(self, record: Record, position: P = None) -> list[tuple[Record, P]]:
        """The time checks of a screened record against its channel and station (see the module docstring)."""
        chan = self._channels.get(record.stream_id)
        if chan is None:
            chan = self._channels[record.stream_id] = _Channel()
        if chan.held is not None:
            held, held_pos = chan.held
            chan.held = None
            if held.start_ns <= record.start_ns <= held.end_ns + self.max_jump_ns:
                return self._accept(chan, held, held_pos) + self._accept(chan, record, position)
            self._reject(held, "time_jump", f"{chan.held_why} that the channel's next record did not confirm")
        if chan.end_ns is None:
            ref = self._station_end.get(_station(record.stream_id))
            if ref is not None and not ref - self.max_jump_ns <= record.start_ns <= ref + self.max_jump_ns:
                return self._hold(chan, record, position, "a first record far from the other channels of its station")
            return self._accept(chan, record, position)
        if record.start_ns > chan.end_ns + self.max_jump_ns:
            return self._hold(chan, record, position, "a jump forward")
        if record.end_ns < chan.end_ns - self.max_jump_ns:
            self._reject(record, "time_jump", "older than the channel's recent data (stale)")
            return []
        return self._accept(chan, record, position)

    def filter(self, records: Iterator[Record]) -> Iterator[Record]:
        """Records (without positions) through the guard, held ones dropped at the end."""
        for record in records:
            for accepted, _ in self.check(record):
                yield accepted
        self.flush()

    def flush(self) -> None:
        """End of the data: held records that nothing confirmed are dropped (counted as ``time_jump``)."""
        for chan in self._channels.values():
            if chan.held is not None:
                self._reject(chan.held[0], "time_jump", f"{chan.held_why} still unconfirmed at the end of the data")
                chan.held = None

    @property
    def held(self) -> int:
        return sum(1 for chan in self._channels.values() if chan.held is not None)

    @staticmethod
    def _hold(chan: _Channel[P], record: Record, position: P, why: str) -> list[tuple[Record, P]]:
        """Probation: the channel's next record decides (see :meth:`place`)."""
        chan.held, chan.held_why = (record, position), why
        return []

    def _accept(self, chan: _Channel[P], record: Record, position: P) -> list[tuple[Record, P]]:
        end = record.end_ns
        chan.end_ns = end if chan.end_ns is None else max(chan.end_ns, end)
        key = _station(record.stream_id)
        self._station_end[key] = max(self._station_end.get(key, end), end)
        return [(record, position)]

    def _reject(self, record: Record, cause: str, detail: str) -> None:
        """Count, tell the observer, log once per (stream, cause)."""
        self.rejected[cause] = self.rejected.get(cause, 0) + 1
        if self.observer is not None:
            self.observer.on_rejected(record.stream_id, cause)
        key = (record.stream_id, cause)
        if key not in self._logged and len(self._logged) < MAX_LOGGED:
            self._logged.add(key)
            log.warning("%s: record rejected (%s): %s; start %d ns, %d samples (logged once per stream and cause)",
                        record.stream_id, cause, detail, record.start_ns, len(record.samples))


def _station(stream_id: str) -> str:
    return ".".join(stream_id.split(".")[:2])
