"""Per-hourglass GradNorm task weighting (Chen et al. 2018; Kordon 2019; docs/ARCHITECTURE.md).

For every hourglass ``l`` separately, with ``W^l`` its last shared layer and ``T`` tasks:

* ``G_t = || grad_{W^l} (w_t L_t^l) ||_2 = w_t * n_t`` with ``n_t = || grad_{W^l} L_t^l ||_2``;
* ``G_bar = mean_t G_t``; ``L~_t = L_t^l / L_t^l(0)``; ``r_t = L~_t / mean_t L~_t``;
* ``L_grad^l = sum_t | G_t - const(G_bar * r_t ** alpha_l) |`` updates only ``w^l``;
* the network is trained on ``sum_l sum_t w_t^l L_t^l`` with ``w`` treated as constants.

Closed-form weight gradient. ``G_t`` is linear in ``w_t`` and the target is a constant, so
``d L_grad^l / d w_t = sign(G_t - target_t) * n_t``: only the first-order norms ``n_t`` are
needed, no second-order graph.

One path (:meth:`GradNorm.backward_fused`): the norms are taken during the network's one backward
of ``sum w L``. Given taps ``p_1..p_k`` of ``(l, t)`` -- tensors that together carry every path
from ``W^l`` to ``L_t^l`` and each reach no other loss (``SHGNOutput.gradnorm_taps``; see
docs/ARCHITECTURE.md, "GradNorm taps") -- a hook on ``p_i`` sees exactly ``w_t^l dL_t^l / d p_i``;
``autograd.grad(p_i, W^l, grad_outputs=that)`` (retaining the graph the running backward still
needs) walks back only from ``p_i``; the sum over ``i`` is ``w_t^l grad_{W^l} L_t^l``, so
``n_t = ||.|| / w_t`` (``w_t > 0`` always). The network gradients come from that single, unchanged
backward (DDP's reducer) bit for bit. The tests check the norms against separate per-task
``autograd.grad(L_t^l, W^l)`` calls (``tests/gradnorm_reference.py``).

Positivity. The trainable parameter is ``log_weights`` (``w = exp(log_weights)``), so every
optimiser step is multiplicative in ``w`` and ``w`` can never reach or cross zero. The paper's
literal additive update cannot guarantee that: at ``T = 2`` with loss scales 1 and 100 the
balancing weight of the large-scale task (~0.03 in tests/test_gradnorm_toy.py) is smaller than
one RMSProp step (the first RMSProp step at lr 0.025 is ~0.25), so it swings through zero (the toy
test shows it); a floor would pin it at the floor instead. With RMSProp each step changes a
weight by a factor of about ``exp(+-lr)`` (~2.5 % at lr 0.025).
By the chain rule the gradient handed to the optimiser is
``d L_grad / d log w_t = w_t * sign(G_t - target_t) * n_t = sign(G_t - target_t) * G_t``.
``renormalise()`` then rescales each hourglass's weights to sum to ``T`` (a shift in log space),
with a floor ``min_weight`` (default 1e-6) so that ``exp`` cannot underflow to 0 after huge steps.

DDP. When ``torch.distributed`` is initialised (and ``sync=True``), the per-task gradient norms
``n`` and losses ``L`` (hence ``L(0)`` on the first call) are averaged over ranks with one
all-reduce before anything else is computed, so every rank computes the same weight gradient and,
with identically initialised optimisers, holds identical weights. The mean of per-rank norms is
used as the gradient norm of the global batch (exact for the losses, a cheap estimate for the
norms: it avoids all-reducing the gradients of ``W^l`` themselves).
``log_weights`` gets its gradient outside autograd, so a ``DistributedDataParallel`` wrapping a
module that contains a ``GradNorm`` would wait for it and fail ("Expected to have finished
reduction in the prior iteration"): call :func:`ddp_ignore_gradnorm` on that module before
wrapping it (or use ``find_unused_parameters=True``).

Zero cases. A task whose loss does not reach ``W^l`` has ``n_t = 0``; a task with ``L(0) = 0``
gets ``L~_t = 1`` (neutral); if all ``L~`` are 0 then ``r = 1``. Nothing divides by zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


class GradNorm(nn.Module):
    """Per-hourglass GradNorm task weights; its only trainable parameter is ``log_weights``.

    Typical step (weights stepped by their own optimiser, e.g. ``RMSprop(gn.parameters(), lr)``)::

        out = net(batch["image"]); losses = criterion(out, batch)     # (L, T), on the graph
        shared = [net.shared_params(l) for l in range(L)]
        gn.backward_fused(losses, out.gradnorm_taps(criterion.task_names), shared)
        net_opt.step(); w_opt.step(); gn.renormalise()

    Args:
        num_stacks: number of hourglasses ``L`` (one weight vector each).
        num_tasks: number of tasks ``T``.
        alpha: asymmetry hyper-parameter, one float for all hourglasses or one per hourglass.
        task_names: names used by :meth:`weight_dict`; defaults to ``task0, task1, ...``.
        min_weight: floor on each weight before renormalisation (underflow guard only).
        sync: average norms and losses over ranks when ``torch.distributed`` is initialised.

    Example:
        >>> gn = GradNorm(num_stacks=4, num_tasks=3, alpha=1.0)
        >>> gn.weights.shape
        torch.Size([4, 3])
    """

    def __init__(
        self,
        num_stacks: int,
        num_tasks: int,
        alpha: float | Sequence[float] = 1.0,
        task_names: Sequence[str] | None = None,
        min_weight: float = 1e-6,
        sync: bool = True,
    ) -> None:
        super().__init__()
        if num_stacks < 1 or num_tasks < 1:
            raise ValueError(
                f"gradnorm.py: need num_stacks >= 1 and num_tasks >= 1, got {num_stacks}, "
                f"{num_tasks}"
            )
        alphas = [float(alpha)] * num_stacks if isinstance(alpha, int | float) else list(alpha)
        if len(alphas) != num_stacks:
            raise ValueError(
                f"gradnorm.py: alpha has {len(alphas)} entries but there are {num_stacks} "
                "hourglasses (give one float or one per hourglass)"
            )
        names = [f"task{t}" for t in range(num_tasks)] if task_names is None else list(task_names)
        if len(names) != num_tasks:
            raise ValueError(
                f"gradnorm.py: {len(names)} task names given for {num_tasks} tasks: {names}"
            )
        if not 0.0 < min_weight < 1.0:
            raise ValueError(f"gradnorm.py: min_weight must be in (0, 1), got {min_weight}")
        self.num_stacks = num_stacks
        self.num_tasks = num_tasks
        self.task_names = names
        self.min_weight = min_weight
        self.sync = sync
        self.log_weights = nn.Parameter(torch.zeros(num_stacks, num_tasks))
        self.register_buffer("alpha", torch.tensor(alphas, dtype=torch.float32), persistent=False)
        self.register_buffer("initial_losses", torch.zeros(num_stacks, num_tasks))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @property
    def weights(self) -> Tensor:
        """Current task weights ``(L, T)``, strictly positive, detached."""
        return self.log_weights.detach().exp()

    def _check_losses(self, losses: Tensor) -> None:
        if losses.shape != (self.num_stacks, self.num_tasks):
            raise ValueError(
                f"gradnorm.py: losses must have shape ({self.num_stacks}, {self.num_tasks}) "
                f"(hourglasses, tasks), got {tuple(losses.shape)}"
            )

    def total_loss(self, losses: Tensor) -> Tensor:
        """Network loss ``sum_l sum_t w_t^l L_t^l`` with the weights as constants.

        Args:
            losses: ``(L, T)`` task losses per hourglass.
        """
        self._check_losses(losses)
        return (self.weights.to(losses.dtype) * losses).sum()

    def _all_reduce_mean(self, stats: Tensor) -> Tensor:
        if not (self.sync and dist.is_available() and dist.is_initialized()):
            return stats
        world = dist.get_world_size()
        if world == 1:
            return stats
        stats = stats.clone()
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        return stats / world

    def _check_shared(self, shared_params: Sequence[Sequence[nn.Parameter]]) -> None:
        if len(shared_params) != self.num_stacks:
            raise ValueError(
                f"gradnorm.py: shared_params has {len(shared_params)} entries, expected one per "
                f"hourglass ({self.num_stacks})"
            )

    def backward_fused(
        self,
        losses: Tensor,
        taps: Sequence[Sequence[Sequence[Tensor]]] | None,
        shared_params: Sequence[Sequence[nn.Parameter]],
        backward: Callable[[Tensor], object] | None = None,
    ) -> Tensor:
        """Backward of ``total_loss(losses)`` that also sets ``log_weights.grad``.

        The network gets the gradients of ``total_loss(losses)``; the norms ``n`` are taken from
        the taps during that one backward (module docstring) and give ``log_weights.grad`` via
        :meth:`set_weight_grad`; returns ``L_grad`` ``(L,)``. The first call also stores ``L(0)``.

        Args:
            losses: ``(L, T)`` task losses per hourglass, attached to the network graph.
            taps: ``taps[l][t]``: tensors that together carry every path from ``W^l`` to
                ``L_t^l`` and each reach no other loss (e.g. ``SHGNOutput.gradnorm_taps``).
            shared_params: ``shared_params[l]`` = the parameters ``W^l`` of hourglass ``l``.
            backward: runs the network backward of the total loss (e.g. Lightning's
                ``manual_backward``); default ``Tensor.backward``.
        """
        self._check_losses(losses)
        self._check_shared(shared_params)
        if taps is None:
            raise ValueError("gradnorm.py: the network output has no GradNorm taps for every "
                             "hourglass and task (SHGNOutput.gradnorm_taps returned None)")
        if len(taps) != self.num_stacks or any(len(row) != self.num_tasks for row in taps):
            raise ValueError(
                f"gradnorm.py: taps must be ({self.num_stacks}, {self.num_tasks}) tensor groups "
                "(hourglasses, tasks)"
            )
        w = self.weights
        total = (w.to(losses.dtype) * losses).sum()
        ref = self.initial_losses
        # partial[l][t]: per-parameter sums of w_t * grad_{W^l} L_t^l over the taps seen so far
        partial: list[list[list[Tensor | None]]] = []
        handles = []
        try:
            for l in range(self.num_stacks):
                params = list(shared_params[l])
                if not params:
                    raise ValueError(f"gradnorm.py: hourglass {l} has no shared parameters W^{l}")
                partial.append([[None] * len(params) for _ in range(self.num_tasks)])
                for t in range(self.num_tasks):
                    for tap in taps[l][t]:
                        if tap.requires_grad:
                            hook = _tap_hook(partial[l][t], tap, params)
                            handles.append(tap.register_hook(hook))
            (Tensor.backward if backward is None else backward)(total)
        finally:
            for handle in handles:
                handle.remove()
        norms = torch.zeros(self.num_stacks, self.num_tasks, dtype=ref.dtype, device=ref.device)
        for l in range(self.num_stacks):
            for t in range(self.num_tasks):
                sq = [g.to(ref).pow(2).sum() for g in partial[l][t] if g is not None]
                if sq:
                    norms[l, t] = torch.stack(sq).sum().sqrt() / w[l, t].to(ref)
        return self.set_weight_grad(norms, losses)

    def set_weight_grad(self, norms: Tensor, losses: Tensor) -> Tensor:
        """Set ``log_weights.grad`` from this step's norms ``n[l, t]`` and losses (rank-averaged
        under DDP; the first call stores ``L(0)``); return ``L_grad`` ``(L,)``."""
        stats = torch.stack([norms, losses.detach().to(self.initial_losses)])
        norms, loss_vals = self._all_reduce_mean(stats).unbind(0)
        if not bool(self.initialised):
            self.initial_losses.copy_(loss_vals)
            self.initialised.fill_(True)

        w = self.weights
        g = w * norms  # G_t
        g_bar = g.mean(dim=1, keepdim=True)
        l0 = self.initial_losses
        l_tilde = torch.where(l0 > 0, loss_vals / l0.clamp_min(torch.finfo(l0.dtype).tiny), 1.0)
        l_tilde_mean = l_tilde.mean(dim=1, keepdim=True)
        r = torch.where(
            l_tilde_mean > 0, l_tilde / l_tilde_mean.clamp_min(torch.finfo(l0.dtype).tiny), 1.0
        )
        target = g_bar * r.pow(self.alpha[:, None])
        diff = g - target
        # d L_grad / d log w_t = w_t * sign(G_t - target_t) * n_t = sign(G_t - target_t) * G_t
        grad = torch.sign(diff) * g
        self.log_weights.grad = grad.to(self.log_weights.dtype)
        return diff.abs().sum(dim=1)

    @torch.no_grad()
    def renormalise(self) -> None:
        """After the weight optimiser's step: rescale each ``w^l`` to sum to ``T``.

        Rescale, floor at ``min_weight``, rescale again: after the first rescale every weight is
        at most ``T``, so the second one shrinks weights by at most ``1 + T * min_weight`` and
        each ends at ``>= min_weight / (1 + T * min_weight) > 0`` with the sum exactly ``T``.
        """
        lw = self.log_weights
        log_t, log_floor = math.log(self.num_tasks), math.log(self.min_weight)
        lw.nan_to_num_(nan=0.0, posinf=0.0, neginf=log_floor)
        lw.sub_(torch.logsumexp(lw, dim=1, keepdim=True) - log_t)
        lw.clamp_(min=log_floor)
        lw.sub_(torch.logsumexp(lw, dim=1, keepdim=True) - log_t)

    def weight_dict(self, prefix: str = "gradnorm") -> dict[str, float]:
        """Weights as ``{"<prefix>/hg<l>/<task>": w}`` for logging (paper Fig. 4 curves)."""
        w = self.weights.cpu().tolist()
        return {
            f"{prefix}/hg{l}/{name}": w[l][t]
            for l in range(self.num_stacks)
            for t, name in enumerate(self.task_names)
        }


def _tap_hook(
    acc: list[Tensor | None], tap: Tensor, params: list[nn.Parameter]
) -> Callable[[Tensor], None]:
    """Hook for a tap ``p``: add ``grad_{W} p . grad`` (``grad = w_t dL_t / d p``) to ``acc``.

    The nested ``autograd.grad`` retains the graph (the running backward still needs it) and
    writes no ``.grad``; the hook returns None, so the running backward's gradient is unchanged.
    """

    busy = False  # the nested call starts at ``tap`` and would fire this hook again

    def hook(grad: Tensor) -> None:
        nonlocal busy
        if busy:
            return
        busy = True
        try:
            grads = torch.autograd.grad(tap, params, grad_outputs=grad, retain_graph=True,
                                        allow_unused=True)
        finally:
            busy = False
        for i, g in enumerate(grads):
            if g is not None:
                acc[i] = g.detach() if acc[i] is None else acc[i] + g.detach()

    return hook


def ddp_ignore_gradnorm(model: nn.Module) -> list[str]:
    """Make DDP skip the parameters and buffers of every ``GradNorm`` inside ``model``.

    Call before wrapping ``model`` in ``DistributedDataParallel`` (e.g. in a LightningModule's
    ``__init__``): ``GradNorm`` synchronises itself, and its ``log_weights`` never receives an
    autograd gradient that DDP could wait for. Returns the ignored names.
    """
    names = [
        f"{prefix}.{name}" if prefix else name
        for prefix, sub in model.named_modules()
        if isinstance(sub, GradNorm)
        for name in ("log_weights", "initial_losses", "initialised")
    ]
    already = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
    merged = already + [n for n in names if n not in already]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, merged)
    return names
