"""Pixel spacing: one value type (``PixelSpacing``) and ONE resolver that every command uses.

Precedence of :func:`resolve_pixel_spacing` (first valid source wins), and why:
1. ``user``: spacing given on the command line (the user knows best, e.g. their own calibration);
2. ``annotation``: a researcher's explicit spacing for this image in its annotation JSON;
3. ``PixelSpacing`` (DICOM): calibrated by the modality at the patient plane;
4. ``sphere``: a calibration ball of known diameter (30 mm by default, the paper's; 25 mm balls
   exist) found in the image (``geometry.spacing``): calibrated at the object plane, corrects
   the X-ray magnification;
5. ``ImagerPixelSpacing`` (DICOM): detector plane; overstates sizes by the magnification
   (typically 5-20 %), hence after the sphere;
6. unknown: distances stay in pixels and the plan is flagged for review.

Every source seen is listed in ``SpacingResolution.candidates`` (value, valid, accepted, why).
A value that is present but invalid (``PixelSpacing = 0\\0``) is reported as such, never silently
treated as absent. When an anatomical scale estimate (``geometry.anatomy_scale``) is given, a
sphere whose implied spacing falls outside its interval is rejected, and a chosen spacing that
disagrees with it becomes a review reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geometry.anatomy_scale import ScaleEstimate, spacing_disagreement

PRECEDENCE = ("user", "annotation", "PixelSpacing", "sphere", "ImagerPixelSpacing")
MIN_MM, MAX_MM = 0.01, 5.0  # plausible mm per pixel of a radiograph (mammography .. scout)
MAX_SPHERE_UNCERTAINTY = 0.02  # a sphere spacing less certain than +-2 % flags the plan
MAX_ASPECT = 1.1  # radiograph pixels are square; beyond this the network saw a squeezed knee
SPHERE_MM = 30.0  # the paper's calibration sphere (Kordon et al. 2019, section 3)
MIN_SPHERE_MM, MAX_SPHERE_MM = 5.0, 100.0  # markers are ~20-50 mm; outside this, a typo (cm?)


def check_sphere_diameter(mm: Any) -> float:
    """The calibration sphere's diameter in mm as a float; ValueError saying what is wrong (a
    diameter in cm or inches would scale every distance of the plan)."""
    try:
        value = float(mm)
    except (TypeError, ValueError):
        raise ValueError(f"sphere diameter {mm!r} is not a number") from None
    if not (math.isfinite(value) and MIN_SPHERE_MM <= value <= MAX_SPHERE_MM):
        raise ValueError(f"sphere diameter {value:g} mm is outside {MIN_SPHERE_MM:g}.."
                         f"{MAX_SPHERE_MM:g} mm (give it in millimetres)")
    return value


@dataclass(frozen=True)
class PixelSpacing:
    """Row and column spacing in mm per pixel, where it came from, and a note (why)."""

    row_mm: float
    col_mm: float
    source: str
    note: str = ""

    def __post_init__(self) -> None:
        for name in ("row_mm", "col_mm"):
            v = getattr(self, name)
            if not isinstance(v, int | float | np.floating | np.integer) or not math.isfinite(v):
                raise ValueError(f"pixel spacing from {self.source}: {name}={v!r} is not a number")
            if not MIN_MM <= float(v) <= MAX_MM:
                raise ValueError(
                    f"pixel spacing from {self.source}: {name}={float(v):g} mm/px is outside the "
                    f"plausible range {MIN_MM:g}..{MAX_MM:g}"
                )
        object.__setattr__(self, "row_mm", float(self.row_mm))
        object.__setattr__(self, "col_mm", float(self.col_mm))

    @classmethod
    def from_value(cls, value: Any, source: str, note: str = "") -> PixelSpacing:
        """From one number (square pixels), a (row, col) pair or a PixelSpacing; ValueError."""
        if isinstance(value, PixelSpacing):
            return value
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
        if arr.size == 1:
            arr = np.repeat(arr, 2)
        if arr.size != 2:
            raise ValueError(f"pixel spacing from {source}: expected 1 or 2 values, got {value!r}")
        return cls(float(arr[0]), float(arr[1]), source, note)

    def as_tuple(self) -> tuple[float, float]:
        """(row_mm, col_mm), as the geometry functions take it."""
        return (self.row_mm, self.col_mm)

    @property
    def mean_mm(self) -> float:
        """Mean of row and column spacing (mm per pixel)."""
        return 0.5 * (self.row_mm + self.col_mm)


@dataclass
class SpacingResolution:
    """The chosen spacing (or None), every source seen, the sphere search, review reasons."""

    spacing: PixelSpacing | None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    sphere: dict[str, Any] | None = None
    reasons: list[str] = field(default_factory=list)
    anatomy: ScaleEstimate | None = None

    @property
    def source(self) -> str | None:
        """Source of the chosen spacing, or None when unknown."""
        return None if self.spacing is None else self.spacing.source

    @property
    def source_detail(self) -> str | None:
        """``source``, with ``ImagerPixelSpacing`` divided by the file's magnification told
        apart from the detector's own pitch ("ImagerPixelSpacing/magnification"), as the
        overlay states it."""
        if self.source == "ImagerPixelSpacing" and any(
                c.get("accepted") and "magnification" in c for c in self.candidates):
            return "ImagerPixelSpacing/magnification"
        return self.source

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary for the plan report."""
        sp = self.spacing
        return {
            "row_mm": None if sp is None else sp.row_mm,
            "col_mm": None if sp is None else sp.col_mm,
            "source": "unknown" if sp is None else sp.source,
            "note": "" if sp is None else sp.note,
            "precedence": list(PRECEDENCE),
            "candidates": self.candidates,
            "sphere": self.sphere,
            "anatomy": None if self.anatomy is None else self.anatomy.as_dict(),
            "reasons": list(self.reasons),
        }


