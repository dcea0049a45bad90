"""Configuration: pydantic models of ``config.toml``, the single source of truth.

Every option is declared once here with its description and default;
``config.example.toml`` is rendered from these models (``python -m rtpick.config``)
and a test keeps the two in step. Unknown keys are errors, and every error names
the file, the dotted key path, the line where we can find it and what was expected.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


# Marks options whose default comes from the model when the user leaves them unset
# (see rtpick.inference.regions.build_lane_specs). The Python default stays for code
# that reads the option directly; set in the file, the option overrides the model.
# config.example.toml shows these options commented out so copying it keeps them unset.
FROM_MODEL: dict[str, Any] = {"from_model": True}
# inference backends (rtpick.inference.backends.BACKENDS; not imported here: that module loads torch)
BackendName = Literal["auto", "eager", "onnxruntime", "openvino", "bf16"]


def explicitly_set(section: BaseModel, key: str) -> bool:
    """Whether ``key`` was given in the config file (not just defaulted)."""
    return key in section.model_fields_set


class Section(BaseModel):
    """Base of every config section: unknown keys are rejected, values validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ReplayConfig(Section):
    """Replay of miniSEED archives (``rtpick replay`` and the demo)."""

    speed: float = Field(0.0, ge=0.0, description="Replay speed: 0 = as fast as possible, 1 = real time, 10 = ten times real time.")
    record_samples: int = Field(412, ge=1, description="Samples per emitted packet (a 512-byte Steim-2 record holds about 400 samples).")


class StreamConfig(Section):
    """Per-channel ring buffers and channel grouping."""

    buffer_seconds: float = Field(120.0, gt=0, description="Seconds of data kept per channel; bounds memory. Unset = 120 s, lengthened where a model's window needs it (two windows plus one step); set = used as given for every lane and must hold that.", json_schema_extra=FROM_MODEL)
    component_wait_s: float = Field(30.0, ge=0, description="Data seconds a station waits for a lagging component before filling it with zeros (as SeisBench does for missing components); must exceed the usual skew between components (about one record).")
    resample_response: Literal["seisbench", "flat"] = Field("seisbench", description="Response of the streaming resampler for channels not at the model rate: 'seisbench' imitates SeisBench annotate (Butterworth for integer decimation, ObsPy's Hann-tapered FFT resampling otherwise); 'flat' is a plain low-pass at 0.9 of the lower Nyquist.")
    channels: list[str] = Field(
        default_factory=lambda: ["HH?", "BH?", "EH?", "HN?", "SH?"],
        description="Channel families to pick on (SEED band+instrument with '?' for the component).",
    )
    max_future_s: float = Field(300.0, gt=0, description="A record starting more than this many seconds after the wall clock is rejected as 'future_time' (a bogus date, e.g. 2099, must not move a channel's position); the wall clock of the host must be NTP-synchronised.")
    quarantine_after: int = Field(5, ge=1, description="Consecutive records of one channel whose processing fails (an unexpected error, counted as 'processing_error') before the channel is quarantined: its records are then rejected as 'quarantined' for quarantine_s, other channels go on.")
    quarantine_s: float = Field(300.0, ge=0, description="Seconds (wall clock) a quarantined channel's records are rejected before it is tried again.")
    inventory: str = Field("", description="Station inventory for region polygons and `rtpick models`: StationXML (read with ObsPy) or a CSV network,station,latitude,longitude,elevation_m (as [associate] stations); empty = none (regions select by stations globs only, matched at run time).")


