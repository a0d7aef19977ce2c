"""Pixel spacing: detection of a calibration sphere, and choosing among the available sources.

Sphere detection (a metal calibration ball, 30 mm by default, projects as a bright, uniform,
circular disc):
1. the image is scaled to at most ``max_side`` px, converted to 8 bit, median-blurred, and
   ``cv2.HoughCircles`` (HOUGH_GRADIENT) proposes circles with radii in ``expected_px_range``;
2. each candidate is refined at full resolution: along 90 rays from its centre the edge is the
   sub-pixel position where the profile crosses half-way between the disc level (median of the
   inner 60 % of the radius) and the surrounding level (median of a ring 1.3-1.6 r); a circle is
   fitted to these edge points by algebraic least squares (Kasa), after dropping rays whose edge
   is more than 3 MAD off the median radius (overlapping bone);
3. score = contrast x uniformity x circularity, each in [0, 1]: contrast = disc level minus ring
   level; uniformity = 1 - (inner std / contrast); circularity = fraction of rays whose edge lies
   within 5 % of the fitted radius. The best candidate with score >= ``min_score`` wins.
mm per pixel = diameter_mm / (2 x radius_px).

Spacing priority in :func:`resolve_spacing` (first available wins), and why:
1. ``annotation``: a researcher's explicit spacing for this image (may encode their own
   calibration) overrides everything;
2. ``PixelSpacing`` (DICOM): spacing calibrated by the modality at the patient plane;
3. ``sphere``: calibrated in the image at the object plane (corrects X-ray magnification);
4. ``ImagerPixelSpacing`` (DICOM): detector-plane spacing, overstates sizes by the magnification
   factor (typically 5-20 %), hence after the sphere;
5. none: spacing unknown (``(None, None)``); errors are then reported in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import map_coordinates

SPACING_SOURCES = ("annotation", "PixelSpacing", "sphere", "ImagerPixelSpacing")


@dataclass(frozen=True)
class SphereDetection:
    """A detected calibration sphere: centre (x, y) px, radius px, mm per px, score in [0, 1]."""

    center: np.ndarray
    radius_px: float
    mm_per_px: float
    score: float

    @property
    def spacing(self) -> tuple[float, float]:
        """(row_mm, col_mm) implied by the sphere (isotropic)."""
        return (self.mm_per_px, self.mm_per_px)


def _ring_median(img: np.ndarray, c: np.ndarray, r0: float, r1: float) -> tuple[float, float]:
    """Median and std of the pixels between radii r0 and r1 around c (x, y)."""
    h, w = img.shape
    x0, x1 = int(max(0, np.floor(c[0] - r1))), int(min(w, np.ceil(c[0] + r1) + 1))
    y0, y1 = int(max(0, np.floor(c[1] - r1))), int(min(h, np.ceil(c[1] + r1) + 1))
    ys, xs = np.mgrid[y0:y1, x0:x1]
    d = np.hypot(xs - c[0], ys - c[1])
    vals = img[y0:y1, x0:x1][(d >= r0) & (d <= r1)]
    if vals.size == 0:
        return float("nan"), float("nan")
    return float(np.median(vals)), float(np.std(vals))


def _fit_circle(pts: np.ndarray) -> tuple[np.ndarray, float]:
    """Algebraic (Kasa) least-squares circle through (N >= 3, 2) points: (centre, radius)."""
    a = np.column_stack([2 * pts, np.ones(len(pts))])
    b = (pts**2).sum(1)
    (cx, cy, k), *_ = np.linalg.lstsq(a, b, rcond=None)
    return np.array([cx, cy]), float(np.sqrt(max(k + cx * cx + cy * cy, 0.0)))


def _refine(img: np.ndarray, c: np.ndarray, r: float) -> tuple[np.ndarray, float, float] | None:
    """Sub-pixel centre, radius and score of a candidate disc at (c, r); None if implausible."""
    inner, inner_std = _ring_median(img, c, 0.0, 0.6 * r)
    outer, _ = _ring_median(img, c, 1.3 * r, 1.6 * r)
    contrast = inner - outer
    if not np.isfinite(contrast) or contrast <= 0.02:
        return None
    mid = (inner + outer) / 2.0
    angles = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    radii = np.linspace(0.5 * r, 1.5 * r, max(40, int(4 * r)))
    xs = c[0] + np.outer(np.cos(angles), radii)
    ys = c[1] + np.outer(np.sin(angles), radii)
    prof = map_coordinates(img, [ys, xs], order=1, mode="nearest") - mid
    edges = []
    for a, p in zip(angles, prof, strict=True):
        idx = np.nonzero((p[:-1] >= 0) & (p[1:] < 0))[0]  # bright inside -> dark outside
        if idx.size == 0:
            continue
        i = idx[np.argmin(np.abs(radii[idx] - r))]
        t = p[i] / (p[i] - p[i + 1])
        rr = radii[i] + t * (radii[i + 1] - radii[i])
        edges.append(c + rr * np.array([np.cos(a), np.sin(a)]))
    if len(edges) < 10:
        return None
    pts = np.array(edges)
    rad = np.hypot(*(pts - c).T)
    mad = 1.4826 * np.median(np.abs(rad - np.median(rad))) + 1e-6
    keep = np.abs(rad - np.median(rad)) <= 3 * mad + 0.5
    if keep.sum() < 10:
        return None
    center, radius = _fit_circle(pts[keep])
    circularity = float(np.mean(np.abs(np.hypot(*(pts - center).T) - radius) <= 0.05 * radius))
    uniformity = float(np.clip(1.0 - inner_std / contrast, 0.0, 1.0))
    score = float(np.clip(contrast, 0.0, 1.0)) * uniformity * circularity
    return center, radius, score


def detect_calibration_sphere(
    image: np.ndarray,
    diameter_mm: float = 30.0,
    expected_px_range: tuple[float, float] | None = None,
    min_score: float = 0.1,
    max_side: int = 1024,
) -> SphereDetection | None:
    """Find a bright calibration disc and derive mm per pixel (see module docstring).

    Args:
        image: (H, W) float image in [0, 1], bright = dense.
        diameter_mm: the sphere's true diameter.
        expected_px_range: (min, max) radius in pixels of the sphere in this image; default
            2 % to 25 % of the shorter image side.
        min_score: candidates scoring below this are rejected.
        max_side: Hough runs on a copy downscaled to at most this side (refinement is full-res).

    Returns:
        The best detection, or None when no candidate passes.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"detect_calibration_sphere: expected (H, W) image, got {img.shape}")
    h, w = img.shape
    lo, hi = expected_px_range or (0.02 * min(h, w), 0.25 * min(h, w))
    f = min(1.0, max_side / max(h, w))
    small = img
    if f < 1:
        size = (max(1, round(w * f)), max(1, round(h * f)))
        small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    u8 = cv2.medianBlur(np.clip(small * 255.0 + 0.5, 0, 255).astype(np.uint8), 5)
    circles = cv2.HoughCircles(
        u8,
        cv2.HOUGH_GRADIENT,
        dp=1,
        minDist=max(4.0, lo * f),
        param1=80,
        param2=20,
        minRadius=max(1, int(np.floor(lo * f))),
        maxRadius=max(2, int(np.ceil(hi * f))),
    )
    if circles is None:
        return None
    best: SphereDetection | None = None
    for cx, cy, r in circles[0][:20]:
        refined = _refine(img, np.array([cx, cy]) / f, float(r) / f)
        if refined is None:
            continue
        center, radius, score = refined
        if not (lo * 0.9 <= radius <= hi * 1.1) or score < min_score:
            continue
        if best is None or score > best.score:
            best = SphereDetection(center, radius, diameter_mm / (2.0 * radius), score)
    return best


