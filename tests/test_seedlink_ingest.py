"""SeedLink ingest: resume across server restarts, malformed traffic, state file, selectors, backoff."""

from __future__ import annotations

import json
import logging
import random
import re
import socket
import threading
import time
import zlib
from collections import defaultdict

import numpy as np
import obspy
import pytest

from rtpick.config import SeedLinkConfig
from rtpick.ingest.seedlink import SeedLinkIngest, StreamSelector, backoff_delay, parse_selectors
from rtpick.ingest.state import STATE_FORMAT, IngestState, load_state, save_state
from rtpick.seedlink_server.archive import Archive
from rtpick.seedlink_server.server import ServerThread
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def archive(oklahoma_dir):
    return Archive([oklahoma_dir])


def _cfg(port: int, **kw) -> SeedLinkConfig:
    base = dict(server=f"127.0.0.1:{port}", streams=["OK_*"], netto_s=2.0, reconnect_min_s=0.05, reconnect_max_s=0.3)
    base.update(kw)
    return SeedLinkConfig(**base)


class Consumer:
    """Runs an ingest in a thread and keeps what it yields."""

    def __init__(self, ingest: SeedLinkIngest):
        self.ingest = ingest
        self.items: list = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for record, pos in self.ingest.records_with_position():
                self.items.append((record, pos))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def wait_for(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.items) < n and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.05)

    def stop(self) -> None:
        self.ingest.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()
        assert self.error is None


