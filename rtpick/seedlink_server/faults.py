"""A fault-injecting SeedLink server: the replay server plus bad inputs, on demand, per station.

Used by ``tests/test_faults.py`` and ``bench/soak.py`` to show that no bad record,
clock glitch, outage or server restart stops the network (issue 14). The faults are
data, a list of :class:`Fault`, so every case stays covered and a new one is one line.

How a fault reaches the wire
----------------------------
:class:`FaultArchive` is an :class:`~rtpick.seedlink_server.archive.Archive` whose
stations can be renamed copies of the archive's own (``copies={"XX_F01": "OK_FNO"}``:
the same samples under another station code, so one small archive gives many
stations) and whose packets are rewritten after numbering:

* a record fault changes only the 512 bytes on the wire of the record with index
  ``at_record`` of its station (0-based in release order, so index = sequence
  number - 1). The packet keeps its release time, place in the ring and sequence
  number, exactly as a data logger with a glitch would have sent it;
* ``"outage"`` re-dates every record from ``at_record`` on by ``value`` seconds
  (a station that comes back after a long outage: its data time jumps, the
  release timing does not, so the test need not wait 24 h);
* ``"gap"`` drops ``count`` records from ``at_record`` on (their sequence numbers
  are simply missing, as when a data logger loses data before the server);
* a poison packet (``"garbage"``: non-miniSEED bytes in a correctly framed SeedLink
  packet; ``"bad_doy"``: a miniSEED header with day-of-year 400) stays in the
  ring at its sequence number, so it is re-sent every time a client resumes there:
  a client that does not advance past it is stuck forever.

Server faults (station ``"*"``): ``"restart"`` kills and restarts the server after
``at_record`` packets were sent in total (all incarnations; the restarted server
holds the same ring at the same moment, as a real ring server with a disk buffer
would); ``"slow"`` sleeps ``value`` seconds after every packet sent to a client.

Packing is deterministic, so restarted servers and loop passes of the archive
inject the same faults at the same sequence numbers.
"""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtpick.seedlink_server.archive import NS, RECLEN, SEQ_MODULO, Archive, Packet
from rtpick.seedlink_server.server import ReplayServer, ServerThread, Session

RECORD_KINDS = ("rate", "dated", "shift", "nan", "garbage", "bad_doy", "outage", "gap")
SERVER_KINDS = ("restart", "slow")
GARBAGE = b"this is not a miniSEED record, but it is framed like one. "


@dataclass(frozen=True)
class Fault:
    """One injected fault.

    ``station``: SeedLink key ``NET_STA`` (``"*"`` for server faults). ``kind`` and
    ``value``:

    ========== ===========================================================
    rate       the record says ``value`` Hz (0 and absurd rates included)
    dated      the record starts at ``value`` s since 1970 (2099, 1970 ...)
    shift      the record is dated ``value`` s later (+1 h, +1 day ...)
    nan        the record holds float32 samples, some of them NaN
    garbage    the payload is not miniSEED (poison packet)
    bad_doy    the header says day-of-year 400 (poison packet)
    outage     this and every later record is dated ``value`` s later
    gap        ``count`` records from here on are never sent
    restart    the server restarts after ``at_record`` packets sent in total
    slow       ``value`` s pause after every packet sent (server-wide)
    ========== ===========================================================
    """

    station: str
    kind: str
    at_record: int = 0
    value: float = 0.0
    count: int = 1

    def __post_init__(self):
        if self.kind not in RECORD_KINDS + SERVER_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {RECORD_KINDS + SERVER_KINDS}")
        if (self.kind in SERVER_KINDS) != (self.station == "*"):
            raise ValueError(f"fault {self.kind!r}: station must be '*' exactly for server faults")
        if self.at_record < 0 or self.count < 1:
            raise ValueError("at_record must be >= 0 and count >= 1")


# -- rewriting one 512-byte miniSEED 2 record -----------------------------------------------------

def _trace(data: bytes):
    import obspy

    return obspy.read(io.BytesIO(data), format="MSEED")[0]


def _write(trace, encoding: str) -> bytes:
    """The first 512-byte record of ``trace`` (a rate that needs blockette 100 may spill into a second)."""
    buf = io.BytesIO()
    trace.write(buf, format="MSEED", reclen=RECLEN, encoding=encoding, byteorder=">")
    return buf.getvalue()[:RECLEN]


def _redated(data: bytes, start_ns: int) -> bytes:
    import obspy

    trace = _trace(data)
    trace.stats.starttime = obspy.UTCDateTime(ns=start_ns)
    return _write(trace, "STEIM2")


