"""Prometheus metrics: observer protocol, scrape-time collector, HTTP endpoint, errors."""

from __future__ import annotations

import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from rtpick.config import ConfigError, parse_config
from rtpick.publish.metrics import MAX_CAUSES, REJECT_CAUSES, Metrics, MetricsError, PipelineCollector, start_http_server

from tests.test_publish_messages import make_pick


def test_observer_protocol_updates_bounded_series():
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    value = registry.get_sample_value
    for _ in range(3):
        metrics.on_record("OK.SIO..HHZ", 400, 1.5)
    metrics.on_record("OK.SIO..HHN", 400, 0.2)
    metrics.on_gap("OK.SIO..HHZ")
    metrics.on_overlap("OK.FNO.01.HHE")
    metrics.on_batch(16, 0.2)
    metrics.on_batch(3, 0.05)
    metrics.on_pick(make_pick(), 12.0)
    metrics.on_pick(make_pick(phase="S", region="oklahoma"), 25.0)
    metrics.set_model("seisbench:PhaseNet/original", "1", "ab" * 32)
    assert value("rtpick_records_total", {"station": "OK.SIO"}) == 4  # channels fold into NET.STA
    assert value("rtpick_samples_total", {"station": "OK.SIO"}) == 1600
    assert value("rtpick_gaps_total", {"station": "OK.SIO"}) == 1
    assert value("rtpick_overlaps_total", {"station": "OK.FNO"}) == 1
    assert value("rtpick_windows_total") == 19
    assert value("rtpick_batch_size_count") == 2 and value("rtpick_batch_size_sum") == 19
    assert value("rtpick_inference_seconds_sum") == pytest.approx(0.25)
    assert value("rtpick_picks_total", {"phase": "P", "region": "default"}) == 1
    assert value("rtpick_picks_total", {"phase": "S", "region": "oklahoma"}) == 1
    assert value("rtpick_picks_total", {"phase": "S", "region": "default"}) == 0  # pre-declared: rate() has data
    assert value("rtpick_pick_latency_seconds_bucket", {"le": "15.0"}) == 1
    assert value("rtpick_data_latency_seconds_count") == 4
    assert value("rtpick_model_info", {"region": "default", "model": "seisbench:PhaseNet/original", "version": "1", "sha256": "ab" * 32}) == 1
    build = [s for f in registry.collect() if f.name == "rtpick_build_info" for s in f.samples]
    assert len(build) == 1 and build[0].value == 1 and build[0].labels["version"]


def test_rejection_causes_are_capped():
    registry = CollectorRegistry()
    metrics = Metrics(registry, process=False)
    for i in range(MAX_CAUSES + 5):
        metrics.on_rejected("XX.BAD..HHZ", f"cause{i}")
        metrics.on_rejected("XX.BAD..HHZ", f"cause{i}")
    causes = {s.labels["cause"] for f in registry.collect() if f.name == "rtpick_records_rejected" for s in f.samples if s.name.endswith("_total")}
    assert len(causes) == MAX_CAUSES + 1 and "other" in causes
    assert registry.get_sample_value("rtpick_records_rejected_total", {"cause": "non_finite"}) == 0  # pre-declared
    n_new = MAX_CAUSES - len(REJECT_CAUSES)
    assert registry.get_sample_value("rtpick_records_rejected_total", {"cause": "other"}) == 2 * (MAX_CAUSES + 5 - n_new)


def fake_pipeline(now: float):
    def station(key, last_arrival, last_data_ns, filled_to, floor):
        buf = SimpleNamespace(filled_to=filled_to, capacity=1000, floor=floor)
        return SimpleNamespace(key=key, buffer=buf, last_arrival=last_arrival, last_data_ns=last_data_ns)

    stations = {
        "OK.SIO..HH?": station("OK.SIO..HH?", now - 2, int((now - 5) * 1e9), [5000, 5000, None], 4800),
        "OK.U32A..BH?": station("OK.U32A..BH?", now - 300, int((now - 400) * 1e9), [2000, 2000, 2000], 1500),
        "OK.U32A..HH?": station("OK.U32A..HH?", now - 30, int((now - 40) * 1e9), [9000, 9000, 9000], 8900),
        "OK.NEW..HH?": station("OK.NEW..HH?", 0.0, 0, [None, None, None], 0),
    }
    return SimpleNamespace(stations=stations, queued=3, stats=SimpleNamespace(windows_dropped=2, windows_failed=1, time_jumps=4, station_errors=0))


