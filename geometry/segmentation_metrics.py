"""Segmentation metrics per bone in mm: IoU, average symmetric surface distance, Hausdorff.

Multi-label: masks are (C, H, W) booleans, one channel per bone, channels may overlap; every
channel is scored on its own.

Definitions (2-D, pixel spacing (row_mm, col_mm), possibly anisotropic):
- surface of a mask = the mask minus its binary erosion by a 3x3 cross (pixels with a
  4-neighbour outside the mask; pixels on the image border count as surface);
- d(a -> B) = Euclidean distance in mm from surface pixel a to the nearest surface pixel of B,
  from ``scipy.ndimage.distance_transform_edt(~surface_B, sampling=spacing)``;
- ASD (average symmetric surface distance, Heimann et al. 2009; MONAI's symmetric form) =
  the mean of all d(a -> B) and d(b -> A) pooled together;
- HD (Hausdorff) = max(max_a d(a -> B), max_b d(b -> A));
- IoU = |A and B| / |A or B|.
Empty masks: IoU is NaN when both masks are empty (undefined; 0 when only one is); ASD and HD
are NaN when either mask is empty (no surface to measure from). Aggregate with NaN-aware
statistics and report how many values were finite.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

from geometry.heatmaps import as_numpy

_CROSS = generate_binary_structure(2, 1)


def _bool(mask: np.ndarray) -> np.ndarray:
    """Boolean view of a mask (probabilities are thresholded at 0.5)."""
    if isinstance(mask, np.ndarray) and mask.dtype == bool:
        return mask
    return as_numpy(mask) > 0.5


def surface(mask: np.ndarray) -> np.ndarray:
    """(H, W) boolean surface (boundary pixels) of a binary mask."""
    m = _bool(mask)
    return m & ~binary_erosion(m, structure=_CROSS, border_value=0)


def iou(pred: np.ndarray, true: np.ndarray) -> float:
    """Intersection over union of two (H, W) binary masks (NaN when both are empty)."""
    p, t = _bool(pred), _bool(true)
    union = np.count_nonzero(p | t)
    return float("nan") if union == 0 else np.count_nonzero(p & t) / union


def surface_distances(
    pred: np.ndarray, true: np.ndarray, spacing: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm, or px if spacing is None) pred-surface -> true-surface and the reverse.

    Returns two 1-D arrays; both empty when either mask is empty.
    """
    sp = (1.0, 1.0) if spacing is None else (float(spacing[0]), float(spacing[1]))
    sa, sb = surface(pred), surface(true)
    if not sa.any() or not sb.any():
        return np.zeros(0), np.zeros(0)
    # Crop to the surfaces' bounding box: every nearest surface pixel lies inside it.
    rows, cols = np.nonzero(sa | sb)
    crop = np.s_[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    sa, sb = sa[crop], sb[crop]
    dt_b = distance_transform_edt(~sb, sampling=sp)
    dt_a = distance_transform_edt(~sa, sampling=sp)
    return dt_b[sa], dt_a[sb]


def average_surface_distance(
    pred: np.ndarray, true: np.ndarray, spacing: tuple[float, float] | None = None
) -> float:
    """Average symmetric surface distance (pooled, see module docstring); NaN if a mask is empty."""
    return _asd(*surface_distances(pred, true, spacing))


def hausdorff_distance(
    pred: np.ndarray, true: np.ndarray, spacing: tuple[float, float] | None = None
) -> float:
    """Symmetric Hausdorff distance between the surfaces; NaN if a mask is empty."""
    return _hd(*surface_distances(pred, true, spacing))


def _asd(ab: np.ndarray, ba: np.ndarray) -> float:
    """Pooled mean of both directed surface-distance sets; NaN when they are empty."""
    return float("nan") if ab.size == 0 else float((ab.sum() + ba.sum()) / (ab.size + ba.size))


def _hd(ab: np.ndarray, ba: np.ndarray) -> float:
    """Largest of both directed surface-distance sets; NaN when they are empty."""
    return float("nan") if ab.size == 0 else float(max(ab.max(), ba.max()))


def segmentation_metrics(
    pred: np.ndarray, true: np.ndarray, spacing: tuple[float, float] | None = None
) -> dict[str, np.ndarray]:
    """Per-channel IoU, ASD and HD of (C, H, W) multi-label masks.

    Args:
        pred: (C, H, W) predicted masks (bool, or probabilities thresholded at 0.5).
        true: (C, H, W) true masks.
        spacing: (row_mm, col_mm); None gives distances in pixels.

    Returns:
        {"iou": (C,), "asd": (C,), "hd": (C,)} float64 arrays (NaN where undefined).
    """
    p, t = _bool(pred), _bool(true)
    if p.shape != t.shape or p.ndim != 3:
        raise ValueError(
            f"segmentation_metrics: need equal (C, H, W) shapes, got {p.shape} and {t.shape}"
        )
    out = {"iou": [], "asd": [], "hd": []}
    for pc, tc in zip(p, t, strict=True):
        out["iou"].append(iou(pc, tc))
        ab, ba = surface_distances(pc, tc, spacing)  # once per bone, for both metrics
        out["asd"].append(_asd(ab, ba))
        out["hd"].append(_hd(ab, ba))
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
