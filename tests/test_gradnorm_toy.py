"""External check: the toy regression of the GradNorm paper (Chen et al. 2018, section 4).

Task i regresses ``sigma_i * tanh((B + eps_i) x)`` with ``x ~ N(0, I_250)``, 100 outputs per task,
``B`` and ``eps_i`` with entries from N(0, 10^2) and N(0, 3.5^2). A 4-layer, 100-unit ReLU trunk
(the 4th layer is ``W``, the last shared layer) feeds one linear head per task; squared loss;
alpha = 0.12. The network is trained with Adam (lr 1e-3), the GradNorm weights with RMSProp at
lr 0.025 (the weight optimiser of this project, docs/ARCHITECTURE.md). Fixed seed, a fixed
training set of 5,000 samples, batch 100, 500 steps (kept small for CI time on 2 cores).

(a) T = 10, sigma linearly spread over [1, 100]: GradNorm ends with a lower task-normalised test
    loss ``sum_i L_i / L_i(0)`` than equal weights, and ``spearman(w, sigma) <= -0.9``.
(b) T = 2, sigma = (1, 100): the small-scale task's weight ends above the large-scale one's and
    both stay positive at every step; the paper's literal additive update (reimplemented here)
    drives the large-scale weight to or through zero, which is why ``GradNorm`` uses log weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from gradnorm_reference import backward_weights
from scipy.stats import spearmanr
from torch import nn

from lightning_modules.gradnorm import GradNorm

D_IN, D_OUT, HIDDEN = 250, 100, 100
N_TRAIN, N_TEST, BATCH, STEPS = 5000, 2000, 100, 500
ALPHA, NET_LR, WEIGHT_LR, SEED = 0.12, 1e-3, 0.025, 0


class ToyNet(nn.Module):
    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(D_IN, HIDDEN), nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
        )  # fmt: skip
        self.shared = nn.Linear(HIDDEN, HIDDEN)  # W: 4th and last shared layer
        self.heads = nn.ModuleList(nn.Linear(HIDDEN, D_OUT) for _ in range(num_tasks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.shared(self.trunk(x)))
        return torch.stack([head(h) for head in self.heads])  # (T, N, D_OUT)


@dataclass
class ToyResult:
    normalised_test_loss: float  # sum_i L_i(end) / L_i(0), on the test set
    weights: np.ndarray  # (T,) at the end
    min_weight: float  # smallest weight seen at any step


def rounded(values: np.ndarray, digits: int) -> list[float]:
    return [round(float(v), digits) for v in values]


def task_losses(net: ToyNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((net(x) - y) ** 2).mean(dim=(1, 2))  # (T,)


def run_toy(sigmas: Sequence[float], mode: str) -> ToyResult:
    """Train the toy with ``mode`` in {"gradnorm", "equal", "literal"} from one fixed seed."""
    num_tasks = len(sigmas)
    gen = torch.Generator().manual_seed(SEED)
    b = 10.0 * torch.randn(D_OUT, D_IN, generator=gen)
    eps = 3.5 * torch.randn(num_tasks, D_OUT, D_IN, generator=gen)
    sig = torch.tensor(sigmas, dtype=torch.float32)[:, None, None]

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, D_IN, generator=gen)
        return x, sig * torch.tanh(torch.einsum("nd,tod->tno", x, b + eps))

    x_test, y_test = sample(N_TEST)
    x_train, y_train = sample(N_TRAIN)
    torch.manual_seed(SEED)  # same network init for every mode
    net = ToyNet(num_tasks)
    net_opt = torch.optim.Adam(net.parameters(), lr=NET_LR)
    with torch.no_grad():
        test_l0 = task_losses(net, x_test, y_test)

    gn = GradNorm(num_stacks=1, num_tasks=num_tasks, alpha=ALPHA)
    literal_w = nn.Parameter(torch.ones(num_tasks))  # paper's additive update, no positivity
    weight_params = [literal_w] if mode == "literal" else list(gn.parameters())
    weight_opt = torch.optim.RMSprop(weight_params, lr=WEIGHT_LR)
    shared = list(net.shared.parameters())
    literal_l0 = None
    min_weight = float("inf")
    batches = torch.Generator().manual_seed(SEED + 1)
    for _ in range(STEPS):
        idx = torch.randint(0, N_TRAIN, (BATCH,), generator=batches)
        losses = task_losses(net, x_train[idx], y_train[:, idx])
        net_opt.zero_grad()
        if mode == "equal":
            losses.sum().backward()
        elif mode == "gradnorm":
            backward_weights(gn, losses[None], [shared])
            gn.total_loss(losses[None]).backward()
        else:  # literal: grad_w L_grad = sign(G - target) * ||grad_W L_t||, then w <- T w / sum w
            grads = [torch.autograd.grad(lt, shared, retain_graph=True) for lt in losses]
            norms = torch.stack([torch.cat([g.flatten() for g in gs]).norm() for gs in grads])
            literal_l0 = losses.detach() if literal_l0 is None else literal_l0
            w = literal_w.detach()
            ratio = losses.detach() / literal_l0
            target = (w * norms).mean() * (ratio / ratio.mean()) ** ALPHA
            literal_w.grad = torch.sign(w * norms - target) * norms
            (w * losses).sum().backward()
        net_opt.step()
        if mode != "equal":
            weight_opt.step()
            weight_opt.zero_grad()
            if mode == "gradnorm":
                gn.renormalise()
                min_weight = min(min_weight, gn.weights.min().item())
            else:
                with torch.no_grad():
                    min_weight = min(min_weight, literal_w.min().item())
                    literal_w.mul_(num_tasks / literal_w.sum())
    with torch.no_grad():
        test_end = task_losses(net, x_test, y_test)
    weights = literal_w.detach() if mode == "literal" else gn.weights[0]
    return ToyResult(float((test_end / test_l0).sum()), weights.numpy().copy(), min_weight)


@pytest.mark.slow
def test_toy_ten_tasks_gradnorm_beats_equal_weights_and_orders_weights() -> None:
    sigmas = np.linspace(1.0, 100.0, 10)
    gradnorm = run_toy(sigmas, "gradnorm")
    equal = run_toy(sigmas, "equal")
    rho = spearmanr(gradnorm.weights, sigmas).statistic
    print(
        f"\n[toy T=10] task-normalised test loss: GradNorm {gradnorm.normalised_test_loss:.4f}, "
        f"equal weights {equal.normalised_test_loss:.4f}; spearman(w, sigma) = {rho:.3f}\n"
        f"  sigma {np.round(sigmas, 1).tolist()}\n  w     {rounded(gradnorm.weights, 3)}"
        f"\n  min weight over training {gradnorm.min_weight:.4f}"
    )
    assert gradnorm.normalised_test_loss < equal.normalised_test_loss
    assert rho <= -0.9
    assert gradnorm.min_weight > 0
    assert gradnorm.weights.sum() == pytest.approx(10.0, rel=1e-5)


@pytest.mark.slow
def test_toy_two_tasks_small_scale_weight_ends_larger_and_stays_positive() -> None:
    gradnorm = run_toy([1.0, 100.0], "gradnorm")
    literal = run_toy([1.0, 100.0], "literal")
    print(
        f"\n[toy T=2, sigma=(1, 100)] GradNorm w = {rounded(gradnorm.weights, 4)}, "
        f"min over training {gradnorm.min_weight:.4f}; paper's literal additive update: "
        f"final w = {rounded(literal.weights, 4)}, min over training "
        f"{literal.min_weight:.4f}"
    )
    assert gradnorm.weights[0] > gradnorm.weights[1]
    assert gradnorm.min_weight > 0
    assert gradnorm.weights.sum() == pytest.approx(2.0, rel=1e-5)
    # the known failure that the log parametrisation avoids: the literal update leaves w > 0
    assert literal.min_weight <= 0
