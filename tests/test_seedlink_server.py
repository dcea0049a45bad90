"""The replay SeedLink server against two independent clients (ObsPy and EarthScope seedlink-client)."""

from __future__ import annotations

import io
import socket
import time
import zlib
from collections import defaultdict

import numpy as np
import obspy
import pytest

from rtpick.seedlink_server.archive import Archive
from rtpick.seedlink_server.protocol import Selector, parse_time, selected
from rtpick.seedlink_server.server import ServerThread

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def archive(oklahoma_dir):
    return Archive([oklahoma_dir])


@pytest.fixture(scope="module")
def expected(oklahoma_dir):
    """Per channel: (sample count, CRC-32 of all samples in time order) straight from the files."""
    out = {}
    for path in sorted(oklahoma_dir.glob("*.msd")):
        st = obspy.read(str(path))
        st.sort(keys=["starttime"])
        data = np.concatenate([tr.data.astype(np.int32) for tr in st])
        out[st[0].id] = (data.size, zlib.crc32(data.tobytes()))
    return out


def _checksums(records: list[tuple[str, int, np.ndarray]]) -> dict[str, tuple[int, int]]:
    by_channel = defaultdict(list)
    for sid, start, data in records:
        by_channel[sid].append((start, data))
    out = {}
    for sid, items in by_channel.items():
        items.sort(key=lambda x: x[0])
        data = np.concatenate([d.astype(np.int32) for _, d in items])
        out[sid] = (data.size, zlib.crc32(data.tobytes()))
    return out


def test_packets_are_deterministic_and_complete(archive, expected):
    first, second = archive.packets(), Archive(archive.files).packets()
    assert [(p.station, p.seq, p.data) for p in first] == [(p.station, p.seq, p.data) for p in second]
    assert all(len(p.data) == 512 for p in first)
    for key in archive.stations:
        seqs = [p.seq for p in first if p.station == key]
        assert seqs == list(range(1, len(seqs) + 1))
    decoded = []
    for p in first:
        tr = obspy.read(io.BytesIO(p.data))[0]
        decoded.append((tr.id, tr.stats.starttime.ns, tr.data))
    assert _checksums(decoded) == expected


def _earthscope_receive(port: int, stations: list[str]) -> list:
    from seedlink_client import Protocol, SeedLink

    sl = SeedLink("127.0.0.1", port, timeout=10, protocol=Protocol.V3, dialup=True)
    for key in stations:
        sl.add_stream(key, None, seqnum=0)  # resume "after seq 0" = from the first packet; FETCH ends with END
    out = []
    sl.connect()
    try:
        for pkt in sl.collect(reconnect=False):
            rec = pkt.record()
            rec.unpack_data()
            sid = ".".join(_nslc(rec.sourceid))
            out.append((sid, int(rec.starttime), np.array(rec.np_datasamples)))
    finally:
        sl.close()
    return out


def _nslc(sourceid: str) -> tuple[str, str, str, str]:
    from pymseed import sourceid2nslc

    return sourceid2nslc(sourceid)


def _obspy_receive(port: int, archive: Archive, count: int) -> list:
    from obspy.clients.seedlink.client.seedlinkconnection import SeedLinkConnection
    from obspy.clients.seedlink.slpacket import SLPacket

    conn = SeedLinkConnection(timeout=10)  # ObsPy 1.5.1: timeout must not be None
    conn.set_sl_address(f"127.0.0.1:{port}")
    conn.netto = 5  # its socket timeout; default 120 s
    conn.netdly = 1
    for key in archive.stations:
        net, sta = key.split("_")
        conn.add_stream(net, sta, "HH? BH? EH?", -1, None)  # ObsPy needs at least one selector
    conn.set_begin_time(obspy.UTCDateTime(archive.start_ns / 1e9 - 60))
    out = []
    deadline = time.monotonic() + 60
    try:
        while len(out) < count and time.monotonic() < deadline:
            pkt = conn.collect()
            if pkt is None or pkt == SLPacket.SLTERMINATE:
                break
            if pkt == SLPacket.SLNOPACKET or pkt.get_type() == SLPacket.TYPE_SLINF:
                continue
            tr = pkt.get_trace()
            out.append((tr.id, tr.stats.starttime.ns, tr.data))
    finally:
        conn.close()
    return out


