"""Pick evaluation: one fixed window per trace, the highest peak per phase, metrics by tolerance, SNR and magnitude.

The protocol follows the SeisBench benchmark (Münchmeyer et al., 2022): every
trace gives one model-sized window (start drawn once per data set from a
seeded generator, the P pick 3–18 s into it), the model's own
``annotate_batch_pre`` normalises it, and per phase the highest probability
peak becomes the pick if it reaches the threshold. A pick within the tolerance
of the label is a true positive; any other pick a false positive (noise-only
traces have no label, so every pick there is false); a label without a true
positive is a miss. Thresholds are chosen on a dev split (:func:`best_thresholds`)
and then applied unchanged to test sets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rtpick.adapt.datasets import P_COL, PICK_COLUMNS, TraceSet

TOLERANCES_S = (0.1, 0.5)
SNR_BINS_DB = (-np.inf, 5.0, 10.0, 20.0, np.inf)
MAG_BINS = (-np.inf, 1.0, 2.0, 3.0, np.inf)
THRESHOLD_GRID = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))


@dataclass
class Peaks:
    """Per trace and phase: highest probability and its sample (relative to the trace), plus labels."""

    prob: dict[str, np.ndarray]
    sample: dict[str, np.ndarray]
    label: dict[str, np.ndarray]  # NaN where the phase is absent from the window
    snr_db: np.ndarray
    magnitude: np.ndarray
    sampling_rate: float


def device_of(model) -> torch.device:
    """Where the model's parameters live (CPU for a parameter-less wrapper); batches are moved there."""
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def window_starts(ts: TraceSet, window: int, seed: int = 1234) -> np.ndarray:
    """Deterministic window start per trace: P 3–18 s into the window when there is a P pick."""
    rng = np.random.default_rng(seed)
    length = ts.waveforms.shape[-1]
    p = ts.metadata[P_COL].to_numpy(float) if P_COL in ts.metadata else np.full(len(ts), np.nan)
    lead = rng.integers(300, 1800, size=len(ts))
    anywhere = rng.integers(0, max(1, length - window + 1), size=len(ts))
    start = np.where(np.isfinite(p), np.nan_to_num(p) - lead, anywhere)
    return np.clip(start, 0, length - window).astype(int)


@torch.no_grad()
def predict_peaks(model, ts: TraceSet, batch_size: int = 64, seed: int = 1234) -> Peaks:
    """Run ``model`` on one window per trace and keep the per-phase maximum."""
    window = int(model.in_samples)
    starts = window_starts(ts, window, seed)
    labels = list(model.labels)
    model.eval()
    device = device_of(model)
    prob = {ph: np.zeros(len(ts)) for ph in PICK_COLUMNS}
    sample = {ph: np.zeros(len(ts)) for ph in PICK_COLUMNS}
    for b0 in range(0, len(ts), batch_size):
        idx = np.arange(b0, min(len(ts), b0 + batch_size))
        x = np.stack([ts.waveforms[i, :, s : s + window] for i, s in zip(idx, starts[idx])])
        xt = model.annotate_batch_pre(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), {})
        y = model(xt.to(device)).cpu().numpy()
        for ph in PICK_COLUMNS:
            ch = y[:, labels.index(ph)]
            prob[ph][idx] = ch.max(axis=-1)
            sample[ph][idx] = ch.argmax(axis=-1) + starts[idx]
    label = {}
    for ph, col in PICK_COLUMNS.items():
        lab = ts.metadata[col].to_numpy(float) if col in ts.metadata else np.full(len(ts), np.nan)
        inside = (lab >= starts) & (lab < starts + window)
        label[ph] = np.where(inside, lab, np.nan)
    snr = ts.metadata["trace_snr_db"].to_numpy(float) if "trace_snr_db" in ts.metadata else np.full(len(ts), np.nan)
    mag = ts.metadata["source_magnitude"].to_numpy(float) if "source_magnitude" in ts.metadata else np.full(len(ts), np.nan)
    return Peaks(prob, sample, label, snr, mag, ts.sampling_rate)


def _counts(pk: Peaks, phase: str, threshold: float, tol_s: float, mask: np.ndarray | None = None):
    picked = pk.prob[phase] >= threshold
    has = np.isfinite(pk.label[phase])
    resid = (pk.sample[phase] - np.nan_to_num(pk.label[phase])) / pk.sampling_rate
    tp = picked & has & (np.abs(resid) <= tol_s)
    if mask is not None:
        picked, has, tp = picked & mask, has & mask, tp & mask
    return int(tp.sum()), int(picked.sum() - tp.sum()), int(has.sum() - tp.sum())


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def best_thresholds(pk: Peaks, tol_s: float = 0.5) -> dict[str, float]:
    """Per phase, the threshold on the grid that maximises F1 at ``tol_s`` (use on the dev split only)."""
    out = {}
    for ph in PICK_COLUMNS:
        scores = [(_prf(*_counts(pk, ph, t, tol_s))["f1"], -abs(t - 0.3), t) for t in THRESHOLD_GRID]
        out[ph] = float(max(scores)[2])
    return out