class InferenceConfig(Section):
    """Model, batching and threads of the inference engine."""

    model: str = Field("seisbench:PhaseNet/original", description="Model: 'seisbench:<Class>/<weights>', 'file:<path>' (SeisBench save format <path>.pt + <path>.json, or an `rtpick adapt` output folder) or 'file:<Class>:<path>' when the sidecar does not name its class (e.g. 'file:EQTransformer:/models/eqt').")
    device: str = Field("cpu", description="torch device: 'cpu' or 'cuda'.")
    threads: int = Field(2, ge=1, description="torch intra-op threads.")
    batch_size: int = Field(64, ge=1, description="Maximum windows per forward pass.")
    max_wait_s: float = Field(1.0, ge=0, description="Run a partial batch once its oldest window has waited this long (real-time mode).")
    overlap_s: float = Field(15.0, ge=0, description="Overlap of consecutive windows in seconds. Unset = the model's SeisBench default in its own samples (PhaseNet 1500, EQTransformer 3000), so any sampling rate matches SeisBench annotate.", json_schema_extra=FROM_MODEL)
    stacking: Literal["avg", "max"] = Field("avg", description="How overlapping window predictions are combined, as SeisBench 'stacking'. Unset = the model's default (PhaseNet avg, EQTransformer max).", json_schema_extra=FROM_MODEL)
    blinding_samples: tuple[int, int] = Field((0, 0), description="Prediction samples discarded at the start and end of each window, as SeisBench 'blinding'. Unset = the model's default (PhaseNet 0 0, EQTransformer 500 500).", json_schema_extra=FROM_MODEL)
    block_end: Literal["exact", "fast"] = Field("exact", description="'exact': hold picks back until a gap or end of data could no longer add SeisBench's end-aligned window (identical to annotate; up to one stride more latency). 'fast': lower latency, the end window only adds to samples not yet final.")
    backend: BackendName = Field("eager", description="How the model forward runs (CPU): 'eager' torch; 'onnxruntime' the model exported to ONNX (cached, keyed by the weights' sha256) and run by ONNX Runtime, fp32; 'openvino' the same ONNX file compiled by OpenVINO, fp32 (fastest on CPU, steadiest under load); 'bf16' torch bfloat16, the model traced under autocast and frozen at load (reduced precision, CPUs with avx512_bf16 or AMX); 'auto' the fastest verified fp32 one, measured at load. Every non-eager backend is checked against eager at load (fp32 within 1e-4) and refused, with the reason logged, in favour of eager. Other devices run eager. See docs/operations.md (tuning).")
    forward_worker: Literal["auto", "on", "off"] = Field("auto", description="Run the model forward on its own worker thread, with two alternating batch buffers (pinned host memory on CUDA), so the next batch is gathered while the current one runs: 'on', 'off', or 'auto' = on for CUDA devices, off on CPU (there the forward already uses every core given to it, and the hand-off only costs). Picks are the same either way. See docs/operations.md (tuning).")
    backend_cache_dir: str = Field("", description="Folder of exported ONNX models; empty = $CACHE_DIRECTORY (systemd CacheDirectory=), else $XDG_CACHE_HOME/rtpick, else ~/.cache/rtpick.")


def _check_thresholds(value: dict[str, float] | None) -> dict[str, float] | None:
    for phase, thr in (value or {}).items():
        if not 0.0 < thr <= 1.0:
            raise ValueError(f"threshold for {phase} must be in (0, 1], got {thr}")
    return value


class PickingConfig(Section):
    """Turning stacked probabilities into picks (SeisBench ``classify``)."""

    thresholds: dict[str, float] = Field(
        default_factory=lambda: {"P": 0.3, "S": 0.3},
        description="Trigger threshold per phase; a pick ends when the probability falls below half of it. Unset = the model's default_args ('P_threshold', ... as `rtpick adapt` writes them; SeisBench's 0.3 for PhaseNet).",
        json_schema_extra=FROM_MODEL,
    )

    @field_validator("thresholds")
    @classmethod
    def _thresholds_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        return _check_thresholds(value)


class EarlyConfig(Section):
    """Preliminary picks from tip windows: low latency ahead of the exact (final) picks; see docs/messages.md."""

    enabled: bool = Field(False, description="Score each station's newest data with a window aligned to its end every interval_s and publish peaks found there as preliminary picks (topic 'pick_early.NET.STA'), each followed by exactly one final or retraction with the same pick_id. Off by default because it multiplies the inference load (PhaseNet, interval_s = 2: 0.5 tip windows per station and second next to 0.07 regular ones, about 8x): budget the CPU first. Off = final picks only, exactly as without this section.")
    interval_s: float = Field(2.0, gt=0, description="Seconds (wall clock) between two tip windows of one station; each costs one extra window of inference, so the extra load is stations / interval_s windows per second.")
    min_context_s: float = Field(1.0, ge=0, description="A tip-window peak becomes a preliminary pick only if it lies at least this many seconds before the window end (PhaseNet needs data after an onset to shape its peak; less context = earlier but less reliable picks). Measured (bench/latency.py, synthetic network): 1 s: 8 % of preliminaries retracted, 2 s: 8 %, 3 s: 6 %, 5 s: 2 %, each second adding about one second of latency at the same recall.")
    match_s: float = Field(0.5, gt=0, description="A final pick of the same station and phase within this many seconds of an open preliminary pick finalises it (takes its pick_id); a preliminary no final can match any more is retracted.")


