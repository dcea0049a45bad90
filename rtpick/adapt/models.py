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

import json
from pathlib import Path

import seisbench
import seisbench.models as sbm

from rtpick.inference.models import load_model


def class_name(model) -> str:
    cls = type(model)
    return cls.__name__ if getattr(sbm, cls.__name__, None) is cls else f"{cls.__module__}.{cls.__qualname__}"


def load_picker(spec: str):
    """The torch model of a spec, through the daemon's own loader; a bare path means ``file:<path>``."""
    if not spec.startswith(("seisbench:", "file:")):
        spec = f"file:{spec}"
    return load_model(spec).model


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
