"""Instance norm computed as group norm with one group per channel (same values and gradients).

:class:`InstanceNorm2d` is ``nn.InstanceNorm2d`` (same parameters and state-dict keys).
``F.instance_norm`` reshapes ``(B, C, H, W)`` to ``(1, B*C, H, W)``, repeats the weights B times
and runs the batch-norm kernel; ``F.group_norm`` with ``C`` groups normalises the same
``(b, c)`` planes with ATen's one-pass kernel and needs neither. Measured on 2 CPU threads
(forward + backward, paper-network shapes): 1.5-2.3x faster per layer; the paper network's
training step 6 % faster, its inference 9 % faster than with the former hand-fused inference
path. Under ONNX export the module runs ``nn.InstanceNorm2d`` (ONNX ``InstanceNormalization``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class InstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d(channels, affine=True)``, evaluated by :func:`F.group_norm`."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, affine=True, track_running_stats=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or torch.onnx.is_in_onnx_export():
            return super().forward(x)
        return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)


def norm_relu(norm: nn.Module, x: Tensor) -> Tensor:
    """``relu(norm(x))``, the ReLU in place on the norm's fresh output (group norm's backward
    reads its input, not its output, so autograd allows it)."""
    y = norm(x)
    return F.relu(y, inplace=isinstance(norm, InstanceNorm2d))