def test_collector_reads_pipeline_state_at_scrape_time():
    now = 1_700_000_000.0
    registry = CollectorRegistry()
    registry.register(PipelineCollector(fake_pipeline(now), live_after_s=60, clock=lambda: now))
    value = registry.get_sample_value
    assert value("rtpick_station_last_data_age_seconds", {"station": "OK.SIO"}) == pytest.approx(2)
    assert value("rtpick_station_last_data_age_seconds", {"station": "OK.U32A"}) == pytest.approx(30)  # newest family
    assert value("rtpick_station_data_lag_seconds", {"station": "OK.U32A"}) == pytest.approx(40)
    assert value("rtpick_buffer_fill_ratio", {"station": "OK.SIO"}) == pytest.approx(0.2)
    assert value("rtpick_buffer_fill_ratio", {"station": "OK.U32A"}) == pytest.approx(0.5)  # fullest family
    assert value("rtpick_buffer_fill_ratio", {"station": "OK.NEW"}) == 0
    assert value("rtpick_stations") == 3
    assert value("rtpick_stations_live") == 2
    assert value("rtpick_windows_queued") == 3
    assert value("rtpick_windows_dropped_total") == 2
    assert value("rtpick_windows_failed_total") == 1
    assert value("rtpick_station_time_jumps_total") == 4
    assert value("rtpick_station_errors_total") == 0


def test_http_endpoint_serves_the_registry():
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.on_record("OK.SIO..HHZ", 100, 0.5)
    server, thread = start_http_server("127.0.0.1:0", registry)
    try:
        port = server.server_address[1]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["rtpick_records"].samples[0].value == 1
        assert "process_cpu_seconds" in families and "rtpick_build_info" in families
        for name in families:  # conventions: every rtpick metric is namespaced
            assert name.startswith(("rtpick_", "process_")), name
        with pytest.raises(MetricsError, match=r"^metrics\.listen: cannot serve metrics on '127\.0\.0\.1:\d+': .*in use"):
            start_http_server(f"127.0.0.1:{port}", CollectorRegistry())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_bad_listen_address_names_the_key():
    with pytest.raises(MetricsError, match=r"^metrics\.listen"):
        start_http_server("no-such-host.invalid:9733", CollectorRegistry())
    with pytest.raises(ConfigError, match=r"key 'metrics\.listen'"):
        parse_config({"metrics": {"listen": "9733"}})


def test_ingest_collector():
    from rtpick.publish.metrics import IngestCollector

    stats = SimpleNamespace(connects=3, packets=120, duplicates=4, stale=1, errors={"timeout": 2}, state="streaming")
    registry = CollectorRegistry()
    registry.register(IngestCollector(SimpleNamespace(stats=stats)))
    value = registry.get_sample_value
    assert value("rtpick_ingest_reconnects_total") == 2
    assert value("rtpick_ingest_packets_total") == 120
    assert value("rtpick_ingest_errors_total", {"cause": "timeout"}) == 2
    assert value("rtpick_ingest_state", {"state": "streaming"}) == 1
    assert value("rtpick_ingest_state", {"state": "backoff"}) == 0
    assert value("rtpick_ingest_missing_stations") == 0
    stats.missing_stations = frozenset({"OK_GONE", "OK_AWAY"})
    assert registry.get_sample_value("rtpick_ingest_missing_stations") == 2


def test_daemon_collector_reads_state_write_errors():
    from rtpick.publish.metrics import DaemonCollector

    stats = SimpleNamespace(state_saves=7, state_write_errors=3, picks_suppressed=1)
    registry = CollectorRegistry()
    registry.register(DaemonCollector(SimpleNamespace(stats=stats)))
    assert registry.get_sample_value("rtpick_state_write_errors_total") == 3
    assert registry.get_sample_value("rtpick_state_saves_total") == 7
    assert registry.get_sample_value("rtpick_picks_suppressed_total") == 1


def _series(registry: CollectorRegistry) -> int:
    return sum(len(f.samples) for f in registry.collect())


