"""SeedLink client ingest: selectors, reconnect with backoff, resume by sequence number, dedupe.

Built on EarthScope's ``seedlink-client`` (import name ``seedlink_client``): it
frames and parses packets several times faster than ObsPy's client (see
docs/seedlink.md). rtpick drives the connection itself rather than through
``SeedLink.collect()`` so that it owns reconnect policy (exponential backoff
with jitter), per-station resume, wildcard expansion and the accounting of
malformed traffic. It always speaks SeedLink v3 (every server speaks it).

Yields :class:`~rtpick.types.Record` with a position ``(NET_STA, seq)`` so the
daemon can persist exactly what it has handed downstream. Every record passes
a :class:`~rtpick.ingest.records.RecordGuard` first; the dedupe/resume position
of a channel (``chan_end``) moves only for records the guard let through, so a
record dated 2099 or full of NaN never makes the genuine records after it look
like duplicates.

Poison packets: a data packet whose payload is not miniSEED is skipped, never
re-requested, and the connection is kept. A SeedLink 3 data frame is always
``SL`` + 6 hex digits + one 512-byte record, so a payload whose record length
cannot be told is skipped as exactly :data:`V3_RECORD_LEN` bytes; the bytes after
it must open a frame again (``SL``/``SLINFO``/``END``/``ERROR``). The packet's
station is read from the payload's fixed header; when that is unreadable it is
the station whose next sequence number the packet carries (servers number per
station), or the only station requested; that station's position takes the
packet's sequence number, so a resume goes past it. When no single station can
be named (rtpick's own server numbers per station, so stations move in lockstep
and several expect the same number), no position moves: the station's next
packet moves it. Only when the bytes after the skipped packet do not open a
frame (the framing is really lost) does the client reconnect; if that happens
:data:`POISON_RETRIES` times in a row at the same sequence number of an unknown
station, every station expecting that number is moved past it (counted as
``poison_skipped``): each loses at most that one packet, rather than all of them
stalling forever.
"""

from __future__ import annotations

import fnmatch
import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from pymseed import MS3Record, sourceid2nslc
from seedlink_client import Protocol, SeedLink, SeedLinkError, SeedLinkResponse
from seedlink_client import _commands as slcmd
from seedlink_client import mseed
from seedlink_client.protocol import (HEADSIZE_V3, MAX_RECORD_LEN, MIN_PAYLOAD_DETECT, HeaderV3, StreamEvent,
                                      decode_frame_v3, parse_header_v3, parse_info_xml)

from rtpick.config import SeedLinkConfig
from rtpick.ingest.records import MAX_FUTURE_S, MAX_JUMP_S, RecordGuard
from rtpick.ingest.state import IngestState
from rtpick.types import NS_PER_S, Record, iso_to_ns

log = logging.getLogger(__name__)

Position = tuple[str, int]  # (NET_STA, sequence number); -1: context re-fed after a restart, not to commit
# every cause IngestStats.errors can count (docs/seedlink.md explains each)
ERROR_CAUSES = ("bad_header", "not_miniseed", "bad_record", "disconnected", "timeout", "connect_failed",
                "protocol_error", "no_station", "station_rejected", "selector_rejected", "unexpected_station",
                "seq_backwards", "info_failed", "poison_skipped")
POLL_S = 0.2
SEQ_MODULO = 0x1000000  # v3 sequence numbers are 6 hex digits
V3_RECORD_LEN = 512  # SeedLink 3 data frames carry exactly one 512-byte miniSEED record
POISON_RETRIES = 3  # framing lost this often at one unknown station's packet: skip it for every candidate
NO_MATCH_LOG_S = 600.0  # "no selector matches" is logged as an ERROR at most this often while it lasts


@dataclass(frozen=True)
class StreamSelector:
    """One ``NET_STA[:CHANNELS]`` selector; ``*``/``?`` wildcards allowed in NET_STA."""

    station: str  # NET_STA pattern
    channels: tuple[str, ...] = ()  # SeisComP channel selectors, e.g. ("HH?", "00BHZ")

    @classmethod
    def parse(cls, text: str) -> StreamSelector:
        head, _, tail = text.strip().partition(":")
        if "_" not in head or not all(head.split("_", 1)):
            raise ValueError(f"stream selector {text!r}: expected NET_STA[:CHANNELS]")
        return cls(head.upper(), tuple(tail.replace(",", " ").split()))

    @property
    def has_wildcard(self) -> bool:
        return any(c in self.station for c in "*?")


