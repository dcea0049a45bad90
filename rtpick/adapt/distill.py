"""Distil a teacher picker into a :class:`~rtpick.adapt.student.TinyPhaseNet` on unlabelled target data.

The student learns the teacher's probability traces (soft cross-entropy) on
random windows of unlabelled traces; no labels are used. Early stopping on the
same loss over fixed dev windows. :func:`windows_per_second` measures CPU
throughput of teacher and student in the same process, same batch and threads.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from rtpick.adapt.datasets import TraceSet
from rtpick.adapt.evaluate import window_starts
from rtpick.adapt.finetune import RandomGain, pick_loss, seed_everything
from rtpick.adapt.student import TinyPhaseNet, count_parameters


@dataclass
class DistillConfig:
    filters_root: int = 8
    depth: int = 4
    stem_stride: int = 4
    max_filters: int = 22
    kernel_size: int = 7
    separable: bool = False
    lr: float = 3e-3
    epochs: int = 30
    batch_size: int = 32
    min_examples_per_epoch: int = 512
    patience: int = 5
    seed: int = 0
    progress: bool = True


def make_student(teacher, cfg: DistillConfig) -> TinyPhaseNet:
    return TinyPhaseNet(
        in_channels=getattr(teacher, "in_channels", 3), classes=getattr(teacher, "classes", 3), phases=teacher.labels,
        sampling_rate=teacher.sampling_rate, norm=getattr(teacher, "norm", "std"), filters_root=cfg.filters_root,
        depth=cfg.depth, kernel_size=cfg.kernel_size, separable=cfg.separable, max_filters=cfg.max_filters,
        stem_stride=cfg.stem_stride,
    )


def _fixed(teacher, ts: TraceSet) -> torch.Tensor:
    window = int(teacher.in_samples)
    starts = window_starts(ts, window)
    x = np.stack([ts.waveforms[i, :, s : s + window] for i, s in enumerate(starts)]).astype(np.float32)
    return teacher.annotate_batch_pre(torch.from_numpy(x), {})


@torch.no_grad()
def _soft_loss(student, teacher, x: torch.Tensor, batch: int = 64) -> float:
    student.eval()
    total = 0.0
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        total += pick_loss(student(xb), teacher(xb)).item() * len(xb)
    return total / max(1, len(x))


def distill(teacher, unlabelled: TraceSet, dev: TraceSet, cfg: DistillConfig) -> tuple[TinyPhaseNet, dict]:
    """Train a student on the teacher's outputs; returns the student (best dev state) and the history."""
    import seisbench.generate as sbg
    from tqdm.auto import tqdm

    seed_everything(cfg.seed)
    teacher.eval()
    student = make_student(teacher, cfg)
    gen = sbg.GenericGenerator(unlabelled)
    gen.add_augmentations([sbg.RandomWindow(windowlen=int(teacher.in_samples), strategy="pad"), RandomGain(0.7, 1.4), sbg.ChangeDtype(np.float32)])
    sampler = torch.utils.data.RandomSampler(gen, replacement=True, num_samples=max(len(unlabelled), cfg.min_examples_per_epoch), generator=torch.Generator().manual_seed(cfg.seed))
    loader = torch.utils.data.DataLoader(gen, batch_size=cfg.batch_size, sampler=sampler, num_workers=0)
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    dev_x = _fixed(teacher, dev)
    best, best_state, best_epoch, bad = float("inf"), None, 0, 0
    history = {"dev_loss": [], "train_loss": [], "config": asdict(cfg)}
    for epoch in tqdm(range(1, cfg.epochs + 1), desc="distill", disable=not cfg.progress, leave=False):
        student.train()
        losses = []
        for batch in loader:
            x = teacher.annotate_batch_pre(batch["X"], {})
            with torch.no_grad():
                target = teacher(x)
            loss = pick_loss(student(x), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
        dev_loss = _soft_loss(student, teacher, dev_x)
        history["train_loss"].append(float(np.mean(losses)))
        history["dev_loss"].append(dev_loss)
        if dev_loss < best - 1e-5:
            best, best_state, best_epoch, bad = dev_loss, copy.deepcopy(student.state_dict()), epoch, 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        student.load_state_dict(best_state)
    student.eval()
    history.update(best_epoch=best_epoch, best_dev_loss=best, parameters=count_parameters(student))
    return student, history


@torch.no_grad()
def windows_per_second(model, n_windows: int = 256, batch_size: int = 64, repeats: int = 3, seed: int = 0) -> float:
    """CPU inference throughput (normalisation + forward) on random windows; best of ``repeats``."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_windows, getattr(model, "in_channels", 3), int(model.in_samples), generator=gen)
    model(model.annotate_batch_pre(x[:batch_size], {}))  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, n_windows, batch_size):
            model(model.annotate_batch_pre(x[i : i + batch_size], {}))
        best = min(best, time.perf_counter() - t0)
    return n_windows / best
