"""One hourglass module (Newell et al. 2016): a recursive encoder-decoder of residual units."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_modules.blocks import PreActBottleneck
from lightning_modules.inference_ops import add_upsampled_nearest, max_pool2


class Hourglass(nn.Module):
    """Recursive hourglass of depth ``depth`` at constant width ``channels``.

    At every level: ``out = up(x) + upsample2(low3(inner(low1(maxpool2(x)))))`` where ``up``,
    ``low1``, ``low3`` are pre-activation bottleneck units, ``inner`` is the hourglass of depth
    ``depth - 1`` (a single unit at the bottom) and ``upsample2`` is nearest-neighbour. The input
    side must be divisible by ``2 ** depth``; the bottom works at ``side / 2 ** depth``.

    Args:
        depth: number of pooling levels (4 in the paper).
        channels: feature width ``C*``.
        norm: normalisation name (see :func:`lightning_modules.blocks.make_norm`).

    Example:
        >>> hg = Hourglass(depth=4, channels=256)
        >>> hg(torch.zeros(2, 256, 64, 64)).shape   # bottom at 4x4
        torch.Size([2, 256, 64, 64])
    """

    def __init__(self, depth: int, channels: int, norm: str = "instance") -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"hourglass.py: depth must be >= 1, got {depth}")
        self.depth = depth
        self.up = PreActBottleneck(channels, channels, norm)
        self.low1 = PreActBottleneck(channels, channels, norm)
        self.inner: nn.Module = (
            Hourglass(depth - 1, channels, norm)
            if depth > 1
            else PreActBottleneck(channels, channels, norm)
        )
        self.low3 = PreActBottleneck(channels, channels, norm)

    def forward(self, x: Tensor) -> Tensor:
        low = self.low3(self.inner(self.low1(max_pool2(x))))
        return add_upsampled_nearest(self.up(x), low)
