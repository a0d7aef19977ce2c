"""A second knee in the image: the plan is of one of two, and the image cannot say which of them
is to be operated on.

Red-team round 13 (README): on side-by-side (bilateral) films, 24 of 816 plans passed the gate
and were of the knee beside the one annotated, each right for that knee. The whole image's pass
shows both knees small and the model segments one of them. :func:`second_knee` looks again
through square windows at the planned knee's scale (its condyles ``planning.zoom.CONDYLE_TARGET``
of the side, as in training), tiled over the image with half a window's overlap. In each window
the femur pieces that touch the planned femur are dropped; what is left is a second knee when it
is femur-like (``planning.zoom.femur_like``), its condyles ``WIDTH_RATIO`` times as wide as the
planned ones and their centre more than ``MIN_APART`` planned condyle widths from theirs, with a
tibia within ``MAX_TIBIA_GAP`` of its own condyle widths of its distal end (a knee, not a
femur-shaped strip of plastic or a sphere on a wire), whole in its window, and seen again
through a window centred on it at its own scale (a shape a window's position made is not).

Measured with round 13's 30-minute quick checkpoint and sets (``planning.evaluate``, TTA 8):
on 816 bilateral plans it flags 18 of the 24 unflagged plans of the other knee and 49 of the 67
unflagged plans; on 408 clean phantoms of five families it fired on 3, two flagged anyway and
one a knee planned right where a plastic strip with a sphere on its wire read as a knee. Cost:
about one network pass per clean image (~25 ms for the quick network on one core).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from geometry.frame import WindowResize
from planning.ood import FemurShape, femur_shape
from planning.zoom import CONDYLE_TARGET, MIN_WINDOW_PX, femur_like, window_on

MIN_APART = 1.5  # condyle centres this many planned condyle widths apart: another knee (two
# knees side by side lie at least one knee's depth apart; the planned knee seen again through a
# window that cuts it stays within one)
WIDTH_RATIO = (0.6, 1.6)  # its condyles / the planned ones: a knee of the same film's scale
# (the partner knees of round 13 read 0.7-1.0 through their windows)
MAX_TIBIA_GAP = 1.5  # its tibia this close to its distal end, in its condyle widths (the planned
# knees of 408 clean phantoms: median 0.16, 99th percentile 1.41)
MAX_WINDOWS = 16  # tiling passes at most (plus MAX_CONFIRM): a larger image is tiled with
# larger windows, which show its knees smaller than the training scale
SAME_VIEW = 0.1  # a window this close (of its side) to a view already computed reuses its maps
MAX_CONFIRM = 2  # distinct candidates looked at again (most central first), one pass each
CONFIRM_WITHIN = 0.5  # ... found again this close (in its condyle widths): a second knee


@dataclass(frozen=True)
class SecondKnee:
    """A second knee: its condyles' centre ``(x, y)`` and width in original pixels, and how far
    it lies from the planned knee's condyles (in their widths)."""

    centre: tuple[float, float]
    condyle_width_px: float
    apart: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"centre_px": [round(self.centre[0], 1), round(self.centre[1], 1)],
                "condyle_width_px": round(self.condyle_width_px, 1),
                "apart_condyle_widths": round(self.apart, 2)}  # fmt: skip


def window_centres(length: int, side: float) -> list[float]:
    """Centres along one image axis of ``length`` px of windows of ``side`` px that cover it
    with (at least) half a window's overlap; one centred window when it fits."""
    if length <= side:
        return [(length - 1) / 2]
    k = int(np.ceil((length - side) / (side / 2))) + 1
    return list(np.linspace(side / 2 - 0.5, length - side / 2 - 0.5, k))


def tiling(h: int, w: int, side: float) -> tuple[float, list[tuple[float, float]]]:
    """(side, centres (x, y)) of the windows tiled over an (h, w) image: windows of ``side`` px,
    enlarged by 1.25x until at most ``MAX_WINDOWS`` cover it."""
    if not (np.isfinite(side) and side > 0):
        raise ValueError(f"window side must be a positive finite number, got {side}")
    side = max(float(side), MIN_WINDOW_PX)
    while True:
        xs, ys = window_centres(w, side), window_centres(h, side)
        if len(xs) * len(ys) <= MAX_WINDOWS:
            return side, [(x, y) for y in ys for x in xs]
        side *= 1.25


