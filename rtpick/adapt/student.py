"""A small PhaseNet-style student for distillation: fewer filters and levels, depthwise-separable convs.

It is a SeisBench ``WaveformModel`` (a ``PhaseNet`` subclass that only replaces
the layers), so ``annotate``/``classify``, the normalisation hook and
``save``/``load`` are SeisBench's own: ``TinyPhaseNet.load(path)`` reads what
``model.save(path)`` wrote. The sidecar written by :mod:`rtpick.adapt.models`
names the class as ``rtpick.adapt.student.TinyPhaseNet``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from seisbench.models import PhaseNet
from seisbench.models.base import WaveformModel
from torch import nn


class _SepConv(nn.Module):
    """Depthwise (per-channel, ``kernel``) then pointwise (1×1) convolution; plain conv if not separable."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, separable: bool = True):
        super().__init__()
        pad = kernel // 2
        if separable:
            self.conv = nn.Sequential(
                nn.Conv1d(c_in, c_in, kernel, stride, padding=pad, groups=c_in, bias=False),
                nn.Conv1d(c_in, c_out, 1, bias=False),
            )
        else:
            self.conv = nn.Conv1d(c_in, c_out, kernel, stride, padding=pad, bias=False)
        self.bn = nn.BatchNorm1d(c_out, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class TinyPhaseNet(PhaseNet):
    """U-Net picker: a strided stem, ``depth`` levels of ``filters_root``·2^i filters, stride ``stride``."""

    def __init__(
        self,
        in_channels: int = 3,
        classes: int = 3,
        phases: str = "NPS",
        sampling_rate: float = 100,
        norm: str = "std",
        filters_root: int = 4,
        depth: int = 4,
        kernel_size: int = 7,
        stride: int = 4,
        separable: bool = True,
        max_filters: int = 32,
        stem_stride: int = 2,
        **kwargs,
    ):
        self.norm_amp_per_comp = kwargs.pop("norm_amp_per_comp", False)
        self.norm_detrend = kwargs.pop("norm_detrend", False)
        WaveformModel.__init__(
            self,
            citation="rtpick TinyPhaseNet student, distilled from a PhaseNet teacher (Zhu & Beroza, 2019 architecture).",
            in_samples=3001,
            output_type="array",
            pred_sample=(0, 3001),
            labels=phases,
            sampling_rate=sampling_rate,
            **kwargs,
        )
        self.in_channels, self.classes, self.norm = in_channels, classes, norm
        self.filters_root, self.depth, self.kernel_size, self.stride = filters_root, depth, kernel_size, stride
        self.separable, self.max_filters, self.stem_stride = separable, max_filters, stem_stride
        self.activation = torch.relu

        widths = [min(filters_root * 2**i, max_filters) for i in range(depth)]
        # A strided stem: the U-Net runs at 1/stem_stride of the sampling rate and the output is
        # interpolated back; full-resolution layers are what dominates CPU time in PhaseNet.
        self.inc = nn.Conv1d(in_channels, widths[0], kernel_size, stride=stem_stride, padding=kernel_size // 2)
        self.in_bn = nn.BatchNorm1d(widths[0], eps=1e-3)
        self.down_branch = nn.ModuleList()
        for i in range(1, depth):
            self.down_branch.append(_SepConv(widths[i - 1], widths[i], kernel_size, stride, separable))
        self.up_branch = nn.ModuleList()
        for i in range(depth - 1, 0, -1):
            up = nn.ConvTranspose1d(widths[i], widths[i - 1], stride, stride, bias=False)
            self.up_branch.append(nn.ModuleList([up, nn.BatchNorm1d(widths[i - 1], eps=1e-3), _SepConv(2 * widths[i - 1], widths[i - 1], kernel_size, 1, separable)]))
        self.out = nn.Conv1d(widths[0], classes, 1)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor, logits: bool = False) -> torch.Tensor:
        n_samples = x.shape[-1]
        x = torch.relu(self.in_bn(self.inc(x)))
        skips = []
        for block in self.down_branch:
            skips.append(x)
            x = block(x)
        for (up, bn, conv), skip in zip(self.up_branch, reversed(skips)):
            x = torch.relu(bn(up(x)))
            if x.shape[-1] < skip.shape[-1]:
                x = F.pad(x, (0, skip.shape[-1] - x.shape[-1]))
            x = conv(torch.cat([skip, x[..., : skip.shape[-1]]], dim=1))
        x = self.out(x)
        if self.stem_stride > 1:
            x = F.interpolate(x, size=n_samples, mode="linear", align_corners=False)
        return x if logits else self.softmax(x)

    def get_model_args(self) -> dict:
        args = super().get_model_args()
        args.update(
            filters_root=self.filters_root, depth=self.depth, kernel_size=self.kernel_size, stride=self.stride,
            separable=self.separable, max_filters=self.max_filters, stem_stride=self.stem_stride,
        )
        return args


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))
