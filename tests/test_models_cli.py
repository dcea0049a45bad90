"""``rtpick models`` and ``rtpick check-config`` over regions (in-process through the CLI)."""

from __future__ import annotations

import json

import pytest

from rtpick.cli import main

STATIONS_CSV = "network,station,latitude,longitude,elevation_m\nOK,AAA,35.5,-97.5,300\nOK,BBB,36.5,-96.0,300\nGS,CCC,37.5,-98.5,300\n"


@pytest.fixture(scope="module")
def pn50(tmp_path_factory):
    """A 50 Hz PhaseNet (random weights) in SeisBench's save format."""
    import seisbench.models as sbm

    base = tmp_path_factory.mktemp("pn50") / "pn50"
    sbm.PhaseNet(sampling_rate=50).save(base)
    return base


def _config(tmp_path, body: str):
    inv = tmp_path / "stations.csv"
    inv.write_text(STATIONS_CSV)
    path = tmp_path / "rtpick.toml"
    path.write_text(f'[stream]\ninventory = "{inv}"\n' + body)
    return path


def test_models_lists_regions_stations_and_cards(tmp_path, pn50, capsys):
    path = _config(tmp_path, f"""
[[regions]]
name = "ok50"
stations = ["OK.*.*.*"]
model = "file:{pn50}"
thresholds = {{ P = 0.45 }}

[[regions]]
name = "texas"
stations = ["TX.*.*.*"]
""")
    assert main(["models", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "region 'ok50': 2 station(s)" in out and "3001 samples at 50 Hz" in out
    assert "P 0.45 (region override), S 0.3 (SeisBench default)" in out
    assert "overlap   1500 samples, step 1501 (SeisBench default)" in out
    assert "region 'texas': 0 station(s)" in out and "model     seisbench:PhaseNet/original" in out
    assert "WARNING: 1 inventory station(s) match no region and will not be picked: GS.CCC" in out
    assert "WARNING: region 'texas' matches no inventory station" in out
    assert "OK.AAA" not in out
    assert main(["models", "--config", str(path), "-v"]) == 0
    out = capsys.readouterr().out
    assert "stations: OK.AAA OK.BBB" in out and "default_args" in out
    assert main(["models", "--config", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["region"] for r in doc["regions"]] == ["ok50", "texas"]
    assert doc["regions"][0]["model"]["sampling_rate"] == 50.0 and doc["regions"][0]["sources"]["threshold P"] == "region override"


def test_models_without_inventory_says_matched_at_run_time(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "region 'default': matched at run time" in out and "WARNING" not in out


def test_check_config_reports_every_problem_by_region_and_key(tmp_path, pn50, capsys):
    path = _config(tmp_path, f"""buffer_seconds = 120

[[regions]]
name = "ok50"
stations = ["OK.*.*.*"]
model = "file:{pn50}"

[[regions]]
name = "gone"
stations = ["GS.*.*.*"]
model = "file:{tmp_path / 'nothing'}"

[[regions]]
name = "odd"
stations = ["TX.*.*.*"]
model = "seisbench:NoSuchNet/original"
""")
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "region 'ok50': key 'stream.buffer_seconds': 120 s is too small" in err
    assert "region 'gone': key 'regions.1.model'" in err and "nothing.json" in err
    assert "region 'odd': key 'regions.2.model'" in err and "unknown model class 'NoSuchNet'" in err
    assert main(["models", "--config", str(path)]) == 2


def test_check_config_ok_names_lanes_and_warns_about_coverage(tmp_path, pn50, capsys):
    path = _config(tmp_path, f"""
[[regions]]
name = "ok50"
stations = ["OK.*.*.*"]
model = "file:{pn50}"
""")
    assert main(["check-config", str(path)]) == 0
    captured = capsys.readouterr()
    assert "OK (ok50: file:" in captured.out and "at 50 Hz" in captured.out
    assert "GS.CCC" in captured.err
