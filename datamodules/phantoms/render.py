"""Attenuation rendering on a coarse grid: bone bodies as cortical shells whose line integrals
add, soft tissue, and helpers to rasterise polygons.

Each body is a closed outline; inside it, with d the distance to the outline (mm), R the body's
half-thickness and c its cortex, the path lengths through an equivalent cylindrical shell are

    outer chord  T_o = 2 sqrt(d' (2R - d')),           d' = min(d, R)
    inner chord  T_i = 2 sqrt(e' (2(R - c) - e')),     e' = clip(d - c, 0, R - c)

and the line integral is mu_cortex (T_o - T_i) + mu_cancellous T_i. Near the outline the path
runs tangentially through the cortex, so cortices appear brighter than cancellous bone, as on a
radiograph; overlapping bodies simply add.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from datamodules.phantoms.anatomy import Body
from datamodules.phantoms.layout import ImageFrame

SHIFT = 4  # fixed-point bits for sub-pixel polygon rasterisation
MU_CORTEX = 0.040  # per mm
MU_CANCELLOUS = 0.010
MU_SOFT = 0.0030
MU_METAL = 0.4


@dataclass(frozen=True)
class RenderGrid:
    """A grid ``factor`` times coarser than the image, with the same half-pixel convention."""

    frame: ImageFrame
    factor: int

    @property
    def shape(self) -> tuple[int, int]:
        f = self.factor
        return -(-self.frame.height // f), -(-self.frame.width // f)

    @property
    def spacing(self) -> float:
        return self.frame.spacing * self.factor

    def to_grid(self, v_mm: np.ndarray) -> np.ndarray:
        """Femur-frame mm -> grid pixel (x, y)."""
        return (self.frame.to_px(v_mm) + 0.5) / self.factor - 0.5

    def femur_y(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """(h, w) femur-frame y (mm) of grid pixels in the box starting at (x0, y0)."""
        f, fr = self.factor, self.frame
        inv = np.linalg.inv(fr.matrix)[1] * fr.spacing  # row giving y_mm
        xs = (np.arange(x0, x0 + w) + 0.5) * f - 0.5 - fr.centre[0]
        ys = (np.arange(y0, y0 + h) + 0.5) * f - 0.5 - fr.centre[1]
        return (inv[0] * xs[None, :] + inv[1] * ys[:, None]).astype(np.float32)


def fill(shape: tuple[int, int], polys: list[np.ndarray], offset=(0.0, 0.0)) -> np.ndarray:
    """uint8 {0, 1} mask of the union of polygons given in pixel (x, y) (sub-pixel exact-ish)."""
    mask = np.zeros(shape, np.uint8)
    pts = [np.round((p - np.asarray(offset)) * (1 << SHIFT)).astype(np.int32) for p in polys]
    cv2.fillPoly(mask, pts, 1, lineType=cv2.LINE_8, shift=SHIFT)
    return mask


def shell_chords(d: np.ndarray, radius, cortex) -> tuple[np.ndarray, np.ndarray]:
    """(cortical path, cancellous path) in mm for distance-to-outline ``d`` (see module doc)."""
    radius = np.maximum(radius, 1e-3)
    cortex = np.minimum(cortex, 0.95 * radius)
    do = np.minimum(d, radius)
    t_outer = 2.0 * np.sqrt(np.maximum(do * (2.0 * radius - do), 0.0))
    inner = radius - cortex
    di = np.clip(d - cortex, 0.0, inner)
    t_inner = 2.0 * np.sqrt(np.maximum(di * (2.0 * inner - di), 0.0))
    return t_outer - t_inner, t_inner


@dataclass
class BodyChords:
    """One body's cortical and cancellous chord lengths (mm) on the window ``rows, cols`` of a
    render grid, with the per-pixel ``weight`` and inner attenuation ``inner_mu``."""

    rows: slice
    cols: slice
    cortex: np.ndarray
    cancellous: np.ndarray
    inside: np.ndarray
    weight: np.ndarray | float
    inner_mu: np.ndarray | float


def body_chords(body: Body, grid: RenderGrid, shape: tuple[int, int]) -> BodyChords | None:
    """Chord lengths of ``body`` on a grid of ``shape`` (None when it lies outside): the
    distance to the outline gives each pixel's path through a shell of elliptic section."""
    hr, wr = shape
    poly = grid.to_grid(body.polygon)
    r_max = body.radius_mm if body.profile is None else float(np.max(body.profile[1]))
    pad = int(np.ceil(r_max / grid.spacing)) + 2
    x0 = max(int(np.floor(poly[:, 0].min())) - 1, -pad)
    y0 = max(int(np.floor(poly[:, 1].min())) - 1, -pad)
    x1 = min(int(np.ceil(poly[:, 0].max())) + 2, wr + pad)
    y1 = min(int(np.ceil(poly[:, 1].max())) + 2, hr + pad)
    if x1 <= max(x0, 0) or y1 <= max(y0, 0) or x0 >= wr or y0 >= hr:
        return None
    local = fill((y1 - y0, x1 - x0), [poly], offset=(x0, y0))
    dist = cv2.distanceTransform(local, cv2.DIST_L2, cv2.DIST_MASK_5)
    cx0, cy0 = max(x0, 0), max(y0, 0)
    cx1, cy1 = min(x1, wr), min(y1, hr)
    d = dist[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    d = np.maximum(d - 0.5, 0.0) * np.float32(grid.spacing)
    if body.profile is None:
        radius, cortex, weight, inner = body.radius_mm, body.cortex_mm, 1.0, body.inner_mu
    else:
        yf = grid.femur_y(cx0, cy0, cx1 - cx0, cy1 - cy0)
        ys, rs, cs, ws, mus = body.profile
        radius = np.interp(yf, ys, rs).astype(np.float32)
        cortex = np.interp(yf, ys, cs).astype(np.float32)
        weight = np.interp(yf, ys, ws).astype(np.float32)
        inner = np.interp(yf, ys, mus).astype(np.float32)
    t_cort, t_canc = shell_chords(d, radius, cortex)
    return BodyChords(slice(cy0, cy1), slice(cx0, cx1), t_cort, t_canc, d > 0, weight, inner)


def render_body(acc: np.ndarray, body: Body, grid: RenderGrid, gain: float = 1.0) -> None:
    """Add one body's line integral to ``acc`` (grid shape, float32) in place."""
    ch = body_chords(body, grid, acc.shape)
    if ch is None:
        return
    att = (MU_CORTEX * ch.cortex + ch.inner_mu * ch.cancellous) * (ch.weight * gain)
    att[~ch.inside] = 0.0
    acc[ch.rows, ch.cols] += att.astype(np.float32)


def render_soft_tissue(
    shape: tuple[int, int], poly_grid: np.ndarray, spacing: float, radius_mm: float
) -> np.ndarray:
    """Soft-tissue line integral of a rounded limb: chord profile of the envelope, computed on a
    4x coarser grid (it is smooth) and upsampled."""
    hr, wr = shape
    c = 4
    pad = int(np.ceil(radius_mm / (spacing * c))) + 2
    small = (-(-hr // c) + 2 * pad, -(-wr // c) + 2 * pad)
    m = fill(small, [(poly_grid + 0.5) / c - 0.5 + pad])
    d = cv2.distanceTransform(m, cv2.DIST_L2, cv2.DIST_MASK_5)[pad:-pad, pad:-pad]
    d = np.minimum(d * np.float32(spacing * c), np.float32(radius_mm))
    chord = 2.0 * np.sqrt(d * (2.0 * radius_mm - d))
    chord = cv2.GaussianBlur(chord, (0, 0), 1.0)
    up = cv2.resize(chord, (chord.shape[1] * c, chord.shape[0] * c), interpolation=cv2.INTER_LINEAR)
    return up[:hr, :wr] * np.float32(MU_SOFT)


def render_blob(
    shape: tuple[int, int], poly_grid: np.ndarray, sigma_px: float, value: float
) -> np.ndarray:
    """A filled polygon blurred with ``sigma_px``, scaled to ``value`` (float32)."""
    m = fill(shape, [poly_grid]).astype(np.float32)
    if sigma_px > 0.3:
        m = cv2.GaussianBlur(m, (0, 0), sigma_px)
    return m * np.float32(value)