def _with_rate(data: bytes, rate: float) -> bytes:
    """The record at ``rate`` Hz. A rate that needs blockette 100 leaves less room for data: the
    samples that no longer fit are lost (a short record; compare with :func:`with_nominal_rate`)."""
    if rate == 0:  # ObsPy refuses to write it; a data logger can still send it
        return data[:32] + struct.pack(">hh", 0, 0) + data[36:]
    trace = _trace(data)
    trace.stats.sampling_rate = rate
    return _write(trace, "STEIM2")


def with_nominal_rate(data: bytes, rate: int) -> bytes:
    """The same record claiming exactly ``rate`` Hz: header factor/multiplier and any blockette 100.

    What a snapped ``"rate"`` fault must be equivalent to (the reference for tests):
    the same samples at the same time, only the rate differs.
    """
    out = bytearray(data)
    out[32:36] = struct.pack(">hh", rate, 1)
    offset = struct.unpack(">H", out[46:48])[0]
    for _ in range(8):  # a 512-byte record holds few blockettes; bound the walk over a corrupt chain
        if not 48 <= offset <= RECLEN - 8:
            break
        kind, following = struct.unpack(">HH", out[offset:offset + 4])
        if kind == 100:
            out[offset + 4:offset + 8] = struct.pack(">f", rate)
        offset = following
    return bytes(out)


def _with_nan(data: bytes) -> bytes:
    """A float32 record at the same time: the first 100 samples, every tenth one NaN."""
    trace = _trace(data)
    trace.data = trace.data[:100].astype(np.float32)
    trace.data[::10] = np.nan
    return _write(trace, "FLOAT32")


def _renamed(data: bytes, key: str) -> bytes:
    net, sta = key.split("_", 1)
    return data[:8] + sta.encode().ljust(5) + data[13:18] + net.encode().ljust(2) + data[20:]


