"""Write, list and read samples in the on-disk dataset format: images/, masks/, annotations/.

Layout of a dataset folder ROOT:
    ROOT/images/<id>.png|.tif|.tiff|.dcm|.jpg|.jpeg   grayscale, 8 or 16 bit (DICOM any bit
                                            depth; JPEG is lossy: the validator warns)
    ROOT/masks/<id>_<bone>.png              one binary mask per bone in BONES (0 / nonzero)
    ROOT/annotations/<id>.json              schema of datamodules.annotations

The id is the image file's stem; two images with the same stem (a.png, a.dcm) are an error.
``datamodules.validate`` checks a whole folder before training.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import stat
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from datamodules.annotations import annotation_dict, write_annotation
from datamodules.decode_guards import special_file_problem
from datamodules.decoder_messages import brief, decoder_messages, printable
from datamodules.sample import BONES, Sample

if TYPE_CHECKING:
    from datamodules.image_io import LoadedImage
    from geometry.pixel_spacing import PixelSpacing

# every format ``image_io.load_image`` reads and ``make plan`` accepts: a JPEG export left out
# here was silently skipped, and its masks and annotation became "orphans"
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".dcm", ".jpg", ".jpeg")


def write_sample(root: str | Path, sample: Sample) -> Path:
    """Write one sample (16-bit PNG image, 0/255 masks, schema-v1 JSON); return the image path."""
    from datamodules.image_io import write_image

    root = Path(root)
    for sub in ("images", "masks", "annotations"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    img = np.clip(np.asarray(sample.image, dtype=np.float64), 0.0, 1.0)
    img_path = root / "images" / f"{sample.id}.png"
    write_image(img_path, np.round(img * 65535.0).astype(np.uint16))
    for b, bone in enumerate(BONES):
        mask_path = root / "masks" / f"{sample.id}_{bone}.png"
        mask = (np.asarray(sample.masks[b]) > 0).astype(np.uint8) * 255
        write_image(mask_path, mask)
    data = annotation_dict(
        sample.id,
        img_path.name,
        sample.annotations,
        spacing_mm=sample.spacing_mm,
        side=sample.meta.get("side"),
        schoettle_point=sample.schoettle_point,
        meta=sample.meta,
    )
    write_annotation(root / "annotations" / f"{sample.id}.json", data)
    return img_path


class DatasetError(ValueError):
    """A dataset folder or sample that cannot be read; the message names the file."""

    def __str__(self) -> str:
        return printable(super().__str__())  # one line, even for a file name with a newline


_WORKER_PREFIX = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")
_ERROR_LINE = re.compile(r"[\w.]+: (.*)")


def worker_original(err: BaseException) -> str:
    """``str(err)``, or for an error re-raised from a DataLoader worker (torch's
    ``ExceptionWrapper`` puts the worker's whole traceback into the message) the original
    error's own line, so ``train`` still says ``<file>: <what>`` in one line."""
    raw = err.args[0] if err.args and isinstance(err.args[0], str) else ""
    if not _WORKER_PREFIX.match(raw):
        return str(err)
    last = raw.rstrip("\n").rsplit("\n", 1)[-1]  # "module.Class: message" (escaped: one line)
    found = _ERROR_LINE.fullmatch(last)
    return printable(found.group(1) if found else last)


def os_problem(err: OSError) -> str:
    """What an ``OSError`` from reading a path (stat, open, listing) says, in words for an
    error line ``<file>: <problem>``: a symlink loop, permission denied, no such file..."""
    if err.errno == errno.ELOOP:
        return "symlink loop (a link that leads back to itself)"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (it, or a folder on its path, may not be read or entered)"
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        return "no such file"
    return (err.strerror or type(err).__name__).lower()


def folder_problem(problem: str) -> str:
    """``os_problem`` of a folder whose files cannot be listed or reached."""
    if problem.startswith("permission denied"):
        return "permission denied: the folder may not be listed or entered"
    return f"{problem}: cannot list the files in the folder"


def stat_problem(path: str | Path) -> os.stat_result | str:
    """``os.stat`` of ``path`` (following links), or why it cannot be had (``os_problem``), or
    why a file it calls regular is none (a kernel file: ``special_file_problem``). Unlike
    ``Path.is_file``/``exists``, never raises (a permission error raised there) and
    says why (a symlink loop or a permission error read there as "no such file")."""
    try:
        st = os.stat(path)
    except OSError as err:
        return os_problem(err)
    except ValueError:  # a NUL byte in the name
        return "invalid file name (a NUL character)"
    return special_file_problem(st) or st  # a /proc file is "regular", of 0 bytes


def real_path(path: str | Path) -> Path:
    """The absolute path with links followed as far as they lead; never raises (``Path.resolve``
    raises RuntimeError on a symlink loop)."""
    return Path(os.path.realpath(path))


def folder_entries(folder: str | Path) -> list[Path] | str:
    """The entries of ``folder`` (unsorted), or why they cannot be had (``folder_problem``):
    it may not be listed, or not entered (its entries could be named but never read)."""
    # "folder/." is reachable only when the folder may be entered (its x bit); pathlib would
    # drop the "."
    problem = stat_problem(os.path.join(folder, "."))
    try:
        entries = list(Path(folder).iterdir())
    except OSError as err:
        problem = problem if isinstance(problem, str) else os_problem(err)
    return folder_problem(problem) if isinstance(problem, str) else entries


def image_files(root: str | Path) -> dict[str, list[Path]]:
    """Map each id to its image file(s) in ROOT/images (several = duplicate id).

    Raises DatasetError naming the folder when it cannot be listed or entered, or an image
    that may not be read (permission denied), rather than training without them."""
    out: dict[str, list[Path]] = {}
    folder = Path(root) / "images"
    if isinstance(stat_problem(folder), str) or not folder.is_dir():
        return out
    entries = folder_entries(folder)
    if isinstance(entries, str):
        raise DatasetError(f"{folder}: {entries}")
    for p in sorted(entries):
        if p.suffix.lower() not in IMAGE_SUFFIXES or is_apple_double(p):
            continue
        st = stat_problem(p)
        if isinstance(st, str) and st.startswith("permission denied"):  # a link out of reach
            raise DatasetError(f"{p}: {st}")
        if not isinstance(st, str) and stat.S_ISREG(st.st_mode):  # (the validator names links
            out.setdefault(p.stem, []).append(p)                  # and pipes skipped here)
    return out


def is_apple_double(path: str | Path) -> bool:
    """Whether ``path`` is a macOS metadata file (AppleDouble ``._<name>``), which macOS writes
    beside every file copied to a USB disk or network share: not an image, mask or annotation
    (one made six error lines in the validator)."""
    return Path(path).name.startswith("._")


def list_ids(root: str | Path) -> list[str]:
    """Sorted ids of the images in ROOT/images (one per image stem)."""
    return sorted(image_files(root))


def mask_path(root: str | Path, sample_id: str, bone: str) -> Path:
    """Path of one bone mask."""
    return Path(root) / "masks" / f"{sample_id}_{bone}.png"


def annotation_path(root: str | Path, sample_id: str) -> Path:
    """Path of one annotation JSON."""
    return Path(root) / "annotations" / f"{sample_id}.json"


NAME_MAX = 255  # bytes of one file name on the usual file systems (ext4, XFS, APFS, NTFS)


def id_name_problem(sample_id: str) -> str | None:
    """Why the files an image id names (its masks, its annotation) cannot exist, or None: a
    name over ``NAME_MAX`` bytes (an image name of 250 bytes is legal, its ``_patella.png``
    mask name is not; ``Path.exists`` raised ENAMETOOLONG, a traceback in validate and train)."""
    names = [f"{sample_id}_{b}.png" for b in BONES] + [f"{sample_id}.json"]
    size, longest = max((len(os.fsencode(n)), n) for n in names)
    if size > NAME_MAX:
        return (f"its id is too long for its files: {longest[:24]!r}... would be {size} bytes "
                f"(file names hold at most {NAME_MAX}): shorten the image name")
    return None


def nfc_fold(name: str) -> str:
    """A name compared without case and Unicode normalisation (NFC vs NFD)."""
    return unicodedata.normalize("NFC", name).casefold()


@functools.lru_cache(maxsize=8)
def _folded_names(folder: str, mtime_ns: int) -> dict[str, str]:
    """{folded name: name} of a folder's entries, listed once per folder version (a validator
    asks for every missing mask)."""
    with os.scandir(folder) as entries:
        return {nfc_fold(e.name): e.name for e in entries}


def _same_but_case_or_form(path: Path) -> str | None:
    """The name of a file beside ``path`` whose name differs from it only in case or Unicode
    normalisation (a mask saved as .PNG, an NFD name from macOS), or None."""
    try:
        names = _folded_names(str(path.parent), path.parent.stat().st_mtime_ns)
    except OSError:
        return None
    return names.get(nfc_fold(path.name))


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """THE mask reader: a bone mask PNG as (H, W) uint8 {0, 1}.

    Accepted: one channel, or 3/4 channels whose colour channels are equal (a gray mask saved
    as RGB; an alpha channel only when fully opaque or equal to the gray values), holding 0
    and at most one other value (any nonzero value = bone).
    Raises DatasetError naming the file when it is missing, unreadable, too large, coloured,
    transparent, non-binary or of another size than ``shape`` (H, W).
    """
    from datamodules.image_io import (
        ImageReadError,
        check_pixel_limit,
        imdecode,
        orient,
        png_orientation,
    )  # fmt: skip

    path = Path(path)
    if not path.exists():
        near = _same_but_case_or_form(path)
        hint = f" ({near!r} differs from it only in case or Unicode form: rename it)" if near \
            else ""
        raise DatasetError(f"{path}: missing bone mask{hint}")
    if not path.is_file():
        raise DatasetError(f"{path}: not a regular file")
    try:
        check_pixel_limit(path)
    except (ImageReadError, OSError) as err:
        raise DatasetError(str(err)) from None
    try:
        data = path.read_bytes()
        if not data:  # (OpenCV's answer is an assertion message)
            raise DatasetError(f"{path}: the mask file is empty (0 bytes)")
        if data[:3] == b"\xff\xd8\xff":  # a JPEG saved under a .png name: its artefacts read
            raise DatasetError(f"{path}: a JPEG file named .png (lossy: its edges are not "
                               "binary); a mask must be a PNG file")  # as "non-binary values"
        with decoder_messages() as said:  # libpng's own prints go into the error line
            mask = imdecode(path, data)
    except ImageReadError as err:  # over OpenCV's decode cap
        raise DatasetError(str(err)) from None
    if mask is not None:  # as displayed, like its image (datamodules.image_io.orient)
        mask = orient(mask, png_orientation(data), [])
    if mask is None:
        extra = f" (decoder said: {brief(said)})" if said else ""
        raise DatasetError(f"{path}: unreadable or truncated mask{extra}")
    if mask.ndim == 3:
        colour = mask[..., :3] if mask.shape[2] >= 3 else mask
        if not all(np.array_equal(colour[..., 0], colour[..., c]) for c in range(colour.shape[2])):
            raise DatasetError(f"{path}: colour mask ({mask.shape[2]} channels that differ); "
                               "expected a single-channel (gray) PNG")
        alpha = mask[..., 3] if mask.shape[2] == 4 else None
        if alpha is not None and alpha.min() < np.iinfo(mask.dtype).max and not np.array_equal(
                alpha, colour[..., 0]):  # e.g. white everywhere, the bone drawn by the alpha
            raise DatasetError(f"{path}: mask with transparency (an alpha channel that differs "
                               "from its gray values); expected a single-channel (gray) PNG")
        mask = colour[..., 0]
    if shape is not None and mask.shape != tuple(shape):
        raise DatasetError(f"{path}: mask size {mask.shape[::-1]} (W x H) differs from its "
                           f"image {tuple(shape)[::-1]}")
    values = np.unique(mask)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise DatasetError(f"{path}: non-binary mask: values {{{shown}}} (expected 0 and one "
                           "other value)")
    return (mask > 0).astype(np.uint8)


def spacing_inputs(annotation_mm: Any, loaded: LoadedImage) -> dict[str, Any]:
    """``resolve_pixel_spacing``'s keyword arguments of one sample: the annotation's
    ``pixel_spacing_mm`` (raw or parsed, None when absent) and the image file's tags."""
    return {"annotation": annotation_mm, **loaded.spacing_inputs()}


def resolve_sample_spacing(inputs: dict[str, Any]) -> PixelSpacing | None:
    """The spacing a dataset sample trains with (no sphere search: it needs the predicted
    anatomy); the validator asks the same so that what it checks is what training uses."""
    from geometry.pixel_spacing import resolve_pixel_spacing

    return resolve_pixel_spacing(None, detect_sphere=False, **inputs).spacing


def read_sample(
    root: str | Path, sample_id: str, files: dict[str, list[Path]] | None = None
) -> Sample:
    """Read one sample (image, four masks, annotation) of a dataset folder.

    ``files`` is ``image_files(root)`` when the caller reads many samples (listing the images
    folder once, not once per sample).

    Spacing: ``geometry.pixel_spacing.resolve_pixel_spacing`` over the annotation's
    ``pixel_spacing_mm`` and the file's DICOM tags (no sphere search here: it needs the predicted
    anatomy). The raw inputs are kept in ``meta["spacing_inputs"]`` so that ``make evaluate``
    resolves them again exactly as ``make plan`` does (with the sphere and the anatomy).
    Raises DatasetError / ImageReadError / AnnotationError naming the file.
    """
    from datamodules.annotations import read_annotation
    from datamodules.image_io import load_image

    paths = (image_files(root) if files is None else files).get(sample_id, [])
    if len(paths) != 1:
        what = "no image" if not paths else f"duplicate images {[p.name for p in paths]}"
        raise DatasetError(f"{Path(root) / 'images'}: {what} for id {sample_id!r}")
    if problem := id_name_problem(sample_id):
        raise DatasetError(f"{paths[0]}: {problem}")
    loaded = load_image(paths[0])
    # checked against its id and image size as the validator does (``planning.evaluate`` reads
    # without validating); a stale "image" name (a file converted to DICOM) is only the
    # validator's concern
    ann = read_annotation(annotation_path(root, sample_id), sample_id, None, loaded.image.shape)
    masks = np.stack([read_mask(mask_path(root, sample_id, b), loaded.image.shape) for b in BONES])
    inputs = spacing_inputs(ann["spacing_mm"], loaded)
    resolved = resolve_sample_spacing(inputs)
    spacing = None if resolved is None else resolved.as_tuple()
    source = None if resolved is None else resolved.source
    meta = dict(ann["meta"])
    meta["spacing_inputs"] = {
        k: (None if v is None else [list(t) for t in v] if k == "invalid_tags"
            else float(v) if np.isscalar(v) else list(v))
        for k, v in inputs.items()
    }
    if ann["side"] is not None:
        meta["side"] = ann["side"]
    meta["image_file"] = paths[0].name
    return Sample(
        id=sample_id,
        image=loaded.image,
        masks=masks,
        annotations=ann["raters"],
        spacing_mm=spacing,
        spacing_source=source,
        schoettle_point=ann["schoettle_point"],
        meta=meta,
    )
