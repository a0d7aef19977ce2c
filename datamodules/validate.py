"""Check a whole dataset folder and report EVERY problem at once (file and reason).

Usage: ``python -m datamodules.validate [--strict] ROOT [ROOT ...]``; exit status 1 when any error
is found, or with ``--strict`` any warning (warnings count as errors: e.g. a label warning must stop
a training pipeline; training's ``data.strict_validation: true`` does the same).

Errors: missing folders, unreadable, truncated, blank (constant) or oversized images (more pixels
than ``KNEEPLAN_MAX_PIXELS``, read from the header), duplicate ids (``a.png`` and ``a.dcm``),
missing / unreadable / wrongly sized / coloured / transparent / non-binary bone masks (read by
``dataset_io.read_mask``, the one mask reader), broken symlinks and symlink loops, missing,
unparsable or too deeply nested annotations and every schema problem
``annotations.check_annotation`` (the one schema checker) finds: unknown schema version, id or image
name that disagrees with the file, missing landmarks, wrong JSON types (booleans, numeric strings,
nested lists where numbers belong), NaN coordinates, landmarks or a Schoettle point outside the
image, fewer than two (distinct) cortex points, non-positive, non-numeric or implausible (outside
0.01-5 mm) spacing, unknown or repeated keys; orphan files (a mask or annotation with no image),
an annotation named other than ``<id>.json`` (``.yaml``, ``.JSON``, another case or Unicode form:
one line saying so), folders named like an image or an annotation, and bone masks that are
inverted or all white (> 70 % of the image, or all four borders) or identical to another bone's
(``datamodules.label_checks``). File names are printed with control characters
escaped, so each problem stays one line. Warnings (training still runs): no pixel spacing anywhere
(file or annotation), an empty bone mask, a cortex point outside the image, files of unknown type or
other folders in images/, a dataset of one image (no validation image after the split), a lossy
(JPEG) image, an image using under a quarter of its value range, and where the annotation and the
femur mask disagree: a landmark or cortex point > 5 mm off the femur ((row, col) written for
(x, y)?), a spacing far from what the femur's size implies (cm written as mm?), p_blum on the
cortex line and p_tmc off it (swapped?); an image spacing tag present but invalid (``0\\0``);
two bone masks mostly one region (IoU > 0.5), the patella and fibula masks swapped, a lone
misplaced patella (far from the femur or the tibia, or on the tibia) or fibula (far from the
tibia), masks that lie on the image's edges far worse than flipped or rotated (with a hint when an
EXIF orientation tag was applied: masks drawn on the stored pixels?; images under 150 px are not
checked for this).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datamodules.annotations import (
    AnnotationError,
    check_annotation,
    load_json,
    parse_annotation,
)
from datamodules.dataset_io import (
    IMAGE_SUFFIXES,
    DatasetError,
    annotation_path,
    id_name_problem,
    image_files,
    is_apple_double,
    mask_path,
    nfc_fold,
    read_mask,
    resolve_sample_spacing,
    spacing_inputs,
    stat_problem,
)
from datamodules.decoder_messages import printable
from datamodules.image_io import ImageReadError, LoadedImage, load_image
from datamodules.label_checks import (
    landmark_swap,
    mask_coverage,
    mask_fit,
    mask_overlaps,
    patella_fibula_place,
    patella_fibula_swap,
    shrink,
)
from datamodules.one_line_parser import OneLineParser
from datamodules.pixel_limit import MIN_SIDE_PX
from datamodules.sample import BONES, LANDMARKS
from geometry.anatomy_scale import estimate_scale, spacing_disagreement

# an image whose values span less of [0, 1] than this is flat for the network (``make plan``'s
# overlay stretches such an image for display, planning/overlay.py MIN_SHOWN_RANGE)
MIN_USED_RANGE = 0.25
# a landmark or cortex point farther than this from the femur mask is not on the femur (true
# points lie on it or its outline; the review gate flags predicted points at the same distance)
OFF_FEMUR_MM = 5.0


@dataclass(frozen=True)
class Issue:
    """One problem: the file it concerns and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return printable(f"{self.path}: {self.message}")  # one line whatever the file name


