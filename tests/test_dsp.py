"""Numba kernels against their references: PhaseNet's own normalisation, ObsPy, numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtpick.stream import dsp


@pytest.mark.parametrize("norm", ["std", "peak"])
def test_gather_windows_equals_phasenet_annotate_batch_pre(norm):
    import seisbench.models as sbm

    model = sbm.PhaseNet(phases="NPS", norm=norm)
    rng = np.random.default_rng(0)
    cap, n = 10_000, 3001
    data = (rng.normal(0, 1e4, (3, cap)) + rng.normal(0, 1e5, (3, 1))).astype(np.float32)
    have = np.ones((3, cap), dtype=bool)
    have[1, 9000:9500] = False  # missing samples read as zeros
    starts = np.array([0, 4000, 8500], dtype=np.int64)  # the last window wraps around the ring
    out = np.empty((3, 3, n), dtype=np.float32)
    dsp.gather_windows(data, have, starts, n, dsp.NORM_STD if norm == "std" else dsp.NORM_PEAK, out)
    raw = np.stack([np.where(have[:, (s + np.arange(n)) % cap], data[:, (s + np.arange(n)) % cap], 0) for s in starts]).astype(np.float32)
    ref = model.annotate_batch_pre(torch.from_numpy(raw), {}).numpy()
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)


def test_stack_and_take_average_and_max():
    acc = np.zeros((2, 50), dtype=np.float64)
    cnt = np.zeros((2, 50), dtype=np.int32)
    a = np.full((20, 2), 0.2, dtype=np.float32)
    b = np.full((20, 2), 0.6, dtype=np.float32)
    b[:5] = np.nan  # blinded samples are not counted
    dsp.stack_window(acc, cnt, 45, a, False)  # wraps around the ring
    dsp.stack_window(acc, cnt, 55, b, False)
    out = np.empty((2, 30), dtype=np.float64)
    dsp.take_stacked(acc, cnt, 45, 75, False, out)
    assert np.allclose(out[0, :10], 0.2) and np.allclose(out[0, 10:15], 0.2)
    assert np.allclose(out[0, 15:20], 0.4) and np.allclose(out[0, 20:30], 0.6)
    assert (cnt == 0).all() and (acc == 0).all()  # slots cleared for reuse
    dsp.stack_window(acc, cnt, 0, a, True)
    dsp.stack_window(acc, cnt, 0, np.full((20, 2), 0.1, dtype=np.float32), True)
    out = np.empty((2, 20), dtype=np.float64)
    dsp.take_stacked(acc, cnt, 0, 20, True, out)
    assert np.allclose(out, 0.2)


@pytest.mark.parametrize("fs_in", [200.0, 40.0, 50.0])
def test_resampler_is_chunk_invariant_and_accurate(fs_in):
    rng = np.random.default_rng(1)
    t = np.arange(int(fs_in * 60)) / fs_in
    x = (np.sin(2 * np.pi * 1.5 * t) + 0.5 * np.sin(2 * np.pi * 3.0 * t)).astype(np.float32)
    whole = dsp.Resampler(fs_in, 100.0)
    ref = np.concatenate([whole.push(x), whole.finish()])
    pieces = dsp.Resampler(fs_in, 100.0)
    out, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 300))
        out.append(pieces.push(x[i:i + n]))
        i += n
    out.append(pieces.finish())
    got = np.concatenate(out)
    np.testing.assert_array_equal(got, ref)
    assert len(got) == (len(x) - 1) * 100 // int(fs_in) + 1
    ty = np.arange(len(got)) / 100.0
    truth_gain = {200.0: 1.0, 40.0: None, 50.0: None}[fs_in]
    mid = slice(300, len(got) - 300)
    if truth_gain:  # decimation keeps the low band untouched
        expected = np.sin(2 * np.pi * 1.5 * ty) + 0.5 * np.sin(2 * np.pi * 3.0 * ty)
        assert np.abs(got[mid] - expected[mid]).max() < 1e-3
    else:  # ObsPy's Hann-tapered resampling: gain 0.5 * (1 + cos(pi f / f_nyquist_in)) per component
        nyq = fs_in / 2
        g1, g2 = (0.5 * (1 + np.cos(np.pi * f / nyq)) for f in (1.5, 3.0))
        expected = g1 * np.sin(2 * np.pi * 1.5 * ty) + 0.5 * g2 * np.sin(2 * np.pi * 3.0 * ty)
        assert np.abs(got[mid] - expected[mid]).max() < 5e-3


def test_resampler_rejects_irrational_ratio():
    with pytest.raises(ValueError, match="rational"):
        dsp.Resampler(np.pi * 10, 100.0)
