"""Labelled trace sets: read SeisBench folders and npz files, write SeisBench, split by event, validate.

A :class:`TraceSet` is an in-memory set of 3-component traces (Z, N, E) at one
sampling rate with a SeisBench-style metadata table (``trace_p_arrival_sample``,
``trace_s_arrival_sample``, ``source_id``, optional ``trace_snr_db``,
``source_magnitude``, ``split``). It is small enough to hold in memory for the
data sets an observatory labels by hand (thousands of traces) and it acts as a
SeisBench dataset for the ``seisbench.generate`` pipeline (``get_sample``).

Every problem that would make training meaningless (missing pick columns, a
wrong sampling rate, NaN samples, an empty split) raises :class:`DatasetError`
with the file and what was expected *before* any training starts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

P_COL = "trace_p_arrival_sample"
S_COL = "trace_s_arrival_sample"
PICK_COLUMNS = {"P": P_COL, "S": S_COL}
COMPONENT_ORDER = "ZNE"


class DatasetError(ValueError):
    """A data set that cannot be used as given; the message says where and what was expected."""


@dataclass
class TraceSet:
    """Traces ``(n, 3, samples)`` float32 in Z, N, E order plus one metadata row per trace."""

    waveforms: np.ndarray
    metadata: pd.DataFrame
    sampling_rate: float = 100.0
    source: str = "<memory>"
    _sha256: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.metadata = self.metadata.reset_index(drop=True)
        if len(self.metadata) != len(self.waveforms):
            raise DatasetError(f"{self.source}: {len(self.waveforms)} traces but {len(self.metadata)} metadata rows")

    def __len__(self) -> int:
        return len(self.waveforms)

    # --- SeisBench dataset protocol (used by seisbench.generate.GenericGenerator) ---
    def get_sample(self, idx: int) -> tuple[np.ndarray, dict]:
        meta = self.metadata.iloc[int(idx)].to_dict()
        meta["trace_sampling_rate_hz"] = self.sampling_rate
        return self.waveforms[int(idx)].copy(), meta

    def subset(self, mask_or_index) -> "TraceSet":
        index = np.flatnonzero(mask_or_index) if np.asarray(mask_or_index).dtype == bool else np.asarray(mask_or_index, dtype=int)
        return TraceSet(self.waveforms[index], self.metadata.iloc[index].copy(), self.sampling_rate, self.source)

    def split(self, name: str) -> "TraceSet":
        """The traces of one split (``train``/``dev``/``test``); an empty split is an error."""
        if "split" not in self.metadata:
            raise DatasetError(f"{self.source}: no 'split' column; run split_by_event first")
        part = self.subset((self.metadata["split"] == name).to_numpy())
        if len(part) == 0:
            raise DatasetError(f"{self.source}: split '{name}' is empty (splits present: {sorted(self.metadata['split'].unique())})")
        return part

    def sha256(self) -> str:
        """Content hash of waveforms and pick labels: the model card's data provenance."""
        if self._sha256 is None:
            h = hashlib.sha256()
            h.update(np.ascontiguousarray(self.waveforms, dtype=np.float32).tobytes())
            for col in (P_COL, S_COL, "source_id"):
                if col in self.metadata:
                    h.update(self.metadata[col].astype(str).str.cat(sep=",").encode())
            self._sha256 = h.hexdigest()
        return self._sha256


def snr_db(waveform: np.ndarray, p_sample: float, sampling_rate: float = 100.0) -> float:
    """SNR in dB: power 0–3 s after P over power 5–0.5 s before P, 1–20 Hz, best component.

    NaN when the P pick is missing or too close to the trace start.
    """
    from scipy.signal import butter, sosfiltfilt

    if not np.isfinite(p_sample):
        return float("nan")
    p = int(p_sample)
    n0, n1 = p - int(5 * sampling_rate), p - int(0.5 * sampling_rate)
    s1 = p + int(3 * sampling_rate)
    if n0 < 0 or s1 > waveform.shape[-1]:
        return float("nan")
    sos = butter(4, [1.0, min(20.0, 0.45 * sampling_rate)], btype="band", fs=sampling_rate, output="sos")
    x = sosfiltfilt(sos, waveform[..., max(0, n0 - 200) : s1 + 200].astype(np.float64), axis=-1)
    off = max(0, n0 - 200)
    noise = x[..., n0 - off : n1 - off].var(axis=-1)
    signal = x[..., p - off : s1 - off].var(axis=-1)
    ok = noise > 0
    if not ok.any():
        return float("nan")
    return float(np.max(10 * np.log10(signal[ok] / noise[ok])))


