"""Anatomical plausibility checks of a plan, on top of the geometric ones in
``geometry.plan_geometry`` (low peaks, thin LM1 support, coinciding LM2/LM3).

A network can be confidently wrong: an untrained or out-of-distribution model yields heat-maps
peaking far above the trained range and landmarks that make a valid-looking but absurd plan.
These checks compare the plan with what the anatomy allows and return human-readable reasons:
- heat-map peaks far above 1 (targets peak at exactly 1): output not calibrated;
- p_tmc far from LM1 (it lies on or within a few mm of the posterior cortex line);
- LM2-LM3 distance (twice the inscribed radius) beyond what a knee allows;
- landmarks or the Schoettle point away from the predicted femur.
Distances are in mm when the spacing is known; without spacing only unit-free checks run.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt

from geometry.plan_geometry import LANDMARK_NAMES, Plan

MAX_PEAK = 1.5  # targets peak at 1
MAX_TMC_TO_LM1_MM = 6.0
MAX_LM_SEPARATION_MM = 30.0
MAX_OFF_FEMUR_MM = 5.0


class _MaskDistance:
    """Distance in mm from a point (x, y) to the nearest mask pixel (0 inside); the distance
    transform is computed once, and only when a point lies outside the mask."""

    def __init__(self, mask: np.ndarray, spacing: tuple[float, float]):
        self.mask, self.spacing, self._dist = mask, spacing, None

    def __call__(self, p: np.ndarray) -> float:
        h, w = self.mask.shape
        x, y = int(round(float(p[0]))), int(round(float(p[1])))
        if not (0 <= x < w and 0 <= y < h):
            return float("inf")
        if self.mask[y, x]:
            return 0.0
        if self._dist is None:
            self._dist = distance_transform_edt(~self.mask, sampling=self.spacing)
        return float(self._dist[y, x])


def plausibility_reasons(plan: Plan, femur_mask: np.ndarray | None = None) -> list[str]:
    """Reasons why ``plan`` looks anatomically implausible (empty list: nothing found).

    Args:
        plan: plan in original pixels (with its spacing, or None).
        femur_mask: (H, W) bool predicted femur in original pixels, or None to skip the
            on-the-femur checks.
    """
    reasons = []
    for name, peak in zip(LANDMARK_NAMES, plan.peaks, strict=True):
        if np.isfinite(peak) and peak > MAX_PEAK:
            reasons.append(
                f"heat-map of {name} peaks at {peak:.2f} (targets peak at 1): uncalibrated output"
            )
    sp = plan.spacing
    if sp is None:
        return reasons
    if plan.lm1 is not None:
        from geometry.lines import distance_mm

        d_tmc = float(distance_mm(plan.landmark("p_tmc")[None], plan.lm1, sp)[0])
        if d_tmc > MAX_TMC_TO_LM1_MM:
            reasons.append(
                f"p_tmc lies {d_tmc:.1f} mm from LM1 (expected on the posterior cortex line, "
                f"<= {MAX_TMC_TO_LM1_MM:g} mm)"
            )
    if np.isfinite(plan.lm_separation) and plan.lm_separation > MAX_LM_SEPARATION_MM:
        reasons.append(
            f"LM2-LM3 distance {plan.lm_separation:.1f} mm is implausible for a knee "
            f"(> {MAX_LM_SEPARATION_MM:g} mm)"
        )
    if femur_mask is not None and np.asarray(femur_mask).any():
        dist = _MaskDistance(np.asarray(femur_mask, dtype=bool), sp)
        named = [(n, plan.landmark(n)) for n in LANDMARK_NAMES] + [("Schoettle point",
                                                                     plan.schoettle)]
        for name, p in named:
            if not np.all(np.isfinite(p)):
                continue
            d = dist(p)
            if d > MAX_OFF_FEMUR_MM:
                where = "outside the image" if not np.isfinite(d) else f"{d:.1f} mm"
                reasons.append(f"{name} lies off the predicted femur ({where})")
    return reasons
