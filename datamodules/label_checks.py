"""Plausibility checks of a sample's ground-truth labels against each other and the image.

The validator (``datamodules.validate``) runs them on every sample before training; each returns
``LabelProblem`` s (which bone's file, error or warning, one-line message). They catch labels
that are valid files but plainly wrong, which no schema or mask-format check sees:

- ``mask_coverage``: a mask covering most of the image or touching all four borders (inverted,
  0 = bone, or all white);
- ``mask_overlaps``: two bone masks that are identical (error) or mostly the same region;
- ``patella_fibula_swap``: the patella mask lying by the tibia and the fibula by the femur;
- ``patella_fibula_place``: a lone misplaced patella (far from the femur, or on the tibia) or
  fibula (far from the tibia), measured in femur widths so that it holds at any image size,
  spacing, flip or rotation;
- ``mask_fit``: masks that follow the image's edges far worse than their own flipped or rotated
  copy (a flipped mask; masks drawn on a JPEG's stored pixels while its EXIF orientation tag
  rotates the image);
- ``landmark_swap``: ``p_blum`` on the posterior cortex line and ``p_tmc`` off it.

Thresholds were set on the built-in and the independent phantoms (no warning on 280 true
samples; the position checks and the edge fit's size limits on 1250 built-in and 200
independent ones, and 2400 small built-in ones; see the module constants). Work is done on a
copy of at most ``WORK_SIDE`` px.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from datamodules.sample import BONES
from geometry.lines import fit_line_tls

WORK_SIDE = 256  # the fit and position checks run on a copy of at most this side (cheap)
# a mask covering more of the image than this, or touching all four borders, is inverted or
# all white (true bones on 280 phantoms: at most 35 % (a femur) and two borders)
MAX_COVER = 0.7
# two different bones overlapping with an intersection-over-union above this are one region
# drawn twice (true overlaps on 280 phantoms: patella on femur IoU <= 0.09, fibula behind tibia
# <= 0.37; "of the smaller mask" reaches 0.68 and 1.0 there, so it cannot be the measure)
MAX_IOU = 0.5
# the patella lies on the front of the distal femur, touching or near the condyles, and the
# fibula alongside the proximal tibia, touching or behind it: in FEMUR WIDTHS (the diameter of
# the largest disc inside the femur mask, i.e. the condyles' depth: ~50 mm whatever the image
# size, spacing or orientation; 36-63 mm on the phantoms), the gap between the patella
# mask and the femur mask may be at most PATELLA_GAP and the gap between the fibula and the tibia
# masks at most FIBULA_GAP (true gaps on 1250 built-in phantoms: both 0; on 200 independent
# ones: patella <= 0.16, fibula 0). In a radiograph the patellofemoral gap is the cartilage, a
# few mm, and a high-riding patella lies in front of the femoral metaphysis, ~1-2 cm off, so
# 0.5 femur widths (~25 mm) is far; the fibular head overlaps or touches the tibia in a lateral
# view, so 0.3 (~15 mm) is far
PATELLA_GAP = 0.5
FIBULA_GAP = 0.3
# the patellar tendon ties the patella to the tibia: the gap between their masks is at most
# 1.22 femur widths on the 1450 phantoms above and ~1.6 in an extreme patella alta (tendon twice
# the patella's length); beyond this the patella is drawn up the femoral shaft or elsewhere
PATELLA_TIBIA_GAP = 2.5
# a patella mask with more than this share of its pixels on the tibia mask is drawn on the
# tibia (true patellae never overlap the tibia in a lateral view: 0 on every phantom)
PATELLA_ON_TIBIA = 0.3
# gaps of at most this many px on the working copy are never reported (rasterisation)
MIN_GAP_PX = 3.0
# a bone needs this many px on the working copy for the edge-fit check, and the working copy a
# shorter side of at least MIN_FIT_SIDE px: fewer edges are too few to compare. Tiny images gave
# false warnings even above 1000 px (true masks fitting 3.1-4.0x better flipped or rotated on
# phantoms of 116 x 98 and 145 x 128 px), and lowering MIN_FIT_PX to 400 gave more on images of
# 96-160 px (a true tibia of 459 px: 6.1x); from 150 px up none on 2400 phantoms of 150-400 px
# (default and all factors on). So small images are not checked; a real radiograph's working
# copy (256 px long side) has a shorter side of 150 px or more unless narrower than ~3:5
MIN_FIT_PX = 1000
MIN_FIT_SIDE = 150
# a mask whose flipped (or, square image, rotated) copy lies this many times better on the
# image's edges is misplaced (true femur and tibia: at most 2.45x on 280 phantoms)
FIT_RATIO = 3.0
# p_tmc lies on the posterior cortex line (0.0 mm on every phantom) and p_blum in front of it
# (0.8-12.8 mm): p_tmc farther than this from the line while p_blum is nearer than
# ``BLUM_ON_LINE_MM`` is the two names swapped
TMC_OFF_LINE_MM = 2.5
BLUM_ON_LINE_MM = 1.0
# without any scale, the same as fractions of the femur mask's extent
TMC_OFF_LINE_FRAC = 0.02
BLUM_ON_LINE_FRAC = 0.006


@dataclass(frozen=True)
class LabelProblem:
    """One problem: the bone whose mask it concerns (None: the annotation or the image), whether
    it is an error, and what is wrong (one line)."""

    bone: int | None
    error: bool
    message: str


TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "flipped upside down": lambda m: m[::-1],
    "mirrored left-right": lambda m: m[:, ::-1],
    "rotated 180 deg": lambda m: m[::-1, ::-1],
    "rotated 90 deg": lambda m: np.rot90(m, 1),
    "rotated -90 deg": lambda m: np.rot90(m, -1),
    "transposed": lambda m: m.T,
    "anti-transposed": lambda m: np.rot90(m, 2).T,
}


def mask_coverage(masks: Sequence[np.ndarray | None]) -> list[LabelProblem]:
    """Errors for masks covering more than ``MAX_COVER`` of the image or touching all four
    borders: drawn inverted (0 = bone) or all white."""
    out = []
    for b, m in enumerate(masks):
        if m is None or not m.any():
            continue
        share = float(np.count_nonzero(m)) / m.size
        borders = bool(m[0].any()) + bool(m[-1].any()) + bool(m[:, 0].any()) + bool(m[:, -1].any())
        if share > MAX_COVER or borders == 4:
            where = f"covers {100 * share:.0f} % of the image" if share > MAX_COVER else \
                "touches all four image borders"
            out.append(LabelProblem(b, True, f"{BONES[b]} mask {where}: inverted mask? (0 must be "
                                             "background, the bone nonzero)"))
    return out


def mask_overlaps(masks: Sequence[np.ndarray | None]) -> list[LabelProblem]:
    """Two bones' masks that are identical (error) or overlap with IoU > ``MAX_IOU`` (warning),
    reported on the second bone of the pair."""
    out, copies = [], set()  # a copy is reported once, against the first bone it copies
    for a in range(len(masks)):
        for b in range(a + 1, len(masks)):
            ma, mb = masks[a], masks[b]
            if a in copies or b in copies or ma is None or mb is None or not ma.any() \
                    or not mb.any():
                continue
            if np.array_equal(ma, mb):
                copies.add(b)
                out.append(LabelProblem(b, True, f"{BONES[b]} mask is identical to the "
                                                 f"{BONES[a]} mask: the same file copied?"))
                continue
            inter = int(np.count_nonzero(ma & mb))
            iou = inter / max(int(np.count_nonzero(ma | mb)), 1)
            if iou > MAX_IOU:
                out.append(LabelProblem(b, False, f"{BONES[b]} and {BONES[a]} masks overlap with "
                                                  f"IoU {iou:.2f} (true bones overlap thinly): one "
                                                  "bone drawn in both files?"))
    return out


def shrink(image: np.ndarray | None, masks: Sequence[np.ndarray | None]
           ) -> tuple[np.ndarray | None, list[np.ndarray | None]]:
    """The image (area-averaged, float32) and the masks (bool: bone where at least half of the
    pixel is) on a copy of at most ``WORK_SIDE`` px, which ``patella_fibula_swap`` and
    ``mask_fit`` work on (shrink once, check twice)."""
    shape = image.shape if image is not None else next((m.shape for m in masks if m is not None),
                                                         None)
    if shape is None:
        return None, list(masks)
    h, w = shape[:2]
    f = max(1.0, max(h, w) / WORK_SIDE)
    size = (max(1, round(w / f)), max(1, round(h / f)))
    small = None if image is None else cv2.resize(image.astype(np.float32), size,
                                                  interpolation=cv2.INTER_AREA)
    ms = [None if m is None else
          cv2.resize((m > 0).astype(np.uint8) * 255, size, interpolation=cv2.INTER_AREA) >= 128
          for m in masks]  # fmt: skip
    return small, ms


def _mean_distance(dist_to: np.ndarray, m: np.ndarray) -> float:
    return float(dist_to[m].mean())


def patella_fibula_swap(small_masks: Sequence[np.ndarray | None]) -> list[LabelProblem]:
    """The patella sits on the femur and the fibula by the tibia: a patella mask whose pixels
    lie nearer the tibia than the femur, or a fibula mask nearer the femur than the tibia, is
    a swapped pair (280 true phantoms, full resolution: every patella >= 12 px nearer the
    femur, every fibula >= 10 px nearer the tibia; swapped: the reverse). When both masks are
    there both must be misplaced (a flipped tibia mask moves next to the femur, and so the
    fibula "by the femur"). One warning, on the patella mask. ``small_masks``: ``shrink``'s
    masks."""
    femur, patella, tibia, fibula = small_masks
    if femur is None or tibia is None or not femur.any() or not tibia.any():
        return []
    to_femur = cv2.distanceTransform((~femur).astype(np.uint8), cv2.DIST_L2, 3)
    to_tibia = cv2.distanceTransform((~tibia).astype(np.uint8), cv2.DIST_L2, 3)
    said = []
    if patella is not None and patella.any():
        d_f, d_t = _mean_distance(to_femur, patella), _mean_distance(to_tibia, patella)
        if d_t < d_f:
            said.append("the patella mask lies by the tibia")
    if fibula is not None and fibula.any():
        d_f, d_t = _mean_distance(to_femur, fibula), _mean_distance(to_tibia, fibula)
        if d_f < d_t:
            said.append("the fibula mask lies by the femur")
    if not said or (len(said) == 1 and patella is not None and patella.any()
                    and fibula is not None and fibula.any()):
        return []  # both masks there: both must be misplaced (one alone may be a wrong tibia)
    return [LabelProblem(1 if "patella" in said[0] else 3, False,
                         f"{' and '.join(said)}: patella and fibula masks swapped?")]


def femur_width(femur: np.ndarray) -> float:
    """Diameter (px) of the largest disc inside the femur mask, holes filled: the depth of the
    condyles, a size that neither the image's field of view (how much shaft it shows) nor a
    flip or rotation changes."""
    padded = np.pad(femur, 1).astype(np.uint8)  # the image border bounds the disc
    outside = padded.copy()
    cv2.floodFill(outside, None, (0, 0), 1)  # background reached from outside; the rest: holes
    filled = (padded | (outside == 0)).astype(np.uint8)
    return 2.0 * float(cv2.distanceTransform(filled, cv2.DIST_L2, cv2.DIST_MASK_PRECISE).max())


def _distance_to(bone: np.ndarray) -> np.ndarray:
    """Px to the nearest pixel of ``bone``, for every pixel (1 next to it, 0 on it)."""
    return cv2.distanceTransform((~bone).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def _gap(to_bone: np.ndarray, m: np.ndarray) -> float:
    """Px between mask ``m`` and the bone whose distance map is ``to_bone`` (0: they touch or
    overlap; ``to_bone`` is 1 on the pixels next to the bone)."""
    return max(0.0, float(to_bone[m].min()) - 1.0)


def patella_fibula_place(small_masks: Sequence[np.ndarray | None]) -> list[LabelProblem]:
    """Warnings for a lone misplaced patella or fibula, which ``patella_fibula_swap`` (both
    misplaced) does not see: the patella mask more than ``PATELLA_GAP`` femur widths from the
    femur mask (e.g. drawn in an empty corner), lying more than ``PATELLA_ON_TIBIA`` on the
    tibia mask (drawn on the tibia) or more than ``PATELLA_TIBIA_GAP`` femur widths from it
    (drawn up the femoral shaft; one line per patella), the fibula mask more than
    ``FIBULA_GAP`` femur widths from the tibia mask (shifted away). Distances between the
    masks' outlines (distance transforms on the working copy), in femur widths
    (``femur_width``): the same at any image size, spacing, flip or rotation. Needs the femur
    mask (the scale); ``small_masks``: ``shrink``'s masks."""
    femur, patella, tibia, fibula = small_masks
    if femur is None or not femur.any():
        return []
    width = femur_width(femur)
    if width <= 0:
        return []
    out = []
    has_tibia = tibia is not None and tibia.any()
    to_tibia = _distance_to(tibia) if has_tibia else None  # (both bones are measured to it)
    if patella is not None and patella.any():
        gap = _gap(_distance_to(femur), patella)
        on_tibia = (float(np.count_nonzero(patella & tibia)) / np.count_nonzero(patella)
                    if has_tibia else 0.0)
        if on_tibia > PATELLA_ON_TIBIA:
            out.append(LabelProblem(1, False, f"{100 * on_tibia:.0f} % of the patella mask lies "
                                              "on the tibia mask (the patella lies in front of "
                                              "the femoral condyles, never on the tibia): "
                                              "patella drawn on the tibia, or the mask of "
                                              "another image?"))
        elif gap > max(PATELLA_GAP * width, MIN_GAP_PX):
            out.append(_too_far(1, "femur", gap / width,
                                f"the patella lies in front of the femoral condyles, at most "
                                f"{PATELLA_GAP:g} away): patella drawn on another object, or "
                                "the mask of another image?"))
        elif to_tibia is not None and (t_gap := _gap(to_tibia, patella)) > \
                PATELLA_TIBIA_GAP * width:
            out.append(_too_far(1, "tibia", t_gap / width,
                                f"the patellar tendon holds it within ~1.5, the check allows "
                                f"{PATELLA_TIBIA_GAP:g}): patella drawn up the femoral shaft or "
                                "on another object?"))
    if to_tibia is not None and fibula is not None and fibula.any():
        gap = _gap(to_tibia, fibula)
        if gap > max(FIBULA_GAP * width, MIN_GAP_PX):
            out.append(_too_far(3, "tibia", gap / width,
                                f"the fibula runs alongside the proximal tibia, touching or "
                                f"behind it, at most {FIBULA_GAP:g} away): fibula (or tibia) "
                                "mask shifted, or of another image?"))
    return out


