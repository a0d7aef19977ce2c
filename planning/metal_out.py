"""Does the plan lean on metal near its points? Paint the metal out and plan again.

Red-team round 9: an interference screw 8-10 mm proximal and posterior of the Schoettle point
(a previous MPFL or ACL reconstruction) hides where the posterior cortex meets the condyle. The
network put p_tmc at the screw's tip and the plan 10-11 mm off, with no point on the metal and
TTA agreeing (the screw does not move with the augmentations). Painted out (OpenCV's
Navier-Stokes inpainting from the pixels around it) and planned again, 7 of those 10 plans
moved more than 5 mm (two were noisy, unclipped screws, which are not found here nor anywhere
in the gate; one moved 4.4 mm). On 408 clean test phantoms the check fired on 4 plans, each
flagged for other reasons too (coverage unchanged).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import cv2
import numpy as np

from planning.ood import saturated_pixels, saturation_levels

NEAR_MM = 10.0  # metal this close to p_blum, p_tmc or the Schoettle point is painted out
MIN_SIZE_MM = 2.0  # a region at least this many mm square (a marker's letter, noise: smaller)
MARGIN_PX = 2  # the region grown by this much before painting (its blurred rim)
# Regions over more than this many mm^2 together: a burnt-out field, not an implant (a TKA
# femoral component is about 60 x 40 mm in a lateral view, a screw 8 x 25 mm). In mm, not as a
# fraction of the image, so the answer does not depend on the field of view.
MAX_PAINTED_MM2 = 50.0 * 50.0


def metal_near(image: np.ndarray, points: np.ndarray, mm_per_px: float) -> np.ndarray | None:
    """(H, W) uint8 mask of the saturated regions (clipped, or a flat plateau high in the
    image's range) of at least ``MIN_SIZE_MM`` square that come within ``NEAR_MM`` of any of
    ``points`` ((N, 2) x, y; non-finite ones skipped), grown by ``MARGIN_PX``; None: none, or
    more than ``MAX_PAINTED_MM2`` together (a burnt-out field, not an implant)."""
    img = np.asarray(image, np.float32)
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if not len(pts) or not (np.isfinite(mm_per_px) and mm_per_px > 0):
        return None
    sat = saturated_pixels(img, saturation_levels(img)).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(sat, 8)
    near = np.zeros(img.shape, np.uint8)  # discs of NEAR_MM around the points
    radius = max(1, int(round(NEAR_MM / mm_per_px)))
    for x, y in pts:
        cv2.circle(near, (int(round(x)), int(round(y))), radius, 1, -1)
    ids = np.unique(labels[(near > 0) & (sat > 0)])
    ids = ids[(ids > 0) & (stats[ids, cv2.CC_STAT_AREA] >= (MIN_SIZE_MM / mm_per_px) ** 2)]
    if not len(ids) or stats[ids, cv2.CC_STAT_AREA].sum() * mm_per_px**2 > MAX_PAINTED_MM2:
        return None
    keep = np.isin(labels, ids).astype(np.uint8)
    return cv2.dilate(keep, np.ones((2 * MARGIN_PX + 1,) * 2, np.uint8))


def metal_out_shift(
    image: np.ndarray,
    points: np.ndarray,
    mm_per_px: float,
    replan: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray | None:
    """(N,) distance (px) each of ``points`` moves when the metal near them (``metal_near``)
    is painted out and ``replan`` (image -> (N, 2) points, NaN where it finds none) runs
    again; NaN where a point is lost. None: no metal near the points, or so much that it is
    not an implant (``MAX_PAINTED_MM2``, ``metal_near``), so nothing was re-planned."""
    mask = metal_near(image, points, mm_per_px)
    if mask is None:
        return None
    img = np.asarray(image, np.float32)
    # Navier-Stokes: OpenCV 5.1's Telea fills float32 images with values far outside the
    # image's range (-1 to 2 where the neighbours are 0.3-0.7), Navier-Stokes does not
    painted = cv2.inpaint(img, mask, max(3, 2 * MARGIN_PX + 1), cv2.INPAINT_NS)
    return replan_shift(painted, points, replan)


def replan_shift(
    changed: np.ndarray, points: np.ndarray, replan: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """(N,) distance (px) each of ``points`` moves when ``replan`` runs on the ``changed``
    image; NaN where a point is lost."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    return np.hypot(*(np.asarray(replan(changed), np.float64).reshape(-1, 2) - pts).T)


def replanner(
    context: Any, plan: Any, module: Any, decode: str = "argmax", line_fit: str = "lstsq",
    zoom: bool = True, codec: Any = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """image -> (3, 2) p_blum, p_tmc and Schoettle point of ``plan`` made again, the same way,
    from a changed image (NaN where a point cannot be constructed). ``zoom``, ``codec``: as
    the plan's maps were made and decoded."""
    from geometry.plan_geometry import plan_from_maps
    from planning.predict import as_predictor, predict_image
    from planning.tta import plan_points

    predictor = as_predictor(module)
    codec = codec or getattr(predictor, "codec", None)  # (as the plan was decoded)

    def replan(painted: np.ndarray) -> np.ndarray:
        maps = predict_image(predictor, painted, zoom=zoom, review_config=context.config)
        again = plan_from_maps(maps.seg, maps.lm, maps.roi, frame=maps.frame,
                               spacing=plan.spacing, decode=decode, line_fit=line_fit,
                               codec=codec)  # fmt: skip
        return plan_points(again)

    return replan


def with_metal_shift(
    context: Any, plan: Any, module: Any, decode: str = "argmax", line_fit: str = "lstsq",
    zoom: bool = True, codec: Any = None,
) -> Any:
    """``context`` (a ``planning.review.ReviewContext``) with its uncertainty's
    ``metal_shift_px`` measured: ``plan`` made again (``replanner``) from the image with the
    metal near its points painted out. Unchanged when there is no uncertainty to add it to, no
    finite point, or no metal near the points. "Near" is sized by the review's own scale
    (``planning.review.mm_per_px``: the spacing, the anatomy or the nominal field). (Run only
    with TTA on, as part of measuring the plan's stability: ``--tta 0`` turns this check off
    too.)"""
    from planning.review import mm_per_px
    from planning.tta import plan_points

    points = plan_points(plan)
    if context.uncertainty is None or context.image is None or not np.all(np.isfinite(points)):
        return context
    replan = replanner(context, plan, module, decode, line_fit, zoom, codec)
    shift = metal_out_shift(context.image, points, mm_per_px(plan, context)[0], replan)
    if shift is None:
        return context
    return replace(context, uncertainty=replace(context.uncertainty, metal_shift_px=shift))
