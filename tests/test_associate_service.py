"""``rtpick associate`` as a service: station coverage, duplicate picks from two pickers over real
ZeroMQ, SIGTERM drain with final revisions, SIGHUP reload, sd_notify, metrics, the systemd unit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from rtpick.associate import SwarmAssociator, load_stations
from rtpick.associate.intake import CHECK_AFTER, PickIntake
from rtpick.associate.stations import distance_km
from rtpick.publish.messages import pick_message, validate_message
from rtpick.types import NS_PER_S, Pick
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000 * NS_PER_S


@pytest.fixture(scope="module")
def demo(oklahoma_dir):
    return load_stations(oklahoma_dir / "stations.csv")


def _picks(stations, table, lat=35.45, lon=-97.1, depth=5.0, origin_ns=T0):
    d = distance_km(lat, lon, stations.latitude, stations.longitude)
    out = []
    for i in np.flatnonzero(d < 400.0):
        for ph in (0, 1):
            t = origin_ns + int(table(ph, d[i], depth, stations.elevation_m[i]) * NS_PER_S)
            out.append(Pick(f"{stations.keys[i]}..HHZ", "PS"[ph], t, 0.8, 0.05, t, t, "test"))
    return sorted(out, key=lambda p: p.time_ns)


def _renamed(picks):
    """The same picks from stations the station file does not have (XX.SIO -> XX.QSIO)."""
    out = []
    for p in picks:
        _, sta, loc, cha = p.stream_id.split(".")
        out.append(Pick(f"XX.Q{sta}.{loc}.{cha}", p.phase, p.time_ns, p.probability, p.uncertainty_s,
                        p.trigger_on_ns, p.trigger_off_ns, p.model_id))
    return out


# -- intake (no processes) --------------------------------------------------------------------


def test_intake_drops_duplicate_pick_ids_with_bounded_memory(demo, table):
    intake = PickIntake(SwarmAssociator(demo, table), capacity=5)
    picks = _picks(demo, table)[:8]
    for pick in picks + picks[-3:]:  # the last three again: still remembered
        intake.feed(pick_message(pick))
    assert intake.counters["picks_duplicate"] == 3 and intake.counters["picks_accepted"] == 8
    intake.feed(pick_message(picks[0]))  # forgotten (capacity 5): taken again, memory stays bounded
    assert intake.counters["picks_accepted"] == 9 and len(intake._seen) == 5


def test_intake_flags_a_station_file_that_does_not_cover_the_picks(demo, table, caplog):
    intake = PickIntake(SwarmAssociator(demo, table))
    foreign = _renamed(_picks(demo, table) * 5)[: CHECK_AFTER + 10]
    for i, pick in enumerate(foreign):
        pick.time_ns += i  # distinct ids
        intake.feed(pick_message(pick))
    assert intake.coverage_failed()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, "logged once, not per pick"
    assert "XX." in errors[0].getMessage() and "station file" in errors[0].getMessage()


# -- the command ------------------------------------------------------------------------------


def test_input_mode_with_a_station_file_that_misses_the_picks_exits_3_naming_them(tmp_path, demo, table):
    path = tmp_path / "picks.jsonl"
    path.write_text("".join(json.dumps(pick_message(p)) + "\n" for p in _renamed(_picks(demo, table))))
    out = subprocess.run([sys.executable, "-m", "rtpick", "associate", "--input", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr
    assert "ERROR" in out.stderr and "XX.QSIO" in out.stderr and "missing in the station file" in out.stderr
    assert out.stdout == ""


class _Service:
    """``rtpick associate`` subprocess with a NOTIFY_SOCKET we read, and the pickers' XPUB sockets."""

    def __init__(self, tmp_path, n_pickers=2, config_text=""):
        import zmq

        self.ctx = zmq.Context()
        self.pubs = []
        endpoints = []
        for _ in range(n_pickers):
            pub = self.ctx.socket(zmq.XPUB)  # XPUB: we see the subscription arrive
            pub.setsockopt(zmq.LINGER, 0)
            port = free_port()
            pub.bind(f"tcp://127.0.0.1:{port}")
            self.pubs.append(pub)
            endpoints += ["--subscribe", f"tcp://127.0.0.1:{port}"]
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path = str(tmp_path / "notify.sock")
        self.notify.bind(notify_path)
        self.config = tmp_path / "config.toml"
        self.config.write_text(config_text)
        self.metrics_port = free_port()
        env = dict(os.environ, NOTIFY_SOCKET=notify_path)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rtpick", "associate", *endpoints, "--config", str(self.config),
             "--metrics", f"127.0.0.1:{self.metrics_port}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for pub in self.pubs:
            assert pub.poll(60_000), "the associator never subscribed"
            assert pub.recv() == b"\x01pick."

    def notifications(self, until: str, timeout_s=30.0) -> list[str]:
        """sd_notify datagrams up to and including the first that contains ``until``."""
        out = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.notify.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                out.append(self.notify.recv(4096).decode())
            except socket.timeout:
                break
            if until in out[-1]:
                return out
        raise AssertionError(f"no {until!r} notification; got {out}")

    def send(self, pub, picks):
        for pick in picks:
            net, sta = pick.stream_id.split(".")[:2]
            pub.send_multipart([f"pick.{net}.{sta}".encode(), json.dumps(pick_message(pick)).encode()])

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise AssertionError(f"metric {name} not exported")

    def wait_metric(self, name: str, value: float, timeout_s=30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.metric(name) >= value:
                return
            time.sleep(0.1)
        raise AssertionError(f"{name} never reached {value} (is {self.metric(name)})")

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        return self.proc.communicate(timeout=60)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        for pub in self.pubs:
            pub.close()
        self.ctx.term()
        self.notify.close()


def test_duplicate_picks_from_two_pickers_make_one_event_and_sigterm_publishes_its_final_revision(tmp_path, demo, table):
    picks = _picks(demo, table)
    svc = _Service(tmp_path)
    try:
        assert svc.notifications("READY=1")[-1].startswith("READY=1")
        svc.send(svc.pubs[0], picks)
        svc.send(svc.pubs[1], picks)  # the fail-over twin publishes the very same picks
        svc.wait_metric("rtpick_associate_picks_duplicate_total", len(picks))
        assert svc.metric("rtpick_associate_picks_in_total") == len(picks)
        out, err = svc.stop(signal.SIGTERM)  # events are not final before the horizon: only the drain makes them so
        assert "STOPPING=1" in svc.notifications("STOPPING=1")[-1]
    finally:
        svc.close()
    assert svc.proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert events, err
    assert len({e["event_id"] for e in events}) == 1
    last = events[-1]
    assert last["final"] and not any(e["final"] for e in events[:-1])
    ids = [p["pick_id"] for p in last["picks"]]
    assert len(ids) == len(set(ids)) and last["n_p"] >= 5
    assert distance_km(last["latitude"], last["longitude"], 35.45, -97.1) < 2.0
    assert "error_ellipse" in last and "azimuthal_gap_deg" in last
    for doc in events:
        validate_message(doc)
    assert f"picks_duplicate={len(picks)}" in err


def test_sighup_applies_live_settings_and_names_those_that_need_a_restart(tmp_path, demo, table):
    svc = _Service(tmp_path, n_pickers=1, config_text="[associate]\nmin_picks = 8\n")
    try:
        svc.notifications("READY=1")
        svc.config.write_text("[associate]\nmin_picks = 40\ntolerance_s = 0.5\n")
        svc.proc.send_signal(signal.SIGHUP)
        notes = svc.notifications("READY=1")
        assert any(n.startswith("RELOADING=1") for n in notes)
        svc.send(svc.pubs[0], _picks(demo, table))  # ~20 picks: below the new minimum of 40
        svc.wait_metric("rtpick_associate_picks_in_total", 1)
        svc.config.write_text("[associate]\nmin_picks = 1\n")  # a bad file keeps the running settings
        svc.proc.send_signal(signal.SIGHUP)
        svc.notifications("READY=1")
        out, err = svc.stop(signal.SIGTERM)
    finally:
        svc.close()
    assert svc.proc.returncode == 0, err
    assert out == "", "min_picks = 40 was applied live: no event from ~20 picks"
    assert "need a restart to change: tolerance_s" in err
    assert "reload rejected" in err and "min_picks" in err, err  # the rejected file is reported


def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (scripts/install-test-services.sh installs it)")
    exe = shutil.which("rtpick", path=str(REPO / ".venv" / "bin")) or str(Path(sys.executable).with_name("rtpick"))
    text = (REPO / "systemd" / "rtpick-associate.service").read_text()
    assert "/opt/rtpick/venv/bin/rtpick associate" in text
    unit = tmp_path / "rtpick-associate.service"
    unit.write_text(text.replace("/opt/rtpick/venv/bin/rtpick", exe))
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and output == "", output
    for needed in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID",
                   "RestartPreventExitStatus=2 3", "User=rtpick", "ProtectSystem=strict", "NoNewPrivileges=yes"):
        assert needed in text
