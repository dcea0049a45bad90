"""Regions: which station a model serves, and every per-model setting a lane needs.

A *region* (``[[regions]]`` in the config) selects stations by FDSN globs and/or a
lat/lon polygon and names a model. :class:`RegionRouter` maps a station key
(``NET.STA.LOC.FAM``, the pipeline's station key, e.g. ``OK.W35A..HH?``) to its region;
:func:`build_lane_specs` turns each region and its loaded model into a frozen
:class:`LaneSpec` holding everything the inference lane of that region needs, with
*model-derived defaults*: what the user did not set comes from the model itself, in
the model's own samples, as SeisBench ``annotate``/``classify`` would use it.

Resolution order of every overridable setting (first one present wins):
region override → global option *set in the file* (``[inference]``, ``[picking]``,
``[stream]``) → the model's ``default_args`` → SeisBench's class default. The global
options keep their old Python defaults for code that reads them directly, but only
count as overrides when the file sets them (:func:`rtpick.config.explicitly_set`).

Routing rules (decisions, documented in docs/regions.md and the config reference):

- Regions are tried in file order; the first match wins. The region named
  ``default`` is tried last whatever its position and takes every station.
- A region with both ``stations`` and ``polygon`` needs both to match (the globs
  narrow the polygon, e.g. to one channel family).
- Polygons are planar in (lon, lat) degrees: fine for regional networks, not for
  polygons across the antimeridian or a pole.
- With ``[[regions]]`` but no ``default`` region, unmatched stations are not picked
  (reported at start-up and by ``rtpick models``). Without any ``[[regions]]`` every
  station belongs to the implicit ``default`` region built from ``[inference]``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rtpick.config import Config, RegionConfig, explicitly_set
from rtpick.inference.models import LoadedModel, ModelError, Preprocessing, load_model, preprocessing_for

DEFAULT_REGION = "default"
DEFAULT_BUFFER_S = 120.0  # the historical buffer: absorbs component skew and scheduling delay
# Labels that are not picked phases (PhaseNet's noise trace, EQTransformer's detection trace).
NON_PHASE_LABELS = frozenset({"N", "Noise", "Detection"})


class RegionError(Exception):
    """Configuration problems of regions, one line each, naming the region and the key."""

    def __init__(self, problems: Sequence[str]):
        super().__init__("\n".join(problems))
        self.problems = list(problems)


# ---------------------------------------------------------------------------------------
# Regions and inventory


def effective_regions(config: Config) -> list[tuple[RegionConfig, str]]:
    """The regions in force with each one's config key prefix; none configured = implicit default."""
    if not config.regions:
        return [(RegionConfig(name=DEFAULT_REGION), "inference")]
    return [(region, f"regions.{i}") for i, region in enumerate(config.regions)]


@dataclass(frozen=True)
class InventoryStation:
    """One station (or channel family) of the inventory, with its coordinates."""

    network: str
    station: str
    location: str | None  # None when the inventory has stations only (CSV)
    family: str | None  # channel family, e.g. "HH?"; None for CSV inventories
    latitude: float
    longitude: float

    @property
    def key(self) -> str:
        """``NET.STA.LOC.FAM`` (the pipeline's station key), or ``NET.STA`` for CSV inventories."""
        if self.family is None:
            return f"{self.network}.{self.station}"
        return f"{self.network}.{self.station}.{self.location}.{self.family}"


def load_inventory(path: str | Path) -> list[InventoryStation]:
    """Stations from StationXML (ObsPy ``read_inventory``) or the associator's CSV/SQLite format.

    Raises ValueError with the file and the reason.
    """
    path = Path(path)
    if path.suffix.lower() in (".csv", ".db", ".sqlite"):
        from rtpick.associate.stations import load_stations

        table = load_stations(path)
        out = []
        for key, lat, lon in zip(table.keys, table.latitude, table.longitude):
            net, _, sta = key.rpartition(".")
            out.append(InventoryStation(net, sta, None, None, float(lat), float(lon)))
        return out
    import obspy

    try:
        inventory = obspy.read_inventory(str(path))
    except Exception as exc:  # ObsPy raises many kinds for unreadable files
        raise ValueError(f"{path}: cannot read as StationXML: {exc}") from None
    seen: dict[str, InventoryStation] = {}
    for net in inventory:
        for sta in net:
            for cha in sta:
                lat = cha.latitude if cha.latitude is not None else sta.latitude
                lon = cha.longitude if cha.longitude is not None else sta.longitude
                item = InventoryStation(net.code, sta.code, cha.location_code, cha.code[:2] + "?", float(lat), float(lon))
                seen.setdefault(item.key, item)
            if not len(sta):  # station-level inventory: no channels to form families
                item = InventoryStation(net.code, sta.code, None, None, float(sta.latitude), float(sta.longitude))
                seen.setdefault(item.key, item)
    if not seen:
        raise ValueError(f"{path}: no stations")
    return list(seen.values())


