"""SeedLink resume state: the last sequence number per station, persisted atomically.

Like slarchive/SeisComP state files, but versioned JSON::

    {"format": "rtpick.seedlink-state/1", "saved": "...Z",
     "stations": {"OK_FNO": 371, ...},             # last seq handed downstream
     "channels": {"OK.FNO.01.HHZ": 1371397430000000000, ...},   # end_ns of that data
     "picks": {"OK.FNO.01.HHZ|P": [1371397137120000000, ...]},  # recently published
     "resume": {"OK.FNO.01.HH?": {...}, ...},      # Pipeline.resume_points()
     "audit_bytes": 0}

A published pick is remembered by its identity (stream, phase, time in ns: the
``pick_id`` of :mod:`rtpick.publish.messages`), never by a time tolerance.

Writes go to a temporary file in the same directory, are fsync'ed and renamed
over the old file (then the directory is fsync'ed), so a crash leaves either
the old or the new state, never a torn one. A file that cannot be read as this
format, whatever the reason (not UTF-8, not JSON, wrong types, a sequence
number or a time outside what SeedLink and seismic data allow), is moved aside
to ``<name>.corrupt`` with one log line and rtpick starts from the configured
fallback (``seedlink.begin_time`` or real time), as ringserver does: a
restart must never fail on its own state.

Where the file lives: :func:`resolve_state_file`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rtpick.types import NS_PER_S, ns_to_iso

log = logging.getLogger(__name__)

STATE_FORMAT = "rtpick.seedlink-state/1"
PICKS_KEPT = 256  # at most this many recent pick times per (stream, phase) for duplicate suppression
MAX_STATE_BYTES = 64 * 1024 * 1024  # far above any real network (500 stations ≈ 100 kB); more is not a state file
EARLIEST_NS = 0  # the Unix epoch: SeedLink times before it do not exist
FUTURE_SLACK_NS = 86_400 * NS_PER_S  # a saved time more than a day ahead of the wall clock is not real data
MAX_SEQ = 0xFFFFFF  # SeedLink sequence numbers are 6 hex digits


@dataclass
class IngestState:
    """Resume position (what was handed downstream), recently published picks, the pipeline's resume points."""

    stations: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    picks: dict[str, list[int]] = field(default_factory=dict)
    audit_bytes: int = 0  # length of the daemon's audit log that belongs to this state (0: none)
    resume: dict[str, dict] = field(default_factory=dict)  # per station key: Pipeline.resume_points()

    def to_json(self) -> dict:
        return {"format": STATE_FORMAT, "saved": ns_to_iso(time.time_ns()), "stations": dict(sorted(self.stations.items())),
                "channels": dict(sorted(self.channels.items())), "picks": dict(sorted(self.picks.items())),
                "resume": dict(sorted(self.resume.items())), "audit_bytes": self.audit_bytes}

    @classmethod
    def from_json(cls, doc: object, now_ns: int | None = None) -> IngestState:
        """Parse and validate a state document; any deviation raises ``ValueError`` naming the field."""
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} document")
        latest = (time.time_ns() if now_ns is None else now_ns) + FUTURE_SLACK_NS
        stations = {key: _int(f"stations.{key}", v, 0, MAX_SEQ) for key, v in _mapping(doc, "stations").items()}
        channels = {key: _int(f"channels.{key}", v, EARLIEST_NS, latest) for key, v in _mapping(doc, "channels").items()}
        picks = {}
        for key, times in _mapping(doc, "picks").items():
            if not isinstance(times, list):
                raise ValueError(f"picks.{key}: expected a list")
            picks[key] = [_int(f"picks.{key}", t, EARLIEST_NS, latest) for t in times][-PICKS_KEPT:]
        resume = {}
        for key, point in _mapping(doc, "resume").items():
            if not isinstance(point, dict):
                raise ValueError(f"resume.{key}: expected an object")
            resume[key] = {name: _early_value(f"resume.{key}.early", v) if name == "early" else _resume_value(f"resume.{key}.{name}", v)
                           for name, v in point.items()}
        audit = _int("audit_bytes", doc.get("audit_bytes", 0), 0, 2**62)
        return cls(stations, channels, picks, audit, resume)

    def is_published(self, key: str, time_ns: int) -> bool:
        """Was the pick ``key`` (``stream|phase``) at exactly ``time_ns`` published (and still remembered)?"""
        return time_ns in self.picks.get(key, ())

    def remember_pick(self, key: str, time_ns: int, keep_ns: int | None = None) -> None:
        """Remember a published pick; forget those more than ``keep_ns`` older than it."""
        times = self.picks.setdefault(key, [])
        times.append(time_ns)
        if keep_ns is not None:
            times[:] = [t for t in times if t >= time_ns - keep_ns]
        del times[:-PICKS_KEPT]