def load_npz(path: str | Path) -> TraceSet:
    """The simple npz format of ``ncedc_picks_100hz.npz``: waveforms (n,3,L) ZNE, p_sample, s_sample."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("waveforms", "p_sample") if k not in data.files]
        if missing:
            raise DatasetError(f"{path}: npz lacks array(s) {missing} (need waveforms (n,3,samples), p_sample, s_sample)")
        waveforms = np.asarray(data["waveforms"], dtype=np.float32)
        n = len(waveforms)
        meta = pd.DataFrame(
            {
                "trace_name": data["trace_name"].astype(str) if "trace_name" in data.files else [f"trace_{i:06d}" for i in range(n)],
                P_COL: data["p_sample"].astype(float),
                S_COL: data["s_sample"].astype(float) if "s_sample" in data.files else np.nan,
            }
        )
        rate = float(data["sampling_rate"]) if "sampling_rate" in data.files else 100.0
        for extra in ("source_id", "source_magnitude", "trace_snr_db", "split"):
            if extra in data.files:
                meta[extra] = data[extra]
    if waveforms.ndim != 3 or waveforms.shape[1] != 3:
        raise DatasetError(f"{path}: waveforms must be (n, 3, samples) in Z, N, E order, got {waveforms.shape}")
    if "source_id" not in meta:
        # One record per event in the PhaseNet samples: the trace name ends in the origin time.
        meta["source_id"] = meta["trace_name"]
    ts = TraceSet(waveforms, meta, rate, str(path))
    ensure_snr(ts)
    return ts


def load_seisbench(path: str | Path, sampling_rate: float | None = None) -> TraceSet:
    """A SeisBench ``WaveformDataset`` folder (metadata.csv + waveforms.hdf5), components as Z, N, E."""
    import seisbench.data as sbd

    path = Path(path)
    for name in ("metadata.csv", "waveforms.hdf5"):
        if not (path / name).is_file():
            raise DatasetError(f"{path}: not a SeisBench dataset folder (missing {name})")
    meta = pd.read_csv(path / "metadata.csv", low_memory=False)
    for col in (P_COL, S_COL):
        if col not in meta:
            raise DatasetError(f"{path}/metadata.csv: missing pick column '{col}' (columns: {', '.join(meta.columns)})")
    rates = meta["trace_sampling_rate_hz"].unique() if "trace_sampling_rate_hz" in meta else []
    ds = sbd.WaveformDataset(path, component_order=COMPONENT_ORDER, dimension_order="NCW", sampling_rate=sampling_rate, cache=None)
    rate = float(sampling_rate or (rates[0] if len(rates) == 1 else 0))
    if rate == 0:
        raise DatasetError(f"{path}: traces have several sampling rates {sorted(rates)}; pass sampling_rate to resample")
    waveforms = np.asarray(ds.get_waveforms(), dtype=np.float32)
    meta = ds.metadata.copy()
    if "source_id" not in meta:
        meta["source_id"] = meta.get("trace_name", pd.Series(range(len(meta)))).astype(str)
    ts = TraceSet(waveforms, meta, rate, str(path))
    ensure_snr(ts)
    return ts


def load_dataset(path: str | Path) -> TraceSet:
    """Read an ``.npz`` file or a SeisBench folder."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    return load_npz(path) if path.suffix == ".npz" else load_seisbench(path)


def save_seisbench(ts: TraceSet, path: str | Path) -> Path:
    """Write a SeisBench ``WaveformDataset`` folder (loadable with ``seisbench.data.WaveformDataset``)."""
    import seisbench.data as sbd

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name in ("metadata.csv", "waveforms.hdf5"):
        (path / name).unlink(missing_ok=True)
    with sbd.WaveformDataWriter(path / "metadata.csv", path / "waveforms.hdf5") as writer:
        writer.data_format = {"dimension_order": "CW", "component_order": COMPONENT_ORDER, "measurement": "velocity", "unit": "counts", "instrument_response": "not restituted"}
        for i, row in ts.metadata.iterrows():
            meta = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            meta["trace_sampling_rate_hz"] = ts.sampling_rate
            meta.setdefault("trace_name", f"trace_{i:06d}")
            writer.add_trace(meta, ts.waveforms[i])
    return path


def ensure_snr(ts: TraceSet) -> None:
    """Fill ``trace_snr_db`` where it is missing (noise-only traces stay NaN)."""
    if "trace_snr_db" in ts.metadata and ts.metadata["trace_snr_db"].notna().any():
        return
    ts.metadata["trace_snr_db"] = [snr_db(w, p, ts.sampling_rate) for w, p in zip(ts.waveforms, ts.metadata[P_COL])]