def point_in_polygon(lat: float, lon: float, polygon: Sequence[tuple[float, float]]) -> bool:
    """Ray casting in (lon, lat) degrees; points on an edge count as inside."""
    inside = False
    n = len(polygon)
    for i in range(n):
        lat1, lon1 = polygon[i]
        lat2, lon2 = polygon[(i + 1) % n]
        # on the edge (collinear and within the segment's box)
        cross = (lon2 - lon1) * (lat - lat1) - (lat2 - lat1) * (lon - lon1)
        if abs(cross) < 1e-12 and min(lon1, lon2) <= lon <= max(lon1, lon2) and min(lat1, lat2) <= lat <= max(lat1, lat2):
            return True
        if (lat1 > lat) != (lat2 > lat):
            lon_at = lon1 + (lat - lat1) * (lon2 - lon1) / (lat2 - lat1)
            if lon < lon_at:
                inside = not inside
    return inside


def _glob_match(pattern: str, key: str) -> bool:
    """FDSN glob against a station key; a ``NET.STA`` key (CSV inventory) matches on NET.STA alone."""
    parts = key.split(".")
    if len(parts) == 2:
        return fnmatch.fnmatchcase(key, ".".join(pattern.split(".")[:2]))
    return fnmatch.fnmatchcase(key, pattern)


@dataclass(frozen=True)
class Coverage:
    """Which inventory stations each region takes (``rtpick models``, start-up report)."""

    stations: Mapping[str, list[str]]  # region name -> inventory station keys
    unmatched: list[str]  # inventory stations no region takes
    empty: list[str]  # regions that take no inventory station


class RegionRouter:
    """Station key → region name (cached); first match in file order, ``default`` last."""

    def __init__(self, regions: Sequence[RegionConfig], inventory: Sequence[InventoryStation] = ()):
        self.inventory = list(inventory)
        self._ordered = [r for r in regions if r.name != DEFAULT_REGION]
        self._default = next((r.name for r in regions if r.name == DEFAULT_REGION), None)
        self._coords: dict[str, tuple[float, float]] = {}
        for item in self.inventory:
            self._coords.setdefault(f"{item.network}.{item.station}", (item.latitude, item.longitude))
        self._cache: dict[str, str | None] = {}

    @classmethod
    def from_config(cls, config: Config, inventory: Sequence[InventoryStation] | None = None) -> "RegionRouter":
        """Router of the regions in force; the inventory is read from ``stream.inventory`` unless given."""
        if inventory is None:
            inventory = load_inventory(config.stream.inventory) if config.stream.inventory else []
        return cls([region for region, _ in effective_regions(config)], inventory)

    def route(self, key: str) -> str | None:
        """The region of station key ``NET.STA.LOC.FAM`` (or ``NET.STA``); None = no region takes it."""
        if key not in self._cache:
            self._cache[key] = next((r.name for r in self._ordered if self._matches(r, key)), self._default)
        return self._cache[key]

    def _matches(self, region: RegionConfig, key: str) -> bool:
        if region.stations and not any(_glob_match(p, key) for p in region.stations):
            return False
        if region.polygon:
            coords = self._coords.get(".".join(key.split(".")[:2]))
            return coords is not None and point_in_polygon(coords[0], coords[1], region.polygon)
        return True

    def coverage(self) -> Coverage:
        """Inventory stations per region, stations no region takes, regions taking none."""
        names = [r.name for r in self._ordered] + ([self._default] if self._default else [])
        per: dict[str, list[str]] = {name: [] for name in names}
        unmatched = []
        for item in self.inventory:
            region = self.route(item.key)
            (per[region] if region is not None else unmatched).append(item.key)
        return Coverage(per, unmatched, [name for name, keys in per.items() if not keys])


# ---------------------------------------------------------------------------------------
# Lane specs


