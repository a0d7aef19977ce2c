"""The JSON plan report: every point in original pixels and mm, spacing and its source,
per-task confidence, the model's uncertainty (TTA covariance ellipse of every landmark and of
the Schoettle point, hourglass agreement), the lateral-knee evidence, input warnings (lossy
JPEG) and the ``needs_review`` verdict with its reasons (``planning.review.review``).

Coordinates: (x, y) = (column, row) in original pixels, pixel centres on integers; ``mm``
values are the same points scaled by the spacing, (x * col_mm, y * row_mm), i.e. measured from
the centre of the top-left pixel; they are null when the spacing is unknown.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from datamodules.dataset_io import real_path
from datamodules.path_limits import replace_link
from datamodules.sample import BONES
from geometry.lines import Line, to_mm
from geometry.plan_geometry import LANDMARK_NAMES, Plan

if TYPE_CHECKING:  # (annotations only)
    from planning.second_knee import SecondKnee

REPORT_VERSION = 3


def _num(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _pt(p: np.ndarray | None) -> list[float | None] | None:
    if p is None:
        return None
    arr = np.asarray(p, dtype=np.float64).reshape(2)
    return None if not np.all(np.isfinite(arr)) else [float(arr[0]), float(arr[1])]


def _pt_mm(p: np.ndarray | None, spacing: tuple[float, float] | None) -> list[float] | None:
    if p is None or spacing is None:
        return None
    return _pt(to_mm(np.asarray(p, dtype=np.float64), spacing))


def _line(line: Line | None, spacing: tuple[float, float] | None) -> dict[str, Any] | None:
    if line is None:
        return None
    out: dict[str, Any] = {
        "point_px": _pt(line.point),
        "direction_px": _pt(line.direction),
    }
    if spacing is not None:
        mm = line.map(lambda q: to_mm(q, spacing))
        out["point_mm"], out["direction_mm"] = _pt(mm.point), _pt(mm.direction)
    return out


def segmentation_confidence(seg_prob: np.ndarray) -> dict[str, dict[str, float | None]]:
    """Per bone: predicted area fraction, and ``uncertain_fraction``: the uncertain area
    (p in 0.25..0.75) relative to the area where the bone is at all likely (p >= 0.25), so it
    lies in [0, 1] (1: nowhere sure).

    Args:
        seg_prob: (4, S, S) bone probabilities in the network frame.
    """
    out = {}
    for b, bone in enumerate(BONES):
        p = np.asarray(seg_prob[b], dtype=np.float64)
        area = int((p >= 0.5).sum())
        likely = int((p >= 0.25).sum())
        uncertain = int(((p >= 0.25) & (p <= 0.75)).sum())
        out[bone] = {
            "area_fraction": area / p.size,
            "uncertain_fraction": None if likely == 0 else uncertain / likely,
            "max_probability": float(p.max()),
        }
    return out


def ellipse(cov: np.ndarray) -> dict[str, float] | None:
    """1-sigma ellipse of a (2, 2) covariance: semi-axes (major, minor; ``"sigma": 1`` says
    so: the overlay draws twice these) and the major axis' angle in [0, 180) degrees from +x
    (image x right, y down; an axis has no direction); None when not finite."""
    cov = np.asarray(cov, dtype=np.float64)
    if not np.all(np.isfinite(cov)):
        return None
    vals, vecs = np.linalg.eigh(cov)
    vals = np.clip(vals, 0.0, None)
    angle = float(np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1]))) % 180.0
    return {
        "major": float(np.sqrt(vals[1])),
        "minor": float(np.sqrt(vals[0])),
        "angle_deg": 0.0 if angle >= 180.0 else angle,  # -1e-17 % 180 is 180.0
        "sigma": 1,
    }


def uncertainty_report(unc: Any, spacing: tuple[float, float] | None) -> dict[str, Any]:
    """Per point (p_blum, p_tmc, Schoettle point): TTA covariance ellipse in px (and mm) and
    its 1-sigma spread; the hourglass shift per landmark."""
    from planning.tta import POINT_NAMES

    cov_mm = None if spacing is None else unc.covariance_mm(spacing)
    points = {}
    for j, name in enumerate(POINT_NAMES):
        points[name] = {
            "ellipse_px": ellipse(unc.covariance[j]),
            "ellipse_mm": None if cov_mm is None else ellipse(cov_mm[j]),
            "spread": _num(unc.spread(name, spacing if spacing is not None else 1.0)),
            "spread_unit": "mm" if spacing is not None else "px",
        }
    n = len(unc.points)

    def per_landmark(d: Any) -> dict[str, Any] | None:
        return None if d is None else {k: _num(d[i]) for i, k in enumerate(LANDMARK_NAMES)}

    def per_point(d: Any) -> dict[str, Any] | None:
        return None if d is None else {k: _num(x) for k, x in zip(POINT_NAMES, d, strict=True)}

    method = f"test-time augmentation, {n} plans (flip, scale, shift, rotate)"
    return {
        "method": method if n > 1 else "hourglass agreement only (no test-time augmentation)",
        "points": points,
        "failed_fraction": _num(unc.failures),
        "hourglass_shift_px": per_landmark(unc.hourglass_shift_px),
        "look_shift_px": per_landmark(unc.look_shift_px),
        "metal_shift_px": per_point(unc.metal_shift_px),
        "blank_shift_px": per_point(unc.blank_shift_px),
        "blank_cut_mm": None if unc.blank_cut_mm is None else _num(unc.blank_cut_mm),
    }


def build_report(
    plan: Plan,
    *,
    image_path: str | Path,
    image_shape: tuple[int, int],
    spacing_source: str | None,
    checkpoint: str | Path | None,
    overlay_path: str | Path | None,
    seg_prob: np.ndarray | None = None,
    settings: dict[str, Any] | None = None,
    sphere: dict[str, Any] | None = None,
    reasons: list[str] | None = None,
    uncertainty: Any = None,
    evidence: Any = None,
    warnings: list[str] | None = None,
    second_knee: SecondKnee | None = None,
    model_sha256: str | None = None,
    image_sha256: str | None = None,
) -> dict[str, Any]:
    """The report dict (JSON-ready; NaN -> null).

    Args:
        plan: the plan (original pixels).
        image_path, image_shape: the input image and its (H, W).
        spacing_source: how the spacing was found (DICOM tag, annotation, sphere, user) or None.
        checkpoint: checkpoint file used.
        overlay_path: where the overlay PNG was written.
        seg_prob: (4, S, S) network-frame bone probabilities, for segmentation confidence.
        settings: decode / line-fit options used.
        sphere: calibration-sphere detection details, when one was run.
        reasons: ``planning.review.review(plan, context)`` (the verdict; None: not reviewed).
        uncertainty: ``planning.tta.Uncertainty`` or None.
        evidence: ``planning.ood.KneeEvidence`` or None.
        warnings: input warnings (e.g. lossy JPEG) that do not flag the plan by themselves.
        second_knee: ``planning.second_knee.SecondKnee`` found beside the planned knee, or None.
        model_sha256: SHA-256 of the model file (``planning.batch.model_digest``), or None.
        image_sha256: SHA-256 of the input file's bytes (which image a plan is of: a later
            plan of another image of the same name does not replace it), or None.
    """
    sp = plan.spacing
    landmarks = {
        name: {
            "px": _pt(plan.landmarks[i]),
            "mm": _pt_mm(plan.landmarks[i], sp),
            "heatmap_peak": _num(plan.peaks[i]),
        }
        for i, name in enumerate(LANDMARK_NAMES)
    }
    confidence: dict[str, Any] = {
        "landmark_peaks": {n: _num(plan.peaks[i]) for i, n in enumerate(LANDMARK_NAMES)},
        "roi_peak": _num(plan.roi_peak),
        "roi_support_points": int(plan.lm1_support),
        "lm1_rms": _num(plan.lm1_rms),
        "lm1_rms_unit": "mm" if sp is not None else "px",
    }
    if seg_prob is not None:
        confidence["segmentation"] = segmentation_confidence(seg_prob)
    radius_px = _num(plan.radius_px)
    return {
        "report_version": REPORT_VERSION,
        "image": {"path": str(image_path), "real_path": str(real_path(Path(image_path))),
                  "sha256": image_sha256, "height": image_shape[0], "width": image_shape[1]},
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "model_sha256": model_sha256,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "kneeplan_version": _version(),
        "overlay": None if overlay_path is None else str(overlay_path),
        "coordinates": "(x, y) = (column, row) in original pixels, pixel centres on integers; "
        "mm = (x * col_mm, y * row_mm)",
        "spacing": {
            "row_mm": None if sp is None else sp[0],
            "col_mm": None if sp is None else sp[1],
            "source": spacing_source if sp is not None else "unknown",
            "sphere": sphere,
        },
        "settings": settings or {},
        "landmarks": landmarks,
        "lm1": _line(plan.lm1, sp),
        "lm2": _line(plan.lm2, sp),
        "lm3": _line(plan.lm3, sp),
        "schoettle_point": {
            "px": _pt(plan.schoettle),
            "mm": _pt_mm(plan.schoettle, sp),
            "inscribed_radius_px": radius_px,
            "inscribed_radius_mm": None if plan.radius_mm is None else _num(plan.radius_mm),
            "reference_radius_mm": 2.5,
            "lm2_lm3_distance": _num(plan.lm_separation),
            "lm2_lm3_distance_unit": "mm" if sp is not None else "px",
        },
        "confidence": confidence,
        "uncertainty": None if uncertainty is None else uncertainty_report(uncertainty, sp),
        "knee_evidence": None if evidence is None else evidence.as_dict(),
        "second_knee": None if second_knee is None else second_knee.as_dict(),
        "warnings": list(warnings or []),
        "verdict": verdict(reasons),
        "reviewed": reasons is not None,  # (the review gate ran; not: a person reviewed it)
        "needs_review": bool(reasons),
        "review_reasons": [str(r) for r in reasons or []],
        "review_codes": [getattr(r, "code", "") for r in reasons or []],
    }


def verdict(reasons: list[Any] | None) -> str:
    """The plan's verdict in words: "needs review" (a reason was found), "no review reason
    found" (the gate ran and found none) or "not reviewed" (no gate ran)."""
    if reasons is None:
        return "not reviewed"
    return "needs review" if reasons else "no review reason found"


def _version() -> str | None:
    """This package's installed version (None when run from a bare source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kneeplan")
    except PackageNotFoundError:
        return None


def write_report(path: str | Path, report: dict[str, Any]) -> None:
    """Write the report as indented JSON (strict: no NaN)."""
    replace_link(path).write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
