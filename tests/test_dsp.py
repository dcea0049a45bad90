"""Numba kernels against their references: PhaseNet's own normalisation, ObsPy, numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtpick.stream import dsp
from rtpick.stream.buffers import GroupBuffer, RingPool

POOL = RingPool(3, 3, 1, slots=1)  # the stacking sums' dtypes of a lane


@pytest.mark.parametrize("norm", ["std", "peak"])
def test_gather_windows_equals_phasenet_annotate_batch_pre(norm):
    import seisbench.models as sbm

    model = sbm.PhaseNet(phases="NPS", norm=norm)
    rng = np.random.default_rng(0)
    cap, n = 10_000, 3001
    data = (rng.normal(0, 1e4, (3, cap)) + rng.normal(0, 1e5, (3, 1))).astype(np.float32)
    have = np.ones((3, cap), dtype=bool)
    have[1, 9000:9500] = False  # missing samples read as zeros
    data[~have] = 0.0  # as the ring holds them (ring_clear)
    starts = np.array([0, 4000, 8500], dtype=np.int64)  # the last window wraps around the ring
    out = np.empty((3, 3, n), dtype=np.float32)
    dsp.gather_windows(data, starts, n, dsp.NORM_STD if norm == "std" else dsp.NORM_PEAK, out)
    raw = np.stack([np.where(have[:, (s + np.arange(n)) % cap], data[:, (s + np.arange(n)) % cap], 0) for s in starts]).astype(np.float32)
    ref = model.annotate_batch_pre(torch.from_numpy(raw), {}).numpy()
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-4)


def _gather_reference(data, have, slots, starts, n, norm):
    """NumPy float64: the windows with missing samples zeroed, demeaned, over std (ddof 1) or peak plus 1e-10."""
    cap = data.shape[2]
    out = []
    for slot, start in zip(slots, starts):
        idx = (start + np.arange(n)) % cap
        x = np.where(have[slot][:, idx], data[slot][:, idx], 0).astype(np.float64)
        if norm != dsp.NORM_NONE:
            x = x - x.mean(axis=1, keepdims=True)
            scale = x.std(axis=1, ddof=1, keepdims=True) if norm == dsp.NORM_STD else np.abs(x).max(axis=1, keepdims=True)
            x = x / (scale + 1e-10)
        out.append(x)
    return np.array(out, dtype=np.float32)


@pytest.mark.parametrize("norm", [dsp.NORM_STD, dsp.NORM_PEAK, dsp.NORM_NONE])
def test_gather_batch_equals_numpy_reference(norm):
    rng = np.random.default_rng(2)
    stations, cap, n = 4, 700, 300
    data = (rng.normal(0, 1e3, (stations, 3, cap)) + rng.normal(0, 1e5, (stations, 3, 1))).astype(np.float32)
    have = rng.random((stations, 3, cap)) > 0.05
    have[1, 2, :] = False  # a missing component: zeros, scale 1e-10, output zeros
    have[2, 0, 650:] = False  # a gap across the wrap
    data[3, 1, 100] = np.nan  # a NaN sample turns its component NaN, as in SeisBench
    data[3, 2, 50] = 2e6  # a spike far from the window's first value (the shift of the one-pass variance)
    data[0, 1] = 1e7 + rng.normal(0, 3, cap)  # a large offset over little signal
    data[~have] = 0.0  # the ring holds zeros where it has no data (ring_clear)
    slots = np.array([0, 1, 2, 2, 0, 3, 3, 1], dtype=np.int64)
    # inside, wrapping, first sample the ring's last, ending exactly at the ring's end, absolute starts of later laps
    starts = np.array([10, 600, cap - 1, cap - n, 5 * cap + 420, 20, 40 + 2 * cap, 3 * cap], dtype=np.int64)
    rows = np.array([7, 0, 3, 1, 6, 2, 5, 4], dtype=np.int64)
    out = np.full((8, 3, n), -7.0, dtype=np.float32)
    dsp.gather_batch(data, slots, starts, rows, n, norm, out)
    ref = _gather_reference(data, have, slots, starts, n, norm)
    np.testing.assert_allclose(out[rows], ref, rtol=1e-6, atol=1e-6)
    single = np.empty((len(slots), 3, n), dtype=np.float32)
    dsp.gather_windows(data[2], starts[slots == 2], n, norm, single[:2])
    np.testing.assert_array_equal(single[:2], out[rows[slots == 2]])


def test_ring_holds_zeros_where_it_has_no_data():
    """Windows are gathered from the ring's samples alone: a hole, a component given up and a restart leave zeros there, not an older lap's data."""
    buf = GroupBuffer("XX.A..HH?", 3, 1000, 100.0)
    for comp in range(3):
        buf.write(comp, 0, np.full(1000, 7.0, dtype=np.float32), 0.0)  # the whole ring holds data
    buf.write(0, 1300, np.ones(100, dtype=np.float32), 0.0)  # component 0: a hole from 1000 to 1300
    buf.write(1, 1000, np.ones(450, dtype=np.float32), 0.0)
    buf.expire(1400)  # component 2 given up to 1400, component 1 from 1450 on only data it wrote
    assert not buf.data[~buf.have].any()
    assert (buf.have[0, :300] == False).all() and (buf.have[2, :400] == False).all()  # noqa: E712
    assert (buf.data[0, 300:400] == 1.0).all() and (buf.data[2, 400:] == 7.0).all()
    buf.reset()
    assert not buf.data.any() and not buf.have.any()


def _stack_reference(acc, cnt, slots, starts, skips, rows, preds, use_max):
    """Plain NumPy in the same per-sample order and dtype as the kernel, so the sums must be bit-identical."""
    cap = acc.shape[2]
    for slot, start, skip, row in zip(slots, starts, skips, rows):
        pred = preds[row, skip:]
        idx = (start + skip + np.arange(len(pred))) % cap
        for k in range(pred.shape[1]):
            v = pred[:, k]
            ok = ~np.isnan(v)
            i, v = idx[ok], v[ok]
            if use_max:
                take = (cnt[slot, k, i] == 0) | (v > acc[slot, k, i])
                acc[slot, k, i[take]] = v[take]
            else:
                acc[slot, k, i] += v.astype(acc.dtype)
            cnt[slot, k, i] += 1


def _take_reference(acc, cnt, start, stop, use_max):
    idx = np.arange(start, stop) % acc.shape[1]
    c = cnt[:, idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        value = acc[:, idx].astype(np.float64) if use_max else acc[:, idx] / c
    return np.where(c == 0, np.nan, value)


@pytest.mark.parametrize("use_max", [False, True], ids=["avg", "max"])
@pytest.mark.parametrize("layout", ["class-major", "sample-major"])  # PhaseNet's transposed view, or a contiguous array
@pytest.mark.parametrize("dtypes", [(POOL.acc.dtype, POOL.cnt.dtype), (np.float64, np.int32)], ids=["pool", "float64"])
def test_stack_batch_and_take_stacked_equal_numpy_reference(use_max, layout, dtypes):
    rng = np.random.default_rng(3)
    stations, classes, cap, n, b = 3, 3, 500, 200, 9
    raw = rng.random((b, classes, n), dtype=np.float32)
    raw[:, :, :20] = np.nan  # blinded edges are not counted
    raw[:, :, -20:] = np.nan
    raw[4, 1, 100:110] = np.nan  # one class only
    preds = raw.transpose(0, 2, 1) if layout == "class-major" else np.ascontiguousarray(raw.transpose(0, 2, 1))
    assert preds.shape == (b, n, classes)
    slots = np.array([0, 0, 0, 1, 1, 2, 2, 2, 0], dtype=np.int64)  # several windows of a station in one batch, in order
    starts = np.array([0, 100, 200, 400, 450, 2 * cap - 50, 2 * cap + 50, 2 * cap - 150, 300], dtype=np.int64)
    skips = np.array([0, 0, 30, 0, 250, 0, 0, n, 120], dtype=np.int64)  # 250 > n - 20: nothing; n: the whole window skipped
    rows = rng.permutation(b).astype(np.int64)
    acc, cnt = np.zeros((stations, classes, cap), dtypes[0]), np.zeros((stations, classes, cap), dtypes[1])
    ref_acc, ref_cnt = acc.copy(), cnt.copy()
    dsp.stack_batch(acc, cnt, slots, starts, skips, rows, preds, use_max)
    _stack_reference(ref_acc, ref_cnt, slots, starts, skips, rows, preds, use_max)
    np.testing.assert_array_equal(cnt, ref_cnt)
    np.testing.assert_array_equal(acc, ref_acc)  # bit-identical: same operations, same order per sample
    assert cnt.max() >= 2  # windows overlapped
    for slot, (start, stop) in [(0, (0, 480)), (1, (380, 700)), (2, (2 * cap - 200, 2 * cap + 300))]:  # the last wraps
        out = np.full((classes, stop - start), -1.0)
        expected = _take_reference(acc[slot], cnt[slot], start, stop, use_max)
        dsp.take_stacked(acc[slot], cnt[slot], start, stop, use_max, out)
        np.testing.assert_array_equal(out, expected)
        idx = np.arange(start, stop) % cap
        assert (acc[slot][:, idx] == 0).all() and (cnt[slot][:, idx] == 0).all()  # slots cleared for reuse
    assert np.isnan(out).any() and not np.isnan(out).all()
    dsp.stack_batch(acc, cnt, slots[:1], starts[:1], skips[:1], rows[:1], preds, use_max)
    out = np.empty((classes, 2 * cap + 30))  # longer than the ring: the second lap reads cleared slots
    expected = _take_reference(acc[0], cnt[0], 0, 2 * cap + 30, use_max)
    dsp.take_stacked(acc[0], cnt[0], 0, 2 * cap + 30, use_max, out)
    np.testing.assert_array_equal(out[:, :cap], expected[:, :cap])
    assert np.isnan(out[:, cap:]).all() and not np.isnan(out[:, :cap]).all() and (cnt[0] == 0).all()


def test_stack_and_take_average_and_max():
    acc = np.zeros((1, 2, 50), dtype=POOL.acc.dtype)
    cnt = np.zeros((1, 2, 50), dtype=POOL.cnt.dtype)
    a = np.full((1, 20, 2), 0.2, dtype=np.float32)
    b = np.full((1, 20, 2), 0.6, dtype=np.float32)
    b[0, :5] = np.nan  # blinded samples are not counted
    one = np.zeros(1, dtype=np.int64)
    dsp.stack_batch(acc, cnt, one, np.array([45]), one, one, a, False)  # wraps around the ring
    dsp.stack_batch(acc, cnt, one, np.array([55]), one, one, b, False)
    out = np.empty((2, 30), dtype=np.float64)
    dsp.take_stacked(acc[0], cnt[0], 45, 75, False, out)
    assert np.allclose(out[0, :10], 0.2) and np.allclose(out[0, 10:15], 0.2)
    assert np.allclose(out[0, 15:20], 0.4) and np.allclose(out[0, 20:30], 0.6)
    assert (cnt == 0).all() and (acc == 0).all()  # slots cleared for reuse
    dsp.stack_batch(acc, cnt, one, one, one, one, a, True)
    dsp.stack_batch(acc, cnt, one, one, one, one, np.full((1, 20, 2), 0.1, dtype=np.float32), True)
    out = np.empty((2, 20), dtype=np.float64)
    dsp.take_stacked(acc[0], cnt[0], 0, 20, True, out)
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


@pytest.mark.parametrize("first", [0, 7, 95, 100, 1234])
def test_ring_put_wraps_like_modular_indexing(first):
    cap = 100
    data = np.zeros((3, cap), dtype=np.float32)
    have = np.zeros((3, cap), dtype=np.bool_)
    values = np.arange(1, 41, dtype=np.float32)
    dsp.ring_put(data, have, np.array([[1, first, 0, 40]]), values)
    idx = (first + np.arange(40)) % cap
    assert np.array_equal(data[1, idx], values) and have[1, idx].all() and have.sum() == 40 and not data[[0, 2]].any()


def test_ring_put_writes_pieces_in_order_as_one_call_each():
    """Several channels' pieces of one values array in one call equal one call per piece (wraps included)."""
    cap = 100
    values = np.arange(1, 301, dtype=np.float32)
    spans = np.array([[0, 95, 0, 30], [2, 10, 30, 100], [1, 1234, 130, 70], [0, 125, 200, 50]])  # the last continues the first
    one = (np.zeros((3, cap), dtype=np.float32), np.zeros((3, cap), dtype=np.bool_))
    each = (np.zeros((3, cap), dtype=np.float32), np.zeros((3, cap), dtype=np.bool_))
    dsp.ring_put(*one, spans, values)
    for span in spans:
        dsp.ring_put(*each, span[None, :], values)
    assert np.array_equal(one[0], each[0]) and np.array_equal(one[1], each[1])
    assert np.array_equal(one[0][2, (10 + np.arange(100)) % cap], values[30:130]) and one[1][2].all()