@dataclass(frozen=True)
class LaneSpec:
    """Everything one region's inference lane needs; all sample counts in the model's own samples."""

    region: str
    model_id: str  # the spec as configured; picks carry it
    sha256: str  # of the weights; picks carry it
    architecture: str
    device: str
    fs: float  # model sampling rate (Hz); the lane resamples its stations to it
    in_samples: int  # window length
    overlap: int
    step: int  # in_samples - overlap
    labels: tuple[str, ...]  # model output order, e.g. ("N", "P", "S")
    component_order: str  # e.g. "ZNE"
    thresholds: Mapping[str, float]  # per picked phase (labels minus N/Noise/Detection)
    threshold_sources: Mapping[str, str]  # phase -> "region override" | "[picking]" | "model default_args" | "SeisBench default"
    detection_threshold: float | None  # EQTransformer-style detection trace; None when the model has none
    stacking: str  # "avg" | "max"
    blinding: tuple[int, int]
    channels: tuple[str, ...]  # channel families, e.g. ("HH?", "BH?")
    batch_size: int
    buffer_samples: int  # ring buffer per channel at fs: >= 2 windows + one step
    preprocessing: Preprocessing
    sources: Mapping[str, str]  # "overlap" | "stacking" | "blinding" | "buffer" -> where the value came from
    backend: str = "eager"  # inference backend (rtpick.inference.backends): region override, else [inference]
    forward_worker: bool = False  # forward on the engine's worker thread: region override, else [inference], 'auto' resolved by device

    def argdict(self) -> dict[str, Any]:
        """The SeisBench annotate arguments of this lane (for the model's batch hooks)."""
        return {"overlap": self.overlap, "stacking": self.stacking, "blinding": self.blinding}

    def model_argdict(self, model: Any) -> dict[str, Any]:
        """What the lane's engine hands ``model``'s batch hooks: its ``default_args`` under the lane's own."""
        return {**(getattr(model, "default_args", {}) or {}), **self.argdict()}

    def restart_changes(self, new: LaneSpec) -> list[str]:
        """The :data:`RESTART_FIELDS` that ``new`` changes: a running lane cannot take them."""
        return [name for name in RESTART_FIELDS if getattr(self, name) != getattr(new, name)]


# LaneSpec fields a running lane cannot change: they size its stations' buffers, stacking
# arrays, trigger state and window grid (field -> what the operator is told)
RESTART_FIELDS: dict[str, str] = {
    "fs": "sampling rate (Hz)",
    "in_samples": "window length (samples)",
    "step": "window step (samples)",
    "labels": "output labels",
    "component_order": "component order",
    "stacking": "stacking",
    "channels": "channel families",
    "buffer_samples": "buffer length (samples)",
}


def region_models(config: Config) -> dict[str, tuple[str, str]]:
    """Region name → (model spec, device) it needs."""
    inf = config.inference
    return {region.name: (region.model or inf.model, region.device or inf.device) for region, _ in effective_regions(config)}


def load_region_models(config: Config) -> dict[tuple[str, str], LoadedModel]:
    """Load each distinct (model spec, device) once; a failure names every region that uses it."""
    loaded, problems = _load_models(config)
    if problems:
        raise RegionError(problems)
    return loaded


def _load_models(config: Config) -> tuple[dict[tuple[str, str], LoadedModel], list[str]]:
    """The models that load, and one problem line per region whose model does not."""
    users: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for region, prefix in effective_regions(config):
        wanted = (region.model or config.inference.model, region.device or config.inference.device)
        key = f"{prefix}.model" if region.model else "inference.model"
        users.setdefault(wanted, []).append((region.name, key))
    loaded: dict[tuple[str, str], LoadedModel] = {}
    problems = []
    for (spec, device), names in users.items():
        try:
            loaded[(spec, device)] = load_model(spec, device)
        except ModelError as exc:
            problems += [f"region {name!r}: key '{key}': {exc}" for name, key in names]
    return loaded, problems


def _model_default(model: Any, key: str) -> tuple[Any, str]:
    """A SeisBench annotate argument as ``annotate`` resolves it: default_args, then the class default."""
    default_args = getattr(model, "default_args", {}) or {}
    if key in default_args:
        return default_args[key], "model default_args"
    generic = "*_threshold" if key.endswith("_threshold") and key not in model._annotate_args else key
    return model._annotate_args[generic][1], "SeisBench default"


