"""Data sets for adaptation: npz and SeisBench formats, event splits, refusal of bad input before training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rtpick.adapt.datasets import (
    P_COL,
    S_COL,
    DatasetError,
    TraceSet,
    load_dataset,
    save_seisbench,
    split_by_event,
    validate,
)
from rtpick.adapt.velocity import LayeredModel

from .conftest import NCEDC_NPZ, OKLAHOMA


def _tiny(n=6, length=3200, rate=100.0) -> TraceSet:
    rng = np.random.default_rng(0)
    meta = pd.DataFrame({"trace_name": [f"t{i}" for i in range(n)], "source_id": [f"ev{i // 2}" for i in range(n)], P_COL: 1000.0, S_COL: 1300.0})
    return TraceSet(rng.standard_normal((n, 3, length)).astype(np.float32), meta, rate, "tiny")


def test_npz_loads_with_labels_and_snr():
    ts = load_dataset(NCEDC_NPZ)
    assert ts.waveforms.shape == (154, 3, 9001)
    assert ts.sampling_rate == 100.0
    assert np.isfinite(ts.metadata[P_COL]).all()
    assert ts.metadata["trace_snr_db"].median() > 10


def test_seisbench_round_trip(tmp_path):
    ts = split_by_event(_tiny(), seed=1)
    save_seisbench(ts, tmp_path / "ds")
    back = load_dataset(tmp_path / "ds")
    np.testing.assert_allclose(back.waveforms, ts.waveforms)
    assert list(back.metadata[P_COL]) == list(ts.metadata[P_COL])
    assert list(back.metadata["split"]) == list(ts.metadata["split"])


def test_split_keeps_events_together():
    ts = split_by_event(_tiny(n=40), fractions=(0.5, 0.25, 0.25), seed=3)
    per_event = ts.metadata.groupby("source_id")["split"].nunique()
    assert (per_event == 1).all()
    assert set(ts.metadata["split"]) == {"train", "dev", "test"}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda ts: setattr(ts, "metadata", ts.metadata.drop(columns=[S_COL])), "missing pick column 'trace_s_arrival_sample'"),
        (lambda ts: setattr(ts, "sampling_rate", 40.0), "sampling rate 40 Hz but the model expects 100 Hz"),
        (lambda ts: ts.waveforms.__setitem__((2, 0, 10), np.nan), "contain NaN"),
        (lambda ts: ts.metadata.__setitem__("split", "train"), "split 'dev' is empty"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(mutate, message):
    ts = split_by_event(_tiny(), seed=0)
    mutate(ts)
    with pytest.raises(DatasetError, match=message):
        validate(ts, sampling_rate=100.0, min_samples=3001, splits=("train", "dev", "test"))


def test_missing_pick_column_in_seisbench_folder(tmp_path):
    ts = _tiny()
    ts.metadata = ts.metadata.drop(columns=[P_COL])
    save_seisbench(ts, tmp_path / "nop")
    with pytest.raises(DatasetError, match="missing pick column 'trace_p_arrival_sample'"):
        load_dataset(tmp_path / "nop")


def test_oklahoma_velocity_model_gives_plausible_times():
    model = LayeredModel.from_nd(OKLAHOMA / "Oklahoma.nd")
    tp, _ = model.first_arrival("P", 5.0, np.array([10.0, 100.0]))
    ts, _ = model.first_arrival("S", 5.0, np.array([10.0, 100.0]))
    assert 1.5 < tp[0] < 3.0 and 15 < tp[1] < 18  # ~6 km/s crust
    assert np.all(ts / tp > 1.6) and np.all(ts / tp < 1.9)
