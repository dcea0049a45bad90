"""End-to-end adaptation steps shared by the CLI and the benchmark: validate, train, evaluate, save a card."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from rtpick.adapt import evaluate as ev
from rtpick.adapt.datasets import DatasetError, TraceSet, dataset_stations, load_dataset, sample_events, split_by_event, validate
from rtpick.adapt.models import load_picker, save_picker


def prepare(data: str | Path, model, split_fractions: tuple[float, float, float] | None = None, seed: int = 0, need: tuple[str, ...] = ("train", "dev", "test")) -> TraceSet:
    """Load and validate a data set for ``model``; split by event when it has no split (or when asked)."""
    ts = load_dataset(data)
    if split_fractions is not None or "split" not in ts.metadata:
        split_by_event(ts, split_fractions or (0.7, 0.1, 0.2), seed=seed)
    validate(ts, sampling_rate=float(model.sampling_rate), min_samples=int(model.in_samples), splits=need)
    return ts


def noise_set(ts: TraceSet, source: str, length: int) -> TraceSet | None:
    """Target-region noise for augmentation: the data's own noise-only training traces, a simulator bank, or none."""
    if source == "none":
        return None
    if source == "data":
        if "trace_category" not in ts.metadata:
            return None
        mask = (ts.metadata["trace_category"] == "noise").to_numpy() & (ts.metadata["split"] == "train").to_numpy()
        return ts.subset(mask) if mask.any() else None
    from rtpick.adapt.simulate import load_noise_bank

    segs = []
    for seg in load_noise_bank(source, length):
        for a in range(0, seg.shape[1] - length + 1, length):
            segs.append(seg[:, a : a + length])
    import pandas as pd

    return TraceSet(np.stack(segs), pd.DataFrame({"trace_name": [f"noise_{i}" for i in range(len(segs))]}), 100.0, f"noise:{source}")


def _versions() -> dict:
    import seisbench
    import torch

    import rtpick

    return {"rtpick": getattr(rtpick, "__version__", "0.1.0"), "seisbench": seisbench.__version__, "torch": torch.__version__}


def run_adapt(model_spec: str, data: str | Path, out: str | Path, cfg, n_train: int | None = None, subset_seed: int = 0, noise: str = "data", split_fractions=None) -> dict:
    """Fine-tune ``model_spec`` on ``data``; save weights + card to ``out``; returns the card."""
    from rtpick.adapt.finetune import finetune

    model = load_picker(model_spec)
    ts = prepare(data, model, split_fractions, seed=subset_seed)
    train, dev, test = ts.split("train"), ts.split("dev"), ts.split("test")
    if n_train is not None:
        if n_train < 1:
            raise DatasetError(f"{ts.source}: --n-train must be positive")
        train = sample_events(train, n_train, seed=subset_seed)
    thr_before = ev.best_thresholds(ev.predict_peaks(model, dev))
    before = ev.metrics(ev.predict_peaks(model, test), thr_before)
    history = finetune(model, train, dev, cfg, noise_set(ts, noise, int(model.in_samples) + 500))
    thresholds = ev.best_thresholds(ev.predict_peaks(model, dev))
    after = ev.metrics(ev.predict_peaks(model, test), thresholds)
    card = {
        "schema": "rtpick.model_card/1",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source_model": model_spec,
        "model_class": type(model).__name__,
        "data": str(data),
        "data_sha256": ts.sha256(),
        "train_sha256": train.sha256(),
        "n_examples": len(train),
        "n_events": int(train.metadata["source_id"].nunique()),
        "strategy": cfg.strategy,
        "frozen_blocks": history["frozen_blocks"],
        "config": history["config"],
        "best_epoch": history["best_epoch"],
        "learning_curve": {"train_loss": history["train_loss"], "dev_loss": history["dev_loss"]},
        "thresholds": thresholds,
        "thresholds_chosen_on": "dev split, max F1 at 0.5 s",
        "stations": dataset_stations(data),
        "metrics": {"test_before": ev.summary_row(before), "test": ev.summary_row(after), "test_n": len(test)},
        "versions": _versions(),
    }
    save_picker(model, out, card)
    return card


def run_distill(teacher_spec: str, data: str | Path, out: str | Path, cfg, split_fractions=None) -> dict:
    """Distil ``teacher_spec`` on the train split of ``data`` (labels by ``cfg.label_weight``); compare on its test split."""
    from rtpick.adapt.distill import distill, windows_per_second
    from rtpick.adapt.student import count_parameters

    teacher = load_picker(teacher_spec)
    ts = prepare(data, teacher, split_fractions, seed=cfg.seed)
    train, dev, test = ts.split("train"), ts.split("dev"), ts.split("test")
    student, history = distill(teacher, train, dev, cfg, noise_set(ts, "data", int(teacher.in_samples) + 500))
    thresholds = {}
    rows = {}
    for name, model in (("teacher", teacher), ("student", student)):
        thresholds[name] = ev.best_thresholds(ev.predict_peaks(model, dev))
        rows[name] = ev.summary_row(ev.metrics(ev.predict_peaks(model, test), thresholds[name]))
    speed = {name: windows_per_second(model) for name, model in (("teacher", teacher), ("student", student))}
    card = {
        "schema": "rtpick.model_card/1",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source_model": teacher_spec,
        "strategy": f"distillation (teacher probabilities, label weight {cfg.label_weight:g}, train split)",
        "data": str(data),
        "data_sha256": ts.sha256(),
        "n_examples": len(train),
        "config": history["config"],
        "best_epoch": history["best_epoch"],
        "learning_curve": {"train_loss": history["train_loss"], "dev_loss": history["dev_loss"]},
        "thresholds": thresholds["student"],
        "parameters": {"teacher": count_parameters(teacher), "student": count_parameters(student)},
        "windows_per_s": {**{k: round(v, 1) for k, v in speed.items()}, "speedup": round(speed["student"] / speed["teacher"], 2), "threads": _threads()},
        "metrics": {"test_teacher": rows["teacher"], "test": rows["student"], "test_n": len(test)},
        "versions": _versions(),
    }
    save_picker(student, out, card)
    return card


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def region_stanza(out: str | Path, card: dict) -> str:
    """The ``[[regions]]`` TOML (docs/regions.md) that runs the model in ``out`` on the stations of its data set."""
    import re

    out = Path(out).resolve()
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", out.name)
    if not name or not re.match(r"[A-Za-z0-9_]", name) or name == "default":
        name = f"adapted-{name}".rstrip("-")
    stations = card.get("stations") or []
    thr = card.get("thresholds") or {}
    lines = [
        f"# rtpick adapt: the region for {out} (stations of {card.get('data', '?')}); put it before the 'default' region",
        "[[regions]]",
        f'name = "{name}"',
    ]
    if stations:
        lines.append("stations = [" + ", ".join(f'"{s}"' for s in stations) + "]")
    else:
        lines.append("stations = []  # the data set names no stations (simulated?): list the NET.STA.LOC.FAM globs this model serves")
    lines.append(f'model = "file:{out}"')
    if thr:
        lines.append("# thresholds: the model's default_args (chosen on the dev split): " + ", ".join(f"{k} {v:g}" for k, v in thr.items()))
    return "\n".join(lines) + "\n"

