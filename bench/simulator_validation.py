"""Does the simulator reproduce the domain shift, and does it look like the real Oklahoma records?

Part 1 — the California PhaseNet on real NCEDC, `tectonic` and `induced`: `tectonic` should
resemble the real NCEDC numbers; on `induced` the loss should sit in small, low-SNR events.
Thresholds fixed at 0.3 (SeisBench default) so the sets compare without a dev split.

Part 2 — realism of `induced` against the bundled Oklahoma 2013-06-16 records (one
local event at 7 stations; picks by the California PhaseNet, which picks it well):
S–P times, P amplitude vs distance (the simulated magnitude that reproduces each
real station's amplitude: equal values at all stations mean the same decay with
distance), SNR, and the P-to-noise spectral ratio by band (source corner, Q and κ
together). One real event is thin evidence; it checks scale and shape, not spread.

    python bench/simulator_validation.py --n 1000
"""

from __future__ import annotations

import argparse
import sys

from adaptation import SHARED, _offline_cache

BANDS_HZ = ((1, 2), (2, 5), (5, 10), (10, 20), (20, 40))
EVENT_SPAN = ("2013-06-16T15:38:45", "2013-06-16T15:39:40")


def _band_peak(x, fs: float = 100.0):
    """Peak |x| in 1–20 Hz (the band the SNR uses), per row."""
    import numpy as np
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, [1.0, 20.0], btype="band", fs=fs, output="sos")
    return np.abs(sosfiltfilt(sos, np.atleast_2d(x).astype(np.float64), axis=-1)).max(axis=-1)


def _spectral_ratio(z, p: int, fs: float = 100.0):
    """P-window (0–2.56 s after P) over pre-P noise (3.06–0.5 s before) amplitude spectra, mean per band, dB."""
    import numpy as np

    n = 256
    if p - 50 - n < 0 or p + n > len(z):
        return np.full(len(BANDS_HZ), np.nan)
    win = np.hanning(n)
    sig = np.abs(np.fft.rfft((z[p : p + n] - z[p : p + n].mean()) * win))
    noi = np.abs(np.fft.rfft((z[p - 50 - n : p - 50] - z[p - 50 - n : p - 50].mean()) * win))
    f = np.fft.rfftfreq(n, 1 / fs)
    return np.array([20 * np.log10(sig[(f >= a) & (f < b)].mean() / max(noi[(f >= a) & (f < b)].mean(), 1e-12)) for a, b in BANDS_HZ])


def real_oklahoma(model):
    """Per station of the bundled records: S–P (s), P amplitude (counts, 1–20 Hz), SNR (dB), P/noise spectral ratio by band."""
    import numpy as np
    import obspy
    import pandas as pd
    from obspy import UTCDateTime
    from seisbench.models import WaveformModel

    from rtpick.adapt.build import family_rank
    from rtpick.adapt.datasets import snr_db
    from rtpick.adapt.simulate import DATA

    stream = obspy.Stream()
    for path in sorted(DATA.glob("*.msd")):
        stream += obspy.read(str(path))
    t0, t1 = (UTCDateTime(t) for t in EVENT_SPAN)
    rows = []
    for sta in sorted({tr.stats.station for tr in stream}):
        fams = sorted({tr.stats.channel[:2] + "?" for tr in stream.select(station=sta)}, key=family_rank)
        st = stream.select(station=sta, channel=fams[0]).copy()
        st.merge(method=1, fill_value=0)
        for tr in st:
            tr.data = tr.data.astype(np.float64)
        WaveformModel.resample(st, 100.0)
        picks = [p for p in model.classify(st, P_threshold=0.3, S_threshold=0.3).picks if t0 <= p.peak_time <= t1]
        p = min((x.peak_time for x in picks if x.phase == "P"), default=None)
        s = min((x.peak_time for x in picks if x.phase == "S" and p is not None and x.peak_time > p), default=None)
        if p is None:
            continue
        start = max(tr.stats.starttime for tr in st)
        n = min(tr.stats.npts for tr in st)
        w = np.stack([st.select(component=c)[0].data[:n] for c in "ZNE"])
        ip = int(round((p - start) * 100))
        rows.append({
            "station": f"{sta}.{fams[0]}", "sp_s": (s - p) if s is not None else np.nan, "amp_p": float(_band_peak(w[0, ip : ip + 200])[0]),
            "snr_db": snr_db(w, ip, 100.0), **dict(zip([f"{a}-{b}Hz" for a, b in BANDS_HZ], _spectral_ratio(w[0], ip))),
        })
    return pd.DataFrame(rows)


def simulated_measures(ts):
    """The same measures on simulated traces (earthquakes only), with their magnitudes and distances."""
    import numpy as np
    import pandas as pd

    meta = ts.metadata
    quake = np.flatnonzero((meta["trace_category"] == "earthquake").to_numpy())
    p = meta["trace_p_arrival_sample"].to_numpy()[quake].astype(int)
    amp = np.array([_band_peak(ts.waveforms[i, 0, pi : pi + 200])[0] for i, pi in zip(quake, p)])
    spec = np.stack([_spectral_ratio(ts.waveforms[i, 0], pi) for i, pi in zip(quake, p)])
    out = pd.DataFrame({
        "M": meta["source_magnitude"].to_numpy()[quake], "R": np.hypot(meta["path_ep_distance_km"].to_numpy()[quake], meta["source_depth_km"].to_numpy()[quake]),
        "sp_s": (meta["trace_s_arrival_sample"].to_numpy()[quake] - p) / 100.0, "amp_p": amp, "snr_db": meta["trace_snr_db"].to_numpy()[quake],
    })
    for k, (a, b) in enumerate(BANDS_HZ):
        out[f"{a}-{b}Hz"] = spec[:, k]
    return out