class SeedLinkConfig(Section):
    """SeedLink client ingest (``rtpick run``)."""

    server: str = Field("127.0.0.1:18000", description="SeedLink server as HOST:PORT.")
    streams: list[str] = Field(
        default_factory=lambda: ["OK_*:HH? BH? EH?"],
        description="Selectors 'NET_STA[:CHANNELS]' (SeisComP style, '*' and '?' allowed; channel patterns like 'HH?' or '00HHZ' separated by spaces).",
    )
    state_file: str = Field("rtpick-seedlink.state", description="Resume state (last sequence number per station, pipeline resume points, recently published picks; atomic writes). A relative path lies under $STATE_DIRECTORY (systemd StateDirectory=, e.g. /var/lib/rtpick) when set, else next to the config file, else in the working directory.")
    begin_time: str | None = Field(None, description="Optional ISO-8601 begin time for backfill after an outage; unset = resume from state or real time.")
    netto_s: float = Field(30.0, gt=0, description="Network timeout: reconnect if nothing arrives for this long.")
    reconnect_min_s: float = Field(0.5, gt=0, description="First reconnect delay; doubles on each failure (with jitter).")
    reconnect_max_s: float = Field(30.0, gt=0, description="Largest reconnect delay.")


class PublishConfig(Section):
    """ZeroMQ publication of picks, events and status heartbeats."""

    endpoint: str = Field("", description="ZeroMQ PUB endpoint to bind, e.g. 'tcp://127.0.0.1:5555' (this host), 'tcp://*:5555' (all interfaces) or 'ipc:///run/rtpick/picks'; empty = do not publish.")
    sndhwm: int = Field(10000, ge=1, description="Send high-water mark: messages queued per subscriber before further messages to it are dropped (and counted).")
    status_interval_s: float = Field(10.0, gt=0, description="Seconds between rtpick.status/1 heartbeats.")
    linger_s: float = Field(1.0, ge=0, description="On shutdown, how long queued messages may still be sent before the socket closes.")
    curve_secret_key_file: str | None = Field(None, description="Optional CURVE server certificate with secret key (zmq.auth format, e.g. 'server.key_secret'); set = encrypt and authenticate.")
    curve_authorized_keys_dir: str | None = Field(None, description="With CURVE: directory of client public certificates ('*.key') allowed to subscribe; unset = any client that knows the server key.")

    @field_validator("endpoint")
    @classmethod
    def _endpoint_transport(cls, value: str) -> str:
        if value and not re.match(r"^(tcp|ipc|inproc)://.+", value):
            raise ValueError("must look like 'tcp://HOST:PORT' or 'ipc:///path' (or be empty)")
        return value


class MetricsConfig(Section):
    """Prometheus metrics endpoint."""

    listen: str = Field("", description="HOST:PORT of the Prometheus /metrics HTTP endpoint, e.g. '127.0.0.1:9733' (port 0 = any free port); empty = no endpoint.")
    live_after_s: float = Field(60.0, gt=0, description="A station counts as live while its newest data is younger than this (rtpick_stations_live, status heartbeat).")
    max_station_labels: int = Field(1000, ge=1, description="Stations with their own 'station' label on per-station metrics, first seen first; further stations share the label '_other' (worst value of them), which bounds the series per scrape (see docs/operations.md).")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value and not re.match(r"^(\[[0-9a-fA-F:.]+\]|[^:\s]+):\d{1,5}$", value):
            raise ValueError("must be 'HOST:PORT' (or empty)")
        return value