def test_station_labels_are_capped():
    """10,000 station ids: per-station series stop growing at metrics.max_station_labels."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, process=False, max_station_labels=100)
    stations = {}
    for i in range(10_000):
        key = f"XX.S{i:04d}"
        metrics.on_record(f"{key}..HHZ", 100, 0.5)
        metrics.on_gap(f"{key}..HHZ")
        stations[f"{key}..HH?"] = SimpleNamespace(
            key=f"{key}..HH?", last_arrival=1000.0 - (i == 9_999) * 500, last_data_ns=int(990e9),
            buffer=SimpleNamespace(filled_to=[10, 10, 10], capacity=1000, floor=0))
    pipeline = SimpleNamespace(stations=stations, queued=0, stats=SimpleNamespace(windows_dropped=0, windows_failed=0, time_jumps=0, station_errors=0))
    registry.register(PipelineCollector(pipeline, live_after_s=60, clock=lambda: 1000.0, labels=metrics.station_label))
    labels = {s.labels["station"] for f in registry.collect() for s in f.samples if "station" in s.labels}
    assert len(labels) == 101 and "_other" in labels and "XX.S0000" in labels and "XX.S0100" not in labels
    value = registry.get_sample_value
    assert value("rtpick_records_total", {"station": "_other"}) == 9_900  # nothing lost, only aggregated
    assert value("rtpick_gaps_total", {"station": "_other"}) == 9_900
    assert value("rtpick_station_last_data_age_seconds", {"station": "_other"}) == 500  # the worst of them
    assert value("rtpick_stations") == 10_000 and value("rtpick_stations_live") == 9_999
    assert _series(registry) < 2_000  # 11 series per label (counters with _created); uncapped: >110,000


def test_default_station_label_cap_matches_config():
    from rtpick.config import Config
    from rtpick.publish.metrics import DEFAULT_MAX_STATION_LABELS

    assert Config().metrics.max_station_labels == DEFAULT_MAX_STATION_LABELS
    with pytest.raises(ConfigError, match=r"metrics\.max_station_labels"):
        parse_config({"metrics": {"max_station_labels": 0}})


def test_http_endpoint_bounds_half_open_connections_and_closes_promptly():
    """200 connections that never send a request: a bounded number of threads, 503 for the rest,
    scrapes work again once they go, and closing the server ends the ones still open."""
    import socket
    import threading

    from rtpick.publish.metrics import HTTP_MAX_CONCURRENT

    registry = CollectorRegistry()
    Metrics(registry).on_record("OK.SIO..HHZ", 100, 0.5)
    before = threading.active_count()
    server, thread = start_http_server("127.0.0.1:0", registry, timeout_s=120)  # no slot frees itself during the test
    port = server.server_address[1]
    held = []
    try:
        for _ in range(200):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        for _ in range(200):  # bounded wait until the server has accepted every connection
            if server.rejected >= 200 - HTTP_MAX_CONCURRENT:
                break
            threading.Event().wait(0.05)
        assert server.rejected == 200 - HTTP_MAX_CONCURRENT
        assert threading.active_count() <= before + 1 + HTTP_MAX_CONCURRENT
        for sock in held[HTTP_MAX_CONCURRENT:]:
            assert sock.recv(100).startswith(b"HTTP/1.0 503")
        for sock in held[HTTP_MAX_CONCURRENT:]:
            sock.close()
        for sock in held[:1]:  # one slot freed: the next scrape is served
            sock.close()
        for _ in range(100):
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                break
            except urllib.error.HTTPError:
                threading.Event().wait(0.05)
        assert "rtpick_records_total" in text
    finally:
        server.shutdown()
        server.server_close()  # shuts the half-open connections down: their threads end now
        thread.join(5)
    for _ in range(100):
        if threading.active_count() <= before:
            break
        threading.Event().wait(0.01)
    assert not thread.is_alive() and threading.active_count() <= before
    for sock in held[1:HTTP_MAX_CONCURRENT]:
        assert sock.recv(100) == b""  # closed by the server, not by its timeout
        sock.close()


def test_tally_histograms_export_what_prometheus_client_histograms_would():
    """The per-record/per-window histograms are plain tallies: same buckets, counts and sums as prometheus_client's own."""
    import random

    from prometheus_client import Histogram, generate_latest

    from rtpick.publish.metrics import DATA_LATENCY_BUCKETS, TallyHistogram

    rng = random.Random(5)
    values = [rng.choice(DATA_LATENCY_BUCKETS) for _ in range(50)] + [rng.uniform(-5, 4000) for _ in range(500)] + [0.0, -1.0, 1e9]
    reference = CollectorRegistry()
    theirs = Histogram("h", "h", buckets=DATA_LATENCY_BUCKETS, registry=reference)
    ours = TallyHistogram(DATA_LATENCY_BUCKETS)
    for v in values:
        theirs.observe(v)
        ours.observe(v)
    buckets, total = ours.buckets()
    assert buckets == [(s.labels["le"], int(s.value)) for s in reference.collect().__next__().samples if s.name == "h_bucket"]
    assert total == pytest.approx(reference.get_sample_value("h_sum"))
    registry = CollectorRegistry()
    metrics = Metrics(registry, process=False)
    for v in values:
        metrics.on_record("OK.SIO..HHZ", 412, v)
        metrics.on_stage("forward", v)
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}  # a valid exposition
    assert families["rtpick_data_latency_seconds"].type == "histogram" and families["rtpick_stage_latency_seconds"].type == "histogram"
    assert registry.get_sample_value("rtpick_data_latency_seconds_count") == len(values)
    assert registry.get_sample_value("rtpick_stage_latency_seconds_bucket", {"stage": "forward", "le": "+Inf"}) == len(values)
    assert registry.get_sample_value("rtpick_stage_latency_seconds_count", {"stage": "record_to_arrival"}) == len(values)
    assert registry.get_sample_value("rtpick_records_total", {"station": "OK.SIO"}) == len(values)