def parse_selectors(items: list[str] | str) -> list[StreamSelector]:
    """Config list or slinktool-style ``-S`` string: ``'OK_FNO:HH? BH?,OK_* TA_TUL1'``.

    Selectors are separated by commas and/or whitespace. The rule that keeps
    SeisComP's space-separated channel lists: a token containing ``_`` starts a
    new selector (NET_STA always has one, a channel selector never does); any
    other token is one more channel selector of the preceding ``NET_STA:``
    selector. An empty list is an error (rtpick would otherwise request
    nothing, or a server default, without saying so).
    """
    text = ",".join(items) if not isinstance(items, str) else items
    selectors: list[StreamSelector] = []
    for token in text.replace(",", " ").split():
        if "_" in token.partition(":")[0]:
            selectors.append(StreamSelector.parse(token))
        elif selectors and ":" in _last_text(selectors[-1]):
            last = selectors[-1]
            selectors[-1] = StreamSelector(last.station, last.channels + (token,))
        else:
            raise ValueError(f"stream selector {token!r}: expected NET_STA[:CHANNELS] "
                             "(a channel list must follow NET_STA: as in 'OK_FNO:HH? BH?')")
    if not selectors:
        raise ValueError("seedlink.streams (--streams): no stream selector given; expected NET_STA[:CHANNELS],...")
    return selectors


def _last_text(sel: StreamSelector) -> str:
    return f"{sel.station}:{' '.join(sel.channels)}" if sel.channels else sel.station


@dataclass
class IngestStats:
    """Counters of the SeedLink ingest (read by metrics and the daemon's summary)."""

    connects: int = 0
    packets: int = 0  # data packets received
    records: int = 0  # records yielded downstream
    samples: int = 0
    duplicates: int = 0  # dropped: already handed downstream (by seq/time)
    stale: int = 0  # dropped: older than the buffer horizon of their channel
    warmup: int = 0  # records re-fed for context after a restart (already committed before it)
    errors: dict[str, int] = field(default_factory=dict)  # cause -> count
    state: str = "idle"
    missing_stations: frozenset[str] = frozenset()  # selectors the server has no station for (last connect)


