"""Config: one source of truth, example file in step, errors that name file, key and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rtpick.config import Config, ConfigError, load_config, render_example

REPO = Path(__file__).resolve().parents[1]


def test_example_config_is_rendered_from_the_models():
    assert (REPO / "config.example.toml").read_text() == render_example(), (
        "config.example.toml is stale: run `python -m rtpick.config > config.example.toml`"
    )


def test_example_config_loads_to_the_defaults():
    assert load_config(REPO / "config.example.toml") == Config()


def test_unknown_key_names_file_key_and_line(tmp_path):
    path = tmp_path / "rtpick.toml"
    path.write_text("[inference]\nbatch_size = 8\nbatch_sise = 9\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}:3" in str(err.value) and "inference.batch_sise" in str(err.value) and "unknown key" in str(err.value)


def test_wrong_type_names_key_and_expectation(tmp_path):
    path = tmp_path / "rtpick.toml"
    path.write_text('[picking]\nthresholds = { P = 2.0 }\n[inference]\nthreads = "two"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "inference.threads" in text and "valid integer" in text and f"{path}:4" in text
    assert "picking.thresholds" in text and "(0, 1]" in text


def test_unknown_section_and_bad_toml(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text("[inferense]\nthreads = 2\n")
    with pytest.raises(ConfigError, match=r"a.toml:1: key 'inferense': unknown key"):
        load_config(path)
    path.write_text("[inference\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_check_config_cli(tmp_path):
    good = subprocess.run([sys.executable, "-m", "rtpick", "check-config", str(REPO / "config.example.toml")], capture_output=True, text=True)
    assert good.returncode == 0 and "OK" in good.stdout
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text("[stream]\nbuffer_seconds = -1\n")
    bad = subprocess.run([sys.executable, "-m", "rtpick", "check-config", str(bad_file)], capture_output=True, text=True)
    assert bad.returncode == 2 and "stream.buffer_seconds" in bad.stderr and "greater than 0" in bad.stderr