def realism(model, ts) -> str:
    """Part 2 as text."""
    import numpy as np

    real = real_oklahoma(model)
    sim = simulated_measures(ts)
    vp, vs = 6.0, 3.46  # upper crust of Oklahoma.nd (1.5–8 km: 5.8–6.27 / 3.35–3.62 km/s)
    real["R_km"] = real["sp_s"] * vp * vs / (vp - vs)
    # log10 A = a + b M + c log10 R on the simulated set; the simulated M that gives each real amplitude
    ok = (sim["amp_p"] > 0) & np.isfinite(sim["R"])
    X = np.column_stack([np.ones(ok.sum()), sim["M"][ok], np.log10(sim["R"][ok])])
    (a, b, c), *_ = np.linalg.lstsq(X, np.log10(sim["amp_p"][ok]), rcond=None)
    real["M_equiv"] = (np.log10(real["amp_p"]) - a - c * np.log10(real["R_km"])) / b
    m_eq = float(np.nanmedian(real["M_equiv"]))
    near = sim[((sim["M"] - m_eq).abs() <= 0.3) & (sim["R"] >= real["R_km"].min())]  # same size, as far as the simulator reaches
    bands = [f"{lo}-{hi}Hz" for lo, hi in BANDS_HZ]
    lines = ["", "Realism: `induced` vs the bundled Oklahoma 2013-06-16 records (one event, picks by the California PhaseNet)", ""]
    lines.append(real[["station", "sp_s", "R_km", "amp_p", "M_equiv", "snr_db", *bands]].round(2).to_string(index=False))
    q = lambda s: "/".join(f"{v:.1f}" for v in np.nanpercentile(s, [5, 50, 95]))  # noqa: E731
    lines += [
        "",
        f"S–P s (p5/p50/p95): real {q(real['sp_s'])}   simulated {q(sim['sp_s'])}",
        f"amplitude: simulated log10 A = {a:.2f} + {b:.2f} M {c:+.2f} log10 R; the real amplitudes need simulated M {m_eq:.2f} "
        f"(spread over stations {np.nanstd(real['M_equiv']):.2f}: a flat M_equiv with distance means the simulated decay fits)",
        f"real decay alone: log10 A vs log10 R slope {np.polyfit(np.log10(real['R_km'].dropna()), np.log10(real.loc[real['R_km'].notna(), 'amp_p']), 1)[0]:+.2f} (simulated {c:+.2f})",
        f"SNR dB (p5/p50/p95): real {q(real['snr_db'])}   simulated at M {m_eq:.1f}±0.3, R >= {real['R_km'].min():.0f} km (n={len(near)}) {q(near['snr_db'])}   all simulated {q(sim['snr_db'])}",
        "P/noise spectral ratio dB by band (median): real " + ", ".join(f"{bd} {real[bd].median():.0f}" for bd in bands),
        "                                  simulated at that M " + ", ".join(f"{bd} {near[bd].median():.0f}" for bd in bands),
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="simulated earthquake traces per preset")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    _offline_cache()
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from rtpick.adapt import evaluate as ev
    from rtpick.adapt.datasets import load_npz
    from rtpick.adapt.models import load_picker
    from rtpick.adapt.simulate import simulate

    model = load_picker("seisbench:PhaseNet/original")
    sets = {"NCEDC (real)": load_npz(SHARED / "data" / "ncedc_picks_100hz.npz")}
    for preset in ("tectonic", "induced"):
        sets[f"{preset} (sim)"] = simulate(preset, args.n, seed=args.seed)
    thr = {"P": 0.3, "S": 0.3}
    print(f"{'set':<16}{'SNR p10/50/90 dB':>20}" + "".join(f"{k:>10}" for k in ("P_F1@0.1", "P_F1@0.5", "S_F1@0.1", "S_F1@0.5")) + "   P recall@0.5 s by SNR bin; by magnitude")
    for name, ts in sets.items():
        m = ev.metrics(ev.predict_peaks(model, ts), thr)
        row = ev.summary_row(m)
        q = np.nanpercentile(ts.metadata["trace_snr_db"], [10, 50, 90])
        bins = ", ".join(f"{k}: {v['recall_0.5s']:.2f} (n={v['n']})" for k, v in m["P"]["by_snr_db"].items())
        mags = ", ".join(f"M{k}: {v['recall_0.5s']:.2f}" for k, v in m["P"]["by_magnitude"].items())
        print(f"{name:<16}{q[0]:6.1f}/{q[1]:5.1f}/{q[2]:5.1f}      " + "".join(f"{row[k]:10.3f}" for k in ("P_F1@0.1", "P_F1@0.5", "S_F1@0.1", "S_F1@0.5")) + f"   {bins}; {mags}")
    print(realism(model, sets["induced (sim)"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
