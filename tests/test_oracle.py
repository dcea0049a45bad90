"""The correctness oracle: streaming rtpick equals SeisBench offline annotate/classify.

Keep this test forever. Stacked P/S/noise probabilities must equal
``PhaseNet.annotate`` within 1e-4 wherever SeisBench produces output, and picks
must equal ``classify`` within one sample, for random packet sizes and random
arrival interleaving across channels. Channels that need resampling are held to
the same picks within two samples, and the engine to annotate within 1e-4 when
SeisBench is given rtpick's own resampled input.
"""

from __future__ import annotations

import zlib

import numpy as np
import obspy
import pytest
import torch

from rtpick.config import Config
from rtpick.inference.models import LoadedModel
from rtpick.stream.dsp import Resampler
from tests.oracle import compare_annotations, match_picks, shuffled_records, stream_through

FAMILIES_NATIVE = ["FNO.HH", "OKCFA.HH", "SIO.HH", "W35A.EH", "X34A.HH", "U32A.HH"]
FAMILIES_RESAMPLED = ["LC30.HH", "U32A.BH"]  # 200 Hz and 40 Hz


@pytest.fixture(scope="module")
def loaded(phasenet) -> LoadedModel:
    torch.set_num_threads(1)
    return LoadedModel(phasenet, "seisbench:PhaseNet/original", "1", "")


@pytest.fixture(scope="module")
def config() -> Config:
    cfg = Config()
    cfg.stream.component_wait_s = 60.0  # larger than the random skew the tests create
    cfg.inference.batch_size = 16
    return cfg


def family_stream(oklahoma_dir, family: str) -> obspy.Stream:
    station, band = family.split(".")
    return obspy.read(str(oklahoma_dir / f"{station}.{band}?.*"))


@pytest.mark.parametrize("family", FAMILIES_NATIVE)
def test_native_rate_equals_seisbench(oklahoma_dir, loaded, config, family):
    stream = family_stream(oklahoma_dir, family)
    rng = np.random.default_rng(zlib.crc32(family.encode()))
    stacked, picks, pipe = stream_through(config, loaded, shuffled_records(stream, rng))
    annotations = loaded.model.annotate(stream.copy())
    assert len(stacked) == 1
    compared, worst = compare_annotations(next(iter(stacked.values())), annotations, "NPS", 100.0)
    assert compared > 0
    assert worst < 1e-4, f"{family}: max |rtpick - annotate| = {worst}"
    theirs = loaded.model.classify(stream.copy()).picks
    extra, missing = match_picks(picks, theirs, tolerance_s=0.0101)
    assert not extra and not missing, f"{family}: extra picks {extra}, missing {missing}"
    assert pipe.stats.windows_dropped == 0


def test_gap_station_has_two_blocks(oklahoma_dir, loaded, config):
    """W35A's 20 s gap on all components splits the data into two blocks, as in SeisBench."""
    stream = family_stream(oklahoma_dir, "W35A.EH")
    stacked, _, pipe = stream_through(config, loaded, shuffled_records(stream, np.random.default_rng(5)))
    idx, _ = next(iter(stacked.values()))
    breaks = np.flatnonzero(np.diff(idx) > 1)
    assert len(breaks) == 1 and idx[breaks[0] + 1] - idx[breaks[0]] > 1900
    assert sum(f.counters["gaps"] for f in pipe.feeds.values()) == 3


def resampled_input(stream: obspy.Stream, fs: float) -> obspy.Stream:
    """What rtpick's streaming resampler feeds the model, as an ObsPy stream."""
    out = obspy.Stream()
    for trace in stream:
        r = Resampler(trace.stats.sampling_rate, fs)
        data = np.concatenate([r.push(trace.data.astype(np.float32)), r.finish()])
        header = {k: trace.stats[k] for k in ("network", "station", "location", "channel", "starttime")}
        out += obspy.Trace(data, header={**header, "sampling_rate": fs})
    return out


