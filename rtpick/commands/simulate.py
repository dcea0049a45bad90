"""``rtpick simulate``: labelled target-domain synthetics (Brune source, Q, site, real noise) as a SeisBench folder."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rtpick.adapt.simulate import PRESETS

    parser.add_argument("--preset", choices=sorted(PRESETS), default="induced", help="target domain (default: induced)")
    parser.add_argument("--n-traces", type=int, default=2000, help="earthquake traces to simulate (plus 10%% noise-only traces)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    parser.add_argument("--split", default="0.7,0.1,0.2", help="train,dev,test fractions of events (default 0.7,0.1,0.2)")
    parser.add_argument("--out", required=True, help="output SeisBench dataset folder (metadata.csv + waveforms.hdf5)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from rtpick.adapt.datasets import save_seisbench, split_by_event
    from rtpick.adapt.simulate import simulate

    if args.n_traces < 1:
        print("rtpick simulate: --n-traces must be positive", file=sys.stderr)
        return 2
    fractions = tuple(float(v) for v in args.split.split(","))
    ts = simulate(args.preset, args.n_traces, seed=args.seed)
    split_by_event(ts, fractions, seed=args.seed)
    save_seisbench(ts, args.out)
    meta = ts.metadata
    snr = meta["trace_snr_db"].dropna()
    q = np.percentile(snr, [10, 50, 90]) if len(snr) else [np.nan] * 3
    print(
        f"{args.out}: {len(ts)} traces ({int((meta['trace_category'] == 'noise').sum())} noise-only), "
        f"{meta['source_id'].nunique()} events; split {meta['split'].value_counts().to_dict()}; "
        f"SNR dB p10/p50/p90 {q[0]:.1f}/{q[1]:.1f}/{q[2]:.1f}; M {meta['source_magnitude'].min():.1f}–{meta['source_magnitude'].max():.1f}"
    )
    return 0
