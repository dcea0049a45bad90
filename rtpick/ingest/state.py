"""SeedLink resume state: the last sequence number per station, persisted atomically.

Like slarchive/SeisComP state files, but versioned JSON::

    {"format": "rtpick.seedlink-state/1", "saved": "...Z",
     "stations": {"OK_FNO": 371, ...},             # last seq handed downstream
     "channels": {"OK.FNO.01.HHZ": 1371397430000000000, ...},   # end_ns of that data
     "picks": {"OK.FNO.01.HHZ|P": [1371397137120000000, ...]},  # recently published
     "audit_bytes": 0}

Writes go to a temporary file in the same directory, are fsync'ed and renamed
over the old file (then the directory is fsync'ed), so a crash leaves either
the old or the new state, never a torn one. A file that cannot be read as this
format is moved aside to ``<name>.corrupt`` with one log line and rtpick starts
clean (as ringserver does).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rtpick.types import ns_to_iso

log = logging.getLogger(__name__)

STATE_FORMAT = "rtpick.seedlink-state/1"
PICKS_KEPT = 256  # at most this many recent pick times per (stream, phase) for duplicate suppression


@dataclass
class IngestState:
    """Resume position (what was handed downstream) and recently published picks."""

    stations: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    picks: dict[str, list[int]] = field(default_factory=dict)
    audit_bytes: int = 0  # length of the daemon's audit log that belongs to this state (0: none)

    def to_json(self) -> dict:
        return {"format": STATE_FORMAT, "saved": ns_to_iso(_now_ns()), "stations": dict(sorted(self.stations.items())),
                "channels": dict(sorted(self.channels.items())), "picks": dict(sorted(self.picks.items())),
                "audit_bytes": self.audit_bytes}

    @classmethod
    def from_json(cls, doc: object) -> IngestState:
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} document")
        stations = {str(k): int(v) for k, v in doc.get("stations", {}).items()}
        channels = {str(k): int(v) for k, v in doc.get("channels", {}).items()}
        picks = {str(k): [int(t) for t in v][-PICKS_KEPT:] for k, v in doc.get("picks", {}).items()}
        if any(not 0 <= v < 0x1000000 for v in stations.values()):
            raise ValueError("sequence number out of range")
        return cls(stations, channels, picks, int(doc.get("audit_bytes", 0)))

    def remember_pick(self, key: str, time_ns: int, keep_ns: int | None = None) -> None:
        """Remember a published pick; forget those more than ``keep_ns`` older than it."""
        times = self.picks.setdefault(key, [])
        times.append(time_ns)
        if keep_ns is not None:
            times[:] = [t for t in times if t >= time_ns - keep_ns]
        del times[:-PICKS_KEPT]


def _now_ns() -> int:
    import time

    return time.time_ns()


def load_state(path: str | Path) -> IngestState:
    """The state in ``path``; empty when missing; a corrupt file is moved to ``.corrupt``."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return IngestState()
    except OSError as exc:
        log.warning("cannot read state file %s (%s); starting without resume state", path, exc.strerror)
        return IngestState()
    try:
        return IngestState.from_json(json.loads(text))
    except (ValueError, TypeError, AttributeError) as exc:
        aside = path.with_name(path.name + ".corrupt")
        try:
            os.replace(path, aside)
        except OSError:
            aside = None
        log.error("state file %s is corrupt (%s); moved to %s, starting clean", path, exc, aside)
        return IngestState()


def save_state(path: str | Path, state: IngestState) -> None:
    """Write ``state`` atomically: temp file in the same directory, fsync, rename, fsync directory."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    data = json.dumps(state.to_json(), separators=(",", ":")).encode()
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