def build_lane_specs(config: Config, loaded_models: Mapping[tuple[str, str], LoadedModel]) -> list[LaneSpec]:
    """One :class:`LaneSpec` per region in force, with model-derived defaults.

    ``loaded_models`` maps (model spec, device) to the loaded model, as
    :func:`load_region_models` returns. Every problem is collected and raised together
    as :class:`RegionError` (one line per region and key), so ``check-config`` can list
    them all and ``run`` never meets them as a traceback.
    """
    missing = sorted({f"{spec} on {device}" for spec, device in region_models(config).values() if (spec, device) not in loaded_models})
    if missing:
        raise RegionError([f"model not loaded: {m} (use load_region_models)" for m in missing])
    return _lane_specs(config, loaded_models, [])


def region_lane_spec(config: Config, name: str, loaded_models: Mapping[tuple[str, str], LoadedModel]) -> LaneSpec:
    """The :class:`LaneSpec` of region ``name`` alone (hot swap: one region's problem must not block the others).

    Resolution as :func:`build_lane_specs`; ``loaded_models`` needs only that region's model.
    """
    for region, prefix in effective_regions(config):
        if region.name == name:
            return _lane_spec(config, region, prefix, loaded_models)
    raise RegionError([f"region {name!r}: not in the configuration"])


def _lane_specs(config: Config, loaded_models: Mapping[tuple[str, str], LoadedModel], problems: list[str]) -> list[LaneSpec]:
    """Specs of the regions whose model is in ``loaded_models``; raises with ``problems`` plus their own."""
    specs = []
    for region, prefix in effective_regions(config):
        if (region.model or config.inference.model, region.device or config.inference.device) not in loaded_models:
            continue  # its load failure is already among the problems
        try:
            specs.append(_lane_spec(config, region, prefix, loaded_models))
        except RegionError as exc:
            problems += exc.problems
    if problems:
        raise RegionError(problems)
    return specs


def _lane_spec(config: Config, region: RegionConfig, prefix: str, loaded_models: Mapping[tuple[str, str], LoadedModel]) -> LaneSpec:
    inf, pick, stream = config.inference, config.picking, config.stream
    model_key = f"{prefix}.model" if region.model else "inference.model"
    spec, device = region.model or inf.model, region.device or inf.device
    where = f"region {region.name!r}"
    loaded = loaded_models[(spec, device)]
    model = loaded.model
    problems: list[str] = []
    try:
        pre = preprocessing_for(model)
    except ModelError as exc:
        raise RegionError([f"{where}: key '{model_key}': model {spec!r} cannot be run exactly: {exc}"]) from None
    fs, n = float(model.sampling_rate), int(model.in_samples)

    # overlap, in the model's own samples
    if region.overlap is not None:
        overlap, overlap_src, overlap_key = region.overlap, "region override", f"{prefix}.overlap"
    elif region.overlap_s is not None:
        overlap, overlap_src, overlap_key = int(round(region.overlap_s * fs)), "region override", f"{prefix}.overlap_s"
    elif explicitly_set(inf, "overlap_s"):
        overlap, overlap_src, overlap_key = int(round(inf.overlap_s * fs)), "[inference]", "inference.overlap_s"
    else:
        value, overlap_src = _model_default(model, "overlap")
        overlap, overlap_key = (int(value * n) if value < 1 else int(value)), model_key
    if not 0 <= overlap < n:
        problems.append(f"{where}: key '{overlap_key}': overlap {overlap} samples must be below the window of {n} samples ({n / fs:g} s at {fs:g} Hz)")
    step = n - overlap

    stacking, stacking_src = _pick(region.stacking, inf, "stacking", model)
    blinding_value, blinding_src = _pick(region.blinding_samples, inf, "blinding_samples", model, model_key="blinding")
    blinding = (int(blinding_value[0]), int(blinding_value[1]))
    if sum(blinding) >= n:
        problems.append(f"{where}: key '{prefix}.blinding_samples': blinding {blinding} leaves nothing of a {n}-sample window")

    phases = [label for label in model.labels if label not in NON_PHASE_LABELS]
    thresholds, threshold_sources = {}, {}
    for phase in phases:
        if region.thresholds and phase in region.thresholds:
            thresholds[phase], threshold_sources[phase] = region.thresholds[phase], "region override"
        elif explicitly_set(pick, "thresholds") and phase in pick.thresholds:
            thresholds[phase], threshold_sources[phase] = pick.thresholds[phase], "[picking]"
        else:
            value, threshold_sources[phase] = _model_default(model, f"{phase}_threshold")
            thresholds[phase] = float(value)
    for phase in sorted(set(region.thresholds or {}) - set(phases) - {"detection"}):
        problems.append(f"{where}: key '{prefix}.thresholds.{phase}': model {spec!r} has no phase {phase!r} (labels {list(model.labels)})")
    detection = None
    if "Detection" in model.labels:
        if region.thresholds and "detection" in region.thresholds:
            detection = region.thresholds["detection"]
        else:
            detection = float(_model_default(model, "detection_threshold")[0])

    needed = 2 * n + step
    if explicitly_set(stream, "buffer_seconds"):
        buffer, buffer_src = int(round(stream.buffer_seconds * fs)), "[stream]"
        if buffer < needed:
            problems.append(
                f"{where}: key 'stream.buffer_seconds': {stream.buffer_seconds:g} s is too small for model {spec!r}: "
                f"its lane needs two windows plus one step = {needed} samples = {needed / fs:g} s at {fs:g} Hz (or leave it unset)"
            )
    else:
        buffer, buffer_src = max(int(round(DEFAULT_BUFFER_S * fs)), needed), "default: 120 s, at least two windows plus one step"
    if problems:
        raise RegionError(problems)
    return LaneSpec(
        region=region.name,
        model_id=loaded.model_id,
        sha256=loaded.sha256,
        architecture=type(model).__name__,
        device=device,
        fs=fs,
        in_samples=n,
        overlap=overlap,
        step=step,
        labels=tuple(model.labels),
        component_order=str(model.component_order),
        thresholds=MappingProxyType(thresholds),
        threshold_sources=MappingProxyType(threshold_sources),
        detection_threshold=detection,
        stacking=str(stacking),
        blinding=blinding,
        channels=tuple(region.channels if region.channels is not None else stream.channels),
        batch_size=region.batch_size or inf.batch_size,
        buffer_samples=buffer,
        preprocessing=pre,
        sources=MappingProxyType({"overlap": overlap_src, "stacking": stacking_src, "blinding": blinding_src, "buffer": buffer_src}),
        backend=region.backend or inf.backend,
        forward_worker=forward_worker_on(region.forward_worker or inf.forward_worker, device),
    )