def validate(ts: TraceSet, sampling_rate: float, min_samples: int, splits: tuple[str, ...] = ()) -> None:
    """Refuse a data set that training would silently mis-learn from. Raises :class:`DatasetError`."""
    where = ts.source
    problems = []
    if len(ts) == 0:
        problems.append("no traces")
    for phase, col in PICK_COLUMNS.items():
        if col not in ts.metadata:
            problems.append(f"missing pick column '{col}' ({phase} arrival sample)")
    if abs(ts.sampling_rate - sampling_rate) > 1e-6:
        problems.append(f"sampling rate {ts.sampling_rate:g} Hz but the model expects {sampling_rate:g} Hz (resample first)")
    if ts.waveforms.ndim != 3 or ts.waveforms.shape[1] != 3:
        problems.append(f"waveforms must be (n, 3, samples), got {ts.waveforms.shape}")
    elif ts.waveforms.shape[-1] < min_samples:
        problems.append(f"traces have {ts.waveforms.shape[-1]} samples, the model needs at least {min_samples}")
    bad = np.flatnonzero(~np.isfinite(ts.waveforms).all(axis=(1, 2))) if len(ts) else []
    if len(bad):
        names = ts.metadata.get("trace_name", pd.Series(range(len(ts)))).iloc[bad[:3]].tolist()
        problems.append(f"{len(bad)} trace(s) contain NaN/inf samples (e.g. {names}); fill gaps or drop them")
    if P_COL in ts.metadata and not problems:
        p = ts.metadata[P_COL].to_numpy(float)
        if np.isfinite(p).sum() == 0:
            problems.append("no trace has a P pick")
        outside = np.isfinite(p) & ((p < 0) | (p >= ts.waveforms.shape[-1]))
        if outside.any():
            problems.append(f"{outside.sum()} P pick(s) lie outside their trace")
    for name in splits:
        if "split" not in ts.metadata:
            problems.append("no 'split' column (use --split-fractions or split_by_event)")
            break
        if not (ts.metadata["split"] == name).any():
            problems.append(f"split '{name}' is empty")
    if problems:
        raise DatasetError(f"{where}: " + "; ".join(problems))


def split_by_event(ts: TraceSet, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0, key: str = "source_id") -> TraceSet:
    """Assign ``split`` = train/dev/test by event (all traces of an event in the same split)."""
    if key not in ts.metadata:
        raise DatasetError(f"{ts.source}: cannot split by event: no '{key}' column")
    names = assign_splits(sorted(ts.metadata[key].astype(str).unique()), fractions, seed)
    ts.metadata["split"] = ts.metadata[key].astype(str).map(names)
    return ts


def assign_splits(keys, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0) -> dict[str, str]:
    """Event key → ``train``/``dev``/``test``: a seeded shuffle cut at the fractions (same keys, same answer)."""
    events = np.array(sorted({str(k) for k in keys}))
    rng = np.random.default_rng(seed)
    rng.shuffle(events)
    cuts = np.round(np.cumsum(np.asarray(fractions, float) / sum(fractions))[:2] * len(events)).astype(int)
    return {ev: "train" if i < cuts[0] else "dev" if i < cuts[1] else "test" for i, ev in enumerate(events)}


def sample_events(ts: TraceSet, n_traces: int, seed: int, key: str = "source_id") -> TraceSet:
    """A random subset of about ``n_traces`` traces made of whole events (for learning curves)."""
    rng = np.random.default_rng(seed)
    events = ts.metadata[key].astype(str).to_numpy()
    order = rng.permutation(np.unique(events))
    chosen, count = [], 0
    sizes = pd.Series(events).value_counts()
    for ev in order:
        if count >= n_traces:
            break
        chosen.append(ev)
        count += int(sizes[ev])
    mask = np.isin(events, chosen)
    idx = np.flatnonzero(mask)[:n_traces]
    return ts.subset(idx)


STATION_COLUMNS = ("station_network_code", "station_code", "station_location_code", "trace_channel")


def dataset_stations(path: str | Path) -> list[str]:
    """``NET.STA.LOC.FAM`` keys of a SeisBench folder's traces (as ``rtpick dataset build`` writes them); [] if it names none.

    Read as text: SeisBench's own reader turns codes such as location ``01`` into numbers.
    """
    meta_path = Path(path) / "metadata.csv"
    if not meta_path.is_file():
        return []
    head = pd.read_csv(meta_path, nrows=0).columns
    if not all(c in head for c in STATION_COLUMNS):
        return []
    meta = pd.read_csv(meta_path, usecols=list(STATION_COLUMNS), dtype=str, keep_default_na=False)
    return sorted({".".join(row) for row in meta[list(STATION_COLUMNS)].itertuples(index=False)})

