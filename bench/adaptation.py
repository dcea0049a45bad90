"""Domain-shift benchmark: the California PhaseNet on simulated induced (Oklahoma) data, fine-tuned with N examples.

Run outside CI; prints a table and writes JSON + PNG to --out. For every strategy,
N and (subset, seed) pair: fine-tune the original weights on N target training
traces (whole events), choose P/S thresholds on the dev split only, evaluate on
the test split (split by event) and on the real NCEDC set (forgetting).
Baseline = the original model; ceiling = full fine-tuning on the whole training
split. Gap closure = (F1_N - F1_base) / (F1_ceiling - F1_base).
Pseudo-label rows (--pseudo-n): the same event subsets, labels replaced by the
California model's confident picks (rtpick.adapt.pseudo), full fine-tuning; the
table says what share of the supervised closure at the same N they recover.

Full grid (minutes on a GPU: --device cuda; hours on a CPU):
    python bench/adaptation.py --device cuda --n 50,100,250,500,1000,2000 --strategies full,frozen-encoder,discriminative \
        --seeds 3 --subsets 3 --epochs 30 --pool 6000 --pseudo-n 100,500,1000 --distill
Reduced, on a shared CPU (~20 min; 2 subsets, 1 seed, 10 epochs):
    python bench/adaptation.py --quick
    # = --n 100,500,1000 --strategies full,frozen-encoder --subsets 2 --seeds 1 --pseudo-n 500 --epochs 10
    #   --patience 3 --lr 3e-3 --pool 2500 --distill --distill-epochs 25
lr 3e-3 was chosen on the dev split of an independent pool (seed 200, never the
benchmark's): mean dev F1 0.879 at N=100 for both 1e-3 and 3e-3, 0.895 vs 0.887 at
N=500, where 3e-3 peaks by epoch 4 and 1e-3 is still improving at epoch 10.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _offline_cache() -> None:
    if "SEISBENCH_CACHE_ROOT" not in os.environ:
        tmp = Path(tempfile.mkdtemp(prefix="rtpick-bench-sbcache-"))
        shutil.copytree(SHARED / "seisbench-cache", tmp, dirs_exist_ok=True)
        os.environ["SEISBENCH_CACHE_ROOT"] = str(tmp)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", default="50,100,250,500,1000,2000", help="training set sizes N")
    p.add_argument("--strategies", default="full,frozen-encoder,discriminative")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per subset")
    p.add_argument("--subsets", type=int, default=3, help="random event subsets per N")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--examples-per-epoch", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--pool", type=int, default=6000, help="simulated induced traces (split 60/13/27 by event)")
    p.add_argument("--ceiling-seeds", type=int, default=1)
    p.add_argument("--distill", action="store_true", help="also distil the ceiling model into a student")
    p.add_argument("--distill-epochs", type=int, default=30)
    p.add_argument("--distill-label-weight", type=float, default=0.5, help="share of the student's loss on the labels (0 = teacher only)")
    p.add_argument("--pseudo-n", default="", help="N values that also get pseudo-label rows (teacher: the California model)")
    p.add_argument("--device", default="cpu", help="torch device for training and evaluation (cuda on a GPU); CPU speed of the student is measured on the CPU")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="reduced configuration (see --help text)")
    p.add_argument("--out", default="bench/results/adaptation")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.strategies, args.seeds, args.subsets, args.pseudo_n = "100,500,1000", "full,frozen-encoder", 1, 2, "500"
        args.epochs, args.patience, args.lr, args.pool, args.distill, args.distill_epochs = 10, 3, 3e-3, 2500, True, 25
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    _offline_cache()
    import torch

    torch.set_num_threads(args.threads)
    from rtpick.adapt import evaluate as ev
    from rtpick.adapt.datasets import load_npz, sample_events, split_by_event
    from rtpick.adapt.finetune import FinetuneConfig, finetune
    from rtpick.adapt.models import load_picker
    from rtpick.adapt.pseudo import PseudoConfig, pseudo_label_traces
    from rtpick.adapt.simulate import simulate
    from rtpick.adapt.workflow import noise_set

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    log = lambda msg: print(f"[{time.time() - t_start:7.1f}s] {msg}", flush=True)  # noqa: E731

    pool = simulate("induced", args.pool, seed=100)
    split_by_event(pool, (0.6, 0.13, 0.27), seed=100)
    train, dev, test = pool.split("train"), pool.split("dev"), pool.split("test")
    train_quakes = train.subset((train.metadata["trace_category"] == "earthquake").to_numpy())
    noise = noise_set(pool, "data", 3501)
    ncedc = load_npz(SHARED / "data" / "ncedc_picks_100hz.npz")
    log(f"data: train {len(train)} (earthquakes {len(train_quakes)}), dev {len(dev)}, test {len(test)}, NCEDC {len(ncedc)}; seed 100")

    def score(model, dev_set=dev) -> dict:
        thr = ev.best_thresholds(ev.predict_peaks(model, dev_set))
        row = ev.summary_row(ev.metrics(ev.predict_peaks(model, test), thr))
        nc = ev.summary_row(ev.metrics(ev.predict_peaks(model, ncedc), thr))
        row.update({f"ncedc_{k}": v for k, v in nc.items()})
        row["thresholds"] = thr
        return row

    original = load_picker("seisbench:PhaseNet/original").to(args.device)
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu ({args.threads} thread(s))"
    results = {"config": vars(args), "command": "python bench/adaptation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "device": device_name, "baseline": score(original), "runs": [], "ceiling": []}
    log(f"baseline {fmt(results['baseline'])}")

    def train_one(strategy: str, subset, seed: int, dev_set=dev) -> tuple[dict, object]:
        model = copy.deepcopy(original)
        cfg = FinetuneConfig(strategy=strategy, epochs=args.epochs, patience=args.patience, lr=args.lr,
                             min_examples_per_epoch=args.examples_per_epoch, seed=seed, progress=False)
        t0 = time.time()
        hist = finetune(model, subset, dev_set, cfg, noise)
        row = score(model, dev_set)
        row.update(train_s=round(time.time() - t0, 1), best_epoch=hist["best_epoch"], n_train=len(subset))
        return row, model

    ceiling_model = None
    for seed in range(args.ceiling_seeds):
        row, model = train_one("full", train, seed)
        results["ceiling"].append(row)
        ceiling_model = ceiling_model or model
        log(f"ceiling seed {seed}: {fmt(row)}")
    save(results, out)

    for n in [int(v) for v in args.n.split(",") if v]:
        if n > len(train_quakes):
            log(f"N={n}: only {len(train_quakes)} training earthquakes; skipped")
            continue
        for strategy in args.strategies.split(","):
            for subset_id in range(args.subsets):
                subset = sample_events(train_quakes, n, seed=1000 + subset_id)
                for seed in range(args.seeds):
                    row, _ = train_one(strategy, subset, seed)
                    row.update(strategy=strategy, n=n, subset=subset_id, seed=seed)
                    results["runs"].append(row)
                    log(f"{strategy:>15} N={n:<5} subset {subset_id} seed {seed}: {fmt(row)}")
                    save(results, out)

    # Without analyst picks there is no labelled dev split either: pseudo runs stop early and choose
    # thresholds on a pseudo-labelled dev split; only the test split keeps its true labels.
    pseudo_dev = pseudo_label_traces(original, dev, PseudoConfig())[0] if args.pseudo_n else None
    for n in [int(v) for v in args.pseudo_n.split(",") if v]:
        if n > len(train_quakes):
            log(f"pseudo N={n}: only {len(train_quakes)} training earthquakes; skipped")
            continue
        for subset_id in range(args.subsets):
            subset = sample_events(train_quakes, n, seed=1000 + subset_id)  # the supervised rows' subsets
            labelled, counts = pseudo_label_traces(original, subset, PseudoConfig(), seed=subset_id)
            for seed in range(args.seeds):
                row, _ = train_one("full", labelled, seed, pseudo_dev)
                row.update(strategy="pseudo-full", n=n, subset=subset_id, seed=seed, pseudo=counts)
                results["runs"].append(row)
                log(f"{'pseudo-full':>15} N={n:<5} subset {subset_id} seed {seed}: {fmt(row)} {counts}")
                save(results, out)

    if args.distill and ceiling_model is not None:
        from rtpick.adapt.distill import DistillConfig, distill, windows_per_second
        from rtpick.adapt.student import count_parameters

        cfg = DistillConfig(epochs=args.distill_epochs, label_weight=args.distill_label_weight, progress=False)
        t0 = time.time()
        student, hist = distill(ceiling_model, train, dev, cfg, noise)
        results["distill"] = {
            "teacher": score(ceiling_model),
            "student": score(student),
            "parameters": {"teacher": count_parameters(ceiling_model), "student": count_parameters(student)},
            "windows_per_s": {"teacher": windows_per_second(ceiling_model, 512, repeats=5), "student": windows_per_second(student, 512, repeats=5), "threads": torch.get_num_threads()},
            "train_s": round(time.time() - t0, 1),
            "best_epoch": hist["best_epoch"],
            "label_weight": cfg.label_weight,
        }
        log(f"distill: {results['distill']['parameters']} {results['distill']['windows_per_s']}")
        save(results, out)

    print(table(results))
    (out / "table.txt").write_text(table(results))
    plot(results, out)
    log(f"done; results in {out}")
    return 0


def fmt(row: dict) -> str:
    keys = ("P_F1@0.1", "P_F1@0.5", "S_F1@0.1", "S_F1@0.5", "P_R<5dB", "S_R<5dB")
    return " ".join(f"{k}={row[k]:.3f}" for k in keys) + f" ncedcF1={_ncedc(row):.3f}"


def _ncedc(row: dict) -> float:
    return (row["ncedc_P_F1@0.5"] + row["ncedc_S_F1@0.5"]) / 2


def save(results: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))


def table(results: dict) -> str:
    import warnings

    import numpy as np

    warnings.filterwarnings("ignore", category=RuntimeWarning)  # nan-means of empty low-SNR bins

    base = results["baseline"]
    ceil = {k: float(np.mean([r[k] for r in results["ceiling"]])) for k in results["ceiling"][0] if isinstance(results["ceiling"][0][k], (int, float))} if results["ceiling"] else None
    cols = ["P_F1@0.1", "P_F1@0.5", "S_F1@0.1", "S_F1@0.5"]
    lines = [f"$ {results.get('command', '')}   (device: {results.get('device', 'cpu')})",
             "Induced (simulated Oklahoma) test set; mean ± half-range over subsets×seeds; closure = (F1_N - base)/(ceiling - base)", ""]
    head = f"{'model':<24}" + "".join(f"{c:>14}" for c in cols) + f"{'closure':>9}{'P_R<5dB':>14}{'S_R<5dB':>14}{'lowSNR clos':>12}{'P σ (s)':>9}{'forget':>8}"
    lines.append(head)

    def closure(value, key):
        if ceil is None or abs(ceil[key] - base[key]) < 1e-9:
            return float("nan")
        return (value - base[key]) / (ceil[key] - base[key])

    def line(name, rows):
        agg = {}
        for k in cols + ["P_R<5dB", "S_R<5dB", "P_std_s"]:
            v = np.array([r[k] for r in rows], float)
            agg[k] = (np.nanmean(v), (np.nanmax(v) - np.nanmin(v)) / 2 if len(v) > 1 else 0.0)
        clos = np.nanmean([closure(agg[k][0], k) for k in cols])
        low = np.nanmean([closure(agg[k][0], k) for k in ("P_R<5dB", "S_R<5dB")])
        forget = 100 * (np.mean([_ncedc(r) for r in rows]) - _ncedc(base))
        s = f"{name:<24}" + "".join(f"{agg[c][0]:8.3f}±{agg[c][1]:.3f}" for c in cols)
        s += f"{clos:9.0%}" + "".join(f"{agg[k][0]:8.3f}±{agg[k][1]:.3f}" for k in ("P_R<5dB", "S_R<5dB"))
        s += f"{low:12.0%}{agg['P_std_s'][0]:9.3f}{forget:+8.1f}"
        return s

    lines.append(line("baseline (California)", [base]))
    groups = {}
    for r in results["runs"]:
        groups.setdefault((r["strategy"], r["n"]), []).append(r)
    for (strategy, n), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        lines.append(line(f"{strategy} N={n}", rows))
    if results["ceiling"]:
        lines.append(line(f"ceiling N={results['ceiling'][0]['n_train']}", results["ceiling"]))
    lines.append("forget = change of NCEDC F1 (mean of P and S at 0.5 s, points) vs baseline, thresholds from the target dev split")
    for (strategy, n), rows in sorted(groups.items()):
        if strategy == "pseudo-full" and ("full", n) in groups:
            f1 = lambda rs: np.mean([np.mean([r[c] for c in cols]) for r in rs])  # noqa: E731
            sup, pse, b = f1(groups[("full", n)]), f1(rows), np.mean([base[c] for c in cols])
            share = (pse - b) / (sup - b) if abs(sup - b) > 1e-9 else float("nan")
            lines.append(f"pseudo-labels at N={n} recover {share:.0%} of the supervised gain (mean F1 {pse:.3f} vs supervised {sup:.3f}, baseline {b:.3f})")
    if "distill" in results:
        d = results["distill"]
        t, s = d["teacher"], d["student"]
        f1 = lambda r: np.mean([r[c] for c in cols])  # noqa: E731
        lines += [
            "",
            f"distilled student: {d['parameters']['student']} parameters (teacher {d['parameters']['teacher']}); "
            f"windows/s student {d['windows_per_s']['student']:.0f} vs teacher {d['windows_per_s']['teacher']:.0f} "
            f"({d['windows_per_s']['student'] / d['windows_per_s']['teacher']:.1f}x on CPU, {d['windows_per_s']['threads']} thread); label weight {d.get('label_weight', 0)}",
            f"  mean F1 student {f1(s):.3f} vs teacher {f1(t):.3f} ({100 * (f1(s) - f1(t)):+.1f} points); "
            f"lowest SNR bin recall P {s['P_R<5dB']:.3f} vs {t['P_R<5dB']:.3f}, S {s['S_R<5dB']:.3f} vs {t['S_R<5dB']:.3f}",
        ]
    return "\n".join(lines)


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, ("P_F1@0.1", "S_F1@0.1")):
        strategies = sorted({r["strategy"] for r in results["runs"]})
        for strategy in strategies:
            ns = sorted({r["n"] for r in results["runs"] if r["strategy"] == strategy})
            vals = [[r[key] for r in results["runs"] if r["strategy"] == strategy and r["n"] == n] for n in ns]
            ax.errorbar(ns, [np.mean(v) for v in vals], yerr=[(max(v) - min(v)) / 2 for v in vals], marker="o", capsize=3, label=strategy)
        ax.axhline(results["baseline"][key], color="k", ls="--", label="California baseline")
        if results["ceiling"]:
            ax.axhline(np.mean([r[key] for r in results["ceiling"]]), color="k", ls=":", label=f"ceiling (N={results['ceiling'][0]['n_train']})")
        ax.set_xscale("log")
        ax.set_xlabel("target training examples N")
        ax.set_ylabel(f"{key} (test)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
