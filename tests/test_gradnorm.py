"""Unit tests of per-hourglass GradNorm against hand-derived (numpy) values.

The models here are hand-built linear toys, independent of the real network: hourglass ``l``
has a shared matrix ``W_l`` (2 x 3) and one fixed head vector ``h_{l,t}`` per task, and task
loss ``L_t^l = (h_{l,t}^T W_l x - y_t)^2``, so ``grad_{W_l} L_t^l = 2 (pred - y_t) h_{l,t} x^T``
and its norm is ``2 |pred - y_t| ||h_{l,t}|| ||x||``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gradnorm_reference import backward_weights
from torch import nn

from lightning_modules.gradnorm import GradNorm

RNG = np.random.default_rng(1234)
W_NP = [RNG.normal(size=(2, 3)) for _ in range(2)]  # W^l, l = 0, 1
H_NP = RNG.normal(size=(2, 2, 2))  # h[l, t] (2,)
ALPHAS = (0.5, 1.5)


def linear_losses(ws: list[nn.Parameter], x: np.ndarray, y: np.ndarray) -> torch.Tensor:
    """(L=2, T=2) losses of the linear toy, attached to ``ws``."""
    xt = torch.tensor(x)
    rows = []
    for l in range(2):
        rows.append(
            torch.stack(
                [(torch.tensor(H_NP[l, t]) @ ws[l] @ xt - float(y[t])) ** 2 for t in range(2)]
            )
        )
    return torch.stack(rows)


def numpy_stats(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hand-derived losses and gradient norms ``n[l, t] = ||grad_W L_t^l||`` (numpy)."""
    loss = np.zeros((2, 2))
    norm = np.zeros((2, 2))
    for l in range(2):
        for t in range(2):
            res = H_NP[l, t] @ W_NP[l] @ x - y[t]
            loss[l, t] = res**2
            grad_w = 2.0 * res * np.outer(H_NP[l, t], x)
            norm[l, t] = np.sqrt((grad_w**2).sum())
    return loss, norm