class DatasetValidationError(ValueError):
    """Raised for an invalid dataset; the message is the full report."""


@dataclass
class ValidationReport:
    """Every error and warning found in one or more dataset folders."""

    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    roots: list[str] = field(default_factory=list)
    num_images: int = 0

    @property
    def ok(self) -> bool:
        """True when there are no errors (warnings allowed)."""
        return not self.errors

    def passes(self, strict: bool = False) -> bool:
        """True when there are no errors and, ``strict``, no warnings either."""
        return not self.errors and not (strict and self.warnings)

    def error(self, path: str | Path, message: str) -> None:
        """Record an error."""
        self.errors.append(Issue(str(path), message))

    def warn(self, path: str | Path, message: str) -> None:
        """Record a warning."""
        self.warnings.append(Issue(str(path), message))

    def extend(self, other: ValidationReport) -> None:
        """Merge another report into this one."""
        self.errors += other.errors
        self.warnings += other.warnings
        self.roots += other.roots
        self.num_images += other.num_images

    def format(self) -> str:
        """Human-readable report listing every issue."""
        lines = [
            f"dataset {printable(', '.join(self.roots))}: {self.num_images} image(s), "
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        ]
        lines += [f"ERROR   {i}" for i in self.errors]
        lines += [f"WARNING {i}" for i in self.warnings]
        return "\n".join(lines)

    def raise_if_invalid(self, strict: bool = False) -> None:
        """Raise DatasetValidationError with the full report when there is any error (``strict``:
        or any warning)."""
        if not self.passes(strict):
            why = "" if self.errors else " (strict: warnings count as errors)"
            raise DatasetValidationError(f"invalid dataset{why}:\n" + self.format())


def _check_annotation(
    path: Path, sample_id: str, image_name: str | None, shape: tuple[int, int] | None,
    has_file_spacing: bool, report: ValidationReport,
    invalid_spacing: tuple[Path, str] | None = None,
) -> dict[str, Any] | None:
    """Record every problem of one annotation JSON (``annotations.check_annotation``); return
    the parsed annotation (``annotations.parse_annotation``) when it has no error.
    ``invalid_spacing``: (image, line) naming the image's invalid spacing tag, reported instead
    of "no pixel spacing" (the tag is there, but unusable)."""
    try:
        data = load_json(path)
    except AnnotationError as err:
        report.error(path, str(err).removeprefix(printable(f"{path}: ")))
        return None
    check = check_annotation(data, sample_id, image_name, shape, has_file_spacing)
    for message in check.errors:
        report.error(path, message)
    for message in check.warnings:
        if invalid_spacing is not None and message.startswith("no pixel spacing"):
            report.warn(*invalid_spacing)  # the file has a spacing tag, an invalid one
        else:
            report.warn(path, message)
    return None if check.errors else parse_annotation(data, str(path))


