"""Small building blocks of the stacked hourglass network: convolutions, norms, residual units.

Normalisation defaults to instance norm (paper: "instance normalization layers for approximate
contrast invariance"), built with ``affine=True`` and ``track_running_stats=False``:

* ``affine=True``: in a pre-activation unit every ReLU follows a norm; without a learned
  per-channel shift the ReLU would always cut at the per-image channel mean.
* ``track_running_stats=False``: every image is normalised by its own statistics in training
  *and* evaluation, so inference behaves exactly as training (no running averages estimated from
  batches of 2) and no buffers need syncing under DDP.

Instance norm needs more than one spatial element per channel, so the smallest feature map of a
network (the bottom of the hourglass) must be at least 2x2 (checked by the network).
"""

from __future__ import annotations

from torch import Tensor, nn

from lightning_modules.inference_ops import add_residual
from lightning_modules.instance_norm import InstanceNorm2d, norm_relu

NORMS = ("instance", "batch", "group", "none")


def conv1x1(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    """1x1 convolution, stride 1."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    """3x3 convolution with padding 1 (same size at stride 1)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=bias)


def make_norm(name: str, channels: int) -> nn.Module:
    """Normalisation layer by name: ``instance`` (default of the network), ``batch``, ``group``
    (32 groups, or fewer when ``channels`` is not divisible), ``none``."""
    if name == "instance":
        return InstanceNorm2d(channels)  # nn.InstanceNorm2d, cheaper at inference
    if name == "batch":
        return nn.BatchNorm2d(channels)
    if name == "group":
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if name == "none":
        return nn.Identity()
    raise ValueError(f"blocks.py: unknown norm {name!r}; choose one of {NORMS}")


class NormReLUConv(nn.Sequential):
    """Pre-activation convolution: norm -> ReLU -> conv (kernel 1 or 3, stride 1)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, norm: str, bias: bool
    ) -> None:
        if kernel_size not in (1, 3):
            raise ValueError(f"blocks.py: kernel_size must be 1 or 3, got {kernel_size}")
        conv = conv1x1 if kernel_size == 1 else conv3x3
        super().__init__(
            make_norm(norm, in_channels),
            nn.ReLU(inplace=False),
            conv(in_channels, out_channels, bias=bias),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self[2](norm_relu(self[0], x))


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck residual unit (He et al. 2016, "identity mappings").

    ``y = skip(x) + conv1x1(nr(conv3x3(nr(conv1x1(nr(x))))))`` with ``nr`` = norm -> ReLU; the
    inner width is ``out_channels // 2`` (Newell et al. 2016); ``skip`` is the identity, or a 1x1
    projection when the channel counts differ. Only the last convolution has a bias: the others
    feed a norm directly, where a bias would be cancelled (and get no gradient).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        norm: normalisation name (see :func:`make_norm`).

    Example:
        >>> unit = PreActBottleneck(64, 128)
        >>> unit(torch.zeros(2, 64, 32, 32)).shape
        torch.Size([2, 128, 32, 32])
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "instance") -> None:
        super().__init__()
        mid = max(out_channels // 2, 1)
        self.reduce = NormReLUConv(in_channels, mid, 1, norm, bias=False)
        self.spatial = NormReLUConv(mid, mid, 3, norm, bias=False)
        self.expand = NormReLUConv(mid, out_channels, 1, norm, bias=True)
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else conv1x1(in_channels, out_channels, bias=False)
        )

    @property
    def last_conv(self) -> nn.Conv2d:
        """The unit's final (expanding) 1x1 convolution."""
        return self.expand[2]

    def forward(self, x: Tensor) -> Tensor:
        return add_residual(self.expand(self.spatial(self.reduce(x))), self.skip(x))