def _rewrite(fault: Fault, pkt: Packet) -> bytes:
    kind, data = fault.kind, pkt.data
    if kind == "rate":
        return _with_rate(data, fault.value)
    if kind == "dated":
        return _redated(data, round(fault.value * NS))
    if kind in ("shift", "outage"):
        return _redated(data, pkt.start_ns + round(fault.value * NS))
    if kind == "nan":
        return _with_nan(data)
    if kind == "garbage":
        return (GARBAGE * (RECLEN // len(GARBAGE) + 1))[:RECLEN]
    if kind == "bad_doy":
        return data[:22] + struct.pack(">H", 400) + data[24:]
    raise AssertionError(kind)


class FaultArchive(Archive):
    """An archive with renamed station copies and injected faults (module docstring).

    ``copies`` maps a new key to an archive key (``{"XX_F01": "OK_FNO"}``);
    ``keep_originals=False`` serves the copies only. ``shift_s`` re-dates the whole
    archive (whole seconds), e.g. so that replayed data looks live.
    """

    def __init__(self, paths: Iterable[str | Path], faults: Sequence[Fault] = (), copies: dict[str, str] | None = None,
                 keep_originals: bool = True, shift_s: int = 0):
        super().__init__(paths)
        self.copies = dict(copies or {})
        self.keep_originals = keep_originals
        self.faults = list(faults)
        own = set(super().stations)
        unknown = {src for src in self.copies.values() if src not in own}
        if unknown:
            raise ValueError(f"copies of stations not in the archive: {sorted(unknown)}")
        if shift_s:
            for trace in self.traces:
                trace.stats.starttime += shift_s
            self.start_ns += shift_s * NS
            self.end_ns += shift_s * NS
        names = set(self.stations)
        for fault in self.faults:
            if fault.station != "*" and fault.station not in names:
                raise ValueError(f"fault on unknown station {fault.station!r}")
        self._record_faults: dict[str, list[Fault]] = {}
        for fault in self.faults:
            if fault.kind in RECORD_KINDS:
                self._record_faults.setdefault(fault.station, []).append(fault)

    @property
    def stations(self) -> list[str]:
        own = super().stations if self.keep_originals else []
        return sorted({*own, *self.copies})

    def server_faults(self, kind: str) -> list[Fault]:
        return [f for f in self.faults if f.kind == kind]

    def packets(self, shift_s: int = 0, first_seq: dict[str, int] | None = None) -> list[Packet]:
        """The archive's packets plus copies, ordered and numbered as :meth:`Archive.packets`, faults applied."""
        originals = super().packets(shift_s, {})
        by_source: dict[str, list[str]] = {}
        for key, src in self.copies.items():
            by_source.setdefault(src, []).append(key)
        rows = []
        for pkt in originals:
            if self.keep_originals:
                rows.append(pkt)
            for key in by_source.get(pkt.station, ()):
                rows.append(Packet(key, pkt.loc, pkt.cha, 0, pkt.start_ns, pkt.end_ns, _renamed(pkt.data, key)))
        rows.sort(key=lambda p: (p.end_ns, p.station, p.loc, p.cha, p.start_ns))
        next_seq = first_seq if first_seq is not None else {}
        out = []
        for pkt in rows:
            pkt.seq = next_seq.get(pkt.station, 1)
            next_seq[pkt.station] = (pkt.seq + 1) % SEQ_MODULO
            if self._inject(pkt):
                out.append(pkt)
        return out

    def _inject(self, pkt: Packet) -> bool:
        """Apply the station's faults to ``pkt`` in place; False when the packet is dropped (gap)."""
        index = pkt.seq - 1
        for fault in self._record_faults.get(pkt.station, ()):
            if fault.kind == "gap":
                if fault.at_record <= index < fault.at_record + fault.count:
                    return False
            elif index == fault.at_record or (fault.kind == "outage" and index > fault.at_record):
                pkt.data = _rewrite(fault, pkt)
        return True


# -- the server ------------------------------------------------------------------------------------

class SlowSession(Session):
    """A session that pauses ``server.packet_delay_s`` after every packet (a slow or congested server)."""

    async def drain(self) -> None:
        if self.streaming.is_set() and self.server.packet_delay_s > 0:
            await asyncio.sleep(self.server.packet_delay_s)
        await super().drain()


class FaultReplayServer(ReplayServer):
    session_class = SlowSession

    def __init__(self, archive: Archive, packet_delay_s: float = 0.0, **kwargs):
        super().__init__(archive, **kwargs)
        self.packet_delay_s = packet_delay_s


class _Thread(ServerThread):
    server_class = FaultReplayServer


class FaultServer:
    """Serve a :class:`FaultArchive` from a background thread; restarts it at its ``restart`` faults.

    All incarnations listen on the same port and share one ``origin_ns``, so a
    restarted server releases the same packets with the same sequence numbers at
    the same moments. ``restart()`` may also be called directly (bench, tests).
    """

    def __init__(self, archive: FaultArchive, port: int = 0, down_s: float = 0.3, **server_kwargs):
        self.archive = archive
        self.port = port
        self.down_s = down_s
        slow = archive.server_faults("slow")
        server_kwargs.setdefault("packet_delay_s", max((f.value for f in slow), default=0.0))
        server_kwargs.setdefault("origin_ns", time.time_ns())
        self.kwargs = server_kwargs
        self.restarts_due = sorted(f.at_record for f in archive.server_faults("restart"))
        self.restarts = 0
        self._sent_before = 0  # packets sent by earlier incarnations
        self._thread: _Thread | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watch: threading.Thread | None = None

    def start(self) -> FaultServer:
        self._thread = _Thread(self.archive, port=self.port, **self.kwargs).start()
        self.port = self._thread.port
        if self.restarts_due and self._watch is None:
            self._watch = threading.Thread(target=self._watch_loop, name="fault-server-restarts", daemon=True)
            self._watch.start()
        return self

    @property
    def server(self) -> FaultReplayServer:
        assert self._thread is not None, "not started"
        return self._thread.server

    @property
    def packets_sent(self) -> int:
        """Packets sent to clients by all incarnations."""
        with self._lock:
            current = self._thread.server.packets_sent if self._thread is not None else 0
            return self._sent_before + current

    def call(self, fn, timeout: float = 10.0):
        """Run ``fn()`` on the current server's loop (to read its state safely)."""
        assert self._thread is not None, "not started"
        return self._thread.call(fn, timeout)

    def restart(self) -> None:
        """Kill the server (every client dropped at once), wait ``down_s``, start it again."""
        with self._lock:
            if self._thread is not None:
                self._sent_before += self._thread.server.packets_sent
                self._thread.stop()
            time.sleep(self.down_s)
            self._thread = _Thread(self.archive, port=self.port, **self.kwargs).start()
            self.restarts += 1

    def _watch_loop(self) -> None:
        while self.restarts_due and not self._stop.wait(0.05):
            if self.packets_sent >= self.restarts_due[0]:
                self.restarts_due.pop(0)
                self.restart()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.join(30)
        with self._lock:
            if self._thread is not None:
                self._sent_before += self._thread.server.packets_sent
                self._thread.stop()
                self._thread = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def write_miniseed(packets: Iterable[Packet], path: str | Path) -> Path:
    """Concatenate packets into a miniSEED file (e.g. the clean reference for ``rtpick replay``)."""
    path = Path(path)
    with path.open("wb") as f:
        for pkt in packets:
            f.write(pkt.data)
    return path
