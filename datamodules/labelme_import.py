"""Import LabelMe annotations (``<name>.json`` beside each image) into the dataset format
(``images/``, ``masks/<id>_<bone>.png``, ``annotations/<id>.json``; README "Your own data").

LabelMe is a common free tool for drawing polygons and points on images. Bones are polygons,
the two landmarks single points and the cortex line a line or line strip (two or more points);
labels are matched without regard to case, spaces or hyphens (``--label NAME=TARGET`` maps
another name, ``--ignore NAME`` skips one). Polygons are filled as LabelMe's own export does
(Pillow's polygon with its outline), in LabelMe's coordinates, which put pixel centres on
integers as the dataset format does. Every file is checked before anything is written: a
problem is one line naming the LabelMe file, and then nothing is imported.

Example:
    python -m datamodules.labelme_import labelme/ data/ --images dicom/ --rater r1
"""

from __future__ import annotations

import argparse
import base64
import binascii
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from datamodules.annotations import (
    AnnotationError,
    annotation_dict,
    check_annotation,
    check_spacing,
    is_number,
    load_json,
    write_annotation,
)
from datamodules.dataset_io import IMAGE_SUFFIXES, id_name_problem, is_apple_double
from datamodules.image_io import ImageReadError, load_image, write_image
from datamodules.path_limits import replace_link
from datamodules.progress import progress_iter
from datamodules.sample import BONES, LANDMARKS, RaterAnnotation

CORTEX = "cortex_line"
TARGETS = (*BONES, *LANDMARKS, CORTEX)
# names a label may have besides its target's own (after lower case, spaces/hyphens -> "_")
ALIASES = {"blumensaat": "p_blum", "blum": "p_blum", "tmc": "p_tmc", "cortex": CORTEX,
           "posterior_cortex": CORTEX}
# A LabelMe file may embed its image (imageData, base64: a 3000 px 16-bit PNG is ~16 MB). Larger
# is refused before parsing: 32 MB of bare coordinates already parse into ~0.8 GB of lists.
MAX_LABELME_BYTES = 32_000_000
MAX_SHAPES = 10_000
MAX_POLYGON_POINTS = 100_000  # per shape, and in all: Pillow fills in time ~ points x rows


class LabelMeError(AnnotationError):
    """A LabelMe file that cannot be imported; the message (one line) names the file."""


@dataclass
class Imported:
    """One LabelMe file, checked: its id, image source and what its shapes give."""

    id: str
    image: Path | None  # the image file to copy, or None when ``image_bytes`` holds it
    image_bytes: bytes | None
    suffix: str
    masks: np.ndarray  # (4, H, W) uint8 {0, 255} in BONES order
    annotation: dict[str, Any]  # schema-v1, checked against the image's size


def normalised(label: str) -> str:
    """A label as matched: lower case, spaces and hyphens as ``_``, outer blanks dropped."""
    return "_".join(label.strip().lower().replace("-", " ").split())


def target_of(label: str, mapping: dict[str, str], ignored: set[str]) -> str | None:
    """The dataset target (bone, landmark or ``cortex_line``) a LabelMe label means, None for
    an ignored label; raises ValueError for an unknown one."""
    name = normalised(label)
    if name in ignored:
        return None
    name = mapping.get(name, name)
    name = ALIASES.get(name, name)
    if name not in TARGETS:
        raise ValueError(f"label {label[:40]!r} is none of {', '.join(TARGETS)}: map it with "
                         f"--label '{label[:40]}=<target>' or skip it with --ignore")
    return name


