"""Batched inference: windows out of ring buffers → normalised batch → model → predictions.

Preprocessing is done by numba kernels (:mod:`rtpick.stream.dsp`) while the windows
are copied out of the buffers, for models whose ``annotate_batch_pre`` we know
(PhaseNet family: demean, then std or peak per component). Any other model gets
its own ``annotate_batch_pre`` hook. Post-processing always calls the model's own
``annotate_batch_post`` (transpose, blinding), so stacking sees exactly what
SeisBench's ``annotate`` would.

Forward worker (``worker=True``, ``inference.forward_worker``): :meth:`InferenceEngine.submit`
runs the forward on one thread owned by the engine, so the lane gathers the next
batch on the pipeline thread meanwhile; the lane gathers into two alternating
buffers from :meth:`InferenceEngine.host_batches`, page-locked (pinned) on CUDA so
the copy to the device is a DMA. The worker thread is the only one that runs the
model: it uses the backend's ``threads`` (torch's pool is process-wide; ONNX Runtime
sessions have their own), the pipeline thread only numba/Python. Without the worker
``submit`` runs the forward in the caller and returns it done.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtpick.inference import backends
from rtpick.stream import dsp


def numba_norm_for(model: torch.nn.Module) -> int | None:
    """The numba normalisation equal to the model's ``annotate_batch_pre``, or None."""
    import seisbench.models as sbm

    if type(model).annotate_batch_pre is not sbm.PhaseNet.annotate_batch_pre:
        return None
    if getattr(model, "norm_detrend", False):
        return None
    if getattr(model, "norm_amp_per_comp", False) or model.norm == "peak":
        return dsp.NORM_PEAK
    if model.norm == "std":
        return dsp.NORM_STD
    return None


class InferenceEngine:
    """Runs batches of windows through a SeisBench waveform model."""

    def __init__(self, model: torch.nn.Module, argdict: dict[str, Any], threads: int, device: str = "cpu",
                 backend: str = "eager", sha256: str = "", cache_dir: Path | None = None, label: str = "", worker: bool = False):
        """``backend``: see :mod:`rtpick.inference.backends` (verified here, eager if refused);
        ``sha256`` of the weights keys the exported-model cache (computed when not given);
        ``worker``: forwards run on the engine's own thread (module docstring)."""
        self.model = model
        self.argdict = argdict
        self.device = torch.device(device)
        self.norm = numba_norm_for(model)
        self.in_samples = int(model.in_samples)
        self.n_channels = len(model.component_order)
        torch.set_num_threads(threads)
        if backend != "eager" and not sha256:
            sha256 = backends.weights_sha256(model)
        self.backend = backends.select(backend, model, sha256, threads, cache_dir, self.device.type, label)
        self.worker = worker
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rtpick-forward-{label}") if worker else None

    def host_batches(self, batch_size: int) -> list[np.ndarray]:
        """The batch buffers a lane gathers into in turn: two with the worker (one fills while
        the other's forward runs), else one; pinned on CUDA (the numpy views keep their tensors)."""
        shape = (batch_size, self.n_channels, self.in_samples)
        pinned = self.device.type == "cuda"
        return [torch.zeros(shape, dtype=torch.float32, pin_memory=pinned).numpy() for _ in range(2 if self.worker else 1)]

    def submit(self, batch: np.ndarray) -> Future:
        """The forward of ``batch``: a future of (predictions, seconds); on the worker thread, else run here.

        With the worker, ``batch`` must stay untouched until the future is done.
        """
        if self._executor is not None:
            return self._executor.submit(self._timed_predict, batch)
        future: Future = Future()
        try:
            future.set_result(self._timed_predict(batch))
        except Exception as exc:  # noqa: BLE001 - handed to the lane, which counts the batch as failed
            future.set_exception(exc)
        return future

    def close(self) -> None:
        """Stop the worker thread (after its forward in flight, if any); a swapped-out engine."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def _timed_predict(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        preds = self.predict(batch)
        return preds, time.perf_counter() - t0

    def gather(self, data: np.ndarray, starts: np.ndarray, out: np.ndarray) -> None:
        """Copy (and, when known, normalise) windows of one group's ring samples (zeros where missing) into ``out`` rows."""
        norm = dsp.NORM_NONE if self.norm is None else self.norm
        dsp.gather_windows(data, starts, self.in_samples, norm, out)

    def gather_batch(self, data: np.ndarray, slots: np.ndarray, starts: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
        """Copy (and, when known, normalise) windows of many stations of a lane-level ring pool into ``out`` rows, in one call."""
        norm = dsp.NORM_NONE if self.norm is None else self.norm
        dsp.gather_batch(data, slots, starts, rows, self.in_samples, norm, out)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Forward a (B, channels, samples) batch; returns (B, samples, classes) float32."""
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)  # asynchronous from pinned memory; .cpu() below waits
            if self.norm is None:
                x = self.model.annotate_batch_pre(x, argdict=self.argdict)
            y = self.backend.forward(x)
            y = self.model.annotate_batch_post(y, piggyback=None, argdict=self.argdict)
            return y.float().cpu().numpy()
