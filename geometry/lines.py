"""Lines (and circles) in the image plane, femur outlines and the cortex-line (LM1) fit.

A :class:`Line` is a point plus a unit direction; its unit normal is the direction rotated by
+90 degrees, n = (-d_y, d_x), and the signed distance of p is n . (p - point).

Line fits are total least squares (orthogonal regression via SVD/PCA): the posterior femoral cortex
is near-vertical in a lateral radiograph, so an ordinary y-on-x regression would be ill-posed
(unbounded slope) and x-on-y would depend on the image orientation; TLS minimises the orthogonal
distances and is invariant to rotation. The robust option runs a seeded RANSAC to find the
dominant line (immune to leverage points such as a condyle bulge caught by the ROI), then
iteratively reweighted TLS with Tukey's biweight (c = 4.685 x MAD scale of the residuals).

Coordinates are (x, y) = (column, row). With anisotropic pixel spacing, fit and measure in mm:
``to_mm(points, spacing)`` first (a line maps through any affine map by mapping two points).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from geometry.heatmaps import as_numpy

LINE_FIT_METHODS = ("lstsq", "robust")


@dataclass(frozen=True)
class Line:
    """An infinite line through ``point`` with unit ``direction``, both (2,) float64 (x, y)."""

    point: np.ndarray
    direction: np.ndarray

    def __post_init__(self) -> None:
        d = np.asarray(self.direction, dtype=np.float64).reshape(2)
        norm = float(np.hypot(*d))
        if not np.isfinite(norm) or norm == 0:
            raise ValueError(f"Line: direction must be a finite non-zero vector, got {d}")
        object.__setattr__(self, "point", np.asarray(self.point, dtype=np.float64).reshape(2))
        object.__setattr__(self, "direction", d / norm)

    @classmethod
    def through(cls, p: np.ndarray, q: np.ndarray) -> Line:
        """The line through two distinct points p and q, directed from p to q."""
        p = np.asarray(p, dtype=np.float64)
        return cls(p, np.asarray(q, dtype=np.float64) - p)

    @property
    def normal(self) -> np.ndarray:
        """Unit normal (direction rotated by +90 degrees)."""
        return np.array([-self.direction[1], self.direction[0]])

    def signed_distance(self, pts: np.ndarray) -> np.ndarray:
        """Signed distances of (N, 2) or (2,) points; positive on the side of ``normal``."""
        return (np.asarray(pts, dtype=np.float64) - self.point) @ self.normal

    def distance(self, pts: np.ndarray) -> np.ndarray:
        """Unsigned distances of (N, 2) or (2,) points to the line."""
        return np.abs(self.signed_distance(pts))

    def coordinate(self, pts: np.ndarray) -> np.ndarray:
        """Position of the feet of (N, 2) or (2,) points along the line (from ``point``)."""
        return (np.asarray(pts, dtype=np.float64) - self.point) @ self.direction

    def foot(self, pts: np.ndarray) -> np.ndarray:
        """Orthogonal projections (feet of the perpendiculars) of points onto the line."""
        t = self.coordinate(pts)
        return self.point + np.multiply.outer(t, self.direction)

    def box_span(self, h: int, w: int) -> tuple[float, float] | None:
        """Interval [t0, t1] of ``point + t * direction`` inside [0, W-1] x [0, H-1], or None."""
        t0, t1 = -np.inf, np.inf
        for axis, hi in ((0, w - 1), (1, h - 1)):
            d, c = self.direction[axis], self.point[axis]
            if abs(d) < 1e-12:
                if not 0 <= c <= hi:
                    return None
                continue
            a, b = (0 - c) / d, (hi - c) / d
            t0, t1 = max(t0, min(a, b)), min(t1, max(a, b))
        return (float(t0), float(t1)) if t0 <= t1 else None

    def clip_to_box(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray] | None:
        """End points of the segment of the line inside the image box, or None if it misses."""
        span = self.box_span(h, w)
        if span is None:
            return None
        return self.point + span[0] * self.direction, self.point + span[1] * self.direction

    def perpendicular_through(self, p: np.ndarray) -> Line:
        """The line through p perpendicular to this one."""
        return Line(np.asarray(p, dtype=np.float64), self.normal)

    def map(self, fn: Callable[[np.ndarray], np.ndarray]) -> Line:
        """Image of the line under an affine point map ``fn`` ((N, 2) -> (N, 2))."""
        a, b = fn(np.stack([self.point, self.point + self.direction]))
        return Line.through(a, b)

    def as_dict(self) -> dict[str, list[float]]:
        """Plain dict (for JSON)."""
        return {"point": self.point.tolist(), "direction": self.direction.tolist()}


def fit_circle(pts: np.ndarray) -> tuple[np.ndarray, float]:
    """Algebraic (Kasa) least-squares circle through (N >= 3, 2) points: (centre, radius).
    Collinear points have no circle: the least-squares answer is then meaningless."""
    a = np.column_stack([2 * pts, np.ones(len(pts))])
    b = (pts**2).sum(1)
    (cx, cy, k), *_ = np.linalg.lstsq(a, b, rcond=None)
    return np.array([cx, cy]), float(np.sqrt(max(k + cx * cx + cy * cy, 0.0)))


def to_mm(pts: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """(x, y) pixels -> (x, y) mm with spacing (row_mm, col_mm): x * col_mm, y * row_mm."""
    return np.asarray(pts, dtype=np.float64) * np.array([spacing[1], spacing[0]], dtype=np.float64)


def from_mm(pts: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Inverse of :func:`to_mm`."""
    return np.asarray(pts, dtype=np.float64) / np.array([spacing[1], spacing[0]], dtype=np.float64)


