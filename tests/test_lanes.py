"""Model lanes: several models and sampling rates in one pipeline, each station exact against its own model.

One replay of the bundled Oklahoma data through two regions — PhaseNet "original"
(100 Hz) and a 50 Hz PhaseNet (the original's weights re-used at 50 Hz, saved and
loaded as a ``file:`` model) — must give, per station, SeisBench ``annotate`` of the
station's own model within 1e-4 and its ``classify`` picks (resampled channels: on
rtpick's resampled input, and within two model samples), with default overlaps.
Also: an EQTransformer lane, thresholds from the model's ``default_args``, routing by
region globs, ``no_region``, pick identity, round-robin across lanes, drain and exact
restarts with two lanes.
"""

from __future__ import annotations

import json
import zlib

import numpy as np
import obspy
import pytest
import torch

from rtpick.config import parse_config
from rtpick.inference.models import load_model
from rtpick.pipeline import Pipeline
from rtpick.publish.messages import pick_message, validate_message
from rtpick.types import NS_PER_S
from tests.oracle import compare_annotations, match_picks, shuffled_records, stream_through
from tests.test_oracle import resampled_input

LANE_100 = ["OK.FNO.*.*", "OK.SIO.*.*", "OK.W35A.*.*", "OK.LC30.*.*"]  # LC30 is 200 Hz: resampled to 100
LANE_50 = ["OK.OKCFA.*.*", "OK.X34A.*.*", "OK.U32A.*.HH?"]  # 100 Hz data, resampled to 50
# U32A's BH? family matches no region (no 'default' region): counted as no_region


@pytest.fixture(scope="module")
def pn50(tmp_path_factory, phasenet):
    """PhaseNet at 50 Hz with the original's weights, in SeisBench's save format."""
    import seisbench.models as sbm

    model = sbm.PhaseNet(sampling_rate=50)
    model.load_state_dict(phasenet.state_dict())
    base = tmp_path_factory.mktemp("pn50") / "pn50"
    model.save(base)
    return base


def oklahoma_stream(oklahoma_dir) -> obspy.Stream:
    return obspy.read(str(oklahoma_dir / "*.msd"))


def two_lane_config(pn50, **inference):
    return parse_config({
        "stream": {"component_wait_s": 60.0},
        "inference": {"batch_size": 16, **inference},
        "regions": [
            {"name": "ok100", "stations": LANE_100},
            {"name": "ok50", "stations": LANE_50, "model": f"file:{pn50}"},
        ],
    })


@pytest.fixture(scope="module")
def two_lanes(oklahoma_dir, pn50):
    """One replay of all bundled stations through the two lanes (shuffled records)."""
    torch.set_num_threads(1)
    stream = oklahoma_stream(oklahoma_dir)
    records = shuffled_records(stream, np.random.default_rng(zlib.crc32(b"lanes")))
    stacked, picks, pipe = stream_through(two_lane_config(pn50), None, records)
    return stream, stacked, picks, pipe


def station_stream(stream: obspy.Stream, key: str) -> obspy.Stream:
    net, sta, loc, family = key.split(".")
    return stream.select(network=net, station=sta, location=loc, channel=family)


