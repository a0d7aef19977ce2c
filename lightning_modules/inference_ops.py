"""Inference versions of the network's memory-bound steps, beside the network.

At inference (no autograd recording, not exporting to ONNX) these run cheaper CPU kernels with the
same values: 2x2 max-pooling from strided slices, ``a + nearest-up2(b)`` as a broadcast add into
``a`` (~5-10x faster than PyTorch's NCHW pooling and nearest kernels at 64 px, measured), residual
sums written into a fresh operand, and the re-injection as one convolution. Otherwise the plain
ops run, so training, its gradients and the exported graph are those of the plain network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def plain_ops() -> bool:
    """True when the network must run PyTorch's plain ops: autograd recording (training and its
    gradients stay those of the plain ops) or ONNX export (standard ONNX operators)."""
    return torch.is_grad_enabled() or torch.onnx.is_in_onnx_export()


def max_pool2(x: Tensor) -> Tensor:
    """``F.max_pool2d(x, 2, 2)`` (even sides); same values."""
    if plain_ops():
        return F.max_pool2d(x, kernel_size=2, stride=2)
    top = torch.maximum(x[:, :, 0::2, 0::2], x[:, :, 0::2, 1::2])
    top = torch.maximum(top, x[:, :, 1::2, 0::2], out=top)
    return torch.maximum(top, x[:, :, 1::2, 1::2], out=top)


def add_upsampled_nearest(a: Tensor, low: Tensor) -> Tensor:
    """``a + F.interpolate(low, scale_factor=2, mode="nearest")`` (``a`` twice ``low``'s size);
    at inference the sum is written into ``a`` (pass a fresh tensor)."""
    if plain_ops():
        return a + F.interpolate(low, scale_factor=2.0, mode="nearest")
    b, c, h, w = low.shape
    a.view(b, c, h, 2, w, 2).add_(low[:, :, :, None, :, None])
    return a


def add_residual(fresh: Tensor, skip: Tensor) -> Tensor:
    """``skip + fresh``; at inference written into ``fresh`` (a tensor nothing else holds)."""
    return skip + fresh if plain_ops() else fresh.add_(skip)


def reinject(x: Tensor, f: Tensor, features: nn.Conv2d, coarse: list[Tensor],
             predictions: list[nn.Conv2d]) -> Tensor:
    """``x + features(f) + sum_t predictions[t](coarse[t])`` (1x1 convs); at inference one conv
    over the channel concatenation (same sum, in another order) instead of four full-size ones."""
    if plain_ops():
        out = x + features(f)
        for proj, c in zip(predictions, coarse, strict=True):
            out = out + proj(c)
        return out
    weight = torch.cat([features.weight, *(p.weight for p in predictions)], dim=1)
    return F.conv2d(torch.cat([f, *coarse], dim=1), weight, features.bias).add_(x)
