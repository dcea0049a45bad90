"""Inference backends: how a lane's model forward runs, chosen per lane and verified at load.

A backend turns a preprocessed (batch, channels, samples) float32 tensor into the
model's raw output (what ``annotate_batch_post`` takes). rtpick keeps four:

* ``eager`` — the torch model itself (the reference; always available).
* ``onnxruntime`` — the model exported to ONNX at load (opset 17, dynamic batch) and
  run by ONNX Runtime's CPU provider. fp32, so it must reproduce eager.
* ``openvino`` — the same ONNX file compiled by OpenVINO for CPU, fp32. The fastest
  fp32 forward measured (bench/backends.py, 2 cores, batch 64: 1.3-1.6x ONNX Runtime,
  medians of interleaved runs) and the one that suffers least when other work shares the
  cores (its two single-threaded streams keep going where OpenMP teams stall).
* ``bf16`` — the torch model in bfloat16: traced under CPU autocast and frozen to
  TorchScript at load (plain autocast where that fails), each batch split over
  single-threaded workers (worth it only where the CPU has avx512_bf16/AMX; reduced
  precision).

Not kept: OpenVINO bf16 (``INFERENCE_PRECISION_HINT = bf16``) was slower than
OpenVINO fp32 on the avx512_bf16 (no AMX) development CPU and differs from eager by
0.04-0.16 in probability: OpenVINO folds the batch norms into bf16 convolution
weights, which costs PhaseNet that much precision (torch autocast keeps them apart:
0.02). int8 static quantisation (ONNX Runtime QDQ, per-channel weights,
calibrated on the bundled Oklahoma recordings with min-max or percentile ranges,
with or without the output layer) was only 1.2-1.5x faster than ONNX Runtime fp32
on the 2-core development machine and changed P/S F1 on the NCEDC picks at 0.1 s by
1.3-1.8 points (the limit is 0.5); torch dynamic quantisation does not touch
PhaseNet (no Linear/LSTM layers); OpenVINO int8 needs NNCF (a heavy dependency) and
would meet the same accuracy limit. A TorchScript-frozen model (oneDNN fusions) was
no faster than eager in fp32; an OpenVINO model compiled for a fixed batch size was
faster on full batches only and pays a whole batch for every partial one. For bf16
(PhaseNet, 256 probe windows against fp32 eager): plain autocast (``bf16`` before)
is 0.9x as fast as its frozen trace, max |diff| 0.060, mean 1.2e-4 (the trace: 0.053,
1.8e-4); the whole model cast to bfloat16 and frozen is as fast as the trace but runs
batch norms and softmax in bfloat16 too (0.093, 2.2e-4; 0.08 on 64 windows, beyond the
tolerance); folding the batch norms into the convolution weights by hand made it 2.5x
slower, and so did (1.7x) oneDNN Graph fusion (``torch.jit.enable_onednn_fusion``);
convolution weights in channels-last order spare oneDNN its reorders (a third of its
time) but cost more in the batch norms, pads and concatenations (1.3x slower).

``auto`` measures eager, ONNX Runtime and OpenVINO (the fp32 backends) on the probe
batch at load and keeps the fastest verified one.

Exported models are cached on disk, keyed by the weights' sha256, the window length
(``<cache>/<sha256[:16]>-<in_samples>-fp32.onnx``; written to a
temporary file and renamed, so concurrent daemons never read half a file); OpenVINO
compiles that same file at load (a fraction of a second), so it writes nothing of
its own. Delete the folder to force a new export. A cache that cannot be written
only costs the export time at every start (logged).

Verification (every non-eager backend, at load): a seeded probe batch (noise with
wavelets and a gap, preprocessed like live windows) is run through eager and the
candidate. fp32 backends must agree within ``FP32_TOLERANCE`` (1e-4, the spine's
equivalence contract), reduced precision within ``REDUCED_TOLERANCE`` of output
probability. A backend that fails to build or to verify is refused with the reason
logged as a warning, and the lane runs eager.

Threads: never more busy threads than ``inference.threads``, and nothing else
computes while the forward runs:

* torch (eager, and the pre/post hooks of every backend) uses ``threads`` intra-op
  OpenMP threads; bf16 runs ``threads`` workers of one intra-op thread each.
* ONNX Runtime sessions get ``threads`` intra-op threads, one inter-op thread and no
  spinning between runs (``session.intra_op.allow_spinning = 0``: an idle pool would
  otherwise busy-wait on the cores the pipeline thread needs next).
* OpenVINO gets ``INFERENCE_NUM_THREADS = threads`` in all (its TBB pool, shared by
  its streams: two threads make two single-threaded streams, one thread one), no
  pinning to cores, and its idle workers sleep (measured: no CPU time between runs).
* rtpick's numba kernels are serial (no ``parallel=True``) and run on the pipeline
  thread between forwards; the forward call blocks that thread until it returns.

So set ``threads`` to the cores you give the daemon.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

log = logging.getLogger(__name__)

BACKENDS = ("auto", "eager", "onnxruntime", "openvino", "bf16")
FP32 = ("eager", "onnxruntime", "openvino")
FP32_TOLERANCE = 1e-4
REDUCED_TOLERANCE = 0.05  # max |probability difference| on the probe batch for bf16
ONNX_OPSET = 17
PROBE_SEED = 20240615
PROBE_WINDOWS = 16


class BackendError(Exception):
    """A backend that cannot be built or does not reproduce eager; the message says why."""


def default_cache_dir(environ: dict[str, str] | None = None) -> Path:
    """``$CACHE_DIRECTORY`` (systemd ``CacheDirectory=``), else ``$XDG_CACHE_HOME/rtpick``, else ``~/.cache/rtpick``."""
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    systemd = environ.get("CACHE_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd)
    xdg = environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "rtpick"


class Backend:
    """A forward: preprocessed batch tensor in, the model's raw output (tensor or tuple of tensors) out."""

    name = "eager"

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x)


