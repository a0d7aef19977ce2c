"""Multi-task stacked hourglass network (Kordon et al. 2019, Fig. 2; docs/ARCHITECTURE.md).

Layout for an ``S x S`` input (``S = 256`` in the paper; widths ``C_in, C1, C2, C*``)::

    stem:  conv7x7/2 (C_in->C1) -> norm -> ReLU -> unit(C1->C2)         at S/2  -> f_half
           maxpool/2 -> unit(C2->C2) -> unit(C2->C*)                      at S/4  -> x_0
    skips: conv3x3(image -> s) -> norm -> ReLU                            at S    -> k_full
           norm -> ReLU -> conv1x1(f_half -> s)                           at S/2  -> k_half
    hourglass l = 0..L-1 (all at S/4):
           h_l = Hourglass(x_l); f_l = unit(h_l)       <- f_l's unit = the LAST SHARED LAYER
           per task t: coarse_t = nrc1x1(C*->head) -> nrc1x1(head->C_t)         at S/4
                       r_t = nr(conv3x3([up2(coarse_t), k_half]))                  at S/2
                       out_t = up4(coarse_t)
                               + conv1x1(relu(up2(r_t) + conv1x1(k_full)))          at S
                       ([a, b] = channel concatenation, computed as two added convs)
           x_{l+1} = x_l + conv1x1(f_l) + sum_t conv1x1(coarse_t)   (re-injection, l < L-1)

``unit`` = pre-activation bottleneck, ``nr`` = norm -> ReLU, ``nrc1x1`` = norm -> ReLU -> 1x1
conv, ``up2``/``up4`` = bilinear upsampling.

Input sizes. ``S`` must be a multiple of ``4 * 2**depth``; with instance norm the hourglass bottom
(``S / (4 * 2**depth)``) must be at least 2x2, so depth 4 needs ``S >= 128`` (256 px: 4x4 bottom)
and 64 px inputs need ``depth <= 3`` (the tests use depth 2). Violations raise a ValueError.

Getting back to the input resolution. Targets are compared at ``S`` (heat-map sigma 6 px is
meant at 256 px), but all wide work stays at ``S/4``: each task head predicts a coarse ``C_t``
channel map at ``S/4`` (this is also what is re-injected), which is upsampled bilinearly to ``S``
and corrected by a light refinement: a 3x3 conv at ``S/2`` over the upsampled coarse map and a
narrow (``s = 16`` channel) skip of the stem, then at ``S`` a per-pixel one-hidden-layer mix
(ReLU of the upsampled refinement plus a 1x1 projection of a 16-channel 3x3 feature map of the
image), projected to ``C_t``. The skips are computed once and shared by all hourglasses; the
refinement is residual (``up4(coarse) + correction``), so the coarse map is a meaningful
low-resolution prediction. Cost per task and hourglass, paper setting, in MAC per image:
``(C_t + 16) * 16 * 9 * 128^2`` at S/2 (47/42/40 M for seg/lm/roi) plus
``(16 * 16 + 16 * C_t) * 256^2`` at S (21/19/18 M): ~0.37 GFLOP per hourglass, ~1.5 GFLOP for
four, against ~77 GFLOP for a single 256-channel 3x3 convolution at 256 px.

Paper configuration (``MultiTaskSHGN()``: C_in=1, C1=64, C2=128, C*=256, L=4, depth 4, tasks
seg 4 / lm 2 / roi 1, head width 128, skips/refinement 16): 12,991,720 parameters; one forward of
a 1x256x256 image costs ~31.7 GFLOP (``torch.utils.flop_counter``, 2 FLOP per multiply-add), a
training step of batch 2 ~189.9 GFLOP; per-hourglass GradNorm adds ~13.4 GFLOP (FLOP ratio
1.070; ``benchmarks/bench_step.py`` measures the time ratio).

GradNorm. ``shared_params(l)`` returns the weight of the final 1x1 convolution of hourglass
``l``'s last shared unit (``C*/2 -> C*``, 32,768 numbers in the paper setting). It is the last
parameterised operation before the task heads branch off, so ``grad_{W^l} L_t^l`` walks back only
through hourglass ``l``'s head ``t`` and one weight-gradient of a 1x1 convolution; taking the
whole unit instead would add a backward pass through three convolutions per task.

GradNorm taps. Each head feeds its coarse map to its output path through an alias
(``coarse.view_as(coarse)``) and to the re-injection through the map itself, so the gradient that
the network's backward of ``sum w_t^l L_t^l`` leaves at the alias is exactly
``w_t^l dL_t^l / d coarse_t^l``. ``SHGNOutput.gradnorm_taps`` hands the aliases to
``GradNorm.backward_fused``, which gets ``grad_{W^l} L_t^l`` from there through the coarse
predictor's two 1x1 layers only, during that one backward, instead of walking the refinement again.

Example:
    >>> net = MultiTaskSHGN(stem_channels=8, stem_residual_channels=16, hourglass_channels=32,
    ...                     num_stacks=2, depth=2)
    >>> out = net(torch.zeros(2, 1, 64, 64))
    >>> out.final["seg"].shape, len(out.stacks)
    (torch.Size([2, 4, 64, 64]), 2)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.sample import TASKS
from lightning_modules.blocks import (
    NormReLUConv,
    PreActBottleneck,
    conv1x1,
    conv3x3,
    make_norm,
    upsample_bilinear,
)
from lightning_modules.hourglass import Hourglass

STEM_STRIDE = 4  # the stem reduces the input side by 4 (conv stride 2, then max-pool 2)


@dataclass
class SHGNOutput:
    """Predictions of every hourglass (deep supervision).

    Attributes:
        stacks: ``stacks[l][task]`` is ``(B, C_task, S, S)`` for hourglass ``l`` (0 = first);
            ``seg`` holds logits, ``lm`` and ``roi`` heat-maps; task order = network's tasks.
        taps: ``taps[l][task] = (alias,)``: a view of the head's coarse map, the only way from
            ``W^l`` to ``stacks[l][task]``, reaching nothing else (GradNorm taps, module
            docstring); empty when the producer has none.
    """

    stacks: list[dict[str, Tensor]]
    taps: list[dict[str, tuple[Tensor, ...]]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Tensor]:
        """Predictions of the last hourglass (what inference uses)."""
        return self.stacks[-1]

    def gradnorm_taps(self, task_names: list[str]) -> list[list[tuple[Tensor, ...]]] | None:
        """``taps`` as ``[l][t]`` in the order of ``task_names`` (the loss columns), or None if
        this output has no taps for every hourglass and task."""
        if len(self.taps) != len(self.stacks) or not all(
            name in taps for taps in self.taps for name in task_names
        ):
            return None
        return [[taps[name] for name in task_names] for taps in self.taps]


def _up(x: Tensor, factor: int) -> Tensor:
    # = F.interpolate(bilinear, align_corners=False); its backward runs ~5x faster on CPU at
    # 256 px, which is most of what GradNorm's per-task gradients cost there (blocks.py).
    return upsample_bilinear(x, factor)


class Stem(nn.Module):
    """Input -> ``x_0`` (C*, S/4) and the half-resolution features ``f_half`` (C2, S/2)."""

    def __init__(self, in_channels: int, c1: int, c2: int, c_star: int, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, c1, kernel_size=7, stride=2, padding=3, bias=False)
        self.norm = make_norm(norm, c1)
        self.unit_half = PreActBottleneck(c1, c2, norm)
        self.unit_quarter = PreActBottleneck(c2, c2, norm)
        self.unit_out = PreActBottleneck(c2, c_star, norm)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f_half = self.unit_half(F.relu(self.norm(self.conv(x))))
        x0 = self.unit_out(self.unit_quarter(F.max_pool2d(f_half, kernel_size=2, stride=2)))
        return x0, f_half


class TaskHead(nn.Module):
    """Prediction module of one task: coarse map at S/4, refined to S with shared skips.

    Args:
        channels: input width ``C*``.
        head_channels: width of the 1x1 layer of the coarse predictor.
        out_channels: the task's channels ``C_t``.
        skip_channels: channels of the shared skips ``k_half``, ``k_full``.
        refine_channels: width of the refinement at S/2.
        norm: normalisation name.

    Shapes: ``f (B, C*, S/4, S/4), k_half (B, s, S/2, S/2), k_full (B, s, S, S)`` ->
    ``coarse (B, C_t, S/4, S/4)`` (re-injected), taps ``(alias,)`` (a view of ``coarse``, the
    output's only input from it), ``out (B, C_t, S, S)``.
    """

    def __init__(
        self,
        channels: int,
        head_channels: int,
        out_channels: int,
        skip_channels: int,
        refine_channels: int,
        norm: str,
    ) -> None:
        super().__init__()
        self.coarse = nn.Sequential(
            NormReLUConv(channels, head_channels, 1, norm, bias=False),
            NormReLUConv(head_channels, out_channels, 1, norm, bias=True),
        )
        # Convs over [prediction path, skip] are written as two added convs (same function as
        # one conv over the concatenation), so that gradients towards W^l (GradNorm) skip the
        # skip channels. At full resolution only 1x1 convs: a 3x3 conv with 1-4 output channels
        # at 256 px runs at a few GFLOP/s on CPU (measured), and 1x1 conv and bilinear upsampling
        # commute, so the spatial work is done at S/2.
        self.refine_half = conv3x3(out_channels, refine_channels, bias=False)
        self.refine_half_skip = conv3x3(skip_channels, refine_channels, bias=False)
        self.refine_norm = make_norm(norm, refine_channels)
        self.refine_full_skip = conv1x1(skip_channels, refine_channels, bias=True)
        self.refine_full = conv1x1(refine_channels, out_channels, bias=True)

    def forward(
        self, f: Tensor, k_half: Tensor, k_full: Tensor
    ) -> tuple[Tensor, tuple[Tensor], Tensor]:
        coarse = self.coarse(f)
        alias = coarse.view_as(coarse)  # the GradNorm tap: feeds this head's output only
        r = self.refine_half(_up(alias, 2)) + self.refine_half_skip(k_half)
        r = F.relu(self.refine_norm(r))
        z = F.relu(_up(r, 2) + self.refine_full_skip(k_full))
        out = _up(alias, 4) + self.refine_full(z)
        return coarse, (alias,), out


class HourglassStack(nn.Module):
    """One hourglass, its last shared unit, its task heads and (optionally) its re-injection."""

    def __init__(
        self,
        channels: int,
        depth: int,
        tasks: dict[str, int],
        head_channels: int,
        skip_channels: int,
        refine_channels: int,
        norm: str,
        reinject: bool,
    ) -> None:
        super().__init__()
        self.hourglass = Hourglass(depth, channels, norm)
        self.shared = PreActBottleneck(channels, channels, norm)
        self.heads = nn.ModuleDict(
            {
                name: TaskHead(channels, head_channels, c, skip_channels, refine_channels, norm)
                for name, c in tasks.items()
            }
        )
        self.reinject_features = conv1x1(channels, channels, bias=True) if reinject else None
        self.reinject_predictions = (
            nn.ModuleDict({name: conv1x1(c, channels, bias=False) for name, c in tasks.items()})
            if reinject
            else None
        )

    def forward(
        self, x: Tensor, k_half: Tensor, k_full: Tensor
    ) -> tuple[dict[str, Tensor], dict[str, tuple[Tensor, ...]], Tensor | None]:
        """Return the task predictions at S, the GradNorm taps per task and the next
        hourglass's input (None if last)."""
        f = self.shared(self.hourglass(x))
        outs: dict[str, Tensor] = {}
        coarse: dict[str, Tensor] = {}
        taps: dict[str, tuple[Tensor, ...]] = {}
        for name, head in self.heads.items():
            coarse[name], taps[name], outs[name] = head(f, k_half, k_full)
        if self.reinject_features is None or self.reinject_predictions is None:
            return outs, taps, None
        x_next = x + self.reinject_features(f)
        for name, proj in self.reinject_predictions.items():
            x_next = x_next + proj(coarse[name])
        return outs, taps, x_next


class MultiTaskSHGN(nn.Module):
    """Multi-task stacked hourglass network; see the module docstring for the layout and costs.

    Args:
        in_channels: image channels ``C_in``.
        stem_channels: ``C1``, width of the 7x7 stem convolution.
        stem_residual_channels: ``C2``, width of the stem's residual units.
        hourglass_channels: ``C*``, width of the hourglasses.
        num_stacks: number of hourglasses ``L``.
        depth: pooling levels per hourglass; the input side ``S`` must be divisible by
            ``4 * 2**depth`` and (for instance norm) ``S / (4 * 2**depth) >= 2``.
        tasks: task name -> output channels, in output order (default seg 4, lm 2, roi 1).
        head_channels: width of each task head's 1x1 layer (default ``C* // 2``).
        skip_channels: width of the shared full- and half-resolution skips.
        refine_channels: width of each head's half-resolution refinement.
        norm: ``instance`` (paper), ``batch``, ``group`` or ``none``.

    Shape:
        ``(B, C_in, S, S)`` -> :class:`SHGNOutput` with ``stacks[l][task]`` ``(B, C_t, S, S)``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        stem_channels: int = 64,
        stem_residual_channels: int = 128,
        hourglass_channels: int = 256,
        num_stacks: int = 4,
        depth: int = 4,
        tasks: dict[str, int] | None = None,
        head_channels: int | None = None,
        skip_channels: int = 16,
        refine_channels: int = 16,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        tasks = dict(TASKS if tasks is None else tasks)
        _check_config(tasks, num_stacks, depth, norm)
        widths = (in_channels, stem_channels, stem_residual_channels, hourglass_channels)
        if min(widths + (skip_channels, refine_channels)) < 1:
            raise ValueError(f"shgn.py: every width must be >= 1, got {widths}")
        head_channels = head_channels or max(hourglass_channels // 2, 1)
        self.in_channels = in_channels
        self.depth = depth
        self.norm_name = norm
        self.tasks = tasks
        self.stem = Stem(in_channels, stem_channels, stem_residual_channels,
                         hourglass_channels, norm)
        self.skip_full = nn.Sequential(
            conv3x3(in_channels, skip_channels, bias=False),
            make_norm(norm, skip_channels),
            nn.ReLU(inplace=False),
        )
        self.skip_half = NormReLUConv(stem_residual_channels, skip_channels, 1, norm, bias=False)
        self.stacks = nn.ModuleList(
            HourglassStack(hourglass_channels, depth, tasks, head_channels, skip_channels,
                           refine_channels, norm, reinject=l < num_stacks - 1)
            for l in range(num_stacks)
        )

    @property
    def num_stacks(self) -> int:
        """Number of hourglasses ``L``."""
        return len(self.stacks)

    @property
    def task_names(self) -> list[str]:
        """Task names in output order."""
        return list(self.tasks)

    def shared_layer(self, l: int) -> PreActBottleneck:
        """The last shared bottleneck unit of hourglass ``l``."""
        return self.stacks[l].shared

    def shared_params(self, l: int) -> list[nn.Parameter]:
        """``W^l`` for GradNorm: the weight of the final 1x1 conv of hourglass ``l``'s last
        shared unit (see the module docstring for why only this weight)."""
        if not 0 <= l < self.num_stacks:
            raise IndexError(f"shgn.py: hourglass index {l} outside 0..{self.num_stacks - 1}")
        return [self.stacks[l].shared.last_conv.weight]

    def check_input(self, x: Tensor) -> None:
        """Raise a ValueError naming the problem when ``x`` cannot go through the network."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"shgn.py: expected input (B, {self.in_channels}, S, S), got {tuple(x.shape)}"
            )
        factor = STEM_STRIDE * 2**self.depth
        min_side = factor * (2 if self.norm_name == "instance" else 1)
        for side in x.shape[2:]:
            if side % factor or side < min_side:
                raise ValueError(
                    f"shgn.py: input side {side} does not fit depth {self.depth}: it must be a "
                    f"multiple of {factor} (stem /4, then /2 per level) and at least {min_side} "
                    "(instance norm needs a bottom of >= 2x2); lower `depth` or resize the input"
                )

    def forward(self, x: Tensor) -> SHGNOutput:
        self.check_input(x)
        feats, f_half = self.stem(x)
        k_half = self.skip_half(f_half)
        k_full = self.skip_full(x)
        stacks: list[dict[str, Tensor]] = []
        taps: list[dict[str, tuple[Tensor, ...]]] = []
        for stack in self.stacks:
            outs, stack_taps, x_next = stack(feats, k_half, k_full)
            stacks.append(outs)
            taps.append(stack_taps)
            if x_next is not None:
                feats = x_next
        return SHGNOutput(stacks=stacks, taps=taps)


def _check_config(tasks: dict[str, int], num_stacks: int, depth: int, norm: str) -> None:
    if not tasks:
        raise ValueError("shgn.py: `tasks` is empty; give at least one task name -> channels")
    bad = {k: v for k, v in tasks.items() if not isinstance(v, int) or v < 1}
    if bad:
        raise ValueError(f"shgn.py: task channel counts must be integers >= 1, got {bad}")
    if num_stacks < 1:
        raise ValueError(f"shgn.py: num_stacks must be >= 1, got {num_stacks}")
    if depth < 1:
        raise ValueError(f"shgn.py: depth must be >= 1, got {depth}")
    make_norm(norm, 1)  # raises on an unknown name
