"""Check a whole dataset folder and report EVERY problem at once (file and reason).

Usage: ``python -m datamodules.validate ROOT [ROOT ...]``; exit status 1 when any error is found.

Errors: missing folders, unreadable or truncated images, duplicate ids (``a.png`` and ``a.dcm``),
missing / unreadable / wrongly sized / non-binary bone masks, missing or unparsable annotations,
unknown schema version, id or image name that disagrees with the file, missing landmarks, NaN
coordinates, landmarks outside the image, fewer than two (distinct) cortex points, invalid
spacing, and orphan files (a mask or annotation with no image). Warnings (training still runs):
no pixel spacing anywhere (file or annotation), an empty bone mask, a cortex point outside the
image, files of unknown type in images/.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datamodules.annotations import SUPPORTED_VERSIONS, AnnotationError, parse_annotation
from datamodules.dataset_io import IMAGE_SUFFIXES, annotation_path, image_files, mask_path
from datamodules.image_io import ImageReadError, load_image
from datamodules.sample import BONES, LANDMARKS


@dataclass(frozen=True)
class Issue:
    """One problem: the file it concerns and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


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
            f"dataset {', '.join(self.roots)}: {self.num_images} image(s), "
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        ]
        lines += [f"ERROR   {i}" for i in self.errors]
        lines += [f"WARNING {i}" for i in self.warnings]
        return "\n".join(lines)

    def raise_if_invalid(self) -> None:
        """Raise DatasetValidationError with the full report when there is any error."""
        if self.errors:
            raise DatasetValidationError("invalid dataset:\n" + self.format())


def _check_point(
    value: Any, where: str, shape: tuple[int, int] | None, report: ValidationReport, path: Path,
    outside_is_error: bool,
) -> None:
    """Check one [x, y]: a finite pair inside the image (pixel centres on integers)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        report.error(path, f"{where}: not a pair of numbers: {value!r}")
        return
    if arr.shape != (2,):
        report.error(path, f"{where}: expected [x, y], got {value!r}")
        return
    if not np.all(np.isfinite(arr)):
        report.error(path, f"{where}: NaN or infinite coordinate {value!r}")
        return
    if shape is None:
        return
    h, w = shape
    x, y = arr
    if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
        msg = f"{where}: ({x:g}, {y:g}) lies outside the {w}x{h} (W x H) image"
        if outside_is_error:
            report.error(path, msg)
        else:
            report.warn(path, msg)


def _check_annotation(
    path: Path, sample_id: str, image_name: str | None, shape: tuple[int, int] | None,
    has_file_spacing: bool, report: ValidationReport,
) -> None:
    """Check every field of one annotation JSON, recording all problems."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        report.error(path, f"cannot read JSON: {err}")
        return
    if not isinstance(data, dict):
        report.error(path, "top level must be a JSON object")
        return
    n_before = len(report.errors)
    version = data.get("schema_version")
    if version not in SUPPORTED_VERSIONS:
        report.error(path, f"unknown schema_version {version!r} (supported: {SUPPORTED_VERSIONS})")
    if data.get("id") != sample_id:
        report.error(path, f"'id' is {data.get('id')!r}, expected {sample_id!r} (the file name)")
    if image_name is not None and data.get("image") not in (None, image_name):
        report.error(path, f"'image' is {data.get('image')!r}, but the image is {image_name!r}")
    spacing = data.get("pixel_spacing_mm")
    if spacing is None:
        if not has_file_spacing:
            report.warn(path, "no pixel spacing (neither in the annotation nor the image file): "
                              "errors cannot be given in mm")
    else:
        sp = [spacing, spacing] if isinstance(spacing, int | float) else spacing
        try:
            ok = len(sp) == 2 and all(math.isfinite(float(v)) and float(v) > 0 for v in sp)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            report.error(path, f"pixel_spacing_mm must be two positive numbers, got {spacing!r}")
    raters = data.get("raters")
    if not isinstance(raters, list) or not raters:
        report.error(path, "'raters' must be a non-empty list")
        raters = []
    for i, rater in enumerate(raters):
        where = f"raters[{i}]"
        if not isinstance(rater, dict):
            report.error(path, f"{where}: must be an object")
            continue
        lms = rater.get("landmarks")
        if not isinstance(lms, dict):
            report.error(path, f"{where}: missing 'landmarks'")
        else:
            for name in LANDMARKS:
                if name not in lms:
                    report.error(path, f"{where}: missing landmark {name}")
                else:
                    _check_point(lms[name], f"{where}.landmarks.{name}", shape, report, path, True)
        line = rater.get("cortex_line")
        if not isinstance(line, list) or len(line) < 2:
            n = len(line) if isinstance(line, list) else 0
            report.error(path, f"{where}: 'cortex_line' needs at least two points, got {n}")
        if isinstance(line, list):
            for j, p in enumerate(line):
                _check_point(p, f"{where}.cortex_line[{j}]", shape, report, path, False)
            try:
                pts = np.asarray(line, dtype=np.float64)
                same = len(line) >= 2 and pts.ndim == 2 and bool(np.all(pts == pts[0]))
            except (TypeError, ValueError):
                same = False
            if same:
                report.error(path, f"{where}: all cortex_line points coincide (no line)")
    if len(report.errors) == n_before:  # anything the reader itself would still refuse
        try:
            parse_annotation(data, str(path))
        except AnnotationError as err:
            report.error(path, str(err).removeprefix(f"{path}: "))


