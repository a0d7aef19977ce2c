"""Multi-task stacked hourglass network (Kordon et al. 2019, Fig. 2; docs/ARCHITECTURE.md).

Layout for an ``S x S`` input (``S = 256`` in the paper; widths ``C_in, C1, C2, C*``)::

    stem:  conv7x7/2 (C_in->C1) -> nr -> unit(C1->C2)                       at S/2 -> f_half
           maxpool/2 -> unit(C2->C2) -> unit(C2->C*)                        at S/4 -> x_0
    skips: nr(conv3x3(image -> s)) at S -> k_full;  nrc1x1(f_half -> s) at S/2 -> k_half
    hourglass l = 0..L-1 (all at S/4):
           f_l = unit(Hourglass(x_l))                 <- its last conv is W^l (GradNorm)
           per task t: coarse_t = nrc1x1(C*->head) -> nrc1x1(head->C_t)          at S/4
                       r_t = nr(conv3x3(up2(coarse_t)) + conv3x3(k_half))          at S/2
                       out_t = up4(coarse_t) + conv1x1(relu(up2(r_t) + conv1x1(k_full)))
           x_{l+1} = x_l + conv1x1(f_l) + sum_t conv1x1(coarse_t)   (re-injection, l < L-1)

``unit`` = pre-activation bottleneck, ``nr`` = norm -> ReLU, ``nrc1x1`` = nr -> 1x1 conv,
``up2``/``up4`` = bilinear. ``S`` must be a multiple of ``4 * 2**depth`` with a bottom of at least
2x2 for instance norm (depth 4 needs ``S >= 128``). All wide work stays at S/4; each head's coarse
map is refined to S cheaply (~0.37 GFLOP per hourglass in the paper setting).

Paper configuration (``MultiTaskSHGN()``: C_in=1, C1=64, C2=128, C*=256, L=4, depth 4, tasks
seg 4 / lm 2 / roi 1, head width 128, skips/refinement 16): 12,991,720 parameters, ~31.7 GFLOP
per 1x256x256 forward. The CPU speed tricks live beside it: ``instance_norm.py`` (instance norm
by the group-norm kernel), ``inference_ops.py`` (pooling, nearest and residual adds),
``fast_upsample.py`` (bilinear adjoint), ``pointwise_conv.py`` (full-resolution 1x1 layers as
batched products); the GradNorm taps in ``taps.py``.

Example:
    >>> net = MultiTaskSHGN(stem_channels=8, stem_residual_channels=16, hourglass_channels=32,
    ...                     num_stacks=2, depth=2)
    >>> out = net(torch.zeros(2, 1, 64, 64))
    >>> out.final["seg"].shape, len(out.stacks)
    (torch.Size([2, 4, 64, 64]), 2)
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import Tensor, nn

from datamodules.sample import TASKS
from lightning_modules.blocks import NormReLUConv, PreActBottleneck, conv1x1, conv3x3, make_norm
from lightning_modules.fast_upsample import upsample_bilinear as up
from lightning_modules.hourglass import Hourglass
from lightning_modules.inference_ops import max_pool2, reinject
from lightning_modules.instance_norm import norm_relu
from lightning_modules.pointwise_conv import PointwiseConv2d
from lightning_modules.taps import SHGNOutput, tap

__all__ = ["MultiTaskSHGN", "SHGNOutput", "final_maps", "input_side_problem"]

STEM_STRIDE = 4  # the stem reduces the input side by 4 (conv stride 2, then max-pool 2)


def input_side_problem(side: int, depth: int, norm: str) -> str | None:
    """Why an input side ``side`` cannot go through a network of ``depth`` (None: it can)."""
    factor = STEM_STRIDE * 2**depth
    min_side = factor * (2 if norm == "instance" else 1)
    if side % factor == 0 and side >= min_side:
        return None
    return (f"input side {side} does not fit depth {depth}: it must be a multiple of {factor} "
            f"(stem /4, then /2 per level) and at least {min_side} (instance norm needs a bottom "
            "of >= 2x2); lower `depth` or resize the input")


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
        f_half = self.unit_half(norm_relu(self.norm, self.conv(x)))
        x0 = self.unit_out(self.unit_quarter(max_pool2(f_half)))
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
        # [prediction, skip] convs are two added convs, so gradients towards W^l skip the skips;
        # only 1x1 convs at S (a 3x3 conv with 1-4 outputs runs at a few GFLOP/s on CPU).
        self.refine_half = conv3x3(out_channels, refine_channels, bias=False)
        self.refine_half_skip = conv3x3(skip_channels, refine_channels, bias=False)
        self.refine_norm = make_norm(norm, refine_channels)
        # the full-resolution 1x1 layers as batched products (pointwise_conv.py: faster on CPU)
        self.refine_full_skip = PointwiseConv2d(skip_channels, refine_channels, bias=True)
        self.refine_full = PointwiseConv2d(refine_channels, out_channels, bias=True)

    def forward(
        self, f: Tensor, k_half: Tensor, k_full: Tensor, full: bool = True
    ) -> tuple[Tensor, tuple[Tensor], Tensor | None]:
        """``full`` False: the coarse map only (its output at S is None): what the next
        hourglass needs when nobody reads this head's output."""
        coarse = self.coarse(f)
        if not full:
            return coarse, (coarse,), None
        alias = tap(coarse)  # the GradNorm tap: feeds this head's output only (taps.py)
        r = self.refine_half(up(alias, 2)) + self.refine_half_skip(k_half)
        r = norm_relu(self.refine_norm, r)
        z = self.refine_full_skip(k_full, add=up(r, 2)).relu_()  # up(r, 2) + conv(k_full)
        out = self.refine_full(z, add=up(alias, 4))
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
        self, x: Tensor, k_half: Tensor, k_full: Tensor, wanted: Collection[str] | None = None
    ) -> tuple[dict[str, Tensor], dict[str, tuple[Tensor, ...]], Tensor | None]:
        """Return the task predictions at S (only the ``wanted`` ones; None: all), the GradNorm
        taps per task and the next hourglass's input (None if last)."""
        f = self.shared(self.hourglass(x))
        outs: dict[str, Tensor] = {}
        coarse: dict[str, Tensor] = {}
        taps: dict[str, tuple[Tensor, ...]] = {}
        last = self.reinject_predictions is None
        for name, head in self.heads.items():
            full = wanted is None or name in wanted
            if full or not last:  # a last hourglass's unread head is not computed at all
                coarse[name], taps[name], out = head(f, k_half, k_full, full)
                if out is not None:
                    outs[name] = out
        if self.reinject_features is None or self.reinject_predictions is None:
            return outs, taps, None
        preds = self.reinject_predictions
        x_next = reinject(x, f, self.reinject_features, [coarse[n] for n in preds],
                          [preds[n] for n in preds])
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
        for side in x.shape[2:]:
            if problem := input_side_problem(int(side), self.depth, self.norm_name):
                raise ValueError(f"shgn.py: {problem}")

    def forward(
        self, x: Tensor, outputs: Mapping[int, Collection[str]] | None = None
    ) -> SHGNOutput:
        """All maps (training), or only ``outputs``: hourglass index (negative from the end)
        -> task names whose maps at S are computed; the others' full-resolution refinements
        are skipped (inference: ``final_maps``). Each hourglass still runs (re-injection)."""
        self.check_input(x)
        wanted: dict[int, Collection[str]] | None = None
        if outputs is not None:
            wanted = {}
            for l, names in outputs.items():
                if not -self.num_stacks <= l < self.num_stacks:
                    raise IndexError(f"shgn.py: hourglass {l} outside a {self.num_stacks}-stack "
                                     "network")  # fmt: skip
                wanted[l % self.num_stacks] = tuple(names)
        feats, f_half = self.stem(x)
        k_half = self.skip_half(f_half)
        k_full = self.skip_full(x)
        stacks: list[dict[str, Tensor]] = []
        taps: list[dict[str, tuple[Tensor, ...]]] = []
        for l, stack in enumerate(self.stacks):
            outs, stack_taps, x_next = stack(
                feats, k_half, k_full, None if wanted is None else wanted.get(l, ())
            )
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


def final_maps(net: MultiTaskSHGN, x: Tensor) -> dict[str, Tensor]:
    """What planning reads, computing nothing else: the last hourglass's ``seg`` (sigmoid
    probabilities), ``lm`` and ``roi`` maps and, with two or more hourglasses, ``lm_prev`` (the
    second-to-last one's landmark heat-maps). The earlier hourglasses' full-resolution
    refinements are skipped (~35 % of a quick network's inference on CPU).

    Shape: ``(B, C_in, S, S)`` -> ``seg (B, 4, S, S)``, ``lm (B, 2, S, S)``, ``roi (B, 1, S, S)``,
    ``lm_prev (B, 2, S, S)``.
    """
    tasks = ("seg", "lm", "roi")
    outputs: dict[int, Collection[str]] = {-1: tasks}
    if net.num_stacks > 1:
        outputs[-2] = ("lm",)
    stacks = net(x, outputs=outputs).stacks
    final = stacks[-1]
    maps = {"seg": torch.sigmoid(final["seg"]), "lm": final["lm"], "roi": final["roi"]}
    if net.num_stacks > 1:
        maps["lm_prev"] = stacks[-2]["lm"]
    return maps
