"""Model loading: ``seisbench:<Class>/<weights>`` or ``file:<path>`` (SeisBench format).

``file:<path>`` names SeisBench's on-disk format: ``<path>.json`` (sidecar with
``model_args``, ``default_args``, docstring, version) and ``<path>.pt`` (state
dict), as written by ``model.save(path)`` and by ``rtpick adapt`` (whose output
folder may be given as the path). The model class comes from the sidecar's
``model_class`` key (default ``PhaseNet``; a dotted path for rtpick's own students).
Nothing is downloaded unless SeisBench itself is asked for missing weights.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path

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
    elif kind == "file":
        base = Path(rest)
        if base.is_dir():  # a folder written by `rtpick adapt`
            base = base / "model"
        sidecar = base.with_name(base.name + ".json")
        weights_file = base.with_name(base.name + ".pt")
        if not sidecar.is_file() or not weights_file.is_file():
            raise ModelError(f"model spec {spec!r}: need {sidecar} and {weights_file}")
        try:
            meta = json.loads(sidecar.read_text())
        except json.JSONDecodeError as exc:
            raise ModelError(f"model spec {spec!r}: {sidecar} is not valid JSON: {exc}") from exc
        cls = _model_class(meta.get("model_class", "PhaseNet"))
        try:
            model = cls.load(base, weights_only=True)
        except Exception as exc:
            raise ModelError(f"model spec {spec!r}: cannot load {weights_file}: {exc}") from exc
        version = str(meta.get("version", ""))
        sha = _sha256(weights_file)
    else:
        raise ModelError(f"model spec {spec!r}: expected 'seisbench:<Class>/<weights>' or 'file:<path>'")
    model.eval()
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise ModelError(f"model spec {spec!r}: device {device!r} unavailable: {exc}") from exc
    return LoadedModel(model=model, model_id=spec, version=version, sha256=sha)