class Bf16Backend(Backend):
    """The model in bfloat16 (CPU): frozen TorchScript traced under autocast, each batch split over single-threaded workers.

    The model is traced once at build under bfloat16 autocast on two probe windows of
    its own length and frozen (:func:`_frozen_bf16`): the graph keeps autocast's
    choices (convolutions in bfloat16 with their weights cast once, batch norms with
    float32 statistics) without re-casting the weights and walking the Python modules
    at every forward, 1.1x as fast as autocast itself. A model that cannot be traced,
    or whose trace does not give the model's output for other batch sizes, runs under
    autocast instead, with a logged warning (EQTransformer: oneDNN has no bfloat16 LSTM
    for the traced graph): still bfloat16 and verified like the trace, so asking for
    ``bf16`` does not cost the speed of eager.

    With ``threads`` > 1 the batch is cut into ``threads`` parts run at once by as many
    worker threads with one torch intra-op thread each, rather than by one OpenMP team
    of ``threads``: PhaseNet's small convolutions scale poorly within a team, and a
    team stalls at every barrier while one of its cores is taken by other work
    (bench/backends.py, 2 cores, batch 64: 1.2x as fast at the quietest repeats, 3-7x
    in medians with other work on the machine). The frozen module holds no state
    between calls, so the workers share it. Outputs are cast back to float32.
    """

    name = "bf16"

    def __init__(self, model: torch.nn.Module, threads: int = 1, frozen: bool = True):
        """``frozen=False``: autocast only (bench/backends.py compares both)."""
        super().__init__(model)
        self.traced: torch.jit.ScriptModule | None = None
        if frozen:
            try:
                self.traced = _frozen_bf16(model)
            except Exception as exc:  # noqa: BLE001 - any failure to trace means autocast
                reason = str(exc).strip().splitlines()[-1:] or [repr(exc)]  # TorchScript errors lead with a traceback
                log.warning("bf16: no usable frozen trace of the model (%s); running it under autocast instead", reason[0])
        self.pool = _single_threaded_workers(threads) if threads > 1 else None
        self.parts = threads

    def _run(self, x: torch.Tensor) -> Any:
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.traced is None):  # both are per thread
            y = self.model(x) if self.traced is None else self.traced(x)
        return tuple(t.float() for t in y) if isinstance(y, tuple) else y.float()

    def forward(self, x: torch.Tensor) -> Any:
        if self.pool is None or len(x) < 2:
            return self._run(x)
        outs = list(self.pool.map(self._run, x.chunk(self.parts)))
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*outs))
        return torch.cat(outs)


