"""Versioned JSON messages that leave rtpick (stdout JSON lines, ZeroMQ)."""

from __future__ import annotations

from typing import Any

from rtpick.types import Pick, ns_to_iso

PICK_SCHEMA = "rtpick.pick/1"


def pick_message(pick: Pick) -> dict[str, Any]:
    """The ``rtpick.pick/1`` document of a pick."""
    return {
        "schema": PICK_SCHEMA,
        "stream_id": pick.stream_id,
        "phase": pick.phase,
        "time": ns_to_iso(pick.time_ns),
        "probability": round(float(pick.probability), 6),
        "uncertainty_s": round(float(pick.uncertainty_s), 6),
        "trigger_on": ns_to_iso(pick.trigger_on_ns),
        "trigger_off": ns_to_iso(pick.trigger_off_ns),
        "model_id": pick.model_id,
        "model_version": pick.model_version,
        "window_start": ns_to_iso(pick.window_ns[0]),
        "window_end": ns_to_iso(pick.window_ns[1]),
    }
