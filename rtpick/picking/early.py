"""Preliminary picks from tip windows, and their bookkeeping until final or retracted.

A *tip window* is one model window aligned to the end of a station's newest
complete data (rtpick.inference.lane). Its predictions are not stacked: each
phase is triggered as SeisBench ``classify`` does (on at the threshold, off below
half of it, first maximum inside the trigger), and a peak at least
``min_context`` samples before the window end and in the window's second half
becomes a *preliminary* pick (PhaseNet puts spurious peaks at a window's start
edge, measured on the Oklahoma data; a peak older than half a window was scored
with less delay by earlier tip windows, and soon gets its final pick).

:class:`EarlyBook` keeps a station's open preliminary picks. Each is closed
exactly once: by the first final pick of the same phase within ``match``
samples (the final then carries the preliminary's ``lifecycle_id``), or by a
retraction once no final can match it any more (the final picker has moved
more than ``match`` past it with no trigger open before that point, the block
of data ended, or the station was restarted). Open picks are saved in the resume
points of the pipeline, so a restarted daemon closes the preliminaries of the
previous process (tests/test_early.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rtpick.picking.extract import Trigger, TriggerPicker


@dataclass(slots=True)
class OpenPick:
    """A published preliminary pick waiting for its final or retraction."""

    lifecycle_id: str
    phase: str
    index: int  # absolute grid index of the peak (the lane's model samples)
    fields: dict[str, Any]  # the Pick's fields (rtpick.types.Pick), to build the retraction

    def to_json(self) -> dict[str, Any]:
        return {"id": self.lifecycle_id, "phase": self.phase, "index": self.index,
                "fields": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.fields.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "OpenPick":
        fields = dict(data["fields"])
        if "window_ns" in fields:
            fields["window_ns"] = tuple(int(v) for v in fields["window_ns"])
        return cls(str(data["id"]), str(data["phase"]), int(data["index"]), fields)


def tip_triggers(values: np.ndarray, threshold: float, last_peak: int) -> list[Trigger]:
    """Triggers of one phase over one window's predictions whose peak lies at or before ``last_peak`` (relative)."""
    picker = TriggerPicker(threshold)
    triggers = picker.scan(np.ascontiguousarray(values, dtype=np.float64), 0) + picker.close()
    return [t for t in triggers if t.peak <= last_peak]


class EarlyBook:
    """One station's open preliminary picks (see the module docstring)."""

    def __init__(self, match: int):
        self.match = match
        self.open: list[OpenPick] = []
        self.last_final: dict[str, int] = {}  # phase -> peak index of the newest final pick

    def wanted(self, phase: str, index: int) -> bool:
        """A tip peak at ``index`` is new: no open preliminary nor the newest final of its phase lies within ``match``."""
        final = self.last_final.get(phase)
        if final is not None and abs(index - final) <= self.match:
            return False
        return not any(o.phase == phase and abs(o.index - index) <= self.match for o in self.open)

    def add(self, pick: OpenPick) -> None:
        self.open.append(pick)

    def finalise(self, phase: str, index: int) -> OpenPick | None:
        """The open preliminary a final pick at ``index`` closes (nearest within ``match``), removed; else None."""
        self.last_final[phase] = index
        near = [o for o in self.open if o.phase == phase and abs(o.index - index) <= self.match]
        if not near:
            return None
        best = min(near, key=lambda o: abs(o.index - index))
        self.open.remove(best)
        return best

    def expire(self, phase: str, below: int) -> list[OpenPick]:
        """Remove and return the open picks of ``phase`` no final can match: peak + match < ``below``."""
        gone = [o for o in self.open if o.phase == phase and o.index + self.match < below]
        if gone:
            self.open = [o for o in self.open if o not in gone]
        return gone

    def before(self, end: int) -> list[OpenPick]:
        """Remove and return every open pick below ``end`` (its block of data ended)."""
        gone = [o for o in self.open if o.index < end]
        if gone:
            self.open = [o for o in self.open if o not in gone]
        return gone

    def clear(self) -> list[OpenPick]:
        """Remove and return every open pick (the station restarts)."""
        gone, self.open = self.open, []
        self.last_final.clear()
        return gone