class SeedLinkIngest:
    """Records from a SeedLink server, forever (until :meth:`stop`), resuming after every disconnect."""

    def __init__(self, cfg: SeedLinkConfig, resume: IngestState | None = None, horizon_s: float = 0.0,
                 dialup: bool = False, rng: random.Random | None = None, warmup_s: float = 0.0,
                 max_future_s: float = MAX_FUTURE_S):
        self.cfg = cfg
        host, _, port = cfg.server.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"seedlink.server {cfg.server!r}: expected HOST:PORT")
        self.host, self.port = host, int(port)
        self.selectors = parse_selectors(list(cfg.streams))
        self.begin_ns = iso_to_ns(cfg.begin_time) if cfg.begin_time else None
        resume = resume or IngestState()
        self.seq: dict[str, int] = dict(resume.stations)  # last seq received per station
        # warm-up: on the first connect, stations with a saved position are requested from warmup_s
        # before it, so a restarted pipeline has context; those records come with seq -1 (not to be
        # committed again) and are yielded once per process
        self.warmup_ns = int(warmup_s * NS_PER_S)
        self.committed: dict[str, int] = dict(resume.channels)  # end_ns handed downstream before this process
        self._warm_pending = set(resume.stations) if self.warmup_ns > 0 else set()
        self.chan_end: dict[str, int] = {} if self._warm_pending else dict(resume.channels)  # last yielded, per channel
        self.horizon_ns = int(horizon_s * NS_PER_S)
        # time jumps beyond the buffer length are held until confirmed; set guard.observer for metrics
        self.guard: RecordGuard[Position] = RecordGuard(max_jump_s=horizon_s or MAX_JUMP_S, max_future_s=max_future_s)
        self.dialup = dialup
        self.stats = IngestStats()
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._logged: set[tuple[str, str]] = set()
        self._conn: SeedLink | None = None
        self._wanted_cache: dict[str, bool] = {}
        self._sid_cache: dict[str, str] = {}
        self._requested: list[str] = []  # stations requested on the current connection
        # (seq, station or None) of a skipped non-miniSEED packet, until a frame header follows it
        self._unframed: tuple[int, str | None] | None = None
        self._lost_at: tuple[int, int] = (-1, 0)  # (seq, reconnects in a row) framing was lost at, owner unknown
        self._next_no_match_log = 0.0

    # -- public ---------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def records(self) -> Iterator[Record]:
        for record, _pos in self.records_with_position():
            yield record

    def records_with_position(self) -> Iterator[tuple[Record, Position]]:
        """(record, (NET_STA, seq)) until stopped, or until a dial-up server says END."""
        failures = 0
        while not self._stop.is_set():
            got_data = False
            try:
                self._set_state("connecting")
                conn = self._open()
                self._set_state("streaming")
                for item in self._stream(conn):
                    got_data = True
                    yield item
                if self.dialup and not self._stop.is_set():
                    log.info("server %s:%d sent END (dial-up): all queued data received", self.host, self.port)
                    self.guard.flush()  # the end of the data: an unconfirmed time jump stays out (counted)
                    return
            except _FramingLost:
                pass  # counted where it was found; reconnect and resume after the packet
            except (SeedLinkError, OSError) as exc:
                self._count(_cause(exc), "", f"{exc}")
            finally:
                self._close()
            if got_data:
                failures = 0
            if self._stop.is_set():
                break
            delay = backoff_delay(failures, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self._rng)
            failures = min(failures + 1, 30)
            self._set_state("backoff", f"reconnect in {delay:.2f} s")
            self._stop.wait(delay)
        self._set_state("stopped")

    # -- connection -----------------------------------------------------------
    def _set_state(self, state: str, detail: str = "") -> None:
        if state != self.stats.state:
            log.info("seedlink %s:%d %s -> %s%s", self.host, self.port, self.stats.state, state, f" ({detail})" if detail else "")
            self.stats.state = state

    def _open(self) -> SeedLink:
        conn = SeedLink(self.host, self.port, timeout=self.cfg.netto_s, protocol=Protocol.V3,
                        clientname="rtpick", dialup=self.dialup)
        self._conn = conn
        conn.connect()
        self.stats.connects += 1
        stations, missing = self._expand(conn)
        accepted: list[str] = []
        for key, channels in stations:
            station_cmd = slcmd.station_v3(key, expect_reply=True)
            resp = conn._send_command(station_cmd)
            if not resp:
                missing.add(key)
                self._count("station_rejected", key, "server does not have this station")
                continue
            for sel in channels:
                resp = conn._send_command(slcmd.select_v3(key, sel, expect_reply=True))
                if not resp:
                    self._count("selector_rejected", key, f"selector {sel!r} rejected")
            action = self._action(key)
            resp = conn._send_command(action)
            if not resp:
                missing.add(key)
                self._count("station_rejected", key, f"{action.text!r} rejected")
                continue
            accepted.append(key)
        self.stats.missing_stations = frozenset(missing)
        if not accepted or not set(accepted) - missing:
            self._no_match()
            raise SeedLinkError("no station on the server matches the selectors")
        self._requested = accepted
        conn._send_command(slcmd.end_v3())
        conn._streaming = True
        self._warm_pending.clear()  # warm-up only once per process; reconnects resume by sequence number
        return conn

    def _action(self, key: str) -> slcmd.Command:
        verb = "FETCH" if self.dialup else "DATA"
        if key in self._warm_pending:
            prefix = key.replace("_", ".", 1) + "."
            ends = [end for sid, end in self.committed.items() if sid.startswith(prefix)]
            if ends:
                return slcmd.time_v3(key, _sl_time(min(ends) - self.warmup_ns), None, expect_reply=True)
        if key in self.seq:
            # the time is the server's fallback when the sequence number is no longer in its ring
            prefix = key.replace("_", ".", 1) + "."
            ends = [end for sid, end in self.chan_end.items() if sid.startswith(prefix)]
            stamp = _sl_time(max(ends)) if ends else None
            return slcmd.data_v3(key, verb, (self.seq[key] + 1) % 0x1000000, stamp, expect_reply=True)
        if self.begin_ns is not None:
            return slcmd.time_v3(key, _sl_time(self.begin_ns), None, expect_reply=True)
        return slcmd.data_v3(key, verb, None, None, expect_reply=True)

    def _no_match(self) -> None:
        """Nothing to stream: say so loudly (rate-limited); the caller retries with backoff, forever."""
        now = time.monotonic()
        if now >= self._next_no_match_log:
            self._next_no_match_log = now + NO_MATCH_LOG_S
            log.error("seedlink %s:%d: no station on the server matches the stream selectors %s; "
                      "retrying with backoff (up to %g s) until one does (logged at most every %g s)", self.host,
                      self.port, " ".join(_last_text(s) for s in self.selectors), self.cfg.reconnect_max_s, NO_MATCH_LOG_S)

    def _expand(self, conn: SeedLink) -> tuple[list[tuple[str, tuple[str, ...]]], set[str]]:
        """Selectors with wildcards → the matching stations from INFO STATIONS (resume is per station).

        Also the selectors INFO STATIONS shows the server has no station for (each a warning and
        ``no_station``); a named station is requested all the same (INFO may be restricted).
        """
        plan: dict[str, tuple[str, ...]] = {}
        missing: set[str] = set()
        known: list[str] | None = None
        for sel in self.selectors:
            if not sel.has_wildcard:
                plan.setdefault(sel.station, sel.channels)
                continue
            if known is None:
                try:
                    known = self._info_stations(conn)
                except SeedLinkError as exc:
                    if not conn.is_connected:
                        raise
                    self._count("info_failed", "", f"INFO STATIONS failed ({exc}); sending wildcard selectors as they are")
                    known = []
            if not known:
                plan.setdefault(sel.station, sel.channels)  # servers with NSWILDCARD take it; no per-station resume
            matches = [key for key in known if fnmatch.fnmatchcase(key, sel.station)]
            for key in matches:
                plan.setdefault(key, sel.channels)
            if known and not matches:
                missing.add(sel.station)
        if known:
            missing.update(key for key in plan if key not in known)
        for key in sorted(missing):
            self._count("no_station", key, "the server has no station matching this selector (INFO STATIONS)")
        return sorted(plan.items()), missing

    def _info_stations(self, conn: SeedLink) -> list[str]:
        doc = parse_info_xml(conn.info("STATIONS"))
        root = doc.get("seedlink", {})
        return sorted(f"{s.get('network', '')}_{s.get('name', '')}" for s in root.get("station", []))

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if conn.is_connected and self._stop.is_set():
                conn.bye()
        except SeedLinkError:
            pass
        conn.close()

    # -- streaming ------------------------------------------------------------
    def _stream(self, conn: SeedLink) -> Iterator[tuple[Record, Position]]:
        netto = self.cfg.netto_s
        self._unframed = None
        last_rx = time.monotonic()
        next_keepalive = last_rx + netto / 2
        while not self._stop.is_set():
            if not conn._poll_readable(POLL_S):
                now = time.monotonic()
                if now - last_rx > netto:
                    raise SeedLinkError(f"no data for {netto:g} s (netto)")
                if now >= next_keepalive:
                    next_keepalive = now + netto / 2
                    conn._send_command(slcmd.info("ID"))
                continue
            frame = self._read_frame(conn)
            last_rx = time.monotonic()
            if frame is None:
                return  # dial-up END
            if frame is _SKIPPED:
                continue
            if isinstance(frame, SeedLinkResponse):
                raise SeedLinkError(f"server error while streaming: {frame.message}")
            if conn._is_info_frame(frame):
                continue
            self.stats.packets += 1
            yield from self._decode(frame)

    def _read_frame(self, conn: SeedLink) -> object:
        """``conn._recv_frame()``, except that a data packet whose payload is not miniSEED is skipped.

        Returns the frame, None (dial-up END) or ``_SKIPPED``; raises :class:`_FramingLost` when the
        bytes after a skipped packet do not open a frame.
        """
        try:
            if conn._classify_next() is not StreamEvent.PACKET:
                frame = conn._recv_frame()  # END or an ERROR reply
                self._unframed = None
                return frame
            header = parse_header_v3(conn._take(HEADSIZE_V3))
        except SeedLinkError as exc:
            unframed, self._unframed = self._unframed, None
            if unframed is not None and conn.is_connected:  # bytes came, but no frame header
                raise self._framing_lost(*unframed, exc) from exc
            raise
        self._unframed = None
        payload = self._read_payload(conn, header)
        if conn._recv_start == conn._recv_end:
            conn._reset_recv_buf()  # as _recv_frame does: do not pin a large buffer
        if payload is None:
            return _SKIPPED
        try:
            return decode_frame_v3(header, payload)
        except SeedLinkError as exc:
            if header.is_info:
                raise
            self._poison(header.seqnum, payload, "bad_record", f"undecodable miniSEED: {exc}")
            return _SKIPPED

    def _read_payload(self, conn: SeedLink, header: HeaderV3) -> bytes | None:
        """One miniSEED record (a v3 header carries no length), or None: not miniSEED, skipped.

        Socket errors propagate as they are.
        """
        size = MIN_PAYLOAD_DETECT
        while True:
            head = conn._peek(size)
            try:
                found = mseed.detect_record_length(head)
            except SeedLinkError as exc:
                found, error = None, exc
            else:
                if found is not None:
                    return conn._take(found[0])
                error = None if size < MAX_RECORD_LEN else SeedLinkError("record length not found")
            if error is not None:
                if header.is_info:
                    raise error
                payload = conn._take(V3_RECORD_LEN)  # a v3 data frame's record is 512 bytes
                owner = self._poison(header.seqnum, payload, "not_miniseed", f"payload is not miniSEED ({error})")
                self._unframed = (header.seqnum, owner)
                return None
            size = min(size * 2, MAX_RECORD_LEN)

    def _poison(self, seq: int, payload: bytes, cause: str, message: str) -> str | None:
        """Skip a packet that cannot be decoded: counted, and its station's position moved past it.

        Returns the station, or None when no single station can be named (no position moves).
        """
        key = _header_station(payload)
        if key is None or not self._wanted(key):
            owners = self._expecting(seq) or (self._requested if len(self._requested) == 1 else [])
            key = owners[0] if len(owners) == 1 else None
        if key is None:
            self._count(cause, "", f"packet {seq:06X} of an unknown station skipped: {message}")
            return None
        self.seq[key] = seq
        self._count(cause, key, f"packet {seq:06X} skipped: {message}")
        return key

    def _expecting(self, seq: int) -> list[str]:
        """The requested stations whose next sequence number is ``seq``."""
        return [k for k in self._requested if (self.seq.get(k, -2) + 1) % SEQ_MODULO == seq]

    def _framing_lost(self, seq: int, owner: str | None, exc: SeedLinkError) -> _FramingLost:
        """No frame after a skipped non-miniSEED packet: count, and unstick a packet of an unknown station.

        A known station's position is already past the packet. An unknown station's packet is
        re-sent on every reconnect; after :data:`POISON_RETRIES` reconnects in a row at it, every
        station expecting its sequence number is moved past it (``poison_skipped``, each loses at
        most that one packet).
        """
        self._count("bad_header", owner or "", f"no frame after non-miniSEED packet {seq:06X} ({exc}): "
                    "framing lost, reconnecting")
        if owner is None:
            last, times = self._lost_at
            times = times + 1 if last == seq else 1
            self._lost_at = (seq, times)
            if times >= POISON_RETRIES:
                self._lost_at = (-1, 0)
                for key in self._expecting(seq):
                    self.seq[key] = seq
                    self._count("poison_skipped", key, f"packet {seq:06X} of an unknown station re-sent "
                                f"{times} times with the framing lost after it: skipped by every station expecting it")
        return _FramingLost(f"packet {seq:06X}: framing lost after a non-miniSEED payload")

    def _wanted(self, key: str) -> bool:
        ok = self._wanted_cache.get(key)
        if ok is None:
            ok = self._wanted_cache[key] = any(fnmatch.fnmatchcase(key, sel.station) for sel in self.selectors)
        return ok

    def _stream_id(self, sourceid: str) -> str:
        sid = self._sid_cache.get(sourceid)
        if sid is None:
            sid = self._sid_cache[sourceid] = ".".join(sourceid2nslc(sourceid))
        return sid

    def _decode(self, frame) -> list[tuple[Record, Position]]:
        key, seq = frame.station_id, frame.seqnum
        if not self._wanted(key):
            self._count("unexpected_station", key, "packet for a station that was not requested")
            return []
        try:
            rec = frame.record if frame.record is not None else MS3Record.parse(frame.payload)
            rec.unpack_data()
            samples = np.array(rec.np_datasamples, copy=True)
            stream_id = self._stream_id(rec.sourceid)
        except Exception as exc:  # noqa: BLE001 - pymseed raises several types for bad records
            self._advance(key, seq)
            self._count("bad_record", key, f"undecodable miniSEED: {exc}")
            return []
        if samples.size == 0 or rec.sampletype not in ("i", "f", "d"):
            self._advance(key, seq)
            return []  # log/calibration/empty records carry no waveform
        record = self.guard.screen(Record(stream_id, int(rec.starttime), float(rec.samprate), samples))
        if record is None:
            self._advance(key, seq)  # rejected (counted by the guard): resume goes past it, the dedupe position stays
            return []
        done = self.committed.get(stream_id)
        if self.warmup_ns and done is not None and record.end_ns <= done:
            if record.end_ns <= self.chan_end.get(stream_id, 0):
                self.stats.duplicates += 1
                return []
            return self._guarded(record, (key, -1))  # context for the pipeline, already committed before
        last_seq = self.seq.get(key)
        end_prev = self.chan_end.get(record.stream_id)
        if end_prev is not None and record.end_ns <= end_prev:
            self.stats.duplicates += 1
            if end_prev - record.end_ns > self.horizon_ns > 0:
                self.stats.stale += 1
            return []
        if last_seq is not None and seq is not None and seq <= last_seq and last_seq - seq < 0x800000:
            self._count("seq_backwards", key, f"sequence {seq:06X} after {last_seq:06X} with newer data (server ring reset?)")
        self._advance(key, seq)
        return self._guarded(record, (key, seq if seq is not None else -1))

    def _advance(self, key: str, seq: int | None) -> None:
        """The station's resume position: past every packet received, whatever became of it."""
        if seq is not None:
            self.seq[key] = seq

    def _guarded(self, record: Record, position: Position) -> list[tuple[Record, Position]]:
        """What the guard's time checks let through now; only that moves the channel's dedupe position."""
        items = self.guard.place(record, position)
        for accepted, (_, seq) in items:
            self.chan_end[accepted.stream_id] = max(accepted.end_ns, self.chan_end.get(accepted.stream_id, 0))
            if seq < 0:
                self.stats.warmup += 1
            else:
                self.stats.records += 1
                self.stats.samples += accepted.samples.size
        return items

    def _count(self, cause: str, station: str, message: str) -> None:
        self.stats.errors[cause] = self.stats.errors.get(cause, 0) + 1
        if (cause, station) not in self._logged and len(self._logged) < 10_000:
            self._logged.add((cause, station))
            where = f" [{station}]" if station else ""
            log.warning("seedlink %s:%d %s%s: %s (logged once per cause and station)",
                        self.host, self.port, cause, where, message)


