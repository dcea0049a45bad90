"""``rtpick distill``: train a small student on a teacher's probabilities over unlabelled target data."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rtpick.adapt.distill import DistillConfig

    d = DistillConfig()
    parser.add_argument("--teacher", default="seisbench:PhaseNet/original", help="teacher model spec")
    parser.add_argument("--data", required=True, help="SeisBench folder or .npz; the train split trains (teacher probabilities + labels by --label-weight), dev/test for stopping and comparison")
    parser.add_argument("--out", required=True, help="output folder for the student (SeisBench format + model card)")
    parser.add_argument("--filters-root", type=int, default=d.filters_root)
    parser.add_argument("--depth", type=int, default=d.depth)
    parser.add_argument("--stem-stride", type=int, default=d.stem_stride, help="input down-sampling of the student (output is interpolated back)")
    parser.add_argument("--max-filters", type=int, default=d.max_filters)
    parser.add_argument("--separable", action="store_true", help="depthwise-separable convolutions")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--patience", type=int, default=d.patience)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--examples-per-epoch", type=int, default=d.min_examples_per_epoch, help="minimum windows drawn per epoch")
    parser.add_argument("--label-weight", type=float, default=d.label_weight, help="share of the loss on the data's pick labels (0 = teacher probabilities only, for unlabelled data; default 0.5)")
    parser.add_argument("--phase-weight", type=float, default=d.phase_weight, help="loss weight of the P/S channels against the noise channel (default 10)")
    parser.add_argument("--noise-prob", type=float, default=d.noise_prob, help="probability of injecting the data's noise traces into a window (default 0.5)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (speed is measured with these)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import torch

    from rtpick.adapt.datasets import DatasetError
    from rtpick.adapt.distill import DistillConfig
    from rtpick.adapt.workflow import run_distill

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = DistillConfig(
        filters_root=args.filters_root, depth=args.depth, stem_stride=args.stem_stride, max_filters=args.max_filters,
        separable=args.separable, epochs=args.epochs, patience=args.patience, lr=args.lr, min_examples_per_epoch=args.examples_per_epoch,
        label_weight=args.label_weight, phase_weight=args.phase_weight, noise_prob=args.noise_prob, seed=args.seed, progress=not args.no_progress,
    )
    try:
        card = run_distill(args.teacher, args.data, args.out, cfg)
    except (DatasetError, ValueError) as exc:
        print(f"rtpick distill: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: card[k] for k in ("parameters", "windows_per_s", "metrics")}, indent=1))
    return 0
