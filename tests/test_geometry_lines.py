"""Lines, outlines and the LM1 fit against hand-computed cases and independent optimisation."""

import cv2
import numpy as np
import pytest
from scipy.ndimage import binary_erosion
from scipy.optimize import minimize

from geometry.lines import (
    Line,
    distance_mm,
    femur_outline,
    fit_cortex_line,
    fit_line_tls,
    fit_points,
)


def test_line_basics_by_hand():
    line = Line(np.array([1.0, 2.0]), np.array([2.0, 0.0]))  # y = 2, normal (0, 1)
    np.testing.assert_allclose(line.direction, [1, 0])
    np.testing.assert_allclose(line.signed_distance([[3.0, 6.0], [0.0, -1.0]]), [4.0, -3.0])
    np.testing.assert_allclose(line.foot([5.0, 9.0]), [5.0, 2.0])
    perp = line.perpendicular_through([7.0, 9.0])
    np.testing.assert_allclose(perp.distance([[7.0, -40.0]]), [0.0], atol=1e-12)
    with pytest.raises(ValueError, match="non-zero"):
        Line(np.zeros(2), np.zeros(2))


def test_distance_in_mm_with_anisotropic_spacing():
    vertical = Line.through([10.0, 0.0], [10.0, 100.0])
    # 3 columns at 0.2 mm/col
    assert distance_mm(np.array([[13.0, 50.0]]), vertical, (0.5, 0.2))[0] == pytest.approx(0.6)
    diagonal = Line.through([0.0, 0.0], [10.0, 10.0])
    # spacing (row 1, col 2): in mm the line runs through (0,0), (20,10); (10,0) px -> (20,0) mm,
    # distance |20 * 1 - 0 * 2| / sqrt(5)
    d = distance_mm(np.array([[10.0, 0.0]]), diagonal, (1.0, 2.0))[0]
    assert d == pytest.approx(20 / np.sqrt(5))
    assert distance_mm(np.array([[10.0, 0.0]]), diagonal, None)[0] == pytest.approx(np.sqrt(50))


def test_tls_minimises_orthogonal_distances():
    rng = np.random.default_rng(2)
    t = rng.uniform(-50, 50, 60)
    pts = np.column_stack([3 + 0.1 * t, 40 + t]) + rng.normal(0, 1.0, (60, 2))  # near vertical
    line = fit_line_tls(pts)

    def cost(params):  # independent: angle of the normal and offset
        a, c = params
        return np.sum((pts @ np.array([np.cos(a), np.sin(a)]) - c) ** 2)

    a0 = np.arctan2(line.normal[1], line.normal[0])
    best = min(
        (minimize(cost, [a, c], method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12})
         for a in np.linspace(0, np.pi, 7) for c in (-50.0, 0.0, 50.0)),
        key=lambda r: r.fun,
    )  # fmt: skip
    assert cost([a0, line.normal @ line.point]) <= best.fun + 1e-6
    # exact vertical points: a y-on-x regression would fail, TLS does not
    vert = fit_line_tls(np.column_stack([np.full(10, 5.0), np.arange(10.0)]))
    assert abs(vert.direction[0]) < 1e-12 and vert.distance([5.0, 123.0]) < 1e-12


def test_robust_fit_ignores_outliers():
    rng = np.random.default_rng(3)
    t = np.linspace(0, 100, 70)
    good = np.column_stack([20 + 0.2 * t, t]) + rng.normal(0, 0.2, (70, 2))
    bad = np.column_stack([rng.uniform(45, 70, 30), rng.uniform(70, 100, 30)])  # 5+ px off
    pts = np.concatenate([good, bad])
    robust = fit_points(pts, "robust")
    ls = fit_points(pts, "lstsq")
    ends = np.array([[20.0, 0.0], [40.0, 100.0]])
    assert robust.line.distance(ends).max() < 0.3
    assert ls.line.distance(ends).max() > 2.0
    assert robust.n_support == 70 and ls.n_support == 100
    assert not robust.inliers[70:].any()


def test_outline_of_a_rectangle():
    mask = np.zeros((40, 30), bool)
    mask[10:30, 5:15] = True
    sub = femur_outline(mask)
    # subpixel points sit on the pixel edges: x in {4.5, 14.5} or y in {9.5, 29.5}
    on_edge = np.isin(sub[:, 0], [4.5, 14.5]) | np.isin(sub[:, 1], [9.5, 29.5])
    assert on_edge.all() and len(sub) == 2 * (20 + 10)
    pix = femur_outline(mask, subpixel=False)
    boundary = mask & ~binary_erosion(mask, np.ones((3, 3)))
    expected = {(x, y) for y, x in zip(*np.nonzero(boundary), strict=True)}
    assert {tuple(p) for p in pix.astype(int)} == expected
    # a stray blob is dropped with largest_only
    mask[0:2, 25:27] = True
    assert len(femur_outline(mask)) == 2 * (20 + 10)
    assert len(femur_outline(np.zeros((5, 5)))) == 0


