"""Pseudo-labels: a teacher's confident picks as training labels where no analyst picked.

Two uses of one rule set:

* :func:`teacher_picks` runs a teacher over continuous data with SeisBench
  ``classify`` (the picks rtpick's streaming pipeline reproduces exactly, see
  DESIGN.md "streaming equals offline") and turns them into
  :class:`~rtpick.adapt.catalog.LabelledPick` for :func:`rtpick.adapt.build.build`;
* :func:`pseudo_label_traces` relabels an already cut :class:`TraceSet` (the
  simulator benchmark, where the truth is known and the gain can be measured).

Rules (decisions, documented in docs/adaptation.md):

- A teacher pick at or above the phase's *confidence* threshold is a label; one
  between the *detection* threshold and the confidence threshold marks an arrival
  that is not trusted: a window containing it is not used (``uncertain_pick``),
  because it would teach "no arrival here" where there is one.
- Events: with ``associate`` the picks go through rtpick's own associator
  (:mod:`rtpick.associate`) and only picks that fit a located event are kept
  (``not_associated`` otherwise), with the event's origin as the source. Without it,
  P picks closer than ``cluster_s`` in time form one pseudo-event (so the split by
  event keeps one earthquake's stations together) and each S pick joins the latest
  P pick of its station within ``max_sp_s`` (``s_without_p`` otherwise).
- On trace sets, ``min_stations`` stands in for association: a trace keeps its
  labels only when at least that many traces of its event have a confident P.
  Traces where the teacher sees nothing above the detection threshold become noise
  traces (as pick-free windows of continuous data would be: some hold missed
  events, which is the realistic cost of pseudo-labels).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rtpick.adapt.catalog import EventInfo, LabelledPick, Tally
from rtpick.adapt.datasets import P_COL, PICK_COLUMNS, TraceSet
from rtpick.adapt.evaluate import device_of


@dataclass(frozen=True)
class PseudoConfig:
    confidence: tuple[float, float] = (0.5, 0.5)  # P, S: a teacher pick at or above this is a label
    detection: float = 0.3  # below: no arrival; between: an arrival nobody trusts (0.3: what the daemon would publish)
    cluster_s: float = 15.0
    max_sp_s: float = 30.0
    min_stations: int = 3
    noise_fraction: float = 0.1

    def threshold(self, phase: str) -> float:
        return self.confidence[0 if phase == "P" else 1]


# --------------------------------------------------------------------------- continuous data


def teacher_picks(model, source, stations: list[tuple[str, str, str, str]], t0, t1, cfg: PseudoConfig, chunk_s: float = 3600.0) -> list[LabelledPick]:
    """Teacher picks (probability ≥ ``cfg.detection``) on every station's family between t0 and t1, chunk by chunk."""
    out: list[LabelledPick] = []
    overlap = 2 * int(model.in_samples) / float(model.sampling_rate)
    for net, sta, loc, family in stations:
        start = t0
        last: dict[str, float] = {}
        while start < t1:
            stream = source.get(net, sta, loc, family, start, min(t1, start + chunk_s + overlap))
            if len(stream):
                found = model.classify(stream, P_threshold=cfg.detection, S_threshold=cfg.detection).picks
                for p in sorted(found, key=lambda p: p.peak_time):
                    if p.phase not in PICK_COLUMNS or float(p.peak_time) <= last.get(p.phase, -np.inf) + 0.5:
                        continue  # the chunks overlap: a pick seen twice is kept once
                    last[p.phase] = float(p.peak_time)
                    channel = family[:2] + "Z"
                    out.append(LabelledPick("", net, sta, loc, channel, p.phase, p.peak_time, "automatic", "", float(p.peak_value)))
            start += chunk_s
    return out


def group_events(picks: list[LabelledPick], cfg: PseudoConfig, tally: Tally) -> tuple[dict[str, EventInfo], list[LabelledPick]]:
    """Pseudo-events by time clustering of P picks; S picks join their station's latest P."""
    from dataclasses import replace

    events: dict[str, EventInfo] = {}
    out: list[LabelledPick] = []
    p_picks = sorted((p for p in picks if p.phase == "P"), key=lambda p: p.time)
    last_p: dict[str, list[tuple[float, str]]] = defaultdict(list)
    current, t_prev = None, None
    for p in p_picks:
        if t_prev is None or p.time - t_prev > cfg.cluster_s:
            current = f"pseudo_{p.time.strftime('%Y%m%dT%H%M%S.%f')}"
            events[current] = EventInfo(current, None)
        t_prev = p.time
        out.append(replace(p, event_id=current))
        last_p[p.station_key].append((float(p.time), current))
    for s in (p for p in picks if p.phase == "S"):
        before = [(t, ev) for t, ev in last_p.get(s.station_key, []) if 0 < float(s.time) - t <= cfg.max_sp_s]
        if not before:
            tally.add("s_without_p", s.describe())
            continue
        out.append(replace(s, event_id=max(before)[1]))
    return events, out