class AssociateConfig(Section):
    """Swarm-aware event association (``rtpick associate``; see docs/association.md)."""

    enabled: bool = Field(False, description="Associate picks into events inside the daemon (events on ZeroMQ topic 'event').")
    stations: str = Field("", description="Station coordinates: CSV (network,station,latitude,longitude,elevation_m) or a tt_stations_1D.db SQLite file; empty = the bundled Oklahoma demo stations (stations.csv).")
    region: list[float] = Field(default_factory=list, description="Optional [lat_min, lat_max, lon_min, lon_max]: only stations inside are used (the search grid covers them plus margin_km); empty = all stations.")
    network: str = Field("OK", description="Network code for station files without one (tt_stations_1D.db).")
    velocity_model: str = Field("", description="TauP .nd file of a 1D model, or '0d:VP,VS' (km/s) for a homogeneous one; empty = the bundled Oklahoma.nd.")
    grid_spacing_km: float = Field(6.0, gt=0, description="Spacing of the coarse hypocentre grid the picks vote on.")
    depths_km: list[float] = Field(default_factory=lambda: [3.0, 9.0, 15.0], description="Depths of the coarse grid.")
    max_depth_km: float = Field(25.0, gt=0, description="Deepest hypocentre the location search considers.")
    margin_km: float = Field(30.0, ge=0, description="Search area beyond the stations' bounding box.")
    vote_distance_km: float = Field(80.0, gt=0, description="Stations farther than this from a grid node do not vote for it (limits random coincidences in dense networks).")
    tolerance_s: float = Field(0.3, gt=0, description="Pick time tolerance floor (s); see tolerance_fraction.")
    tolerance_fraction: float = Field(0.02, ge=0, description="Tolerance grows with the travel time: max(tolerance_s, tolerance_fraction * tt).")
    min_picks: int = Field(8, ge=3, description="Minimum picks (one per station and phase) of an event, on top of the picks expected by chance at the current pick rate.")
    min_p: int = Field(4, ge=0, description="Minimum P picks of an event.")
    min_s: int = Field(0, ge=0, description="Minimum S picks of an event.")
    min_stations: int = Field(4, ge=1, description="Minimum distinct station sites of an event.")
    min_pick_fraction: float = Field(0.5, ge=0, le=1, description="An event's detection radius reaches the farthest P-picked station that keeps this share of nearer stations picked; picks beyond it are dropped.")
    horizon_s: float = Field(120.0, gt=0, description="Picks older than this (behind the newest pick) expire; events then become final.")
    step_s: float = Field(1.0, gt=0, description="How often (in data time) new events are searched for.")
    use_probability: bool = Field(True, description="Weight picks by their probability.")
    depth_prior_km: float = Field(8.0, ge=0, description="Locator: regional mean focal depth (km below sea level) a weak Gaussian prior pulls towards where the network cannot resolve depth (no station within about a focal depth).")
    depth_prior_sigma_km: float = Field(8.0, gt=0, description="Locator: standard deviation of that depth prior (km); smaller pins poorly constrained depths harder to depth_prior_km.")
    metrics_listen: str = Field("", description="rtpick associate only: HOST:PORT of its Prometheus /metrics endpoint (port 0 = any free port); empty = none. --metrics overrides it.")


_REGION_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"