@pytest.mark.parametrize("client", ["obspy", "earthscope"])
def test_two_clients_receive_every_record_exactly_once(archive, expected, client):
    count = len(archive.packets())
    with ServerThread(archive, port=0) as server:
        if client == "obspy":
            records = _obspy_receive(server.port, archive, count)
        else:
            records = _earthscope_receive(server.port, archive.stations)
    assert len(records) == count
    assert len({(sid, start) for sid, start, _ in records}) == count  # nothing twice
    assert _checksums(records) == expected  # nothing lost, nothing altered


def test_concurrent_clients(archive):
    count = len(archive.packets())
    with ServerThread(archive, port=0) as server:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: len(_earthscope_receive(server.port, archive.stations)), range(4)))
    assert results == [count] * 4


class Raw:
    """A bare v3 session: send commands, read reply lines and 520-byte packets."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def line(self) -> str:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def cmd(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\r")
        return self.line()

    def packets(self, n: int) -> list[bytes]:
        while len(self.buf) < 520 * n:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            self.buf += chunk
        out = [self.buf[i * 520:(i + 1) * 520] for i in range(n)]
        self.buf = self.buf[520 * n:]
        return out

    def close(self) -> None:
        self.sock.close()


def test_protocol_commands_and_resume_after_restart(archive):
    pkts = [p for p in archive.packets() if p.station == "OK_X34A" and p.cha == "HHZ"]
    with ServerThread(archive, port=0) as server:
        port = server.port
        raw = Raw(port)
        raw.sock.sendall(b"HELLO\r\n")
        assert raw.line().startswith("SeedLink v3.1")
        raw.line()
        assert raw.cmd("STATION NOPE OK") == "ERROR"  # unknown station
        assert raw.cmd("STATION X34A OK") == "OK"
        assert raw.cmd("SELECT 12345678") == "ERROR"
        assert raw.cmd("SELECT HHZ") == "OK"
        assert raw.cmd(f"DATA {pkts[5].seq:06X}") == "OK"
        raw.sock.sendall(b"END\r")
        got = raw.packets(3)
        raw.close()
    assert [int(g[2:8], 16) for g in got] == [p.seq for p in pkts[5:8]]
    assert [g[8:] for g in got] == [p.data for p in pkts[5:8]]
    # a restarted server holds the same ring: the same sequence number gives the same packet
    with ServerThread(archive, port=port) as server:
        raw = Raw(port)
        assert raw.cmd("STATION X34A OK") == "OK"
        assert raw.cmd("SELECT HHZ") == "OK"
        assert raw.cmd(f"DATA {pkts[6].seq:06X}") == "OK"
        raw.sock.sendall(b"END\r")
        assert raw.packets(1)[0] == b"SL%06X" % pkts[6].seq + pkts[6].data
        raw.sock.sendall(b"BYE\r")
        raw.close()


def test_time_window_and_info(archive):
    from seedlink_client import Protocol, SeedLink

    with ServerThread(archive, port=0) as server:
        sl = SeedLink("127.0.0.1", server.port, timeout=10, protocol=Protocol.V3)
        sl.connect()
        try:
            ident = sl.info_dict("ID")
            assert "seedlink" in ident
            stations = sl.info_dict("STATIONS")["seedlink"]["station"]
            assert sorted(f"{s['network']}_{s['name']}" for s in stations) == archive.stations
            streams = sl.info_dict("STREAMS")["seedlink"]["station"]
            lc30 = next(s for s in streams if s["name"] == "LC30")
            assert sorted(s["seedname"] for s in lc30["stream"]) == ["HHE", "HHN", "HHZ"]
        finally:
            sl.close()
        raw = Raw(server.port)
        assert raw.cmd("STATION FNO OK") == "OK"
        assert raw.cmd("SELECT 01HHZ") == "OK"
        assert raw.cmd("TIME 2013,06,16,15,40,00 2013,06,16,15,40,10") == "OK"
        raw.sock.sendall(b"END\r")
        got = [obspy.read(io.BytesIO(p[8:]))[0] for p in raw.packets(2)]
        raw.close()
    assert all(tr.id == "OK.FNO.01.HHZ" for tr in got)
    assert got[0].stats.starttime <= obspy.UTCDateTime(2013, 6, 16, 15, 40) < got[0].stats.endtime + 0.01


def test_realtime_pacing_and_shift_to_now(archive):
    from seedlink_client import Protocol, SeedLink

    with ServerThread(archive, port=0, speed=60, shift_to_now=True) as server:
        sl = SeedLink("127.0.0.1", server.port, timeout=10, protocol=Protocol.V3)
        sl.add_stream("OK_FNO", "HHZ")  # plain DATA: only packets released from now on
        sl.connect()
        t0 = time.time()
        got = []
        for pkt in sl.collect(reconnect=False):
            got.append(pkt.record().starttime)
            if len(got) == 3:
                break
        sl.close()
    assert abs(got[0] / 1e9 - t0) < 120  # data times are "now", not 2013
    assert server.server.ring.end < len(archive.packets())  # paced: not everything released yet


@pytest.mark.parametrize(("text", "loc", "cha", "want"), [
    ("HH?", "", "HHZ", True), ("HH?", "00", "HHZ", True), ("BH?", "", "HHZ", False),
    ("00HHZ", "00", "HHZ", True), ("00HHZ", "", "HHZ", False), ("--HHZ", "", "HHZ", True),
    ("??Z", "", "EHZ", True), ("HHZ.D", "", "HHZ", True), ("HHZ.L", "", "HHZ", False),
])
def test_selectors(text, loc, cha, want):
    assert selected([Selector.parse(text)], loc, cha) is want


def test_negated_selector_and_times():
    sels = [Selector.parse("HH?"), Selector.parse("!HHE")]
    assert selected(sels, "", "HHZ") and not selected(sels, "", "HHE")
    assert parse_time("2013,06,16,15,40,00") == 1371397200 * 10**9
    with pytest.raises(ValueError):
        Selector.parse("TOOLONGX")


def test_loop_continues_sequence_numbers_and_shifts_time(archive):
    per_pass = len([p for p in archive.packets() if p.station == "OK_LC30"])
    with ServerThread(archive, port=0, speed=2000, loop=True) as server:
        deadline = time.monotonic() + 30
        while server.call(lambda: server.server.ring.last_seq.get("OK_LC30", 0)) < per_pass + 5:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        lc30 = server.call(lambda: [p for p in server.server.ring.packets if p.station == "OK_LC30"])
    seqs = [p.seq for p in lc30]
    assert seqs == list(range(1, len(seqs) + 1))
    first, second = lc30[0], lc30[per_pass]
    assert (second.start_ns - first.start_ns) == archive.span_s * 10**9
    assert second.data[20:] != first.data[20:]  # re-packed with the shifted time


def test_loop_needs_a_speed(archive):
    with pytest.raises(ValueError):
        ServerThread(archive, port=0, loop=True)


def test_serve_seedlink_command(oklahoma_dir):
    import os
    import signal
    import subprocess
    import sys

    from seedlink_client import Protocol, SeedLink

    from tests.conftest import REPO

    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "rtpick", "serve-seedlink", str(oklahoma_dir), "--port", "0",
                             "--speed", "100", "--shift-to-now", "--max-clients", "1", "--log-level", "WARNING"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line + proc.stderr.read()
        sl = SeedLink("127.0.0.1", int(line.rsplit(":", 1)[1]), timeout=10, protocol=Protocol.V3)
        sl.connect()
        assert sl.server_id.startswith("SeedLink v3.1")
        assert len(sl.info_dict("STATIONS")["seedlink"]["station"]) == 7
        with socket.create_connection(("127.0.0.1", int(line.rsplit(":", 1)[1])), timeout=10) as extra:
            assert _closed(extra) == b"ERROR\r\n"  # --max-clients 1
        sl.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    bad = subprocess.run([sys.executable, "-m", "rtpick", "serve-seedlink", str(oklahoma_dir), "--loop"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--loop needs" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "rtpick", "serve-seedlink", str(oklahoma_dir), "--max-clients", "0"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--max-clients" in bad.stderr


# -- bounded resources: what a broken or hostile client can make the server hold --------------

def _until(server: ServerThread, fn, tries: int = 200) -> bool:
    """Poll ``fn(replay_server)`` on the server's loop until true (bounded)."""
    for _ in range(tries):
        if server.call(lambda: fn(server.server)):
            return True
        time.sleep(0.05)
    return False


