"""Bilinear upsampling with a fast exact adjoint, beside the network.

:func:`upsample_bilinear` has the values of ``F.interpolate(bilinear, align_corners=False)``; its
backward is one depthwise strided convolution (~5x faster than PyTorch's own on 2 CPU threads at
256 px, most of what GradNorm's per-task gradients cost there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _upsample_bilinear_adjoint(grad: Tensor, factor: int) -> Tensor:
    """Exact adjoint of bilinear upsampling (``align_corners=False``, even ``factor``).

    The clamped upsampling equals: replicate-pad the input by one sample per side, then the
    interior stencil (output ``j`` reads ``(j + 0.5) / factor - 0.5`` of the padded grid, never
    clamped). Its adjoint is therefore one depthwise strided convolution of the gradient with the
    separable ``2 * factor``-tap triangle ``1 - |(k + 0.5) / factor - 1|`` (giving the gradient
    of the padded input), then the adjoint of replicate padding: the ghost rows and columns are
    added onto the border ones.

    Shape: ``(B, C, factor * H, factor * W)`` -> ``(B, C, H, W)``.
    """
    channels = grad.shape[1]
    taps = torch.tensor(
        [1.0 - abs((k + 0.5) / factor - 1.0) for k in range(2 * factor)],
        dtype=grad.dtype,
        device=grad.device,
    )
    kernel = (taps[:, None] * taps[None, :]).expand(channels, 1, -1, -1)
    padded = F.conv2d(grad, kernel, stride=factor, padding=factor + factor // 2, groups=channels)
    padded[:, :, 1].add_(padded[:, :, 0])
    padded[:, :, -2].add_(padded[:, :, -1])
    padded[:, :, :, 1].add_(padded[:, :, :, 0])
    padded[:, :, :, -2].add_(padded[:, :, :, -1])
    return padded[:, :, 1:-1, 1:-1]


class _BilinearUpsample(torch.autograd.Function):
    """``F.interpolate(bilinear, align_corners=False)`` by an integer factor, with a fast adjoint.

    The forward is PyTorch's own; the backward is :func:`_upsample_bilinear_adjoint`, built from
    differentiable ops (double backward works), ~5x faster on 2 CPU threads than
    ``upsample_bilinear2d_backward`` for a ``(2, 16, 256, 256)`` gradient (measured).
    """

    @staticmethod
    def forward(ctx, x: Tensor, factor: int) -> Tensor:  # type: ignore[override]
        ctx.factor = factor
        ctx.set_materialize_grads(False)  # an unused output stays None: no zeros to propagate
        return F.interpolate(x, scale_factor=float(factor), mode="bilinear", align_corners=False)

    @staticmethod
    def backward(ctx, grad: Tensor | None) -> tuple[Tensor | None, None]:  # type: ignore[override]
        if grad is None:
            return None, None
        return _upsample_bilinear_adjoint(grad, ctx.factor), None


def upsample_bilinear(x: Tensor, factor: int) -> Tensor:
    """Bilinear upsampling of ``(B, C, H, W)`` by an even integer ``factor`` (or 1), same values
    as ``F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)``; plain
    ``F.interpolate`` when nothing needs a gradient or when exporting to ONNX.

    Shape: ``(B, C, H, W)`` -> ``(B, C, factor * H, factor * W)``.
    """
    if factor == 1:
        return x
    if factor < 2 or factor % 2 or x.ndim != 4:
        raise ValueError(
            f"fast_upsample.py: upsample_bilinear needs a (B, C, H, W) tensor and an even "
            f"factor, got shape {tuple(x.shape)} and factor {factor}"
        )
    if not x.requires_grad or torch.onnx.is_in_onnx_export():
        return F.interpolate(x, scale_factor=float(factor), mode="bilinear", align_corners=False)
    return _BilinearUpsample.apply(x, factor)