def edge_case(antialiased: bool):
    """Half-plane femur with a slanted posterior edge x = 60 + 0.15 (y - 20), ROI on y in 30..90."""
    h, w = 128, 128
    p, q = np.array([60.0, 20.0]), np.array([60.0 + 0.15 * 100, 120.0])
    poly = np.array([p + (q - p) * -1, p + (q - p) * 2, [200.0, 320.0], [200.0, -200.0]])
    if antialiased:
        big = np.zeros((h * 8, w * 8), np.uint8)
        cv2.fillPoly(big, [np.round((poly + 0.5) * 8 * 16).astype(np.int32)], 1, shift=4)
        mask = cv2.resize(big.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    else:
        ys, xs = np.mgrid[0:h, 0:w]
        mask = (Line.through(p, q).signed_distance(np.stack([xs, ys], -1)) <= 0).astype(float)
        assert mask[64, 100] == 1  # inside is to the right of the edge
    truth = Line.through(p, q)
    ys, xs = np.mgrid[0:h, 0:w]
    centres = [truth.point + truth.direction * s for s in np.linspace(10, 70, 13)]
    roi = np.max([np.exp(-((xs - c[0]) ** 2 + (ys - c[1]) ** 2) / 72.0) for c in centres], 0)
    return mask, roi, truth, np.stack([centres[0], centres[-1]])


@pytest.mark.parametrize("antialiased", [False, True])
@pytest.mark.parametrize("method", ["lstsq", "robust"])
def test_lm1_recovers_a_straight_edge(antialiased, method):
    mask, roi, truth, ends = edge_case(antialiased)
    fit = fit_cortex_line(mask, roi, method=method)
    assert fit.n_support >= 40
    tol = 0.05 if antialiased else 0.15
    assert fit.line.distance(ends).max() < tol
    # pixel-centre outline is biased by half a pixel into the bone
    pix = fit_cortex_line(mask, roi, subpixel=False)
    assert 0.3 < np.mean(truth.distance(pix.line.foot(ends))) < 0.7


def test_no_overlap_gives_no_line():
    mask, roi, _, _ = edge_case(False)
    fit = fit_cortex_line(mask, np.zeros_like(roi))
    assert fit.line is None and fit.n_support == 0


def test_fit_line_tls_matches_polyfit_for_noisy_points():
    rng = np.random.default_rng(3)
    x = np.linspace(0, 50, 12)
    y = 0.3 * x + 7 + rng.normal(0, 0.01, x.size)
    line = fit_line_tls(np.column_stack([x, y]))
    slope, intercept = np.polyfit(x, y, 1)
    assert line.direction[1] / line.direction[0] == pytest.approx(slope, abs=1e-3)
    assert line.point[1] == pytest.approx(slope * line.point[0] + intercept, abs=1e-3)


def test_clip_to_image_box():
    a, b = Line(np.array([10.0, 10.0]), np.array([1.0, 1.0])).clip_to_box(h=50, w=100)
    np.testing.assert_allclose(sorted([a.tolist(), b.tolist()]), [[0.0, 0.0], [49.0, 49.0]])
    assert Line(np.array([0.0, 80.0]), np.array([1.0, 0.0])).clip_to_box(h=50, w=100) is None
    # vertical line inside the box: spans all rows
    a, b = Line(np.array([3.0, 7.0]), np.array([0.0, -2.0])).clip_to_box(h=20, w=10)
    np.testing.assert_allclose(sorted([a.tolist(), b.tolist()]), [[3.0, 0.0], [3.0, 19.0]])


def test_sample_bilinear_equals_scipy_map_coordinates():
    """Written out in numpy (the plan path imports no scipy.ndimage): the values of
    map_coordinates(order=1, mode="constant"), inside, on the last row/column and outside."""
    from scipy.ndimage import map_coordinates

    from geometry.lines import sample_bilinear

    rng = np.random.default_rng(0)
    img = rng.random((37, 53))
    pts = np.concatenate([
        rng.uniform(-3, 56, (500, 2)),
        [[0, 0], [52, 36], [52, 0], [0, 36], [51.5, 35.5], [52.0001, 10], [-1e-9, 5], [26.25, 36]],
    ])  # fmt: skip
    want = map_coordinates(img, [pts[:, 1], pts[:, 0]], order=1, mode="constant")
    np.testing.assert_allclose(sample_bilinear(img, pts), want, atol=1e-12)
    assert sample_bilinear(img, np.empty((0, 2))).shape == (0,)
