"""Heat-map targets: Gaussian peak and sigma, invisible landmarks, cortex-line ROI."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import curve_fit
from scipy.spatial import cKDTree

from datamodules.targets import (
    cortex_pseudo_landmarks,
    gaussian_heatmap,
    landmark_heatmaps,
    roi_heatmap,
)


def test_gaussian_peak_is_one_at_the_keypoint_and_one_sigma_is_exp_minus_half():
    hm = gaussian_heatmap(64, (20.0, 30.0), sigma=6.0)
    assert hm.shape == (64, 64) and hm.dtype == np.float32
    assert hm[30, 20] == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(hm), hm.shape) == (30, 20)  # row = y, column = x
    for dy, dx in ((0, 6), (0, -6), (6, 0), (-6, 0)):
        assert hm[30 + dy, 20 + dx] == pytest.approx(math.exp(-0.5), rel=1e-6)
    # full width at half maximum along a row: 2 sqrt(2 ln 2) sigma, from linear interpolation
    row = hm[30].astype(np.float64)
    above = np.nonzero(row >= 0.5)[0]
    left, right = above[0], above[-1]
    x_left = left - (row[left] - 0.5) / (row[left] - row[left - 1])
    x_right = right + (row[right] - 0.5) / (row[right] - row[right + 1])
    assert x_right - x_left == pytest.approx(2 * math.sqrt(2 * math.log(2)) * 6.0, abs=0.05)


def test_gaussian_sigma_recovered_by_independent_fit_off_grid():
    cx, cy, sigma = 17.3, 40.6, 6.0
    hm = gaussian_heatmap((64, 48), (cx, cy), sigma=sigma)
    assert hm.shape == (64, 48)
    ys, xs = np.mgrid[:64, :48]

    def model(xy, a, x0, y0, s):
        x, y = xy
        return a * np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * s**2))

    popt, _ = curve_fit(model, (xs.ravel(), ys.ravel()), hm.ravel(), p0=(0.8, 20, 35, 4))
    np.testing.assert_allclose(popt, (1.0, cx, cy, sigma), atol=1e-4)
    # the grid maximum sits at the nearest pixel with the analytic value
    assert hm.max() == pytest.approx(math.exp(-((17 - cx) ** 2 + (41 - cy) ** 2) / 72), rel=1e-6)


def test_invisible_landmark_has_all_zero_map():
    maps = landmark_heatmaps(np.array([[10.0, 12.0], [-40.0, 5.0]]), [True, False], 32, 3.0)
    assert maps.shape == (2, 32, 32)
    assert maps[0, 12, 10] == pytest.approx(1.0)
    assert not maps[1].any()


def test_pseudo_landmarks_equidistant_on_segment_with_ends():
    pts = cortex_pseudo_landmarks(np.array([[10.0, 30.0], [30.0, 30.0], [50.0, 30.0]]), 4.0)
    xs = np.sort(pts[:, 0])
    np.testing.assert_allclose(xs, np.arange(10.0, 50.1, 4.0), atol=1e-9)
    np.testing.assert_allclose(pts[:, 1], 30.0, atol=1e-9)
    # non-divisible length: spacing never exceeds k, ends kept
    pts = cortex_pseudo_landmarks(np.array([[0.0, 0.0], [30.0, 40.0]]), 4.0)  # length 50
    gaps = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    assert len(pts) == 14 and gaps.max() <= 4.0 + 1e-9 and np.ptp(gaps) < 1e-9


def test_roi_heatmap_equals_brute_force_over_hand_pseudo_landmarks():
    sigma, size = 3.0, 64
    roi = roi_heatmap(np.array([[10.0, 30.0], [50.0, 30.0]]), size, sigma, 4.0, "segment")
    assert roi.shape == (1, size, size)
    hand = np.column_stack([np.arange(10.0, 50.1, 4.0), np.full(11, 30.0)])
    ys, xs = np.mgrid[:size, :size]
    dist, _ = cKDTree(hand).query(np.column_stack([xs.ravel(), ys.ravel()]))
    expected = np.exp(-(dist**2) / (2 * sigma**2)).reshape(size, size)
    np.testing.assert_allclose(roi[0], expected, atol=1e-6)
    assert roi.max() == pytest.approx(1.0)
    assert roi[0, 30 + 3, 30] == pytest.approx(math.exp(-0.5), rel=1e-6)  # 1 sigma off the line
    assert roi[0, 30, 50 + 3] == pytest.approx(math.exp(-0.5), rel=1e-6)  # 1 sigma past the end


def test_roi_default_spacing_is_two_thirds_sigma():
    pts = np.array([[10.0, 30.0], [50.0, 30.0]])
    np.testing.assert_array_equal(roi_heatmap(pts, 64, 6.0), roi_heatmap(pts, 64, 6.0, 4.0))
    np.testing.assert_array_equal(roi_heatmap(pts, 64, 1.5), roi_heatmap(pts, 64, 1.5, 1.0))
    assert roi_heatmap(pts, 64, 1.5)[0, 30, 10:51].min() > 0.94  # ridge ripple < 6 %


def test_roi_image_extent_runs_through_the_whole_image():
    roi = roi_heatmap(np.array([[10.0, 30.0], [50.0, 30.0]]), 64, 3.0, 4.0, "image")
    assert roi[0, 30, 0] == pytest.approx(1.0) and roi[0, 30, 63] == pytest.approx(1.0)
    assert roi[0, 30, 60] > 0.9
    seg = roi_heatmap(np.array([[10.0, 30.0], [50.0, 30.0]]), 64, 3.0, 4.0, "segment")
    assert seg[0, 30, 60] < 0.01
