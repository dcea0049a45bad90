"""``rtpick adapt``: fine-tune a SeisBench picker on target-region data; writes weights + model card."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rtpick.adapt.finetune import STRATEGIES, FinetuneConfig

    d = FinetuneConfig()
    parser.add_argument("--model", default="seisbench:PhaseNet/original", help="source model spec (seisbench:<Class>/<name>, file:<base>, or an adapt output folder)")
    parser.add_argument("--data", required=True, help="SeisBench dataset folder or .npz with P/S picks")
    parser.add_argument("--out", required=True, help="output folder: model.pt, model.json (SeisBench sidecar), model_card.json")
    parser.add_argument("--strategy", choices=STRATEGIES, default=d.strategy, help="what trains (default: full)")
    parser.add_argument("--freeze-k", type=int, default=d.freeze_k, help="blocks frozen from the input for --strategy frozen-k")
    parser.add_argument("--lr", type=float, default=d.lr, help="learning rate (top block for discriminative)")
    parser.add_argument("--lr-decay", type=float, default=d.lr_decay, help="per-block learning-rate factor towards the input (discriminative)")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="maximum epochs")
    parser.add_argument("--patience", type=int, default=d.patience, help="early stopping: epochs without dev improvement")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--examples-per-epoch", type=int, default=d.min_examples_per_epoch, help="minimum examples drawn per epoch (small data sets are resampled)")
    parser.add_argument("--n-train", type=int, default=None, help="use about N training traces (whole events), for learning curves")
    parser.add_argument("--bn-stats", choices=["frozen", "train"], default=d.bn_stats, help="batch-norm statistics: keep the source model's (default; stable with few examples) or adapt them")
    parser.add_argument("--noise", default="data", choices=["data", "oklahoma", "ncedc", "none"], help="noise for injection: noise-only train traces of the data set, a bundled bank, or none")
    parser.add_argument("--split", default=None, help="re-split by event as train,dev,test fractions (default: use the data's split column, else 0.7,0.1,0.2)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from rtpick.adapt.datasets import DatasetError
    from rtpick.adapt.finetune import FinetuneConfig
    from rtpick.adapt.workflow import region_stanza, run_adapt

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = FinetuneConfig(
        strategy=args.strategy, freeze_k=args.freeze_k, bn_stats=args.bn_stats, lr=args.lr, lr_decay=args.lr_decay, epochs=args.epochs,
        patience=args.patience, batch_size=args.batch_size, min_examples_per_epoch=args.examples_per_epoch, seed=args.seed, progress=not args.no_progress,
    )
    split = tuple(float(v) for v in args.split.split(",")) if args.split else None
    try:
        card = run_adapt(args.model, args.data, args.out, cfg, n_train=args.n_train, subset_seed=args.seed, noise=args.noise, split_fractions=split)
    except (DatasetError, ValueError) as exc:
        print(f"rtpick adapt: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": args.out, "n_examples": card["n_examples"], "strategy": card["strategy"], "thresholds": card["thresholds"], "metrics": card["metrics"]}, indent=1))
    stanza = region_stanza(args.out, card)
    (Path(args.out) / "region.toml").write_text(stanza)
    print(f"\n# deploy: add this to the config (also in {args.out}/region.toml)\n{stanza}", end="")
    return 0
