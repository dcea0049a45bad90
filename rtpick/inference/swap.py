"""Hot swap: re-resolve every region's lane from a re-read config, verify new models beside the old ones.

On SIGHUP (``systemctl reload rtpick``, ``rtpick models reload``) the daemon's main
thread calls :func:`plan_reload` with the new config and the lanes in force. For
each region it loads the configured model (each distinct spec and device once),
re-resolves the region's :class:`~rtpick.inference.regions.LaneSpec` exactly as at
start-up (:func:`~rtpick.inference.regions.region_lane_spec`: region override →
option set in the file → the model's ``default_args``), and compares:

- same spec and same weights sha256, same resolved settings: nothing to do;
- same weights, other settings (thresholds, blinding, batch size): a
  :class:`LaneChange` that keeps the running model object;
- other weights (a new spec, or the file changed on disk): the new model is
  *verified* (:func:`verify`) before it becomes a :class:`LaneChange`.

Verification, all off the pipeline thread: the model loads; rtpick can run it
exactly (the refusals of :mod:`rtpick.inference.models`); its sampling rate,
window, step, labels, component order, stacking, channels and buffer equal the
lane's (:data:`rtpick.inference.regions.RESTART_FIELDS`: they size the ring buffers, stacking arrays and
trigger state of stations already running, so changing them "needs a restart");
one dry-run batch of the lane's shape (batch size × components × window, through
the same :class:`~rtpick.inference.engine.InferenceEngine` path as live windows)
gives finite output of shape (batch, window, labels).

A region that fails any step is a :class:`Refusal` (region and reason): the caller
logs it, counts it and keeps the old model; the other regions still change. The
switch itself happens on the pipeline thread between batches
(``Pipeline.swap_model``): windows queued then are computed once, by the new model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from rtpick.config import Config
from rtpick.inference.engine import InferenceEngine
from rtpick.inference.models import LoadedModel, ModelError, load_model
from rtpick.inference.regions import RESTART_FIELDS, LaneSpec, RegionError, effective_regions, region_lane_spec

DRY_RUN_SEED = 20130616
REASON_CHARS = 400  # torch's state-dict errors list every key: the log line keeps the start


@dataclass(frozen=True)
class LaneChange:
    """What the pipeline thread applies to one lane: ``swap_model(region, loaded, spec)``."""

    region: str
    loaded: LoadedModel
    spec: LaneSpec
    new_weights: bool  # False: same model object, only settings (thresholds, blinding, ...) change

    def describe(self, old: LaneSpec) -> str:
        """One log line: what changes, old → new."""
        parts = []
        if self.new_weights:
            parts.append(f"model swapped: {old.model_id} (sha256 {old.sha256[:12]}) -> {self.spec.model_id} (sha256 {self.spec.sha256[:12]})")
        if dict(old.thresholds) != dict(self.spec.thresholds):
            sources = ", ".join(f"{k} {v:g} ({self.spec.threshold_sources[k]})" for k, v in self.spec.thresholds.items())
            parts.append(f"thresholds {sources}")
        for name in ("blinding", "batch_size", "detection_threshold", "device", "forward_worker", "overlap"):
            if getattr(old, name) != getattr(self.spec, name):
                parts.append(f"{name} {getattr(old, name)} -> {getattr(self.spec, name)}")
        return f"region {self.region!r}: " + ("; ".join(parts) or "settings re-resolved")


@dataclass(frozen=True)
class Refusal:
    """A region whose reload was refused; its old model keeps running."""

    region: str
    reason: str

    def __post_init__(self) -> None:
        if len(self.reason) > REASON_CHARS:
            object.__setattr__(self, "reason", self.reason[:REASON_CHARS] + " […]")


@dataclass
class ReloadPlan:
    """The outcome of :func:`plan_reload`: changes to apply, refusals to report, notes to log."""

    changes: list[LaneChange] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    restart_needed: list[str] = field(default_factory=list)  # config changes that only a restart applies


def plan_reload(config: Config, lanes: Mapping[str, tuple[LaneSpec, LoadedModel]], threads: int = 1) -> ReloadPlan:
    """Compare ``config`` with the running ``lanes`` (region -> (spec, model)); load and verify what changed.

    Runs on the daemon's main thread: loading and the dry runs never hold up the
    pipeline thread. Regions added to or removed from the file need a restart
    (routing of running stations would change): they are reported, not applied.
    """
    plan = ReloadPlan()
    wanted = {region.name: (region.model or config.inference.model, region.device or config.inference.device)
              for region, _ in effective_regions(config)}
    for name in sorted(set(wanted) - set(lanes)):
        plan.restart_needed.append(f"region {name!r} is new: stations are routed at start-up, restart to run it")
    for name in sorted(set(lanes) - set(wanted)):
        plan.restart_needed.append(f"region {name!r} was removed from the file: it keeps running until a restart")
    loaded: dict[tuple[str, str], LoadedModel | ModelError] = {}
    for name in sorted(set(wanted) & set(lanes)):
        old_spec, old_model = lanes[name]
        key = wanted[name]
        if key not in loaded:
            try:
                loaded[key] = load_model(*key)
            except ModelError as exc:
                loaded[key] = exc
            except OSError as exc:  # unreadable sidecar or weights (permissions, I/O error)
                loaded[key] = ModelError(f"model spec {key[0]!r}: {exc}")
        candidate = loaded[key]
        if isinstance(candidate, ModelError):
            plan.refusals.append(Refusal(name, f"cannot load model: {candidate}"))
            continue
        same_weights = (candidate.model_id, candidate.sha256, key[1]) == (old_spec.model_id, old_spec.sha256, old_spec.device)
        model = old_model if same_weights else candidate  # unchanged weights: keep the running object
        try:
            spec = region_lane_spec(config, name, {key: model})
            check_fits(old_spec, spec)
            if not same_weights:
                verify(model, spec, threads)
        except (RegionError, ModelError) as exc:
            plan.refusals.append(Refusal(name, str(exc)))
            continue
        if not same_weights or spec != old_spec:
            plan.changes.append(LaneChange(name, model, spec, new_weights=not same_weights))
    return plan


def check_fits(old: LaneSpec, new: LaneSpec) -> None:
    """:class:`ModelError` naming every lane setting the new spec would change that needs a restart."""
    differ = [f"{RESTART_FIELDS[name]} {getattr(old, name)!r} -> {getattr(new, name)!r}" for name in old.restart_changes(new)]
    if differ:
        raise ModelError(f"{new.model_id} does not fit the running lane ({'; '.join(differ)}): this needs a restart")


def verify(loaded: LoadedModel, spec: LaneSpec, threads: int = 1) -> None:
    """One dry-run batch of the lane's shape through the live inference path; :class:`ModelError` if it fails.

    The input is seeded white noise with a few missing samples (as a gap would leave),
    gathered from a ring buffer exactly like live windows, so the model's own
    preprocessing hooks, its forward pass and ``annotate_batch_post`` all run.
    """
    n_comp, n, batch_size = len(spec.component_order), spec.in_samples, spec.batch_size
    rng = np.random.default_rng(DRY_RUN_SEED)
    data = rng.standard_normal((n_comp, n)).astype(np.float32)
    data[:, : n // 10] = 0.0  # missing: the ring holds zeros there
    batch = np.empty((batch_size, n_comp, n), dtype=np.float32)
    expected = (batch_size, n, len(spec.labels))
    try:
        engine = InferenceEngine(loaded.model, spec.model_argdict(loaded.model), threads, spec.device)
        engine.gather(data, np.zeros(batch_size, dtype=np.int64), batch)
        out = engine.predict(batch)
    except Exception as exc:  # noqa: BLE001 - any failure of a foreign model is a refusal, with its reason
        raise ModelError(f"{spec.model_id}: dry-run batch {batch.shape} failed: {exc!r}") from exc
    if out.shape != expected:
        raise ModelError(f"{spec.model_id}: dry-run batch gave output of shape {out.shape}, expected {expected}")
    if not np.isfinite(out).all():
        raise ModelError(f"{spec.model_id}: dry-run batch gave non-finite output ({int((~np.isfinite(out)).sum())} values)")