@pytest.mark.parametrize("cap", [64, 1000])  # 1000: the scan's chunks of 256 samples, and a wrap inside one
def test_ring_first_finds_block_edges_across_the_wrap(cap):
    rng = np.random.default_rng(3)
    have = rng.random((3, cap)) < 0.15
    have[:, 10:20] = True
    covered = have.any(axis=0)
    for start in (0, 5, 50, cap - 1, cap * 7 + 30, cap - 300):
        for stop in (start, start + 1, start + 20, start + cap):
            seq = covered[np.arange(start, stop) % cap]
            for want in (True, False):
                hits = np.flatnonzero(seq == want)
                expected = int(hits[0]) if hits.size else stop - start
                assert dsp.ring_first(have, start, stop, want) == expected, (start, stop, want)


@pytest.mark.parametrize("first,n", [(0, 10), (95, 10), (1234, 100), (50, 250)])
def test_ring_clear_wraps_and_clears_at_most_the_ring(first, n):
    cap = 100
    have = np.ones((2, cap), dtype=np.bool_)
    data = np.full((2, cap), 5.0, dtype=np.float32)
    dsp.ring_clear(data, have, 1, first, min(n, cap))
    cleared = (first + np.arange(min(n, cap))) % cap
    assert not have[1, cleared].any() and have[1].sum() == cap - len(cleared) and have[0].all()
    assert not data[1, cleared].any() and (data[~have] == 0).all() and (data[have] == 5.0).all()  # zeros where missing