def test_resume_across_five_server_restarts(archive, oklahoma_dir):
    """Server killed and restarted 5 times mid-replay: per channel 0 samples lost, 0 duplicated."""
    total = len(archive.packets())
    origin = time.time_ns()  # same clock origin = same ring after restart
    port = free_port()
    server = ServerThread(archive, port=port, speed=60, origin_ns=origin).start()
    consumer = Consumer(SeedLinkIngest(_cfg(port, begin_time="2013-06-16T15:37:00Z")))
    try:
        for i in range(5):
            consumer.wait_for(max(total * (i + 1) // 7, len(consumer.items) + 1), timeout=30)
            deadline = time.monotonic() + 10
            while consumer.ingest.stats.state != "streaming" and time.monotonic() < deadline:
                time.sleep(0.02)
            server.stop()
            time.sleep(0.2)
            server = ServerThread(archive, port=port, speed=60, origin_ns=origin).start()
        consumer.wait_for(total, timeout=60)
    finally:
        consumer.stop()
        server.stop()
    assert consumer.ingest.stats.connects >= 6
    got = defaultdict(list)
    for record, _ in consumer.items:
        got[record.stream_id].append(record)
    for path in sorted(oklahoma_dir.glob("*.msd")):
        st = obspy.read(str(path))
        st.sort(keys=["starttime"])
        want = np.concatenate([tr.data for tr in st]).astype(np.int32)
        recs = sorted(got[st[0].id], key=lambda r: r.start_ns)
        assert len({r.start_ns for r in recs}) == len(recs), f"{st[0].id}: duplicated records"
        have = np.concatenate([r.samples for r in recs]).astype(np.int32)
        assert have.size == want.size and zlib.crc32(have.tobytes()) == zlib.crc32(want.tobytes()), st[0].id


# ---------------------------------------------------------------------------- malformed traffic
class FakeServer:
    """Speaks just enough SeedLink v3 to get past negotiation, then runs ``scenario(conn, n, requested)``."""

    def __init__(self, scenario, answer: bool = True):
        self.scenario, self.answer = scenario, answer
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[str] = []
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self._conns.append(conn)
            self.connections += 1
            threading.Thread(target=self._session, args=(conn, self.connections), daemon=True).start()

    def _session(self, conn: socket.socket, n: int):
        conn.settimeout(5)
        buf = b""
        try:
            while True:
                while b"\r" not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                line, buf = buf.split(b"\r", 1)
                buf = buf.lstrip(b"\n")
                cmd = line.decode().strip()
                if not self.answer:
                    self._stop.wait(10)
                    return
                if cmd == "HELLO":
                    conn.sendall(b"SeedLink v3.1 (fake) :: SLPROTO:3.1\r\nfake\r\n")
                elif cmd == "END":
                    self.scenario(conn, n, self.requests)
                    return
                elif cmd.startswith(("STATION", "SELECT", "DATA", "TIME")):
                    self.requests.append(cmd)
                    conn.sendall(b"OK\r\n")
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self):
        self._stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture(scope="module")
def fno(archive):
    pkts = [p for p in archive.packets() if p.station == "OK_FNO" and p.cha == "HHZ"]
    other = next(p for p in archive.packets() if p.station == "OK_X34A")
    return pkts, other


def _packet(p, seq=None) -> bytes:
    return b"SL%06X" % (p.seq if seq is None else seq) + p.data


def _run_scenario(scenario, caplog, answer=True, want=2, timeout=15.0):
    server = FakeServer(scenario, answer=answer)
    ingest = SeedLinkIngest(_cfg(server.port, streams=["OK_FNO"], netto_s=1.0, begin_time="2013-06-16T15:37:00Z"))
    consumer = Consumer(ingest)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (len(consumer.items) < want or server.connections < 3):
            time.sleep(0.05)
    finally:
        consumer.stop()
        server.stop()
    return consumer, server


def _logged(caplog, cause: str) -> int:
    pattern = re.compile(rf" {cause}[: ]")
    return sum(1 for r in caplog.records if r.levelno >= logging.WARNING and pattern.search(r.getMessage()))


def _scenario_then_good(bad: callable):
    """Connection 1: packet 1 then something bad; later connections: resume correctly, then bad again."""

    def scenario(conn, n, requests):
        pkts, other = _FNO
        words = requests[-1].split()
        first = int(words[1], 16) if words[0] == "DATA" and len(words) > 1 else 1
        for p in pkts[:2]:
            if p.seq >= first:
                conn.sendall(_packet(p))  # the next good packet the client asked for
                break
        bad(conn, pkts, other)
        time.sleep(0.3)

    return scenario


_FNO = None


@pytest.fixture(autouse=True)
def _share_packets(fno):
    global _FNO
    _FNO = fno


@pytest.mark.parametrize(("name", "bad", "cause"), [
    ("truncated", lambda c, p, o: c.sendall(_packet(p[1])[:300]), "disconnected"),
    ("bad_sequence", lambda c, p, o: c.sendall(b"SLZZZZZZ" + p[1].data), "bad_header"),
    ("garbage", lambda c, p, o: c.sendall(b"HTTP/1.1 200 OK\r\n\r\n" + b"\0" * 600), "bad_header"),
])
def test_malformed_traffic_counted_logged_once_and_reconnects(caplog, name, bad, cause):
    caplog.set_level(logging.INFO, logger="rtpick.ingest.seedlink")
    consumer, server = _run_scenario(_scenario_then_good(bad), caplog)
    pkts, _ = _FNO
    starts = [r.start_ns for r, _ in consumer.items]
    assert starts == [pkts[0].start_ns, pkts[1].start_ns], name  # each good packet exactly once, in order
    assert server.connections >= 3  # reconnect logic goes on
    assert consumer.ingest.stats.errors.get(cause, 0) >= 2, consumer.ingest.stats.errors
    assert _logged(caplog, cause) == 1  # logged once per cause and station
    # resumed right after the last good sequence number (with its time as the server's fallback)
    assert any(re.match(rf"DATA 0*{pkts[0].seq + 1:X} ", r) for r in server.requests), server.requests


def test_unknown_station_is_counted_and_dropped(caplog, fno):
    caplog.set_level(logging.INFO, logger="rtpick.ingest.seedlink")
    pkts, other = fno

    def scenario(conn, n, requests):
        conn.sendall(_packet(other) + _packet(pkts[0]) + _packet(other))
        time.sleep(1.5)

    consumer, server = _run_scenario(scenario, caplog, want=1, timeout=3)
    assert [r.stream_id for r, _ in consumer.items] == ["OK.FNO.01.HHZ"]
    assert consumer.ingest.stats.errors["unexpected_station"] >= 2
    assert _logged(caplog, "unexpected_station") == 1
    assert any("[OK_X34A]" in r.getMessage() for r in caplog.records)


def test_server_that_never_answers(caplog):
    caplog.set_level(logging.INFO, logger="rtpick.ingest.seedlink")
    consumer, server = _run_scenario(lambda *a: None, caplog, answer=False, want=0, timeout=6)
    assert server.connections >= 2  # timed out and tried again
    assert consumer.ingest.stats.errors.get("timeout", 0) >= 1
    assert consumer.items == []


def test_connection_refused_backs_off(caplog):
    caplog.set_level(logging.INFO, logger="rtpick.ingest.seedlink")
    ingest = SeedLinkIngest(_cfg(free_port()))
    consumer = Consumer(ingest)
    time.sleep(1.0)
    consumer.stop()
    assert 2 <= ingest.stats.errors["connect_failed"] < 30
    assert _logged(caplog, "connect_failed") == 1
    assert any("backoff" in r.getMessage() for r in caplog.records)


def test_backoff_grows_with_jitter_and_caps():
    rng = random.Random(1)
    delays = [backoff_delay(i, 0.5, 30.0, rng) for i in range(12)]
    assert 0.25 <= delays[0] <= 0.75
    assert all(d <= 45.0 for d in delays) and delays[-1] >= 15.0
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered


def test_resume_from_state_and_dedupe(archive):
    """A state with sequence numbers resumes after them; records at or before the saved end are dropped."""
    pkts = [p for p in archive.packets() if p.station == "OK_SIO"]
    last = pkts[9]
    state = IngestState(stations={"OK_SIO": last.seq}, channels={last.stream_id: last.end_ns})
    with ServerThread(archive, port=0) as server:
        ingest = SeedLinkIngest(_cfg(server.port, streams=["OK_SIO"]), resume=state)
        consumer = Consumer(ingest)
        consumer.wait_for(len(pkts) - 10, timeout=20)
        consumer.stop()
    assert [pos[1] for _, pos in consumer.items] == [p.seq for p in pkts[10:]]


@pytest.mark.parametrize(("text", "station", "channels"), [
    ("OK_FNO", "OK_FNO", ()), ("OK_*:HH? BH?", "OK_*", ("HH?", "BH?")), ("ok_x34a:00HHZ", "OK_X34A", ("00HHZ",)),
])
def test_selector_parsing(text, station, channels):
    sel = StreamSelector.parse(text)
    assert (sel.station, sel.channels) == (station, channels)


def test_slinktool_style_list_and_bad_selector():
    assert [s.station for s in parse_selectors("OK_FNO:HHZ,OK_X3*:BH? EH?")] == ["OK_FNO", "OK_X3*"]
    with pytest.raises(ValueError):
        StreamSelector.parse("FNO")


def test_wildcards_expand_against_info_stations(archive):
    with ServerThread(archive, port=0) as server:
        ingest = SeedLinkIngest(_cfg(server.port, streams=["OK_?3*:HHZ"], begin_time="2013-06-16T15:37:00Z"))
        consumer = Consumer(ingest)
        consumer.wait_for(10, timeout=20)
        consumer.stop()
    assert {r.stream_id for r, _ in consumer.items} <= {"OK.X34A..HHZ", "OK.W35A..EHZ", "OK.U32A..HHZ"}
    assert {r.stream_id for r, _ in consumer.items} >= {"OK.X34A..HHZ"}


# ---------------------------------------------------------------------------- state file
def test_state_roundtrip_is_atomic(tmp_path):
    path = tmp_path / "sl.state"
    state = IngestState(stations={"OK_FNO": 12}, channels={"OK.FNO.01.HHZ": 5}, picks={"OK.FNO.01.HHZ|P": [7]})
    save_state(path, state)
    save_state(path, state)
    assert load_state(path) == state
    assert json.loads(path.read_text())["format"] == STATE_FORMAT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sl.state"]  # no temp files left behind


@pytest.mark.parametrize("content", ["{not json", '{"format": "other/9"}', '{"format": "%s", "stations": {"X": -1}}' % STATE_FORMAT])
def test_corrupt_state_is_moved_aside(tmp_path, caplog, content):
    path = tmp_path / "sl.state"
    path.write_text(content)
    with caplog.at_level(logging.ERROR, logger="rtpick.ingest.state"):
        state = load_state(path)
    assert state == IngestState()
    assert not path.exists() and (tmp_path / "sl.state.corrupt").read_text() == content
    assert len([r for r in caplog.records if "corrupt" in r.getMessage()]) == 1


def test_missing_state_is_empty(tmp_path):
    assert load_state(tmp_path / "none") == IngestState()


def test_warmup_refeeds_context_once_marked_uncommitted(archive):
    """After a restart, data up to warmup_s before the saved position comes again, marked seq -1."""
    pkts = [p for p in archive.packets() if p.station == "OK_SIO" and p.cha == "HHZ"]
    last = pkts[30]
    state = IngestState(stations={"OK_SIO": last.seq}, channels={last.stream_id: last.end_ns})
    with ServerThread(archive, port=0) as server:
        ingest = SeedLinkIngest(_cfg(server.port, streams=["OK_SIO:HHZ"]), resume=state, warmup_s=20)
        consumer = Consumer(ingest)
        consumer.wait_for(len(pkts) - 31 + 3, timeout=20)
        consumer.stop()
    warm = [r for r, (_, seq) in consumer.items if seq < 0]
    fresh = [pos[1] for _, pos in consumer.items if pos[1] >= 0]
    assert warm and all(r.end_ns <= last.end_ns for r in warm)
    assert warm[0].start_ns <= last.end_ns - 20 * 10**9 < warm[0].end_ns + 10**9  # from ~20 s before (whole seconds)
    assert fresh == [p.seq for p in pkts[31:]]  # then exactly the uncommitted packets
    assert ingest.stats.warmup == len(warm)


def test_server_without_info_gets_the_wildcard_as_is(caplog, fno):
    caplog.set_level(logging.INFO, logger="rtpick.ingest.seedlink")
    pkts, _ = fno

    def scenario(conn, n, requests):
        conn.sendall(_packet(pkts[0]))
        time.sleep(1.5)

    server = FakeServer(scenario)
    ingest = SeedLinkIngest(_cfg(server.port, streams=["OK_F*"], netto_s=1.0))
    consumer = Consumer(ingest)
    try:
        consumer.wait_for(1, timeout=10)
    finally:
        consumer.stop()
        server.stop()
    assert [r.stream_id for r, _ in consumer.items] == ["OK.FNO.01.HHZ"]
    assert "STATION F* OK" in server.requests
    assert _logged(caplog, "info_failed") == 1


# ---------------------------------------------------------------------------- bad records, poison packets
def _mseed(start_ns: int, rate: float, data: np.ndarray, sid: str = "FDSN:OK_FNO_01_H_H_Z") -> bytes:
    """One 512-byte miniSEED 2 record (INT32 or FLOAT32 by the samples' dtype)."""
    from pymseed import DataEncoding, MS3Record

    msr = MS3Record()
    msr.sourceid, msr.reclen, msr.formatversion, msr.starttime, msr.samprate = sid, 512, 2, start_ns, rate
    msr.encoding = DataEncoding.FLOAT32 if data.dtype.kind == "f" else DataEncoding.INT32
    (record,) = msr.generate(data_samples=data, sample_type="f" if data.dtype.kind == "f" else "i")
    return record


def _collect(scenario, streams: list[str], want: int, timeout: float = 15.0):
    """Ingest from a FakeServer until ``want`` records came (or the timeout); stopped either way."""
    server = FakeServer(scenario)
    ingest = SeedLinkIngest(_cfg(server.port, streams=streams, netto_s=1.0, begin_time="2013-06-16T15:37:00Z"))
    consumer = Consumer(ingest)
    try:
        consumer.wait_for(want, timeout)
        time.sleep(0.3)  # anything more that should not come
    finally:
        consumer.stop()
        server.stop()
    return consumer.ingest, consumer.items


_YEAR_2099_NS = 4_084_000_000 * 10**9


@pytest.mark.parametrize(("name", "make_bad", "cause"), [
    ("dated 2099", lambda p: _mseed(_YEAR_2099_NS, 100.0, np.arange(100, dtype=np.int32)), "future_time"),
    ("dated +1 day", lambda p: _mseed(p[2].start_ns + 86_400 * 10**9, 100.0, np.arange(100, dtype=np.int32)), "time_jump"),
    # 100 NaN samples at 1 Hz: ends 100 s later, after ~25 genuine records (moved the dedupe position before)
    ("NaN", lambda p: _mseed(p[2].start_ns, 1.0, np.full(100, np.nan, dtype=np.float32)), "non_finite"),
])
def test_bad_record_does_not_poison_the_channel(caplog, fno, name, make_bad, cause):
    """A bad record between genuine ones: rejected by cause, and every genuine record after it still comes."""
    caplog.set_level(logging.INFO, logger="rtpick")
    pkts, _ = fno
    genuine = pkts[:30]
    assert genuine[2].seq > genuine[1].seq + 1  # a free sequence number for the bad record

    def scenario(conn, n, requests):
        if n == 1:
            bad = b"SL%06X" % (genuine[1].seq + 1) + make_bad(genuine)
            conn.sendall(b"".join(_packet(p) for p in genuine[:2]) + bad + b"".join(_packet(p) for p in genuine[2:]))
        time.sleep(1.5)

    ingest, items = _collect(scenario, ["OK_FNO"], want=len(genuine))
    assert [r.start_ns for r, _ in items] == [p.start_ns for p in genuine], name
    assert ingest.guard.rejected == {cause: 1}
    assert ingest.chan_end["OK.FNO.01.HHZ"] == genuine[-1].end_ns  # what the state file would get
    assert ingest.stats.duplicates == 0


@pytest.mark.parametrize(("rate", "expect"), [(99.99, 100.0), (39.9999, 40.0), (0.0, None), (1e6, None)])
def test_odd_sampling_rates_are_snapped_or_rejected(fno, rate, expect):
    pkts, _ = fno
    genuine = pkts[:5]

    def scenario(conn, n, requests):
        if n == 1:
            odd = b"SL%06X" % (genuine[-1].seq + 1) + _mseed(genuine[-1].end_ns, rate, np.arange(100, dtype=np.int32))
            conn.sendall(b"".join(_packet(p) for p in genuine) + odd)
        time.sleep(1.5)

    ingest, items = _collect(scenario, ["OK_FNO"], want=len(genuine) + (expect is not None))
    assert [r.start_ns for r, _ in items[:5]] == [p.start_ns for p in genuine]
    if expect is None:
        assert len(items) == 5 and ingest.guard.rejected == {"bad_sampling_rate": 1}
    else:
        assert [r.sampling_rate for r, _ in items] == [100.0] * 5 + [expect] and ingest.guard.rejected == {}


def _wanted_seqs(requests: list[str]) -> dict[str, int]:
    """NET_STA -> first sequence number the client's latest request for it asks for (0: from a time)."""
    wanted, station = {}, None
    for cmd in requests:
        words = cmd.split()
        if words[0] == "STATION":
            station = f"{words[2]}_{words[1]}"
        elif words[0] == "DATA" and len(words) > 1:
            wanted[station] = int(words[1], 16)
        elif words[0] in ("DATA", "TIME"):
            wanted[station] = 0
    return wanted


def _doy_400(p) -> bytes:
    raw = bytearray(p.data)
    raw[22:24] = (400).to_bytes(2, "big")  # BTIME day of year (big-endian records)
    return bytes(raw)


def _bad_encoding(p) -> bytes:
    raw = bytearray(p.data)
    assert raw[48:50] == (1000).to_bytes(2, "big")  # blockette 1000 first: encoding at byte 52
    raw[52] = 99
    return bytes(raw)


@pytest.mark.parametrize(("name", "payload", "causes"), [
    ("not miniSEED", lambda p: b"x" * 512, {"not_miniseed"}),
    ("day of year 400", _doy_400, {"not_miniseed", "bad_record"}),
    ("unknown encoding", _bad_encoding, {"bad_record"}),
])
def test_poison_packet_resent_forever_is_skipped(caplog, archive, fno, name, payload, causes):
    """The server re-sends a bad packet at one sequence number whenever asked from before it: skipped once."""
    caplog.set_level(logging.INFO, logger="rtpick.ingest.seedlink")
    pkts, _ = fno
    x34 = [p for p in archive.packets() if p.station == "OK_X34A" and p.cha == "HHZ"][:8]
    fno8 = pkts[:8]
    poison_seq = fno8[3].seq + 1
    stream = sorted([(p.end_ns, "OK_FNO", p.seq, _packet(p)) for p in fno8] + [(p.end_ns, "OK_X34A", p.seq, _packet(p)) for p in x34]
                    + [(fno8[3].end_ns + 1, "OK_FNO", poison_seq, b"SL%06X" % poison_seq + payload(fno8[4]))])
    sent = []

    def scenario(conn, n, requests):
        wanted = _wanted_seqs(requests)
        for _, station, seq, data in stream:
            if seq >= wanted.get(station, 0):
                sent.append(seq if station == "OK_FNO" and seq == poison_seq else None)
                conn.sendall(data)
        time.sleep(1.5)

    ingest, items = _collect(scenario, ["OK_FNO", "OK_X34A"], want=len(fno8) + len(x34))
    got = defaultdict(list)
    for record, _ in items:
        got[record.stream_id].append(record.start_ns)
    assert got["OK.FNO.01.HHZ"] == [p.start_ns for p in fno8], name  # every station progresses, nothing twice
    assert got["OK.X34A..HHZ"] == [p.start_ns for p in x34]
    assert sent.count(poison_seq) == 1  # skipped, never asked for again
    assert sum(ingest.stats.errors.get(c, 0) for c in causes) == 1, ingest.stats.errors
    assert sum(_logged(caplog, c) for c in causes) == 1


def _lockstep(fno, poison: bytes) -> list[tuple[str, int, bytes]]:
    """OK_FNO and its renamed twin OK_TWIN numbered alike (1..8), as a server numbering per station
    does for stations of the same rate: a packet of OK_FNO at sequence 5 whose payload is ``poison``
    arrives while both stations expect 5 (OK_FNO's genuine records keep their data, numbered 1-4, 6-9)."""
    pkts, _ = fno
    twin = [p.data[:8] + b"TWIN " + p.data[13:] for p in pkts[:8]]
    stream = []
    for i in range(8):
        if i == 4:
            stream.append(("OK_FNO", 5, b"SL000005" + poison))
        stream.append(("OK_FNO", i + 1 + (i >= 4), _packet(pkts[i], seq=i + 1 + (i >= 4))))
        stream.append(("OK_TWIN", i + 1, b"SL%06X" % (i + 1) + twin[i]))
    return stream


def _serve_resuming(stream, sent: list, hold_s: float):
    """Scenario: what each station asked for (by sequence number) from ``stream``, then ``hold_s`` of silence."""
    def scenario(conn, n, requests):
        wanted = _wanted_seqs(requests)
        for station, seq, data in stream:
            if seq >= wanted.get(station, 0):
                sent.append((n, station, seq))
                conn.sendall(data)
        time.sleep(hold_s)

    return scenario


def test_non_miniseed_packet_of_an_ambiguous_station_is_skipped_in_stream(caplog, fno):
    """Two stations expect the sequence number of a non-miniSEED packet: the 512 bytes are skipped,
    the connection kept, and both stations get every genuine record (issue 14: one such packet used
    to stall every station, re-sent on every reconnect)."""
    caplog.set_level(logging.INFO, logger="rtpick.ingest.seedlink")
    sent: list = []
    stream = _lockstep(fno, b"not miniSEED, but framed as a SeedLink 3 record ".ljust(512, b"."))
    ingest, items = _collect(_serve_resuming(stream, sent, hold_s=4.0), ["OK_FNO", "OK_TWIN"], want=16)
    got = defaultdict(list)
    for record, (key, seq) in items:
        got[key].append(seq)
    assert got == {"OK_FNO": [1, 2, 3, 4, 6, 7, 8, 9], "OK_TWIN": list(range(1, 9))}
    assert {n for n, *_ in sent} == {1}  # one connection: nothing re-requested
    assert ingest.stats.errors == {"not_miniseed": 1}, ingest.stats.errors
    assert _logged(caplog, "not_miniseed") == 1


def test_framing_lost_at_an_ambiguous_packet_skips_it_for_every_candidate(caplog, fno):
    """A non-miniSEED payload longer than 512 bytes (the frame after it is lost) of an unknown station,
    re-sent on every reconnect: after POISON_RETRIES reconnects the stations expecting its number go
    past it (each loses at most that one packet), and streaming goes on."""
    from rtpick.ingest.seedlink import POISON_RETRIES

    caplog.set_level(logging.INFO, logger="rtpick.ingest.seedlink")
    sent: list = []
    stream = _lockstep(fno, b"x" * 600)
    ingest, items = _collect(_serve_resuming(stream, sent, hold_s=1.5), ["OK_FNO", "OK_TWIN"], want=15)
    got = defaultdict(list)
    for record, (key, seq) in items:
        got[key].append(seq)
    assert got == {"OK_FNO": [1, 2, 3, 4, 6, 7, 8, 9], "OK_TWIN": [1, 2, 3, 4, 6, 7, 8]}  # TWIN's 5 lost
    assert [n for n, station, seq in sent if seq == 5 and station == "OK_FNO"] == list(range(1, POISON_RETRIES + 1))
    errors = ingest.stats.errors
    assert errors["poison_skipped"] == 2 and errors["not_miniseed"] == errors["bad_header"] == POISON_RETRIES, errors
    assert _logged(caplog, "poison_skipped") == 2  # once per station


# ---------------------------------------------------------------------------- selectors against the server
@pytest.mark.parametrize(("text", "want"), [
    ("OK_KAY1 TA_TUL1", [("OK_KAY1", ()), ("TA_TUL1", ())]),
    ("OK_KAY1,TA_TUL1", [("OK_KAY1", ()), ("TA_TUL1", ())]),
    ("OK_FNO:HH? BH?,OK_*", [("OK_FNO", ("HH?", "BH?")), ("OK_*", ())]),
    (" OK_FNO:HH?  BH? OK_* ,, TA_TUL1:00HHZ ", [("OK_FNO", ("HH?", "BH?")), ("OK_*", ()), ("TA_TUL1", ("00HHZ",))]),
    (["OK_KAY1 TA_TUL1", "OK_FNO:HHZ EHZ"], [("OK_KAY1", ()), ("TA_TUL1", ()), ("OK_FNO", ("HHZ", "EHZ"))]),
])
def test_selectors_split_on_commas_and_whitespace(text, want):
    assert [(s.station, s.channels) for s in parse_selectors(text)] == want


@pytest.mark.parametrize("text", ["", "  , ", []])
def test_empty_selector_list_is_an_error(text):
    with pytest.raises(ValueError, match="--streams"):
        parse_selectors(text)


@pytest.mark.parametrize("text", ["HHZ OK_FNO", "OK_FNO HHZ", "FNO"])
def test_channel_list_without_its_station_is_an_error(text):
    with pytest.raises(ValueError, match="NET_STA"):
        parse_selectors(text)


def test_no_selector_matching_is_an_error_logged_and_retried(caplog, archive):
    caplog.set_level(logging.INFO, logger="rtpick.ingest.seedlink")
    with ServerThread(archive, port=0) as server:
        ingest = SeedLinkIngest(_cfg(server.port, streams=["XX_NONE", "YY_*"]))
        consumer = Consumer(ingest)
        deadline = time.monotonic() + 15
        while ingest.stats.connects < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert consumer.thread.is_alive()  # never gives up
        consumer.stop()
    assert ingest.stats.connects >= 3 and consumer.items == []
    assert ingest.stats.missing_stations == {"XX_NONE", "YY_*"}
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "XX_NONE YY_*" in errors[0] and f":{server.port}" in errors[0]


def test_one_missing_station_is_a_warning(caplog, archive):
    caplog.set_level(logging.INFO, logger="rtpick.ingest.seedlink")
    with ServerThread(archive, port=0) as server:
        ingest = SeedLinkIngest(_cfg(server.port, streams=["OK_FNO:HHZ", "XX_GONE"], begin_time="2013-06-16T15:37:00Z"))
        consumer = Consumer(ingest)
        consumer.wait_for(5, timeout=20)
        consumer.stop()
    assert len(consumer.items) >= 5 and ingest.stats.connects == 1
    assert ingest.stats.missing_stations == {"XX_GONE"}
    assert ingest.stats.errors["station_rejected"] == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("[XX_GONE]" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
