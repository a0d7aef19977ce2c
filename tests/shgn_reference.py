"""Frozen reference of the network's forward as first written (plain ``nn.functional`` ops).

Reads the parameters of a :class:`MultiTaskSHGN` by their state-dict names and recomputes every
hourglass's predictions with ``F.instance_norm``, ``F.max_pool2d``, ``F.interpolate`` (nearest,
bilinear) and separate convolutions, exactly as the first version of ``shgn.py`` did, so the
tests can check that the speed tricks beside the network change neither its parameters nor its
outputs (nor, through autograd, its gradients). Instance norm only (the paper configuration).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def _nr(p: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    """instance norm (affine, per-image statistics) -> ReLU."""
    return F.relu(F.instance_norm(x, weight=p[f"{name}.weight"], bias=p[f"{name}.bias"]))


def _conv(p: dict[str, Tensor], name: str, x: Tensor, padding: int = 0, stride: int = 1) -> Tensor:
    return F.conv2d(x, p[f"{name}.weight"], p.get(f"{name}.bias"), stride=stride, padding=padding)


def _nrc(p: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    """NormReLUConv = Sequential(norm ``.0``, ReLU, conv ``.2``); 3x3 convs get padding 1."""
    pad = p[f"{name}.2.weight"].shape[-1] // 2
    return _conv(p, f"{name}.2", _nr(p, f"{name}.0", x), padding=pad)


def _unit(p: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    skip = _conv(p, f"{name}.skip", x) if f"{name}.skip.weight" in p else x
    inner = _nrc(p, f"{name}.spatial", _nrc(p, f"{name}.reduce", x))
    return skip + _nrc(p, f"{name}.expand", inner)


def _hourglass(p: dict[str, Tensor], name: str, x: Tensor, depth: int) -> Tensor:
    low = _unit(p, f"{name}.low1", F.max_pool2d(x, kernel_size=2, stride=2))
    inner = f"{name}.inner"
    low = _hourglass(p, inner, low, depth - 1) if depth > 1 else _unit(p, inner, low)
    low = _unit(p, f"{name}.low3", low)
    return _unit(p, f"{name}.up", x) + F.interpolate(low, scale_factor=2.0, mode="nearest")


def _up(x: Tensor, factor: int) -> Tensor:
    return F.interpolate(x, scale_factor=float(factor), mode="bilinear", align_corners=False)


def reference_forward(net: nn.Module, x: Tensor) -> list[dict[str, Tensor]]:
    """``stacks[l][task]`` of the first version of ``MultiTaskSHGN.forward`` with ``net``'s
    parameters (differentiable with respect to them)."""
    p = dict(net.named_parameters())
    tasks, depth = net.tasks, net.depth
    f_half = _unit(p, "stem.unit_half", _nr(p, "stem.norm", _conv(p, "stem.conv", x, 3, 2)))
    feats = _unit(p, "stem.unit_out", _unit(p, "stem.unit_quarter",
                                            F.max_pool2d(f_half, kernel_size=2, stride=2)))
    k_half = _nrc(p, "skip_half", f_half)
    k_full = _nr(p, "skip_full.1", _conv(p, "skip_full.0", x, padding=1))
    stacks = []
    for l in range(len(net.stacks)):
        s = f"stacks.{l}"
        f = _unit(p, f"{s}.shared", _hourglass(p, f"{s}.hourglass", feats, depth))
        outs, coarse = {}, {}
        for name in tasks:
            h = f"{s}.heads.{name}"
            c = _nrc(p, f"{h}.coarse.1", _nrc(p, f"{h}.coarse.0", f))
            r = _conv(p, f"{h}.refine_half", _up(c, 2), 1) + _conv(p, f"{h}.refine_half_skip",
                                                                  k_half, 1)
            r = _nr(p, f"{h}.refine_norm", r)
            z = F.relu(_up(r, 2) + _conv(p, f"{h}.refine_full_skip", k_full))
            outs[name], coarse[name] = _up(c, 4) + _conv(p, f"{h}.refine_full", z), c
        stacks.append(outs)
        if f"{s}.reinject_features.weight" in p:
            nxt = feats + _conv(p, f"{s}.reinject_features", f)
            for name in tasks:
                nxt = nxt + _conv(p, f"{s}.reinject_predictions.{name}", coarse[name])
            feats = nxt
    return stacks