def _frozen_bf16(model: torch.nn.Module) -> torch.jit.ScriptModule:
    """``model`` traced under bfloat16 autocast on two probe windows and frozen; checked on one and three.

    Autocast's weight cache is off while tracing (cached casts would enter the graph
    as constants that require grad). ``optimize_for_inference`` on top adds nothing
    here: its oneDNN rewrites are for float32 convolutions (measured: the same speed).
    A trace is one run of the code: wherever the model turns a shape into a Python
    number, the traced batch size stays in the graph. Partial batches are the rule in
    streaming, so the trace is run on batches of one and three windows and compared
    with the float32 model (within ``REDUCED_TOLERANCE``). Raises when tracing fails or
    the check does.
    """
    probe = probe_batch(model, 3)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            traced = torch.jit.freeze(torch.jit.trace(model, probe[:2]))
    with torch.inference_mode():
        for n in (1, 3):
            diff = _max_diff(_output(traced(probe[:n])), _output(model(probe[:n])))
            if not diff <= REDUCED_TOLERANCE:
                raise BackendError(f"the model traced on 2 windows differs from it by {diff:.3g} on {n} (tolerance {REDUCED_TOLERANCE:g})")
    return traced


def _single_threaded_workers(n: int) -> ThreadPoolExecutor:
    """``n`` started worker threads whose torch ops use one intra-op thread each.

    torch keeps the intra-op thread count per thread, but a thread takes its first value
    from a process-wide default that ``torch.set_num_threads`` also sets: each worker
    initialises its own first, then sets 1, and the caller's count is set again once
    all workers are ready, so threads created later still get ``inference.threads``.
    """
    restore = torch.get_num_threads()
    ready = threading.Barrier(n + 1)

    def init() -> None:
        torch.get_num_threads()  # this thread's lazy initialisation, from the default
        torch.set_num_threads(1)
        ready.wait()

    pool = ThreadPoolExecutor(n, thread_name_prefix="rtpick-bf16", initializer=init)
    for _ in range(n):  # each submit starts a worker while the others wait at the barrier
        pool.submit(lambda: None)
    ready.wait()
    torch.set_num_threads(restore)
    return pool


class OnnxBackend(Backend):
    """An ONNX Runtime CPU session of the exported model."""

    name = "onnxruntime"

    def __init__(self, model: torch.nn.Module, path: Path, threads: int):
        import onnxruntime as ort

        super().__init__(model)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # no busy-waiting between runs: the idle pool would spin on the cores the pipeline
        # thread needs for gathering and stacking the next batch
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> Any:
        outs = [torch.from_numpy(o) for o in self.session.run(None, {self.input: x.detach().cpu().numpy()})]
        outs = [o.to(x.device) for o in outs]
        return outs[0] if len(outs) == 1 else tuple(outs)