@pytest.mark.parametrize("family", FAMILIES_RESAMPLED)
def test_resampled_channels(oklahoma_dir, loaded, config, family):
    stream = family_stream(oklahoma_dir, family)
    stacked, picks, _ = stream_through(config, loaded, shuffled_records(stream, np.random.default_rng(11)))
    # same picks as classify on the original data within 2 samples
    theirs = loaded.model.classify(stream.copy()).picks
    extra, missing = match_picks(picks, theirs, tolerance_s=0.0201)
    assert not extra and not missing, f"{family}: extra {extra}, missing {missing}"
    # the engine equals annotate on rtpick's own resampled input
    annotations = loaded.model.annotate(resampled_input(stream, 100.0))
    _, worst = compare_annotations(next(iter(stacked.values())), annotations, "NPS", 100.0)
    assert worst < 1e-4, f"{family}: max |rtpick - annotate(resampled)| = {worst}"


def synthetic_stream(rng: np.random.Generator) -> obspy.Stream:
    """Three stations of noise with P/S-like wavelets, a one-component gap and a vertical-only station."""
    stream = obspy.Stream()
    t0 = obspy.UTCDateTime("2024-03-01T00:00:00.003")
    n = 100 * 240
    t = np.arange(n) / 100.0
    for s, name in enumerate(["SYN1", "SYN2", "SYN3"]):
        for comp in ("Z", "N", "E") if name != "SYN3" else ("Z",):
            x = rng.normal(0, 1.0, n)
            for arrival in (50.0 + 7 * s, 140.0 + 3 * s):
                for delay, amp, f in ((0.0, 30.0, 8.0), (6.0 + s, 60.0, 4.0)):
                    tau = t - arrival - delay
                    x += amp * np.exp(-((tau / 0.6) ** 2)) * np.sin(2 * np.pi * f * tau) * (tau > -1.5)
            trace = obspy.Trace((x * 1000).astype(np.int32), header={"network": "XX", "station": name, "channel": "HH" + comp, "sampling_rate": 100.0, "starttime": t0 + 0.001 * s})
            if name == "SYN2" and comp == "N":  # gap in one component only: zeros, not a block end
                stream += trace.slice(t0, t0 + 90)
                stream += trace.slice(t0 + 100, t0 + 240)
            else:
                stream += trace
    return stream


@pytest.mark.parametrize("seed, batch", [(1, 16), (2, 16), (1, 4)])
def test_synthetic_streams_equal_seisbench(loaded, seed, batch):
    """Batch 16: a station's staged records are written per two windows (SeisBench's 15 s stride: two such
    writes may wait in the queue); batch 4: per four, the most its ring holds (the other stations' writes
    fill two batches meanwhile)."""
    config = Config()
    config.stream.component_wait_s = 60.0
    config.inference.batch_size = batch
    rng = np.random.default_rng(seed)
    stream = synthetic_stream(rng)
    stacked, picks, pipe = stream_through(config, loaded, shuffled_records(stream, rng))
    lane = pipe.lanes["default"]
    assert lane.stage_extra == (1 if batch == 16 else 3) * lane.step
    for key, values in stacked.items():
        station = key.split(".")[1]
        sub = stream.select(station=station)
        annotations = loaded.model.annotate(sub.copy())
        compared, worst = compare_annotations(values, annotations, "NPS", 100.0)
        assert compared > 0 and worst < 1e-4, f"{key}: max diff {worst}"
    theirs = loaded.model.classify(stream.copy()).picks
    assert len(theirs) > 0, "synthetic events should produce picks"
    extra, missing = match_picks(picks, theirs, tolerance_s=0.0101)
    assert not extra and not missing, f"extra {extra}, missing {missing}"


def test_max_stacking_and_blinding(oklahoma_dir, loaded):
    """Other stacking options follow SeisBench too."""
    cfg = Config()
    cfg.inference.stacking = "max"
    cfg.inference.blinding_samples = (250, 250)
    stream = family_stream(oklahoma_dir, "OKCFA.HH")
    stacked, picks, _ = stream_through(cfg, loaded, shuffled_records(stream, np.random.default_rng(3), max_jitter_s=1.0))
    annotations = loaded.model.annotate(stream.copy(), stacking="max", blinding=(250, 250))
    _, worst = compare_annotations(next(iter(stacked.values())), annotations, "NPS", 100.0)
    assert worst < 1e-4
    theirs = loaded.model.classify(stream.copy(), stacking="max", blinding=(250, 250)).picks
    extra, missing = match_picks(picks, theirs, tolerance_s=0.0101)
    assert not extra and not missing
