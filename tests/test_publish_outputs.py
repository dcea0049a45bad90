"""Outputs (what the daemon drives): picks, events, status heartbeat, metrics endpoint, start-up errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import zmq

from rtpick.config import Config
from rtpick.publish.messages import validate_message
from rtpick.publish.metrics import MetricsError
from rtpick.publish.outputs import Outputs
from rtpick.publish.zmq import Publisher
from tests.procs import drive_until_exit
from tests.test_publish_messages import make_event, make_pick, make_status
from tests.test_publish_zmq import receive, subscribe, wait_joined

REPO = Path(__file__).resolve().parents[1]


def make_config(endpoint="tcp://127.0.0.1:*", listen="127.0.0.1:0") -> Config:
    config = Config()
    config.publish.endpoint = endpoint
    config.publish.status_interval_s = 0.2
    config.publish.linger_s = 0.5
    config.metrics.listen = listen
    return config


def test_outputs_publish_and_serve_metrics():
    outputs = Outputs(make_config(), instance="north").start()
    context = zmq.Context()
    sub = subscribe(context, outputs.publisher.endpoint, "")
    try:
        wait_joined(outputs.publisher, sub)
        outputs.set_ready()
        outputs.publish_picks([make_pick(), make_pick("OK.FNO.01.HHZ", "S", 3.0)])
        outputs.publish_event(make_event(final=True))
        assert outputs.tick() and not outputs.tick()  # one heartbeat per status_interval_s
        time.sleep(0.25)
        assert outputs.tick()
        got = receive(sub, 5)
        assert [t for t, _ in got] == ["pick.OK.SIO", "pick.OK.FNO", "event", "status", "status"]
        for _, doc in got:
            validate_message(doc)
        status = got[3][1]
        assert (status["state"], status["instance"], status["picks_published"], status["events_published"]) == ("running", "north", 2, 1)
        assert status["lag_s"] is None and status["stations_total"] == 0  # no pipeline attached
        assert status["subscribers"] == 1
        text = urllib.request.urlopen(f"http://{outputs.metrics_address}/metrics", timeout=5).read().decode()
        assert 'rtpick_messages_published_total{kind="pick"} 2.0' in text
        assert 'rtpick_events_total{final="true"} 1.0' in text and "rtpick_ready 1.0" in text
        outputs.close()
        last = receive(sub, 1)[0][1]
        assert last["schema"] == "rtpick.status/1" and last["state"] == "stopping"
    finally:
        outputs.close()
        sub.close(linger=0)
        context.term()


def test_disabled_outputs_do_nothing():
    outputs = Outputs(make_config(endpoint="", listen="")).start()
    outputs.publish_picks([make_pick()])
    assert outputs.publisher is None and outputs.metrics_address is None and not outputs.tick()
    validate_message(outputs.status())
    outputs.close()


def test_a_failed_start_releases_what_it_bound():
    blocker = Outputs(make_config(endpoint="")).start()
    taken = blocker.metrics_address
    try:
        outputs = Outputs(make_config(listen=taken))
        with pytest.raises(MetricsError, match=r"^metrics\.listen"):
            outputs.start()
        endpoint = outputs.publisher.endpoint  # was bound, must be free again
        Publisher(endpoint).start().close()
    finally:
        blocker.close()


def test_listen_reports_missed_messages():
    pub = Publisher("tcp://127.0.0.1:*", linger_s=0).start()
    proc = subprocess.Popen([sys.executable, "-m", "rtpick", "listen", pub.endpoint, "--topic", "status", "--count", "3", "--timeout", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    seq = [0]

    def send_every_third() -> None:  # the subscriber sees 2 missing before each
        seq[0] += 3
        pub._socket.send_multipart([b"status", json.dumps(dict(make_status(), seq=seq[0])).encode()])

    try:
        out, err = drive_until_exit(proc, send_every_third)
    finally:
        pub.close()
    assert proc.returncode == 0, err
    assert len(out.splitlines()) == 3
    assert err.count("missed 2 message(s) on status") == 2


def test_associator_sink_publishes_events_before_outputs_close():
    from rtpick.publish.outputs import AssociatorSink

    class FakeAssociator:
        def __init__(self):
            self.picks = []

        def push(self, pick):
            self.picks.append(pick)

        def step(self):
            return [make_event(revision=0)] if len(self.picks) == 2 else []

        def flush(self):
            return [make_event(revision=1, final=True)]

    outputs = Outputs(make_config(listen="")).start()
    context = zmq.Context()
    sub = subscribe(context, outputs.publisher.endpoint, "event")
    try:
        wait_joined(outputs.publisher, sub, topic=b"event")
        sinks = [AssociatorSink(FakeAssociator(), outputs), outputs]
        for pick in (make_pick(), make_pick("OK.FNO.01.HHZ")):
            for sink in sinks:
                sink.publish_picks([pick])
        for sink in sinks:  # the daemon closes sinks in order
            sink.close()
        events = [doc for _, doc in receive(sub, 2)]
        assert [(e["revision"], e["final"]) for e in events] == [(0, False), (1, True)]
        assert outputs.events_published == 2
    finally:
        outputs.close()
        sub.close(linger=0)
        context.term()
