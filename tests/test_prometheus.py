"""A real Prometheus scrapes the real daemon (`rtpick run`) during a SeedLink replay.

Every PromQL expression of the shipped Grafana dashboard must return data from
that Prometheus, and the rtpick series must hold sane values.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from rtpick.types import iso_to_ns
from tests.conftest import OKLAHOMA, free_port

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "rtpick.json"
SPEED = 15  # the 6-minute archive in 24 s


def dashboard_expressions() -> list[tuple[str, str]]:
    doc = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in doc["panels"] for target in panel["targets"]]


def grafana_to_promql(expr: str) -> str:
    """Substitute the Grafana variables the dashboard uses (all instances; 1 s scrapes)."""
    return expr.replace("$__rate_interval", "10s").replace("$instance", ".+")


def test_dashboard_is_well_formed():
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in doc["panels"])
    for needed in ("throughput", "latency", "station health", "picks", "dropped", "inference"):
        assert needed in titles, needed
    for _, expr in dashboard_expressions():
        assert "$" not in grafana_to_promql(expr), expr  # only variables we know how to substitute
    providers = (REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "rtpick.yml").read_text()
    assert "uid: rtpick-prometheus" in providers
    assert all(p["datasource"]["uid"] == "rtpick-prometheus" for p in doc["panels"])


def test_shipped_prometheus_config_is_valid():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool missing: run scripts/install-test-services.sh (Debian package 'prometheus')")
    proc = subprocess.run([promtool, "check", "config", str(REPO / "deploy" / "prometheus.yml")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def http_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for(check, timeout: float, what: str, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"{what}: {proc.args[:4]} exited with {proc.returncode}")
        try:
            value = check()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def metric_sum(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


def stop(proc: subprocess.Popen, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.mark.slow
def test_prometheus_scrapes_the_daemon_and_every_dashboard_query_has_data(tmp_path):
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail("prometheus missing: run scripts/install-test-services.sh (Debian package 'prometheus')")
    metrics_port, prom_port, pub_port = free_port(), free_port(), free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs: list[subprocess.Popen] = []
    logs = {name: open(tmp_path / f"{name}.log", "w+") for name in ("server", "daemon", "prometheus")}
    try:
        server = subprocess.Popen([sys.executable, "-m", "rtpick", "serve-seedlink", str(OKLAHOMA), "--port", "0", "--speed", str(SPEED),
                                   "--log-level", "WARNING"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=logs["server"], text=True)
        procs.append(server)
        line = server.stdout.readline()
        seedlink = re.search(r"listening on (\S+)", line).group(1)

        prom_config = (REPO / "deploy" / "prometheus.yml").read_text()
        prom_config = prom_config.replace("scrape_interval: 5s", "scrape_interval: 1s").replace("127.0.0.1:9733", f"127.0.0.1:{metrics_port}")
        (tmp_path / "prometheus.yml").write_text(prom_config)
        prom = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                                cwd=tmp_path, stdout=logs["prometheus"], stderr=subprocess.STDOUT)
        procs.append(prom)
        api = f"http://127.0.0.1:{prom_port}"

        config = tmp_path / "config.toml"
        config.write_text(f"""[inference]
threads = 1
[seedlink]
server = "{seedlink}"
state_file = "{tmp_path / 'seedlink.state'}"
begin_time = "2013-06-16T15:37:00Z"   # the whole archive, however long the daemon took to start
[publish]
endpoint = "tcp://127.0.0.1:{pub_port}"
status_interval_s = 1.0
[metrics]
listen = "127.0.0.1:{metrics_port}"
""")
        started = time.time()
        daemon = subprocess.Popen([sys.executable, "-m", "rtpick", "run", "--config", str(config)], cwd=tmp_path, env=env,
                                  stdout=subprocess.DEVNULL, stderr=logs["daemon"])
        procs.append(daemon)
        wait_for(lambda: urllib.request.urlopen(f"{api}/-/ready", timeout=2).status == 200, 60, "prometheus ready", [prom])

        archive_end = iso_to_ns("2013-06-16T15:43:49") / 1e9  # the bundled files end at 15:43:50

        def archive_consumed():
            """The daemon has data up to the archive's end, and picks were published."""
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).read().decode()
            lags = [float(v) for v in re.findall(r"^rtpick_station_data_lag_seconds{[^}]*} (\S+)$", text, re.M)]
            newest = time.time() - min(lags) if lags else 0.0
            return newest >= archive_end and metric_sum(text, "rtpick_picks_total") >= 1

        wait_for(archive_consumed, 150, "the replay to be consumed", procs)
        time.sleep(3)  # a few more scrapes
        end = time.time()

        def query(expr: str) -> list:
            url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": end})
            body = http_json(url)
            assert body["status"] == "success", body
            return body["data"]["result"]

        up = query('up{job="rtpick"}')
        assert [float(s["value"][1]) for s in up] == [1.0]
        stations = {s["metric"]["station"]: float(s["value"][1]) for s in query("rtpick_records_total")}
        assert set(stations) == {"OK.FNO", "OK.LC30", "OK.OKCFA", "OK.SIO", "OK.U32A", "OK.W35A", "OK.X34A"}
        assert all(v > 10 for v in stations.values())
        assert float(query("rtpick_stations")[0]["value"][1]) == 7
        assert float(query('sum(rtpick_picks_total{phase="P"})')[0]["value"][1]) >= 7  # P at all 7 stations
        assert float(query("rtpick_windows_total")[0]["value"][1]) > 50
        assert float(query("rtpick_ingest_connects_total")[0]["value"][1]) >= 1
        latency = float(query("rtpick_pick_latency_seconds_sum / rtpick_pick_latency_seconds_count")[0]["value"][1])
        assert 0 <= latency < 120, latency
        model = query("rtpick_model_info")[0]["metric"]
        assert model["model"] == "seisbench:PhaseNet/original" and re.fullmatch(r"[0-9a-f]{64}", model["sha256"])
        assert float(query('sum(rtpick_messages_published_total{kind="pick"})')[0]["value"][1]) >= 14
        assert float(query('rtpick_messages_dropped_total{kind="pick"}')[0]["value"][1]) == 0

        empty = []
        for title, expr in dashboard_expressions():
            promql = grafana_to_promql(expr)
            url = f"{api}/api/v1/query_range?" + urllib.parse.urlencode({"query": promql, "start": started, "end": end, "step": 1})
            body = http_json(url)
            assert body["status"] == "success", (title, promql, body)
            values = [float(v) for series in body["data"]["result"] for _, v in series["values"]]
            if not any(math.isfinite(v) for v in values):
                empty.append(f"{title}: {promql}")
        assert not empty, "dashboard expressions without data:\n" + "\n".join(empty)
        assert stop(daemon) == 0
    finally:
        for proc in reversed(procs):
            stop(proc)
            if proc.stdout is not None:
                proc.stdout.close()
        for name, fh in logs.items():
            fh.seek(0)
            tail = fh.read()[-2000:]
            fh.close()
            if tail.strip():
                print(f"--- {name} log tail ---\n{tail}")