class OpenVinoBackend(Backend):
    """The exported ONNX model compiled by OpenVINO for CPU in fp32, each batch split over its streams.

    Compiled with ``PERFORMANCE_HINT = THROUGHPUT``: OpenVINO divides the ``threads``
    it is given into streams (two single-threaded streams for two threads) and each
    batch is split into as many parts, run at once; single-threaded convolutions
    need no synchronisation, which made this 1.1-1.4x as fast as one stream of all
    threads (bench/backends.py, 2 cores). ``INFERENCE_PRECISION_HINT`` is set to f32 because
    OpenVINO's CPU default is bf16 wherever the CPU has avx512_bf16 or AMX. Pinning
    is off: the pipeline thread's numba kernels share the cores between forwards.
    One forward at a time (the infer requests are reused), as a lane runs them.
    """

    name = "openvino"

    def __init__(self, model: torch.nn.Module, path: Path, threads: int, properties: dict[str, Any] | None = None):
        """``properties``: OpenVINO CPU properties over the defaults above (bench/backends.py compares variants)."""
        import openvino as ov

        super().__init__(model)
        compiled = ov.Core().compile_model(str(path), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_NUM_THREADS": threads, "ENABLE_CPU_PINNING": False, **(properties or {})})
        self.compiled = compiled
        self.requests = [compiled.create_infer_request() for _ in range(int(compiled.get_property("NUM_STREAMS")))]

    def forward(self, x: torch.Tensor) -> Any:
        batch = x.detach().cpu().numpy()
        parts = np.array_split(batch, min(len(self.requests), len(batch)))
        running = list(zip(self.requests, parts))
        for request, part in running:
            request.start_async({0: part}, share_inputs=True)
        for request, _ in running:
            request.wait()
        outs = [torch.from_numpy(np.concatenate([r.get_output_tensor(i).data for r, _ in running])).to(x.device)
                for i in range(len(self.requests[0].model_outputs))]
        return outs[0] if len(outs) == 1 else tuple(outs)


# ----------------------------------------------------------------------- probe and export
def probe_batch(model: torch.nn.Module, windows: int = PROBE_WINDOWS) -> torch.Tensor:
    """Seeded windows of noise with wavelets (one with a zero-filled gap), preprocessed by the model's own hook."""
    rng = np.random.default_rng(PROBE_SEED)
    n, c = int(model.in_samples), len(model.component_order)
    x = rng.normal(0.0, 1.0, (windows, c, n))
    t = np.arange(n)
    for b in range(windows):
        for arrival in rng.uniform(0.1 * n, 0.9 * n, size=2):
            tau = (t - arrival) / 100.0
            x[b] += rng.uniform(5, 50) * np.exp(-((tau / 0.5) ** 2)) * np.sin(2 * np.pi * 6 * tau)
    x[0, :, : n // 10] = 0.0
    pre = getattr(model, "annotate_batch_pre", None)
    xt = torch.from_numpy(x.astype(np.float32))
    return pre(xt, argdict={}) if pre is not None else xt


def _export(model: torch.nn.Module, path: Path) -> None:
    """ONNX export with a dynamic batch axis (legacy TorchScript exporter: no onnxscript needed)."""
    x = probe_batch(model, 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter of the legacy exporter
        torch.onnx.export(model, (x,), str(tmp), input_names=["x"], dynamic_axes={"x": {0: "batch"}},
                          opset_version=ONNX_OPSET, dynamo=False)
    os.replace(tmp, path)


def _cached(model: torch.nn.Module, sha256: str, cache_dir: Path) -> Path:
    """The cached ONNX file of the model, exported first if missing."""
    path = cache_dir / f"{sha256[:16]}-{int(model.in_samples)}-fp32.onnx"
    if path.is_file():
        return path
    t0 = time.perf_counter()
    _export(model, path)
    log.info("exported the model to ONNX at %s in %.1f s (cached for later starts)", path, time.perf_counter() - t0)
    return path


# -------------------------------------------------------------------------- selection
def build(name: str, model: torch.nn.Module, sha256: str, threads: int, cache_dir: Path) -> Backend:
    """The backend ``name`` of ``model`` (unverified); BackendError if it cannot be built."""
    try:
        if name == "eager":
            return Backend(model)
        if name == "bf16":
            return Bf16Backend(model, threads)
        if name == "onnxruntime":
            return OnnxBackend(model, _cached(model, sha256, cache_dir), threads)
        if name == "openvino":
            return OpenVinoBackend(model, _cached(model, sha256, cache_dir), threads)
    except Exception as exc:  # noqa: BLE001 - any failure to build is a refusal with its reason
        raise BackendError(f"cannot build backend {name!r}: {exc!r}") from exc
    raise BackendError(f"unknown backend {name!r} (one of {', '.join(BACKENDS)})")


def _output(y: Any) -> np.ndarray:
    parts = y if isinstance(y, (tuple, list)) else (y,)
    return np.concatenate([p.detach().float().cpu().numpy().ravel() for p in parts])


def _max_diff(got: np.ndarray, want: np.ndarray) -> float:
    """Max |got - want|; infinite where the shapes differ or ``got`` is not finite (never within a tolerance)."""
    if got.shape != want.shape or not np.isfinite(got).all():
        return float("inf")
    return float(np.max(np.abs(got - want)))


def verify(backend: Backend, reference: np.ndarray, probe: torch.Tensor) -> float:
    """Max |diff| of ``backend`` to the eager ``reference`` on ``probe``; BackendError beyond its tolerance."""
    tolerance = FP32_TOLERANCE if backend.name in FP32 else REDUCED_TOLERANCE
    try:
        with torch.inference_mode():
            out = _output(backend.forward(probe))
    except Exception as exc:  # noqa: BLE001
        raise BackendError(f"backend {backend.name!r} failed on the probe batch: {exc!r}") from exc
    if out.shape != reference.shape:
        raise BackendError(f"backend {backend.name!r} gave {out.size} output values on the probe batch, eager {reference.size}")
    diff = _max_diff(out, reference)
    if not diff <= tolerance:
        raise BackendError(f"backend {backend.name!r} differs from eager by {diff:.3g} on the probe batch (tolerance {tolerance:g})")
    return diff


def _timed(backend: Backend, probe: torch.Tensor, repeats: int = 3) -> float:
    with torch.inference_mode():
        backend.forward(probe)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            backend.forward(probe)
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def select(name: str, model: torch.nn.Module, sha256: str, threads: int, cache_dir: Path | None = None,
           device: str = "cpu", label: str = "", builder: Callable[..., Backend] = build) -> Backend:
    """The verified backend for ``name`` (``auto``: the fastest verified fp32 one); eager when it is refused.

    Non-eager backends exist for CPU only: on another device every name but eager
    means eager (logged). ``label`` names the lane in log lines; ``builder`` is for tests.
    """
    cache_dir = cache_dir or default_cache_dir()
    where = f"region {label}: " if label else ""
    if name == "eager":
        return Backend(model)
    if device != "cpu":
        log.info("%sbackend %r is CPU-only; device %s runs eager", where, name, device)
        return Backend(model)
    candidates = ["onnxruntime", "openvino"] if name == "auto" else [name]
    probe = probe_batch(model)
    eager = Backend(model)
    with torch.inference_mode():
        reference = _output(eager.forward(probe))
    verified: list[Backend] = []
    for cand in candidates:
        try:
            backend = builder(cand, model, sha256, threads, cache_dir)
            diff = verify(backend, reference, probe)
        except BackendError as exc:
            log.warning("%s%s; falling back to eager", where, exc)
            continue
        log.info("%sbackend %s verified against eager on %d probe windows (max |diff| %.2g)", where, cand, len(probe), diff)
        verified.append(backend)
    if name != "auto":
        return verified[0] if verified else eager
    timings = {b.name: _timed(b, probe) for b in [eager, *verified]}
    best = min([eager, *verified], key=lambda b: timings[b.name])
    log.info("%sbackend auto: %s (probe forward %s)", where, best.name, ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in timings.items()))
    return best


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 of the model's parameters and buffers, for models loaded without a weights file hash."""
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().numpy().tobytes())
    return h.hexdigest()
