"""Bad input is counted, logged once per cause with the stream id, and everything else goes on."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch

from rtpick.config import Config
from rtpick.inference.models import LoadedModel
from rtpick.ingest.replay import ReplayIngest
from rtpick.pipeline import Pipeline
from rtpick.stream.buffers import ChannelFeed, GroupBuffer
from rtpick.types import NS_PER_S, Record


@pytest.fixture(scope="module")
def loaded(phasenet) -> LoadedModel:
    torch.set_num_threads(1)
    return LoadedModel(phasenet, "seisbench:PhaseNet/original", "1", "")


def okcfa_records(oklahoma_dir):
    return list(ReplayIngest([str(p) for p in sorted(oklahoma_dir.glob("OKCFA.*"))]).records())


def run(loaded, records, config=None):
    pipe = Pipeline(config or Config(), loaded)
    picks = []
    for rec in records:
        picks += pipe.feed(rec)
    picks += pipe.flush()
    return pipe, picks


def test_duplicates_and_overlaps_change_nothing(oklahoma_dir, loaded):
    records = okcfa_records(oklahoma_dir)
    _, clean = run(loaded, records)
    noisy = []
    for k, rec in enumerate(records):
        noisy.append(rec)
        if k % 7 == 3:
            noisy.append(rec)  # exact duplicate
        if k % 11 == 5 and len(rec.samples) > 100:  # overlapping re-send of the second half
            half = len(rec.samples) // 2
            noisy.append(Record(rec.stream_id, rec.start_ns + round(half * NS_PER_S / rec.sampling_rate), rec.sampling_rate, rec.samples[half:]))
    pipe, picks = run(loaded, noisy)
    assert [(p.phase, p.time_ns) for p in picks] == [(p.phase, p.time_ns) for p in clean]
    counters = {k: sum(f.counters[k] for f in pipe.feeds.values()) for k in ("duplicates", "overlaps")}
    assert counters["duplicates"] > 50


def test_rate_change_gap_and_late_packets_are_counted(loaded, caplog):
    rng = np.random.default_rng(0)
    t0 = 1_600_000_000 * NS_PER_S
    records = []
    for k in range(30):  # 100 Hz, then the channel switches to 50 Hz
        rate = 100.0 if k < 15 else 50.0
        start = t0 + k * 4 * NS_PER_S
        records.append(Record("XX.ABC..HHZ", start, rate, rng.normal(0, 100, int(4 * rate)).astype(np.int32)))
    records.append(Record("XX.ABC..HHZ", t0, 50.0, np.zeros(200, dtype=np.int32)))  # very late re-send
    with caplog.at_level(logging.WARNING, logger="rtpick.pipeline"):
        pipe, _ = run(loaded, records)
    feed = pipe.feeds["XX.ABC..HHZ"]
    assert feed.counters["rate_changes"] == 1
    assert feed.counters["duplicates"] + feed.counters["overlaps"] >= 1
    assert pipe.stats.windows > 0
    assert sum("rate changed" in r.message and "XX.ABC..HHZ" in r.message for r in caplog.records) == 1


def test_unknown_and_broken_records_are_rejected_once(loaded, caplog):
    t0 = 1_600_000_000 * NS_PER_S
    good = np.ones(400, dtype=np.int32)
    bad = [
        Record("XX.ABC..HHX", t0, 100.0, good),  # unknown component code
        Record("XX.ABC..HHX", t0 + 4 * NS_PER_S, 100.0, good),
        Record("XX.ABC.HHZ", t0, 100.0, good),  # not NET.STA.LOC.CHA
        Record("XX.ABC..LHZ", t0, 1.0, good),  # family not selected
        Record("XX.ABC..HHZ", t0, float("nan"), good),  # broken sampling rate
        Record("XX.ABC..HHZ", t0, 100.0, np.full(400, np.nan)),  # NaN samples
        Record("XX.ABC..HHZ", t0, 100.0, np.array(["a"] * 4)),  # not numbers
    ]
    with caplog.at_level(logging.WARNING, logger="rtpick.pipeline"):
        pipe, picks = run(loaded, bad)
    assert picks == []
    assert pipe.stats.rejected == {"unknown_component": 1, "bad_stream_id": 1, "channel_not_selected": 1, "unsupported_sampling_rate": 1, "non_finite": 1, "bad_samples": 1}
    assert sum("XX.ABC..HHX" in r.message for r in caplog.records) == 1


def test_replay_skips_corrupt_files_and_keeps_going(oklahoma_dir, tmp_path):
    for path in oklahoma_dir.glob("OKCFA.*"):
        shutil.copy(path, tmp_path)
    (tmp_path / "garbage.msd").write_bytes(b"this is not miniSEED" * 100)
    raw = (oklahoma_dir / "SIO.HHZ.OK...20130616153750.msd").read_bytes()
    (tmp_path / "truncated.msd").write_bytes(raw[:777])
    out = subprocess.run([sys.executable, "-m", "rtpick", "replay", str(tmp_path), "--progress", "never"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "garbage.msd: cannot read as miniSEED" in out.stderr
    assert "failed 1" in out.stderr or "failed 2" in out.stderr
    assert '"OK.OKCFA..HHZ"' in out.stdout and '"phase": "P"' in out.stdout


def test_config_error_exits_cleanly(tmp_path, oklahoma_dir):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[inference]\nbatch_size = 0\n")
    out = subprocess.run([sys.executable, "-m", "rtpick", "replay", str(oklahoma_dir), "--config", str(cfg)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and f"{cfg}:2: key 'inference.batch_size'" in out.stderr


def test_rate_zero_and_unresamplable_rates_are_counted_and_logged(loaded, caplog):
    t0 = 1_600_000_000 * NS_PER_S
    good = np.ones(400, dtype=np.int32)
    bad = [
        Record("XX.ABC..HHZ", t0, 0.0, np.zeros(0, dtype=np.int32)),  # rate 0 (e.g. a log record): not silent
        Record("XX.ABC..HHZ", t0, 0.0, good),
        Record("XX.DEF..HHZ", t0, 99.99, good),  # no rational ratio to 100 Hz
        Record("XX.DEF..HHZ", t0, 1e6, good),  # far above the model rate
    ]
    with caplog.at_level(logging.WARNING, logger="rtpick.pipeline"):
        pipe, picks = run(loaded, bad)
    assert picks == []
    assert pipe.stats.rejected == {"unsupported_sampling_rate": 4}
    for sid in ("XX.ABC..HHZ", "XX.DEF..HHZ"):
        assert sum(sid in r.message and "unsupported sampling rate" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("rate", [100.0, 40.0, 200.0, 1.0, 3.0, 0.5, 123.456])
def test_next_record_start_at_every_rate(rate):
    """Where a channel's next contiguous record must start: the segment start plus its samples at the rate, to the ns.

    Staged records (``Pipeline.feed_many``, at the model's rate) and pushed ones
    (``ChannelFeed.push``) move it alike; where a sample is a whole number of ns
    (100 Hz: 10 ms) it is exact even after a day of one segment, elsewhere within a
    few ns (float division), far inside the half-sample tolerance.
    """
    import seisbench.models as sbm

    config = Config()
    config.stream.buffer_seconds = max(config.stream.buffer_seconds, 3 * 3001 / rate)  # a ring of a few windows at this rate
    pipe = Pipeline(config, LoadedModel(sbm.PhaseNet(sampling_rate=rate).eval(), "test", "", "0" * 64))
    pushed = ChannelFeed("XX.A..HHZ", GroupBuffer("XX.A..HH?", 3, 1000, rate), 0)
    t0 = 1_700_000_000 * NS_PER_S
    n = 0
    for size in (412, 399, max(1, int(rate * 86_400))):
        start = pushed.expected_ns if n else t0
        for comp in "ZNE":  # a complete station: its block opens at once, so records are staged until its first window
            pipe.feed(Record(f"XX.A..HH{comp}", start, rate, np.zeros(size, dtype=np.int32)))
        pushed.push(Record("XX.A..HHZ", start, rate, np.zeros(size, dtype=np.int32)))
        n += size
        staged = pipe.feeds["XX.A..HHZ"]
        if size == 399:
            assert len(staged.staged) == 1  # staged, not written: less than a window so far
        exact = t0 + round(Fraction(n * NS_PER_S) / Fraction(rate))
        assert staged.expected_ns == pushed.expected_ns
        assert abs(staged.expected_ns - exact) <= (0 if (NS_PER_S / rate).is_integer() else 4)
    assert staged.counters["gaps"] == staged.counters["overlaps"] == 0