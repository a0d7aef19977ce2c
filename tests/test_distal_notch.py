"""A bite out of the distal femur (red-team round 10, family 1): a lytic lesion or a dark box
where the posterior cortex runs into the condyle made the predicted femur follow the bite, and
p_tmc slid 10-18 mm along it with nothing else amiss. ``planning.ood.distal_notch`` measures the
deepest dent of the distal femur's outline; ``femur_notch`` flags one deeper than
``max_distal_notch`` condyle widths."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.ndimage import binary_erosion
from scipy.spatial import ConvexHull

from datamodules.phantoms import PhantomConfig, generate_phantom
from planning.ood import NOTCH_REACH, distal_notch, femur_shape
from planning.review import ReviewConfig
from tests.test_ood_round5 import build, codes, knee_masks


def _hull_depth(part: np.ndarray) -> float:
    """Independent measure (scipy, no OpenCV hull): the largest distance from a boundary pixel
    of ``part`` to its convex hull's boundary (px)."""
    boundary = part & ~binary_erosion(part)
    ys, xs = np.nonzero(boundary)
    pts = np.column_stack([xs, ys]).astype(np.float64)
    hull = ConvexHull(pts)
    # each facet: n . x + b <= 0 inside; the distance to the hull's boundary is min over facets
    inside = -(pts @ hull.equations[:, :2].T + hull.equations[:, 2])
    return float(inside.min(axis=1).max())


def _distal_part(femur: np.ndarray) -> tuple[np.ndarray, float]:
    shape = femur_shape(femur)
    ys, xs = np.mgrid[0 : femur.shape[0], 0 : femur.shape[1]]
    along = (xs - shape.distal_end[0]) * shape.proximal_dir[0] + (
        ys - shape.distal_end[1]) * shape.proximal_dir[1]
    return femur & (along < NOTCH_REACH * shape.condyle_width_px), shape.condyle_width_px


def _femur(bite: tuple[int, int, int] | None = None) -> np.ndarray:
    """A shaft (80 px wide) from the top ending in a round condyle (radius 60 px, width
    121 px) that bulges 20 px behind the shaft; ``bite`` (x, y, r) removes a disc."""
    m = np.zeros((420, 320), np.uint8)
    cv2.rectangle(m, (130, 0), (210, 200), 1, -1)
    cv2.circle(m, (170, 250), 60, 1, -1)
    if bite is not None:
        cv2.circle(m, bite[:2], bite[2], 0, -1)
    return m.astype(bool)


@pytest.mark.parametrize("bite", [None, (210, 190, 18), (195, 200, 25), (130, 210, 25),
                                  (230, 250, 20)])
def test_the_depth_matches_an_independent_hull(bite):
    femur = _femur(bite)
    part, width = _distal_part(femur)
    expected = _hull_depth(part) / width
    assert distal_notch(femur, femur_shape(femur)) == pytest.approx(expected, abs=2.0 / width)


def test_a_whole_femur_passes_and_a_bitten_one_does_not():
    limit = ReviewConfig().max_distal_notch
    whole = _femur()
    bitten = _femur((195, 200, 25))  # where the posterior cortex meets the condyle
    assert distal_notch(whole, femur_shape(whole)) < limit
    assert distal_notch(bitten, femur_shape(bitten)) > limit


def test_the_measure_is_scale_free_and_reads_a_small_knee_on_a_big_film():
    femur = _femur((195, 200, 25))
    ref = distal_notch(femur, femur_shape(femur))
    big = np.zeros((4000, 1500), np.uint8)
    big[2000:2420, 600:920] = femur
    # the knee stays 121 px wide on a 4000 px film: read at full resolution, not at 384 px
    assert distal_notch(big.astype(bool), femur_shape(big.astype(bool))) == pytest.approx(
        ref, abs=0.02)
    twice = cv2.resize(femur.astype(np.uint8), None, fx=3, fy=3,
                       interpolation=cv2.INTER_NEAREST).astype(bool)
    assert distal_notch(twice, femur_shape(twice)) == pytest.approx(ref, abs=0.02)


def test_true_femurs_of_every_phantom_mix_stay_under_the_limit():
    """The phantoms' own femur masks (no model): a whole femur is far from the limit."""
    limit = ReviewConfig().max_distal_notch
    depths = []
    for config in ("default", "all_on", "classic"):
        cfg = PhantomConfig.from_yaml(f"configs/phantoms/{config}.yaml", min_side=256,
                                      max_side=384)
        for seed in range(8):
            femur = generate_phantom(7300 + seed, cfg).masks[0].astype(bool)
            depths.append(distal_notch(femur, femur_shape(femur)))
    assert max(depths) < 0.8 * limit, sorted(depths)


def test_the_review_names_the_bite():
    """The hand-built knee of red-team round 5 passes; with a bite behind its p_tmc (the points
    themselves stay on bone) the plan is flagged ``femur_notch``."""
    m = knee_masks()
    plan, ctx = build(m)
    assert "femur_notch" not in codes(plan, ctx)
    bite = np.zeros_like(m["femur"], np.uint8)
    cv2.circle(bite, (152, 108), 18, 1, -1)  # 9 mm at 0.5 mm/px, 22 px above p_tmc (148, 130)
    m["femur"] = m["femur"] & ~bite.astype(bool)
    plan, ctx = build(m)
    found = [r for r in codes(plan, ctx) if r == "femur_notch"]
    assert found, codes(plan, ctx)