def _mapping(doc: dict, name: str) -> dict:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ValueError(f"{name}: expected an object")
    return value


def _int(name: str, value: object, low: int, high: int) -> int:
    if type(value) is not int:  # bool, float (1e400 = inf), str are not state values
        raise ValueError(f"{name}: expected an integer, got {value!r:.40}")
    if not low <= value <= high:
        raise ValueError(f"{name}: {value} outside [{low}, {high}]")
    return value


def _resume_value(name: str, value: object) -> int | float | dict:
    """A resume point's field: a finite number, or one level of ``{name: number}`` (e.g. per phase)."""
    if isinstance(value, dict):
        return {str(k): _number(f"{name}.{k}", v) for k, v in value.items()}
    return _number(name, value)


def _early_value(name: str, value: object) -> list[dict]:
    """Open preliminary picks of a resume point (rtpick.picking.early.OpenPick.to_json): checked for shape here."""
    if not isinstance(value, list):
        raise ValueError(f"{name}: expected a list")
    for item in value:
        if not (isinstance(item, dict) and isinstance(item.get("id"), str) and isinstance(item.get("phase"), str)
                and type(item.get("index")) is int and isinstance(item.get("fields"), dict)):
            raise ValueError(f"{name}: expected objects with id, phase, index and fields, got {item!r:.60}")
    return value


def _number(name: str, value: object) -> int | float:
    if type(value) is int and abs(value) < 2**63 or type(value) is float and math.isfinite(value):
        return value
    raise ValueError(f"{name}: expected a finite number, got {value!r:.40}")


def resolve_state_file(path: str, config_path: str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Where the state file is: an absolute ``path`` as is; a relative one under the first of

    1. ``$STATE_DIRECTORY`` (set by systemd's ``StateDirectory=``, e.g. ``/var/lib/rtpick``;
       the first entry when it lists several): the one place a hardened unit may write,
    2. the folder of the config file (``path`` is a setting of that file),
    3. the working directory (no config file, not under systemd).

    A path given on the command line is made absolute against the working directory
    before it gets here (``rtpick run --state-file``), as any command-line path is.
    """
    environ = os.environ if environ is None else environ
    target = Path(path).expanduser()
    if target.is_absolute():
        return target
    state_dir = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state_dir:
        return Path(state_dir) / target
    if config_path:
        return Path(config_path).resolve().parent / target
    return Path.cwd() / target


def load_state(path: str | Path) -> IngestState:
    """The state in ``path``; empty when missing or unreadable; a corrupt file is moved to ``.corrupt``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        data = b"" if size > MAX_STATE_BYTES else path.read_bytes()
    except FileNotFoundError:
        return IngestState()
    except OSError as exc:
        log.warning("cannot read state file %s (%s); starting without resume state", path, exc.strerror)
        return IngestState()
    try:
        if size > MAX_STATE_BYTES:
            raise ValueError(f"{size} bytes, more than {MAX_STATE_BYTES}")
        return IngestState.from_json(json.loads(data.decode("utf-8")))
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with the file, start from the fallback
        aside = path.with_name(path.name + ".corrupt")
        try:
            os.replace(path, aside)
        except OSError:
            aside = None
        log.error("state file %s is corrupt (%s: %.200s); moved to %s, starting from seedlink.begin_time or real time",
                  path, type(exc).__name__, exc, aside)
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