def forward_worker_on(setting: str, device: str) -> bool:
    """``inference.forward_worker`` resolved for ``device``: 'auto' is on for CUDA only.

    On CPU the forward already keeps every core it is given busy, so a worker thread
    has nothing to overlap with and only adds its hand-off (measured: docs/operations.md).
    """
    if setting == "auto":
        return device.startswith("cuda")
    return setting == "on"


def _pick(region_value: Any, inf: Any, key: str, model: Any, model_key: str | None = None) -> tuple[Any, str]:
    """Region override → ``[inference]`` option set in the file → model default."""
    if region_value is not None:
        return region_value, "region override"
    if explicitly_set(inf, key):
        return getattr(inf, key), "[inference]"
    return _model_default(model, model_key or key)


# ---------------------------------------------------------------------------------------
# The whole plan: what check-config validates, `rtpick models` shows and `run` starts from


@dataclass(frozen=True)
class LanePlan:
    """The regions in force, resolved: lane specs, the loaded models and the router."""

    specs: list[LaneSpec]
    models: Mapping[tuple[str, str], LoadedModel]  # (model spec, device) -> model
    router: RegionRouter

    def model_of(self, spec: LaneSpec) -> LoadedModel:
        return self.models[(spec.model_id, spec.device)]


def plan_lanes(config: Config) -> LanePlan:
    """Inventory, models and lane specs of ``config``; every problem raised together as :class:`RegionError`."""
    problems: list[str] = []
    try:
        router = RegionRouter.from_config(config)
    except (OSError, ValueError) as exc:
        problems.append(f"key 'stream.inventory': {exc}")
    models, load_problems = _load_models(config)
    specs = _lane_specs(config, models, problems + load_problems)
    return LanePlan(specs, models, router)


def coverage_warnings(coverage: Coverage, have_inventory: bool) -> list[str]:
    """Start-up / ``rtpick models`` lines about stations no region takes and regions taking none."""
    if not have_inventory:
        return []
    lines = []
    if coverage.unmatched:
        lines.append(f"{len(coverage.unmatched)} inventory station(s) match no region and will not be picked: {', '.join(coverage.unmatched)}")
    for name in coverage.empty:
        lines.append(f"region {name!r} matches no inventory station")
    return lines