def _check_mask(path: Path, shape: tuple[int, int] | None, report: ValidationReport) -> None:
    if not path.is_file():
        report.error(path, "missing bone mask")
        return
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        report.error(path, "unreadable or truncated mask")
        return
    if mask.ndim == 3:
        report.error(path, f"mask has {mask.shape[2]} channels, expected a single-channel PNG")
        return
    if shape is not None and mask.shape != shape:
        report.error(path, f"mask size {mask.shape[::-1]} (W x H) differs from its image "
                           f"{shape[::-1]}")
    values = np.unique(mask)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        report.error(path, f"non-binary mask: values {{{shown}}} (expected 0 and one other value)")
    elif not values.any():
        report.warn(path, "empty mask (bone not visible?)")


def validate_dataset(root: str | Path) -> ValidationReport:
    """Check every file of a dataset folder (images/, masks/, annotations/)."""
    root = Path(root)
    report = ValidationReport(roots=[str(root)])
    if not root.is_dir():
        report.error(root, "dataset folder does not exist")
        return report
    for sub in ("images", "masks", "annotations"):
        if not (root / sub).is_dir():
            report.error(root / sub, "missing folder")
    images = image_files(root)
    report.num_images = len(images)
    if (root / "images").is_dir() and not images:
        report.error(root / "images", f"no images ({', '.join(IMAGE_SUFFIXES)})")
    for p in sorted((root / "images").glob("*")) if (root / "images").is_dir() else []:
        if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES:
            report.warn(p, f"ignored: not an image type ({', '.join(IMAGE_SUFFIXES)})")
    for sample_id, files in images.items():
        if len(files) > 1:
            report.error(files[0], f"duplicate id {sample_id!r}: {[f.name for f in files]}")
        shape, has_spacing = None, False
        for f in files:
            try:
                loaded = load_image(f)
            except ImageReadError as err:
                report.error(f, str(err).removeprefix(f"{f}: "))
                continue
            shape, has_spacing = loaded.image.shape, loaded.spacing_mm is not None
        for bone in BONES:
            _check_mask(mask_path(root, sample_id, bone), shape, report)
        ann = annotation_path(root, sample_id)
        if not ann.is_file():
            report.error(ann, "missing annotation for image " + files[0].name)
        else:
            name = files[0].name if len(files) == 1 else None
            _check_annotation(ann, sample_id, name, shape, has_spacing, report)
    known_masks = {mask_path(root, i, b).name for i in images for b in BONES}
    if (root / "masks").is_dir():
        for p in sorted((root / "masks").iterdir()):
            if p.name not in known_masks:
                report.error(p, "orphan mask: no image with this id, or not <id>_<bone>.png "
                                f"with bone in {BONES}")
    if (root / "annotations").is_dir():
        for p in sorted((root / "annotations").iterdir()):
            if p.suffix != ".json" or p.stem not in images:
                report.error(p, "orphan annotation: no image with this id")
    return report


def main(argv: list[str] | None = None) -> int:
    """Command line: validate one or more dataset folders, print the report."""
    parser = argparse.ArgumentParser(prog="python -m datamodules.validate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", help="dataset folder(s) with images/ masks/ "
                                                 "annotations/")
    args = parser.parse_args(argv)
    report = ValidationReport()
    for root in args.roots:
        report.extend(validate_dataset(root))
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