def _square(frame: Any) -> tuple[float, float, float]:
    """(x0, y0, side) of the square of original pixels a frame shows."""
    return -float(frame.pad_left), -float(frame.pad_top), float(frame.side)


def _same_view(a: Any, b: Any) -> bool:
    """Whether two frames show (nearly) the same square of the image."""
    (ax, ay, aside), (bx, by, bside) = _square(a), _square(b)
    return (max(abs(ax - bx), abs(ay - by)) <= SAME_VIEW * aside
            and 1 / (1 + 2 * SAME_VIEW) <= aside / bside <= 1 + 2 * SAME_VIEW)


def _condyles(seg: np.ndarray, frame: Any) -> tuple[FemurShape, np.ndarray, float] | None:
    """(shape in the network frame, condyle centre (x, y) and condyle width in original px) of
    the femur channel of ``seg`` ((4, S, S) seen through ``frame``); None: no femur."""
    shape = femur_shape(np.asarray(seg[0]) >= 0.5)
    if shape is None:
        return None
    centre = frame.to_original(shape.condyle_centre()[None])[0]
    return shape, centre, shape.condyle_width_px * frame.side / frame.size


def _without_planned(maps: Any, planned: np.ndarray) -> np.ndarray:
    """``maps``' (4, S, S) bones with the femur pieces that touch ``planned`` (the planned
    femur, (H, W) bool in original pixels) removed from its femur channel. (Only the femur: the
    plan's window may put a tibia or fibula on the other knee's femur.)"""
    fem = (np.asarray(maps.seg[0]) >= 0.5).astype(np.uint8)
    _, labels = cv2.connectedComponents(fem, connectivity=8)
    ys, xs = np.nonzero(fem)
    orig = np.rint(maps.frame.to_original(np.column_stack([xs, ys]))).astype(np.int64)
    h, w = planned.shape
    inside = (orig[:, 0] >= 0) & (orig[:, 1] >= 0) & (orig[:, 0] < w) & (orig[:, 1] < h)
    touch = np.zeros(len(xs), bool)
    touch[inside] = planned[orig[inside, 1], orig[inside, 0]]
    drop = np.isin(labels, np.unique(labels[ys[touch], xs[touch]]))
    seg = np.array(maps.seg, copy=True)
    seg[0][drop] = 0.0
    return seg


def _whole(centre: np.ndarray, width: float, frame: Any, h: int, w: int) -> bool:
    """Whether condyles centred at ``centre`` (x, y), ``width`` px wide (original px), lie whole
    in the image and in the square ``frame`` shows: their centre at least half their width
    inside both (a shape cut by a window's edge is not a knee seen; the windows overlap by half,
    so a knee in the image lies whole in one of them)."""
    x0, y0, side = _square(frame)
    r = 0.5 * width  # (pixel centres on integers: the square's edges lie half a pixel out)
    lo = np.array([max(x0, 0.0), max(y0, 0.0)]) - 0.5 + r
    hi = np.array([min(x0 + side, w), min(y0 + side, h)]) - 0.5 - r
    return bool(np.all(centre >= lo) and np.all(centre <= hi))


def _tibia_gap(seg: np.ndarray, shape: FemurShape) -> float:
    """Distance from the femur's distal end to the nearest tibia pixel, in condyle widths."""
    tibia = np.argwhere(np.asarray(seg[2]) >= 0.5)[:, ::-1]
    if not len(tibia):
        return float("inf")
    d = np.hypot(*(tibia - shape.distal_end).T)
    return float(d.min() / max(shape.condyle_width_px, 1e-6))