def test_two_lanes_each_station_equals_its_own_model(two_lanes):
    stream, stacked, picks, pipe = two_lanes
    assert set(pipe.lanes) == {"ok100", "ok50"}
    assert {key: st.lane.region for key, st in pipe.stations.items()} == {
        "OK.FNO.01.HH?": "ok100", "OK.SIO..HH?": "ok100", "OK.W35A..EH?": "ok100", "OK.LC30..HH?": "ok100",
        "OK.OKCFA..HH?": "ok50", "OK.X34A..HH?": "ok50", "OK.U32A..HH?": "ok50",
    }
    assert pipe.lanes["ok50"].spec.overlap == 1500 and pipe.lanes["ok50"].fs == 50.0  # SeisBench's default, in its samples
    compared_picks = 0
    for key, station in pipe.stations.items():
        lane = station.lane
        model, fs = lane.loaded.model, lane.fs
        sub = station_stream(stream, key)
        native = all(tr.stats.sampling_rate == fs for tr in sub)
        annotated = model.annotate((sub if native else resampled_input(sub, fs)).copy())
        compared, worst = compare_annotations(stacked[key], annotated, lane.labels, fs)
        assert compared > 0 and worst < 1e-4, f"{key} ({lane.region}): max |rtpick - annotate| = {worst}"
        ours = [p for p in picks if p.stream_id[:-1] + "?" == key]
        theirs = model.classify(sub.copy()).picks
        tolerance = 1.01 / fs if native else 2.01 / fs
        extra, missing = match_picks(ours, theirs, tolerance_s=tolerance)
        assert not extra and not missing, f"{key} ({lane.region}): extra {extra}, missing {missing}"
        compared_picks += len(theirs)
    assert compared_picks > 0
    assert pipe.stats.windows_dropped == 0


def test_routing_no_region_and_pick_identity(two_lanes):
    _, _, picks, pipe = two_lanes
    assert pipe.stats.rejected == {"no_region": 3}  # U32A.BH[ZNE]: counted once per channel
    assert "OK.U32A..BH?" not in pipe.stations
    assert {p.extra["region"] for p in picks} == {"ok100", "ok50"}
    for pick in picks:
        lane = pipe.lanes[pick.extra["region"]]
        assert pipe.stations[pick.stream_id[:-1] + "?"].lane is lane
        assert (pick.model_id, pick.model_version, pick.extra["model_sha256"]) == (lane.loaded.model_id, lane.loaded.version, lane.loaded.sha256)
        message = pick_message(pick)
        validate_message(message)
        assert message["region"] == lane.region and len(message["model_sha256"]) == 64
    # windows of different lanes never share a batch: every window is counted in exactly one lane
    assert sum(lane.windows for lane in pipe.lanes.values()) == pipe.stats.windows
    assert all(lane.windows > 0 for lane in pipe.lanes.values())


def test_resume_points_carry_each_lanes_rate(two_lanes):
    _, _, _, pipe = two_lanes
    points = pipe.resume_points()
    assert {points[key]["sampling_rate"] for key in ("OK.FNO.01.HH?", "OK.LC30..HH?")} == {100.0}
    assert {points[key]["sampling_rate"] for key in ("OK.OKCFA..HH?", "OK.U32A..HH?")} == {50.0}


def in_order_records(oklahoma_dir):
    from rtpick.ingest.replay import records_from_arrays

    out = []
    for trace in oklahoma_stream(oklahoma_dir):
        rate = float(trace.stats.sampling_rate)
        out += records_from_arrays(trace.id, trace.stats.starttime.ns, rate, trace.data, int(4 * rate))
    out.sort(key=lambda r: (r.end_ns, r.stream_id))
    return out


def pick_key(p) -> tuple:
    return (p.stream_id, p.phase, p.time_ns, p.probability, p.extra["region"])


