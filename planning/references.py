"""Reference plannings from annotations: a rater's Schoettle point from their own landmarks and
cortex line, constructed exactly as for the model (geometry.schoettle) but from annotated points.

The construction is done in mm when the spacing is known (perpendicularity is not preserved by
anisotropic pixel spacing) and mapped back to original pixels.
"""

from __future__ import annotations

import numpy as np

from datamodules.sample import LANDMARKS, RaterAnnotation
from geometry.lines import fit_line_tls, from_mm, to_mm
from geometry.schoettle import schoettle_point


def rater_schoettle(
    annotation: RaterAnnotation, spacing: tuple[float, float] | None
) -> np.ndarray:
    """(2,) Schoettle point (original pixels) of one rater; NaN when not constructible.

    LM1 is the total-least-squares line through the rater's cortex points (the line through
    p_prox and p_dist when there are two).
    """
    def phys(p: np.ndarray) -> np.ndarray:
        return np.asarray(p, np.float64) if spacing is None else to_mm(p, spacing)

    try:
        lm1 = fit_line_tls(phys(annotation.cortex_points))
    except ValueError:
        return np.full(2, np.nan)
    lms = phys(annotation.landmarks)
    res = schoettle_point(
        lm1, lms[LANDMARKS.index("p_tmc")], lms[LANDMARKS.index("p_blum")]
    )
    return res.point if spacing is None else from_mm(res.point, spacing)