def _too_far(index: int, other: str, widths: float, why: str) -> LabelProblem:
    """The warning for bone ``index``'s mask lying ``widths`` femur widths from the ``other``
    bone's mask; ``why`` closes the parenthesis and says what it may mean."""
    return LabelProblem(index, False, f"the {BONES[index]} mask lies {widths:.1f} femur widths "
                                      f"from the {other} mask ({why}")


def _edge_score(grad: np.ndarray, masks: Sequence[np.ndarray]) -> float:
    """Mean gradient magnitude on the outlines of ``masks`` (the image border left out: a bone
    leaving the image has no edge there)."""
    total, count = 0.0, 0
    kernel = np.ones((3, 3), np.uint8)
    for m in masks:
        mu = m.astype(np.uint8)
        edge = (mu - cv2.erode(mu, kernel)).astype(bool)
        edge[:2] = edge[-2:] = False
        edge[:, :2] = edge[:, -2:] = False
        total += float(grad[edge].sum())
        count += int(np.count_nonzero(edge))
    return total / count if count else 0.0


def _contrast(img: np.ndarray, m: np.ndarray) -> float:
    """Mean inside the mask minus mean in a ring around it (3 % of the image side), in units
    of the image's 1-99 % value span (bone brighter: positive)."""
    side = max(2, round(0.03 * max(img.shape)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * side + 1, 2 * side + 1))
    ring = (cv2.dilate(m.astype(np.uint8), kernel) > 0) & ~m
    if not m.any() or not ring.any():
        return float("nan")
    lo, hi = np.percentile(img, [1, 99])
    return float((img[m].mean() - img[ring].mean()) / max(float(hi - lo), 1e-6))


