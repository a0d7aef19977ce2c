"""Task losses of the paper (eqs. 1, 2; docs/ARCHITECTURE.md) with deep supervision per hourglass.

* eq. (1) :func:`weighted_multilabel_bce`: sigmoid BCE per bone channel on logits, each pixel
  weighted by ``1 + beta * g`` with ``g = [sum_c y_c > 1]`` (bones overlap there), summed over
  the channels and divided by ``B * H * W`` (not by ``C``).
* eq. (2) :func:`heatmap_mse`: mean squared error over ``B * C * H * W``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.shgn import SHGNOutput

DEFAULT_TASK_LOSSES: dict[str, str] = {"seg": "weighted_bce", "lm": "mse", "roi": "mse"}


def _check_pair(pred: Tensor, target: Tensor, what: str) -> None:
    if pred.ndim != 4 or pred.shape != target.shape:
        raise ValueError(
            f"losses.py: {what}: prediction {tuple(pred.shape)} and target "
            f"{tuple(target.shape)} must both be (B, C, H, W) of the same shape"
        )


def overlap_indicator(target: Tensor) -> Tensor:
    """``g`` of eq. (1): ``(B, 1, H, W)``, 1 where more than one label is true (sum_c y > 1)."""
    return (target.sum(dim=1, keepdim=True) > 1).to(target.dtype)


def weighted_multilabel_bce(logits: Tensor, target: Tensor, beta: float = 0.6) -> Tensor:
    """Eq. (1): overlap-weighted multi-label BCE on logits (numerically stable).

    Args:
        logits: ``(B, C, H, W)`` raw scores (sigmoid not applied).
        target: ``(B, C, H, W)`` labels in {0, 1} (several may be 1 at one pixel).
        beta: extra weight of pixels where labels overlap.

    Returns:
        Scalar ``sum_{b,c,i,j} (1 + beta g_bij) BCE_bcij / (B H W)``.
    """
    _check_pair(logits, target, "segmentation loss")
    target = target.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    b, _, h, w = logits.shape
    weight = 1.0 + beta * overlap_indicator(target)
    return (weight * bce).sum() / (b * h * w)


def heatmap_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Eq. (2): mean squared error over ``B * C * H * W``."""
    _check_pair(pred, target, "heat-map loss")
    return F.mse_loss(pred, target.to(pred.dtype), reduction="mean")


class MultiTaskLoss(nn.Module):
    """Per-hourglass, per-task losses (deep supervision) as an ``(L, T)`` tensor.

    Column ``t`` is task :attr:`task_names` ``[t]`` (the order of ``task_losses``); the target of
    task ``name`` is ``batch[name]`` (batch keys of docs/ARCHITECTURE.md).

    Args:
        beta: overlap weight of eq. (1) (0.6 in the paper).
        task_losses: task name -> ``"weighted_bce"`` (eq. 1) or ``"mse"`` (eq. 2); default
            seg -> weighted_bce, lm -> mse, roi -> mse.

    Example:
        >>> crit = MultiTaskLoss(beta=0.6)
        >>> crit(net(batch["image"]), batch).shape   # 4 hourglasses, 3 tasks
        torch.Size([4, 3])
    """

    def __init__(self, beta: float = 0.6, task_losses: dict[str, str] | None = None) -> None:
        super().__init__()
        task_losses = dict(DEFAULT_TASK_LOSSES if task_losses is None else task_losses)
        if not task_losses:
            raise ValueError("losses.py: `task_losses` is empty")
        known = ("weighted_bce", "mse")
        bad = {k: v for k, v in task_losses.items() if v not in known}
        if bad:
            raise ValueError(f"losses.py: unknown loss kinds {bad}; choose from {known}")
        if beta < 0:
            raise ValueError(f"losses.py: beta must be >= 0, got {beta}")
        self.beta = float(beta)
        self.task_losses = task_losses

    @property
    def task_names(self) -> list[str]:
        """Task names in column order."""
        return list(self.task_losses)

    def _loss_fn(self, kind: str) -> Callable[[Tensor, Tensor], Tensor]:
        if kind == "weighted_bce":
            return lambda p, y: weighted_multilabel_bce(p, y, self.beta)
        return heatmap_mse

    def forward(self, out: SHGNOutput, batch: dict[str, Tensor]) -> Tensor:
        """Return ``(L, T)`` losses; row ``l`` = hourglass ``l``, column ``t`` = task ``t``."""
        missing = [name for name in self.task_losses if name not in batch]
        if missing:
            raise KeyError(f"losses.py: batch lacks target keys {missing} (has {list(batch)})")
        terms: list[Tensor] = []
        for l, preds in enumerate(out.stacks):
            absent = [name for name in self.task_losses if name not in preds]
            if absent:
                raise KeyError(
                    f"losses.py: hourglass {l} predicts {list(preds)} but not {absent}"
                )
            terms.extend(self._loss_fn(kind)(preds[name], batch[name])
                         for name, kind in self.task_losses.items())
        return torch.stack(terms).view(len(out.stacks), len(self.task_losses))
