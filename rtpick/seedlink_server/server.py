"""A small SeedLink 3.1 server (asyncio) that replays a miniSEED archive from an in-memory ring.

The ring fills as the replay clock releases packets (all at once when
``speed == 0``); each client session keeps a cursor into it, so any number of
clients stream concurrently and a slow one never holds up the others.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import threading
import time
from dataclasses import dataclass, field

from rtpick.seedlink_server.archive import NS, Archive, Packet
from rtpick.seedlink_server.protocol import HELLO_CAPS, SOFTWARE, Selector, info_packets, info_xml, parse_time, selected

log = logging.getLogger("rtpick.seedlink_server")

MAX_LINE = 256
WRITE_HIGH_WATER = 1 << 20


class Ring:
    """Released packets in release order, addressable by global index and by (station, seq)."""

    def __init__(self, max_packets: int):
        self.max_packets = max_packets
        self.packets: list[Packet] = []
        self.base = 0
        self.index: dict[tuple[str, int], int] = {}
        self.last_seq: dict[str, int] = {}
        self.complete = False
        self._event = asyncio.Event()

    @property
    def end(self) -> int:
        return self.base + len(self.packets)

    def get(self, g: int) -> Packet:
        return self.packets[g - self.base]

    def append(self, packets: list[Packet]) -> None:
        for pkt in packets:
            self.index[(pkt.station, pkt.seq)] = self.end
            self.packets.append(pkt)
            self.last_seq[pkt.station] = pkt.seq
        excess = len(self.packets) - self.max_packets
        if excess > 0:
            for pkt in self.packets[:excess]:
                self.index.pop((pkt.station, pkt.seq), None)
            del self.packets[:excess]
            self.base += excess
        self.notify()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            pass

    def by_station(self) -> dict[str, list[Packet]]:
        out: dict[str, list[Packet]] = {}
        for pkt in self.packets:
            out.setdefault(pkt.station, []).append(pkt)
        return out


@dataclass
class StationRequest:
    """What one STATION (or the implicit uni-station) block asked for."""

    keys: list[str]
    selectors: list[Selector] = field(default_factory=list)
    seq: int | None = None
    begin_ns: int | None = None
    end_ns: int | None = None
    realtime: bool = True


class Session:
    """One client connection: command phase, then streaming from a ring cursor."""

    def __init__(self, server: ReplayServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.server, self.reader, self.writer = server, reader, writer
        self.peer = writer.get_extra_info("peername")
        self.requests: list[StationRequest] = []
        self.current: StationRequest | None = None
        self.multi = False
        self.batch = False
        self.dialup = False
        self.streaming = asyncio.Event()
        self.sent = 0
        self.cursor = 0
        self.caught_up = False
        self.closed = False

    # -- command phase ------------------------------------------------------
    def reply(self, ok: bool) -> None:
        if not self.batch:
            self.writer.write(b"OK\r\n" if ok else b"ERROR\r\n")

    async def read_command(self) -> str | None:
        line = bytearray()
        while True:
            ch = await self.reader.read(1)
            if not ch:
                return None
            if ch in (b"\r", b"\n"):
                if line:
                    return line.decode("ascii", "replace").strip()
                continue
            line += ch
            if len(line) > MAX_LINE:
                return ""

    async def run(self) -> None:
        sender = None
        try:
            while True:
                cmd = await self.read_command()
                if cmd is None:
                    break
                words = cmd.split()
                verb = words[0].upper() if words else ""
                args = words[1:]
                if verb == "BYE":
                    break
                if verb == "INFO":
                    self.send_info(args[0].upper() if args else "ID")
                elif self.streaming.is_set():
                    continue  # only INFO and BYE mean something while streaming
                elif verb == "HELLO":
                    self.writer.write(f"{SOFTWARE} :: {HELLO_CAPS}\r\nrtpick replay of {len(self.server.archive.files)} files\r\n".encode())
                elif verb in ("CAPABILITIES", "USERAGENT"):
                    self.reply(True)
                elif verb == "BATCH":
                    self.reply(True)
                    self.batch = True
                elif verb == "STATION":
                    self.cmd_station(args)
                elif verb == "SELECT":
                    self.cmd_select(args)
                elif verb in ("DATA", "FETCH", "TIME"):
                    self.cmd_action(verb, args)
                    if not self.multi and self.current is not None:
                        self.start_streaming()
                elif verb == "END":
                    self.start_streaming()
                else:
                    self.writer.write(b"ERROR\r\n")
                if self.streaming.is_set() and sender is None:
                    sender = asyncio.create_task(self.send_loop())
                await self.writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed = True
            if sender is not None:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            self.writer.close()

    def cmd_station(self, args: list[str]) -> None:
        if not args:
            self.reply(False)
            return
        sta, net = args[0], (args[1] if len(args) > 1 else "*")
        keys = [k for k in self.server.stations if fnmatch.fnmatchcase(k, f"{net}_{sta}")]
        self.multi = True
        if not keys:
            self.current = None
            self.reply(False)
            return
        self.current = StationRequest(keys)
        self.requests.append(self.current)
        self.reply(True)

    def _current(self) -> StationRequest | None:
        if self.current is None and not self.multi:
            self.current = StationRequest(list(self.server.stations))
            self.requests.append(self.current)
        return self.current

    def cmd_select(self, args: list[str]) -> None:
        req = self._current()
        if req is None:
            self.reply(False)
            return
        if not args:
            req.selectors.clear()
            self.reply(True)
            return
        try:
            req.selectors.extend(Selector.parse(a) for a in args)
        except ValueError:
            self.reply(False)
            return
        self.reply(True)

    def cmd_action(self, verb: str, args: list[str]) -> None:
        req = self._current()
        if req is None:
            if self.multi:
                self.reply(False)
            return
        try:
            if verb == "TIME":
                req.begin_ns = parse_time(args[0])
                req.end_ns = parse_time(args[1]) if len(args) > 1 else None
                req.realtime = False
            elif args:
                req.seq = int(args[0], 16)
                req.begin_ns = parse_time(args[1]) if len(args) > 1 else None
                req.realtime = False
        except (ValueError, IndexError):
            if self.multi:
                self.reply(False)
            return
        self.dialup = self.dialup or verb == "FETCH"
        if self.multi:
            self.reply(True)

    def start_streaming(self) -> None:
        self.streaming.set()

    def send_info(self, level: str) -> None:
        if level not in ("ID", "STATIONS", "STREAMS"):
            level = "ID"
        packets = {key: [] for key in self.server.stations} if level != "ID" else {}
        if level != "ID":
            packets.update(self.server.ring.by_station())
        xml = info_xml(level, self.server.started_ns, packets)
        for pkt in info_packets(xml):
            self.writer.write(pkt)

    # -- streaming phase -----------------------------------------------------
    def _plan(self) -> tuple[dict[str, StationRequest], dict[str, int]]:
        """Per-station request and first sequence number to send; sets the start cursor."""
        ring = self.server.ring
        by_key: dict[str, StationRequest] = {}
        next_seq: dict[str, int] = {}
        cursor = ring.end
        for req in self.requests:
            for key in req.keys:
                if key in by_key:
                    continue
                by_key[key] = req
                if req.seq is not None:
                    g = ring.index.get((key, req.seq))
                    if g is not None:
                        cursor = min(cursor, g)
                        next_seq[key] = req.seq
                        continue
                    if req.seq > ring.last_seq.get(key, 0) and not ring.complete:
                        next_seq[key] = req.seq  # not released yet: wait for it (restarted replay)
                        continue
                if req.begin_ns is not None:
                    cursor = ring.base
                    next_seq[key] = 0
                    continue
                next_seq[key] = ring.last_seq.get(key, 0) + 1  # real time: only new packets
        self.cursor = cursor
        return by_key, next_seq

    async def send_loop(self) -> None:
        ring = self.server.ring
        by_key, next_seq = self._plan()
        wanted: dict[tuple[str, str, str], bool] = {}
        write = self.writer.write
        while not self.closed:
            self.caught_up = False
            while self.cursor < ring.end:
                if self.cursor < ring.base:
                    self.cursor = ring.base
                pkt = ring.get(self.cursor)
                self.cursor += 1
                req = by_key.get(pkt.station)
                if req is None or pkt.seq < next_seq[pkt.station]:
                    continue
                if req.begin_ns is not None and req.seq is None:
                    if pkt.end_ns <= req.begin_ns or (req.end_ns is not None and pkt.start_ns >= req.end_ns):
                        continue
                ident = (pkt.station, pkt.loc, pkt.cha)
                ok = wanted.get(ident)
                if ok is None:
                    ok = wanted[ident] = selected(req.selectors, pkt.loc, pkt.cha)
                if not ok:
                    continue
                write(b"SL%06X" % pkt.seq + pkt.data)
                self.sent += 1
                self.server.packets_sent += 1
                if self.writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                    await self.writer.drain()
            await self.writer.drain()
            if self.cursor < ring.end:
                continue
            self.caught_up = True
            if self.dialup:
                write(b"END")
                await self.writer.drain()
                self.writer.close()
                return
            await ring.wait(0.5)


class ReplayServer:
    """Serve ``archive`` on ``host:port``; ``speed`` 0 = everything at once, 1 = real time."""

    def __init__(self, archive: Archive, host: str = "127.0.0.1", port: int = 18000, speed: float = 0.0,
                 shift_to_now: bool = False, loop: bool = False, max_packets: int = 1_000_000,
                 origin_ns: int | None = None):
        if loop and speed <= 0:
            raise ValueError("loop needs speed > 0")
        self.archive = archive
        self.host, self.port = host, port
        self.speed, self.shift_to_now, self.loop_archive = speed, shift_to_now, loop
        self.max_packets = max_packets
        self.stations = archive.stations
        self.started_ns = time.time_ns()
        # wall time at which the archive's first sample is "recorded"; servers restarted with the
        # same origin release the same packets at the same moments (as a persistent ring would)
        self.origin_ns = origin_ns if origin_ns is not None else self.started_ns
        self.sessions: list[Session] = []
        self.packets_sent = 0
        self.ring: Ring
        self._server: asyncio.AbstractServer | None = None
        self._release: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.ring = Ring(self.max_packets)
        self._shift_s = round((self.origin_ns - self.archive.start_ns) / NS) if self.shift_to_now else 0
        self._next_seq: dict[str, int] = {}
        first = await asyncio.to_thread(self.archive.packets, self._shift_s, self._next_seq)
        if self.speed <= 0:
            self.ring.append(first)
            first = []
        self._release = asyncio.create_task(self._release_loop(first))
        self._server = await asyncio.start_server(self._client, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("serving %d stations from %d files on %s:%d (speed %s)", len(self.stations),
                 len(self.archive.files), self.host, self.port, self.speed or "max")

    async def _release_loop(self, first: list[Packet]) -> None:
        t0 = time.monotonic() - (time.time_ns() - self.origin_ns) / NS
        passes = 0
        pending = first
        base_ns = self.archive.start_ns + self._shift_s * NS
        while True:
            i = 0
            while self.speed > 0 and i < len(pending):
                now = time.monotonic()
                j = i
                while j < len(pending) and t0 + (pending[j].end_ns - base_ns) / NS / self.speed <= now:
                    j += 1
                if j > i:
                    self.ring.append(pending[i:j])
                    i = j
                else:
                    due = t0 + (pending[i].end_ns - base_ns) / NS / self.speed
                    await asyncio.sleep(min(max(due - now, 0.001), 0.5))
            if not self.loop_archive:
                break
            passes += 1
            pending = await asyncio.to_thread(self.archive.packets, self._shift_s + passes * self.archive.span_s, self._next_seq)
            if self.speed <= 0:
                self.ring.append(pending)
                pending = []
                await asyncio.sleep(0)
        self.ring.complete = True
        self.ring.notify()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(self, reader, writer)
        self.sessions.append(session)
        self._tasks.add(asyncio.current_task())
        log.info("client %s connected", session.peer)
        try:
            await session.run()
        finally:
            log.info("client %s gone after %d packets", session.peer, session.sent)
            self._tasks.discard(asyncio.current_task())

    async def close(self) -> None:
        """Stop listening and drop every client at once (as a killed server would)."""
        if self._server is not None:
            self._server.close()
        for session in self.sessions:
            session.closed = True
            session.writer.transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._release is not None:
            self._release.cancel()
            await asyncio.gather(self._release, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def drained(self) -> bool:
        """True when the whole archive is released and every streaming client has been sent all of it."""
        live = [s for s in self.sessions if not s.closed and s.streaming.is_set()]
        return self.ring.complete and bool(live) and all(s.caught_up and s.cursor >= self.ring.end for s in live)


class ServerThread:
    """Run a :class:`ReplayServer` on its own event loop in a background thread (tests, demo, bench)."""

    def __init__(self, archive: Archive, **kwargs):
        self.server = ReplayServer(archive, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="seedlink-server", daemon=True)

    def start(self, timeout: float = 60.0) -> ServerThread:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, fn, timeout: float = 10.0):
        """Run ``fn()`` on the server's loop (to read its state safely)."""

        async def wrapper():
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(timeout)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout)
        if not self._loop.is_closed() and not self._loop.is_running():
            self._loop.run_until_complete(self._loop.shutdown_default_executor())  # the packing worker thread
            self._loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
