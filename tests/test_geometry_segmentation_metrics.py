"""IoU, ASD and HD in mm against torchmetrics, scipy's directed_hausdorff and brute force."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import cdist, directed_hausdorff
from torchmetrics.classification import MultilabelJaccardIndex

from geometry.segmentation_metrics import (
    average_surface_distance,
    hausdorff_distance,
    iou,
    segmentation_metrics,
    surface,
)


def random_masks(rng, c: int, h: int, w: int) -> np.ndarray:
    noise = gaussian_filter(rng.normal(size=(c, h, w)), sigma=(0, 3, 3))
    return noise > rng.uniform(-0.05, 0.1, (c, 1, 1))


def surface_points_mm(mask: np.ndarray, spacing) -> np.ndarray:
    """Independent surface: pixels with a 4-neighbour outside (or on the border), in mm."""
    p = np.pad(mask, 1)
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    rows, cols = np.nonzero(mask & ~inner)
    return np.column_stack([rows * spacing[0], cols * spacing[1]])


@pytest.mark.parametrize("seed", range(4))
def test_hd_asd_against_scipy_and_brute_force(seed):
    rng = np.random.default_rng(seed)
    spacing = (0.7, 0.3) if seed % 2 else (0.25, 0.25)
    pred, true = random_masks(rng, 2, 40, 57)  # non-square on purpose
    a, b = surface_points_mm(pred, spacing), surface_points_mm(true, spacing)
    hd = max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0])
    assert hausdorff_distance(pred, true, spacing) == pytest.approx(hd, rel=1e-9)
    d = cdist(a, b)
    asd = (d.min(1).sum() + d.min(0).sum()) / (len(a) + len(b))
    assert average_surface_distance(pred, true, spacing) == pytest.approx(asd, rel=1e-9)


def test_surface_matches_independent_definition():
    m = random_masks(np.random.default_rng(9), 1, 30, 30)[0]
    np.testing.assert_array_equal(np.argwhere(surface(m)), surface_points_mm(m, (1, 1)))


def test_shifted_square_by_hand():
    a = np.zeros((30, 40), bool)
    a[10:20, 10:20] = True
    b = np.roll(a, 3, axis=1)  # 3 columns right
    assert hausdorff_distance(a, b, (0.5, 0.2)) == pytest.approx(0.6)
    assert hausdorff_distance(a, b) == pytest.approx(3.0)
    assert iou(a, b) == pytest.approx(70 / 130)


def test_multilabel_iou_matches_torchmetrics():
    rng = np.random.default_rng(5)
    pred, true = random_masks(rng, 4, 48, 64), random_masks(rng, 4, 48, 64)
    ours = segmentation_metrics(pred, true, (0.2, 0.2))["iou"]
    tm = MultilabelJaccardIndex(num_labels=4, average="none")
    ref = tm(torch.from_numpy(pred).unsqueeze(0).float(), torch.from_numpy(true).unsqueeze(0))
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6)
    manual = [(p & t).sum() / (p | t).sum() for p, t in zip(pred, true, strict=True)]
    np.testing.assert_allclose(ours, manual)


def test_empty_masks_give_nan():
    z = np.zeros((2, 20, 20), bool)
    full = z.copy()
    full[1, 5:10, 5:10] = True
    m = segmentation_metrics(z, full)
    assert np.isnan(m["iou"][0]) and m["iou"][1] == 0.0
    assert np.isnan(m["asd"]).all() and np.isnan(m["hd"]).all()
    same = segmentation_metrics(full, full, (0.3, 0.1))
    assert same["iou"][1] == 1.0 and same["asd"][1] == 0.0 and same["hd"][1] == 0.0
    with pytest.raises(ValueError, match="shapes"):
        segmentation_metrics(z, z[0])