def mask_fit(small: np.ndarray, small_masks: Sequence[np.ndarray | None],
             orientation_applied: bool = False) -> list[LabelProblem]:
    """Masks that lie on the image's edges far worse than a flipped (or, on a square image, a
    rotated) copy of themselves: first the femur, patella and tibia together (all masks in
    another frame than the image, e.g. drawn on a JPEG's stored pixels while its EXIF tag
    rotates the image: one warning, bone None), else the femur and the tibia alone (a flipped
    mask). Only bones of at least ``MIN_FIT_PX`` px on a working copy whose shorter side has at
    least ``MIN_FIT_SIDE`` px are compared (smaller images are not checked); the edge measure
    does not depend on the image's polarity (phantoms with dark bone exist). The message gives
    the contrast (inside minus a ring around the mask) as given and transformed.
    ``small``, ``small_masks``: ``shrink``'s image and masks."""
    if min(small.shape[:2]) < MIN_FIT_SIDE:
        return []
    ms = small_masks
    grad_img = cv2.GaussianBlur(small, (0, 0), 1.0)
    grad = np.hypot(cv2.Sobel(grad_img, cv2.CV_32F, 1, 0), cv2.Sobel(grad_img, cv2.CV_32F, 0, 1))
    usable = {b: m for b, m in enumerate(ms[:3]) if m is not None and m.sum() >= MIN_FIT_PX}
    hint = (" The file's orientation tag was applied to the image: masks drawn on its stored "
            "(unrotated) pixels?" if orientation_applied else "")

    def best(bones: list[int]) -> tuple[float, str, float]:
        given = _edge_score(grad, [usable[b] for b in bones])
        top, name = 0.0, ""
        for what, fn in TRANSFORMS.items():
            moved = [np.ascontiguousarray(fn(usable[b])) for b in bones]
            if moved[0].shape != small.shape:
                continue
            if (score := _edge_score(grad, moved)) > top:
                top, name = score, what
        return top / max(given, 1e-9), name, given

    if len(usable) >= 2:
        ratio, name, _ = best(sorted(usable))
        if ratio > FIT_RATIO:
            fn = TRANSFORMS[name]
            said = ", ".join(f"{BONES[b]} {_contrast(small, m):+.2f} "
                             f"({_contrast(small, np.ascontiguousarray(fn(m))):+.2f})"
                             for b, m in usable.items())
            return [LabelProblem(None, False, f"the bone masks fit the image's edges {ratio:.1f}x "
                                              f"better {name}: masks in another frame than the "
                                              f"image? (contrast inside vs around each mask, as "
                                              f"given and {name}: {said}){hint}")]
    out = []
    for b in (0, 2):
        if b not in usable:
            continue
        ratio, name, _ = best([b])
        if ratio > FIT_RATIO:
            m = usable[b]
            moved = np.ascontiguousarray(TRANSFORMS[name](m))
            out.append(LabelProblem(b, False, f"{BONES[b]} mask fits the image's edges {ratio:.1f}x"
                                              f" better {name}: mask {name} or of another image? "
                                              f"(contrast inside vs around it "
                                              f"{_contrast(small, m):+.2f}, {name} "
                                              f"{_contrast(small, moved):+.2f}){hint}"))
    return out


