"""Point and line errors for the plan, in mm where the pixel spacing is known (else pixels).

- landmark / Schoettle-point error: Euclidean distance between predicted and true points, with
  coordinates scaled to mm first (x * col_mm, y * row_mm);
- line error (paper): mean distance of the true first and last annotated cortex points
  (p_prox, p_dist) to the predicted line LM1, measured in mm.
"""

from __future__ import annotations

import numpy as np

from geometry.lines import Line, distance_mm, to_mm


def point_error(
    pred: np.ndarray, true: np.ndarray, spacing: tuple[float, float] | None = None
) -> np.ndarray:
    """Euclidean distance(s) between (..., 2) pixel points, in mm (px if spacing is None)."""
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if spacing is not None:
        p, t = to_mm(p, spacing), to_mm(t, spacing)
    return np.hypot(*np.moveaxis(p - t, -1, 0))


def line_error(
    line: Line | None, cortex_points: np.ndarray, spacing: tuple[float, float] | None = None
) -> float:
    """Mean distance of the first and last of (K >= 2, 2) true cortex points to ``line``.

    NaN when there is no predicted line.
    """
    pts = np.asarray(cortex_points, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 2:
        raise ValueError(f"line_error: need at least 2 cortex points, got {len(pts)}")
    if line is None:
        return float("nan")
    return float(distance_mm(pts[[0, -1]], line, spacing).mean())
