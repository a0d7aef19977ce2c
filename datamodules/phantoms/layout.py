"""Image size, pixel spacing and the femur-frame-mm to pixel transform of one phantom."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datamodules.phantoms.config import PhantomConfig, side_problem


@dataclass(frozen=True)
class ImageFrame:
    """Affine map femur-frame mm -> original pixels: p = centre + M v / spacing.

    M = R(rotation) @ diag(mirror, -1): the femur frame is y-up, pixels are y-down; mirror = -1
    puts anterior on the left of the image (a left knee in our convention).
    """

    height: int
    width: int
    spacing: float
    rotation_deg: float
    mirror: int
    centre: tuple[float, float]

    @property
    def matrix(self) -> np.ndarray:
        a = np.deg2rad(self.rotation_deg)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        return rot @ np.diag([float(self.mirror), -1.0])

    def to_px(self, v: np.ndarray) -> np.ndarray:
        """(N, 2) femur-frame mm -> (N, 2) pixel (x, y)."""
        return np.asarray(v, dtype=np.float64) @ self.matrix.T / self.spacing + np.asarray(
            self.centre
        )

    def to_mm(self, p: np.ndarray) -> np.ndarray:
        """(N, 2) pixel (x, y) -> femur-frame mm (inverse of ``to_px``)."""
        inv = np.linalg.inv(self.matrix)
        return (np.asarray(p, dtype=np.float64) - np.asarray(self.centre)) @ inv.T * self.spacing


def sample_size_and_spacing(
    rng: np.random.Generator, cfg: PhantomConfig
) -> tuple[int, int, float, float]:
    """Pick (height, width, spacing_mm, fov_height_mm) with the side limits honoured.

    The spacing stays in ``cfg.spacing_mm`` whenever the field of view fits the side limits;
    otherwise (small test images) it is scaled so that the whole field of view still fits.
    """
    if problem := side_problem(cfg.min_side, cfg.max_side):
        raise ValueError(f"PhantomConfig: {problem}")
    fov_h = rng.uniform(*cfg.fov_height_mm)
    aspect = rng.uniform(*cfg.aspect)
    if rng.random() < cfg.p_landscape:
        aspect = 1.0 / aspect
    fov_w = fov_h * aspect
    # Shrink a field of view that cannot fit at the preferred spacing (down to the smallest
    # one); small images (tests, quick training) keep their random field and coarser spacing.
    limit = cfg.max_side * cfg.spacing_mm[1]
    if limit >= cfg.fov_height_mm[0] and max(fov_h, fov_w) > limit:
        f = max(limit / max(fov_h, fov_w), min(1.0, cfg.fov_height_mm[0] / fov_h))
        fov_h, fov_w = fov_h * f, fov_w * f
    lo_size = max(fov_h, fov_w) / cfg.max_side
    hi_size = min(fov_h, fov_w) / cfg.min_side
    lo = max(lo_size, cfg.spacing_mm[0])
    hi = min(hi_size, cfg.spacing_mm[1])
    if lo > hi:
        lo, hi = lo_size, max(lo_size, hi_size)
    s = rng.uniform(lo, hi)
    h = int(np.clip(round(fov_h / s), cfg.min_side, cfg.max_side))
    w = int(np.clip(round(fov_w / s), cfg.min_side, cfg.max_side))
    if h == w:
        w = w - 1 if w > cfg.min_side else w + 1
    return h, w, float(s), float(h * s)


def place_knee(
    rng: np.random.Generator,
    cfg: PhantomConfig,
    h: int,
    w: int,
    s: float,
    mirror: int,
    rotation_deg: float,
) -> ImageFrame:
    """Place the femur frame's origin (where the outline leaves LM1, ~2.4 mm above p_tmc) so
    that a random length of femoral shaft is visible above it and the knee (about 18 mm
    anterior of it) sits near the horizontal centre."""
    fov_h = h * s
    vis_hi = min(cfg.visible_shaft_mm[1], fov_h - 80.0, 0.7 * fov_h)
    vis = rng.uniform(cfg.visible_shaft_mm[0], max(cfg.visible_shaft_mm[0], vis_hi))
    jitter = rng.uniform(*cfg.knee_shift) * w * s
    y0 = vis / s
    x0 = w / 2 + (jitter - mirror * 18.0) / s
    # the femur frame's origin is the frame's centre, at this pixel position
    return ImageFrame(h, w, s, rotation_deg, mirror, (float(x0), float(y0)))
