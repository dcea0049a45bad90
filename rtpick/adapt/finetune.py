"""Fine-tune a SeisBench picker on target-region data.

Strategies (see :func:`plan`):

``full``            every layer trains at one learning rate;
``frozen-encoder``  the encoder (stem and every down-sampling block) is frozen, the decoder trains;
``frozen-k``        the first ``k`` blocks (counted from the input) are frozen;
``discriminative``  every block trains, the learning rate shrinks by ``lr_decay`` per block towards the input.

Frozen blocks also keep their batch-norm statistics (they stay in eval mode), so
a frozen block is bit-for-bit unchanged after training. By default every
batch-norm layer keeps the source model's statistics (``bn_stats="frozen"``):
with a few hundred target examples, letting them drift made the dev loss worse
after the first epoch and early stopping returned the untouched source model. Augmentation is the
SeisBench ``generate`` pipeline: a window around a random pick, a random
3001-sample crop (random shift), real target-region noise injection, random
per-component gain, and Gaussian pick labels in the model's label order.
Early stopping watches the loss on fixed dev windows; the best state is kept.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from rtpick.adapt.datasets import P_COL, S_COL, TraceSet
from rtpick.adapt.evaluate import device_of, window_starts

STRATEGIES = ("full", "frozen-encoder", "frozen-k", "discriminative")


@dataclass
class FinetuneConfig:
    strategy: str = "full"
    freeze_k: int = 3
    lr: float = 5e-4
    lr_decay: float = 0.5
    epochs: int = 20
    batch_size: int = 32
    min_examples_per_epoch: int = 256
    patience: int = 4
    sigma: int = 10
    noise_prob: float = 0.5
    noise_scale: tuple[float, float] = (0.0, 0.5)
    gain_range: tuple[float, float] = (0.7, 1.4)
    bn_stats: str = "frozen"  # "frozen": batch norm keeps the source statistics (stable with few examples); "train": adapts them
    seed: int = 0
    progress: bool = True
    extra: dict = field(default_factory=dict)


def blocks(model: nn.Module) -> tuple[list[tuple[str, list[nn.Module]]], int]:
    """Parameter blocks from input to output, and how many of them form the encoder."""
    if hasattr(model, "down_branch") and hasattr(model, "up_branch"):
        out = [("stem", [model.inc, model.in_bn])]
        out += [(f"down_branch.{i}", [m]) for i, m in enumerate(model.down_branch)]
        n_enc = len(out)
        out += [(f"up_branch.{i}", [m]) for i, m in enumerate(model.up_branch)]
        out += [("out", [model.out])]
        return out, n_enc
    out = []
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList):
            out += [(f"{name}.{i}", [m]) for i, m in enumerate(child) if any(True for _ in m.parameters())]
        elif any(True for _ in child.parameters()):
            out.append((name, [child]))
    return out, len(out) // 2


def plan(model: nn.Module, cfg: FinetuneConfig) -> tuple[list[dict], list[nn.Module], list[str]]:
    """Optimizer parameter groups, the frozen modules and their block names for ``cfg.strategy``."""
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {cfg.strategy!r}; choose one of {', '.join(STRATEGIES)}")
    blist, n_enc = blocks(model)
    n_frozen = {"full": 0, "discriminative": 0, "frozen-encoder": n_enc, "frozen-k": cfg.freeze_k}[cfg.strategy]
    if n_frozen >= len(blist):
        raise ValueError(f"cannot freeze {n_frozen} of {len(blist)} blocks: nothing would train")
    groups, frozen, frozen_names = [], [], []
    for i, (name, modules) in enumerate(blist):
        params = [p for m in modules for p in m.parameters()]
        if i < n_frozen:
            frozen += modules
            frozen_names.append(name)
            for p in params:
                p.requires_grad_(False)
            continue
        for p in params:
            p.requires_grad_(True)
        lr = cfg.lr * (cfg.lr_decay ** (len(blist) - 1 - i) if cfg.strategy == "discriminative" else 1.0)
        groups.append({"params": params, "lr": lr, "name": name})
    return groups, frozen, frozen_names


class RandomGain:
    """SeisBench-style augmentation: multiply each component by a random gain (instrument gain mismatch)."""

    def __init__(self, low: float, high: float, key: str = "X"):
        self.low, self.high, self.key = low, high, key

    def __call__(self, state_dict):
        x, meta = state_dict[self.key]
        gain = np.exp(np.random.uniform(np.log(self.low), np.log(self.high), size=(x.shape[0], 1)))
        state_dict[self.key] = (x * gain, meta)


def generator(model, train: TraceSet, cfg: FinetuneConfig, noise: TraceSet | None):
    """The SeisBench generate pipeline for ``train``."""
    import seisbench.generate as sbg

    window = int(model.in_samples)
    augs = [
        sbg.WindowAroundSample([P_COL, S_COL], samples_before=window, windowlen=2 * window, selection="random", strategy="variable"),
        sbg.RandomWindow(windowlen=window, strategy="pad"),
    ]
    if noise is not None and len(noise) and cfg.noise_prob > 0:
        real = sbg.RealNoise(noise, scale=cfg.noise_scale, scaling_type="peak")
        augs.append(sbg.OneOf([real, sbg.NullAugmentation()], [cfg.noise_prob, 1 - cfg.noise_prob]))
    if cfg.gain_range != (1.0, 1.0):
        augs.append(RandomGain(*cfg.gain_range))
    augs += [
        sbg.ChangeDtype(np.float32),
        sbg.ProbabilisticLabeller(label_columns={P_COL: "P", S_COL: "S"}, model_labels=model.labels, sigma=cfg.sigma, dim=0),
    ]
    gen = sbg.GenericGenerator(train)
    gen.add_augmentations(augs)
    return gen


def fixed_windows(model, ts: TraceSet, sigma: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic dev windows (as in evaluation) and their Gaussian labels."""
    window = int(model.in_samples)
    starts = window_starts(ts, window)
    x = np.stack([ts.waveforms[i, :, s : s + window] for i, s in enumerate(starts)]).astype(np.float32)
    y = np.zeros((len(ts), len(model.labels), window), np.float32)
    t = np.arange(window)
    labels = list(model.labels)
    for ph, col in (("P", P_COL), ("S", S_COL)):
        lab = ts.metadata[col].to_numpy(float) - starts
        for i, v in enumerate(lab):
            if np.isfinite(v) and 0 <= v < window:
                y[i, labels.index(ph)] = np.exp(-((t - v) ** 2) / (2 * sigma**2))
    noise_idx = [i for i, lab in enumerate(labels) if lab.upper() == "N"]
    if noise_idx:
        others = [i for i in range(len(labels)) if i not in noise_idx]
        y[:, noise_idx[0]] = np.clip(1 - y[:, others].sum(axis=1), 0, 1)
    return torch.from_numpy(x), torch.from_numpy(y)