def associated_events(picks: list[LabelledPick], associate_config, tally: Tally) -> tuple[dict[str, EventInfo], list[LabelledPick]]:
    """Keep the picks rtpick's associator puts into events (final revisions), with the events' origins."""
    from dataclasses import replace

    from obspy import UTCDateTime

    from rtpick.associate import build_associator
    from rtpick.types import Pick

    associator = build_associator(associate_config)
    pairs = []
    for lp in picks:
        ns = int(round(float(lp.time) * 1e9))
        pairs.append((Pick(f"{lp.station_key}.{lp.channel}", lp.phase, ns, lp.probability, 0.0, ns, ns, "teacher"), lp))
    events: dict[str, EventInfo] = {}
    member: dict[tuple, str] = {}
    for ev in associator.run([pick for pick, _ in pairs]):
        if not ev.final:
            continue
        events[ev.event_id] = EventInfo(ev.event_id, UTCDateTime(ev.origin_time_ns / 1e9), ev.latitude, ev.longitude, ev.depth_km)
        for pick, _ in ev.picks:
            member[(pick.stream_id, pick.phase, pick.time_ns)] = ev.event_id
    out = []
    for pick, lp in pairs:
        event_id = member.get((pick.stream_id, pick.phase, pick.time_ns))
        if event_id is None:
            tally.add("not_associated", lp.describe())
        else:
            out.append(replace(lp, event_id=event_id))
    return events, out


def split_by_confidence(picks: list[LabelledPick], cfg: PseudoConfig, tally: Tally) -> tuple[list[LabelledPick], list[LabelledPick]]:
    """(labels, uncertain): picks at or above their phase's confidence threshold, and the rest (tallied)."""
    labels, uncertain = [], []
    for p in picks:
        if p.probability >= cfg.threshold(p.phase):
            labels.append(p)
        else:
            uncertain.append(p)
            tally.add("low_confidence", f"{p.describe()} p={p.probability:.2f}")
    return labels, uncertain


# --------------------------------------------------------------------------- trace sets (benchmark)


@np.errstate(invalid="ignore")
def trace_peaks(model, ts: TraceSet, batch_size: int = 64) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per phase, the teacher's highest probability over each whole trace and its sample (windows at both ends)."""
    import torch

    window = int(model.in_samples)
    length = ts.waveforms.shape[-1]
    starts = sorted({0, max(0, length - window)} | set(range(0, max(1, length - window), window // 2)))
    labels = list(model.labels)
    best = {ph: (np.zeros(len(ts)), np.zeros(len(ts))) for ph in PICK_COLUMNS}
    device = device_of(model)
    model.eval()
    with torch.no_grad():
        for s in starts:
            for b0 in range(0, len(ts), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(ts.waveforms[b0 : b0 + batch_size, :, s : s + window], dtype=np.float32))
                y = model(model.annotate_batch_pre(x, {}).to(device)).cpu().numpy()
                for ph in PICK_COLUMNS:
                    ch = y[:, labels.index(ph)]
                    prob, sample = best[ph]
                    better = ch.max(axis=-1) > prob[b0 : b0 + len(x)]
                    prob[b0 : b0 + len(x)] = np.where(better, ch.max(axis=-1), prob[b0 : b0 + len(x)])
                    sample[b0 : b0 + len(x)] = np.where(better, ch.argmax(axis=-1) + s, sample[b0 : b0 + len(x)])
    return best


def pseudo_label_traces(model, ts: TraceSet, cfg: PseudoConfig, seed: int = 0) -> tuple[TraceSet, dict]:
    """``ts`` with its pick labels replaced by the teacher's (rules in the module docstring); and the counts."""
    peaks = trace_peaks(model, ts)
    meta = ts.metadata.copy()
    counts: dict[str, int] = {}
    keep = np.ones(len(ts), bool)
    silent = np.ones(len(ts), bool)
    for ph, col in PICK_COLUMNS.items():
        prob, sample = peaks[ph]
        confident = prob >= cfg.threshold(ph)
        doubtful = (prob >= cfg.detection) & ~confident
        meta[col] = np.where(confident, sample.astype(float), np.nan)
        keep &= ~doubtful
        silent &= prob < cfg.detection
        counts[f"{ph}_confident"], counts[f"{ph}_uncertain"] = int(confident.sum()), int(doubtful.sum())
    has_p = np.isfinite(meta[P_COL].to_numpy(float))
    per_event = pd.Series(has_p).groupby(meta["source_id"].astype(str).to_numpy()).transform("sum").to_numpy()
    labelled = keep & has_p & (per_event >= cfg.min_stations)
    rng = np.random.default_rng(seed)
    noise_idx = np.flatnonzero(silent)
    noise_idx = rng.permutation(noise_idx)[: int(round(cfg.noise_fraction * labelled.sum()))]
    meta.loc[noise_idx, "trace_category"] = "noise"
    chosen = np.sort(np.concatenate([np.flatnonzero(labelled), noise_idx]))
    counts.update(traces=len(ts), labelled=int(labelled.sum()), noise=len(noise_idx), dropped=len(ts) - len(chosen))
    if "trace_category" in ts.metadata:  # known only on simulated data: missed events the noise traces hold
        counts["earthquakes_as_noise"] = int((ts.metadata["trace_category"].to_numpy()[noise_idx] == "earthquake").sum())
    out = TraceSet(ts.waveforms[chosen], meta.iloc[chosen].copy(), ts.sampling_rate, f"pseudo:{ts.source}")
    return out, counts