def _bins(values: np.ndarray, edges, fmt) -> list[tuple[str, np.ndarray]]:
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        out.append((fmt(lo, hi), (values >= lo) & (values < hi)))
    return out


def _label(lo: float, hi: float, unit: str = "") -> str:
    if np.isinf(lo):
        return f"<{hi:g}{unit}"
    if np.isinf(hi):
        return f">={lo:g}{unit}"
    return f"{lo:g}-{hi:g}{unit}"


def metrics(pk: Peaks, thresholds: dict[str, float]) -> dict:
    """All metrics of one model on one data set at the given thresholds."""
    out: dict = {"n_traces": int(len(pk.snr_db)), "thresholds": thresholds}
    for ph in PICK_COLUMNS:
        thr = thresholds[ph]
        res = {}
        for tol in TOLERANCES_S:
            res[f"{tol:g}s"] = _prf(*_counts(pk, ph, thr, tol))
        picked = (pk.prob[ph] >= thr) & np.isfinite(pk.label[ph])
        resid = (pk.sample[ph] - pk.label[ph])[picked] / pk.sampling_rate
        resid = resid[np.abs(resid) <= 0.5]
        res["residual_s"] = {
            "n": int(resid.size),
            "mean": float(resid.mean()) if resid.size else float("nan"),
            "std": float(resid.std()) if resid.size else float("nan"),
            "mae": float(np.abs(resid).mean()) if resid.size else float("nan"),
        }
        res["residuals"] = [round(float(r), 3) for r in resid]
        for name, values, edges, unit in (("by_snr_db", pk.snr_db, SNR_BINS_DB, " dB"), ("by_magnitude", pk.magnitude, MAG_BINS, "")):
            table = {}
            for label, mask in _bins(values, edges, lambda lo, hi, u=unit: _label(lo, hi, u)):
                n = int((mask & np.isfinite(pk.label[ph])).sum())
                if n == 0:
                    continue
                table[label] = {"n": n, **{f"recall_{tol:g}s": _prf(*_counts(pk, ph, thr, tol, mask))["recall"] for tol in TOLERANCES_S}}
            res[name] = table
        out[ph] = res
    return out


def summary_row(m: dict) -> dict[str, float]:
    """Flat numbers for tables: F1 per phase and tolerance, lowest-SNR-bin recall, residual spread."""
    row = {}
    for ph in PICK_COLUMNS:
        for tol in TOLERANCES_S:
            row[f"{ph}_F1@{tol:g}"] = m[ph][f"{tol:g}s"]["f1"]
        low = m[ph]["by_snr_db"].get("<5 dB", {})
        row[f"{ph}_R<5dB"] = low.get("recall_0.5s", float("nan"))
        row[f"{ph}_std_s"] = m[ph]["residual_s"]["std"]
    return row


def evaluate_models(models: dict[str, object], test: TraceSet, dev: TraceSet | None = None, thresholds: dict[str, dict] | None = None) -> dict:
    """Side-by-side report: thresholds from ``dev`` (or given, or 0.3), metrics on ``test``."""
    report = {"test_set": test.source, "test_sha256": test.sha256(), "models": {}}
    for name, model in models.items():
        if thresholds and name in thresholds:
            thr = thresholds[name]
        elif dev is not None:
            thr = best_thresholds(predict_peaks(model, dev))
        else:
            thr = {"P": 0.3, "S": 0.3}
        report["models"][name] = metrics(predict_peaks(model, test), thr)
    return report


def write_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=float))
    return path


def plot_report(report: dict, out_dir: str | Path) -> list[Path]:
    """PNG plots: residual histograms and recall vs SNR (the learning curve vs N is drawn by bench/adaptation.py)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    models = report["models"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    bins = np.linspace(-0.5, 0.5, 41)
    for ax, ph in zip(axes, PICK_COLUMNS):
        for name, m in models.items():
            r = m[ph]["residual_s"]
            ax.hist(m[ph]["residuals"], bins=bins, histtype="step", lw=1.5, label=f"{name} (σ={r['std']:.3f} s)")
        ax.set_xlabel(f"{ph} pick residual (s)")
        ax.set_ylabel("picks")
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "residuals.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, ph in zip(axes, PICK_COLUMNS):
        for name, m in models.items():
            table = m[ph]["by_snr_db"]
            labels = list(table)
            ax.plot(range(len(labels)), [table[k]["recall_0.5s"] for k in labels], "o-", label=name)
            ax.set_xticks(range(len(labels)), [f"{k}\n(n={table[k]['n']})" for k in labels], fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("SNR bin")
        ax.set_ylabel(f"{ph} recall (0.5 s)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "recall_vs_snr.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    return paths
