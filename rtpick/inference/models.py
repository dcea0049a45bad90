"""Model loading: ``seisbench:<Class>/<weights>`` or ``file:[<Class>:]<path>`` (SeisBench format).

``file:<path>`` names SeisBench's on-disk format: ``<path>.json`` (sidecar with
``model_args``, ``default_args``, docstring, version) and ``<path>.pt`` (state
dict), as written by ``model.save(path)`` and by ``rtpick adapt`` (whose output
folder may be given as the path). The model class comes from the spec
(``file:EQTransformer:/models/eqt``: SeisBench's own ``save`` does not record it),
else from the sidecar's ``model_class`` key (written by ``rtpick adapt``; a dotted
path for rtpick's own students), else ``PhaseNet``.
Nothing is downloaded unless SeisBench itself is asked for missing weights.

Only models whose SeisBench ``annotate`` rtpick reproduces exactly are accepted
(:func:`preprocessing_for`): array output over the whole window, no stream-level
filtering, and a window preprocessing rtpick knows (PhaseNet's or EQTransformer's
``annotate_batch_pre``, described by :class:`Preprocessing`). Anything else is
refused with the reason — never approximated.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch


class ModelError(Exception):
    """A model spec that cannot be loaded; the message says which and why."""


@dataclass
class LoadedModel:
    """A model ready for inference and the identity every pick carries."""

    model: torch.nn.Module
    model_id: str  # the spec as configured, e.g. "seisbench:PhaseNet/original"
    version: str  # weights version from the sidecar
    sha256: str  # of the weights file, for the model-info metric
    source: str = ""  # "seisbench pretrained", "file <path>" or "rtpick adapt <folder>"
    model_card: dict[str, Any] | None = field(default=None)  # model_card.json of an `rtpick adapt` folder


@dataclass(frozen=True)
class Preprocessing:
    """What a model's ``annotate_batch_pre`` does to each window, so a lane can apply it.

    Every supported model demeans each component first. ``scale`` then divides by the
    standard deviation (Bessel-corrected) or the absolute peak, computed per component
    (``scale_axis='component'``, PhaseNet) or over all components of the window
    (``'window'``, EQTransformer's std); ``amp_per_comp`` forces per-component peak.
    ``taper_samples`` is EQTransformer's cosine taper at both window ends.
    ``numba_kernel`` is the :mod:`rtpick.stream.dsp` ``NORM_*`` kernel equal to all this,
    or None: then the lane copies raw windows and calls the model's own hook.
    """

    scale: Literal["std", "peak"] | None
    scale_axis: Literal["component", "window"]
    detrend: bool
    amp_per_comp: bool
    taper_samples: int
    numba_kernel: int | None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _model_class(name: str):
    """A SeisBench class name (``PhaseNet``) or a dotted path (``rtpick.adapt.student.TinyPhaseNet``)."""
    import seisbench.models as sbm

    if "." in name:
        module, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), attr, None)
        except ImportError as exc:
            raise ModelError(f"model class {name!r}: cannot import {module}: {exc}") from exc
    else:
        cls = getattr(sbm, name, None)
    if cls is None or not isinstance(cls, type):
        raise ModelError(f"unknown model class {name!r}")
    return cls


def preprocessing_for(model: torch.nn.Module) -> Preprocessing:
    """The window preprocessing of ``model``, or :class:`ModelError` saying why rtpick cannot reproduce it."""
    import seisbench.models as sbm

    from rtpick.inference.engine import numba_norm_for

    cls = type(model)
    if not isinstance(model, sbm.WaveformModel):
        raise ModelError(f"{cls.__name__} is not a SeisBench WaveformModel")
    if model.output_type != "array" or tuple(model.pred_sample) != (0, model.in_samples):
        raise ModelError(f"{cls.__name__} does not predict every sample of its window (output_type {model.output_type!r}); rtpick stacks whole-window predictions only")
    if cls.annotate_stream_pre is not sbm.WaveformModel.annotate_stream_pre or model.filter_args is not None or model.filter_kwargs is not None:
        raise ModelError(f"{cls.__name__} filters or transforms the whole stream before windowing (annotate_stream_pre / filter_args), which rtpick does not reproduce")
    if not model.sampling_rate or not model.in_samples:
        raise ModelError(f"{cls.__name__} declares no sampling_rate or in_samples")
    pre, post = cls.annotate_batch_pre, cls.annotate_batch_post
    common = dict(detrend=bool(getattr(model, "norm_detrend", False)), amp_per_comp=bool(getattr(model, "norm_amp_per_comp", False)), numba_kernel=numba_norm_for(model))
    if pre is sbm.PhaseNet.annotate_batch_pre and post is sbm.PhaseNet.annotate_batch_post:
        return Preprocessing(scale=model.norm if model.norm in ("std", "peak") else None, scale_axis="component", taper_samples=0, **common)
    if pre is sbm.EQTransformer.annotate_batch_pre and post is sbm.EQTransformer.annotate_batch_post:
        scale_axis = "window" if model.norm == "std" and not common["amp_per_comp"] else "component"
        return Preprocessing(scale=model.norm if model.norm in ("std", "peak") else None, scale_axis=scale_axis, taper_samples=6, **common)
    raise ModelError(f"{cls.__name__} has its own annotate_batch_pre/annotate_batch_post, which rtpick does not know; supported: PhaseNet family and EQTransformer")


def describe_model(loaded: LoadedModel) -> dict[str, Any]:
    """The model card ``rtpick models`` prints: identity, shape and defaults of a loaded model."""
    model = loaded.model
    card: dict[str, Any] = {
        "model_id": loaded.model_id,
        "architecture": f"{type(model).__module__}.{type(model).__qualname__}",
        "source": loaded.source,
        "version": loaded.version,
        "sha256": loaded.sha256,
        "sampling_rate": float(model.sampling_rate),
        "in_samples": int(model.in_samples),
        "labels": list(model.labels),
        "component_order": str(model.component_order),
        "default_args": dict(getattr(model, "default_args", {}) or {}),
    }
    if loaded.model_card is not None:
        card["model_card"] = loaded.model_card
    return card


def load_model(spec: str, device: str = "cpu") -> LoadedModel:
    """Load a model by spec, put it in eval mode on ``device``."""
    kind, _, rest = spec.partition(":")
    if kind == "seisbench":
        cls_name, _, weights = rest.partition("/")
        if not cls_name or not weights:
            raise ModelError(f"model spec {spec!r}: expected 'seisbench:<Class>/<weights>'")
        cls = _model_class(cls_name)
        try:
            model = cls.from_pretrained(weights)
        except Exception as exc:  # SeisBench raises many kinds; name the spec
            raise ModelError(f"model spec {spec!r}: cannot load weights {weights!r}: {exc}") from exc
        version = str(getattr(model, "weights_version", "") or "")
        pt_files = sorted(Path(cls._model_path()).glob(f"{weights}.pt*"))
        sha = _sha256(pt_files[-1]) if pt_files else ""
        source, card = "seisbench pretrained", None
    elif kind == "file":
        named = re.match(r"^([A-Za-z_][\w.]*):(.+)$", rest)
        class_name, rest = (named.group(1), named.group(2)) if named else (None, rest)
        base = Path(rest)
        card = None
        source = f"file {base}"
        if base.is_dir():  # a folder written by `rtpick adapt`
            source = f"rtpick adapt {base}"
            card_file = base / "model_card.json"
            if card_file.is_file():
                try:
                    card = json.loads(card_file.read_text())
                except json.JSONDecodeError as exc:
                    raise ModelError(f"model spec {spec!r}: {card_file} is not valid JSON: {exc}") from exc
            base = base / "model"
        sidecar = base.with_name(base.name + ".json")
        weights_file = base.with_name(base.name + ".pt")
        if not sidecar.is_file() or not weights_file.is_file():
            raise ModelError(f"model spec {spec!r}: need {sidecar} and {weights_file}")
        try:
            meta = json.loads(sidecar.read_text())
        except json.JSONDecodeError as exc:
            raise ModelError(f"model spec {spec!r}: {sidecar} is not valid JSON: {exc}") from exc
        class_name = class_name or meta.get("model_class")
        cls = _model_class(class_name or "PhaseNet")
        try:
            model = cls.load(base, weights_only=True)
        except Exception as exc:
            hint = "" if class_name else " (the sidecar names no model_class, so PhaseNet was assumed: give the class as 'file:<Class>:<path>')"
            raise ModelError(f"model spec {spec!r}: cannot load {weights_file} as {cls.__name__}: {exc}{hint}") from exc
        version = str(meta.get("version", ""))
        sha = _sha256(weights_file)
    else:
        raise ModelError(f"model spec {spec!r}: expected 'seisbench:<Class>/<weights>' or 'file:<path>'")
    model.eval()
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise ModelError(f"model spec {spec!r}: device {device!r} unavailable: {exc}") from exc
    return LoadedModel(model=model, model_id=spec, version=version, sha256=sha, source=source, model_card=card)
