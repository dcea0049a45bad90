"""Inference backends: verified against eager at load, refused (eager) when they differ, pick quality kept.

* A deliberately broken backend is refused with a logged reason and the lane runs eager.
* ONNX Runtime and OpenVINO (fp32) pass the spine's equivalence oracle unchanged: the
  oracle's own tests are collected here again with a config that selects each.
* Reduced precision (bf16) changes P and S F1 on the NCEDC picks at 0.1 s and
  0.5 s tolerance by at most 0.5 point.
"""

from __future__ import annotations

import logging
import threading
import typing

import numpy as np
import pytest
import torch

from rtpick.adapt.datasets import load_npz
from rtpick.adapt.evaluate import TOLERANCES_S, metrics, predict_peaks
from rtpick.config import BackendName, Config
from rtpick.inference import backends
from rtpick.inference.engine import InferenceEngine
from rtpick.inference.models import LoadedModel
from tests.conftest import NCEDC_NPZ

ort = pytest.importorskip("onnxruntime")

# the oracle, unchanged, with ONNX Runtime: pytest collects these here with this module's fixtures
from tests.test_oracle import test_gap_station_has_two_blocks, test_native_rate_equals_seisbench  # noqa: E402,F401


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def loaded(phasenet) -> LoadedModel:
    torch.set_num_threads(1)
    return LoadedModel(phasenet, "seisbench:PhaseNet/original", "1", "0123456789abcdef" * 4)


@pytest.fixture(scope="module", params=["onnxruntime", "openvino"])
def config(request, cache_dir) -> Config:
    cfg = Config()
    cfg.stream.component_wait_s = 60.0
    cfg.inference.batch_size = 16
    cfg.inference.backend = request.param
    cfg.inference.backend_cache_dir = str(cache_dir)
    return cfg


class _Broken(backends.Backend):
    """Eager plus an offset well above the fp32 tolerance: must never be used."""

    name = "onnxruntime"

    def forward(self, x):
        return self.model(x) + 1e-3


def test_broken_backend_falls_back_to_eager(phasenet, cache_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="rtpick.inference.backends"):
        chosen = backends.select("onnxruntime", phasenet, "ab" * 32, 1, cache_dir, label="north",
                                 builder=lambda name, model, *a: _Broken(model))
    assert type(chosen) is backends.Backend and chosen.name == "eager"
    assert "region north: backend 'onnxruntime' differs from eager" in caplog.text
    assert "falling back to eager" in caplog.text


def test_unbuildable_backend_falls_back_to_eager(phasenet, cache_dir, caplog):
    def fail(*_):
        raise backends.BackendError("cannot build backend 'bf16': no bf16")

    with caplog.at_level(logging.WARNING, logger="rtpick.inference.backends"):
        chosen = backends.select("bf16", phasenet, "ab" * 32, 1, cache_dir, builder=fail)
    assert chosen.name == "eager" and "no bf16" in caplog.text


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_onnx_export_is_cached_by_sha256(phasenet, tmp_path, name):
    engine = InferenceEngine(phasenet, {}, 1, backend=name, sha256="cd" * 32, cache_dir=tmp_path)
    assert engine.backend.name == name  # verified, not refused
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"{'cd' * 8}-3001-fp32.onnx"]  # OpenVINO compiles the same file: nothing else is written
    mtime = (tmp_path / files[0]).stat().st_mtime_ns
    InferenceEngine(phasenet, {}, 1, backend=name, sha256="cd" * 32, cache_dir=tmp_path)
    assert (tmp_path / files[0]).stat().st_mtime_ns == mtime  # reused, not exported again


@pytest.mark.parametrize("threads", [1, 2])
def test_openvino_uses_at_most_its_threads_and_any_batch_size(phasenet, cache_dir, threads):
    backend = backends.build("openvino", phasenet, "cd" * 32, threads, cache_dir)
    assert backend.compiled.get_property("INFERENCE_NUM_THREADS") == threads
    assert 1 <= len(backend.requests) <= threads  # streams share the threads, never add to them
    x = backends.probe_batch(phasenet, 5)
    with torch.inference_mode():
        for n in (1, 2, 5):  # fewer windows than streams, and uneven splits
            assert torch.allclose(backend.forward(x[:n]), phasenet(x[:n]), atol=backends.FP32_TOLERANCE, rtol=0)


def test_auto_picks_a_verified_fp32_backend(phasenet, cache_dir):
    chosen = backends.select("auto", phasenet, "ef" * 32, 1, cache_dir)
    assert chosen.name in backends.FP32


class _AsModule(torch.nn.Module):
    """A backend wearing its model's clothes, for the evaluation helpers."""

    def __init__(self, model, backend):
        super().__init__()
        self.inner, self.backend = model, backend
        self.in_samples, self.labels = model.in_samples, model.labels

    def annotate_batch_pre(self, x, argdict):
        return self.inner.annotate_batch_pre(x, argdict)

    def forward(self, x):
        return self.backend.forward(x)