_NOTES = {
    "user": "given on the command line",
    "annotation": "from the annotation file",
    "PixelSpacing": "DICOM PixelSpacing (calibrated at the patient)",
    "sphere": "calibration sphere in the image (object plane)",
    "ImagerPixelSpacing": "DICOM ImagerPixelSpacing (detector plane: sizes overstated by the "
    "magnification, typically 5-20 %)",
}


def _fmt(value: Any) -> Any:
    """A JSON-friendly copy of a raw spacing value."""
    if isinstance(value, PixelSpacing):
        return [value.row_mm, value.col_mm]
    try:
        return [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)]
    except (TypeError, ValueError):
        return str(value)


def resolve_pixel_spacing(
    image: np.ndarray | None,
    *,
    user: Any = None,
    annotation: Any = None,
    dicom_pixel: Any = None,
    dicom_imager: Any = None,
    dicom_magnification: float | None = None,
    invalid_tags: Iterable[tuple[str, str] | str] = (),
    declared_aspect: Any = None,
    detect_sphere: bool = True,
    anatomy: ScaleEstimate | None = None,
    sphere_diameter_mm: float = SPHERE_MM,
    sphere_candidates: Sequence[Any] | None = None,
) -> SpacingResolution:
    """Choose the pixel spacing by the module's precedence; the only place that knows it.

    Args:
        image: (H, W) image in [0, 1] for the sphere search (None: no search).
        user, annotation, dicom_pixel, dicom_imager: raw values (one number, a (row, col) pair or
            a PixelSpacing) or None when the source is absent.
        dicom_magnification: DICOM ``EstimatedRadiographicMagnificationFactor`` (valid, >= 1):
            ``ImagerPixelSpacing`` is divided by it (to the object plane, as the file states).
        invalid_tags: DICOM tags present but unreadable or invalid, as (tag, raw text) pairs.
        declared_aspect: the pixel shape the image file declares (height / width of a pixel,
            or a (ratio, where) pair: PNG pHYs, TIFF resolution, DICOM PixelAspectRatio; the
            reader's ``LoadedImage.declared_aspect``); beyond ``MAX_ASPECT`` it is the same
            review reason as a non-square spacing, whatever spacing is chosen.
        detect_sphere: search for a calibration sphere when no higher source is valid.
        anatomy: scale estimated from the predicted femur; rejects disagreeing spheres and
            flags a disagreeing chosen spacing.
        sphere_diameter_mm: true diameter of the calibration sphere (mm per pixel =
            diameter / (2 x fitted radius), whatever diameter the candidates were searched with).
        sphere_candidates: ``geometry.spacing.find_sphere_candidates`` already run on ``image``
            (so the search can run beside the network); None: searched here when needed.

    Raises:
        ValueError: the user's spacing or the sphere diameter is invalid (a usage error, not a
            review reason).
    """
    sphere_diameter_mm = check_sphere_diameter(sphere_diameter_mm)
    res = SpacingResolution(None, anatomy=anatomy)
    raw = {"user": user, "annotation": annotation, "PixelSpacing": dicom_pixel,
           "ImagerPixelSpacing": dicom_imager}  # fmt: skip
    for item in invalid_tags:
        tag, text = (item, "") if isinstance(item, str) else item
        res.candidates.append(
            {"source": tag, "value": text, "valid": False, "accepted": False,
             "why": "present but invalid"}
        )  # fmt: skip
        res.reasons.append(f"DICOM {tag} is present but invalid ({text!r}): not used")
    for source in PRECEDENCE:
        if source == "sphere":
            if res.spacing is None:
                _sphere(res, image, detect_sphere, anatomy, sphere_diameter_mm, sphere_candidates)
            continue
        value = raw[source]
        if value is None:
            continue
        entry = {"source": source, "value": _fmt(value), "valid": True, "accepted": False}
        note = _NOTES[source]
        if source == "PixelSpacing" and (why := _uncalibrated_copy(value, dicom_imager,
                                                                    dicom_magnification)):
            entry.update(why=why)  # (valid: a tag, just not at the patient)
            res.candidates.append(entry)
            continue
        if source == "ImagerPixelSpacing" and dicom_magnification:
            m = float(dicom_magnification)
            value = np.asarray(_fmt(value), dtype=np.float64) / m
            note = (f"DICOM ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor {m:g} "
                    "(object plane by the file's estimate)")
            entry["magnification"] = m
            entry["object_plane_value"] = _fmt(value)  # what is used: the tag's / m
        try:
            sp = PixelSpacing.from_value(value, source, note)
        except (TypeError, ValueError) as err:
            if source == "user":
                raise ValueError(f"--spacing: {err}") from err
            entry.update(valid=False, why=str(err))
            res.reasons.append(f"{note} is invalid: {err}")
            res.candidates.append(entry)
            continue
        if res.spacing is None:
            res.spacing = sp
            entry.update(accepted=True, why="first valid source in the precedence order")
        else:
            entry["why"] = f"a higher source ({res.spacing.source}) was used"
        res.candidates.append(entry)
    if res.spacing is None:
        hint = "" if anatomy is None else (
            f" (the femur's size suggests {anatomy.lo:.3f}-{anatomy.hi:.3f} mm/px)"
        )
        res.reasons.append(
            "pixel spacing unknown (no valid DICOM spacing, annotation, user value or "
            f"calibration sphere): distances in pixels, no 2.5 mm circle{hint}"
        )
    square = True
    if res.spacing is not None:
        r, c = res.spacing.row_mm, res.spacing.col_mm
        if max(r, c) > MAX_ASPECT * min(r, c):
            square = False
            res.reasons.append(
                f"pixels are not square ({r:g} x {c:g} mm from {res.spacing.source}, "
                f"{max(r, c) / min(r, c):.2g}:1): the network saw the knee squeezed, as "
                "stored; resample the image to square pixels (or check the spacing)")
    declared = _declared_aspect(declared_aspect)
    if declared is not None and square:
        ratio, where = declared
        if max(ratio, 1.0 / ratio) > MAX_ASPECT:
            shape = f"{ratio:.2g}:1" if ratio >= 1 else f"1:{1.0 / ratio:.2g}"
            res.reasons.append(
                f"pixels are not square ({where} declares {shape}, height:width): the network "
                "saw the knee squeezed, as stored; resample the image to square pixels (or "
                "check the file's tags)")
    if res.spacing is not None:
        why = spacing_disagreement(res.spacing, anatomy) if anatomy is not None else None
        if why:
            res.reasons.append(why)
    return res