def _closed(sock: socket.socket) -> bytes:
    """Everything the server still sends before it closes the connection."""
    out = b""
    for _ in range(1000):
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        out += chunk
    return out


def test_client_limit_refuses_with_error_and_frees_slots(archive):
    with ServerThread(archive, port=0, max_clients=2) as server:
        first, second = Raw(server.port), Raw(server.port)
        for raw in (first, second):
            assert raw.cmd("HELLO").startswith("SeedLink v3.1")
            raw.line()
        extra = Raw(server.port)
        assert _closed(extra.sock) == b"ERROR\r\n"
        extra.close()
        assert server.call(lambda: server.server.clients_rejected) == 1
        first.sock.sendall(b"BYE\r")
        first.close()
        assert _until(server, lambda s: len(s.sessions) == 1)
        third = Raw(server.port)
        assert third.cmd("STATION X34A OK") == "OK"
        for raw in (second, third):
            raw.close()


def test_closed_sessions_are_pruned(archive):
    with ServerThread(archive, port=0) as server:
        for i in range(60):
            raw = Raw(server.port)
            assert raw.cmd("STATION X34A OK") == "OK"
            if i % 2:
                raw.sock.sendall(b"BYE\r")
            raw.close()
        assert _until(server, lambda s: not s.sessions and not s._tasks)


