"""Defaults stated in README.md and docs/*.md match ``rtpick.config.Config()``.

The docs state a default in one of two phrasings, which this test finds and checks:

* ``` `section.key` (default VALUE) ``` where VALUE is a backticked TOML literal
  (```(default `""`)```, ```(default `"exact"`)```), a number with an optional unit
  (``(default 30 s)``), ``true``/``false`` or ``empty``;
* ``` `section.key = TOML` (default) ``` or ``` `section.key = TOML` by default ```.

Any other mention of a config key that says "default" in the same sentence, or is
followed by a bare parenthesised number (``(10 s)``), fails the test too: a default
the test cannot read is a default that can drift unnoticed.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path

import pytest

from rtpick.config import Config

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

KEY = r"`(?P<key>[a-z_]+\.[a-z0-9_]+)"
VALUE = r"(?P<value>`[^`]*`|true|false|empty|-?\d+(?:\.\d+)?(?:e-?\d+)?)"
PHRASED = re.compile(KEY + r"`\s+\(default\s+" + VALUE + r"(?:\s?[A-Za-z%]+)?[),;:]")
ASSIGNED = re.compile(KEY + r" = (?P<toml>[^`]+)`\s+(?:\(default\)|by\s+default)")
MENTION = re.compile(KEY + r"(?: = [^`]*)?`")
SENTENCE_END = re.compile(r"\.\s|\|| -- |\n\n")


def config_defaults() -> dict[str, object]:
    """``section.key`` → default value, for every option of every section."""
    out: dict[str, object] = {}
    for section, values in Config().model_dump().items():
        if isinstance(values, dict):
            out.update({f"{section}.{key}": value for key, value in values.items()})
    return out


def parse_value(text: str) -> object:
    """A documented VALUE as a Python value (backticked: a TOML literal, else the text itself)."""
    if text.startswith("`"):
        try:
            return tomllib.loads(f"v = {text.strip('`')}")["v"]
        except tomllib.TOMLDecodeError:
            return text.strip("`")
    if text in ("true", "false"):
        return text == "true"
    if text == "empty":
        return ""
    return float(text)


def same(documented: object, actual: object) -> bool:
    if documented == "" and actual in ("", [], {}, None):
        return True
    if isinstance(documented, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        return math.isclose(documented, actual)
    return documented == actual


def _line(text: str, match: re.Match) -> int:
    return text.count("\n", 0, match.start()) + 1


def check(text: str, where: str, defaults: dict[str, object]) -> tuple[list[str], int]:
    """Problems found in ``text`` and the number of documented defaults checked."""
    problems: list[str] = []
    read: set[int] = set()  # offsets of mentions whose default was read
    for match in PHRASED.finditer(text):
        read.add(match.start())
        key, value = match["key"], match["value"]
        if key not in defaults:
            problems.append(f"{where}: `{key}` is not a config option")
        elif not same(parse_value(value), defaults[key]):
            problems.append(f"{where}:{_line(text, match)}: `{key}` documented default {value}, config.py has {defaults[key]!r}")
    for match in ASSIGNED.finditer(text):
        read.add(match.start())
        key = match["key"]
        if key not in defaults:
            problems.append(f"{where}: `{key}` is not a config option")
            continue
        try:
            documented = tomllib.loads(f"v = {match['toml']}")["v"]
        except tomllib.TOMLDecodeError:
            problems.append(f"{where}: `{key} = {match['toml']}` is not a TOML value")
            continue
        if not same(documented, defaults[key]):
            problems.append(f"{where}:{_line(text, match)}: `{key}` documented default {match['toml']}, config.py has {defaults[key]!r}")
    for match in MENTION.finditer(text):
        if match.start() in read or match["key"] not in defaults:
            continue
        rest = text[match.end():match.end() + 200]
        end = SENTENCE_END.search(rest)
        sentence = rest[:end.start() if end else len(rest)]
        if "default" in sentence.lower() or re.match(r" \(\d", rest):
            problems.append(f"{where}:{_line(text, match)}: `{match['key']}` states a default the test cannot read: "
                            "write `section.key` (default VALUE) or `section.key = VALUE` (default)")
    return problems, len(read)


def test_documented_defaults_match_config():
    defaults = config_defaults()
    problems: list[str] = []
    checked = 0
    for path in DOCS:
        found, n = check(path.read_text(), str(path.relative_to(REPO)), defaults)
        problems += found
        checked += n
    assert not problems, "\n".join(problems)
    assert checked >= 8  # the docs do state defaults: a pattern that finds none is broken


@pytest.mark.parametrize("text, bad", [
    ("`stream.component_wait_s` (default 30 s)", False),
    ("`stream.component_wait_s` (default 10 s)", True),
    ("`stream.component_wait_s` (10 s)", True),
    ("`stream.component_wait_s` defaults to 10 s", True),
    ("`publish.endpoint` (default `\"\"`: nothing is published)", False),
    ("`publish.endpoint` (default `\"tcp://127.0.0.1:5555\"`)", True),
    ("`publish.endpoint` (default\n`tcp://127.0.0.1:5555`).", True),
    ("`publish.endpoint = \"\"` by default", False),
    ("`inference.block_end = \"fast\"` (default)", True),
    ("`metrics.max_station_labels` (default 1000)", False),
    ("`stream.no_such_key` (default 1)", True),
])
def test_checker_catches_drift(text, bad):
    problems, _ = check(text, "example", config_defaults())
    assert bool(problems) == bad, problems
