"""Test reference for GradNorm's norms: one ``autograd.grad(L_t^l, W^l)`` per hourglass and task.

This is the textbook way to get ``n[l, t] = || grad_{W^l} L_t^l ||`` (Chen et al. 2018); training
takes the same norms from the taps during its one backward (``GradNorm.backward_fused``), and the
tests compare the two. Works for any ``(L, T)`` loss tensor, taps or not.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_modules.gradnorm import GradNorm


def task_grad_norms(losses: Tensor, shared_params: Sequence[Sequence[nn.Parameter]],
                    like: Tensor) -> Tensor:
    """``n[l, t] = || grad_{W^l} L_t^l ||_2`` by separate ``autograd.grad`` calls (no ``.grad``),
    with the dtype and device of ``like``."""
    num_stacks, num_tasks = losses.shape
    norms = torch.zeros(num_stacks, num_tasks, dtype=like.dtype, device=like.device)
    for l in range(num_stacks):
        params = list(shared_params[l])
        if not params:
            raise ValueError(f"gradnorm_reference: hourglass {l} has no shared parameters")
        for t in range(num_tasks):
            if not losses[l, t].requires_grad:
                continue  # constant loss: no gradient reaches W^l
            grads = torch.autograd.grad(losses[l, t], params, retain_graph=True,
                                        allow_unused=True)
            sq = [g.detach().to(like).pow(2).sum() for g in grads if g is not None]
            if sq:
                norms[l, t] = torch.stack(sq).sum().sqrt()
    return norms


def backward_weights(gn: GradNorm, losses: Tensor,
                     shared_params: Sequence[Sequence[nn.Parameter]]) -> Tensor:
    """Set ``gn.log_weights.grad`` from the per-task norms (the graph of ``losses`` is kept for a
    following ``gn.total_loss(losses).backward()``); return ``L_grad`` ``(L,)``."""
    gn._check_losses(losses)
    if len(shared_params) != gn.num_stacks:
        raise ValueError(
            f"gradnorm_reference: shared_params has {len(shared_params)} entries, expected one "
            f"per hourglass ({gn.num_stacks})"
        )
    return gn.set_weight_grad(task_grad_norms(losses, shared_params, gn.initial_losses), losses)
