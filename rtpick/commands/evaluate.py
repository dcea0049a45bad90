"""``rtpick evaluate``: P/S precision, recall, F1, residuals, recall by SNR and magnitude; JSON + PNG plots."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", required=True, metavar="[NAME=]SPEC", help="model spec, repeatable (side by side); NAME= labels it")
    from rtpick.commands.dataset import add_source_arguments

    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="SeisBench dataset folder or .npz")
    data.add_argument("--catalog", help="score on the picks of a QuakeML / SeisComP XML catalogue directly (with --sds/--mseed/--fdsn and --inventory); every trace is used, thresholds default to the model's")
    add_source_arguments(parser)
    parser.add_argument("--split", default="test", help="split to evaluate ('all' for every trace; default test)")
    parser.add_argument("--thresholds", default="dev", help="'dev' (best F1 on the dev split), 'model' (the weights' default_args), or a number")
    parser.add_argument("--out", required=True, help="output folder: report.json, residuals.png, recall_vs_snr.png (with --catalog also the built data in OUT/catalog_data)")


def run(args: argparse.Namespace) -> int:
    from rtpick.adapt import evaluate as ev
    from rtpick.adapt.datasets import DatasetError, load_dataset, validate
    from rtpick.adapt.models import load_picker
    from rtpick.inference.models import ModelError

    try:
        models = {}
        for item in args.model:
            name, _, spec = item.partition("=") if "=" in item and not item.startswith(("seisbench:", "file:")) else ("", "", item)
            models[name or spec] = load_picker(spec)
        if args.catalog:
            args.data, args.split = _catalog_data(args), "all"
            args.thresholds = "model" if args.thresholds == "dev" else args.thresholds
        ts = load_dataset(args.data)
        first = next(iter(models.values()))
        validate(ts, float(first.sampling_rate), int(first.in_samples), splits=() if args.split == "all" else (args.split,))
        test = ts if args.split == "all" else ts.split(args.split)
        thresholds = {}
        dev = None
        for name, model in models.items():
            if args.thresholds == "dev":
                dev = dev or ts.split("dev")
                thresholds[name] = ev.best_thresholds(ev.predict_peaks(model, dev))
            elif args.thresholds == "model":
                thresholds[name] = {ph: float(model.default_args.get(f"{ph}_threshold", 0.3)) for ph in ("P", "S")}
            else:
                thresholds[name] = {"P": float(args.thresholds), "S": float(args.thresholds)}
    except (DatasetError, ModelError, OSError, ValueError) as exc:
        print(f"rtpick evaluate: {exc}", file=sys.stderr)
        return 2
    report = ev.evaluate_models(models, test, thresholds=thresholds)
    report["split"] = args.split
    path = ev.write_report(report, f"{args.out}/report.json")
    plots = ev.plot_report(report, args.out)
    header = ["model", "P_F1@0.1", "P_F1@0.5", "S_F1@0.1", "S_F1@0.5", "P_R<5dB", "S_R<5dB", "P_std_s", "S_std_s"]
    print(" ".join(f"{h:>10}" for h in header))
    for name, m in report["models"].items():
        row = ev.summary_row(m)
        print(f"{name[-10:]:>10} " + " ".join(f"{row[h]:10.3f}" for h in header[1:]))
    print(f"report: {path}; plots: {', '.join(str(p) for p in plots)}")
    return 0


def _catalog_data(args: argparse.Namespace) -> str:
    """Build the catalogue's traces (no noise traces, all in one split) into OUT/catalog_data; prints the build summary."""
    from rtpick.adapt.archive import open_source
    from rtpick.adapt.build import BuildConfig, build, load_station_info, summary
    from rtpick.adapt.catalog import read_catalog

    source = open_source(args.sds, args.mseed, args.fdsn)
    stations, inventory = load_station_info(args.inventory)
    events, picks, tally = read_catalog(args.catalog, manual_only=args.manual_only)
    out = f"{args.out}/catalog_data"
    report = build(out, source, events, picks, BuildConfig(noise_fraction=0.0, split=(0.0, 0.0, 1.0)), tally=tally, stations=stations,
                   inventory=inventory, provenance={"catalog": args.catalog, "inventory": args.inventory or ""})
    print(f"{out}: {summary(report)}")
    if not report["traces"]["earthquake"]:
        raise ValueError(f"{args.catalog}: no usable pick (see {out}/build_report.json)")
    return out