def distance_mm(pts: np.ndarray, line: Line, spacing: tuple[float, float] | None) -> np.ndarray:
    """Distances in mm of (N, 2) pixel points to a pixel-frame line (px if spacing is None)."""
    if spacing is None:
        return line.distance(pts)
    return line.map(lambda q: to_mm(q, spacing)).distance(to_mm(pts, spacing))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a binary mask (all False if the mask is empty)."""
    m = np.asarray(mask).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return np.zeros(m.shape, dtype=bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def femur_outline(
    prob: np.ndarray, level: float = 0.5, subpixel: bool = True, largest_only: bool = True
) -> np.ndarray:
    """Outline points (N, 2) (x, y) of the region ``prob >= level``.

    Args:
        prob: (H, W) probability map or binary mask.
        level: iso-level defining the region.
        subpixel: True: one point per pair of 4-neighbours straddling the level, placed where the
            bilinear profile crosses it (for a binary mask: the pixel edge, half-way between the
            centres), so the outline carries no half-pixel inward bias. False: the centres of the
            boundary pixels, traced by ``cv2.findContours`` (CHAIN_APPROX_NONE).
        largest_only: keep only the largest connected component (discards spurious blobs).
    """
    p = as_numpy(prob)
    if p.ndim != 2:
        raise ValueError(f"femur_outline: expected an (H, W) map, got shape {p.shape}")
    inside = p >= level
    if largest_only:
        inside = largest_component(inside)
    if not inside.any():
        return np.zeros((0, 2))
    if not subpixel:
        contours, _ = cv2.findContours(
            inside.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        return np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float64)
    # Pad so that the image border counts as outside; outside values are clipped below the level.
    pp = np.pad(
        np.where(inside, np.maximum(p, level), np.minimum(p, level - 1e-9)),
        1,
        constant_values=min(0.0, level - 1.0),
    )
    ins = np.pad(inside, 1)
    out = []
    for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        nb_in = np.roll(ins, (-dy, -dx), axis=(0, 1))
        nb_p = np.roll(pp, (-dy, -dx), axis=(0, 1))
        ys, xs = np.nonzero(ins & ~nb_in)
        v0, v1 = pp[ys, xs], nb_p[ys, xs]
        t = np.clip((v0 - level) / np.maximum(v0 - v1, 1e-12), 0.0, 1.0)
        out.append(np.stack([xs - 1 + t * dx, ys - 1 + t * dy], axis=1))
    return np.concatenate(out)


def sample_bilinear(img: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Values of an (H, W) map at (N, 2) (x, y) points (bilinear, 0 outside [0, W-1] x [0, H-1]).

    The values of ``scipy.ndimage.map_coordinates(order=1, mode="constant")``, written out: the
    plan path then needs no scipy.ndimage, whose import costs a cold ``make plan`` ~0.25 s.
    """
    arr = np.asarray(as_numpy(img), dtype=np.float64)
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    h, w = arr.shape
    x, y = pts[:, 0], pts[:, 1]
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    out = np.zeros(len(pts), np.float64)
    if not inside.any():
        return out
    x, y = x[inside], y[inside]
    x0 = np.minimum(np.floor(x).astype(np.intp), max(w - 2, 0))
    y0 = np.minimum(np.floor(y).astype(np.intp), max(h - 2, 0))
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    top = arr[y0, x0] * (1 - fx) + arr[y0, x1] * fx
    bottom = arr[y1, x0] * (1 - fx) + arr[y1, x1] * fx
    out[inside] = top * (1 - fy) + bottom * fy
    return out


@dataclass(frozen=True)
class LineFit:
    """A fitted line with its support: the points used and the final per-point inlier flags."""

    line: Line | None
    points: np.ndarray
    inliers: np.ndarray

    @property
    def n_support(self) -> int:
        """Number of points the fit rests on (inliers; all points for least squares)."""
        return int(self.inliers.sum())

    @property
    def rms(self) -> float:
        """Root mean square orthogonal residual of the inliers (NaN without a line)."""
        if self.line is None or self.n_support == 0:
            return float("nan")
        return float(np.sqrt(np.mean(self.line.distance(self.points[self.inliers]) ** 2)))