@pytest.mark.parametrize("name", ["bf16"])
def test_reduced_precision_keeps_f1(phasenet, cache_dir, name):
    ts = load_npz(NCEDC_NPZ)
    backend = backends.select(name, phasenet, "12" * 32, 2, cache_dir)
    assert backend.name == name, "reduced-precision backend was refused at load"
    thresholds = {"P": 0.3, "S": 0.3}
    ref = metrics(predict_peaks(phasenet, ts), thresholds)
    got = metrics(predict_peaks(_AsModule(phasenet, backend), ts), thresholds)
    for phase in ("P", "S"):
        for tol in TOLERANCES_S:
            f_ref, f_got = ref[phase][f"{tol:g}s"]["f1"], got[phase][f"{tol:g}s"]["f1"]
            assert abs(f_got - f_ref) <= 0.005, f"{name} {phase} F1@{tol:g}s: {f_got:.4f} vs eager {f_ref:.4f}"


def test_bf16_workers_run_single_threaded_and_keep_the_callers_threads(phasenet):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        backend = backends.build("bf16", phasenet, "", 2, None)
        assert set(backend.pool.map(lambda _: torch.get_num_threads(), range(4))) == {1}
        assert torch.get_num_threads() == 2
        later: list[int] = []
        thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert later == [2]  # threads created later still get the configured count
        x = backends.probe_batch(phasenet, 5)
        with torch.inference_mode():
            for n in (1, 2, 5):
                assert torch.allclose(backend.forward(x[:n]), phasenet(x[:n]), atol=backends.REDUCED_TOLERANCE, rtol=0)
    finally:
        torch.set_num_threads(before)


def test_bf16_frozen_trace_serves_every_batch_size_and_both_workers(phasenet):
    """Traced on two windows, the frozen module serves partial batches; the two workers share it safely."""
    before = torch.get_num_threads()
    backend = backends.build("bf16", phasenet, "", 2, None)
    assert backend.traced is not None, "PhaseNet fell back to autocast"
    x = backends.probe_batch(phasenet, 64)
    try:
        with torch.inference_mode():
            for n in (1, 7, 33, 64):
                got = backend.forward(x[:n])
                assert got.dtype == torch.float32 and got.shape == (n, 3, 3001)
                assert torch.allclose(got, phasenet(x[:n]), atol=backends.REDUCED_TOLERANCE, rtol=0)
                if n > 1:  # split: equal to the parts run one after the other, single-threaded like the workers
                    torch.set_num_threads(1)
                    assert torch.equal(got, torch.cat([backend._run(part) for part in x[:n].chunk(2)])), n
                    torch.set_num_threads(before)
    finally:
        torch.set_num_threads(before)


class _BatchBaked(torch.nn.Module):
    """A model whose trace keeps the traced batch size (a shape turned into a Python int)."""

    in_samples, component_order = 200, "ZNE"

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(3, 3, 5, padding=2)

    def forward(self, x):
        return torch.sigmoid(0.01 * self.conv(x)) * torch.ones(int(x.shape[0]), 1, 1)  # 0.01: the raw probe is large


def test_bf16_runs_autocast_when_the_trace_does_not_generalise(cache_dir, caplog):
    model = _BatchBaked().eval()
    with caplog.at_level(logging.WARNING, logger="rtpick.inference.backends"):
        chosen = backends.select("bf16", model, "ab" * 32, 2, cache_dir)
    assert chosen.name == "bf16" and chosen.traced is None  # verified under autocast, not refused
    assert "no usable frozen trace of the model" in caplog.text and "running it under autocast instead" in caplog.text
    x = backends.probe_batch(model, 5)
    with torch.inference_mode():
        assert torch.allclose(chosen.forward(x), model(x), atol=backends.REDUCED_TOLERANCE, rtol=0)


def test_config_offers_every_backend():
    assert set(typing.get_args(BackendName)) == set(backends.BACKENDS)


def test_probe_batch_is_deterministic(phasenet):
    a, b = backends.probe_batch(phasenet), backends.probe_batch(phasenet)
    assert torch.equal(a, b) and a.shape == (backends.PROBE_WINDOWS, 3, 3001) and np.isfinite(a.numpy()).all()


def test_cpu_backends_run_eager_on_other_devices(phasenet, cache_dir):
    assert backends.select("onnxruntime", phasenet, "ab" * 32, 1, cache_dir, device="cuda").name == "eager"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_picks_equal_cpu_picks(oklahoma_dir, phasenet):
    """On a GPU: the bundled demo's picks on CUDA equal CPU picks (one sample, probability 1e-3)."""
    import copy

    import obspy

    from tests.oracle import shuffled_records, stream_through

    stream = obspy.read(str(oklahoma_dir / "FNO.HH?.*")) + obspy.read(str(oklahoma_dir / "OKCFA.HH?.*"))
    records = shuffled_records(stream, np.random.default_rng(3))
    picks = {}
    for device in ("cpu", "cuda"):
        cfg = Config()
        cfg.stream.component_wait_s = 60.0
        cfg.inference.device = device
        model = copy.deepcopy(phasenet).to(device)
        _, got, _ = stream_through(cfg, LoadedModel(model, "seisbench:PhaseNet/original", "1", ""), records)
        picks[device] = sorted(got, key=lambda p: (p.stream_id, p.phase, p.time_ns))
    assert len(picks["cpu"]) == len(picks["cuda"]) > 0
    for a, b in zip(picks["cpu"], picks["cuda"]):
        assert (a.stream_id, a.phase) == (b.stream_id, b.phase)
        assert abs(a.time_ns - b.time_ns) <= 10_000_000 and abs(a.probability - b.probability) <= 1e-3
