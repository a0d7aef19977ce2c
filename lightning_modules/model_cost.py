"""What a network costs to run: convolution FLOP and values for one image, and the bound check.

Shared by loading a checkpoint (``planning.model_io``: plan, evaluate, export refuse a network
beyond ``MAX_GRAPH_FLOP`` / ``MAX_TOTAL_ELEMENTS``) and by training (``lightning_modules.train``
refuses to train such a network before anything is built). Imports torch and
``lightning_modules.shgn`` only (``model_limits`` stays plain Python); planning imports this,
never the reverse.

Example (the paper network: 3.0e10 FLOP at 256 px, 2.7e11 at 768, above MAX_GRAPH_FLOP)::

    >>> hp = {"num_stacks": 4, "depth": 4, "c1": 64, "c2": 128, "c_star": 256}
    >>> with torch.device("meta"):  # no weights
    ...     net = build_network(hp)
    >>> f"{conv_flop(net, hp, 256):.1e}", compute_problem(net, hp, 256) is None
    ('3.0e+10', True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from datamodules.sample import TASKS
from lightning_modules.model_limits import MAX_GRAPH_FLOP, MAX_TOTAL_ELEMENTS
from lightning_modules.shgn import STEM_STRIDE, MultiTaskSHGN

__all__ = ["build_network", "compute_problem", "conv_cost", "conv_flop"]


def build_network(hparams: Mapping[str, Any]) -> MultiTaskSHGN:
    """``MultiTaskSHGN`` from ``KneePlanModule``'s hyper-parameters (same names and defaults)."""
    return MultiTaskSHGN(
        in_channels=1,
        stem_channels=int(hparams.get("c1", 64)),
        stem_residual_channels=int(hparams.get("c2", 128)),
        hourglass_channels=int(hparams.get("c_star", 256)),
        num_stacks=int(hparams.get("num_stacks", 4)),
        depth=int(hparams.get("depth", 4)),
        tasks=dict(TASKS),
        norm=str(hparams.get("norm", "instance")),
        **dict(hparams.get("net_kwargs") or {}),
    )


def conv_flop(net: torch.nn.Module, hparams: Mapping[str, Any], size: int) -> float:
    """Convolution FLOP of ``net`` for one ``size`` x ``size`` image (see ``conv_cost``)."""
    return conv_cost(net, hparams, size)[0]


def conv_cost(net: torch.nn.Module, hparams: Mapping[str, Any], size: int
              ) -> tuple[float, float]:
    """(FLOP, output values) of ``net``'s convolutions (built from ``hparams``; may be on the
    meta device) for one ``size`` x ``size`` image: 2 x weights x output pixels, and channels x
    output pixels, summed over its convolutions.

    Each convolution's output size comes from a forward of a copy with the same layout (its
    widths replaced by their ranks, so every equal or unequal pair of widths stays so, and the
    same convolutions exist; batch norm in eval mode, which takes any size) at the smallest
    input it takes, scaled by area: ~20-120 ms at any width, where a meta-device forward of the
    paper network took 0.5-1.5 s. Other ops (pooling, norms, upsampling) are not counted.
    """
    keys = ("c1", "c2", "c_star")
    kw = dict(hparams.get("net_kwargs") or {})
    real = {k: int(hparams.get(k, d)) for k, d in zip(keys, (64, 128, 256), strict=True)}
    real["head_channels"] = int(kw.get("head_channels") or max(real["c_star"] // 2, 1))
    real["skip_channels"] = int(kw.get("skip_channels") or 16)
    real["refine_channels"] = int(kw.get("refine_channels") or 16)
    fixed = {1, *TASKS.values()}  # the input and the task outputs keep their widths' ranks too
    rank = {v: i + 1 for i, v in enumerate(sorted(fixed | set(real.values())))}
    rank.update({v: v for v in fixed if rank[v] != v and v not in real.values()})
    tiny_hp = {**hparams, **{k: rank[real[k]] for k in keys}, "norm": "batch",  # (eval: any size)
               "net_kwargs": {k: rank[real[k]] for k in
                              ("head_channels", "skip_channels", "refine_channels")}}
    stacks = int(hparams.get("num_stacks", 4))
    tiny_hp["num_stacks"] = min(stacks, 2)  # stacks are alike but the last (no reinjection):
    # a non-last and a last one stand for all (32 stacks at depth 8 took 22-50 s here)
    with torch.device("cpu"):  # (a caller's meta-device context must not reach the copy)
        tiny = build_network(tiny_hp).eval()
    depth = int(hparams.get("depth", 4))
    small = STEM_STRIDE * 2**depth
    pixels: dict[str, int] = {}

    def record(name: str) -> Any:
        return lambda m, i, o: pixels.__setitem__(name, o.shape[-2:].numel())

    hooks = [m.register_forward_hook(record(n))
             for n, m in tiny.named_modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        tiny(torch.zeros(1, 1, small, small, device="cpu"))
    for h in hooks:
        h.remove()
    scale = (size / small) ** 2

    def tiny_name(name: str) -> str:  # stack i of ``net`` -> the tiny copy's stand-in
        parts = name.split(".")
        if stacks > 2 and len(parts) > 2 and parts[0] == "stacks" and parts[1].isdigit():
            parts[1] = "1" if int(parts[1]) == stacks - 1 else "0"
        return ".".join(parts)

    convs = [(m, pixels.get(tiny_name(n), 0) * scale) for n, m in net.named_modules()
             if isinstance(m, torch.nn.Conv2d)]
    return (float(sum(2 * m.weight.numel() * px for m, px in convs)),
            float(sum(m.weight.shape[0] * px for m, px in convs)))


def compute_problem(net: MultiTaskSHGN, hparams: Mapping[str, Any], size: int) -> str | None:
    """Why ``net`` cannot run on ``size`` px inputs within the bounds an exported graph has
    (it does not take that size; its convolutions need more than ``MAX_GRAPH_FLOP`` or compute
    more than ``MAX_TOTAL_ELEMENTS`` values for one image), phrased "its ...", or None."""
    try:
        net.check_input(torch.empty(1, 1, size, size, device="meta"))
    except ValueError as err:
        return f"its image_size {size} does not fit its network ({err})"
    # every convolution's output is at least the innermost level's (size / (STEM_STRIDE x
    # 2^depth))^2 pixels: a lower bound from the weights alone refuses a huge network before
    # the forward ``conv_cost`` runs (32 stacks of width 4096 at depth 8 took 22-50 s to price)
    innermost = (size / (STEM_STRIDE * 2 ** int(hparams.get("depth", 4)))) ** 2
    weights = sum(m.weight.numel() for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    if 2.0 * weights * innermost > MAX_GRAPH_FLOP:
        return (f"its network needs at least {2.0 * weights * innermost:.1e} FLOP per {size} px "
                f"image, more than the {MAX_GRAPH_FLOP:.0e} allowed")
    flop, values = conv_cost(net, hparams, size)
    if flop > MAX_GRAPH_FLOP:
        return (f"its network needs {flop:.1e} FLOP per {size} px image, more than the "
                f"{MAX_GRAPH_FLOP:.0e} allowed")
    if values > MAX_TOTAL_ELEMENTS:  # (32 stacks of width 8 at 1024 px: 3.5e9 values, 17 s)
        return (f"its network computes {values:.1e} values per {size} px image, more than the "
                f"{MAX_TOTAL_ELEMENTS:.1e} allowed")
    return None