def test_two_lane_restart_republishes_exactly_and_drain_serves_lanes_round_robin(oklahoma_dir, pn50, monkeypatch):
    torch.set_num_threads(1)
    records = in_order_records(oklahoma_dir)
    config = two_lane_config(pn50, batch_size=64)
    clean = Pipeline(config)
    expected = []
    for rec in records:
        expected += clean.feed(rec)
    expected += clean.flush()
    cut = len(records) // 2
    first = Pipeline(config)
    order: list[str] = []
    before = []
    for rec in records[:cut]:
        before += first.feed(rec)
    for lane in first.lanes.values():
        run_batch = lane.run_batch
        monkeypatch.setattr(lane, "run_batch", lambda lane=lane, run=run_batch: (order.append(lane.region), run())[1])
    queued = {region: len(lane.queue) for region, lane in first.lanes.items()}
    before += first.drain()
    assert not first.queued
    # round-robin: while both lanes have windows queued, batches alternate between them
    both = 2 * min(-(-n // 64) for n in queued.values())
    assert all(order[i] != order[i + 1] for i in range(0, both - 1, 2)), order
    assert set(map(pick_key, before)) <= set(map(pick_key, expected))
    points = json.loads(json.dumps(first.resume_points()))
    second = Pipeline(config)
    second.restore(points)
    cut_ns = records[cut - 1].end_ns
    after = []
    for rec in records:
        if rec.start_ns >= cut_ns - 300 * NS_PER_S:
            after += second.feed(rec)
    after += second.flush()
    union = set(map(pick_key, before)) | set(map(pick_key, after))
    assert sorted(union) == sorted(map(pick_key, expected))


# ---------------------------------------------------------------------------------- EQTransformer


@pytest.fixture(scope="module")
def eqt(tmp_path_factory):
    """An EQTransformer with seeded random weights, saved in SeisBench's format."""
    import seisbench.models as sbm

    torch.manual_seed(1234)
    base = tmp_path_factory.mktemp("eqt") / "eqt"
    sbm.EQTransformer().save(base)
    return base


@pytest.mark.parametrize("family", ["OKCFA.HH", "LC30.HH"])
def test_eqtransformer_lane_equals_seisbench(oklahoma_dir, eqt, family):
    torch.set_num_threads(1)
    config = parse_config({"stream": {"component_wait_s": 60.0}, "inference": {"batch_size": 16, "model": f"file:EQTransformer:{eqt}"}})
    station, band = family.split(".")
    stream = obspy.read(str(oklahoma_dir / f"{station}.{band}?.*"))
    stacked, picks, pipe = stream_through(config, None, shuffled_records(stream, np.random.default_rng(zlib.crc32(family.encode()))))
    lane = pipe.lanes["default"]
    spec, model = lane.spec, lane.loaded.model
    assert (spec.overlap, spec.stacking, spec.blinding) == (3000, "max", (500, 500))  # EQTransformer's own defaults
    assert spec.preprocessing.numba_kernel is None  # its own annotate_batch_pre runs on raw windows
    native = all(tr.stats.sampling_rate == lane.fs for tr in stream)
    annotated = model.annotate((stream if native else resampled_input(stream, lane.fs)).copy())
    compared, worst = compare_annotations(next(iter(stacked.values())), annotated, lane.labels, lane.fs)
    assert compared > 0 and worst < 1e-4, f"{family}: max |rtpick - annotate| = {worst}"
    theirs = model.classify(stream.copy()).picks
    extra, missing = match_picks(picks, theirs, tolerance_s=(1.01 if native else 2.01) / lane.fs)
    assert not extra and not missing, f"{family}: extra {extra}, missing {missing}"


# ---------------------------------------------------------------------------------- thresholds


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, phasenet):
    """An `rtpick adapt`-style folder: the original's weights, dev thresholds P 0.55, S 0.42 in default_args."""
    import seisbench.models as sbm

    from rtpick.adapt.models import save_picker

    model = sbm.PhaseNet(phases=phasenet.labels)
    model.load_state_dict(phasenet.state_dict())
    out = tmp_path_factory.mktemp("adapted") / "ok-v1"
    save_picker(model, out, {"schema": "rtpick.model_card/1", "source_model": "seisbench:PhaseNet/original", "strategy": "test", "thresholds": {"P": 0.55, "S": 0.42}})
    return out


def test_thresholds_come_from_the_model_unless_the_region_overrides_them(oklahoma_dir, adapted):
    torch.set_num_threads(1)
    config = parse_config({
        "stream": {"component_wait_s": 60.0},
        "inference": {"model": f"file:{adapted}"},
        "regions": [{"name": "low", "stations": ["OK.SIO.*.*"], "thresholds": {"P": 0.2}}, {"name": "default"}],
    })
    stream = obspy.read(str(oklahoma_dir / "SIO.HH?.*")) + obspy.read(str(oklahoma_dir / "FNO.HH?.*"))
    _, picks, pipe = stream_through(config, None, shuffled_records(stream, np.random.default_rng(7)))
    low, default = pipe.lanes["low"], pipe.lanes["default"]
    assert default.thresholds == {"P": 0.55, "S": 0.42} and dict(default.spec.threshold_sources) == {"P": "model default_args", "S": "model default_args"}
    assert low.thresholds == {"P": 0.2, "S": 0.42} and low.spec.threshold_sources["P"] == "region override"
    model = default.loaded.model
    for station, lane, kwargs in (("FNO", default, {}), ("SIO", low, {"P_threshold": 0.2})):
        sub = stream.select(station=station)
        ours = [p for p in picks if p.stream_id.split(".")[1] == station]
        assert {p.extra["region"] for p in ours} == {lane.region}
        theirs = model.classify(sub.copy(), **kwargs).picks
        extra, missing = match_picks(ours, theirs, tolerance_s=0.0101)
        assert not extra and not missing, f"{station}: extra {extra}, missing {missing}"
    # the model's thresholds are the ones in force: a trigger opens later than at SeisBench's 0.3
    at_03 = {p.phase: p.start_time.ns for p in model.classify(stream.select(station="FNO").copy(), P_threshold=0.3, S_threshold=0.3).picks}
    fno = [p for p in picks if p.stream_id.split(".")[1] == "FNO"]
    assert fno and all(p.trigger_on_ns > at_03[p.phase] for p in fno)


def test_swap_model_keeps_queued_windows_and_refuses_a_misfit(oklahoma_dir, pn50, phasenet):
    """The Lane API hot swap builds on: same-shape model switches in place, another rate is refused."""
    from rtpick.inference.regions import build_lane_specs

    config = parse_config({"inference": {"batch_size": 64}})
    pipe = Pipeline(config)
    records = in_order_records(oklahoma_dir)[:200]
    for rec in records:
        pipe.feed(rec)
    queued = pipe.queued
    loaded = load_model("seisbench:PhaseNet/original")
    (spec,) = build_lane_specs(config, {(config.inference.model, config.inference.device): loaded})
    pipe.swap_model("default", loaded, spec)
    assert pipe.lanes["default"].loaded is loaded and pipe.queued == queued
    other = parse_config({"inference": {"model": f"file:{pn50}"}})
    loaded50 = load_model(f"file:{pn50}")
    (spec50,) = build_lane_specs(other, {(other.inference.model, other.inference.device): loaded50})
    with pytest.raises(ValueError, match="region 'default'.*fs 100.0 -> 50.0"):
        pipe.swap_model("default", loaded50, spec50)
    assert pipe.lanes["default"].loaded is loaded
    with pytest.raises(ValueError, match="region 'nowhere'"):
        pipe.swap_model("nowhere", loaded, spec)
    assert pipe.flush() is not None and pipe.stats.windows_failed == 0


def test_metrics_name_each_lanes_model_and_count_picks_by_region(two_lanes, pn50):
    from rtpick.publish.outputs import Outputs

    _, _, picks, pipe = two_lanes
    outputs = Outputs(two_lane_config(pn50))
    outputs.attach(pipe)
    for pick in picks:
        outputs.metrics.on_pick(pick, 1.0)
    registry = outputs.registry
    info = {s.labels["region"]: s.labels for f in registry.collect() if f.name == "rtpick_model_info" for s in f.samples}
    assert set(info) == {"ok100", "ok50"}
    for region, lane in pipe.lanes.items():
        assert (info[region]["model"], info[region]["sha256"]) == (lane.loaded.model_id, lane.loaded.sha256)
        count = registry.get_sample_value("rtpick_picks_total", {"phase": "P", "region": region})
        assert count == sum(p.phase == "P" and p.extra["region"] == region for p in picks) > 0