def resolve_spacing(
    dicom_spacing: tuple[float, float] | None = None,
    annotation_spacing: tuple[float, float] | None = None,
    sphere: SphereDetection | None = None,
    dicom_tag: str = "PixelSpacing",
) -> tuple[tuple[float, float] | None, str | None]:
    """Choose the pixel spacing (row_mm, col_mm) and its source, by the module's priority.

    Args:
        dicom_spacing: spacing read from DICOM, tag named by ``dicom_tag``.
        annotation_spacing: spacing from the annotation file.
        sphere: a calibration-sphere detection.
        dicom_tag: ``PixelSpacing`` or ``ImagerPixelSpacing``.

    Returns:
        (spacing, source) with source in ``SPACING_SOURCES``, or (None, None).
    """
    if dicom_tag not in ("PixelSpacing", "ImagerPixelSpacing"):
        raise ValueError(f"resolve_spacing: unknown DICOM tag {dicom_tag!r}")

    def valid(sp: tuple[float, float] | None) -> tuple[float, float] | None:
        if sp is None:
            return None
        arr = np.asarray(sp, dtype=np.float64).reshape(-1)
        arr = np.repeat(arr, 2) if arr.size == 1 else arr
        if arr.size != 2 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            return None
        return float(arr[0]), float(arr[1])

    candidates = {
        "annotation": valid(annotation_spacing),
        "PixelSpacing": valid(dicom_spacing) if dicom_tag == "PixelSpacing" else None,
        "sphere": valid(sphere.spacing) if sphere is not None else None,
        "ImagerPixelSpacing": valid(dicom_spacing) if dicom_tag == "ImagerPixelSpacing" else None,
    }
    for source in SPACING_SOURCES:
        if candidates[source] is not None:
            return candidates[source], source
    return None, None
