"""Bone missing where the posterior cortex meets the condyle (red-team round 10, family 1): a
lytic lesion or a dark box there made the predicted femur follow the bite, and p_tmc slid
10-18 mm along it with nothing else amiss. ``cortex_bite`` needs two measures to agree:
``planning.ood.cortex_recess_px``, how far the femur's hindmost bone near p_tmc lies in front of
the cortex line LM1 (a whole femur reaches the line whatever its posterior condylar offset), and
``planning.ood.distal_notch``, the deepest dent of the distal femur's outline against its convex
hull (alone it reads a whole femur with a real knee's ~25 mm condylar offset as bitten)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.ndimage import binary_erosion
from scipy.spatial import ConvexHull

from datamodules.phantoms import PhantomConfig
from planning.ood import NOTCH_REACH, cortex_recess_px, distal_notch, femur_shape
from planning.review import ReviewConfig
from tests.test_condylar_offset import truth_bulge_and_recess
from tests.test_ood_round5 import build, codes, knee_masks

X0, YT = 300, 400  # LM1 is the column x = X0 (the femur in front of it, at larger x); p_tmc
UP = np.array([0.0, -1.0])  # the shaft runs up the image


def _femur(offset_px: int = 60, bite: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A shaft (x X0..X0+150) and a condyle disc (radius 110 px, centre 70 px below p_tmc)
    bulging ``offset_px`` behind LM1; ``bite`` (x0, y0, x1, y1) removes a box."""
    m = np.zeros((800, 700), np.uint8)
    cv2.rectangle(m, (X0, 0), (X0 + 150, YT + 70), 1, -1)
    r = 110
    cv2.circle(m, (X0 - offset_px + r, YT + 70), r, 1, -1)
    if bite is not None:
        cv2.rectangle(m, bite[:2], bite[2:], 0, -1)
    return m.astype(bool)


def _hull_depth(part: np.ndarray) -> float:
    """Independent measure (scipy, no OpenCV hull): the largest distance from a boundary pixel
    of ``part`` to its convex hull's boundary (px)."""
    boundary = part & ~binary_erosion(part)
    ys, xs = np.nonzero(boundary)
    pts = np.column_stack([xs, ys]).astype(np.float64)
    hull = ConvexHull(pts)
    inside = -(pts @ hull.equations[:, :2].T + hull.equations[:, 2])  # n.x + b <= 0 inside
    return float(inside.min(axis=1).max())


def _distal_part(femur: np.ndarray) -> tuple[np.ndarray, float]:
    shape = femur_shape(femur)
    ys, xs = np.mgrid[0 : femur.shape[0], 0 : femur.shape[1]]
    along = (xs - shape.distal_end[0]) * shape.proximal_dir[0] + (
        ys - shape.distal_end[1]) * shape.proximal_dir[1]
    return femur & (along < NOTCH_REACH * shape.condyle_width_px), shape.condyle_width_px


def _notch(femur: np.ndarray) -> float:
    return distal_notch(femur, femur_shape(femur))


@pytest.mark.parametrize("bite", [None, (X0 - 70, YT - 80, X0 + 40, YT - 40),
                                  (X0 + 100, YT - 60, X0 + 200, YT - 20)])
@pytest.mark.parametrize("offset_px", [20, 60])
def test_the_dent_matches_an_independent_hull(bite, offset_px):
    """Condyles 121-220 px wide: read at full resolution (the condyles ~100 px wide or more)."""
    femur = _femur(offset_px, bite)
    part, width = _distal_part(femur)
    assert _notch(femur) == pytest.approx(_hull_depth(part) / width, abs=2.0 / width)


def test_the_dent_is_scale_free_and_reads_a_small_knee_on_a_big_film():
    femur = _femur(60, (X0 - 70, YT - 80, X0 + 40, YT - 40))
    small = cv2.resize(femur.astype(np.uint8), None, fx=0.25, fy=0.25,
                       interpolation=cv2.INTER_NEAREST).astype(bool)  # condyles ~55 px wide
    ref = _notch(small)
    big = np.zeros((4000, 1500), bool)
    big[2000 : 2000 + small.shape[0], 600 : 600 + small.shape[1]] = small
    assert _notch(big) == pytest.approx(ref, abs=0.02)  # not read at 384 px (~8 px wide)
    assert _notch(femur) == pytest.approx(ref, abs=0.03)


def test_a_real_knees_condylar_offset_dents_the_hull_but_reaches_the_line():
    """Why the two measures must agree: a whole femur whose condyles bulge as far behind the
    cortex line as a real knee's (25 mm at 0.2 mm/px) dents its hull past the limit, and still
    reaches the line in every slice."""
    cfg = ReviewConfig()
    real = _femur(125)
    assert _notch(real) > cfg.max_distal_notch
    assert _recess(real) == 0.0
    bitten = _femur(60, (X0 - 70, YT - 80, X0 + 40, YT - 40))
    assert _notch(bitten) > cfg.max_distal_notch and _recess(bitten) * 0.2 > 2.0


