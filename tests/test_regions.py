"""Regions: [[regions]] parsing, routing, and lane specs with model-derived defaults."""

from __future__ import annotations

import json

import pytest

from rtpick.config import ConfigError, load_config, parse_config
from rtpick.inference.models import LoadedModel, ModelError, describe_model, load_model, preprocessing_for
from rtpick.inference.regions import (
    RegionError,
    RegionRouter,
    build_lane_specs,
    load_inventory,
    load_region_models,
    plan_lanes,
    point_in_polygon,
)
from rtpick.stream import dsp

STATIONS_CSV = "network,station,latitude,longitude,elevation_m\nOK,AAA,35.5,-97.5,300\nOK,BBB,36.5,-96.0,300\nGS,CCC,37.5,-98.5,300\n"


def _write(tmp_path, text: str, name: str = "rtpick.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _specs(config):
    return build_lane_specs(config, load_region_models(config))


@pytest.fixture(scope="module")
def pn50(tmp_path_factory):
    """A 50 Hz PhaseNet (random weights) in SeisBench's save format."""
    import seisbench.models as sbm

    base = tmp_path_factory.mktemp("pn50") / "pn50"
    sbm.PhaseNet(sampling_rate=50).save(base)
    return base


@pytest.fixture(scope="module")
def eqt(tmp_path_factory):
    """An EQTransformer (random weights) in SeisBench's save format (the sidecar names no class)."""
    import seisbench.models as sbm

    base = tmp_path_factory.mktemp("eqt") / "eqt"
    sbm.EQTransformer().save(base)
    return base


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    """An `rtpick adapt` output folder whose default_args carry dev thresholds P 0.55, S 0.42."""
    import seisbench.models as sbm

    from rtpick.adapt.models import save_picker

    out = tmp_path_factory.mktemp("adapted") / "ok-v1"
    card = {"schema": "rtpick.model_card/1", "source_model": "seisbench:PhaseNet/original", "strategy": "test", "thresholds": {"P": 0.55, "S": 0.42}}
    save_picker(sbm.PhaseNet(phases="PSN"), out, card)
    return out


# --- config -----------------------------------------------------------------------------


def test_good_regions_parse(tmp_path):
    inv = _write(tmp_path, STATIONS_CSV, "stations.csv")
    config = load_config(_write(tmp_path, f"""
[stream]
inventory = "{inv}"

[[regions]]
name = "oklahoma"
stations = ["OK.*.*.HH?", "OK.*.*.EH?"]
model = "file:/models/ok"
thresholds = {{ P = 0.4 }}
overlap = 1000

[[regions]]
name = "north"
polygon = [[36, -99], [38, -99], [38, -95], [36, -95]]

[[regions]]
name = "default"
"""))
    assert [r.name for r in config.regions] == ["oklahoma", "north", "default"]
    assert config.regions[0].thresholds == {"P": 0.4} and config.regions[0].overlap == 1000
    assert config.regions[1].polygon[0] == (36.0, -99.0)


@pytest.mark.parametrize(
    ("stanza", "line", "key", "message"),
    [
        ('name = "a"\nstations = ["OK.*.HH?"]\n', 6, "regions.0.stations", "NET.STA.LOC.CHA"),
        ('name = "a"\nstations = ["OK.*.*.*"]\nmodle = "x"\n', 7, "regions.0.modle", "unknown key"),
        ('name = "a"\n', 4, "regions.0", "selects no stations"),
        ('name = "default"\nstations = ["*.*.*.*"]\n', 4, "regions.0", "default"),
        ('name = "a"\nstations = ["OK.*.*.*"]\noverlap = 10\noverlap_s = 1.0\n', 4, "regions.0", "not both"),
        ('name = "a"\nstations = ["OK.*.*.*"]\nthresholds = { P = 1.5 }\n', 7, "regions.0.thresholds", "(0, 1]"),
        ('name = "a"\npolygon = [[1, 2], [3, 4]]\n', 6, "regions.0.polygon", "at least 3"),
        ('name = "a b"\nstations = ["OK.*.*.*"]\n', 5, "regions.0.name", "pattern"),
    ],
)
def test_bad_region_stanza_names_file_line_and_key(tmp_path, stanza, line, key, message):
    path = _write(tmp_path, "[inference]\nthreads = 1\n\n[[regions]]\n" + stanza)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert f"{path}:{line}: key '{key}'" in text and message in text, text


def test_duplicate_names_and_polygon_without_inventory():
    with pytest.raises(ConfigError, match="duplicate name"):
        parse_config({"regions": [{"name": "a", "stations": ["*.*.*.*"]}, {"name": "a", "stations": ["X.*.*.*"]}]})
    with pytest.raises(ConfigError, match="needs stream.inventory"):
        parse_config({"regions": [{"name": "a", "polygon": [[0, 0], [0, 1], [1, 1]]}]})


# --- routing ----------------------------------------------------------------------------


def test_point_in_polygon():
    square = [(0.0, 0.0), (0.0, 2.0), (2.0, 2.0), (2.0, 0.0)]
    assert point_in_polygon(1.0, 1.0, square) and point_in_polygon(0.0, 1.0, square)
    assert not point_in_polygon(3.0, 1.0, square) and not point_in_polygon(1.0, -0.1, square)


def test_router_globs_first_match_default_and_polygon(tmp_path):
    inv = _write(tmp_path, STATIONS_CSV, "stations.csv")
    config = parse_config({
        "stream": {"inventory": str(inv)},
        "regions": [
            {"name": "default"},  # tried last whatever its position
            {"name": "hh", "stations": ["OK.*.*.HH?"]},
            {"name": "okall", "stations": ["OK.*.*.*"]},
            {"name": "north", "polygon": [[36, -99], [38, -99], [38, -95], [36, -95]]},
            {"name": "north_eh", "stations": ["*.*.*.EH?"], "polygon": [[36, -99], [38, -99], [38, -95], [36, -95]]},
        ],
    })
    router = RegionRouter.from_config(config)
    assert router.route("OK.AAA..HH?") == "hh"  # first match wins over okall
    assert router.route("OK.AAA..EH?") == "okall"
    assert router.route("GS.CCC..HH?") == "north"  # polygon, before north_eh
    assert router.route("XX.ZZZ..HH?") == "default"  # no coordinates, no glob
    cov = router.coverage()
    assert cov.stations["hh"] == ["OK.AAA", "OK.BBB"] and cov.stations["north"] == ["GS.CCC"]
    assert set(cov.empty) == {"okall", "north_eh", "default"} and cov.unmatched == []


def test_router_without_default_leaves_stations_unrouted(tmp_path):
    inv = _write(tmp_path, STATIONS_CSV, "stations.csv")
    config = parse_config({"stream": {"inventory": str(inv)}, "regions": [{"name": "ok", "stations": ["OK.*.*.HH?"]}]})
    router = RegionRouter.from_config(config)
    assert router.route("GS.CCC..HH?") is None and router.route("OK.AAA.00.HH?") == "ok"
    assert router.coverage().unmatched == ["GS.CCC"]
    # without [[regions]], everything is the implicit default
    assert RegionRouter.from_config(parse_config({})).route("ANY.THING..HH?") == "default"


def test_stationxml_inventory(tmp_path):
    from obspy.core.inventory import Channel, Inventory, Network, Station

    chans = [Channel(code, "", 35.5, -97.5, 300.0, 0.0) for code in ("HHZ", "HHN", "HHE", "EHZ")]
    inv = Inventory([Network("OK", [Station("AAA", 35.5, -97.5, 300.0, channels=chans)])], source="test")
    path = tmp_path / "inv.xml"
    inv.write(str(path), format="STATIONXML")
    stations = load_inventory(path)
    assert sorted(s.key for s in stations) == ["OK.AAA..EH?", "OK.AAA..HH?"]
    router = RegionRouter(parse_config({"regions": [{"name": "eh", "stations": ["OK.*.*.EH?"]}]}).regions, stations)
    assert router.coverage().stations["eh"] == ["OK.AAA..EH?"] and router.coverage().unmatched == ["OK.AAA..HH?"]


# --- lane specs: model-derived defaults -------------------------------------------------


def test_default_config_is_todays_phasenet_lane():
    (spec,) = _specs(parse_config({}))
    assert spec.region == "default" and spec.model_id == "seisbench:PhaseNet/original" and len(spec.sha256) == 64
    assert (spec.fs, spec.in_samples, spec.overlap, spec.step) == (100.0, 3001, 1500, 1501)
    assert dict(spec.thresholds) == {"P": 0.3, "S": 0.3} and spec.threshold_sources["P"] == "model default_args"
    assert spec.stacking == "avg" and spec.blinding == (0, 0) and spec.buffer_samples == 12000
    assert spec.preprocessing.numba_kernel == dsp.NORM_STD and spec.preprocessing.scale_axis == "component"
    assert spec.argdict() == {"overlap": 1500, "stacking": "avg", "blinding": (0, 0)}


def test_global_options_override_only_when_set():
    (spec,) = _specs(parse_config({"inference": {"overlap_s": 10.0, "stacking": "max"}, "picking": {"thresholds": {"P": 0.6}}}))
    assert (spec.overlap, spec.sources["overlap"], spec.stacking) == (1000, "[inference]", "max")
    assert dict(spec.thresholds) == {"P": 0.6, "S": 0.3} and spec.threshold_sources == {"P": "[picking]", "S": "model default_args"}


def test_50hz_phasenet_overlap_in_its_own_samples_and_buffer(pn50):
    regions = [{"name": "ok", "stations": ["OK.*.*.*"], "model": f"file:{pn50}"}, {"name": "default"}]
    ok, default = _specs(parse_config({"regions": regions}))
    assert (ok.fs, ok.in_samples, ok.overlap, ok.step) == (50.0, 3001, 1500, 1501)  # as SeisBench annotate
    assert ok.buffer_samples == 2 * 3001 + 1501 and ok.sources["overlap"] == "SeisBench default"
    assert default.fs == 100.0 and default.buffer_samples == 12000
    with pytest.raises(RegionError) as err:
        _specs(parse_config({"stream": {"buffer_seconds": 120.0}, "regions": regions}))
    assert err.value.problems == [err.value.problems[0]]  # only the 50 Hz lane is short
    assert "region 'ok'" in str(err.value) and "key 'stream.buffer_seconds'" in str(err.value) and "150.06 s" in str(err.value)
    (spec,) = _specs(parse_config({"inference": {"model": f"file:{pn50}", "overlap_s": 15.0}}))
    assert spec.overlap == 750  # explicit seconds convert at the model's rate


def test_eqtransformer_lane(eqt):
    (spec,) = _specs(parse_config({"inference": {"model": f"file:EQTransformer:{eqt}"}}))
    assert spec.architecture == "EQTransformer" and spec.labels == ("Detection", "P", "S")
    assert (spec.in_samples, spec.overlap, spec.stacking, spec.blinding) == (6000, 3000, "max", (500, 500))
    assert dict(spec.thresholds) == {"P": 0.1, "S": 0.1} and spec.detection_threshold == 0.3
    assert spec.threshold_sources["P"] == "SeisBench default"
    pre = spec.preprocessing
    assert (pre.scale, pre.scale_axis, pre.taper_samples, pre.numba_kernel) == ("std", "window", 6, None)
    with pytest.raises(ModelError, match="file:<Class>:<path>"):
        load_model(f"file:{eqt}")  # SeisBench's sidecar names no class; PhaseNet does not fit


def test_adapted_model_thresholds_and_card(adapted):
    region = {"name": "ok", "stations": ["OK.*.*.*"], "model": f"file:{adapted}"}
    (spec,) = _specs(parse_config({"regions": [region]}))
    assert dict(spec.thresholds) == {"P": 0.55, "S": 0.42} and set(spec.threshold_sources.values()) == {"model default_args"}
    (spec,) = _specs(parse_config({"regions": [{**region, "thresholds": {"S": 0.25}}]}))
    assert dict(spec.thresholds) == {"P": 0.55, "S": 0.25} and spec.threshold_sources["S"] == "region override"
    card = describe_model(load_model(f"file:{adapted}"))
    assert card["source"].startswith("rtpick adapt") and card["model_card"]["thresholds"] == {"P": 0.55, "S": 0.42}
    assert card["default_args"]["P_threshold"] == 0.55 and card["sampling_rate"] == 100.0
    assert json.loads((adapted / "model.json").read_text())["model_class"] == "PhaseNet"  # written by rtpick adapt


def test_unreproducible_model_is_refused_naming_region():
    import seisbench.models as sbm

    with pytest.raises(ModelError, match="does not predict every sample"):
        preprocessing_for(sbm.GPD())
    config = parse_config({"regions": [{"name": "gpd", "stations": ["*.*.*.*"], "model": "seisbench:GPD/original"}]})
    fake = LoadedModel(model=sbm.GPD(), model_id="seisbench:GPD/original", version="", sha256="")
    with pytest.raises(RegionError, match=r"region 'gpd': key 'regions.0.model': model 'seisbench:GPD/original' cannot be run exactly"):
        build_lane_specs(config, {("seisbench:GPD/original", "cpu"): fake})


def test_plan_lists_every_problem(tmp_path, pn50):
    config = parse_config({
        "stream": {"buffer_seconds": 120.0},
        "regions": [
            {"name": "a", "stations": ["OK.*.*.*"], "model": f"file:{tmp_path / 'missing'}"},
            {"name": "b", "stations": ["GS.*.*.*"], "model": "seisbench:NoSuchNet/original"},
            {"name": "c", "stations": ["XX.*.*.*"], "model": f"file:{pn50}", "thresholds": {"Q": 0.5}},
        ],
    })
    with pytest.raises(RegionError) as err:
        plan_lanes(config)
    text = str(err.value)
    assert "region 'a': key 'regions.0.model'" in text and "missing.json" in text
    assert "region 'b': key 'regions.1.model'" in text and "NoSuchNet" in text
    assert "region 'c': key 'regions.2.thresholds.Q'" in text and "region 'c': key 'stream.buffer_seconds'" in text


def test_startup_runs_the_default_lane_with_model_derived_settings(pn50, adapted):
    from rtpick.commands.startup import EXIT_CONFIG, StartupError, plan_lanes

    config = parse_config({"inference": {"model": f"file:{pn50}"}})
    (spec,) = plan_lanes(config).specs
    assert (spec.overlap, spec.buffer_samples, spec.fs) == (1500, 7503, 50.0)  # 30 s and 150.06 s at 50 Hz
    (spec,) = plan_lanes(parse_config({"inference": {"model": f"file:{adapted}"}})).specs
    assert dict(spec.thresholds) == {"P": 0.55, "S": 0.42}
    with pytest.raises(StartupError) as err:
        plan_lanes(parse_config({"stream": {"buffer_seconds": 120.0}, "inference": {"model": f"file:{pn50}"}}))
    assert err.value.code == EXIT_CONFIG and "key 'stream.buffer_seconds'" in str(err.value)
    plan = plan_lanes(parse_config({"regions": [{"name": "ok", "stations": ["OK.*.*.*"], "model": f"file:{pn50}"}, {"name": "default"}]}))
    assert [spec.region for spec in plan.specs] == ["ok", "default"]  # [[regions]] run, one lane each
