"""Heat-map targets in the network frame: landmark Gaussians and the cortex-line ROI.

A heat-map is an unnormalised 2D Gaussian exp(-d^2 / (2 sigma^2)) (peak 1 at the point, pixel
centres on integers), sigma = 6 px at S = 256 (paper). The line ROI is the pixel-wise maximum of
such Gaussians centred on equidistant pseudo-landmarks along the cortex line.

Extent of the line (``roi_extent``):
- ``"segment"`` (default): the stretch spanned by the annotated cortex points, i.e. from the
  first to the last point's projection onto the fitted line. Annotators mark the posterior
  cortex of the shaft; the ROI covers what they marked, and does not run on past the condyles,
  where the femur's outline leaves the line and would bias the LM1 fit that uses ROI >= 0.5.
- ``"image"``: the whole line through the image (clipped to the S x S square).
With exactly two points the line passes through both; with more it is the total-least-squares
(principal axis) fit. Pseudo-landmarks are spaced ``spacing_px`` apart or closer: ends included,
n = ceil(length / spacing_px) + 1 points evenly spread. The default spacing is 2/3 sigma (4 px at
sigma 6), so the ridge along the line ripples by < 6 % whatever the size and sigma.
"""

from __future__ import annotations

import math

import numpy as np

from geometry.heatmaps import HeatmapCodec, gaussian_heatmap
from geometry.lines import fit_line_tls

ROI_EXTENTS = ("segment", "image")


def default_roi_spacing(sigma: float) -> float:
    """Pseudo-landmark spacing used when none is given: 2/3 sigma (4 px at sigma = 6)."""
    return 2.0 * float(sigma) / 3.0


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def landmark_heatmaps(
    landmarks: np.ndarray, visible: np.ndarray, size: int, sigma: float = 6.0
) -> np.ndarray:
    """(N, S, S) heat-maps for (N, 2) landmarks; an invisible landmark gets an all-zero map
    (``geometry.heatmaps.HeatmapCodec(size, size, sigma).encode``)."""
    return HeatmapCodec(size, size, sigma).encode(landmarks, visible)


def cortex_pseudo_landmarks(
    cortex_points: np.ndarray,
    spacing_px: float = 4.0,
    extent: str = "segment",
    size: int | tuple[int, int] | None = None,
    margin: float = 0.0,
) -> np.ndarray:
    """(M, 2) equidistant points (at most ``spacing_px`` apart, ends included) on the cortex line.

    ``extent="image"`` needs ``size`` (S or (H, W)); see the module docstring. With ``size``, a
    segment is cut to the image box grown by ``margin`` px (points beyond add nothing to a
    heat-map of that size when ``margin`` is a few sigma).
    """
    if extent not in ROI_EXTENTS:
        raise ValueError(f"roi extent must be one of {ROI_EXTENTS}, got {extent!r}")
    if spacing_px <= 0:
        raise ValueError(f"spacing_px must be positive, got {spacing_px}")
    line = fit_line_tls(np.asarray(cortex_points, dtype=np.float64).reshape(-1, 2))
    if extent == "segment":
        t = line.coordinate(cortex_points)
        t0, t1 = float(t.min()), float(t.max())
    else:
        if size is None:
            raise ValueError("extent='image' needs the image size")
        span = line.box_span(*_size_hw(size))
        if span is None:
            return np.zeros((0, 2))
        t0, t1 = span
    n = max(int(math.ceil((t1 - t0) / spacing_px - 1e-9)) + 1, 2)
    c0, c1 = t0, t1
    if extent == "segment" and size is not None and t1 > t0:
        # a cortex point far outside the image (only a warning) must not cost unbounded time
        # and memory: keep the grid points inside the grown box, the same ones as without it
        c0, c1 = _clip_to_box(line, t0, t1, size, margin)
        if c0 > c1:
            return np.zeros((0, 2))
    if (c0, c1) == (t0, t1):
        ts = np.linspace(t0, t1, n)
    else:
        step = (t1 - t0) / (n - 1)
        k0, k1 = max(math.ceil((c0 - t0) / step), 0), min(math.floor((c1 - t0) / step), n - 1)
        ts = t0 + step * np.arange(k0, k1 + 1, dtype=np.float64)
    return line.point + ts[:, None] * line.direction


def _clip_to_box(line: object, t0: float, t1: float, size: int | tuple[int, int],
                 margin: float) -> tuple[float, float]:
    """[t0, t1] cut to the part of the line inside the (H, W) box grown by ``margin``."""
    h, w = _size_hw(size)
    for axis, hi in ((0, w - 1), (1, h - 1)):
        d, c = float(line.direction[axis]), float(line.point[axis])  # type: ignore[attr-defined]
        if abs(d) < 1e-12:
            if not -margin <= c <= hi + margin:
                return 1.0, 0.0
            continue
        a, b = (-margin - c) / d, (hi + margin - c) / d
        t0, t1 = max(t0, min(a, b)), min(t1, max(a, b))
    return t0, t1


def roi_heatmap(
    cortex_points: np.ndarray,
    size: int,
    sigma: float = 6.0,
    spacing_px: float | None = None,
    extent: str = "segment",
) -> np.ndarray:
    """(1, S, S) line-ROI heat-map: max over Gaussians at the cortex pseudo-landmarks
    (``spacing_px`` None: ``default_roi_spacing(sigma)``)."""
    if spacing_px is None:
        spacing_px = default_roi_spacing(sigma)
    out = np.zeros((size, size), dtype=np.float32)
    for p in cortex_pseudo_landmarks(cortex_points, spacing_px, extent, size, 4.0 * sigma):
        np.maximum(out, gaussian_heatmap(size, p, sigma), out=out)
    return out[None]
