"""A second look at the training scale: the window that shows the knee as the phantoms do.

The network learned knees whose condyles span a band of the padded square (the phantoms' field
of view is 135-290 mm). A knee small on a large canvas (a wide detector, a black border, an image
pasted into a page) or cut tightly lies outside that band, and the first pass is then less
accurate (``make evaluate ARGS="--perturb pad"``: a 1.4x canvas doubled the median Schoettle
error). :func:`knee_window` reads the condyles' width from the first pass's femur and, when it is
outside ``CONDYLE_RANGE``, returns the square window centred on the condyles that shows them at
``CONDYLE_TARGET`` (with the condyles 27 % of the side, the window holds ~1.8 condyle widths of
shaft above them, as the phantoms do); the plan is then made from a second pass through it.

Measured on 120 default phantoms (ground-truth femur, ``planning.ood.femur_shape``), condyle
width / padded side: 1st percentile 0.178, 5th 0.194, median 0.274, 95th 0.392, max 0.451.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from geometry.frame import WindowResize
from planning.ood import femur_shape

CONDYLE_RANGE = (0.19, 0.43)  # condyle width / side of the network's square: no second look
CONDYLE_TARGET = 0.27  # the median of the phantoms' range
MAX_LOOKS = 2  # further passes at most (each re-reads the scale from the last)
MIN_WINDOW_PX = 64  # never zoom into fewer original pixels than this
MAX_WINDOW_SCALE = 4.0  # nor out to more than this many times the image's longer side


def condyle_fraction(maps: Any) -> float:
    """Condyle width / network side of the first pass's femur (NaN: no femur)."""
    shape = femur_shape(np.asarray(maps.seg[0]) >= 0.5)
    return float("nan") if shape is None else shape.condyle_width_px / maps.frame.size


def femur_like(shape: Any, cfg: Any = None) -> bool:
    """One piece, a shaft, condyles wider than it, not the whole frame: the review's own bounds
    (``cfg``, a ``planning.review.ReviewConfig``; None: configs/review.yaml). Anything else is
    no knee to zoom to (the review flags it), and a second look would only cost time."""
    if cfg is None:
        from planning.review import ReviewConfig

        cfg = ReviewConfig.load()
    return (shape.main_fraction >= cfg.min_main_fraction and shape.elongation >= cfg.min_elongation
            and shape.widening >= cfg.min_widening and shape.area_fraction <= cfg.max_femur_area)


def knee_window(
    maps: Any, image_shape: tuple[int, ...], review_config: Any = None
) -> WindowResize | None:
    """The window for a second look, or None when the knee is already at the training scale
    (or no femur-like shape was found: nothing to zoom to).

    Args:
        maps: the first pass's ``planning.predict.NetworkMaps`` (seg ``(C, S, S)``, frame).
        image_shape: ``(H, W)`` of the original image.
        review_config: the review's thresholds (what counts as femur-like; None: the file's).
    """
    shape = femur_shape(np.asarray(maps.seg[0]) >= 0.5)
    if shape is None or not femur_like(shape, review_config):
        return None
    frac = shape.condyle_width_px / maps.frame.size
    if CONDYLE_RANGE[0] <= frac <= CONDYLE_RANGE[1]:
        return None
    centre = maps.frame.to_original(shape.condyle_centre()[None])[0]
    return window_on(image_shape, centre, maps.frame.side * frac, maps.frame.size)


def window_on(
    image_shape: tuple[int, ...], centre: np.ndarray, condyle_width_px: float, size: int
) -> WindowResize:
    """The square window centred on condyles at ``centre`` (x, y), ``condyle_width_px`` wide
    (original px), that shows them at ``CONDYLE_TARGET`` of its side, within ``MIN_WINDOW_PX``
    and ``MAX_WINDOW_SCALE`` times the image's longer side; ``size``: the network's input."""
    h, w = int(image_shape[0]), int(image_shape[1])
    side = condyle_width_px / CONDYLE_TARGET
    side = float(np.clip(side, MIN_WINDOW_PX, MAX_WINDOW_SCALE * max(h, w)))
    return WindowResize.around(h, w, centre, side, size)
