"""Anatomical scale prior: mm per pixel estimated from the predicted femur, with an interval.

Two sizes of the femur in a lateral view, both measured perpendicular to the shaft axis:
- the AP depth of the distal femur (anterior trochlea to the posterior condyles), the widest
  slice of the femur mask. Published adult values lie around 55-72 mm (e.g. TKA sizing and
  3-D morphometry studies: smaller in women and East-Asian cohorts, larger in men), adolescents
  from about 12 years down to ~48 mm; we take ``CONDYLE_AP_MM`` = 48-76 mm;
- the AP width of the femoral diaphysis, the median width of the proximal third of the slices.
  Adult mid-shaft sagittal diameters are ~24-33 mm, the distal diaphysis a little wider,
  adolescents narrower; we take ``SHAFT_AP_MM`` = 20-38 mm.

Each size S px gives the interval [lo_mm / S, hi_mm / S] mm per px, widened by the segmentation
error (``EDGE_PX`` on each border). When both are measurable the intervals are intersected (when
they do not overlap, the hull is returned and ``why`` says so). The central value is the
geometric mean of the interval's ends. These priors are honest but wide (about 1.6x): they catch
a calibration that is wrong by a factor (a sphere found on a metal box, a detector-plane tag on a
magnified film, mm read as cm), not a 10 % error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from geometry.lines import largest_component

if TYPE_CHECKING:
    from geometry.pixel_spacing import PixelSpacing

CONDYLE_AP_MM = (48.0, 76.0)
SHAFT_AP_MM = (20.0, 38.0)
DISAGREE_TOLERANCE = 1.25  # a spacing this far beyond the interval disagrees with the anatomy
EDGE_PX = 2.0  # segmentation error on each border of a measured width
SHAFT_MAX_RATIO = 0.55  # shaft / distal depth above this: the "shaft" seen is still the flaring
# metaphysis (adult diaphysis / condyle AP is about 28 / 62 = 0.45), so it is not used
MAX_POINTS = 50_000  # mask pixels used: a larger mask is read on a k x k grid (cost bounded; a
# width is then known to k px, far inside the prior's ~1.6x interval)


@dataclass(frozen=True)
class ScaleEstimate:
    """mm per pixel from anatomy: central value, interval [lo, hi], method and why."""

    mm_per_px: float
    lo: float
    hi: float
    method: str
    why: str
    shaft_axis: np.ndarray | None = field(default=None, compare=False, repr=False)  # the mask's
    # ``shaft_axis`` (kept: the review's ``lm1_axis`` check uses it, found once)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "mm_per_px": round(self.mm_per_px, 5),
            "lo": round(self.lo, 5),
            "hi": round(self.hi, 5),
            "method": self.method,
            "why": self.why,
        }


def _slices(
    u: np.ndarray, v: np.ndarray, n_bins: int, pixel: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per slice along u: centre u, width (max v - min v + ``pixel``) and mid v; empty slices
    dropped."""
    u0, step = float(u.min()), (float(u.max()) + 1e-9 - float(u.min())) / n_bins
    edges = u0 + step * np.arange(n_bins + 1)
    idx = np.clip(((u - u0) / step).astype(np.intp), 0, n_bins - 1)  # equal bins: no search
    vmin = np.full(n_bins, np.inf)
    vmax = np.full(n_bins, -np.inf)
    np.minimum.at(vmin, idx, v)
    np.maximum.at(vmax, idx, v)
    ok = np.isfinite(vmin)
    centre = 0.5 * (edges[:-1] + edges[1:])
    return centre[ok], (vmax - vmin + pixel)[ok], (0.5 * (vmax + vmin))[ok]