def test_overlong_line_gets_error_and_close(archive):
    with ServerThread(archive, port=0) as server:
        raw = Raw(server.port)
        assert raw.cmd("S" * 255) == "ERROR"  # the longest allowed line: an unknown command, session lives
        try:
            raw.sock.sendall(b"X" * (20 << 20))  # 20 MB without a newline
        except OSError:
            pass  # the server closed while we were still sending
        assert _closed(raw.sock).endswith(b"ERROR\r\n")
        raw.close()
        assert server.call(lambda: server.server.errors["line_too_long"]) == 1
        assert _until(server, lambda s: not s.sessions)


@pytest.mark.parametrize("command", [
    "TIME 2013,1e400,16,00,00,00", "TIME 2013,06,16,15,40,1e400", "TIME 2013,06,16,15,40,nan", "TIME",
    "TIME 99999999999,1,1", "TIME 2013-99-99T00:00:00", "DATA zz", "DATA -1", "DATA 1000000", "FETCH 5 garbage",
])
def test_every_parse_error_is_answered_error(archive, command):
    with ServerThread(archive, port=0) as server:
        multi = Raw(server.port)
        assert multi.cmd("STATION X34A OK") == "OK"
        assert multi.cmd(command) == "ERROR"
        assert multi.cmd(command.lower()) == "ERROR"
        assert multi.cmd("DATA") == "OK"  # the session goes on
        multi.close()
        uni = Raw(server.port)  # uni-station: a good DATA is not answered, a bad one is
        assert uni.cmd(command) == "ERROR"
        assert uni.cmd("HELLO").startswith("SeedLink")  # not streaming: commands still answered
        uni.close()


def test_silent_client_times_out_before_streaming(archive):
    with ServerThread(archive, port=0, handshake_timeout_s=0.2) as server:
        raw = Raw(server.port)
        raw.sock.sendall(b"STATION X34A OK\r")
        assert raw.line() == "OK"
        assert _closed(raw.sock) == b""  # then silent: closed
        raw.close()
        assert _until(server, lambda s: not s.sessions)
        trickle = Raw(server.port)  # a byte now and then is not a command
        for _ in range(20):
            try:
                trickle.sock.sendall(b"H")
            except OSError:
                break
            time.sleep(0.05)
        assert _closed(trickle.sock) == b""
        trickle.close()
        assert _until(server, lambda s: not s.sessions)
        # streaming outlives the handshake timeout: a client that reads is never cut off
        reader = Raw(server.port)
        reader.sock.sendall(b"STATION X34A OK\rSELECT HHZ\rTIME 2013,06,16,00,00,00\rEND\r")
        assert reader.line() == "OK" and reader.line() == "OK" and reader.line() == "OK"
        time.sleep(0.5)  # longer than the handshake timeout
        assert len(reader.packets(20)) == 20
        reader.close()


def test_client_that_does_not_read_is_disconnected(archive):
    # looping at 10,000x: more data than any kernel socket buffer holds
    with ServerThread(archive, port=0, loop=True, speed=1e4, max_packets=20_000, max_queue_bytes=4096,
                      send_timeout_s=0.2) as server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"TIME 2013,06,16,00,00,00\r")  # uni-station: the whole archive, never read
        assert _until(server, lambda s: s.errors["send_timeout"] == 1 and not s.sessions)
        sock.close()
