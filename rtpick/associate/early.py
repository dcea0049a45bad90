"""Preliminary picks in the associator: replaced by their finals, dropped when retracted.

:class:`~rtpick.associate.swarm.SwarmAssociator` takes a preliminary pick like
any other (it votes, it can complete an event's minimum configuration, so the
first revision comes seconds after the P wave). Its closing pick — the final
with the same ``lifecycle_id`` or a retraction — is handled here, on the pick's
row of the associator's pool:

- a final replaces the preliminary in place (time, weight, pick object): a free
  row is re-voted, a row inside an event marks the event for a revision
  (``refresh``), whatever the number of new picks;
- a retraction removes the row (un-voted, state gone); an event it leaves short of
  the minimum configuration (``min_picks``/``min_p``/``min_stations``) is
  cancelled: published once more with ``cancelled`` and ``final`` set, and its
  other picks return to the pool.

A closing pick whose preliminary the associator never saw (unknown station,
already expired) is taken as a plain pick if final, ignored if retracted.
This module works on the associator's pool arrays; it is its private helper.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rtpick.types import Event, Pick

if TYPE_CHECKING:
    from rtpick.associate.swarm import SwarmAssociator, _OpenEvent


def _row_of(assoc: "SwarmAssociator", pick: Pick) -> int | None:
    """Row of ``pick`` (the object) in the pool, newest first; None if compacted away."""
    for row in range(len(assoc._p_obj) - 1, -1, -1):
        if assoc._p_obj[row] is pick:
            return row
    return None


def close_lifecycles(assoc: "SwarmAssociator", closing: list[Pick], out: list[Event]) -> None:
    """Apply finals and retractions of preliminary picks (see the module docstring)."""
    for pick in closing:
        prelim = assoc._life.pop(pick.lifecycle_id, None)
        row = _row_of(assoc, prelim) if prelim is not None else None
        if row is None or assoc._p_state[row] < 0:
            assoc.counters["early_unmatched"] += 1
            continue
        owner = next((ev for ev in assoc._open if row in ev.slots.values()), None)
        if assoc._p_state[row] == 0:
            assoc._vote(np.array([row], np.int64), -1.0)
        if pick.status == "final":
            assoc.counters["early_finalised"] += 1
            assoc._p_t[row] = assoc._sec(pick.time_ns)
            assoc._p_w[row] = np.clip(pick.probability if assoc.s.use_probability else 1.0, 0.05, 1.0)
            assoc._p_obj[row] = pick
            if owner is None:
                assoc._vote(np.array([row], np.int64), +1.0)
            else:
                owner.dirty = owner.refresh = True
            continue
        assoc.counters["early_retracted"] += 1
        assoc._p_state[row] = -1
        if owner is not None:
            owner.slots = {k: r for k, r in owner.slots.items() if r != row}
            if supported(assoc, owner):
                owner.dirty = owner.refresh = True
            else:
                out.append(cancel(assoc, owner))


def supported(assoc: "SwarmAssociator", ev: "_OpenEvent") -> bool:
    """Does the event still meet the minimum pick configuration?"""
    rows = np.array(list(ev.slots.values()), np.int64)
    if not len(rows):
        return False
    s = assoc.s
    site_phase = np.unique(assoc._site[assoc._p_sta[rows]] * 2 + assoc._p_ph[rows])
    n_p = int((site_phase % 2 == 0).sum())
    sites = np.unique(assoc._site[assoc._p_sta[rows]])
    return len(site_phase) >= s.min_picks and n_p >= s.min_p and len(site_phase) - n_p >= s.min_s and len(sites) >= s.min_stations


def cancel(assoc: "SwarmAssociator", ev: "_OpenEvent") -> Event:
    """Close an event that lost its support: its picks return to the pool; its last revision says ``cancelled``."""
    rows = np.array(list(ev.slots.values()), np.int64)
    if len(rows):
        assoc._p_state[rows] = 0
        assoc._vote(rows, +1.0)
    assoc._open.remove(ev)
    assoc.counters["events_cancelled"] += 1
    kept = set(id(assoc._p_obj[r]) for r in rows)
    ev.event.picks = [(p, res) for p, res in ev.event.picks if id(p) in kept]
    ev.event.final = True
    ev.event.cancelled = True
    return assoc._emit(ev)