def fit_line_tls(pts: np.ndarray, weights: np.ndarray | None = None) -> Line:
    """Total least squares line through (N >= 2, 2) points (weighted centroid + principal axis)."""
    pts = np.asarray(pts, dtype=np.float64)
    w = np.ones(len(pts)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(pts) < 2 or np.count_nonzero(w > 0) < 2:
        raise ValueError(f"fit_line_tls: need at least 2 weighted points, got {len(pts)}")
    c = (w[:, None] * pts).sum(0) / w.sum()
    _, s, vt = np.linalg.svd(np.sqrt(w)[:, None] * (pts - c), full_matrices=False)
    if s[0] == 0:
        raise ValueError("fit_line_tls: all points coincide, the line is undefined")
    return Line(c, vt[0])


def fit_line_robust(
    pts: np.ndarray, threshold: float = 2.0, iterations: int = 200, seed: int = 0
) -> tuple[Line, np.ndarray]:
    """Seeded RANSAC (inlier band +-``threshold``) then Tukey-biweight IRLS TLS; (line, inliers)."""
    pts = np.asarray(pts, dtype=np.float64)
    n = len(pts)
    if n < 2:
        raise ValueError(f"fit_line_robust: need at least 2 points, got {n}")
    rng = np.random.default_rng(seed)
    best, best_count = None, -1
    for _ in range(iterations if n > 2 else 1):
        i, j = rng.choice(n, 2, replace=False)
        if np.allclose(pts[i], pts[j]):
            continue
        count = int((Line.through(pts[i], pts[j]).distance(pts) <= threshold).sum())
        if count > best_count:
            best, best_count = (i, j), count
    if best is None:
        raise ValueError("fit_line_robust: all points coincide, the line is undefined")
    line = fit_line_tls(pts[Line.through(*pts[list(best)]).distance(pts) <= threshold])
    for _ in range(20):
        r = line.distance(pts)
        scale = max(1.4826 * float(np.median(r)), threshold / 4.685)
        u = r / (4.685 * scale)
        w = np.where(u < 1, (1 - u**2) ** 2, 0.0)
        new = fit_line_tls(pts, w)
        if new.direction @ line.direction < 0:
            new = Line(new.point, -new.direction)
        moved = abs(float(line.signed_distance(new.point))) + float(
            np.hypot(*(new.direction - line.direction))
        )
        line = new
        if moved < 1e-9:
            break
    return line, line.distance(pts) < 4.685 * scale


def fit_points(pts: np.ndarray, method: str = "lstsq", threshold: float = 2.0) -> LineFit:
    """Fit a line to (N, 2) points with ``lstsq`` (TLS) or ``robust``; no line if N < 2."""
    if method not in LINE_FIT_METHODS:
        raise ValueError(f"unknown line fit method {method!r}; use one of {LINE_FIT_METHODS}")
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    try:
        if method == "lstsq":
            return LineFit(fit_line_tls(pts), pts, np.ones(len(pts), dtype=bool))
        line, inl = fit_line_robust(pts, threshold=threshold)
        return LineFit(line, pts, inl)
    except ValueError:
        return LineFit(None, pts, np.zeros(len(pts), dtype=bool))


def cortex_points(
    mask: np.ndarray, roi_heatmap: np.ndarray, threshold: float = 0.5, subpixel: bool = True
) -> np.ndarray:
    """Femur outline points (N, 2) where the ROI heat-map (bilinear) is >= ``threshold``."""
    roi = as_numpy(roi_heatmap)
    roi = roi[0] if roi.ndim == 3 else roi
    pts = femur_outline(mask, subpixel=subpixel)
    return pts[sample_bilinear(roi, pts) >= threshold]


def fit_cortex_line(
    mask: np.ndarray,
    roi_heatmap: np.ndarray,
    threshold: float = 0.5,
    method: str = "lstsq",
    subpixel: bool = True,
) -> LineFit:
    """LM1 (paper): the femur outline, kept where the ROI >= ``threshold``, fitted by a line.

    Args:
        mask: (H, W) femur probability or binary mask (region = values >= 0.5).
        roi_heatmap: (H, W) or (1, H, W) line-ROI heat-map in the same frame.
        threshold: ROI likelihood below which outline points are discarded (paper: 0.5).
        method: ``lstsq`` (total least squares, paper) or ``robust`` (RANSAC + Tukey IRLS).
        subpixel: see :func:`femur_outline`.

    Returns:
        LineFit; ``line`` is None when fewer than 2 distinct points survive.
    """
    return fit_points(cortex_points(mask, roi_heatmap, threshold, subpixel), method)
