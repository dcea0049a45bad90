"""Load pickers by spec and save adapted weights in SeisBench's format plus a model card.

Layout written by :func:`save_picker` into ``OUT/``::

    OUT/model.pt          state dict (torch.save), as SeisBench ``model.save(OUT/"model")`` writes it
    OUT/model.json        SeisBench sidecar: model_args, default_args (dev-chosen P/S thresholds),
                          docstring, version, plus ``model_class`` and ``rtpick`` (the model card)
    OUT/model_card.json   the model card alone (source model, data sha256, examples, strategy, metrics)

``seisbench.models.PhaseNet.load("OUT/model")`` loads it, and so does the
daemon's ``file:OUT/model`` spec. ``model_class`` is a SeisBench class name
(``PhaseNet``) or, for the distilled student, the dotted path
``rtpick.adapt.student.TinyPhaseNet``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import seisbench
import seisbench.models as sbm


class ModelSpecError(ValueError):
    """A model spec that names nothing loadable."""


def model_class(name: str):
    if "." in name:
        module, _, cls = name.rpartition(".")
        return getattr(importlib.import_module(module), cls)
    cls = getattr(sbm, name, None)
    if not isinstance(cls, type):
        raise ModelSpecError(f"unknown SeisBench model class {name!r}")
    return cls


def class_name(model) -> str:
    cls = type(model)
    return cls.__name__ if getattr(sbm, cls.__name__, None) is cls else f"{cls.__module__}.{cls.__qualname__}"


def load_picker(spec: str):
    """``seisbench:<Class>/<weights>``, ``file:<base>`` (base.json + base.pt), or a folder written by ``rtpick adapt``."""
    kind, _, rest = spec.partition(":")
    if kind == "seisbench":
        cls_name, _, weights = rest.partition("/")
        if not weights:
            raise ModelSpecError(f"model spec {spec!r}: expected 'seisbench:<Class>/<weights>'")
        model = model_class(cls_name).from_pretrained(weights)
    else:
        base = Path(rest if kind == "file" else spec)
        if base.is_dir():
            base = base / "model"
        sidecar = base.with_name(base.name + ".json")
        if not sidecar.is_file():
            raise ModelSpecError(f"model spec {spec!r}: no sidecar {sidecar} (expected 'seisbench:<Class>/<name>', 'file:<base>' or an adapt output folder)")
        meta = json.loads(sidecar.read_text())
        model = model_class(meta.get("model_class", "PhaseNet")).load(base, weights_only=True)
    model.eval()
    return model


def save_picker(model, out_dir: str | Path, card: dict) -> Path:
    """Write SeisBench weights + sidecar (with the card and dev thresholds) + model_card.json; returns the base path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / "model"
    thresholds = card.get("thresholds") or {}
    for phase, thr in thresholds.items():
        model.default_args[f"{phase}_threshold"] = float(thr)
    model.save(base, weights_docstring=f"rtpick adapt: {card.get('strategy', '?')} from {card.get('source_model', '?')}")
    sidecar = base.with_name("model.json")
    meta = json.loads(sidecar.read_text())
    meta["model_class"] = class_name(model)
    meta["version"] = card.get("version", "1")
    meta["seisbench_requirement"] = seisbench.__version__
    meta["rtpick"] = card
    sidecar.write_text(json.dumps(meta, indent=1, default=float))
    (out_dir / "model_card.json").write_text(json.dumps(card, indent=1, default=float))
    return base
