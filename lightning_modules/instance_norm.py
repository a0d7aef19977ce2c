"""Instance norm with a cheaper inference path, beside the network (the network only names it).

:class:`InstanceNorm2d` is ``nn.InstanceNorm2d`` (same parameters and state-dict keys). With
autograd recording, or during ONNX export, it runs PyTorch's own kernel, so training and the
exported graph are unchanged. At inference (no autograd) :func:`norm_relu` normalises and applies
the following ReLU in place: pairwise sums for the mean and for the variance of a centred copy,
then ``relu(x_c * scale + bias)`` written into that copy: PyTorch's formula
(``scale = weight / sqrt(var + eps)``) without its reshape, weight repeat and extra outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.inference_ops import plain_ops


class InstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d(channels, affine=True)`` with the inference path of this module."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, affine=True, track_running_stats=False)

    def forward(self, x: Tensor) -> Tensor:
        if plain_ops():
            return super().forward(x)
        return _normalise_(x, self.weight, self.bias, self.eps, relu=False)


def _normalise_(x: Tensor, weight: Tensor, bias: Tensor, eps: float, relu: bool) -> Tensor:
    """Per-image, per-channel normalisation of ``(B, C, H, W)`` into a new tensor (no autograd)."""
    n = x.shape[2] * x.shape[3]
    xc = x - x.sum(dim=(2, 3), keepdim=True) / n
    var = xc.square().sum(dim=(2, 3), keepdim=True) / n  # (linalg.vector_norm: 8x less exact)
    scale = torch.rsqrt(var.add_(eps)).mul_(weight.view(1, -1, 1, 1))
    out = torch.addcmul(bias.view(1, -1, 1, 1), xc, scale, out=xc)
    return out.relu_() if relu else out


def norm_relu(norm: nn.Module, x: Tensor) -> Tensor:
    """``relu(norm(x))``; one fused pass less for :class:`InstanceNorm2d` at inference."""
    if isinstance(norm, InstanceNorm2d) and not plain_ops():
        return _normalise_(x, norm.weight, norm.bias, norm.eps, relu=True)
    return F.relu(norm(x))
