"""Does the plan lean on a blank (shuttered) region that cuts the distal femur? Show it as soft
tissue and plan again.

Red-team round 10: an electronic shutter (a black, exactly flat region) whose edge runs 5-8 mm
behind the Schoettle point cuts away the posterior condyles. The network read the rest of the
femur back to front (LM1 on the anterior cortex, the "patella" at the shutter's edge) and the
plan went 34-40 mm off, unflagged: TTA and the hourglasses agree because the shutter does not
move with the augmentations, and the model does not put the femur on the blank pixels, so
``unexposed`` sees nothing. The same knees' unperturbed plans were flagged: the black edge made
an unsure reading confident. With the blank region shown at the soft tissue's level (as a grey
shutter, which the gate flagged in 64 of 72 plans) p_tmc moved 34-43 mm in each of the 7.

A blank region is flat (5 x 5 px standard deviation at most ``PLATEAU_STD`` of the range, as
metal in ``planning.ood``) and at the image's bottom (``EXTREME`` of the range), comes within
``NEAR_MM`` of the distal femur (within one condyle width of its end) with at least
``MIN_SIZE_MM`` squared (100 mm^2) of it within twice that, and has bone at its edge for
``EDGE_MM`` there or next to any other predicted bone within a condyle width of the femur's end
(a model may call cut condyles tibia): a shutter cuts through the knee. Air beyond the skin,
often clipped black too, meets soft tissue; filled, it made a clean knee's limb look longer and
its plan move 32 mm, which is why the edge must be bone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import cv2
import numpy as np

from geometry.lines import fit_line_tls
from planning.metal_out import replan_shift
from planning.ood import EXTREME, PLATEAU_STD, FemurShape, small_size

NEAR_MM = 5.0  # a blank region this close to the distal femur is filled (the predicted femur
# stopped 2.4 mm short of a shutter's edge in round 10)
MIN_SIZE_MM = 10.0  # its square (mm^2) of the region at the femur: a shutter, not text or a nick
MARGIN_PX = 4  # the region grown by this much before filling: the flat test's window and the
# edge's blur
RING = 0.03  # soft tissue: a ring of this fraction of the image's long side around the bones
EDGE_MM = 5.0  # bone along at least this much of the region's edge: it cuts through the knee
CUT_REACH_MM = 3.0  # straight_cut_mm: the blank's edge this close to the femur cuts it (the
# predicted femur stopped 2.4 mm short of a shutter in round 10)
STRAIGHT_MM = 1.0  # a shutter's edge fits a line within this RMS (black soft tissue: >= 2 mm)
CUT_MM = 3.0  # straight_cut_mm ignores pieces of edge shorter than this (the review's
# max_blank_cut_mm decides what length flags)
CUT_BONE = 0.5  # bone at a cut: the image just inside it this far from the blank to the bone
EXTEND_MM = 10.0  # a shutter's edge goes on this far past the bone it cuts (straight_cut_mm)
EDGE_AGREE = 0.8  # ... as an edge (blank on one side only) at this fraction of the samples
FRAME = 0.06  # an edge this close to the image's border (of its side) frames the image:
# a femur leaving through a black frame or padding is treated as one leaving through the edge


def blank_next_to_femur(
    image: np.ndarray, masks: np.ndarray, shape: FemurShape, mm_per_px: float,
    bright: bool = False,
) -> tuple[np.ndarray, float] | None:
    """(mask, level): the blank regions next to the distal femur (uint8 (H, W), grown by
    ``MARGIN_PX``) and the soft tissue's level to show them at (the median of the unblank
    pixels in a ring around the bones); None when there is none, or no soft tissue to take
    the level from. ``masks``: (4, H, W) bool bones in ``BONES`` order. Flatness is judged at
    full resolution (a downscaled copy averages noise away); the regions are chosen on a copy
    of at most ``planning.ood.MAX_SIDE`` px (a 4000 px image took 14 s at full resolution).
    ``bright``: blank regions at the image's top instead (a white shutter, an unexposed plate
    shown without masking); the bone at their edge and the level are read as for black ones."""
    img = np.asarray(image, np.float32)
    h, w = img.shape
    if not (np.isfinite(mm_per_px) and mm_per_px > 0) or shape.condyle_width_px <= 0:
        return None
    size = small_size(h, w)
    small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    sel, ssel = (-img, -small) if bright else (img, small)  # (a bright blank: the negative's)
    # the range: the bottom is the blank's own value; the top from the averaged copy's 99.9th
    # percentile, so that one hot pixel does not widen "dark" and "flat" to soft tissue
    lo, hi = float(sel.min()), float(np.percentile(ssel, 99.9))
    span = max(hi - lo, 1e-6)
    dark = sel <= lo + EXTREME * span
    if np.count_nonzero(dark) < (MIN_SIZE_MM / mm_per_px) ** 2:  # too few for one region
        return None
    mean = cv2.blur(img, (5, 5), borderType=cv2.BORDER_REFLECT)
    var = cv2.blur(img * img, (5, 5), borderType=cv2.BORDER_REFLECT) - mean * mean
    blank = (dark & (var <= (PLATEAU_STD * span) ** 2)).astype(np.uint8)
    f = w / size[0]  # original px per small px
    mmpp = mm_per_px * f
    sblank = (cv2.resize(blank, size, interpolation=cv2.INTER_AREA) > 0).astype(np.uint8)
    bones = np.stack([cv2.resize(np.asarray(m, np.uint8), size, interpolation=cv2.INTER_NEAREST)
                      for m in masks]) > 0  # fmt: skip
    femur = bones[0]
    n, labels, stats, _ = cv2.connectedComponentsWithStats(sblank, 8)
    ys, xs = np.nonzero(femur)
    if n < 2 or not len(xs):
        return None
    keep = (_original_px(xs, ys, f) - shape.distal_end) @ shape.proximal_dir <= (
        shape.condyle_width_px)
    distal = np.zeros(size[::-1], np.uint8)
    distal[ys[keep], xs[keep]] = 1
    reach = min(max(1, int(round(NEAR_MM / mmpp))), max(size))  # (a 0.01 mm/px tag)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1,) * 2)
    near = cv2.dilate(distal, disc)
    # the region must be large AT the femur (within twice NEAR_MM), not a small black nick at
    # the bone that joins the air around the limb
    wide = cv2.dilate(near, disc)
    ids = np.unique(labels[(near > 0) & (sblank > 0)])
    ids = ids[ids > 0]
    if len(ids):
        at_femur = np.bincount(labels[wide > 0], minlength=n)
        ids = ids[at_femur[ids] >= (MIN_SIZE_MM / mmpp) ** 2]
    if not len(ids):
        return None
    chosen = np.isin(labels, ids).astype(np.uint8)
    side = max(3, int(round(RING * max(size))))
    anybone = np.any(bones, axis=0).astype(np.uint8)
    ring = cv2.dilate(anybone, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * side + 1,) * 2))
    g = 2 * max(1, int(np.ceil(3 / f))) + 1  # past the edge's blur: >= 3 original px
    grown = cv2.dilate(chosen, np.ones((g, g), np.uint8))
    soft = (ring > 0) & (anybone == 0) & (grown == 0) & (sblank == 0)
    if np.count_nonzero(soft) < 25:
        return None
    level = float(np.median(small[soft]))
    # A shutter cuts through the knee: bone lies right at its edge. Air outside the limb, also
    # clipped black, meets skin and soft tissue (filled, it made a clean knee's limb look
    # longer and its plan move 32 mm). So the bone (brighter than halfway from the soft tissue
    # to the femur's median) must touch the region for at least EDGE_MM next to the femur.
    # Also next to any other bone at the knee (within a condyle width of the femur's distal
    # end): a collimator corner that cuts the condyles away leaves an epiphysis the model may
    # call tibia (red-team round 13: a plan 36 mm off, its femur ending at the physis, had no
    # bone at the blank within NEAR_MM of its predicted femur, only dark soft tissue).
    ky, kx = np.nonzero(anybone)
    knee = np.zeros_like(distal)
    knee[ky, kx] = np.linalg.norm(_original_px(kx, ky, f) - shape.distal_end, axis=1) <= (
        shape.condyle_width_px)
    knee = cv2.dilate(knee, disc)
    band = (cv2.dilate(grown, np.ones((3, 3), np.uint8)) > 0) & (grown == 0) & (
        (near > 0) | (knee > 0))
    bone = small >= 0.5 * (level + float(np.median(small[femur])))
    if np.count_nonzero(band & bone) < EDGE_MM / mmpp:
        return None
    # back to full resolution: the blank pixels of the chosen regions, grown by MARGIN_PX
    up = cv2.resize(chosen, (w, h), interpolation=cv2.INTER_NEAREST)
    up = cv2.dilate(up, np.ones((2 * int(np.ceil(f)) + 1,) * 2, np.uint8))
    mask = cv2.dilate(up & blank, np.ones((2 * MARGIN_PX + 1,) * 2, np.uint8))
    return mask, level


def _original_px(xs: np.ndarray, ys: np.ndarray, f: float) -> np.ndarray:
    """(N, 2) original-pixel (x, y) of pixel centres of a copy ``f`` times smaller."""
    return np.stack([(xs + 0.5) * f - 0.5, (ys + 0.5) * f - 0.5], 1)


def straight_cut_mm(
    image: np.ndarray, blank: np.ndarray, femur: np.ndarray, mm_per_px: float
) -> float:
    """Length (mm) of the longest straight piece of the edge of ``blank`` (uint8 (H, W),
    ``blank_next_to_femur``'s mask; only its blank pixels count, not the margin it was grown
    by) that cuts the ``femur``: a connected piece of that edge within ``CUT_REACH_MM`` of the
    femur mask that fits a line within ``STRAIGHT_MM`` RMS with bone right at it (the image
    0.5-1.5 mm inside, away from the blank, at least ``CUT_BONE`` of the way from the blank's
    level to the bone 3-6 mm inside). 0 when there is none: black soft tissue around a knee
    follows the bone's curved outline, or runs straight at a distance from it with dark tissue
    between. A piece within ``FRAME`` of the image's border is a frame (padding, a scanned
    film's border) and is passed over, as a femur leaving through the image's edge is. The edge
    must go on straight past the bone (``_runs_on``): black soft tissue against a straight
    stretch of the bone's outline (the shaft's cortex) ends or turns with it. A piece
    that bends (an L-shaped shutter corner at the condyles) is not straight: not counted.
    Lengths use the mean pixel size (non-square pixels: approximate).

    A white blank: pass the negative image (``-image``), for which every test reads the same.

    Red-team round 12: a third model read knees cut by a shutter back to front so firmly that
    the plans made again with the blank filled moved only 2-3 mm (``blank_dependent`` missed
    them); the straight cut through the femur is evidence that does not depend on the model.
    Cost: the femur's bounding box (a distance transform) and the edge's pixels, sorted once.
    """
    img = np.asarray(image, np.float32)
    fem = np.asarray(femur, bool)
    grown = np.asarray(blank, np.uint8) > 0
    if not (np.isfinite(mm_per_px) and mm_per_px > 0) or not grown.any() or not fem.any():
        return 0.0
    h, w = img.shape
    floor = float(np.median(img[grown]))  # the blank's own level
    b = grown & (img <= floor + EXTREME * (float(np.nanmax(img)) - floor))
    reach = CUT_REACH_MM / mm_per_px
    rows, cols = np.flatnonzero(fem.any(axis=1)), np.flatnonzero(fem.any(axis=0))
    pad = int(np.ceil(reach)) + 2
    y0, y1 = max(0, rows[0] - pad), min(h, rows[-1] + pad + 1)
    x0, x1 = max(0, cols[0] - pad), min(w, cols[-1] + pad + 1)
    sub = b[y0:y1, x0:x1].view(np.uint8)
    edge = sub & (cv2.erode(sub, np.ones((3, 3), np.uint8)) == 0).view(np.uint8)
    dist = cv2.distanceTransform((~fem[y0:y1, x0:x1]).view(np.uint8), cv2.DIST_L2, 3)
    edge &= (dist <= reach).view(np.uint8)
    _, labels = cv2.connectedComponents(edge, connectivity=8)
    ys, xs = np.nonzero(edge)
    lab = labels[ys, xs]
    order = np.argsort(lab, kind="stable")  # each piece's pixels together, sorted once
    bounds = np.searchsorted(lab[order], np.arange(1, lab.max(initial=0) + 2))
    sizes = np.diff(bounds)
    best = 0.0
    for i in np.flatnonzero((sizes >= 2) & (sizes * mm_per_px >= CUT_MM)):  # (>= 1 px per px)
        idx = order[bounds[i] : bounds[i + 1]]
        pts = np.column_stack([xs[idx] + x0, ys[idx] + y0]).astype(np.float64)
        x, y = pts[:, 0] / w, pts[:, 1] / h  # (fractions of the image's width and height)
        if np.mean(np.minimum.reduce([x, y, 1 - x, 1 - y])) < FRAME:  # a black frame, padding:
            continue  # as the image's edge
        line = fit_line_tls(pts)
        if np.sqrt(np.mean(line.distance(pts) ** 2)) * mm_per_px > STRAIGHT_MM:
            continue
        probe = pts[:: max(1, len(pts) // 64)]
        inward = line.normal * _away_from(b, probe, line.normal, 3.0 / mm_per_px)
        near = _values(img, probe, inward, np.arange(0.5, 1.6, 0.25) / mm_per_px)
        deep = _values(img, probe, inward, np.arange(3.0, 6.1, 0.5) / mm_per_px)
        if not (near.size and deep.size and np.median(deep) > floor
                and np.median(near) - floor >= CUT_BONE * (np.median(deep) - floor)):
            continue
        along = (pts - line.point) @ line.direction
        if _runs_on(b, line, along.min(), along.max(), mm_per_px):
            best = max(best, float(along.max() - along.min()) * mm_per_px)
    return best


def _runs_on(blank: np.ndarray, line: Any, a0: float, a1: float, mm_per_px: float) -> bool:
    """Whether the blank's edge goes on along ``line`` for ``EXTEND_MM`` past either end of the
    piece [a0, a1] (coordinates along it): a shutter's edge crosses the limb beyond the bone;
    black soft tissue against a straight stretch of the bone's outline ends or turns with it.
    Read 1.5 mm to either side of the line, every pixel: blank on exactly one side for at
    least ``EDGE_AGREE`` of the samples that lie in the image (and at least half of them do)."""
    step = np.arange(1.0, EXTEND_MM / mm_per_px + 1.0)
    side = 1.5 / mm_per_px * line.normal
    for s in (a1 + step, a0 - step):
        c = line.point + s[:, None] * line.direction
        q1, q2 = np.round(c + side).astype(np.int64), np.round(c - side).astype(np.int64)
        ok = np.all((q1 >= 0) & (q2 >= 0) & (q1 < blank.shape[::-1]) & (q2 < blank.shape[::-1]),
                    axis=1)
        if ok.sum() < 0.5 * len(s):
            continue
        one = blank[q1[ok, 1], q1[ok, 0]] != blank[q2[ok, 1], q2[ok, 0]]
        if one.mean() >= EDGE_AGREE:
            return True
    return False


def _away_from(mask: np.ndarray, pts: np.ndarray, normal: np.ndarray, d_px: float) -> int:
    """+1 / -1: the side of ``normal`` where fewer of ``pts`` moved by ``d_px`` land on
    ``mask`` (the blank: the other side is what it cut)."""
    hits = [mask[tuple(q[:, ::-1].T)].mean() if len(q) else 1.0
            for q in (_inside(mask.shape, pts + s * d_px * normal) for s in (1, -1))]
    return 1 if hits[0] <= hits[1] else -1


def _inside(shape: tuple[int, ...], pts: np.ndarray) -> np.ndarray:
    """``pts`` (N, 2) (x, y) rounded to pixels, those outside an image of ``shape`` dropped."""
    q = np.round(pts).astype(np.int64)
    ok = (q[:, 0] >= 0) & (q[:, 1] >= 0) & (q[:, 0] < shape[1]) & (q[:, 1] < shape[0])
    return q[ok]


def _values(img: np.ndarray, pts: np.ndarray, step: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """The image at ``pts`` moved by each ``offsets`` x ``step`` (nearest pixel, in the image)."""
    q = _inside(img.shape, np.concatenate([pts + o * step for o in offsets]))
    return img[q[:, 1], q[:, 0]]


def blank_out_shift(
    image: np.ndarray,
    points: np.ndarray,
    masks: np.ndarray,
    shape: FemurShape,
    mm_per_px: float,
    replan: Callable[[np.ndarray], np.ndarray],
    found: tuple[np.ndarray, float] | None = None,
) -> np.ndarray | None:
    """(N,) distance (px) each of ``points`` moves when the blank regions next to the distal
    femur (``blank_next_to_femur``, or ``found`` when it was already run) are shown at the soft
    tissue's level and ``replan`` (image -> (N, 2) points, NaN where it finds none) runs again;
    NaN where a point is lost. None: no such region, so nothing was re-planned."""
    if found is None:
        found = blank_next_to_femur(image, masks, shape, mm_per_px)
    if found is None:
        return None
    mask, level = found
    filled = np.asarray(image, np.float32).copy()
    filled[mask > 0] = level
    return replan_shift(filled, points, replan)


def with_blank_shift(
    context: Any, plan: Any, module: Any, decode: str = "argmax", line_fit: str = "lstsq",
    zoom: bool = True, codec: Any = None,
) -> Any:
    """``context`` (a ``planning.review.ReviewContext``) with its uncertainty's
    ``blank_shift_px`` measured (``blank_out_shift``, the plan made again by
    ``planning.metal_out.replanner``) and ``blank_cut_mm`` (``straight_cut_mm``). Unchanged
    when there is no uncertainty to add them to, no image, masks or femur, no finite point, or
    no blank region next to the distal femur. Black and white blanks are looked for apart; with
    both, the worse shift per point and the longer cut count. (Run with TTA on only, as
    ``with_metal_shift``.)"""
    from planning.metal_out import replanner  # (looked up at call time: tests stub it)
    from planning.review import mm_per_px
    from planning.tta import plan_points

    points = plan_points(plan)
    if (context.uncertainty is None or context.image is None or context.masks is None
            or not np.all(np.isfinite(points))):
        return context
    evidence = context.evidence()
    if evidence is None or evidence.femur is None:
        return context
    mmpp = mm_per_px(plan, context)[0]
    image = np.asarray(context.image, np.float32)
    # black blanks and, apart, white ones (red-team round 14: a white shutter over the posterior
    # condyles of the signed-distance family, LM1 fitted to its straight edge, 14-15 mm off)
    found = [(bright, f) for bright in (False, True)
             if (f := blank_next_to_femur(image, context.masks, evidence.femur, mmpp,
                                          bright)) is not None]  # fmt: skip
    if not found:
        return context
    replan = replanner(context, plan, module, decode, line_fit, zoom, codec)
    shifts = [blank_out_shift(image, points, context.masks, evidence.femur, mmpp, replan, f)
              for _, f in found]
    # the worse of the two per point (np.max propagates NaN: a point lost counts as the worst)
    shift = np.max(shifts, axis=0)
    cut = max(straight_cut_mm(-image if bright else image, f[0], context.masks[0], mmpp)
              for bright, f in found)
    return replace(context, uncertainty=replace(context.uncertainty, blank_shift_px=shift,
                                                blank_cut_mm=cut))  # fmt: skip
