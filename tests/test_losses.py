"""Losses of eq. (1) and (2) against direct numpy evaluations of the formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_modules.losses import (
    MultiTaskLoss,
    heatmap_mse,
    overlap_indicator,
    weighted_multilabel_bce,
)
from lightning_modules.shgn import SHGNOutput


def numpy_eq1(logits: np.ndarray, y: np.ndarray, beta: float) -> float:
    """Eq. (1) written out literally: log of the sigmoid, float64, no library loss."""
    sig = 1.0 / (1.0 + np.exp(-logits))
    per = -y * np.log(sig) - (1.0 - y) * np.log(1.0 - sig)
    g = (y.sum(axis=1, keepdims=True) > 1).astype(np.float64)
    b, _, h, w = y.shape
    return float(((1.0 + beta * g) * per).sum() / (b * h * w))


def overlap_case() -> tuple[np.ndarray, np.ndarray]:
    """B=2, C=4, H=3, W=2 with single labels, two- and three-fold overlaps and background."""
    y = np.zeros((2, 4, 3, 2))
    y[0, 0] = [[1, 1], [1, 0], [0, 0]]  # femur
    y[0, 1] = [[0, 1], [0, 0], [0, 0]]  # patella overlaps femur at (0, 1)
    y[0, 2] = [[0, 0], [1, 1], [1, 0]]  # tibia overlaps femur at (1, 0)
    y[0, 3] = [[0, 0], [1, 0], [1, 1]]  # fibula: three labels at (1, 0), two at (2, 0)
    y[1, 2] = [[1, 0], [0, 0], [0, 1]]
    y[1, 3] = [[1, 0], [0, 0], [0, 0]]  # tibia + fibula at (0, 0)
    rng = np.random.default_rng(4)
    logits = rng.normal(0.0, 2.0, size=y.shape)
    return logits, y


def test_overlap_indicator_marks_pixels_with_more_than_one_label() -> None:
    _, y = overlap_case()
    g = overlap_indicator(torch.from_numpy(y)).numpy()[:, 0]
    expected = np.zeros((2, 3, 2))
    expected[0, 0, 1] = expected[0, 1, 0] = expected[0, 2, 0] = expected[1, 0, 0] = 1
    np.testing.assert_array_equal(g, expected)


@pytest.mark.parametrize("beta", [0.0, 0.6, 2.5])
def test_eq1_equals_numpy_formula_on_overlap_case(beta: float) -> None:
    logits, y = overlap_case()
    got = weighted_multilabel_bce(torch.from_numpy(logits), torch.from_numpy(y), beta)
    assert got.item() == pytest.approx(numpy_eq1(logits, y, beta), rel=1e-12)


def test_eq1_hand_computed_single_pixel_divides_by_bhw_not_c() -> None:
    # one pixel, 4 bones, two labels true -> g = 1; logits 0 -> every BCE term is log 2.
    y = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 4, 1, 1)
    got = weighted_multilabel_bce(torch.zeros(1, 4, 1, 1), y, beta=0.6)
    assert got.item() == pytest.approx(1.6 * 4 * math.log(2.0), rel=1e-6)


def test_eq1_gradient_is_weighted_sigmoid_residual() -> None:
    logits, y = overlap_case()
    x = torch.from_numpy(logits).requires_grad_(True)
    weighted_multilabel_bce(x, torch.from_numpy(y), 0.6).backward()
    g = (y.sum(axis=1, keepdims=True) > 1).astype(np.float64)
    expected = (1.0 + 0.6 * g) * (1.0 / (1.0 + np.exp(-logits)) - y) / (2 * 3 * 2)
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-10, atol=1e-15)


def test_eq1_is_stable_for_extreme_logits() -> None:
    y = torch.tensor([0.0, 1.0, 1.0, 0.0]).view(1, 4, 1, 1)
    logits = torch.tensor([200.0, -200.0, 200.0, -200.0]).view(1, 4, 1, 1)
    got = weighted_multilabel_bce(logits, y, beta=0.6)
    # wrong with confidence 200 on channels 0 and 1 (BCE ~ 200 each), right on 2 and 3; g = 1.
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(1.6 * 400.0, rel=1e-6)


def test_eq2_equals_numpy_mean_over_bchw() -> None:
    rng = np.random.default_rng(0)
    pred, target = rng.random((2, 2, 5, 3)), rng.random((2, 2, 5, 3))
    got = heatmap_mse(torch.from_numpy(pred), torch.from_numpy(target))
    expected = ((pred - target) ** 2).sum() / (2 * 2 * 5 * 3)
    assert got.item() == pytest.approx(float(expected), rel=1e-12)


def test_shape_mismatch_is_reported() -> None:
    with pytest.raises(ValueError, match="losses.py"):
        heatmap_mse(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4))


def test_multitask_loss_is_per_hourglass_per_task_in_task_order() -> None:
    logits, y = overlap_case()
    rng = np.random.default_rng(1)
    batch = {
        "seg": torch.from_numpy(y),
        "lm": torch.from_numpy(rng.random((2, 2, 3, 2))),
        "roi": torch.from_numpy(rng.random((2, 1, 3, 2))),
    }
    stacks = [
        {
            "seg": torch.from_numpy(logits * (l + 1)),
            "lm": torch.from_numpy(rng.random((2, 2, 3, 2))),
            "roi": torch.from_numpy(rng.random((2, 1, 3, 2))),
        }
        for l in range(3)
    ]
    crit = MultiTaskLoss(beta=0.6, task_losses={"roi": "mse", "seg": "weighted_bce", "lm": "mse"})
    assert crit.task_names == ["roi", "seg", "lm"]
    losses = crit(SHGNOutput(stacks=stacks), batch)
    assert losses.shape == (3, 3)
    for l, s in enumerate(stacks):
        mse = {k: ((s[k].numpy() - batch[k].numpy()) ** 2).mean() for k in ("lm", "roi")}
        expected = [mse["roi"], numpy_eq1(s["seg"].numpy(), y, 0.6), mse["lm"]]
        np.testing.assert_allclose(losses[l].numpy(), expected, rtol=1e-12)


def test_multitask_loss_reports_missing_targets() -> None:
    out = SHGNOutput(stacks=[{"seg": torch.zeros(1, 4, 2, 2)}])
    with pytest.raises(KeyError, match="lm"):
        MultiTaskLoss()(out, {"seg": torch.zeros(1, 4, 2, 2)})
    with pytest.raises(ValueError, match="unknown loss"):
        MultiTaskLoss(task_losses={"seg": "dice"})
