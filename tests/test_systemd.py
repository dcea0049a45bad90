"""systemd: sd_notify over a real NOTIFY_SOCKET, unit files verified by systemd-analyze."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from rtpick.service.systemd import Notifier, SystemdHook, reload_config, watchdog_interval

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def read_all(sock, wait=0.2):
    out = []
    sock.settimeout(wait)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except (socket.timeout, BlockingIOError):
        pass
    return out


def test_notifier_sends_datagrams(notify_socket):
    path, sock = notify_socket
    notifier = Notifier(path)
    assert notifier.ready("running")
    assert notifier.watchdog()
    assert notifier.status("12 records")
    assert notifier.stopping()
    notifier.close()
    got = read_all(sock)
    assert got[0].splitlines()[:2] == ["READY=1", f"MAINPID={os.getpid()}"] and "STATUS=running" in got[0]
    assert got[1:] == ["WATCHDOG=1", "STATUS=12 records", "STOPPING=1"]


def test_notifier_abstract_namespace_and_disabled():
    name = f"rtpick-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        notifier = Notifier("@" + name)
        assert notifier.watchdog()
        notifier.close()
        assert read_all(sock) == ["WATCHDOG=1"]
    finally:
        sock.close()
    quiet = Notifier("")
    assert not quiet.enabled and not quiet.ready()


def test_watchdog_interval_is_half_of_watchdog_sec(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 15
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval() is None


class FakeDaemon:
    """Just what SystemdHook uses: stats, config, stopping and call_in_pipeline (run on demand)."""

    def __init__(self, config):
        self.config = config
        self.stats = SimpleNamespace(records_fed=0, picks_published=0)
        self.stopping = False
        self.calls = []

    def call_in_pipeline(self, fn):
        self.calls.append(fn)

    def run_calls(self, pipeline):
        calls, self.calls = self.calls, []
        for fn in calls:
            fn(pipeline)


def fake_pipeline(config):
    picker = lambda thr: SimpleNamespace(threshold=thr)  # noqa: E731
    station = SimpleNamespace(pickers={0: picker(0.3), 1: picker(0.3)})
    return SimpleNamespace(labels=["P", "S", "N"], thresholds={"P": 0.3, "S": 0.3}, stations={"OK.SIO..HH?": station}, config=config)


def test_hook_ready_waits_for_ingest_and_watchdog_needs_pipeline_progress(notify_socket, monkeypatch):
    from rtpick.config import Config

    path, sock = notify_socket
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # ping at most every 0.05 s
    ingest = SimpleNamespace(stats=SimpleNamespace(state="connecting"))
    hook = SystemdHook(config_path=None, ingest=ingest, notifier=Notifier(path))
    daemon = FakeDaemon(Config())
    pipeline = fake_pipeline(daemon.config)
    hook.on_ready(daemon)
    hook.on_tick(daemon)
    assert not hook.ready_sent  # SeedLink not connected yet
    ingest.stats.state = "streaming"
    hook.on_tick(daemon)
    assert hook.ready_sent
    time.sleep(0.06)
    hook.on_tick(daemon)
    assert hook.pings == 0  # the pipeline thread has not run the beat: no progress, no ping
    daemon.run_calls(pipeline)
    time.sleep(0.06)
    hook.on_tick(daemon)
    assert hook.pings == 1
    time.sleep(0.06)
    hook.on_tick(daemon)
    assert hook.pings == 1  # stalled again
    hook.on_stopping(daemon)
    hook.notifier.close()
    messages = read_all(sock)
    assert any(m.startswith("READY=1") for m in messages)
    assert messages.count("WATCHDOG=1") == 1
    assert messages[-1].startswith("STOPPING=1")
    assert messages.index(next(m for m in messages if m.startswith("READY=1"))) < messages.index("WATCHDOG=1")


def test_sighup_reload_applies_thresholds_or_keeps_a_bad_config(tmp_path, notify_socket):
    """Thresholds are re-resolved per lane (hot swap in tests/test_hot_swap.py); an invalid file changes nothing."""
    from rtpick.config import load_config
    from rtpick.pipeline import Pipeline

    path, sock = notify_socket
    cfg_path = tmp_path / "config.toml"
    cfg_path.write_text("[picking]\nthresholds = { P = 0.3, S = 0.3 }\n")
    config = load_config(cfg_path)
    pipeline = Pipeline(config)
    daemon = FakeDaemon(config)
    daemon.pipeline = pipeline
    hook = SystemdHook(config_path=str(cfg_path), notifier=Notifier(path))
    cfg_path.write_text("[picking]\nthresholds = { P = 0.7, S = 0.5 }\n")
    hook.on_reload(daemon)
    daemon.run_calls(pipeline)
    lane = pipeline.lanes["default"]
    assert lane.thresholds == {"P": 0.7, "S": 0.5}
    cfg_path.write_text("[picking]\nthresholds = { P = 7 }\n")  # invalid: kept out
    hook.on_reload(daemon)
    daemon.run_calls(pipeline)
    assert lane.thresholds == {"P": 0.7, "S": 0.5}
    hook.notifier.close()
    messages = read_all(sock)
    assert messages[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
    assert messages[1].startswith("READY=1") and "reloaded" in messages[1] and "'P': 0.7" in messages[1]
    assert "reload rejected" in messages[3]
    assert reload_config(str(tmp_path / "missing.toml"), config) is config


def unit_copies(tmp_path):
    """The unit files with ExecStart pointing at this venv's rtpick (verify checks the binary exists)."""
    exe = shutil.which("rtpick", path=str(REPO / ".venv" / "bin")) or str(Path(os.sys.executable).with_name("rtpick"))
    out = []
    for name, target in (("rtpick.service", "rtpick.service"), ("rtpick@.service", "rtpick@shard1.service")):
        text = (REPO / "systemd" / name).read_text()
        assert "/opt/rtpick/venv/bin/rtpick" in text
        dest = tmp_path / target
        dest.write_text(text.replace("/opt/rtpick/venv/bin/rtpick", exe))
        out.append(dest)
    return out


def test_unit_files_pass_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (scripts/install-test-services.sh installs it)")
    units = unit_copies(tmp_path)
    proc = subprocess.run([analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=60)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and output == "", output  # unknown keys only warn: any output is a failure
    for unit in units:
        text = unit.read_text()
        for needed in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=rtpick", "StateDirectory=",
                       "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes", "ExecReload=/bin/kill -HUP $MAINPID"):
            assert needed in text, f"{unit.name} lacks {needed}"


def _unit_bytes(value: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(value[:-1]) * units[value[-1]] if value[-1] in units else int(value)


@pytest.mark.parametrize("name", ["rtpick.service", "rtpick@.service"])
def test_units_bound_memory_and_outwait_the_drain(name):
    """MemoryHigh below MemoryMax, both above the measured need of a 500-station network (873 MiB);
    TimeoutStopSec longer than the daemon's drain + pipeline join + ZeroMQ linger."""
    import inspect

    from rtpick.config import Config
    from rtpick.service.daemon import Daemon

    text = (REPO / "systemd" / name).read_text()
    keys = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    high, high_max = _unit_bytes(keys["MemoryHigh"]), _unit_bytes(keys["MemoryMax"])
    assert 873 << 20 < high < high_max
    drain = inspect.signature(Daemon.__init__).parameters["drain_timeout_s"].default
    assert int(keys["TimeoutStopSec"]) > drain + 10 + Config().publish.linger_s
