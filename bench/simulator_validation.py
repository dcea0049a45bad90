"""Does the simulator reproduce the domain shift? The California PhaseNet on real NCEDC, `tectonic` and `induced`.

Expected: `tectonic` resembles the real NCEDC numbers; `induced` is worse, and the loss
is concentrated in the low-SNR bins. Thresholds fixed at 0.3 (SeisBench default) so
the three sets are comparable without a dev split. Run outside CI:

    python bench/simulator_validation.py --n 1000
"""

from __future__ import annotations

import argparse
import sys

from adaptation import SHARED, _offline_cache


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
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
    print(f"{'set':<16}{'SNR p10/50/90 dB':>20}" + "".join(f"{k:>10}" for k in ("P_F1@0.1", "P_F1@0.5", "S_F1@0.1", "S_F1@0.5")) + "   P recall@0.5 s by SNR bin")
    for name, ts in sets.items():
        m = ev.metrics(ev.predict_peaks(model, ts), thr)
        row = ev.summary_row(m)
        q = np.nanpercentile(ts.metadata["trace_snr_db"], [10, 50, 90])
        bins = ", ".join(f"{k}: {v['recall_0.5s']:.2f} (n={v['n']})" for k, v in m["P"]["by_snr_db"].items())
        print(f"{name:<16}{q[0]:6.1f}/{q[1]:5.1f}/{q[2]:5.1f}      " + "".join(f"{row[k]:10.3f}" for k in ("P_F1@0.1", "P_F1@0.5", "S_F1@0.1", "S_F1@0.5")) + f"   {bins}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