def _check_anatomy(ann_path: Path, image: Path, ann: dict[str, Any], loaded: LoadedImage,
                   femur: np.ndarray, report: ValidationReport) -> None:
    """Warnings where the annotation and the femur mask disagree grossly, which no schema check
    sees: a pair written (row, col) instead of (x, y), or the mask of another image, puts the
    landmarks and cortex points off the femur (true ones lie on it or its outline: < 0.3 mm on
    the phantoms); a spacing in cm or inches, or of the detector plane of a magnified film,
    disagrees with the femur's size (``anatomy_scale``, the prior ``make plan`` checks with).
    The anatomical scale also converts ``OFF_FEMUR_MM`` to pixels, so a wrong spacing cannot
    hide a swapped point. Points outside the image are reported by the schema check already."""
    est = estimate_scale(femur)
    spacing = resolve_sample_spacing(spacing_inputs(ann["spacing_mm"], loaded))
    if est is not None and spacing is not None and (why := spacing_disagreement(spacing, est)):
        report.warn(ann_path if spacing.source == "annotation" else image,
                    f"{why}, measured on the femur mask: a unit error (cm, inches) or "
                    "another image's spacing?")
    mm_per_px = est.mm_per_px if est is not None else spacing.mean_mm if spacing else None
    ys, xs = np.nonzero(femur)
    extent = float(max(np.ptp(xs), np.ptp(ys)))
    scale = spacing.mean_mm if spacing is not None else mm_per_px  # spacing, else femur size
    for i, rater in enumerate(ann["raters"]):
        if why := landmark_swap(rater.landmarks, rater.cortex_points, scale, extent):
            report.warn(ann_path, f"raters[{i}]: {why}")
    if mm_per_px is None:
        return
    # px to the nearest femur pixel, for every pixel at once (linear time, any point count)
    to_femur = cv2.distanceTransform((femur == 0).astype(np.uint8), cv2.DIST_L2, 5)
    h, w = femur.shape
    for i, rater in enumerate(ann["raters"]):
        named = [(f"landmarks.{n}", p) for n, p in zip(LANDMARKS, rater.landmarks, strict=True)]
        named += [(f"cortex_line[{j}]", p) for j, p in enumerate(rater.cortex_points)]
        for name, point in named:
            if not (-0.5 <= point[0] <= w - 0.5 and -0.5 <= point[1] <= h - 0.5):
                continue
            col, row = (int(round(float(v))) for v in point)
            dist = float(to_femur[min(max(row, 0), h - 1), min(max(col, 0), w - 1)]) * mm_per_px
            if dist > OFF_FEMUR_MM:
                report.warn(ann_path, f"raters[{i}].{name}: ({point[0]:g}, {point[1]:g}) lies "
                            f"{dist:.0f} mm off the femur mask: written (row, col) instead of "
                            "(x, y), or the mask of another image?")
                break  # one line per rater: a swapped annotation would fill the report


def _check_labels(root: Path, sample_id: str, image: Path, loaded: LoadedImage | None,
                  masks: list[np.ndarray | None], report: ValidationReport) -> bool:
    """The bone masks against each other and the image (``datamodules.label_checks``): an
    inverted or all-white mask (error), identical or mostly coinciding masks, the patella and
    fibula swapped, masks that lie on the image's edges far worse than flipped or rotated.
    Returns False when the femur mask is unusable for the anatomy check (inverted)."""
    problems = mask_coverage(masks)
    usable = [None if any(p.bone == b for p in problems) else m for b, m in enumerate(masks)]
    problems += mask_overlaps(usable)
    if not any(p.error for p in problems):
        small, small_masks = shrink(None if loaded is None else loaded.image, usable)
        # a swapped pair is one line; else a lone misplaced patella or fibula
        problems += patella_fibula_swap(small_masks) or patella_fibula_place(small_masks)
        if small is not None and loaded is not None:
            rotated = any("orientation tag" in note for note in loaded.notes)
            problems += mask_fit(small, small_masks, rotated)
    for p in problems:
        path = image if p.bone is None else mask_path(root, sample_id, BONES[p.bone])
        (report.error if p.error else report.warn)(path, p.message)
    return usable[0] is not None


def _invalid_spacing(image: Path, loaded: LoadedImage | None) -> tuple[Path, str] | None:
    """(image, line) naming the image's spacing tags that are present but invalid
    (``LoadedImage.invalid_spacing_tags``: ``PixelSpacing = 0\\0``), or None."""
    if loaded is None or not loaded.invalid_spacing_tags:
        return None
    tags = ", ".join(f"{tag} {text}" for tag, text in loaded.invalid_spacing_tags)
    return image, (f"invalid {tags} in {image.name} (not used) and no pixel spacing in the "
                   "annotation: errors cannot be given in mm")