def numpy_log_weight_grad(
    w: np.ndarray, loss: np.ndarray, norm: np.ndarray, l0: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of L_grad w.r.t. log w, written out from docs/ARCHITECTURE.md, and L_grad."""
    grad = np.zeros((2, 2))
    l_grad = np.zeros(2)
    for l in range(2):
        g = w[l] * norm[l]  # G_t = ||grad_W(w_t L_t)|| = w_t n_t
        g_bar = g.mean()
        lt = loss[l] / l0[l]
        r = lt / lt.mean()
        target = g_bar * r ** ALPHAS[l]
        # dL_grad/dw_t = sign(G_t - target_t) n_t ; chain rule through w = exp(log w)
        grad[l] = np.sign(g - target) * norm[l] * w[l]
        l_grad[l] = np.abs(g - target).sum()
    return grad, l_grad


def renormalise_np(logw: np.ndarray) -> np.ndarray:
    w = np.exp(logw)
    return np.log(w / w.sum(axis=1, keepdims=True) * 2.0)


@pytest.mark.parametrize("opt_name", ["sgd", "rmsprop"])
def test_two_step_update_matches_hand_derivation(opt_name: str) -> None:
    ws = [nn.Parameter(torch.tensor(w)) for w in W_NP]
    gn = GradNorm(num_stacks=2, num_tasks=2, alpha=ALPHAS).double()
    lr = 0.004 if opt_name == "sgd" else 0.025
    if opt_name == "sgd":
        opt = torch.optim.SGD(gn.parameters(), lr=lr)
    else:
        opt = torch.optim.RMSprop(gn.parameters(), lr=lr)  # alpha 0.99, eps 1e-8

    data = [
        (np.array([1.0, -0.5, 2.0]), np.array([0.3, -1.0])),
        (np.array([-0.7, 1.2, 0.4]), np.array([2.0, 0.5])),
    ]
    logw = np.zeros((2, 2))
    v = np.zeros((2, 2))
    l0 = None
    for x, y in data:
        loss, norm = numpy_stats(x, y)
        if l0 is None:
            l0 = loss.copy()
        grad, l_grad = numpy_log_weight_grad(np.exp(logw), loss, norm, l0)
        assert np.abs(grad).min() > 0  # non-degenerate: every sign is +-1

        losses = linear_losses(ws, x, y)
        np.testing.assert_allclose(losses.detach().numpy(), loss, rtol=1e-12)
        out = backward_weights(gn, losses, [[w] for w in ws])
        np.testing.assert_allclose(out.numpy(), l_grad, rtol=1e-10)
        np.testing.assert_allclose(gn.log_weights.grad.numpy(), grad, rtol=1e-10)
        assert all(w.grad is None for w in ws)

        if opt_name == "sgd":
            logw = logw - lr * grad
        else:
            v = 0.99 * v + 0.01 * grad**2
            logw = logw - lr * grad / (np.sqrt(v) + 1e-8)
        logw = renormalise_np(logw)
        opt.step()
        gn.renormalise()
        np.testing.assert_allclose(gn.weights.numpy(), np.exp(logw), rtol=1e-10)
    # the hand derivation really moved the weights away from 1 and they sum to T
    assert np.abs(np.exp(logw) - 1.0).max() > 0.01
    np.testing.assert_allclose(gn.weights.sum(dim=1).numpy(), [2.0, 2.0], rtol=1e-12)


def test_closed_form_equals_second_order_autograd() -> None:
    """The closed-form gradient equals autograd through G_t = ||grad_W(w_t L_t)|| (create_graph)."""
    torch.manual_seed(0)
    ws = [nn.Parameter(torch.tensor(w)) for w in W_NP]
    gn = GradNorm(num_stacks=2, num_tasks=2, alpha=ALPHAS).double()
    x0, y0 = np.array([1.0, -0.5, 2.0]), np.array([0.3, -1.0])
    x1, y1 = np.array([0.2, 0.9, -1.1]), np.array([-0.4, 1.5])
    backward_weights(gn, linear_losses(ws, x0, y0), [[w] for w in ws])  # sets L(0)
    with torch.no_grad():
        gn.log_weights.copy_(torch.tensor([[0.3, -0.2], [-0.6, 0.1]], dtype=torch.float64))

    losses = linear_losses(ws, x1, y1)
    backward_weights(gn, losses, [[w] for w in ws])
    closed = gn.log_weights.grad.clone()

    logw = gn.log_weights.detach().clone().requires_grad_(True)
    total = 0.0
    for l in range(2):
        w = logw[l].exp()
        g = torch.stack(
            [
                torch.autograd.grad(w[t] * losses[l, t], ws[l], create_graph=True)[0].norm()
                for t in range(2)
            ]
        )
        lt = losses[l].detach() / gn.initial_losses[l]
        r = lt / lt.mean()
        target = (g.mean() * r ** ALPHAS[l]).detach()
        total = total + (g - target).abs().sum()
    (autograd_grad,) = torch.autograd.grad(total, logw)
    torch.testing.assert_close(closed, autograd_grad, rtol=1e-10, atol=1e-12)


def random_step_losses(
    ws: list[nn.Parameter], gen: torch.Generator, num_tasks: int
) -> torch.Tensor:
    rows = []
    for w in ws:
        v = torch.randn(num_tasks, w.numel(), generator=gen)
        scale = torch.exp(3.0 * torch.randn(num_tasks, generator=gen))  # ~6 decades
        scale = scale * (torch.rand(num_tasks, generator=gen) > 0.1)  # some losses exactly 0
        rows.append(scale * (v @ w) ** 2)
    return torch.stack(rows)


@pytest.mark.parametrize("opt_name", ["rmsprop", "sgd_huge_lr"])
def test_weights_positive_and_sum_to_t_over_1000_random_steps(opt_name: str) -> None:
    gen = torch.Generator().manual_seed(7)
    num_stacks, num_tasks = 3, 3
    ws = [nn.Parameter(torch.randn(4, generator=gen)) for _ in range(num_stacks)]
    gn = GradNorm(num_stacks, num_tasks, alpha=[0.5, 1.0, 2.0])
    if opt_name == "rmsprop":
        opt = torch.optim.RMSprop(gn.parameters(), lr=0.025)
    else:
        opt = torch.optim.SGD(gn.parameters(), lr=100.0)  # steps far larger than any weight
    min_seen = math.inf
    for _ in range(1000):
        with torch.no_grad():
            for w in ws:
                w.normal_(generator=gen)
        losses = random_step_losses(ws, gen, num_tasks)
        l_grad = backward_weights(gn, losses, [[w] for w in ws])
        assert torch.isfinite(l_grad).all()
        assert torch.isfinite(gn.log_weights.grad).all()
        opt.step()
        gn.renormalise()
        w = gn.weights
        assert torch.isfinite(w).all()
        assert (w > 0).all()
        torch.testing.assert_close(w.sum(dim=1), torch.full((num_stacks,), 3.0))
        min_seen = min(min_seen, w.min().item())
    print(f"\n[{opt_name}] smallest weight over 1000 random steps: {min_seen:.3g}")
    assert min_seen > 0


def make_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.ModuleDict(
        {
            "trunk": nn.Linear(5, 6),
            "shared": nn.Linear(6, 6),  # W
            "head0": nn.Linear(6, 2),
            "head1": nn.Linear(6, 1),
        }
    )


def net_losses(net: nn.Module, x: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor):
    h = torch.relu(net["shared"](torch.relu(net["trunk"](x))))
    l0 = ((net["head0"](h) - y0) ** 2).mean()
    l1 = ((net["head1"](h) - y1) ** 2).mean()
    return torch.stack([l0, l1])[None]  # (L=1, T=2)


def test_network_gradients_identical_with_gradnorm_on_or_off() -> None:
    gen = torch.Generator().manual_seed(3)
    x, y0, y1 = (torch.randn(8, d, generator=gen) for d in (5, 2, 1))
    fixed = torch.tensor([[0.4, 1.6]])

    grads = {}
    for use_gradnorm in (False, True):
        net = make_net(seed=11)
        gn = GradNorm(num_stacks=1, num_tasks=2)
        with torch.no_grad():
            gn.log_weights.copy_(fixed.log())
        losses = net_losses(net, x, y0, y1)
        if use_gradnorm:
            backward_weights(gn, losses, [list(net["shared"].parameters())])
            assert all(p.grad is None for p in net.parameters()), "backward_weights wrote .grad"
            assert gn.log_weights.grad is not None
        gn.total_loss(losses).backward()
        grads[use_gradnorm] = {n: p.grad.clone() for n, p in net.named_parameters()}
        assert torch.allclose(gn.weights, fixed)  # backward_weights does not change the weights

    for name, g in grads[False].items():
        assert torch.equal(g, grads[True][name]), name
    # and the weights really entered the network loss: not the unweighted gradient
    net = make_net(seed=11)
    net_losses(net, x, y0, y1).sum().backward()
    assert not torch.allclose(net["shared"].weight.grad, grads[True]["shared.weight"])


def test_total_loss_is_weighted_sum_with_constant_weights() -> None:
    gn = GradNorm(num_stacks=2, num_tasks=3)
    with torch.no_grad():
        gn.log_weights.copy_(torch.tensor([[0.5, 1.0, 1.5], [2.0, 0.7, 0.3]]).log())
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    total = gn.total_loss(losses)
    assert total.item() == pytest.approx(0.5 + 2.0 + 4.5 + 8.0 + 3.5 + 1.8)
    total.backward()
    assert gn.log_weights.grad is None  # weights are constants for the network loss
    torch.testing.assert_close(losses.grad, gn.weights)


def test_initial_losses_state_dict_round_trip() -> None:
    ws = [nn.Parameter(torch.tensor(w)) for w in W_NP]
    gn = GradNorm(num_stacks=2, num_tasks=2, alpha=ALPHAS).double()
    assert not bool(gn.initialised)
    x0, y0 = np.array([1.0, -0.5, 2.0]), np.array([0.3, -1.0])
    backward_weights(gn, linear_losses(ws, x0, y0), [[w] for w in ws])
    torch.optim.SGD(gn.parameters(), lr=0.1).step()
    gn.renormalise()
    loss0, _ = numpy_stats(x0, y0)
    np.testing.assert_allclose(gn.initial_losses.numpy(), loss0, rtol=1e-12)

    state = gn.state_dict()
    assert set(state) == {"log_weights", "initial_losses", "initialised"}
    restored = GradNorm(num_stacks=2, num_tasks=2, alpha=ALPHAS).double()
    restored.load_state_dict(state)
    assert bool(restored.initialised)
    assert torch.equal(restored.initial_losses, gn.initial_losses)
    assert torch.equal(restored.weights, gn.weights)

    # a restored module keeps the old L(0): the next call sees the same r as the original
    x1, y1 = np.array([-0.7, 1.2, 0.4]), np.array([2.0, 0.5])
    a = backward_weights(gn, linear_losses(ws, x1, y1), [[w] for w in ws])
    b = backward_weights(restored, linear_losses(ws, x1, y1), [[w] for w in ws])
    assert torch.equal(a, b)
    assert torch.equal(gn.log_weights.grad, restored.log_weights.grad)
    assert torch.equal(restored.initial_losses, gn.initial_losses)


def test_zero_loss_and_zero_gradient_tasks_give_no_nan() -> None:
    w_shared = nn.Parameter(torch.randn(3))
    unrelated = nn.Parameter(torch.randn(3))
    gn = GradNorm(num_stacks=1, num_tasks=4)
    opt = torch.optim.RMSprop(gn.parameters(), lr=0.025)
    for step in range(5):
        losses = torch.stack(
            [
                (w_shared**2).sum() * (step + 1),  # ordinary task
                (w_shared * 0.0).sum(),  # loss 0 and gradient 0 (also L(0) = 0)
                (unrelated**2).sum(),  # does not reach W: gradient None
                torch.tensor(2.0),  # constant: no graph at all
            ]
        )[None]
        l_grad = backward_weights(gn, losses, [[w_shared]])
        assert torch.isfinite(l_grad).all()
        grad = gn.log_weights.grad
        assert torch.isfinite(grad).all()
        assert grad[0, 1:].eq(0).all()  # G_t = 0 => zero gradient for those tasks
        opt.step()
        gn.renormalise()
        assert torch.isfinite(gn.weights).all() and (gn.weights > 0).all()
    assert unrelated.grad is None and w_shared.grad is None


def test_all_zero_losses_no_nan() -> None:
    w_shared = nn.Parameter(torch.randn(3))
    gn = GradNorm(num_stacks=1, num_tasks=2)
    losses = torch.stack([(w_shared * 0).sum(), (w_shared * 0).sum()])[None]
    assert torch.isfinite(backward_weights(gn, losses, [[w_shared]])).all()
    assert torch.equal(gn.log_weights.grad, torch.zeros(1, 2))


def test_weight_dict_and_validation() -> None:
    gn = GradNorm(num_stacks=2, num_tasks=3, task_names=("seg", "lm", "roi"))
    with torch.no_grad():
        gn.log_weights[1, 2] = math.log(2.5)
    d = gn.weight_dict()
    assert list(d) == [f"gradnorm/hg{l}/{t}" for l in range(2) for t in ("seg", "lm", "roi")]
    assert d["gradnorm/hg1/roi"] == pytest.approx(2.5)
    assert d["gradnorm/hg0/seg"] == 1.0
    assert list(gn.weight_dict(prefix="w"))[0] == "w/hg0/seg"
    assert [p for p in gn.parameters()] == [gn.log_weights]

    with pytest.raises(ValueError, match="gradnorm.py: alpha has 3"):
        GradNorm(num_stacks=2, num_tasks=3, alpha=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="task names"):
        GradNorm(num_stacks=2, num_tasks=3, task_names=("a", "b"))
    with pytest.raises(ValueError, match=r"losses must have shape \(2, 3\)"):
        gn.total_loss(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="one per hourglass"):
        backward_weights(gn, torch.zeros(2, 3), [[nn.Parameter(torch.zeros(1))]])


def _tiny_net_and_batch(num_stacks: int):
    from lightning_modules.shgn import MultiTaskSHGN

    torch.manual_seed(0)
    net = MultiTaskSHGN(stem_channels=4, stem_residual_channels=8, hourglass_channels=8,
                        num_stacks=num_stacks, depth=2, skip_channels=4, refine_channels=4)
    x = torch.rand(2, 1, 64, 64)
    batch = {"image": x, "seg": (torch.rand(2, 4, 64, 64) > 0.5).float(),
             "lm": torch.rand(2, 2, 64, 64), "roi": torch.rand(2, 1, 64, 64)}
    return net, batch


@pytest.mark.parametrize("num_stacks", [2, 3])
def test_fused_backward_equals_per_task_gradients_then_backward(num_stacks: int) -> None:
    """``backward_fused`` (norms from the network's taps during the one backward) must give the
    norms of ``autograd.grad(losses[l, t], W^l)``, the same weight gradient and ``L_grad`` as
    ``backward_weights`` + ``total_loss(...).backward()``, and bit-identical network gradients;
    with non-uniform weights (the tap gradient carries ``w_t``) over two steps (L(0) set)."""
    import copy

    from lightning_modules.losses import MultiTaskLoss

    net, batch = _tiny_net_and_batch(num_stacks)
    crit = MultiTaskLoss()
    nets = {"old": copy.deepcopy(net), "fused": copy.deepcopy(net)}
    gns = {k: GradNorm(num_stacks, 3, alpha=1.5) for k in nets}
    init = torch.randn(num_stacks, 3, generator=torch.Generator().manual_seed(3))
    for gn in gns.values():
        with torch.no_grad():
            gn.log_weights.copy_(init)
    for step in range(2):
        res = {}
        for k, n in nets.items():
            n.zero_grad(set_to_none=True)
            out = n(batch["image"] * (1 + step))
            losses = crit(out, batch)
            shared = [n.shared_params(l) for l in range(num_stacks)]
            by_hand = torch.stack([torch.stack([
                torch.autograd.grad(losses[l, t], shared[l], retain_graph=True)[0].norm()
                for t in range(3)]) for l in range(num_stacks)])
            if k == "old":
                l_grad = backward_weights(gns[k], losses, shared)
                gns[k].total_loss(losses).backward()
            else:
                taps = out.gradnorm_taps(crit.task_names)
                assert taps is not None
                l_grad = gns[k].backward_fused(losses, taps, shared)
            w = gns[k].weights
            # log_weights.grad = sign(.) * w * n: recover n and compare with autograd by hand
            torch.testing.assert_close(gns[k].log_weights.grad.abs() / w, by_hand,
                                       rtol=1e-5, atol=0)
            res[k] = (l_grad, gns[k].log_weights.grad.clone(),
                      {name: p.grad.clone() for name, p in n.named_parameters()})
        torch.testing.assert_close(res["fused"][0], res["old"][0], rtol=1e-5, atol=0)
        torch.testing.assert_close(res["fused"][1], res["old"][1], rtol=1e-5, atol=0)
        assert res["fused"][2].keys() == res["old"][2].keys()
        for name, g in res["old"][2].items():
            assert torch.equal(res["fused"][2][name], g), name
        assert torch.equal(gns["fused"].initial_losses, gns["old"].initial_losses)


def test_fused_backward_uses_given_backward_and_validates_taps() -> None:
    from lightning_modules.losses import MultiTaskLoss

    net, batch = _tiny_net_and_batch(2)
    crit = MultiTaskLoss()
    out = net(batch["image"])
    losses = crit(out, batch)
    shared = [net.shared_params(l) for l in range(2)]
    gn = GradNorm(2, 3)
    taps = out.gradnorm_taps(crit.task_names)
    with pytest.raises(ValueError, match="taps must be"):
        gn.backward_fused(losses, taps[:1], shared)
    calls = []

    def backward(total: torch.Tensor) -> None:
        calls.append(float(total))
        total.backward()

    gn.backward_fused(losses, taps, shared, backward=backward)
    assert calls == [pytest.approx(float(losses.detach().sum()))]  # weights 1 at start
    assert gn.log_weights.grad is not None and (gn.log_weights.grad != 0).all()
    assert all(p.grad is not None for p in net.parameters())
    # hooks removed: a second backward through a fresh graph leaves log_weights.grad alone
    before = gn.log_weights.grad.clone()
    crit(net(batch["image"]), batch).sum().backward()
    assert torch.equal(gn.log_weights.grad, before)