def landmark_swap(landmarks: np.ndarray, cortex_points: np.ndarray, mm_per_px: float | None,
                  femur_extent_px: float) -> str | None:
    """'p_blum and p_tmc swapped?' when p_tmc (row 1 of ``landmarks``) lies off the posterior
    cortex line and p_blum (row 0) on it: > ``TMC_OFF_LINE_MM`` and < ``BLUM_ON_LINE_MM``
    (fractions of the femur's extent when no scale is known). None when plausible."""
    try:
        line = fit_line_tls(np.asarray(cortex_points, dtype=np.float64))
    except ValueError:
        return None
    normal = np.array([-line.direction[1], line.direction[0]])
    d_blum, d_tmc = (abs(float((np.asarray(p, dtype=np.float64) - line.point) @ normal))
                     for p in landmarks[:2])
    if mm_per_px is not None:
        d_blum, d_tmc = d_blum * mm_per_px, d_tmc * mm_per_px
        far, near, unit = TMC_OFF_LINE_MM, BLUM_ON_LINE_MM, "mm"
    else:
        far, near = TMC_OFF_LINE_FRAC * femur_extent_px, BLUM_ON_LINE_FRAC * femur_extent_px
        unit = "px"
    if d_tmc > far and d_blum < near:
        return (f"p_tmc lies {d_tmc:.1f} {unit} off the cortex line and p_blum {d_blum:.1f} {unit}"
                " (p_tmc lies on it, p_blum in front): p_blum and p_tmc swapped?")
    return None