def test_ring_first_finds_an_edge_past_whole_chunks():
    cap = 1000
    have = np.ones((3, cap), dtype=np.bool_)
    have[:, 700] = False  # the only hole
    assert dsp.ring_first(have, 0, cap, False) == 700
    assert dsp.ring_first(have, 800, 800 + cap, False) == 900  # across the wrap
    assert dsp.ring_first(have, 701, 1699, False) == cap - 2  # none: the whole range
    have[:] = False
    have[2, 901] = True  # one component's only sample
    assert dsp.ring_first(have, 0, cap, True) == 901
    assert dsp.ring_first(have, 950, 950 + cap, True) == cap - 49


def test_group_buffer_first_skips_the_scan_only_where_a_segment_spans():
    """``GroupBuffer.first`` answers from its segments where one spans the range: always what the ring scan finds."""
    from rtpick.stream.buffers import GroupBuffer

    rng = np.random.default_rng(11)
    cap = 200
    buf = GroupBuffer("XX.A..HH?", 3, cap, 100.0)
    shortcuts = 0
    for _ in range(400):
        comp = int(rng.integers(3))
        filled = buf.filled_to[comp]
        start = (filled if filled is not None else 1000) + int(rng.choice([0, 0, 0, 0, 5, 37, -3, 250]))
        buf.write(comp, start, np.ones(int(rng.integers(1, 90)), dtype=np.float32), 0.0)
        if rng.random() < 0.1:
            buf.expire(buf.lead - int(rng.integers(0, 30)))
        for _ in range(5):
            stop = buf.lead - int(rng.integers(0, 20))
            first = max(stop - int(rng.integers(1, cap + 1)), buf.lead - cap)
            if first >= stop:
                continue
            scan = int(dsp.ring_first(buf.have, first, stop, False))
            shortcuts += buf._spanned(first, stop)
            assert buf.first(first, stop, covered=False) == scan
    assert shortcuts > 100