def second_knee(
    predictor: Any, image: np.ndarray, maps: Any, planned_femur: np.ndarray,
    review_config: Any = None,
) -> SecondKnee | None:
    """The second knee in ``image`` beside the one planned, or None (none found, or the planned
    femur is not femur-like: no scale to look at).

    Args:
        predictor: a ``planning.predict`` predictor (or a module ``as_predictor`` wraps).
        image: (H, W) float32 original image.
        maps: the plan's ``NetworkMaps`` (with its ``first_look`` when it came from a second
            look): views already computed are reused for windows that show the same square.
        planned_femur: (H, W) bool, the planned femur in original pixels.
        review_config: the review's thresholds (what counts as femur-like).
    """
    from planning.predict import as_predictor, predict_images

    planned = _condyles(maps.seg, maps.frame)
    if planned is None or not femur_like(planned[0], review_config):
        return None
    _, centre0, width0 = planned
    if not (np.isfinite(width0) and width0 > 0):
        return None
    h, w = np.shape(image)
    side, centres = tiling(h, w, width0 / CONDYLE_TARGET)
    predictor = as_predictor(predictor)
    size = int(predictor.image_size)
    known = [m for m in (maps, getattr(maps, "first_look", None)) if m is not None]
    views, todo = [], []
    for c in centres:
        frame = WindowResize.around(h, w, np.array(c), side, size)
        same = [v for v in known if _same_view(frame, v.frame)]
        if not same:
            todo.append(frame)
        elif not any(v is same[0] for v in views):
            views.append(same[0])
    views += predict_images(predictor, [image] * len(todo), frames=todo) if todo else []
    found = [k for v in views if (k := _knee_in(v, planned_femur, centre0, width0, h, w,
                                                 review_config)) is not None]
    # a knee seen again through a window centred on its condyles at its own scale (the second
    # look the plan itself would take): a shape a window's edge or position made is not
    distinct: list[SecondKnee] = []  # one per knee (windows overlap: a knee shows in several)
    for knee, _ in sorted(found, key=lambda k: k[1]):
        if not any(_same_knee(knee, o) for o in distinct):
            distinct.append(knee)
    for knee in distinct[:MAX_CONFIRM]:
        frame = window_on((h, w), np.array(knee.centre), knee.condyle_width_px, size)
        view = predict_images(predictor, [image], frames=[frame])[0]
        again = _knee_in(view, planned_femur, centre0, width0, h, w, review_config)
        if again is not None and _same_knee(again[0], knee):
            return again[0]
    return None


def _same_knee(seen: SecondKnee, knee: SecondKnee) -> bool:
    """``seen`` lies within ``CONFIRM_WITHIN`` of ``knee``'s condyle widths of it: one knee."""
    return bool(np.hypot(*np.subtract(seen.centre, knee.centre))
                <= CONFIRM_WITHIN * knee.condyle_width_px)


def _knee_in(
    view: Any, planned_femur: np.ndarray, centre0: np.ndarray, width0: float, h: int, w: int,
    review_config: Any,
) -> tuple[SecondKnee, float] | None:
    """(the second knee ``view`` shows, how far off its square's centre it lies in its sides),
    or None: a femur-like shape off the planned bones, of the planned knee's scale, far enough
    from it, whole in the view and with a tibia at its end."""
    seg = _without_planned(view, planned_femur)
    found = _condyles(seg, view.frame)
    if found is None or not femur_like(found[0], review_config):
        return None
    shape, centre, width = found
    apart = float(np.hypot(*(centre - centre0)) / width0)
    x0, y0, side = _square(view.frame)
    if not (apart > MIN_APART and WIDTH_RATIO[0] <= width / width0 <= WIDTH_RATIO[1]
            and _whole(centre, width, view.frame, h, w)
            and _tibia_gap(seg, shape) <= MAX_TIBIA_GAP):
        return None
    off = float(np.hypot(centre[0] - x0 - side / 2, centre[1] - y0 - side / 2) / side)
    return SecondKnee((float(centre[0]), float(centre[1])), float(width), apart), off


def with_second_knee(context: Any, maps: Any, predictor: Any) -> Any:
    """``context`` (a ``planning.review.ReviewContext``) with its ``second_knee`` looked for
    (:func:`second_knee`); unchanged without an image or masks."""
    from dataclasses import replace

    if context.image is None or context.masks is None:
        return context
    found = second_knee(predictor, context.image, maps, np.asarray(context.masks[0], bool),
                        context.config)  # fmt: skip
    return replace(context, second_knee=found)