class _FramingLost(SeedLinkError):
    """No frame after a skipped non-miniSEED packet: reconnect (already counted, see ``_framing_lost``)."""


_SKIPPED = object()  # _read_frame: a packet was skipped, read on


def _header_station(payload: bytes) -> str | None:
    """NET_STA from a miniSEED 2 fixed header (station 8:13, network 18:20), even when the rest is bad."""
    if len(payload) < 20:
        return None
    try:
        sta, net = payload[8:13].decode("ascii").strip(), payload[18:20].decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    return f"{net}_{sta}" if sta.isalnum() and net.isalnum() else None


def backoff_delay(failures: int, low: float, high: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: ``low * 2**failures`` capped at ``high``, times 0.5–1.5."""
    return min(high, low * 2 ** failures) * (0.5 + rng.random())


def _sl_time(ns: int) -> str:
    """SeedLink v3 time ``YYYY,MM,DD,hh,mm,ss`` (whole seconds, rounded down)."""
    return time.strftime("%Y,%m,%d,%H,%M,%S", time.gmtime(ns // NS_PER_S))


def _cause(exc: Exception) -> str:
    text = str(exc).lower()
    for needle, cause in (("sequence", "bad_header"), ("signature", "bad_header"), ("header", "bad_header"),
                          ("unexpected data", "bad_header"), ("mini", "not_miniseed"), ("record length", "not_miniseed"),
                          ("timed out", "timeout"), ("timeout", "timeout"), ("no data for", "timeout"),
                          ("closed", "disconnected"), ("could not connect", "connect_failed"),
                          ("no station", "no_station")):
        if needle in text:
            return cause
    return "protocol_error"
