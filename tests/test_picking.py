"""Streaming trigger extraction equals ObsPy's trigger_onset (what SeisBench classify uses)."""

from __future__ import annotations

import numpy as np
import pytest
from obspy.signal.trigger import trigger_onset

from rtpick.picking.extract import PhasePickers, ScanScratch, TriggerPicker
from rtpick.stream import dsp
from rtpick.stream.buffers import RingPool


@pytest.mark.parametrize("seed", range(5))
def test_chunked_scan_equals_trigger_onset(seed):
    rng = np.random.default_rng(seed)
    x = np.clip(np.convolve(rng.random(5000) ** 8, np.hanning(40), "same") / 4, 0, 1)
    threshold = 0.3
    ref = trigger_onset(x, threshold, threshold / 2)
    picker = TriggerPicker(threshold)
    got, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 400))
        got += picker.scan(x[i:i + n], 1000 + i)
        i += n
    got += picker.close()
    assert [(t.start - 1000, t.end - 1000) for t in got] == [tuple(r) for r in ref]
    for trig in got:
        seg = x[trig.start - 1000: trig.end - 1000 + 1]
        assert trig.peak - 1000 == trig.start - 1000 + int(np.argmax(seg))
        assert trig.peak_value == pytest.approx(seg.max())
        assert trig.spread_samples >= 0


def test_trigger_open_at_block_end_closes_at_last_sample():
    picker = TriggerPicker(0.5)
    assert picker.scan(np.array([0.1, 0.6, 0.9, 0.8]), 10) == []
    (trig,) = picker.close()
    assert (trig.start, trig.end, trig.peak) == (11, 13, 12)
    assert picker.close() == []


def scan_each(pickers: dict[int, TriggerPicker], values: np.ndarray, base: int, skips: dict[int, int] | None) -> list:
    """The reference: each phase's own picker over its row, from its skip (clipped to the range) on, in class order."""
    n = values.shape[1]
    out = []
    for k, picker in pickers.items():
        skip = min(max(0, (skips or {}).get(k, 0)), n)
        out += [(k, t) for t in picker.scan(np.ascontiguousarray(values[k, skip:]), base + skip)]
    return out


@pytest.mark.parametrize("seed", range(3))
def test_station_pickers_scan_all_phases_like_one_picker_each(seed):
    """One call for all phases (with per-phase skips of a resumed block) gives each phase's own triggers, in class order."""
    rng = np.random.default_rng(seed)
    values = np.clip(np.stack([np.convolve(rng.random(3000) ** 8, np.hanning(40), "same") / 4 for _ in range(3)]), 0, 1)
    values = values.astype(np.float32).astype(np.float64)  # what float32 stacking sums hold
    thresholds = {0: 0.3, 2: 0.2}
    station = PhasePickers(thresholds)
    single = {k: TriggerPicker(thr) for k, thr in thresholds.items()}
    acc = np.zeros((3, 3500), dtype=np.float32)  # each sample stacked once: its value is its sum
    cnt = np.zeros((3, 3500), dtype=np.int16)
    scratch = ScanScratch()
    expected, got, i = [], [], 0
    skips = {0: 17, 2: 0}
    while i < values.shape[1]:
        n = int(rng.integers(1, 700))
        chunk = values[:, i:i + n]
        expected += scan_each(single, chunk, 500 + i, skips if i == 0 else None)
        acc[:, 500 + i:500 + i + chunk.shape[1]] = chunk
        cnt[:, 500 + i:500 + i + chunk.shape[1]] = 1
        got += station.take_scan(acc, cnt, 500 + i, 500 + i + chunk.shape[1], False, scratch, skips if i == 0 else None)[1]
        i += n
    assert got and got == expected
    assert all(station[k].open_since == single[k].open_since for k in thresholds)
    station[2].threshold = 0.25  # a reload changes a threshold in place
    station.reset()  # a restart forgets trigger state, not thresholds
    assert [station[k].threshold for k in thresholds] == [0.3, 0.25] and all(station[k].open_since is None for k in thresholds)


@pytest.mark.parametrize("use_max", [False, True], ids=["avg", "max"])
def test_take_scan_equals_take_stacked_then_scan(use_max):
    """The lane's one-call path gives the values, cleared sums, triggers and picker states of take_stacked + each phase's picker.

    Without ``keep`` only the scanned classes' values are computed; every class's sums are cleared.
    Ranges of varying length (the reused scratch is sometimes longer than needed),
    one that wraps the ring, one longer than the ring, a resumed range with per-phase
    skips, and kept values (the tap's own array) against scratch values.
    """
    rng = np.random.default_rng(7)
    classes, cap = 3, 700
    thresholds = {0: 0.3, 2: 0.2}
    fused, separate = PhasePickers(thresholds), {k: TriggerPicker(thr) for k, thr in thresholds.items()}
    scratch = ScanScratch()
    acc = np.zeros((classes, cap), dtype=RingPool(3, classes, 1, slots=1).acc.dtype)
    cnt = np.zeros((classes, cap), dtype=np.int16)
    pos, got, expected = 0, [], []
    for n, skips, keep in [(400, None, False), (90, None, True), (500, None, False), (650, {0: 40, 2: 700}, False),
                           (cap + 60, None, True), (30, {0: -5}, False), (320, None, False)]:
        idx = np.arange(pos, pos + n) % cap
        if n <= cap:  # what stacking left there: sums of up to three windows, some samples counted by none
            mean = np.clip(np.stack([np.convolve(rng.random(n + 40) ** 8, np.hanning(40), "same")[20:20 + n] / 4 for _ in range(classes)]), 0, 1)
            count = rng.integers(0, 4, (classes, n))
            acc[:, idx] = mean if use_max else mean * count
            cnt[:, idx] = count
        acc2, cnt2 = acc.copy(), cnt.copy()
        values = np.empty((classes, n))
        dsp.take_stacked(acc2, cnt2, pos, pos + n, use_max, values)
        expected += scan_each(separate, values, pos, skips)
        kept, triggers = fused.take_scan(acc, cnt, pos, pos + n, use_max, scratch, skips, keep=keep)
        got += triggers
        np.testing.assert_array_equal(acc, acc2)  # the range is cleared alike
        np.testing.assert_array_equal(cnt, cnt2)
        if keep:
            assert kept.shape == (classes, n) and kept.flags.c_contiguous and kept.base is not scratch.values
            np.testing.assert_array_equal(kept, values)
        else:
            assert kept is None  # the scanned classes' values only: class 1 is only cleared (checked above)
            scanned = list(thresholds)
            np.testing.assert_array_equal(scratch.values[:classes * n].reshape(classes, n)[scanned], values[scanned])
        np.testing.assert_array_equal(fused.states, np.stack([picker.state for picker in separate.values()]))
        pos += n
    assert len(expected) > 3 and got == expected
    assert len(scratch.values) >= classes * 650  # grown once for the longest unkept range, then reused
