"""Batched inference: windows out of ring buffers → normalised batch → model → predictions.

Preprocessing is done by numba kernels (:mod:`rtpick.stream.dsp`) while the windows
are copied out of the buffers, for models whose ``annotate_batch_pre`` we know
(PhaseNet family: demean, then std or peak per component). Any other model gets
its own ``annotate_batch_pre`` hook. Post-processing always calls the model's own
``annotate_batch_post`` (transpose, blinding), so stacking sees exactly what
SeisBench's ``annotate`` would.
"""

from __future__ import annotations

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
                 backend: str = "eager", sha256: str = "", cache_dir: Path | None = None, label: str = ""):
        """``backend``: see :mod:`rtpick.inference.backends` (verified here, eager if refused);
        ``sha256`` of the weights keys the exported-model cache (computed when not given)."""
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

    def gather(self, data: np.ndarray, have: np.ndarray, starts: np.ndarray, out: np.ndarray) -> None:
        """Copy (and, when known, normalise) windows of one group into ``out`` rows."""
        norm = dsp.NORM_NONE if self.norm is None else self.norm
        dsp.gather_windows(data, have, starts, self.in_samples, norm, out)

    def gather_batch(self, data: np.ndarray, have: np.ndarray, slots: np.ndarray, starts: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
        """Copy (and, when known, normalise) windows of many stations of a lane-level ring pool into ``out`` rows, in one call."""
        norm = dsp.NORM_NONE if self.norm is None else self.norm
        dsp.gather_batch(data, have, slots, starts, rows, self.in_samples, norm, out)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Forward a (B, channels, samples) batch; returns (B, samples, classes) float32."""
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            if self.norm is None:
                x = self.model.annotate_batch_pre(x, argdict=self.argdict)
            y = self.backend.forward(x)
            y = self.model.annotate_batch_post(y, piggyback=None, argdict=self.argdict)
            return y.float().cpu().numpy()
