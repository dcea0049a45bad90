"""Streaming trigger extraction equals ObsPy's trigger_onset (what SeisBench classify uses)."""

from __future__ import annotations

import numpy as np
import pytest
from obspy.signal.trigger import trigger_onset

from rtpick.picking.extract import TriggerPicker


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
