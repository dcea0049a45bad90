"""The daemon under a real NOTIFY_SOCKET, publishing over ZeroMQ during a replay.

One process (the daemon with a paced replay ingest, Outputs and SystemdHook,
signal handling as in production) is driven through READY, WATCHDOG, a SIGHUP
that lowers the pick thresholds and a SIGTERM that drains; a real SUB socket
must receive every pick the daemon produced, each valid against its schema.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from rtpick.publish.messages import validate_message
from tests.conftest import OKLAHOMA, free_port

REPO = Path(__file__).resolve().parents[1]

# The production wiring (rtpick run) with a replay instead of SeedLink.
DRIVER = r'''
import sys, threading
import torch
torch.set_num_threads(1)
from rtpick.config import load_config
from rtpick.ingest.replay import ReplayIngest
from rtpick.pipeline import Pipeline
from rtpick.publish.outputs import Outputs
from rtpick.service.daemon import Daemon, StdoutSink
from rtpick.service.systemd import SystemdHook

cfg_path, data_dir, speed, picks_out = sys.argv[1:5]
config = load_config(cfg_path)


class StoppableReplay:
    def __init__(self, replay):
        self.replay, self._stop = replay, threading.Event()

    def records(self):
        for record in self.replay.records():
            if self._stop.is_set():
                return
            yield record

    def stop(self):
        self._stop.set()


outputs = Outputs(config)
pipeline = Pipeline(config, observer=outputs.metrics)
outputs.start(pipeline)
ingest = StoppableReplay(ReplayIngest([data_dir], speed=float(speed)))
with open(picks_out, "w") as fh:
    daemon = Daemon(config, ingest, [outputs, StdoutSink(fh)], pipeline=pipeline,
                    hooks=[SystemdHook(outputs, cfg_path, ingest)], drain_timeout_s=20)
    code = daemon.run()
sys.exit(code)
'''


def write_config(path: Path, thresholds: float, endpoint: str, listen: str) -> None:
    path.write_text(
        f"""[inference]
threads = 1
[picking]
thresholds = {{ P = {thresholds}, S = {thresholds} }}
[publish]
endpoint = "{endpoint}"
status_interval_s = 1.0
[metrics]
listen = "{listen}"
"""
    )


class Notifications:
    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages: list[str] = []

    def wait_for(self, predicate, timeout: float, proc) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(0.2)
            try:
                message = self.sock.recv(4096).decode()
            except socket.timeout:
                if proc.poll() is not None:
                    raise AssertionError(f"daemon exited with {proc.returncode}: {proc.stderr.read()[-3000:]}") from None
                continue
            self.messages.append(message)
            if predicate(message):
                return message
        raise AssertionError(f"timed out; notifications so far: {self.messages}")

    def close(self):
        self.sock.close()


def start_daemon(tmp_path: Path, config: Path, notify: str, speed: float, watchdog_usec: int = 1_000_000):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = dict(os.environ, NOTIFY_SOCKET=notify, WATCHDOG_USEC=str(watchdog_usec), OMP_NUM_THREADS="1")
    env.pop("WATCHDOG_PID", None)
    return subprocess.Popen(
        [sys.executable, str(driver), str(config), str(OKLAHOMA), str(speed), str(tmp_path / "picks.jsonl")],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def drain_sub(sub, messages, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sub.poll(100):
            topic, payload = sub.recv_multipart()
            messages.append((topic.decode(), json.loads(payload)))


@pytest.mark.slow
def test_daemon_notifies_reloads_drains_and_publishes_every_pick(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "config.toml"
    write_config(config, 0.99, endpoint, f"127.0.0.1:{free_port()}")
    notify = Notifications(str(tmp_path / "notify.sock"))
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)  # before the daemon binds: no slow-joiner loss
    proc = start_daemon(tmp_path, config, str(tmp_path / "notify.sock"), speed=8)
    messages: list[tuple[str, dict]] = []
    try:
        notify.wait_for(lambda m: m.startswith("READY=1"), 120, proc)
        # lower the thresholds live: nothing reaches 0.99, so every pick proves the reload
        write_config(config, 0.3, endpoint, "127.0.0.1:1")  # other sections changed too: logged, not applied
        proc.send_signal(signal.SIGHUP)
        reloaded = notify.wait_for(lambda m: m.startswith("READY=1") and "reloaded" in m, 30, proc)
        assert "'P': 0.3" in reloaded
        notify.wait_for(lambda m: m == "WATCHDOG=1", 10, proc)
        deadline = time.monotonic() + 90
        while not any(t.startswith("pick.") for t, _ in messages) and time.monotonic() < deadline:
            drain_sub(sub, messages, 0.5)
            assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert any(t.startswith("pick.") for t, _ in messages), "no pick published"
        proc.send_signal(signal.SIGTERM)
        notify.wait_for(lambda m: m.startswith("STOPPING=1"), 10, proc)
        proc.wait(timeout=45)
        drain_sub(sub, messages, 1.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr = proc.stderr.read()
        proc.stderr.close()
        sub.close(linger=0)
        context.term()
        notify.close()
    assert proc.returncode == 0, stderr[-3000:]
    assert notify.messages.count("WATCHDOG=1") >= 1
    for _, doc in messages:
        validate_message(doc)
    produced = [json.loads(line) for line in (tmp_path / "picks.jsonl").read_text().splitlines()]
    published = [doc for topic, doc in messages if topic.startswith("pick.")]
    assert produced, "the replay produced no picks"
    assert sorted(d["pick_id"] for d in published) == sorted(d["pick_id"] for d in produced)
    assert all(d["probability"] >= 0.3 for d in published)
    assert any(d["probability"] < 0.99 for d in published), "picks below the old threshold prove the live reload"
    statuses = [doc for topic, doc in messages if topic == "status"]
    assert statuses and statuses[-1]["state"] in ("draining", "stopping")
    assert statuses[-1]["picks_published"] == len(produced)
    assert "reload: [metrics] changed" in stderr
