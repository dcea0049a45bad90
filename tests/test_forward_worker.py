"""The forward on its own worker thread (``inference.forward_worker``): same stacked values and picks.

With the worker on (forced on CPU here; CI has no GPU), the oracle still holds and
the picks equal those of a run without it; a forward that raises on the worker
loses only its batch; drain, flush and a hot swap with a batch in flight lose
nothing and compute every window once. On a machine with CUDA the demo data runs
on the GPU with the worker (``auto``) and its picks match the CPU run.
"""

from __future__ import annotations

import copy
import threading
import zlib

import numpy as np
import pytest
import torch

from rtpick.config import Config, parse_config
from rtpick.inference.engine import InferenceEngine
from rtpick.inference.models import LoadedModel
from rtpick.inference.regions import build_lane_specs, forward_worker_on
from rtpick.pipeline import Pipeline
from rtpick.types import NS_PER_S
from tests.oracle import compare_annotations, match_picks, shuffled_records, stream_through
from tests.test_hot_swap import gathered, windows_by_station  # noqa: F401 - fixture
from tests.test_oracle import family_stream
from tests.test_pipeline_faults import clean, key, loaded, records, run  # noqa: F401 - fixtures

WORKER_THREAD = "rtpick-forward-"


def worker_config(**inference) -> Config:
    """The worker forced on; batches of 16, so that full batches (not only at-risk ones, which
    are run to completion) leave a batch in flight while the small bundled network is fed."""
    return parse_config({"inference": {"forward_worker": "on", "batch_size": 16, **inference}})


def assert_same_picks(ours, theirs, tolerance_s: float = 0.0, probability: float = 1e-5) -> None:
    """Same picks (station, phase, time within ``tolerance_s``), probabilities within ``probability``.

    Batches may be composed differently with the worker (at-risk batches run at other
    moments), and float32 forwards of other batch compositions differ in the last digits.
    """
    assert len(ours) == len(theirs)
    for a, b in zip(sorted(map(key, ours)), sorted(map(key, theirs))):
        assert a[:2] == b[:2] and abs(a[2] - b[2]) <= tolerance_s * NS_PER_S and abs(a[3] - b[3]) <= probability, (a, b)


class Gate:
    """Wraps a forward: records the threads it runs on and holds its ``hold``-th call (1-based) until opened."""

    def __init__(self, predict, hold: int = 0):
        self.predict = predict
        self.hold = hold
        self.calls = 0
        self.opened = threading.Event()
        self.holding = threading.Event()
        self.threads: list[threading.Thread] = []

    def __call__(self, batch):
        self.threads.append(threading.current_thread())
        self.calls += 1
        if self.calls == self.hold:
            self.holding.set()
            assert self.opened.wait(60), "the gate was never opened"
        return self.predict(batch)

    def open_soon(self) -> None:
        """Open from another thread a little later: the pipeline thread waits for the forward meanwhile."""
        threading.Timer(0.1, self.opened.set).start()


def gate_lane(pipe: Pipeline, hold: int = 0) -> Gate:
    engine = pipe.lanes["default"].engine
    gate = Gate(engine.predict, hold)
    engine.predict = gate  # type: ignore[method-assign]
    return gate