def pick_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Cross-entropy of softmax outputs against soft labels (SeisBench's PhaseNet training loss)."""
    return -(target * torch.log(pred + eps)).sum(dim=1).mean()


def _dev_loss(model, x: torch.Tensor, y: torch.Tensor, batch: int = 64) -> float:
    model.eval()
    device = device_of(model)
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = model.annotate_batch_pre(x[i : i + batch].clone(), {}).to(device)
            total += pick_loss(model(xb), y[i : i + batch].to(device)).item() * len(xb)
    return total / max(1, len(x))


def seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


def finetune(model, train: TraceSet, dev: TraceSet, cfg: FinetuneConfig, noise: TraceSet | None = None) -> dict:
    """Train ``model`` in place on ``train`` with early stopping on ``dev``; returns the history."""
    from tqdm.auto import tqdm

    seed_everything(cfg.seed)
    device = device_of(model)
    groups, frozen, frozen_names = plan(model, cfg)
    opt = torch.optim.Adam(groups)
    gen = generator(model, train, cfg, noise)
    per_epoch = max(len(train), cfg.min_examples_per_epoch)
    sampler = torch.utils.data.RandomSampler(gen, replacement=True, num_samples=per_epoch, generator=torch.Generator().manual_seed(cfg.seed))
    loader = torch.utils.data.DataLoader(gen, batch_size=cfg.batch_size, sampler=sampler, num_workers=0)
    dev_x, dev_y = fixed_windows(model, dev, cfg.sigma)
    best = _dev_loss(model, dev_x, dev_y)
    best_state, best_epoch, bad = copy.deepcopy(model.state_dict()), 0, 0
    history = {"dev_loss": [best], "train_loss": [math.nan], "frozen_blocks": frozen_names, "config": asdict(cfg)}
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"adapt[{cfg.strategy}]", disable=not cfg.progress, leave=False)
    for epoch in bar:
        model.train()
        for m in frozen:
            m.eval()  # frozen blocks keep their batch-norm statistics
        if cfg.bn_stats == "frozen":
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        losses = []
        for batch in loader:
            x = model.annotate_batch_pre(batch["X"], {}).to(device)
            loss = pick_loss(model(x), batch["y"].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        dev_loss = _dev_loss(model, dev_x, dev_y)
        history["train_loss"].append(float(np.mean(losses)))
        history["dev_loss"].append(dev_loss)
        bar.set_postfix(train=f"{np.mean(losses):.4f}", dev=f"{dev_loss:.4f}")
        if dev_loss < best - 1e-5:
            best, best_state, best_epoch, bad = dev_loss, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    history["best_epoch"] = best_epoch
    history["best_dev_loss"] = best
    return history
