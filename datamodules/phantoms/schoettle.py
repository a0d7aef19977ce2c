"""The true Schoettle point of a phantom, from the construction (private to the phantoms).

Construction (Kordon et al. 2019 / Schoettle et al. 2007): LM1 is the posterior femoral cortex
line, through point ``a`` with unit direction ``u``; LM2 and LM3 are the perpendiculars to LM1
through p_tmc and p_blum. With t_tmc = u.(p_tmc - a), t_blum = u.(p_blum - a) their positions
along LM1, LM2 and LM3 are parallel at distance |t_blum - t_tmc|, so the circle tangent to all
three has radius r = |t_blum - t_tmc| / 2 and centre

    p_sp = a + u (t_tmc + t_blum) / 2 + n r,

where n is the unit normal of LM1 pointing to p_blum's side (anterior of LM1).
"""

from __future__ import annotations

import numpy as np


def schoettle_from_construction(
    line_point: np.ndarray, line_dir: np.ndarray, p_tmc: np.ndarray, p_blum: np.ndarray
) -> tuple[np.ndarray, float]:
    """Return (centre (2,), radius) of the circle tangent to LM1, LM2, LM3 (see module doc)."""
    a = np.asarray(line_point, dtype=np.float64)
    u = np.asarray(line_dir, dtype=np.float64)
    u = u / np.linalg.norm(u)
    n = np.array([-u[1], u[0]])
    if np.dot(n, np.asarray(p_blum, dtype=np.float64) - a) < 0:
        n = -n
    t_tmc = float(np.dot(u, np.asarray(p_tmc, dtype=np.float64) - a))
    t_blum = float(np.dot(u, np.asarray(p_blum, dtype=np.float64) - a))
    r = abs(t_blum - t_tmc) / 2.0
    return a + u * (t_tmc + t_blum) / 2.0 + n * r, r
