"""Plausibility checks of a sample's ground-truth labels against each other and the image.

The validator (``datamodules.validate``) runs them on every sample before training; each returns
``LabelProblem`` s (which bone's file, error or warning, one-line message). They catch labels
that are valid files but plainly wrong, which no schema or mask-format check sees:

- ``mask_coverage``: a mask covering most of the image or touching all four borders (inverted,
  0 = bone, or all white);
- ``mask_overlaps``: two bone masks that are identical (error) or mostly the same region;
- ``patella_fibula_swap``: the patella mask lying by the tibia and the fibula by the femur;
- ``mask_fit``: masks that follow the image's edges far worse than their own flipped or rotated
  copy (a flipped mask; masks drawn on a JPEG's stored pixels while its EXIF orientation tag
  rotates the image);
- ``landmark_swap``: ``p_blum`` on the posterior cortex line and ``p_tmc`` off it.

Thresholds were set on the built-in and the independent phantoms (no warning on 280 true
samples; see the module constants). Work is done on a copy of at most ``WORK_SIDE`` px.
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
# a bone needs this many px on the working copy for the edge-fit check (a small bone's edges
# are too few to compare)
MIN_FIT_PX = 1000
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
    mask). Only bones of at least ``MIN_FIT_PX`` px on the working copy are compared; the edge
    measure does not depend on the image's polarity (phantoms with dark bone exist). The message
    gives the contrast (inside minus a ring around the mask) as given and transformed.
    ``small``, ``small_masks``: ``shrink``'s image and masks."""
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