def _recess(femur: np.ndarray, direction=(0.0, 1.0), side: int | None = None) -> float:
    d = np.asarray(direction, float)
    normal = np.array([-d[1], d[0]])
    side = side if side is not None else (1 if normal[0] > 0 else -1)  # the femur is at +x
    return cortex_recess_px(femur, np.array([X0, 0.0]), d, side, np.array([X0, YT]), UP,
                            (25.0, 100.0), 5.0, max_pixels=10**7)


@pytest.mark.parametrize("offset_px", [20, 60, 125])  # 4, 12 and 25 mm at 0.2 mm/px
def test_a_whole_femur_reaches_the_line_whatever_its_condylar_offset(offset_px):
    assert _recess(_femur(offset_px)) == 0.0


def test_a_bite_is_measured_to_the_pixel():
    """Box x < X0 + 40 removed over 40-80 px above p_tmc: those slices' hindmost bone is the
    column X0 + 41, 41 px in front of the line (hand count, slices 5 px thick)."""
    femur = _femur(bite=(X0 - 70, YT - 80, X0 + 40, YT - 40))
    assert _recess(femur) == 41.0
    # the same beyond the window (more than 100 px proximal or 25 px distal): not counted
    assert _recess(_femur(bite=(X0 - 70, YT - 180, X0 + 40, YT - 110))) == 0.0


@pytest.mark.parametrize("flip", [False, True])
def test_the_line_may_point_either_way(flip):
    femur = _femur(bite=(X0 - 70, YT - 80, X0 + 40, YT - 40))
    direction = (0.0, -1.0) if flip else (0.0, 1.0)
    assert _recess(femur, direction) == 41.0


def test_the_femur_on_the_other_side_is_read_from_that_side():
    """Mirrored: the femur at x < X0 (femur_side the other way) gives the same numbers."""
    femur = _femur(bite=(X0 - 70, YT - 80, X0 + 40, YT - 40))
    mirrored = femur[:, ::-1]
    xm = femur.shape[1] - 1 - X0
    got = cortex_recess_px(mirrored, np.array([xm, 0.0]), np.array([0.0, 1.0]), 1,
                           np.array([xm, YT]), UP, (25.0, 100.0), 5.0, max_pixels=10**7)
    assert got == 41.0


def test_a_big_film_is_read_near_p_tmc_not_with_the_whole_films_stride():
    """Review of session 19: the sampling stride was set by the whole image (a 6000 px film:
    stride 14 px, ~1 mm of the 2 mm limit on a femur whose cortex lies on the line)."""
    big = np.zeros((6000, 6000), bool)
    big[3000:3800, 3000:3700] = _femur()
    got = cortex_recess_px(big, np.array([3000 + X0, 0.0]), np.array([0.0, 1.0]), -1,
                           np.array([3000 + X0, 3000 + YT]), UP, (25.0, 100.0), 5.0)
    assert got <= 1.0


@pytest.mark.parametrize("bad", ["point", "slice", "reach"])
def test_numbers_that_are_not_finite_give_nan_not_an_error(bad):
    femur = _femur()
    point = np.array([np.nan if bad == "point" else X0, 0.0])
    reach = (np.inf, 100.0) if bad == "reach" else (25.0, 100.0)
    got = cortex_recess_px(femur, point, np.array([0.0, 1.0]), -1, np.array([X0, YT]), UP,
                           reach, np.nan if bad == "slice" else 5.0)
    assert np.isnan(got)


def test_no_femur_in_reach_is_nan():
    assert np.isnan(_recess(np.zeros((800, 700), bool)))


@pytest.mark.parametrize("config", ["default", "all_on", "classic"])
def test_true_femurs_reach_their_true_cortex_line(config):
    """The phantoms' own masks, LM1 fitted (numpy SVD) to their cortex points: a whole femur
    stays well under the limit (pixel rounding and the shaft's bow only)."""
    path = Path(__file__).resolve().parents[1] / "configs" / "phantoms" / f"{config}.yaml"
    cfg = PhantomConfig.from_yaml(path, min_side=256, max_side=384)
    limit = ReviewConfig().max_cortex_recess_mm
    worst = max(truth_bulge_and_recess(7400 + seed, cfg)[1] for seed in range(8))
    assert worst < 0.5 * limit, worst


def test_the_review_names_the_bite():
    """The hand-built knee of red-team round 5 passes; with a bite in front of its LM1 above
    p_tmc (the points themselves stay on bone) the plan is flagged ``cortex_bite``."""
    m = knee_masks()
    plan, ctx = build(m)
    assert "cortex_bite" not in codes(plan, ctx)
    bite = np.zeros_like(m["femur"], np.uint8)
    cv2.circle(bite, (152, 108), 18, 1, -1)  # 9 mm at 0.5 mm/px, 22 px above p_tmc (148, 130)
    m["femur"] = m["femur"] & ~bite.astype(bool)
    plan, ctx = build(m)
    assert "cortex_bite" in codes(plan, ctx), codes(plan, ctx)
