"""Types shared by every stage of the pipeline.

Times are integer nanoseconds since the Unix epoch (UTC) so that ordering and
equality are exact; convert with :func:`ns_to_iso` / :func:`iso_to_ns` at the edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

NS_PER_S = 1_000_000_000


@dataclass(slots=True)
class Record:
    """One packet of contiguous samples of one channel.

    This is the only thing ingest hands downstream: nothing after ingest knows
    whether it came from SeedLink or from a replayed archive.
    """

    stream_id: str  # FDSN NET.STA.LOC.CHA
    start_ns: int  # time of samples[0]
    sampling_rate: float
    samples: np.ndarray  # 1-D, any numeric dtype; converted to float32 by the buffers

    @property
    def end_ns(self) -> int:
        """Time just after the last sample (start of the next contiguous record)."""
        return self.start_ns + round(len(self.samples) * NS_PER_S / self.sampling_rate)


PICK_STATUSES = ("preliminary", "final", "retracted")


@dataclass(slots=True)
class Pick:
    """A phase pick: ``final`` once no later window can change it (never twice), or a preliminary/retraction.

    ``preliminary``: from a tip window on the newest data (rtpick.inference.lane),
    published at once; it is followed by exactly one ``final`` or ``retracted``
    pick carrying the same ``lifecycle_id``. A final that finalises no preliminary
    has an empty ``lifecycle_id`` (its id is then its own, see
    ``rtpick.publish.messages.pick_id``).
    """

    stream_id: str  # NET.STA.LOC.CHA of the vertical (or first) channel of the family
    phase: str  # "P" or "S"
    time_ns: int  # time of the probability peak
    probability: float  # peak probability
    uncertainty_s: float  # spread of the probability curve around the peak (amplitude-free)
    trigger_on_ns: int  # first sample above the threshold
    trigger_off_ns: int  # last sample above half the threshold
    model_id: str  # e.g. "seisbench:PhaseNet/original"
    model_version: str = ""
    window_ns: tuple[int, int] = (0, 0)  # span of the stacked windows that produced the pick
    extra: dict = field(default_factory=dict)
    status: str = "final"  # one of PICK_STATUSES
    lifecycle_id: str = ""  # id shared by a preliminary and its final/retraction; "" = the pick's own id
    data_arrived_ns: int = 0  # wall clock when the newest record of the window(s) that made the pick arrived
    made_ns: int = 0  # wall clock when the pipeline made the pick (after its batch's forward pass)

    @property
    def station_key(self) -> str:
        """NET.STA: the unit the associator reasons about."""
        net, sta = self.stream_id.split(".")[:2]
        return f"{net}.{sta}"


def ns_to_iso(ns: int) -> str:
    """ISO-8601 UTC with microseconds and a trailing Z."""
    sec, rem = divmod(int(ns), NS_PER_S)
    dt = datetime.fromtimestamp(sec, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{rem // 1000:06d}Z"


def iso_to_ns(text: str) -> int:
    """Parse ISO-8601 (``Z`` or offset; naive means UTC) to integer nanoseconds."""
    text = text.strip().replace("Z", "+00:00")
    frac_ns = 0
    if "." in text:
        head, tail = text.split(".", 1)
        digits = ""
        for ch in tail:
            if not ch.isdigit():
                break
            digits += ch
        rest = tail[len(digits):]
        frac_ns = int((digits + "000000000")[:9])
        text = head + rest
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * NS_PER_S + frac_ns


@dataclass(slots=True)
class Event:
    """An associated earthquake: one revision of it (``rtpick.event/1``).

    The associator emits a first revision as soon as a minimum pick configuration
    is met and a new revision (same ``event_id``, ``revision`` + 1) whenever later
    picks change the solution; ``final`` is set on the last revision, when the
    event's picks leave the association horizon.
    """

    event_id: str  # stable across revisions
    revision: int  # 0 for the first message, +1 per update
    origin_time_ns: int
    latitude: float  # degrees
    longitude: float  # degrees
    depth_km: float  # below sea level
    horizontal_uncertainty_km: float
    depth_uncertainty_km: float
    time_uncertainty_s: float
    picks: list[tuple[Pick, float]] = field(default_factory=list)  # (pick, residual_s = observed - predicted)
    rms_residual_s: float = 0.0
    score: float = 0.0  # associator support: sum of the associated picks' weighted probabilities
    final: bool = False
    cancelled: bool = False  # the event lost its support (retracted preliminary picks): this last revision withdraws it
    created_ns: int = 0  # wall clock when this revision was made (latency measurements)
    associator: str = "rtpick.swarm"
    extra: dict = field(default_factory=dict)

    @property
    def n_p(self) -> int:
        return sum(1 for pick, _ in self.picks if pick.phase == "P")

    @property
    def n_s(self) -> int:
        return sum(1 for pick, _ in self.picks if pick.phase == "S")

    @property
    def n_stations(self) -> int:
        return len({pick.station_key for pick, _ in self.picks})
