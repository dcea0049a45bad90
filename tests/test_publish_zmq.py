"""ZeroMQ publisher: real PUB/SUB sockets on free ports, drops, CURVE, start-up errors, `rtpick listen`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq
import zmq.auth
from prometheus_client import CollectorRegistry

from rtpick.config import ConfigError, parse_config
from rtpick.publish.messages import pick_message, validate_message
from rtpick.publish.zmq import Publisher, PublishError
from rtpick.types import iso_to_ns

from tests.procs import drive_until_exit
from tests.test_publish_messages import make_event, make_pick

REPO = Path(__file__).resolve().parents[1]
_OPEN: list[zmq.Socket] = []  # subscriber sockets of the running test, closed by the context fixture


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    while _OPEN:
        _OPEN.pop().close(linger=0)
    ctx.term()


@pytest.fixture
def publisher():
    registry = CollectorRegistry()
    pub = Publisher("tcp://127.0.0.1:*", sndhwm=100, linger_s=0, registry=registry).start()
    pub.registry = registry
    yield pub
    pub.close()


def subscribe(context, endpoint, *prefixes, rcvhwm=1000, **opts):
    sock = context.socket(zmq.SUB)
    _OPEN.append(sock)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    for key, value in opts.items():
        setattr(sock, key, value)
    for prefix in prefixes:
        sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    sock.connect(endpoint)
    return sock


def wait_joined(pub, *socks, topic=b"status", timeout=5.0):
    """Publish probes until every subscriber got one (ZeroMQ's slow joiner), then drain them all."""
    deadline = time.monotonic() + timeout
    pending = set(socks)
    while pending and time.monotonic() < deadline:
        pub._socket.send_multipart([topic, b'{"probe":1}'])
        time.sleep(0.02)
        pending = {s for s in pending if not s.poll(0)}
    assert not pending, "subscriber never joined"
    time.sleep(0.1)
    for sock in socks:
        while sock.poll(50):
            sock.recv_multipart()


def receive(sock, n, timeout=5.0):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        if sock.poll(100):
            topic, payload = sock.recv_multipart()
            out.append((topic.decode(), json.loads(payload)))
    return out


def test_picks_and_events_arrive_on_prefix_topics(context, publisher):
    everything = subscribe(context, publisher.endpoint, "")
    sio_only = subscribe(context, publisher.endpoint, "pick.OK.SIO", "status")
    wait_joined(publisher, everything, sio_only)
    picks = [make_pick("OK.SIO..HHZ"), make_pick("OK.FNO.01.HHZ", "S", 2.0), make_pick("OK.SIO..HHZ", "S", 4.0)]
    before_ns = time.time_ns() - 1000  # published times are rounded to the microsecond
    for pick in picks:
        assert publisher.publish_pick(pick)
    publisher.publish_event(make_event())
    got = receive(everything, 4)
    assert [t for t, _ in got] == ["pick.OK.SIO", "pick.OK.FNO", "pick.OK.SIO", "event"]
    for (_, doc), pick in zip(got, picks):
        validate_message(doc)
        published = iso_to_ns(doc["published"])  # the wall clock of the send itself
        assert before_ns <= published <= time.time_ns()
        assert {k: v for k, v in doc.items() if k != "seq"} == pick_message(pick, published_ns=published)
    validate_message(got[3][1])
    assert [d["seq"] for t, d in got if t == "pick.OK.SIO"] == [1, 2]  # per-topic sequence
    assert [d["stream_id"] for _, d in receive(sio_only, 2)] == ["OK.SIO..HHZ", "OK.SIO..HHZ"]
    assert publisher.published == {"pick": 3, "event": 1, "status": 0}
    assert publisher.registry.get_sample_value("rtpick_messages_published_total", {"kind": "pick"}) == 3
    assert publisher.registry.get_sample_value("rtpick_messages_dropped_total", {"kind": "pick"}) == 0


def test_a_subscriber_that_never_reads_costs_only_itself(context):
    """Sends never block; the stalled subscriber's losses are counted; a reading subscriber gets everything."""
    registry = CollectorRegistry()
    publisher = Publisher("tcp://127.0.0.1:*", sndhwm=1000, linger_s=0, registry=registry).start()
    stalled = subscribe(context, publisher.endpoint, "", rcvhwm=10, rcvbuf=4096)
    wait_joined(publisher, stalled)
    received = []
    stop = threading.Event()
    ready = threading.Event()

    def reader():
        sock = subscribe(context, publisher.endpoint, "status", rcvhwm=100000)
        ready.set()
        while not stop.is_set() or sock.poll(300):
            if sock.poll(50):
                received.append(sock.recv_multipart())

    thread = threading.Thread(target=reader)
    thread.start()
    ready.wait(5)
    time.sleep(0.5)  # subscription propagates
    message = make_status_doc()
    message["pad"] = "x" * 2000  # fills the stalled subscriber's TCP buffers sooner
    n = 3000
    start = time.perf_counter()
    delivered = 0
    try:
        for i in range(n):
            delivered += publisher.publish(message)
            if i % 20 == 0:
                time.sleep(0.001)  # a steady stream, not one burst: the reader keeps up
        elapsed = time.perf_counter() - start
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(10)
        publisher.close()
    dropped = registry.get_sample_value("rtpick_messages_dropped_total", {"kind": "status"})
    assert dropped >= 1 and publisher.dropped["status"] == dropped == n - delivered
    seqs = [json.loads(payload)["seq"] for _, payload in received]
    assert seqs == list(range(1, n + 1)), "the reading subscriber lost messages to the stalled one"
    assert elapsed < 10, f"publishing {n} messages took {elapsed:.1f} s: sends must not block"


def test_close_with_a_stalled_subscriber_is_bounded(context):
    pub = Publisher("tcp://127.0.0.1:*", sndhwm=5, linger_s=0.2, registry=CollectorRegistry()).start()
    stalled = subscribe(context, pub.endpoint, "", rcvhwm=5, rcvbuf=2048)
    wait_joined(pub, stalled)
    for _ in range(500):
        pub.publish_pick(make_pick())
    start = time.monotonic()
    pub.close()
    assert time.monotonic() - start < 3
    stalled.close(linger=0)


def test_port_in_use_names_the_key(publisher):
    clash = Publisher(publisher.endpoint, registry=CollectorRegistry())
    with pytest.raises(PublishError, match=r"publish\.endpoint.*already in use"):
        clash.start()


@pytest.mark.parametrize("endpoint", ["tcp://no-such-interface-xyz:5555", "tcp://127.0.0.1:notaport", "tcp://127.0.0.1:99999"])
def test_invalid_endpoint_names_the_key(endpoint):
    with pytest.raises(PublishError, match=r"^publish\.endpoint: .*(cannot bind|not a number)"):
        Publisher(endpoint, registry=CollectorRegistry()).start()


def test_config_rejects_a_malformed_endpoint():
    with pytest.raises(ConfigError, match=r"key 'publish\.endpoint'"):
        parse_config({"publish": {"endpoint": "localhost:5555"}})
    assert parse_config({"publish": {"endpoint": ""}}).publish.endpoint == ""


def test_missing_curve_key_file_names_the_key(tmp_path):
    pub = Publisher("tcp://127.0.0.1:*", curve_secret_key_file=str(tmp_path / "server.key_secret"), registry=CollectorRegistry())
    with pytest.raises(PublishError, match=r"publish\.curve_secret_key_file: no such file"):
        pub.start()
    public, _ = zmq.auth.create_certificates(str(tmp_path), "server")
    pub = Publisher("tcp://127.0.0.1:*", curve_secret_key_file=public, registry=CollectorRegistry())
    with pytest.raises(PublishError, match=r"publish\.curve_secret_key_file: .*no secret key"):
        pub.start()


def test_curve_encrypts_and_authenticates(context, tmp_path):
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    keys.mkdir()
    allowed.mkdir()
    server_public, server_secret = zmq.auth.create_certificates(str(keys), "server")
    client_public, client_secret = zmq.auth.create_certificates(str(keys), "client")
    _, stranger_secret = zmq.auth.create_certificates(str(keys), "stranger")
    os.link(client_public, allowed / "client.key")
    pub = Publisher("tcp://127.0.0.1:*", curve_secret_key_file=server_secret, curve_authorized_keys_dir=str(allowed),
                    linger_s=0, registry=CollectorRegistry()).start()
    try:
        server_key, _ = zmq.auth.load_certificate(server_public)

        def curve_sub(secret_file):
            pk, sk = zmq.auth.load_certificate(secret_file)
            return subscribe(context, pub.endpoint, "", curve_serverkey=server_key, curve_publickey=pk, curve_secretkey=sk)

        plain = subscribe(context, pub.endpoint, "")
        stranger = curve_sub(stranger_secret)
        client = curve_sub(client_secret)
        wait_joined(pub, client)
        pub.publish_pick(make_pick())
        assert receive(client, 1)[0][0] == "pick.OK.SIO"
        assert not plain.poll(300) and not stranger.poll(300)
    finally:
        pub.close()


def test_rtpick_listen_prints_json_lines(publisher, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtpick", "listen", publisher.endpoint, "--topic", "pick.", "--count", "2", "--timeout", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    # publish until the subscriber has joined; it exits after two picks
    out, err = drive_until_exit(proc, lambda: (publisher.publish_pick(make_pick()), publisher.publish(make_status_doc())))
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2 and all(doc["schema"] == "rtpick.pick/1" for doc in lines)
    for doc in lines:
        validate_message(doc)


def test_rtpick_listen_times_out_and_reports_bad_keys(tmp_path):
    from rtpick.cli import main

    assert main(["listen", "tcp://127.0.0.1:1", "--timeout", "0.3"]) == 1
    assert main(["listen", "tcp://127.0.0.1:1", "--curve-server-key", str(tmp_path / "missing.key")]) == 2


def make_status_doc():
    from tests.test_publish_messages import make_status

    return make_status()


def test_rtpick_listen_over_curve(tmp_path):
    server_public, server_secret = zmq.auth.create_certificates(str(tmp_path), "server")
    pub = Publisher("tcp://127.0.0.1:*", curve_secret_key_file=server_secret, linger_s=0, registry=CollectorRegistry()).start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtpick", "listen", pub.endpoint, "--curve-server-key", server_public, "--count", "1", "--timeout", "20",
         "--with-topic"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        out, err = drive_until_exit(proc, lambda: pub.publish_pick(make_pick()))
    finally:
        pub.close()
    assert proc.returncode == 0, err
    topic, payload = out.strip().split("\t")
    assert topic == "pick.OK.SIO" and json.loads(payload)["schema"] == "rtpick.pick/1"
