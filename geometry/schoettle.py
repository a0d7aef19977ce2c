"""The Schoettle point: centre of the circle tangent to LM1, LM2 and LM3 (Schoettle et al. 2007).

LM2 and LM3 are the perpendiculars to LM1 through p_tmc and p_blum, so they are parallel and the
circle tangent to all three has radius r = half their distance. Its centre lies on the anterior
side of LM1: the midpoint of the feet of the two perpendiculars on LM1, moved by r along LM1's
normal toward the anterior side, which the caller gives (``anterior``: the side the femur lies
on) or, by default, the side of p_blum (p_blum lies anterior of the posterior cortex). Build it
in an isotropic frame (mm, or pixels of square spacing): perpendicularity is not preserved by
anisotropic scaling.

Example:
    >>> res = schoettle_point(Line(np.zeros(2), np.array([0.0, 1.0])), [0, 10], [4, 30])
    >>> res.point, res.radius      # feet at y=10 and y=30; r = 10, on the +x side
    (array([10., 20.]), 10.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geometry.lines import Line


@dataclass(frozen=True)
class SchoettleResult:
    """The Schoettle construction.

    Attributes:
        point: (2,) circle centre (the Schoettle point), NaN when p_blum lies on LM1.
        radius: circle radius = half the distance between LM2 and LM3.
        lm2, lm3: the perpendiculars to LM1 through p_tmc and p_blum.
        foot_tmc, foot_blum: the feet of those perpendiculars on LM1.
        blum_distance: signed distance of p_blum from LM1 (sign = side of ``lm1.normal``).
        degenerate: names of degeneracies: ``blum_on_lm1`` (no anterior side),
            ``lm2_lm3_coincide`` (zero radius).
    """

    point: np.ndarray
    radius: float
    lm2: Line
    lm3: Line
    foot_tmc: np.ndarray
    foot_blum: np.ndarray
    blum_distance: float
    degenerate: tuple[str, ...] = field(default=())

    @property
    def is_degenerate(self) -> bool:
        """True when any degeneracy was found."""
        return bool(self.degenerate)


def schoettle_point(
    lm1: Line,
    p_tmc: np.ndarray,
    p_blum: np.ndarray,
    eps: float = 1e-9,
    anterior: float | None = None,
) -> SchoettleResult:
    """Construct LM2, LM3 and the Schoettle point from LM1 and the two landmarks.

    Args:
        lm1: the posterior femoral cortex line.
        p_tmc: (2,) posterior origin of the medial femoral condyle.
        p_blum: (2,) posterior point of Blumensaat's line (defines the anterior side).
        eps: distances at or below this count as zero (degenerate).
        anterior: +1 or -1, the side of ``lm1.normal`` that is anterior (where the femur
            lies); None: the side of p_blum. With it the circle never follows a misplaced p_blum.
    """
    p_tmc = np.asarray(p_tmc, dtype=np.float64).reshape(2)
    p_blum = np.asarray(p_blum, dtype=np.float64).reshape(2)
    lm2 = lm1.perpendicular_through(p_tmc)
    lm3 = lm1.perpendicular_through(p_blum)
    f_tmc, f_blum = lm1.foot(p_tmc), lm1.foot(p_blum)
    radius = abs(float(lm1.coordinate(p_blum) - lm1.coordinate(p_tmc))) / 2.0
    d_blum = float(lm1.signed_distance(p_blum))
    degenerate = []
    if abs(d_blum) <= eps:
        degenerate.append("blum_on_lm1")
    if radius <= eps:
        degenerate.append("lm2_lm3_coincide")
    side = np.sign(d_blum) if anterior is None or not anterior else np.sign(anterior)
    centre = (f_tmc + f_blum) / 2.0 + side * radius * lm1.normal
    point = np.full(2, np.nan) if side == 0 else centre
    return SchoettleResult(point, radius, lm2, lm3, f_tmc, f_blum, d_blum, tuple(degenerate))
