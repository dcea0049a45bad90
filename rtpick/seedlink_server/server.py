"""A small SeedLink 3.1 server (asyncio) that replays a miniSEED archive from an in-memory ring.

The ring fills as the replay clock releases packets (all at once when
``speed == 0``); each client session keeps a cursor into it, so many clients
stream concurrently and a slow one never holds up the others.

Every resource a client can make the server hold is bounded, so a broken or
hostile client costs at most one session slot (see docs/seedlink.md):

* at most ``max_clients`` sessions; one more gets ``ERROR`` and is closed;
* a command line is at most :data:`MAX_LINE` bytes (SeedLink commands are short);
  a longer one gets ``ERROR`` and the connection is closed;
* every command that cannot be parsed gets ``ERROR`` (never an exception);
* a client must complete a command within ``handshake_timeout_s`` while it has
  not started streaming;
* a client's send queue holds at most ``max_queue_bytes``; a client that does not
  read it down within ``send_timeout_s`` is disconnected (it resumes by sequence
  number when it reconnects, as after any disconnect);
* closed sessions are dropped from :attr:`ReplayServer.sessions` at once.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from rtpick.seedlink_server.archive import NS, Archive, Packet
from rtpick.seedlink_server.protocol import HELLO_CAPS, SOFTWARE, Selector, info_packets, info_xml, parse_time, selected

log = logging.getLogger("rtpick.seedlink_server")

MAX_LINE = 255  # bytes of one command line without its terminator (SeedLink commands are short)
MAX_REQUESTS = 1024  # STATION blocks per session, and selectors per block
READ_CHUNK = 4096
REJECT_LOG_INTERVAL_S = 10.0  # at most one "client limit reached" line per interval


class ClientGone(Exception):
    """The session must end now: protocol violation, timeout or a client that does not read."""


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
        self._buf = bytearray()
        writer.transport.set_write_buffer_limits(high=server.max_queue_bytes)

    # -- command phase ------------------------------------------------------
    def reply(self, ok: bool) -> None:
        if not self.batch:
            self.writer.write(b"OK\r\n" if ok else b"ERROR\r\n")

    async def read_command(self) -> str | None:
        """The next non-empty command line (``\\r`` or ``\\n`` ends it), or None at end of input.

        Raises :class:`ClientGone` on a line longer than :data:`MAX_LINE` (after
        answering ``ERROR``) and when a client that is not streaming yet stays
        silent for ``handshake_timeout_s``.
        """
        deadline = time.monotonic() + self.server.handshake_timeout_s  # for the whole line, not per byte
        while True:
            ends = [i for i in (self._buf.find(b"\r"), self._buf.find(b"\n")) if i >= 0]
            if ends:
                end = min(ends)
                line = bytes(self._buf[:end])
                del self._buf[:end + 1]
                if len(line) > MAX_LINE:
                    self._too_long()
                text = line.decode("ascii", "replace").strip()
                if text:
                    return text
                continue
            if len(self._buf) > MAX_LINE:
                self._too_long()
            timeout = None if self.streaming.is_set() else max(deadline - time.monotonic(), 0.0)
            try:
                chunk = await asyncio.wait_for(self.reader.read(READ_CHUNK), timeout)
            except TimeoutError:
                raise ClientGone(f"no complete command within {self.server.handshake_timeout_s:g} s") from None
            if not chunk:
                return None
            self._buf += chunk

    def _too_long(self) -> None:
        self.writer.write(b"ERROR\r\n")
        self.server.errors["line_too_long"] += 1
        raise ClientGone(f"command line longer than {MAX_LINE} bytes")

    async def drain(self) -> None:
        """Wait while the send queue is above ``max_queue_bytes``; a client that does not read it
        down within ``send_timeout_s`` is disconnected (:class:`ClientGone`)."""
        if self.writer.transport.get_write_buffer_size() <= self.server.max_queue_bytes:
            return
        try:
            await asyncio.wait_for(self.writer.drain(), self.server.send_timeout_s)
        except TimeoutError:
            self.server.errors["send_timeout"] += 1
            raise ClientGone(f"send queue full for {self.server.send_timeout_s:g} s (client not reading)") from None

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
                try:
                    self.command(verb, args)
                except (ValueError, IndexError, OverflowError, TypeError) as exc:
                    # a handler bug or an input no parser anticipated: answer, never crash the session
                    log.warning("client %s: %r failed: %s", self.peer, cmd[:MAX_LINE], exc)
                    self.server.errors["bad_command"] += 1
                    self.writer.write(b"ERROR\r\n")
                if self.streaming.is_set() and sender is None:
                    sender = asyncio.create_task(self.send_loop())
                await self.drain()
        except ClientGone as exc:
            log.info("client %s disconnected: %s", self.peer, exc)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed = True
            if sender is not None:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            self.writer.close()

    def command(self, verb: str, args: list[str]) -> None:
        """Act on one command line; replies go to the send queue."""
        if verb == "INFO":
            self.send_info(args[0].upper() if args else "ID")
        elif self.streaming.is_set():
            return  # only INFO and BYE mean something while streaming
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
            if self.cmd_action(verb, args) and not self.multi:
                self.start_streaming()
        elif verb == "END":
            self.start_streaming()
        else:
            self.server.errors["bad_command"] += 1
            self.writer.write(b"ERROR\r\n")

    def cmd_station(self, args: list[str]) -> None:
        if not args or len(self.requests) >= MAX_REQUESTS:
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
            selectors = [Selector.parse(a) for a in args]
            if len(req.selectors) + len(selectors) > MAX_REQUESTS:
                raise ValueError("too many selectors")
            req.selectors.extend(selectors)
        except ValueError:
            self.reply(False)
            return
        self.reply(True)

    def cmd_action(self, verb: str, args: list[str]) -> bool:
        """DATA/FETCH/TIME; True when accepted. A malformed one gets ``ERROR`` in both modes:
        in uni-station mode (no OK on success) it then does not start streaming."""
        req = self._current()
        if req is None:
            self.reply(False)
            return False
        try:
            if verb == "TIME":
                req.begin_ns = parse_time(args[0])
                req.end_ns = parse_time(args[1]) if len(args) > 1 else None
                req.realtime = False
            elif args:
                req.seq = int(args[0], 16)
                if not 0 <= req.seq <= 0xFFFFFF:
                    raise ValueError("sequence number outside 24 bits")
                req.begin_ns = parse_time(args[1]) if len(args) > 1 else None
                req.realtime = False
        except (ValueError, IndexError, OverflowError):
            self.reply(False)
            return False
        self.dialup = self.dialup or verb == "FETCH"
        if self.multi:
            self.reply(True)
        return True

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
        try:
            await self._send_loop()
        except ClientGone as exc:
            log.info("client %s disconnected: %s", self.peer, exc)
            self.writer.transport.abort()  # ends run(), which is waiting for the next command

    async def _send_loop(self) -> None:
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
                await self.drain()
            if self.cursor < ring.end:
                continue
            await self.drain()
            self.caught_up = True
            if self.dialup:
                write(b"END")
                await self.drain()
                self.writer.close()
                return
            await ring.wait(0.5)


class ReplayServer:
    """Serve ``archive`` on ``host:port``; ``speed`` 0 = everything at once, 1 = real time.

    ``max_clients``, ``max_queue_bytes``, ``send_timeout_s`` and ``handshake_timeout_s``
    bound what clients can make the server hold (module docstring). Defaults suit a test
    or demo network of a few rtpick instances and SeisComP/ObsPy clients: 100 clients of
    at most 1 MiB queued each is at most ~100 MiB; 120 s without reading is SeisComP's
    ``netto`` default, longer than any healthy client stalls.
    """

    session_class = Session  # subclass hook (rtpick.seedlink_server.faults: slow sending)

    def __init__(self, archive: Archive, host: str = "127.0.0.1", port: int = 18000, speed: float = 0.0,
                 shift_to_now: bool = False, loop: bool = False, max_packets: int = 1_000_000,
                 origin_ns: int | None = None, max_clients: int = 100, max_queue_bytes: int = 1 << 20,
                 send_timeout_s: float = 120.0, handshake_timeout_s: float = 60.0):
        if loop and speed <= 0:
            raise ValueError("loop needs speed > 0")
        if max_clients < 1 or max_queue_bytes < 1 or send_timeout_s <= 0 or handshake_timeout_s <= 0:
            raise ValueError("max_clients, max_queue_bytes and the timeouts must be positive")
        self.max_clients, self.max_queue_bytes = max_clients, max_queue_bytes
        self.send_timeout_s, self.handshake_timeout_s = send_timeout_s, handshake_timeout_s
        self.archive = archive
        self.host, self.port = host, port
        self.speed, self.shift_to_now, self.loop_archive = speed, shift_to_now, loop
        self.max_packets = max_packets
        self.stations = archive.stations
        self.started_ns = time.time_ns()
        # wall time at which the archive's first sample is "recorded"; servers restarted with the
        # same origin release the same packets at the same moments (as a persistent ring would)
        self.origin_ns = origin_ns if origin_ns is not None else self.started_ns
        self.sessions: list[Session] = []  # open sessions only: a closed one is removed at once
        self.packets_sent = 0
        self.clients_rejected = 0  # connections refused at the client limit
        # sessions ended or commands refused, by cause (line_too_long, send_timeout, bad_command)
        self.errors: Counter[str] = Counter()
        self._reject_logged = -REJECT_LOG_INTERVAL_S
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
        if len(self.sessions) >= self.max_clients:
            self._reject(writer)
            return
        session = self.session_class(self, reader, writer)
        self.sessions.append(session)
        self._tasks.add(asyncio.current_task())
        log.info("client %s connected", session.peer)
        try:
            await session.run()
        finally:
            log.info("client %s gone after %d packets", session.peer, session.sent)
            self.sessions.remove(session)
            self._tasks.discard(asyncio.current_task())

    def _reject(self, writer: asyncio.StreamWriter) -> None:
        """Answer a connection beyond ``max_clients`` with ``ERROR`` and close it (counted; logged
        at most once per :data:`REJECT_LOG_INTERVAL_S`)."""
        self.clients_rejected += 1
        now = time.monotonic()
        if now - self._reject_logged >= REJECT_LOG_INTERVAL_S:
            self._reject_logged = now
            log.warning("client limit (%d) reached: refused %s (%d refused so far)",
                        self.max_clients, writer.get_extra_info("peername"), self.clients_rejected)
        writer.write(b"ERROR\r\n")
        writer.close()

    async def close(self) -> None:
        """Stop listening and drop every client at once (as a killed server would)."""
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
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

    server_class = ReplayServer  # subclass hook (rtpick.seedlink_server.faults)

    def __init__(self, archive: Archive, **kwargs):
        self.server = self.server_class(archive, **kwargs)
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
