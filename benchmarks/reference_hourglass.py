"""The original stacked hourglass (Newell et al. 2016, princeton-vl ``pytorch_stacked_hourglass``),
re-written plainly as the per-FLOP speed reference of the benchmarks.

Same layout as princeton-vl's ``PoseNet``: a 7x7/2 conv + BatchNorm + ReLU, residual units and a
max-pool down to S/4, then ``nstack`` hourglasses of depth 4 at width ``inp_dim``, each followed by
a residual unit, a 1x1 conv + BatchNorm + ReLU, a 1x1 prediction conv, and (between hourglasses)
1x1 "merge" convs of features and predictions added to the input. Residual units are
pre-activation bottlenecks (BN -> ReLU -> conv 1x1 / 3x3 / 1x1, all convs with bias, width
``out/2``), up-sampling is nearest-neighbour. Only the benchmarks use it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Conv(nn.Module):
    """conv (bias) -> optional BatchNorm -> optional ReLU, "same" padding."""

    def __init__(self, inp: int, out: int, kernel: int = 3, stride: int = 1, bn: bool = False,
                 relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(inp, out, kernel, stride, padding=(kernel - 1) // 2, bias=True)
        self.bn = nn.BatchNorm2d(out) if bn else None
        self.relu = nn.ReLU() if relu else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.relu(x) if self.relu is not None else x


class Residual(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1, + skip."""

    def __init__(self, inp: int, out: int) -> None:
        super().__init__()
        mid = out // 2
        self.relu = nn.ReLU()
        self.bn1 = nn.BatchNorm2d(inp)
        self.conv1 = Conv(inp, mid, 1, relu=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = Conv(mid, mid, 3, relu=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = Conv(mid, out, 1, relu=False)
        self.skip = Conv(inp, out, 1, relu=False) if inp != out else None

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.skip is None else self.skip(x)
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + residual


class Hourglass(nn.Module):
    """``up1(x) + upsample(low3(low2(low1(pool(x)))))``, ``low2`` recursive down to depth 1."""

    def __init__(self, n: int, f: int) -> None:
        super().__init__()
        self.up1 = Residual(f, f)
        self.pool = nn.MaxPool2d(2, 2)
        self.low1 = Residual(f, f)
        self.low2 = Hourglass(n - 1, f) if n > 1 else Residual(f, f)
        self.low3 = Residual(f, f)
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: Tensor) -> Tensor:
        return self.up1(x) + self.up2(self.low3(self.low2(self.low1(self.pool(x)))))


class PoseNet(nn.Module):
    """princeton-vl's network: ``(B, in_channels, S, S)`` -> ``(B, nstack, oup, S/4, S/4)``."""

    def __init__(self, nstack: int = 4, inp_dim: int = 256, oup_dim: int = 16,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.pre = nn.Sequential(
            Conv(in_channels, 64, 7, 2, bn=True, relu=True),
            Residual(64, 128),
            nn.MaxPool2d(2, 2),
            Residual(128, 128),
            Residual(128, inp_dim),
        )
        self.hgs = nn.ModuleList(Hourglass(4, inp_dim) for _ in range(nstack))
        self.features = nn.ModuleList(
            nn.Sequential(Residual(inp_dim, inp_dim), Conv(inp_dim, inp_dim, 1, bn=True))
            for _ in range(nstack)
        )
        self.outs = nn.ModuleList(Conv(inp_dim, oup_dim, 1, relu=False) for _ in range(nstack))
        self.merge_features = nn.ModuleList(
            Conv(inp_dim, inp_dim, 1, relu=False) for _ in range(nstack - 1))
        self.merge_preds = nn.ModuleList(
            Conv(oup_dim, inp_dim, 1, relu=False) for _ in range(nstack - 1))
        self.nstack = nstack

    def forward(self, imgs: Tensor) -> Tensor:
        x = self.pre(imgs)
        preds = []
        for i in range(self.nstack):
            feature = self.features[i](self.hgs[i](x))
            preds.append(self.outs[i](feature))
            if i < self.nstack - 1:
                x = x + self.merge_preds[i](preds[-1]) + self.merge_features[i](feature)
        return torch.stack(preds, 1)