class RegionConfig(Section):
    """A region: the stations one model serves, with optional overrides of the model's defaults.

    Regions are tried in file order and the first match wins; the region named
    ``default`` (no selector) takes every station no other region matched. Without
    any ``[[regions]]`` the whole network is one implicit ``default`` region built
    from ``[inference]``/``[picking]``, exactly as before regions existed.
    """

    name: str = Field(..., pattern=_REGION_NAME, description="Region name (the 'region' field of picks and metric label); 'default' catches unmatched stations.")
    stations: list[str] = Field(default_factory=list, description="FDSN 'NET.STA.LOC.CHA' globs, e.g. 'OK.*.*.HH?' ('?' and '*' as in shell patterns; CHA is the channel family with '?' for the component).")
    polygon: list[tuple[float, float]] = Field(default_factory=list, description="[lat, lon] vertices (at least 3) of a polygon; stations of stream.inventory inside it belong to the region.")
    model: str | None = Field(None, description="Model spec as inference.model; unset = inference.model.")
    device: str | None = Field(None, description="torch device for this region's model; unset = inference.device.")
    batch_size: int | None = Field(None, ge=1, description="Maximum windows per forward pass of this region's model; unset = inference.batch_size.")
    backend: BackendName | None = Field(None, description="Inference backend of this region's model (as inference.backend); unset = inference.backend.")
    forward_worker: Literal["auto", "on", "off"] | None = Field(None, description="Forward on a worker thread for this region's model (as inference.forward_worker); unset = inference.forward_worker.")
    channels: list[str] | None = Field(None, description="Channel families this region picks on; unset = stream.channels.")
    thresholds: dict[str, float] | None = Field(None, description="Trigger threshold per phase; unset = picking.thresholds if set, else the model's default_args.")
    overlap: int | None = Field(None, ge=0, description="Window overlap in the model's own samples; unset = overlap_s or inference.overlap_s if set, else the model's SeisBench default.")
    overlap_s: float | None = Field(None, ge=0, description="Window overlap in seconds (alternative to overlap).")
    stacking: Literal["avg", "max"] | None = Field(None, description="'avg' or 'max'; unset = inference.stacking if set, else the model's default.")
    blinding_samples: tuple[int, int] | None = Field(None, description="Prediction samples discarded at each window's start and end; unset = inference.blinding_samples if set, else the model's default.")

    @field_validator("thresholds")
    @classmethod
    def _thresholds_in_range(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        return _check_thresholds(value)

    @field_validator("stations")
    @classmethod
    def _four_part_globs(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if pattern.count(".") != 3:
                raise ValueError(f"station selector {pattern!r} must be 'NET.STA.LOC.CHA' (use '*' for any part, e.g. 'OK.*.*.HH?')")
        return value

    @field_validator("polygon")
    @classmethod
    def _polygon_shape(cls, value: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if value and len(value) < 3:
            raise ValueError(f"polygon needs at least 3 [lat, lon] vertices, got {len(value)}")
        for lat, lon in value:
            if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 360.0):
                raise ValueError(f"polygon vertex [{lat}, {lon}] is not [lat, lon]")
        return value

    @model_validator(mode="after")
    def _selector_rules(self) -> "RegionConfig":
        has_selector = bool(self.stations or self.polygon)
        if self.name == "default" and has_selector:
            raise ValueError("the 'default' region takes every unmatched station: give it no stations or polygon")
        if self.name != "default" and not has_selector:
            raise ValueError(f"region {self.name!r} selects no stations: give stations globs and/or a polygon")
        if self.overlap is not None and self.overlap_s is not None:
            raise ValueError("give overlap (model samples) or overlap_s (seconds), not both")
        return self


class LoggingConfig(Section):
    """Logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")


class Config(Section):
    """The whole rtpick configuration file."""

    replay: ReplayConfig = Field(default_factory=ReplayConfig, description="miniSEED replay.")
    stream: StreamConfig = Field(default_factory=StreamConfig, description="Buffers and channel grouping.")
    inference: InferenceConfig = Field(default_factory=InferenceConfig, description="Model and batching.")
    picking: PickingConfig = Field(default_factory=PickingConfig, description="Pick extraction.")
    early: EarlyConfig = Field(default_factory=EarlyConfig, description="Preliminary picks from tip windows.")
    seedlink: SeedLinkConfig = Field(default_factory=SeedLinkConfig, description="SeedLink ingest.")
    publish: PublishConfig = Field(default_factory=PublishConfig, description="ZeroMQ publication.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus metrics.")
    associate: AssociateConfig = Field(default_factory=AssociateConfig, description="Event association.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logging.")
    regions: list[RegionConfig] = Field(default_factory=list, description="Regions, each with its own model; none = one default region from [inference]/[picking].")

    @model_validator(mode="after")
    def _unique_region_names(self) -> "Config":
        names = [region.name for region in self.regions]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"regions: duplicate name(s) {', '.join(duplicates)}")
        if self.regions and any(region.polygon for region in self.regions) and not self.stream.inventory:
            raise ValueError("regions: a polygon needs stream.inventory (station coordinates)")
        return self


class ConfigError(Exception):
    """A configuration problem; the message names the file, key path, line and expectation."""


def _find_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line number of a dotted key in TOML text (section header, then key).

    ``[[regions]]`` entries are located by their index (``regions.1.model`` is the
    ``model`` key under the second ``[[regions]]`` header).
    """
    lines = text.splitlines()
    if len(loc) >= 2 and isinstance(loc[1], int):
        headers = [n for n, line in enumerate(lines, start=1) if re.match(rf"^\[\[\s*{re.escape(str(loc[0]))}\s*\]\]$", line.strip())]
        if loc[1] >= len(headers):
            return None
        start = headers[loc[1]]
        for number in range(start + 1, len(lines) + 1):
            stripped = lines[number - 1].strip()
            if stripped.startswith("["):
                break
            if len(loc) > 2 and re.match(rf"^{re.escape(str(loc[2]))}\s*=", stripped):
                return number
        return start
    keys = [str(k) for k in loc]
    section = ".".join(keys[:-1])
    in_section = section == ""
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        header = re.match(r"^\[([^\]]+)\]$", stripped)
        if header:
            name = header.group(1).strip()
            if name == ".".join(keys):  # the key is a table
                return number
            in_section = name == section
            continue
        if in_section and re.match(rf"^{re.escape(keys[-1])}\s*=", stripped):
            return number
    return None


def load_config(path: str | Path | None) -> Config:
    """Load and validate a config file; ``None`` gives the defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(data, source=str(path), text=text)


def parse_config(data: dict[str, Any], source: str = "<config>", text: str = "") -> Config:
    """Validate a parsed TOML document, turning pydantic errors into :class:`ConfigError`."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(k) for k in err["loc"]) or "(top level)"
            line = _find_line(text, err["loc"]) if text else None
            where = f"{source}:{line}" if line else source
            if err["type"] == "extra_forbidden":
                message = "unknown key (check spelling; see config.example.toml)"
            else:
                message = err["msg"]
                if "input" in err and not isinstance(err["input"], dict):
                    message += f" (got {err['input']!r})"
            problems.append(f"{where}: key '{key}'{_region_note(data, err['loc'])}: {message}")
        raise ConfigError("\n".join(problems)) from None


def _region_note(data: dict[str, Any], loc: tuple[Any, ...]) -> str:
    """`` (region 'NAME')`` for errors inside a named ``[[regions]]`` entry."""
    if len(loc) >= 2 and loc[0] == "regions" and isinstance(loc[1], int):
        regions = data.get("regions")
        if isinstance(regions, list) and loc[1] < len(regions) and isinstance(regions[loc[1]], dict) and "name" in regions[loc[1]]:
            return f" (region {regions[loc[1]]['name']!r})"
    return ""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return repr(value)


def render_example() -> str:
    """Render ``config.example.toml`` from the models: every option, commented, with its default."""
    out = [
        "# rtpick configuration — every option with its default.",
        "# Generated from rtpick/config.py by `python -m rtpick.config`; do not edit by hand.",
        "",
    ]
    defaults = Config()
    for name in Config.model_fields:
        section = getattr(defaults, name)
        if isinstance(section, list):
            out.extend(_render_regions())
            continue
        out.append(f"# {type(section).__doc__.strip().splitlines()[0]}")
        out.append(f"[{name}]")
        out.extend(_render_options(section))
        out.append("")
    return "\n".join(out)


def _render_options(section: BaseModel) -> list[str]:
    """One commented option per field; unset and model-derived options stay commented out."""
    out = []
    for key, field in type(section).model_fields.items():
        out.append(f"# {field.description}")
        value = getattr(section, key)
        if value is None:
            out.append(f"# {key} = (unset)")
        elif field.json_schema_extra == FROM_MODEL:
            out.append(f"# {key} = {_toml_value(value)}")
        else:
            out.append(f"{key} = {_toml_value(value)}")
    return out


def _render_regions() -> list[str]:
    """The ``[[regions]]`` reference, commented out (no regions by default)."""
    doc = " ".join(line.strip() for line in RegionConfig.__doc__.strip().splitlines() if line.strip())
    out = [f"# {doc}", "# [[regions]]"]
    for key, field in RegionConfig.model_fields.items():
        out.append(f"#   {field.description}")
        out.append(f"#   {key} = " + ('"NAME"' if key == "name" else "(unset)" if not field.is_required() and field.default is None else _toml_value(field.get_default(call_default_factory=True))))
    out.append("")
    return out


if __name__ == "__main__":
    sys.stdout.write(render_example())