def feed_until_in_flight(pipe: Pipeline, records) -> tuple[int, list]:
    """Feed half the records, then on until the lane has a batch in flight; (next record, picks).

    The batch in flight is then the lane's latest forward, and nothing waited for it yet.
    """
    picks = [p for record in records[: len(records) // 2] for p in pipe.feed(record)]
    i = len(records) // 2
    while not pipe.lanes["default"].in_flight:
        picks += pipe.feed(records[i])
        i += 1
    return i, picks


def forward_in_flight(loaded, records, config: Config) -> int:
    """Which forward (1-based) is in flight after :func:`feed_until_in_flight` (batching does not depend on timing)."""
    probe = Pipeline(config, loaded)
    counter = gate_lane(probe)
    feed_until_in_flight(probe, records)
    probe.lanes["default"].settle()
    return counter.calls


def held_in_flight(loaded, records, config: Config, hold: int) -> tuple[Pipeline, Gate, int, list]:
    """:func:`feed_until_in_flight` with the forward in flight (number ``hold``) held on the worker.

    Only that forward is held, so the pipeline thread never waits for it while feeding.
    Returns the pipeline, its gate (closed), the next record and the picks so far.
    """
    pipe = Pipeline(config, loaded)
    gate = gate_lane(pipe, hold)
    after, picks = feed_until_in_flight(pipe, records)
    assert gate.holding.wait(60), "the batch in flight should be the held forward"
    return pipe, gate, after, picks


def test_auto_is_on_for_cuda_only_and_regions_override_it(loaded):
    assert not forward_worker_on("auto", "cpu") and forward_worker_on("auto", "cuda") and forward_worker_on("auto", "cuda:1")
    assert forward_worker_on("on", "cpu") and not forward_worker_on("off", "cuda")
    config = parse_config({"regions": [{"name": "north", "stations": ["OK.*.*.*"], "forward_worker": "on"}, {"name": "default"}]})
    specs = {spec.region: spec for spec in build_lane_specs(config, {(config.inference.model, "cpu"): loaded})}
    assert specs["north"].forward_worker and not specs["default"].forward_worker


@pytest.mark.parametrize("family", ["OKCFA.HH", "W35A.EH"])  # W35A: a gap, two blocks
def test_oracle_holds_with_the_worker(oklahoma_dir, loaded, family, monkeypatch):
    stream = family_stream(oklahoma_dir, family)
    records = shuffled_records(stream, np.random.default_rng(zlib.crc32(family.encode())))
    config = worker_config()
    config.stream.component_wait_s = 60.0
    without = copy.deepcopy(config)
    without.inference.forward_worker = "off"
    _, reference, _ = stream_through(without, loaded, records)
    threads: set[str] = set()
    predict = InferenceEngine.predict
    monkeypatch.setattr(InferenceEngine, "predict", lambda self, batch: (threads.add(threading.current_thread().name), predict(self, batch))[1])
    stacked, picks, pipe = stream_through(config, loaded, records)
    assert threads and all(name.startswith(WORKER_THREAD + "default") for name in threads)
    compared, worst = compare_annotations(next(iter(stacked.values())), loaded.model.annotate(stream.copy()), "NPS", 100.0)
    assert compared > 0 and worst < 1e-4, f"{family}: max |rtpick - annotate| = {worst}"
    extra, missing = match_picks(picks, loaded.model.classify(stream.copy()).picks, tolerance_s=0.0101)
    assert not extra and not missing, f"{family}: extra picks {extra}, missing {missing}"
    assert_same_picks(picks, reference)
    assert pipe.stats.windows_dropped == pipe.stats.windows_failed == 0 and not pipe.lanes["default"].in_flight


def test_forward_failing_on_the_worker_drops_only_its_batch(loaded, records, clean, caplog):
    pipe = Pipeline(worker_config(), loaded)
    gate = gate_lane(pipe)
    calls: list[int] = []

    def flaky(batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise RuntimeError("simulated CUDA error")
        return gate(batch)

    pipe.lanes["default"].engine.predict = flaky  # type: ignore[method-assign]
    pipe, picks = run(loaded, records, pipe=pipe)
    assert gate.threads and all(t.name.startswith(WORKER_THREAD) for t in gate.threads)
    assert pipe.stats.windows_failed == calls[1]
    assert pipe.stats.windows + pipe.stats.windows_failed == clean[0].stats.windows
    assert picks  # the pipeline went on picking
    failed = [r for r in caplog.records if "inference of a batch" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None  # logged once, with the worker's traceback
    assert "simulated CUDA error" in caplog.text


def test_drain_with_a_batch_in_flight_loses_nothing(loaded, records, clean):
    config = worker_config(max_wait_s=3600.0)  # poll below runs no partial batch (it would wait for the held one)
    pipe, gate, _, picks = held_in_flight(loaded, records, config, forward_in_flight(loaded, records, config))
    lane = pipe.lanes["default"]
    in_flight = lane.in_flight
    picks += pipe.poll()  # does not wait for the forward: the daemon goes on reading records
    assert lane.in_flight == in_flight and not gate.opened.is_set()
    gate.open_soon()
    picks += pipe.drain()
    assert not pipe.queued and not lane.in_flight
    assert all(not block.pending for station in pipe.stations.values() for block in station.scheduler.blocks)
    assert pipe.stats.windows_failed == pipe.stats.windows_dropped == 0
    expected = {k[:3]: k[3] for k in map(key, clean[1])}
    for pick in map(key, picks):
        assert pick[:3] in expected and abs(expected[pick[:3]] - pick[3]) <= 1e-5, pick


def test_flush_with_a_batch_in_flight_gives_the_picks_of_a_run_without_the_worker(loaded, records):
    pipe = Pipeline(worker_config(), loaded)
    stop, picks = feed_until_in_flight(pipe, records)  # the data ends with a batch in flight
    picks += pipe.flush()
    without = worker_config(forward_worker="off")
    reference, expected = run(loaded, records[:stop], without)
    assert_same_picks(picks, expected)
    assert pipe.stats.windows == reference.stats.windows and not pipe.lanes["default"].in_flight


def test_hot_swap_with_a_batch_in_flight_computes_every_window_once(loaded, records, clean, gathered):  # noqa: F811
    config = worker_config()
    hold = forward_in_flight(loaded, records, config)
    gathered.clear()  # the windows of the probe run
    pipe, gate, half, before = held_in_flight(loaded, records, config, hold)
    lane = pipe.lanes["default"]
    old_engine = lane.engine
    twin = LoadedModel(copy.deepcopy(loaded.model), "test:twin", "2", "b" * 64)  # same weights, other identity
    (spec,) = build_lane_specs(config, {(config.inference.model, config.inference.device): twin})
    gate.open_soon()
    pipe.swap_model("default", twin, spec)  # stacks the batch in flight (old model), then switches
    assert not lane.in_flight and lane.engine is not old_engine
    assert not any(t.is_alive() for t in gate.threads), "the old engine's worker thread must stop"
    before += pipe.poll(now=0.0)  # the picks the swap made (nothing is due at time 0)
    after = [p for record in records[half:] for p in pipe.feed(record)] + pipe.flush()
    assert before and after
    assert {p.model_id for p in before} == {loaded.model_id} and {p.model_id for p in after} == {"test:twin"}
    assert_same_picks(before + after, clean[1])
    counts = windows_by_station(pipe, gathered)
    assert max(counts.values()) == 1 and sum(counts.values()) == clean[0].stats.windows
    assert pipe.stats.windows == clean[0].stats.windows and pipe.stats.windows_failed == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_with_the_worker_picks_as_cpu(loaded, records, clean):
    config = Config()
    config.inference.device = "cuda"  # forward_worker 'auto': on for CUDA
    on_gpu = LoadedModel(copy.deepcopy(loaded.model).to("cuda"), loaded.model_id, loaded.version, loaded.sha256)
    pipe = Pipeline(config, on_gpu)
    lane = pipe.lanes["default"]
    assert lane.engine.worker and all(torch.from_numpy(buf).is_pinned() for buf in lane.engine.host_batches(4))
    pipe, picks = run(on_gpu, records, pipe=pipe)
    assert pipe.stats.windows == clean[0].stats.windows and pipe.stats.windows_failed == 0
    assert_same_picks(picks, clean[1], tolerance_s=1.01 / lane.fs, probability=1e-3)