def _misnamed_annotation(p: Path, sample_id: str) -> str:
    """Why ``p``, which matches ``sample_id`` but for its suffix, case or Unicode form, is not
    read as its annotation."""
    expected = f"{sample_id}.json"
    if p.suffix.lower() != ".json":
        return (f"annotations must be JSON files named <image id>.json (schema v1), not "
                f"{p.suffix or 'without suffix'}: not read as the annotation of image "
                f"{sample_id!r} (expected {expected})")
    return _misnamed(p, expected, f"image id {sample_id!r}")


def _misnamed(p: Path, expected: str, owner: str) -> str:
    """Why ``p``, named ``expected`` but for its suffix's case, its case or its Unicode form,
    is not read (``owner``: whose file it should be)."""
    want = Path(expected)
    if p.stem == want.stem:
        return f"the suffix must be lower-case {want.suffix}: rename it {expected}"
    if p.stem.casefold() == want.stem.casefold():
        return f"differs from {owner} only in case: rename it {expected}"
    form = "NFD" if unicodedata.is_normalized("NFD", p.stem) else "NFC"
    other = "NFD" if form == "NFC" else "NFC"
    return (f"differs from {owner} only in Unicode normalisation (file name {form}, image id "
            f"{other}; e.g. a name made on macOS): rename it {expected} as the image spells it")


def _check_mask(path: Path, shape: tuple[int, int] | None,
                report: ValidationReport) -> np.ndarray | None:
    """One bone mask through THE mask reader (``dataset_io.read_mask``); empty is a warning.
    Returns the mask when it is usable."""
    try:
        mask = read_mask(path, shape)
    except DatasetError as err:
        report.error(path, str(err).removeprefix(printable(f"{path}: ")))
        return None
    if not mask.any():
        report.warn(path, "empty mask (bone not visible?)")
    return mask


def _check_image(f: Path, report: ValidationReport) -> LoadedImage | None:
    """Read one image; record unreadable, non-finite or blank (constant) images as errors and
    low-contrast ones as warnings. Returns the image when it could be read."""
    try:
        loaded = load_image(f)
    except ImageReadError as err:
        report.error(f, str(err).removeprefix(printable(f"{f}: ")))
        return None
    except Exception as err:  # a decoder failure is a bad file, never a crash
        report.error(f, f"cannot read the image ({type(err).__name__}: {err})")
        return None
    for note in loaded.notes:  # what the reader changed or ignored
        frame = " (its masks and annotation points must be in this displayed frame)"
        report.warn(f, note + (frame if "orientation tag" in note else ""))
    if loaded.lossy:  # trains, but compression artefacts sit on the edges the masks outline
        report.warn(f, "lossy (JPEG) image: prefer the PNG/TIFF/DICOM original if you have it")
    img = loaded.image
    if min(img.shape) < MIN_SIDE_PX:  # (plan refuses it; a 20 x 24 px image trained)
        report.error(f, f"image of {img.shape[1]} x {img.shape[0]} px is too small (need at "
                        f"least {MIN_SIDE_PX} x {MIN_SIDE_PX} px)")
    elif not np.all(np.isfinite(img)):
        report.error(f, "image contains NaN or infinite values")
    elif (lo := float(img.min())) > (hi := float(img.max())) - 1e-6:
        report.error(f, f"blank image: every pixel is {lo:.3g} (constant)")
    elif hi - lo < MIN_USED_RANGE:
        report.warn(f, f"uses only {100 * (hi - lo):.0f} % of its value range ({lo:.2f}-{hi:.2f} "
                    "after the reader's scaling): the network sees it that flat (e.g. 12-bit data "
                    "in a 16-bit file, or a DICOM without a window); store it windowed or "
                    "stretched")
    return loaded