def _shaft(femur_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, np.ndarray] | None:
    """(points of the largest femur piece, subsampled every ``k`` px, their centre, ``k``, the
    shaft axis): the principal axis refined twice from the midpoints of the proximal third's
    slices, pointing from the wide (condyle) end to the shaft. None for a piece under 2000 px
    or without a shaft-like end."""
    mask = largest_component(np.asarray(femur_mask) > 0)
    count = int(np.count_nonzero(mask))
    if count < 2000:
        return None
    k = max(1, int(np.ceil(np.sqrt(count / MAX_POINTS))))
    ys, xs = np.nonzero(mask[::k, ::k])
    pts = np.column_stack([xs, ys]).astype(np.float64) * k
    centre = pts.mean(0)
    _, _, vt = np.linalg.svd(pts - centre, full_matrices=False)
    axis = vt[0]
    for _ in range(2):  # refine the shaft axis from the midpoints of the shaft slices
        normal = np.array([-axis[1], axis[0]])
        u, v = (pts - centre) @ axis, (pts - centre) @ normal
        uc, width, mid = _slices(u, v, 40, k)
        if len(uc) < 10:
            return None
        third = len(uc) // 3
        if np.median(width[:third]) < np.median(width[-third:]):  # shaft at the low-u end: turn
            axis = -axis
            uc, width, mid = -uc[::-1], width[::-1], -mid[::-1]
        shaft = slice(len(uc) - third, len(uc) - 1)  # proximal third, without the cut end
        if np.ptp(uc[shaft]) < 1.0:
            return None
        slope = np.polyfit(uc[shaft], mid[shaft], 1)[0]
        axis = axis + slope * np.array([-axis[1], axis[0]])
        axis /= np.linalg.norm(axis)
    return pts, centre, k, axis


def shaft_axis(femur_mask: np.ndarray) -> np.ndarray | None:
    """Unit (x, y) direction of the femoral shaft in a (H, W) bool mask, pointing proximal (the
    axis the widths are measured across), or None (see ``_shaft``)."""
    found = _shaft(femur_mask)
    return None if found is None else found[3]


def estimate_scale(femur_mask: np.ndarray) -> ScaleEstimate | None:
    """mm per pixel from a (H, W) bool femur mask in original pixels, or None (see module doc).

    None when the mask is empty or too small (< 2000 px), or shows no shaft-like end.
    """
    found = _shaft(femur_mask)
    if found is None:
        return None
    pts, centre, k, axis = found
    normal = np.array([-axis[1], axis[0]])
    u, v = (pts - centre) @ axis, (pts - centre) @ normal
    uc, width, _ = _slices(u, v, 40, k)
    if np.median(width[: len(uc) // 3]) < np.median(width[-(len(uc) // 3) :]):
        width = width[::-1]  # distal (wide) end first, shaft last
    third = len(uc) // 3
    depth = float(np.max(width[: 2 * third]))  # widest slice of the distal two thirds
    shaft_w = float(np.median(width[len(uc) - third : len(uc) - 1]))
    length = float(np.ptp(u))
    ivs, methods = [], []
    if depth > 4 * EDGE_PX:
        ivs.append((CONDYLE_AP_MM[0] / (depth + EDGE_PX), CONDYLE_AP_MM[1] / (depth - EDGE_PX)))
        methods.append(f"distal femur AP depth {depth:.0f} px")
    if shaft_w > 4 * EDGE_PX and length > 1.5 * depth and shaft_w < SHAFT_MAX_RATIO * depth:
        ivs.append((SHAFT_AP_MM[0] / (shaft_w + EDGE_PX), SHAFT_AP_MM[1] / (shaft_w - EDGE_PX)))
        methods.append(f"shaft AP width {shaft_w:.0f} px")
    if not ivs:
        return None
    lo, hi = max(i[0] for i in ivs), min(i[1] for i in ivs)
    why = "intersection of " + " and ".join(methods) if len(ivs) > 1 else methods[0]
    if lo > hi:
        lo, hi = min(i[0] for i in ivs), max(i[1] for i in ivs)
        why = f"{why} disagree: hull of both intervals"
    if len(ivs) == 1 and "shaft" not in why:
        why += " (too little shaft visible for a second measure)"
    return ScaleEstimate(float(np.sqrt(lo * hi)), float(lo), float(hi), " + ".join(methods), why,
                         axis)


def spacing_disagreement(spacing: PixelSpacing, est: ScaleEstimate) -> str | None:
    """Review reason when the spacing lies more than ``DISAGREE_TOLERANCE`` outside the
    anatomical interval, else None.

    The prior is there to catch gross errors (a wrong tag, a sphere that is another object:
    1.5x-10x); just outside the interval is within the prior's and the predicted mask's own
    error (true phantom spacings fell up to 10 % outside it on truth masks, more on predicted
    ones), and flagging those would only teach users to ignore the flag.
    """
    mm = spacing.mean_mm
    if est.lo / DISAGREE_TOLERANCE <= mm <= est.hi * DISAGREE_TOLERANCE:
        return None
    factor = mm / est.hi if mm > est.hi else est.lo / mm
    return (
        f"spacing from {spacing.source} disagrees with anatomy by {factor:.1f}x "
        f"({mm:.3f} mm/px, anatomy {est.lo:.3f}-{est.hi:.3f})"
    )