def _uncalibrated_copy(pixel: Any, imager: Any, magnification: float | None) -> str | None:
    """Why ``PixelSpacing`` is not at the patient (None: take it as the file says): equal to
    ``ImagerPixelSpacing`` while the file states a magnification above 1, it is the detector's
    pitch copied (PS3.3 C.8.11.4: calibrated spacing differs from the imager's), and sizes in
    it are overstated by that magnification."""
    if imager is None or not magnification or float(magnification) <= 1.0 + 1e-6:
        return None
    try:
        a = np.asarray(_fmt(pixel), dtype=np.float64).ravel()
        b = np.asarray(_fmt(imager), dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return None
    if a.size != b.size or not np.allclose(a, b, rtol=1e-6, atol=0.0):
        return None
    return (f"equals ImagerPixelSpacing while the file states a magnification of "
            f"{float(magnification):g}: the detector's pitch copied, not calibrated at the "
            "patient (ImagerPixelSpacing / magnification used instead)")


def _declared_aspect(value: Any) -> tuple[float, str] | None:
    """(height / width, where) of a file's declared pixel shape: a number or a (ratio, where)
    pair (a list after a JSON round trip); None when absent or not a positive finite ratio."""
    if value is None:
        return None
    where = "the image file"
    if isinstance(value, list | tuple):
        if len(value) != 2:
            return None
        value, where = value[0], str(value[1])
    try:
        ratio = float(value)
    except (TypeError, ValueError):
        return None
    return (ratio, where) if math.isfinite(ratio) and ratio > 0 else None


def sphere_search_needed(**inputs: Any) -> bool:
    """Whether ``resolve_pixel_spacing(image, **inputs)`` would search for a sphere: no valid
    source above it in the precedence (so the search can start before the call, e.g. beside
    the network). ``inputs``: its keyword arguments; a bad user spacing searches nothing."""
    inputs = {**inputs, "detect_sphere": False, "sphere_candidates": None}
    try:
        res = resolve_pixel_spacing(None, **inputs)
    except ValueError:
        return False
    rank = PRECEDENCE.index
    return res.spacing is None or rank(res.spacing.source) > rank("sphere")


def _sphere(
    res: SpacingResolution,
    image: np.ndarray | None,
    detect: bool,
    anatomy: ScaleEstimate | None,
    diameter_mm: float,
    cands: Sequence[Any] | None = None,
) -> None:
    """Run the sphere search into ``res`` (candidate, its score, accepted or rejected and why);
    ``cands``: the search's result when it already ran."""
    if not detect or (image is None and cands is None):
        return
    if cands is None:
        from geometry.spacing import find_sphere_candidates

        cands = find_sphere_candidates(np.asarray(image), diameter_mm)
    if not cands:
        res.sphere = {"found": False, "why": "no round bright candidate"}
        return
    best = cands[0]
    mm_per_px = diameter_mm / (2.0 * best.radius_px)  # (the search may assume another size)
    info = {"found": best.accepted, **best.as_dict(), "mm_per_px": round(mm_per_px, 5),
            "diameter_mm": diameter_mm, "n_candidates": len(cands)}  # fmt: skip
    entry = {"source": "sphere", "value": [mm_per_px] * 2, "valid": best.accepted,
             "accepted": False, "why": best.why}  # fmt: skip
    if best.accepted:
        note = f"{diameter_mm:g} mm {_NOTES['sphere']}"
        try:
            sp = PixelSpacing.from_value(mm_per_px, "sphere", note)
            clash = spacing_disagreement(sp, anatomy) if anatomy is not None else None
        except ValueError as err:  # a few-pixel "ball" implies an implausible spacing
            clash = str(err)
        if clash:
            info.update(accepted=False, found=False, why=f"rejected: {clash}")
            entry.update(valid=False, why=info["why"])
            res.reasons.append(f"calibration-sphere candidate rejected: {clash}")
        else:
            res.spacing = sp
            entry.update(accepted=True)
            bound = sphere_uncertainty(best)
            info["uncertainty"] = round(bound, 4)
            if bound > MAX_SPHERE_UNCERTAINTY:
                res.reasons.append(
                    f"calibration sphere edge blurred ({best.metrics.get('blur_px', 0.0):.1f} px "
                    f"on a radius of {best.radius_px:.0f} px): the spacing may be off by up to "
                    f"{100 * bound:.0f} % (the display curve moves the visible edge by up to "
                    "three blur widths); give --spacing or a higher-resolution image"
                )
    res.sphere = info
    res.candidates.append(entry)


def sphere_uncertainty(det: Any) -> float:
    """Relative bound on a sphere's spacing error: ``3 * blur / radius``.

    A ball blurred by sigma px shows its edge up to 2-3 fitted blur widths from its true radius,
    depending on the unknown display curve: a log display of a blurred opaque disc puts the half
    level ~2 sigma inside (and the fitted sigma underestimates that ramp), a clip after the blur
    moves it outwards. On the phantoms (tests/test_sphere_detector.py) the error stays within.
    """
    blur = float(det.metrics.get("blur_px", 0.0)) if det.metrics else 0.0
    return 3.0 * max(blur, 0.0) / max(float(det.radius_px), 1e-6)


def spacing_tuple(spacing: PixelSpacing | Sequence[float] | None) -> tuple[float, float] | None:
    """(row_mm, col_mm) of a PixelSpacing or pair, None stays None (for geometry functions)."""
    if spacing is None:
        return None
    if isinstance(spacing, PixelSpacing):
        return spacing.as_tuple()
    return (float(spacing[0]), float(spacing[1]))