def _check_links(folder: Path, report: ValidationReport) -> set[Path]:
    """Entries that are not files are errors, not silently skipped: broken symlinks, symlink
    loops, pipes and devices. Returns them: their mask or annotation check would only say the
    same again ("missing", "not a regular file")."""
    bad: set[Path] = set()
    if not folder.is_dir():
        return bad
    for p in sorted(folder.iterdir()):
        if p.is_symlink():
            try:
                p.resolve(strict=True)
            except RuntimeError:
                report.error(p, "symlink loop")
                bad.add(p)
                continue
            except OSError as err:
                loop = err.errno == errno.ELOOP
                report.error(p, "symlink loop" if loop else "broken symlink (target missing)")
                bad.add(p)
                continue
        if p.exists() and not p.is_file() and not p.is_dir():
            report.error(p, "not a regular file (a pipe, socket or device)")
            bad.add(p)
    return bad


APPLE_DOUBLE = "ignored: a macOS metadata file (AppleDouble '._' copy), not part of the dataset"


def validate_dataset(root: str | Path) -> ValidationReport:
    """Check every file of a dataset folder (images/, masks/, annotations/)."""
    report = ValidationReport(roots=[str(root)])
    if not str(root).strip():  # Path("") is the current folder
        report.error(root, "empty path: give the dataset folder")
        return report
    root = Path(root)
    if not root.is_dir():
        report.error(root, "is a file, not a dataset folder" if root.exists()
                     else "dataset folder does not exist")
        return report
    folders = {sub: (root / sub).is_dir() for sub in ("images", "masks", "annotations")}
    for sub in (s for s, ok in folders.items() if not ok):  # said once, not per file in it
        st = stat_problem(root / sub)  # say why: a file or a symlink loop is not "missing"
        report.error(root / sub, "missing folder" if st == "no such file"
                     else st if isinstance(st, str) else "is a file, not a folder")
    try:
        images = image_files(root)
    except DatasetError as err:  # images/ (or an image in it) may not be listed or entered
        text, head = str(err), f"{root / 'images'}: "
        report.error(root / "images", text[len(head):] if text.startswith(head) else text)
        return report
    report.num_images = len(images)
    if (root / "images").is_dir() and not images:
        report.error(root / "images", f"no images ({', '.join(IMAGE_SUFFIXES)})")
    for p in sorted((root / "images").glob("*")) if (root / "images").is_dir() else []:
        if is_apple_double(p):
            report.warn(p, APPLE_DOUBLE)
        elif p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES:
            report.warn(p, f"ignored: not an image type ({', '.join(IMAGE_SUFFIXES)})")
        elif p.is_dir() and p.suffix.lower() in IMAGE_SUFFIXES:
            report.error(p, "a folder, not an image file (the dataset would silently lose it)")
        elif p.is_dir():
            report.warn(p, "ignored: a folder (images are not searched in subfolders)")
    reported: set[Path] = set()
    for sub in ("images", "masks", "annotations"):
        reported |= _check_links(root / sub, report)
    if len(images) == 1:
        report.warn(root / "images", "only one image: a train/val split leaves no validation "
                                     "image, so training validates on the training image")
    # annotations by their name folded (case, Unicode form) and without suffix, to say why a
    # file next to a "missing" annotation was not read
    ann_near: dict[str, list[Path]] = {}
    explained: set[Path] = set()
    ann_files = (sorted((root / "annotations").iterdir()) if (root / "annotations").is_dir()
                 else [])
    for p in ann_files:
        ann_near.setdefault(nfc_fold(p.stem), []).append(p)
    mask_near: dict[str, list[Path]] = {}  # the same for masks, by their whole name folded
    for p in (sorted((root / "masks").iterdir()) if (root / "masks").is_dir() else []):
        mask_near.setdefault(nfc_fold(p.name), []).append(p)
    folded: dict[str, list[str]] = {}  # ids one file on macOS and Windows (red-team round 10)
    for sample_id in images:
        folded.setdefault(nfc_fold(sample_id), []).append(sample_id)
    for twins in (t for t in folded.values() if len(t) > 1):
        report.warn(images[twins[1]][0], f"ids {', '.join(ascii(t) for t in twins)} differ "
                    "only in letter case or Unicode normalisation: one file on macOS and "
                    "Windows (their masks and annotations would collide); rename one")
    for sample_id, files in images.items():
        if len(files) > 1:
            report.error(files[0], f"duplicate id {sample_id!r}: {[f.name for f in files]}")
        if problem := id_name_problem(sample_id):  # its masks and annotation cannot exist
            report.error(files[0], problem)
            continue
        loaded = None
        for f in files:
            loaded = _check_image(f, report) or loaded
        shape = None if loaded is None else loaded.image.shape
        masks = []
        for bone in BONES:
            path = mask_path(root, sample_id, bone)
            near = [] if path.exists() or path.is_symlink() else [
                p for p in mask_near.get(nfc_fold(path.name), []) if p != path]
            for p in near:  # one line on the misnamed file, not "missing" + "orphan"
                report.error(p, _misnamed(p, path.name, f"the mask name of image id "
                                                        f"{sample_id!r}"))
                explained.add(p)
            masks.append(None if near or path in reported or not folders["masks"]
                         else _check_mask(path, shape, report))
        femur = masks[0] if _check_labels(root, sample_id, files[0], loaded, masks, report) \
            else None
        ann = annotation_path(root, sample_id)
        if ann in reported or not folders["annotations"]:
            pass  # a link that leads nowhere, a device, no annotations folder: said above
        elif ann.is_dir():
            report.error(ann, "a folder, not an annotation file")
        elif not ann.is_file():
            near = [p for p in ann_near.get(nfc_fold(sample_id), []) if p != ann]
            for p in near:  # one line on the misnamed file, not "missing" + "orphan"
                report.error(p, _misnamed_annotation(p, sample_id))
                explained.add(p)
            if not near and not ann.is_symlink():  # a bad link or a device: _check_links said
                report.error(ann, "missing annotation for image " + files[0].name)
        else:
            name = files[0].name if len(files) == 1 else None
            has_spacing = loaded is not None and loaded.spacing_mm is not None
            data = _check_annotation(ann, sample_id, name, shape, has_spacing, report,
                                     _invalid_spacing(files[0], loaded))
            if data is not None and loaded is not None and femur is not None and femur.any():
                _check_anatomy(ann, files[0], data, loaded, femur, report)
    known_masks = {mask_path(root, i, b).name for i in images for b in BONES}
    if (root / "masks").is_dir():
        for p in sorted((root / "masks").iterdir()):
            if is_apple_double(p):
                report.warn(p, APPLE_DOUBLE)
            elif f"{p.stem}.png" in known_masks and p.suffix.lower() != ".png":
                report.error(p, f"a mask must be a PNG file ({p.stem}.png): "
                                f"{p.suffix or 'no suffix'} is not read")
            elif p.name not in known_masks and not (p.is_symlink() and not p.exists()) and (
                    p not in explained):
                report.error(p, "orphan mask: no image with this id, or not <id>_<bone>.png "
                                f"with bone in {BONES}")
    for p in ann_files:
        if is_apple_double(p):
            report.warn(p, APPLE_DOUBLE)
        elif (p.suffix != ".json" or p.stem not in images) and p.exists() and (
                p not in explained):
            report.error(p, "orphan annotation: no image with this id")
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: validate one or more dataset folders, print the report."""
    parser = OneLineParser(prog="python -m datamodules.validate", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", help="dataset folder(s) with images/ masks/ "
                                                 "annotations/")
    parser.add_argument("--strict", action="store_true",
                        help="warnings count as errors (exit status 1 on any warning)")
    args = parser.parse_args(argv)
    from datamodules.pixel_limit import env_problem

    if problem := env_problem():
        print(f"validate: error: {problem}", file=sys.stderr)
        return 2
    report = ValidationReport()
    for root in args.roots:
        report.extend(validate_dataset(os.path.expanduser(root)))  # (DATA=~/x under zsh)
    print(report.format())
    if args.strict and report.ok and report.warnings:
        print(f"validate: --strict: {len(report.warnings)} warning(s) count as errors",
              file=sys.stderr)
    return 0 if report.passes(args.strict) else 1


if __name__ == "__main__":
    sys.exit(main())
