"""Domain-shift simulator: labelled target-region traces from physics plus real background noise.

Each trace is a P and an S arrival synthesised with the stochastic method
(Boore 2003): random-phase windowed noise shaped to a Brune source spectrum
(``fc ∝ β (Δσ/M0)^(1/3)``, P corner 1.5× the S corner), geometric spreading
(1/R, then 1/√R past 50 km), whole-path Q(f) = Q0·f^η, near-surface κ, a
random site amplification (log-normal factor and a resonance), far-field
radiation (P/S amplitude ∝ radiation pattern / c³), and first-arrival times
and incidence angles through the region's 1D model (``Oklahoma.nd``). Real
background noise cut from recordings of the region is added (non-event parts
of the bundled Oklahoma miniSEED, or the pre-event part of NCEDC records).

Presets: ``tectonic`` (California-like: M 1.5–4.5, 3–15 km deep, 5–110 km away,
NCEDC noise) and ``induced`` (Oklahoma-like: M 0.8–3.2, 2–7 km deep, 2–50 km,
Oklahoma noise, events in swarms sharing location and stations, only traces an
analyst would have picked: SNR ≥ 2 dB).
Every trace carries ``source_magnitude``, ``trace_snr_db``, distances and
depth in its metadata; 10 % of traces are noise only (no picks).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from rtpick.adapt.datasets import P_COL, S_COL, TraceSet, snr_db
from rtpick.adapt.velocity import LayeredModel

DATA = Path(__file__).resolve().parents[1] / "data" / "oklahoma_2013-06-16"
NCEDC_NPZ = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ncedc_picks_100hz.npz"
FS = 100.0
# Parts of the Oklahoma recordings with the 15:38:55 event and its coda (UTC seconds of day) excluded from noise.
_EVENT_SPAN = (15 * 3600 + 38 * 60 + 45, 15 * 3600 + 40 * 60 + 30)


@dataclass(frozen=True)
class Preset:
    """Distribution of sources, paths, sites and noise for one target domain."""

    name: str
    magnitude: tuple[float, float]  # Gutenberg–Richter, truncated
    b_value: float
    depth_km: tuple[float, float]
    distance_km: tuple[float, float]
    stress_drop_mpa: tuple[float, float]  # log-uniform
    q0: float
    q_eta: float
    kappa_s: tuple[float, float]
    noise: str  # "oklahoma" | "ncedc"
    noise_rms_mps: tuple[float, float] | None  # log-normal (median, sigma_ln) 1–20 Hz noise RMS; None = calibrated counts
    stations_per_event: tuple[int, int]
    events_per_swarm: tuple[int, int]
    swarm_radius_km: float
    counts_per_mps: float = 6.3e8  # nominal broadband sensitivity (STS-2 class + 24-bit digitizer)
    min_snr_db: float | None = None  # analyst visibility: earthquake traces below this SNR are not in the catalogue
    noise_fraction: float = 0.1
    samples: int = 4001


PRESETS: dict[str, Preset] = {
    "tectonic": Preset(
        name="tectonic", magnitude=(1.5, 4.5), b_value=1.0, depth_km=(3.0, 15.0), distance_km=(5.0, 110.0),
        stress_drop_mpa=(1.0, 10.0), q0=180.0, q_eta=0.45, kappa_s=(0.02, 0.05), noise="ncedc",
        noise_rms_mps=(5e-9, 0.7), stations_per_event=(1, 3), events_per_swarm=(1, 1), swarm_radius_km=0.0,
    ),
    "induced": Preset(
        name="induced", magnitude=(0.8, 3.2), b_value=1.0, depth_km=(2.0, 7.0), distance_km=(2.0, 50.0),
        stress_drop_mpa=(0.3, 10.0), q0=300.0, q_eta=0.5, kappa_s=(0.02, 0.04), noise="oklahoma",
        noise_rms_mps=None, stations_per_event=(3, 7), events_per_swarm=(3, 12), swarm_radius_km=1.0,
        # Tuned with bench/simulator_validation.py (docs/adaptation.md): a catalogue holds only arrivals an
        # analyst saw (2 dB on the best component), and a regional network's nearer stations reach S–P ~6 s.
        min_snr_db=2.0,
    ),
}


def _bandpassed_rms(x: np.ndarray) -> float:
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, [1.0, 20.0], btype="band", fs=FS, output="sos")
    return float(np.sqrt(np.mean(sosfiltfilt(sos, x[0].astype(np.float64)) ** 2)))


def load_noise_bank(kind: str, length: int) -> list[np.ndarray]:
    """Real noise segments (3, >= length) in Z, N, E at 100 Hz, demeaned, in counts."""
    if kind == "oklahoma":
        return _oklahoma_noise(length)
    if kind == "ncedc":
        with np.load(NCEDC_NPZ) as data:
            w, p = data["waveforms"], data["p_sample"]
        segments = [w[i, :, : int(p[i]) - 100] for i in range(len(w)) if p[i] - 100 >= 1000 and np.abs(w[i, 1]).sum() > 0]
        # NCEDC pre-event parts (~29 s) are shorter than a trace: tile with a reversed copy (keeps the spectrum).
        out = []
        for seg in segments:
            seg = seg - seg.mean(axis=1, keepdims=True)
            while seg.shape[1] < length:
                seg = np.concatenate([seg, seg[:, ::-1]], axis=1)
            out.append(seg.astype(np.float32))
        return out
    raise ValueError(f"unknown noise source '{kind}' (expected 'oklahoma' or 'ncedc')")


def _oklahoma_noise(length: int) -> list[np.ndarray]:
    import obspy

    stream = obspy.Stream()
    for path in sorted(DATA.glob("*.msd")):
        stream += obspy.read(str(path))
    stream.merge(method=1, fill_value=None)
    out = []
    for station in sorted({tr.stats.station for tr in stream}):
        st = stream.select(station=station)
        for prefix in ("HH", "EH", "BH"):
            sel = st.select(channel=f"{prefix}?")
            if len(sel) == 3:
                break
        else:
            continue
        sel = sel.copy()
        for tr in sel:
            if isinstance(tr.data, np.ma.MaskedArray):
                tr.data = tr.data.astype(np.float64).filled(np.nan)
            tr.data = tr.data.astype(np.float64)
            if tr.stats.sampling_rate != FS:
                tr.data = np.nan_to_num(tr.data)
                tr.resample(FS)
        t0 = max(tr.stats.starttime for tr in sel)
        t1 = min(tr.stats.endtime for tr in sel)
        sel.trim(t0, t1)
        n = min(len(tr.data) for tr in sel)
        arr = np.stack([sel.select(component=c)[0].data[:n] for c in "ZNE"])
        day0 = t0 - t0.replace(hour=0, minute=0, second=0, microsecond=0)
        times = day0 + np.arange(n) / FS
        quiet = ~((times >= _EVENT_SPAN[0]) & (times <= _EVENT_SPAN[1])) & np.isfinite(arr).all(axis=0)
        # contiguous quiet runs long enough for a trace
        edges = np.flatnonzero(np.diff(np.concatenate([[0], quiet.astype(int), [0]])))
        for a, b in zip(edges[::2], edges[1::2]):
            if b - a >= length:
                seg = arr[:, a:b]
                out.append((seg - seg.mean(axis=1, keepdims=True)).astype(np.float32))
    if not out:
        raise RuntimeError(f"no noise segments of {length} samples found in {DATA}")
    return out


def _gr_magnitudes(rng: np.random.Generator, n: int, lo: float, hi: float, b: float) -> np.ndarray:
    beta = b * np.log(10)
    u = rng.uniform(size=n)
    return lo - np.log(1 - u * (1 - np.exp(-beta * (hi - lo)))) / beta


def _phase_spectrum(f: np.ndarray, m0: float, fc: float, r_km: float, c_kms: float, rad: float, q0: float, eta: float, kappa: float, site: np.ndarray) -> np.ndarray:
    """Fourier amplitude of ground velocity (m/s·s) of one phase at the surface."""
    rho = 2700.0
    c = c_kms * 1e3
    source = rad * 2.0 * m0 / (4 * np.pi * rho * c**3) / (1 + (f / fc) ** 2)
    r1 = 50.0
    geom = (1.0 / (r_km * 1e3)) if r_km <= r1 else (1.0 / (r1 * 1e3)) * np.sqrt(r1 / r_km)
    q = q0 * np.maximum(f, 0.1) ** eta
    atten = np.exp(-np.pi * f * (r_km / c_kms) / q) * np.exp(-np.pi * kappa * f)
    return 2 * np.pi * f * source * geom * atten * site


def _stochastic(rng: np.random.Generator, amp: np.ndarray, n: int, rise_s: float, duration_s: float) -> np.ndarray:
    """Random-phase time series (starting at sample 0) with Fourier amplitude ``amp`` and a sharp-onset envelope."""
    t = np.arange(n) / FS
    env = (1 - np.exp(-t / max(rise_s, 0.01))) * np.exp(-t / max(duration_s, 0.05))
    w = rng.standard_normal(n) * env
    spec = np.fft.rfft(w)
    spec /= np.sqrt(np.mean(np.abs(spec) ** 2))
    x = np.fft.irfft(spec * amp, n)
    x *= env > 1e-3  # keep the onset causal after filtering
    energy_target = 2 * np.sum(amp**2) * (FS / n)  # Parseval: ∫x² dt = 2∫|A|² df
    energy = np.sum(x**2) / FS
    return x * np.sqrt(energy_target / max(energy, 1e-300))


def simulate(preset: str | Preset, n_traces: int, seed: int = 0, velocity_model: str | Path | None = None, noise_bank: list[np.ndarray] | None = None) -> TraceSet:
    """About ``n_traces`` labelled traces of one preset (whole events; some noise-only traces)."""
    pre = PRESETS[preset] if isinstance(preset, str) else preset
    rng = np.random.default_rng(seed)
    model = LayeredModel.from_nd(velocity_model or DATA / "Oklahoma.nd")
    n = pre.samples
    bank = noise_bank if noise_bank is not None else load_noise_bank(pre.noise, n)
    f = np.fft.rfftfreq(n, 1 / FS)
    waves, rows = [], []
    swarm = unseen = 0
    while len(rows) < n_traces:
        if unseen > 50 * n_traces:
            raise ValueError(f"preset {pre.name}: almost no trace reaches min_snr_db = {pre.min_snr_db} dB")
        swarm += 1
        n_st = int(rng.integers(pre.stations_per_event[0], pre.stations_per_event[1] + 1))
        dists = rng.uniform(*pre.distance_km, size=n_st)
        baz = rng.uniform(0, 2 * np.pi, size=n_st)
        site_gain = np.exp(rng.normal(0, 0.35, size=n_st))
        site_f0 = np.exp(rng.uniform(np.log(1.0), np.log(12.0), size=n_st))
        site_a0 = rng.uniform(1.0, 4.0, size=n_st)
        noise_pick = rng.integers(0, len(bank), size=n_st)
        swarm_depth = rng.uniform(*pre.depth_km)
        for ev in range(int(rng.integers(pre.events_per_swarm[0], pre.events_per_swarm[1] + 1))):
            mag = float(_gr_magnitudes(rng, 1, *pre.magnitude, pre.b_value)[0])
            depth = float(np.clip(swarm_depth + rng.normal(0, pre.swarm_radius_km / 2), 0.5, None))
            d_ev = np.clip(dists + rng.normal(0, pre.swarm_radius_km / 2, size=n_st), 0.2, None)
            m0 = 10 ** (1.5 * mag + 9.1)
            dsig = np.exp(rng.uniform(np.log(pre.stress_drop_mpa[0]), np.log(pre.stress_drop_mpa[1]))) * 1e6
            vs_src = float(model.vs[np.searchsorted(model.tops, depth, side="right") - 1])
            fc_s = 0.4906 * vs_src * 1e3 * (dsig / m0) ** (1 / 3)
            tp, pp = model.first_arrival("P", depth, d_ev)
            ts, ps = model.first_arrival("S", depth, d_ev)
            source_id = f"{pre.name}_{seed}_{swarm:05d}_{ev:03d}"
            for k in range(n_st):
                if len(rows) >= n_traces:
                    break
                r = float(np.hypot(d_ev[k], depth))
                site = site_gain[k] * (1 + (site_a0[k] - 1) * np.exp(-np.log(np.maximum(f, 1e-3) / site_f0[k]) ** 2 / (2 * 0.35**2)))
                kappa = rng.uniform(*pre.kappa_s)
                rad_p, rad_s = rng.uniform(0.25, 1.0), rng.uniform(0.25, 1.0)
                amp_p = _phase_spectrum(f, m0, 1.5 * fc_s, r, r / tp[k], rad_p, pre.q0, pre.q_eta, kappa, site)
                amp_s = _phase_spectrum(f, m0, fc_s, r, r / ts[k], rad_s, pre.q0, pre.q_eta, kappa, site) / np.sqrt(2)
                dur_path = 0.05 * r
                p_at = int(rng.integers(500, 1500))
                s_at = p_at + int(round((ts[k] - tp[k]) * FS))
                x = np.zeros((3, n))
                # P: radial + vertical by incidence angle; S: SV (radial/vertical) and SH (transverse)
                inc_p = np.arcsin(np.clip(pp[k] * model.vp[0], 0, 0.99))
                inc_s = np.arcsin(np.clip(ps[k] * model.vs[0], 0, 0.99))
                sp = _stochastic(rng, amp_p, n, 0.3 / (1.5 * fc_s) + 0.01, 1 / (1.5 * fc_s) + dur_path)
                radial = np.zeros(n)
                transverse = np.zeros(n)
                x[0, p_at:] += np.cos(inc_p) * sp[: n - p_at]
                radial[p_at:] += np.sin(inc_p) * sp[: n - p_at]
                if s_at < n:
                    psi = rng.uniform(0, 2 * np.pi)
                    ss_sv = _stochastic(rng, amp_s, n, 0.3 / fc_s + 0.02, 1 / fc_s + 1.5 * dur_path + 0.5)
                    ss_sh = _stochastic(rng, amp_s, n, 0.3 / fc_s + 0.02, 1 / fc_s + 1.5 * dur_path + 0.5)
                    ss_sv, ss_sh = ss_sv[: n - s_at], ss_sh[: n - s_at]
                    radial[s_at:] += np.cos(psi) * np.cos(inc_s) * ss_sv
                    x[0, s_at:] += np.cos(psi) * np.sin(inc_s) * ss_sv
                    transverse[s_at:] += np.sin(psi) * ss_sh + 0.3 * np.cos(psi) * ss_sv
                x[1] = -np.cos(baz[k]) * radial + np.sin(baz[k]) * transverse
                x[2] = -np.sin(baz[k]) * radial - np.cos(baz[k]) * transverse
                trace = _add_noise(rng, x, bank[noise_pick[k]], pre)
                snr = snr_db(trace, p_at, FS)
                if pre.min_snr_db is not None and not snr >= pre.min_snr_db:
                    unseen += 1  # no analyst would have picked it: not in the catalogue
                    continue
                waves.append(trace)
                rows.append(
                    {
                        "trace_name": f"{source_id}_st{k}",
                        "source_id": source_id,
                        "swarm_id": f"{pre.name}_{seed}_{swarm:05d}",
                        "source_magnitude": round(mag, 3),
                        "source_depth_km": round(depth, 3),
                        "path_ep_distance_km": round(float(d_ev[k]), 3),
                        P_COL: float(p_at),
                        S_COL: float(s_at) if s_at < n else np.nan,
                        "trace_category": "earthquake",
                        "trace_snr_db": snr,
                    }
                )
    for i in range(int(round(pre.noise_fraction * len(rows)))):
        waves.append(_add_noise(rng, np.zeros((3, n)), bank[int(rng.integers(len(bank)))], pre))
        rows.append({"trace_name": f"{pre.name}_{seed}_noise_{i:05d}", "source_id": f"{pre.name}_{seed}_noise_{i:05d}", "trace_category": "noise", P_COL: np.nan, S_COL: np.nan, "trace_snr_db": np.nan})
    meta = pd.DataFrame(rows)
    w = np.stack(waves).astype(np.float32)
    return TraceSet(w, meta, FS, f"simulate:{pre.name}:seed={seed}")


def _add_noise(rng: np.random.Generator, signal_mps: np.ndarray, noise: np.ndarray, pre: Preset) -> np.ndarray:
    n = signal_mps.shape[1]
    start = int(rng.integers(0, noise.shape[1] - n + 1))
    seg = noise[:, start : start + n].astype(np.float64)
    seg = seg - seg.mean(axis=1, keepdims=True)
    if rng.uniform() < 0.5:
        seg = seg[:, ::-1]  # time reversal keeps the spectrum and doubles the noise variety
    if pre.noise_rms_mps is not None:
        target = pre.noise_rms_mps[0] * np.exp(rng.normal(0, pre.noise_rms_mps[1]))
        seg *= target * pre.counts_per_mps / max(_bandpassed_rms(seg), 1e-12)
    return signal_mps * pre.counts_per_mps + seg


def with_overrides(name: str, **kwargs) -> Preset:
    """A preset with some fields changed (tests use small traces)."""
    return replace(PRESETS[name], **kwargs)