def _points(shape: dict[str, Any], where: str) -> np.ndarray:
    """A shape's ``points`` as a finite (K, 2) float array; raises LabelMeError. Numbers only
    (``"20"`` or ``true`` is no coordinate, though numpy would convert it)."""
    pts = shape.get("points")
    if not isinstance(pts, list) or not 0 < len(pts) <= MAX_POLYGON_POINTS:
        raise LabelMeError(f"{where}: 'points' is not a list of 1 to {MAX_POLYGON_POINTS} points")
    if not all(isinstance(p, list) and len(p) == 2 and all(map(is_number, p)) for p in pts):
        raise LabelMeError(f"{where}: 'points' must be [x, y] pairs of finite numbers")
    arr = np.asarray(pts, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise LabelMeError(f"{where}: 'points' must be [x, y] pairs of finite numbers")
    return arr


def image_folder(images: Path) -> dict[str, list[Path]]:
    """The image files of an ``--images`` folder by stem, listed once (not a glob per file:
    "knee[1]" is a name, and N files x M images was N listings)."""
    out: dict[str, list[Path]] = {}
    for p in sorted(images.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and not is_apple_double(p) and p.is_file():
            out.setdefault(p.stem, []).append(p)
    return out


def _image_source(data: dict[str, Any], path: Path, images: dict[str, list[Path]] | None,
                  images_dir: Path | None = None) -> tuple[Path | None, bytes | None, str]:
    """(image file, or None with the embedded image's bytes, its suffix) for one LabelMe file:
    the ``--images`` folder's file (``images``, by stem) of ``imagePath``'s stem, else
    ``imagePath`` relative to the file, inside the LabelMe folder's parent (LabelMe writes
    ``../images/a.png``; an absolute or farther path copied any readable file on the disk),
    else the embedded ``imageData``."""
    name = data.get("imagePath")
    stem = Path(str(name).replace("\\", "/")).stem if isinstance(name, str) and name else path.stem
    if images is not None:
        found = images.get(stem, [])
        if len(found) != 1:
            raise LabelMeError(f"{path}: {'no' if not found else 'more than one'} image named "
                               f"{stem}.* ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
        return found[0], None, found[0].suffix.lower()
    if isinstance(name, str) and name:
        beside = path.parent / name.replace("\\", "/")
        top = path.parent.resolve().parent
        try:
            inside = beside.resolve().is_relative_to(top)
        except (OSError, RuntimeError, ValueError):
            inside = False
        if beside.is_file() and not inside:
            raise LabelMeError(f"{path}: its imagePath {name[:80]!r} lies outside {top}: give "
                               "the images' folder with --images")
        if beside.is_file():
            if beside.suffix.lower() not in IMAGE_SUFFIXES:
                raise LabelMeError(f"{path}: its image {beside.name} is not one of "
                                   f"{', '.join(IMAGE_SUFFIXES)}")
            return beside, None, beside.suffix.lower()
    embedded = data.get("imageData")
    if not isinstance(embedded, str) or not embedded:
        raise LabelMeError(f"{path}: its image {name!r:.80} is not there and it embeds none "
                           "(imageData): give the images' folder with --images")
    try:
        raw = base64.b64decode(embedded, validate=True)
    except (binascii.Error, ValueError):
        raise LabelMeError(f"{path}: its embedded image (imageData) is not base64") from None
    suffix = ".png" if raw.startswith(b"\x89PNG") else ".jpg" if raw.startswith(b"\xff\xd8") else ""
    if not suffix:
        raise LabelMeError(f"{path}: its embedded image (imageData) is neither PNG nor JPEG")
    return None, raw, suffix


def _image_shape(path: Path, source: Path | None, raw: bytes | None, suffix: str,
                 scratch: Path) -> tuple[int, int]:
    """(H, W) of the image as the dataset reader reads it (orientation applied, as LabelMe
    shows it); raises LabelMeError with the reader's own line."""
    if source is None:
        source = scratch / f"embedded{suffix}"
        source.write_bytes(raw or b"")
    try:
        return tuple(load_image(source).image.shape)  # type: ignore[return-value]
    except ImageReadError as err:
        raise LabelMeError(f"{path}: its image cannot be read: {err}") from None


def read_labelme(path: Path, mapping: dict[str, str], ignored: set[str],
                 images: dict[str, list[Path]] | None, rater: str, scratch: Path,
                 spacing_mm: tuple[float, float] | None = None, images_dir: Path | None = None
                 ) -> Imported:
    """Check one LabelMe file and turn its shapes into masks, landmarks and a cortex line;
    raises LabelMeError (one line naming ``path``)."""
    if problem := id_name_problem(path.stem):
        raise LabelMeError(f"{path}: {problem}")
    try:
        data = load_json(path, MAX_LABELME_BYTES, "a LabelMe file")
    except AnnotationError as err:
        raise LabelMeError(str(err)) from None
    shapes = data.get("shapes") if isinstance(data, dict) else None
    if not isinstance(shapes, list) or len(shapes) > MAX_SHAPES:
        raise LabelMeError(f"{path}: not a LabelMe file (no 'shapes' list of at most "
                           f"{MAX_SHAPES} shapes)")
    source, raw, suffix = _image_source(data, path, images, images_dir)
    h, w = _image_shape(path, source, raw, suffix, scratch)
    stated = (data.get("imageHeight"), data.get("imageWidth"))
    if all(isinstance(v, int) for v in stated) and stated != (h, w):
        raise LabelMeError(f"{path}: drawn on a {stated[1]} x {stated[0]} image, but its image "
                           f"{(source.name if source else 'imageData')} is {w} x {h}: the points "
                           "would not lie on it")
    found: dict[str, list[np.ndarray]] = {t: [] for t in TARGETS}
    total = 0
    for i, shape in enumerate(shapes):
        where = f"{path}: shape {i + 1}"
        if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
            raise LabelMeError(f"{where}: not an object with a 'label' text")
        try:
            target = target_of(shape["label"], mapping, ignored)
        except ValueError as err:
            raise LabelMeError(f"{where}: {err}") from None
        if target is None:
            continue
        kind = shape.get("shape_type") or "polygon"
        wanted = ("polygon",) if target in BONES else ("point",) if target in LANDMARKS else (
            "line", "linestrip")
        if kind not in wanted:
            raise LabelMeError(f"{where}: {target} is drawn as a {str(kind)[:20]!r}; it must be "
                               f"a {' or '.join(wanted)}")
        found[target].append(_points(shape, f"{where} ({target})"))
        if target in LANDMARKS and len(found[target][-1]) != 1:
            raise LabelMeError(f"{where}: the {target} point holds {len(found[target][-1])} "
                               "points; it must be one")
        total += len(found[target][-1])
        if total > MAX_POLYGON_POINTS:
            raise LabelMeError(f"{path}: more than {MAX_POLYGON_POINTS} points in all")
    masks = _masks(found, (h, w), path)
    raters = [_rater(found, path, rater)]
    try:
        annotation = annotation_dict(path.stem, f"{path.stem}{suffix}", raters,
                                     spacing_mm=spacing_mm, meta={"imported_from": "labelme"})
    except AnnotationError as err:
        raise LabelMeError(f"{path}: {str(err).split(': ', 2)[-1]}") from None
    if problems := check_annotation(annotation, shape=(h, w)).errors:
        raise LabelMeError(f"{path}: {problems[0]}")
    return Imported(path.stem, source, raw, suffix, masks, annotation)


def _masks(found: dict[str, list[np.ndarray]], shape: tuple[int, int], path: Path) -> np.ndarray:
    """Each bone's polygons filled, as LabelMe's export fills them (Pillow, outline included);
    several polygons of one bone are joined."""
    masks = np.zeros((len(BONES), *shape), dtype=np.uint8)
    for b, bone in enumerate(BONES):
        if not found[bone]:
            raise LabelMeError(f"{path}: no polygon labelled {bone} (every bone needs its mask; "
                               "a bone outside the image: a tiny polygon will not do either)")
        canvas = Image.new("L", (shape[1], shape[0]), 0)
        draw = ImageDraw.Draw(canvas)
        for pts in found[bone]:
            if len(pts) < 3:
                raise LabelMeError(f"{path}: a {bone} polygon has fewer than 3 points")
            draw.polygon([tuple(p) for p in pts.tolist()], outline=255, fill=255)
        masks[b] = np.asarray(canvas)
        if not masks[b].any():
            raise LabelMeError(f"{path}: the {bone} polygons lie outside the image")
    return masks


def _rater(found: dict[str, list[np.ndarray]], path: Path, rater: str) -> RaterAnnotation:
    """The landmarks (one point each) and the cortex line (one line of two or more points)."""
    for name in (*LANDMARKS, CORTEX):
        if len(found[name]) != 1:
            raise LabelMeError(f"{path}: {len(found[name])} shapes labelled {name}; it needs "
                               "exactly one")
    if len(found[CORTEX][0]) < 2:
        raise LabelMeError(f"{path}: the {CORTEX} has fewer than 2 points")
    return RaterAnnotation(np.stack([found[n][0][0] for n in LANDMARKS]), found[CORTEX][0], rater)


def write_imported(item: Imported, out: Path) -> None:
    """Write one checked item into the dataset folder ``out``."""
    image = replace_link(out / "images" / f"{item.id}{item.suffix}")
    if item.image is not None:
        shutil.copyfile(item.image, image)
    else:
        image.write_bytes(item.image_bytes or b"")
    for b, bone in enumerate(BONES):
        write_image(out / "masks" / f"{item.id}_{bone}.png", item.masks[b])
    write_annotation(out / "annotations" / f"{item.id}.json", item.annotation)


def import_folder(src: Path, out: Path, mapping: dict[str, str], ignored: set[str],
                  images: Path | None = None, rater: str = "r1",
                  spacing_mm: tuple[float, float] | None = None) -> tuple[list[str], int]:
    """Check every ``src/*.json`` and, when all pass, write them into ``out`` (which must not
    hold a dataset yet). Returns (problems, number imported); nothing is written on problems.
    Each file is read twice, to check and to write, so that memory holds one image's masks at a
    time (500 images of 3000 px held together were ~15 GB)."""
    for folder in (src, images):
        if folder is not None and not folder.is_dir():
            return [f"{folder}: not a folder"], 0
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        return [f"{out}: {'not empty' if out.is_dir() else 'not a folder'}: import into a new "
                "folder"], 0
    files = sorted(p for p in src.iterdir()
                   if p.suffix.lower() == ".json" and p.is_file() and not is_apple_double(p))
    if not files:
        return [f"{src}: no LabelMe files (*.json) in it"], 0
    listed = image_folder(images) if images is not None else None
    problems: list[str] = []
    seen: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="kneeplan-labelme-") as scratch:
        def read(path: Path) -> Imported:
            return read_labelme(path, mapping, ignored, listed, rater, Path(scratch),
                                spacing_mm, images)

        for path in progress_iter(files, "check", total=len(files)):
            try:
                item_id = read(path).id
            except LabelMeError as err:
                problems.append(str(err))
                continue
            if item_id.lower() in seen:
                problems.append(f"{path}: the same id as {seen[item_id.lower()].name}")
                continue
            seen[item_id.lower()] = path
        if problems:
            return problems, 0
        try:
            for sub in ("images", "masks", "annotations"):
                (out / sub).mkdir(parents=True, exist_ok=True)
            for path in progress_iter(files, "write", total=len(files)):
                write_imported(read(path), out)
        except (OSError, LabelMeError) as err:  # (a full disk; a file changed since its check)
            return [f"{out}: writing stopped, the folder is incomplete (remove it and import "
                    f"again): {err}"], 0
    return [], len(files)


def _pair(text: str) -> tuple[str, str]:
    name, sep, target = text.partition("=")
    if not sep or not name.strip() or target.strip() not in TARGETS:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=TARGET, TARGET one of "
                                         f"{', '.join(TARGETS)}")
    return normalised(name), target.strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m datamodules.labelme_import",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("labelme", type=Path, help="folder of LabelMe files (<name>.json)")
    p.add_argument("out", type=Path, help="new dataset folder to write")
    p.add_argument("--images", type=Path, help="take each image from this folder by the stem "
                   "of its imagePath (e.g. the DICOM originals of the PNGs that were drawn on)")
    p.add_argument("--label", type=_pair, action="append", default=[],
                   help="map a label: NAME=TARGET (repeatable)")
    p.add_argument("--ignore", action="append", default=[], help="skip a label (repeatable)")
    p.add_argument("--rater", default="r1", help="rater id written into the annotations")
    p.add_argument("--spacing-mm", type=float, help="pixel spacing for every image (else the "
                   "DICOM tags, when the images are DICOM)")
    args = p.parse_args(argv)
    try:
        spacing = None if args.spacing_mm is None else check_spacing(args.spacing_mm)
    except ValueError as err:
        p.error(f"--spacing-mm: {err}")
    problems, done = import_folder(args.labelme, args.out, dict(args.label),
                                   {normalised(n) for n in args.ignore}, args.images,
                                   args.rater, spacing)
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        print(f"labelme_import: {len(problems)} problem(s); nothing imported", file=sys.stderr)
        return 1
    print(f"imported {done} image(s) into {args.out}; check them with "
          f"make validate-data DATA={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
