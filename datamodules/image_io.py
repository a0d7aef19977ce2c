"""Read one radiograph (PNG, TIFF, JPEG, DICOM) as a float32 (H, W) image in [0, 1], bright = bone.

PNG and TIFF: 8 or 16 bit (any integer type, or float); colour is converted to gray (ITU-R 601
weights). Integers are divided by the largest value of the stored bit depth: a PNG ``sBIT`` chunk
(e.g. 12 significant bits in a 16-bit PNG) when present, else the dtype's range. Values are not
stretched per image, so intensities stay comparable between files (a 12-bit image in a 16-bit
PNG without sBIT therefore looks dark: add sBIT or rescale it); signed integers are read from 0
to the type's maximum (negative values clip to 0). Float TIFFs in [0, 1] pass through; other
float ranges are stretched between their 0.1 and 99.9 percentiles (they carry no stored range).
Orientation tags (EXIF, TIFF; SHORT or LONG) are applied: the image is read as displayed. JPEG
(8 bit, OpenCV) is read the same way and marked ``lossy=True``: compression artefacts blur edges,
so the plan report warns (so are a JPEG-compressed TIFF and a lossy DICOM). The reader is chosen
by the file's magic bytes (PNG, JPEG, TIFF, DICOM), the suffix only when they say nothing: a
JPEG named .tif keeps its orientation and lossy mark, with a note. An animated PNG (APNG) is
refused, as a multi-frame DICOM is (which frame is the radiograph?). A pixel shape the file
declares (PNG pHYs, TIFF X/YResolution, JFIF density: their ratio only; DICOM
PixelAspectRatio) is kept in ``declared_aspect``; the spacing resolver flags it when not square.

DICOM (pydicom): the modality LUT (rescale or LUT sequence) and then the VOI LUT (LUT sequence,
else the first window centre/width) are applied as the standard display pipeline prescribes; the
result is normalised by the output range of that same pipeline over every storable value (not
by the image's own min/max), and MONOCHROME1 images (low value = white) are inverted, which
pydicom does not do. ``PresentationLUTShape`` is not applied on top of MONOCHROME1 (it says
INVERSE and describes the same inversion); a MONOCHROME2 image with INVERSE is inverted, with a
note. The DICOM spacing tags are only READ here
(``dicom_pixel`` = ``PixelSpacing``, ``dicom_imager`` = ``ImagerPixelSpacing``); a tag present but
invalid (``0\\0``, one value, text) is listed in ``invalid_spacing_tags`` with its raw text, not
treated as absent. Which spacing wins is decided by ``geometry.pixel_spacing`` only.
"""

from __future__ import annotations

import itertools
import re
import struct
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from datamodules import decode_guards, dicom_frames
from datamodules.decoder_messages import brief, decoder_messages, one_line, printable
from datamodules.dicom_functional_groups import (
    FunctionalGroupError,
    dicom_values,
    lift_functional_groups,
)
from datamodules.dicom_presentation import apply_presentation_lut, presentation_lut
from datamodules.forked_decode import DecoderCrashed, DecoderFailed, decode_in_child
from datamodules.jpeg_markers import JpegSegmentError, jpeg_segments
from datamodules.other_formats import other_header
from datamodules.path_limits import replace_link
from datamodules.pixel_limit import DEFAULT_MAX_PIXELS, max_pixels  # noqa: F401 (re-exported)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The network frame pads an image to a square of its longer side before resizing, so a 2 x
# 40000 px strip (80 kpx, a few kB) would need a 40000^2 square (GBs): the padded square may
# hold at most this many times the pixel limit (an 8000 x 4000 long-leg image passes).
SQUARE_FACTOR = 2
_GRAY_WEIGHTS_RGB = np.array([0.299, 0.587, 0.114])


class ImageReadError(OSError):
    """An image that cannot be read; the message names the file and the reason."""

    def __str__(self) -> str:
        return printable(super().__str__())  # one line, even for a file name with a newline


class _DiagnosedError(ImageReadError):
    """A decoder's failure whose cause the reader found in the file itself: its message says
    it, without what the decoder printed on the way (``load_image``)."""


@dataclass
class LoadedImage:
    """One image as read from disk.

    Args:
        image: (H, W) float32 in [0, 1], bright = bone.
        bit_depth: significant bits per stored pixel (8, 10, 12, 16, ...).
        meta: extras (format, photometric interpretation, window used, ...).
        dicom_pixel: valid DICOM ``PixelSpacing`` (row_mm, col_mm), or None.
        dicom_imager: valid DICOM ``ImagerPixelSpacing`` (row_mm, col_mm), or None.
        dicom_magnification: valid ``EstimatedRadiographicMagnificationFactor``, or None.
        invalid_spacing_tags: (tag, raw text) of spacing tags present but invalid.
        lossy: the file was lossy-compressed (JPEG, JPEG-in-TIFF, a lossy DICOM).
        notes: what the reader ignored or changed in the file (e.g. a broken DICOM window),
            one sentence each; planning reports them as warnings.
        declared_aspect: the pixel shape the file declares, (height / width of a pixel as
            read, where it says so), or None: a PNG ``pHYs`` chunk's, a TIFF's or JFIF's
            resolution ratio (never taken as a spacing: usually a print resolution), a DICOM
            ``PixelAspectRatio``. The spacing resolver flags it beyond ``MAX_ASPECT``.
    """

    image: np.ndarray
    bit_depth: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    dicom_pixel: tuple[float, float] | None = None
    dicom_imager: tuple[float, float] | None = None
    dicom_magnification: float | None = None
    invalid_spacing_tags: list[tuple[str, str]] = field(default_factory=list)
    lossy: bool = False
    notes: list[str] = field(default_factory=list)
    declared_aspect: tuple[float, str] | None = None

    def spacing_inputs(self) -> dict[str, Any]:
        """Keyword arguments of ``geometry.pixel_spacing.resolve_pixel_spacing`` from the file
        (``declared_aspect`` only when the file declares a pixel shape)."""
        inputs: dict[str, Any] = {
            "dicom_pixel": self.dicom_pixel,
            "dicom_imager": self.dicom_imager,
            "dicom_magnification": self.dicom_magnification,
            "invalid_tags": list(self.invalid_spacing_tags),
        }
        if self.declared_aspect is not None:
            inputs["declared_aspect"] = self.declared_aspect
        return inputs

    def _file_spacing(self) -> Any:
        from geometry.pixel_spacing import resolve_pixel_spacing

        return resolve_pixel_spacing(None, detect_sphere=False, **self.spacing_inputs()).spacing

    @property
    def spacing_mm(self) -> tuple[float, float] | None:
        """The file's own spacing by the one precedence order (no sphere search), or None."""
        sp = self._file_spacing()
        return None if sp is None else sp.as_tuple()

    @property
    def spacing_source(self) -> str | None:
        """Tag that ``spacing_mm`` came from, or None."""
        sp = self._file_spacing()
        return None if sp is None else sp.source


def load_image(path: str | Path) -> LoadedImage:
    """Read a PNG, TIFF or DICOM radiograph; raises ImageReadError naming the file."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if not path.is_file():
        raise ImageReadError(f"{path}: not a regular file (a folder, pipe or device)")
    special = decode_guards.special_file_problem(path.stat())
    if special is not None:  # (a link to /proc/self/environ: "regular", read as 0 bytes)
        raise ImageReadError(f"{path}: {special}")
    with decoder_messages() as said:  # decoders' own prints go into the error or a note
        try:
            check_pixel_limit(path)  # reads the header: pydicom may warn already
            loaded, error = _decode(path), None
        except ImageReadError as err:
            loaded, error = None, err
    if error is not None:
        extra = f" (decoder said: {brief(said)})" if said and not isinstance(
            error, _DiagnosedError) else ""  # fmt: skip
        raise ImageReadError(f"{error}{extra}") from error
    assert loaded is not None
    h, w = loaded.image.shape[:2]
    check_size(path, w, h)  # again from the pixels: not every header states the size
    if said:
        loaded.notes.append(f"the image decoder reported: {brief(said)}")
    return loaded


SUFFIX_FORMATS = {".png": "png", ".tif": "tiff", ".tiff": "tiff", ".jpg": "jpeg",
                  ".jpeg": "jpeg", ".dcm": "dicom"}
FORMAT_NAMES = {"png": "PNG", "tiff": "TIFF", "jpeg": "JPEG", "dicom": "DICOM"}
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF


def content_format(path: str | Path) -> str | None:
    """The format a file's first bytes declare ("dicom", "png", "jpeg", "tiff"), or None."""
    return _magic_format(_head(path))


def _head(path: str | Path) -> bytes:
    """The first 132 bytes of a file: enough for every magic number, DICOM's "DICM" included."""
    with Path(path).open("rb") as fh:
        return fh.read(132)


def _magic_format(head: bytes) -> str | None:
    """``content_format`` of a file's first bytes. DICOM first: its 128-byte preamble may itself
    start with a TIFF header."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:4] in TIFF_MAGIC:
        return "tiff"
    return None


# Formats OpenCV decodes behind a supported suffix, by their magic bytes: read with a note that
# names them (red-team round 7: a lossy WebP named .tif was read as lossless, without a note)
OTHER_FORMATS = tuple((re.compile(magic, re.S), name) for magic, name in (
    (rb"RIFF....WEBP", "WebP"), (rb"GIF8[79]a", "GIF"),
    (rb"BM.{12}[\x0c\x28\x34\x38\x40\x6c\x7c]\x00\x00\x00", "BMP"),  # "BM", a DIB header size
    (rb"P[1-7]\s", "PNM (PBM/PGM/PPM)"), (rb"P[Ff]\s", "PFM"),
    (rb"#\?(RADIANCE|RGBE)", "Radiance HDR"), (rb"v/1\x01", "OpenEXR"),
    (rb"\x00\x00\x00\x0cjP  |\xff\x4f\xff\x51", "JPEG 2000"),
    (rb"....ftyp(avif|heic|heix|mif1)", "AVIF/HEIF")))


def _decode(path: Path) -> LoadedImage:
    """Dispatch by the file's magic bytes (a JPEG named .tif is read as the JPEG it is, with its
    EXIF orientation and lossy mark, and a note), else by its suffix; another format that
    OpenCV decodes (``OTHER_FORMATS``) is read as what it is, with a note."""
    by_suffix = SUFFIX_FORMATS.get(path.suffix.lower())
    head = _head(path)
    content = _magic_format(head)
    if content is None and by_suffix in ("png", "tiff", "jpeg"):
        other = next((name for magic, name in OTHER_FORMATS if magic.match(head)), None)
        if other is not None:
            return _load_other(path, other)
    fmt = content or by_suffix
    if fmt is None:
        raise ImageReadError(f"{path}: unsupported image type {path.suffix.lower()!r} (use .png, "
                             ".tif, .jpg, .dcm)")
    loaded = {"png": _load_png, "tiff": _load_tiff, "jpeg": _load_jpeg,
              "dicom": _load_dicom}[fmt](path)  # fmt: skip
    if content is not None and content != by_suffix and not (content == "dicom"
                                                              and by_suffix is None):
        named = f"its name ends in {printable(path.suffix)[:20]!r}" if path.suffix else \
            "its name has no suffix"
        loaded.notes.insert(0, f"the file holds a {FORMAT_NAMES[content]} image but {named}: "
                               f"read as {FORMAT_NAMES[content]} (by its content)")
    return loaded


def header_size(path: str | Path) -> tuple[int, int, int] | None:
    """``(width, height, frames)`` from the file header alone (PNG IHDR, TIFF tags, JPEG SOF,
    DICOM Rows/Columns), without decoding pixels; None when the header does not say."""
    path = Path(path)
    head = _head(path)
    if head.startswith(PNG_SIGNATURE) and len(head) >= 24 and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return w, h, 1
    if _magic_format(head) == "dicom":  # before the TIFF magic: a preamble may start with II*\0
        return _dicom_size(path)
    if head[:4] in TIFF_MAGIC:
        return _tiff_size(path)
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(path)
    if path.suffix.lower() == ".dcm":
        return _dicom_size(path)
    other = next((name for magic, name in OTHER_FORMATS if magic.match(head)), None)
    if other in ("JPEG 2000", "PNM (PBM/PGM/PPM)"):  # sizes at the start of the file
        with path.open("rb") as fh:
            found = other_header(other, fh.read(1 << 16)).size
        return (*found, 1) if found is not None else None
    return None


MAX_TIFF_PAGES = 64  # a radiograph export holds one page, maybe a thumbnail; 700 000 pages
# (80 MB) took 67 s and 2 GB to list
MAX_SAMPLES = 4  # gray, gray + alpha, RGB, RGBA


def _tiff_pages(path: Path, tif: Any) -> list[Any]:
    """The pages of an open TIFF and their SubIFDs (one level: a writer may keep a thumbnail
    at the top and the full image in a SubIFD, which was left unread), at most
    ``MAX_TIFF_PAGES`` in all (ImageReadError beyond, or when the chain of IFDs loops)."""
    pages, seen = [], {}  # seen: the IFD offsets of the top-level pages, by page number
    for page in tif.pages:
        offset = getattr(page, "offset", None)
        if offset in seen:  # tifffile yields the same IFD again up to 100 times first
            raise ImageReadError(
                f"{path}: TIFF whose IFD chain loops (the next-IFD offset after page "
                f"{len(seen)} points back to page {seen[offset]}): a broken file")
        if offset is not None:
            seen[offset] = len(seen) + 1
        offsets = getattr(page, "subifds", None) or ()
        if len(offsets) > MAX_TIFF_PAGES:
            raise ImageReadError(f"{path}: TIFF with more than {MAX_TIFF_PAGES} pages (one "
                                 "radiograph expected)")
        try:  # SubIFD pages (tifffile reads them lazily; broken offsets: none)
            subs = list(page.pages or []) if offsets else []
        except Exception:  # noqa: BLE001 - a damaged SubIFD is skipped, the page still counts
            subs = []
        for item in (page, *subs):
            pages.append(item)
            if len(pages) > MAX_TIFF_PAGES:
                raise ImageReadError(f"{path}: TIFF with more than {MAX_TIFF_PAGES} pages (one "
                                     "radiograph expected)")
    return pages


def _check_samples(path: Path, page: Any) -> None:
    """Refuse a page of more than ``MAX_SAMPLES`` samples a pixel before it is decoded (a 49 kB
    file of 6000^2 x 200 samples allocated 7 GB)."""
    spp = int(getattr(page, "samplesperpixel", 1) or 1)
    if spp > MAX_SAMPLES:
        raise ImageReadError(f"{path}: TIFF with {spp} samples per pixel (one grayscale or "
                             "RGB page expected)")


def _check_segments(path: Path, page: Any) -> None:
    """Refuse a page whose tiles are over the pixel limit, or with too many strips or tiles,
    before it is decoded (``decode_guards.tiff_segment_problem``)."""
    problem = decode_guards.tiff_segment_problem(page, max_pixels())
    if problem is not None:
        raise ImageReadError(f"{path}: {problem}")


UNSUPPORTED_PHOTOMETRIC = {5: "CMYK (separated)", 8: "CIELab", 9: "ICCLab", 10: "ITULab",
                           32803: "colour filter array (raw sensor)", 32844: "LogL",
                           32845: "LogLuv", 34892: "linear raw (sensor)"}
YCBCR = 6


def _check_photometric(path: Path, photometric: int) -> None:
    """Refuse a TIFF whose samples are not gray, RGB or palette indices: read as RGB, a CMYK
    page of a radiograph was refused as blank, or planned inverted without a word."""
    if photometric in UNSUPPORTED_PHOTOMETRIC:
        raise ImageReadError(f"{path}: {UNSUPPORTED_PHOTOMETRIC[photometric]} TIFF is not "
                             "supported (save the radiograph as grayscale)")


class _UseOpenCV(Exception):
    """A TIFF page that tifffile would decode unbounded or wrongly, and OpenCV's libtiff
    decodes into a buffer of the image's size (the message says why)."""


# What tifffile decodes itself without the optional imagecodecs, each with a bound on what a
# strip may inflate to (decode_guards.tiff_inflate_problem); PackBits is left to OpenCV
# (tifffile's pure-Python decoder builds a list of ints, 8 bytes a byte, without a bound).
TIFFFILE_COMPRESSIONS = {1, *decode_guards.INFLATING_TIFF_CODECS}


def _compression_name(code: int) -> str:
    """tifffile's name of a TIFF Compression value ("LZW", "PACKBITS"), else the number."""
    import tifffile

    try:
        return tifffile.COMPRESSION(code).name
    except ValueError:
        return str(code)


def _largest_page(pages: list[Any]) -> int:
    """Index of the page with the most pixels (width x height: what the header check sizes)."""
    def pixels(i: int) -> int:
        return int(pages[i].imagewidth) * int(pages[i].imagelength)

    return max(range(len(pages)), key=pixels)


def _tiff_size(path: Path) -> tuple[int, int, int] | None:
    """The largest page's width and height (the one the reader decodes), one frame."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            pages = _tiff_pages(path, tif)
            if not pages:
                return None
            page = pages[_largest_page(pages)]
            _check_samples(path, page)
            _check_segments(path, page)
            w, h = int(page.imagewidth), int(page.imagelength)
            spp = int(getattr(page, "samplesperpixel", 1) or 1)
            bits = int(getattr(page, "bitspersample", 8) or 8)
    except ImageReadError:
        raise
    except Exception:  # a broken header is reported by the decoder with its own message
        return None
    if w * h * spp * bits > 64 * max_pixels():  # more than 8 bytes a pixel at the pixel limit
        raise ImageReadError(f"{path}: TIFF page of {w} x {h} px x {spp} samples x {bits} bits "
                             "is larger than an image within the pixel limit can be")
    return w, h, 1


def _tiff_tags(path: Path) -> tuple[int, int, int, tuple[float, str] | None, bool, int | None]:
    """(photometric of page 1, number of pages, orientation of page 1, its declared pixel
    shape, whether its compression is lossy, its MaxSampleValue below its type's maximum or
    None) from the tags alone (tifffile reads them without the codecs it may lack);
    (1, 1, 1, None, False, None) when unreadable."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            orientation = _tiff_orientation(page)
            max_sample = None if int(page.photometric) == 3 else _tiff_max_sample(page)
            return (int(page.photometric), len(tif.pages), orientation,
                    _tiff_aspect(page, orientation), _tiff_lossy(page), max_sample)
    except Exception:  # the decode that follows reports a broken file
        return 1, 1, 1, None, False, None


# JPEG (6 old-style, 7), lossy JPEG (DNG), JPEG XR, WebP, JPEG XL: lossy (JPEG 2000 may not be)
LOSSY_TIFF_COMPRESSIONS = {6: "JPEG", 7: "JPEG", 34892: "lossy JPEG", 22610: "JPEG XR",
                           34934: "JPEG XR", 50001: "WebP", 50002: "JPEG XL"}


def _tiff_orientation(page: Any) -> int:
    """A TIFF page's Orientation tag (274), 1 when absent or unreadable."""
    tag = page.tags.get(274)
    try:
        return int(np.ravel([tag.value])[0]) if tag is not None else 1
    except (TypeError, ValueError, IndexError):
        return 1


def _tiff_lossy(page: Any) -> bool:
    """Whether a TIFF page's Compression is a lossy one."""
    try:
        return int(page.compression) in LOSSY_TIFF_COMPRESSIONS
    except (TypeError, ValueError):
        return False


def _tiff_aspect(page: Any, orientation: int) -> tuple[float, str] | None:
    """The pixel shape a TIFF page's XResolution / YResolution declare (their ratio only), or
    None when either is absent or unusable."""
    def rational(code: int) -> float | None:
        tag = page.tags.get(code)
        if tag is None:
            return None
        try:
            value = tag.value
            if isinstance(value, tuple | list) and len(value) == 2:
                return float(value[0]) / float(value[1]) if float(value[1]) else None
            return float(value)
        except (TypeError, ValueError, ZeroDivisionError):
            return None

    x, y = rational(282), rational(283)
    if x is None or y is None:
        return None
    return declared_aspect(x, y, f"TIFF XResolution / YResolution ({x:g} / {y:g})", orientation)


def _jpeg_size(path: Path) -> tuple[int, int, int] | None:
    """Width and height from the first SOF segment of a JPEG (the file mapped, not read)."""
    import mmap

    try:
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            for marker, pos, _ in jpeg_segments(data):
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    if pos + 7 > len(data):
                        return None
                    h, w = struct.unpack_from(">HH", data, pos + 3)
                    return w, h, 1
    except JpegSegmentError as err:
        raise ImageReadError(f"{path}: {err}") from None
    except (OSError, ValueError):  # not mappable (empty, a device): the decoder reports it
        return None
    return None


def _dicom_size(path: Path) -> tuple[int, int, int] | None:
    import pydicom

    _check_dicom_structure(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception:  # reported by the decoder with its own message
        return None
    return (cols, rows, frames) if rows and cols else None


_DICOM_PASSED: dict[str, tuple[int, ...]] = {}  # the last file that passed, by its stat


def _check_dicom_structure(path: Path) -> None:
    """Refuse a DICOM file with more elements than any radiograph, or whose deflated dataset
    inflates past the byte cap, before pydicom parses it (``decode_guards.dicom_problem``).
    The header check and the decode both ask: the second time, a file that passed and is
    unchanged (same inode, size and modification time) is not walked again."""
    try:
        st = path.stat()
        key = (st.st_ino, st.st_size, st.st_mtime_ns, max_pixels())
        if _DICOM_PASSED.get(str(path)) == key:
            return
        problem = decode_guards.dicom_problem(path, max_pixels())
    except (OSError, ValueError, struct.error):  # unreadable: pydicom says why
        return
    if problem is not None:
        raise ImageReadError(f"{path}: {problem}")
    _DICOM_PASSED.clear()
    _DICOM_PASSED[str(path)] = key


def check_pixel_limit(path: str | Path, limit: int | None = None) -> None:
    """Refuse, before decoding, an image whose header declares more than ``limit`` pixels
    (default :func:`max_pixels`), or whose padded square holds more than ``SQUARE_FACTOR * limit``;
    a decompression bomb of a few kB would otherwise take GBs.
    A file larger than any image of that many pixels can be (8 bytes a pixel, plus 16 MB of
    metadata) is refused too, before it is read into memory."""
    limit = max_pixels() if limit is None else int(limit)
    n_bytes = Path(path).stat().st_size
    if n_bytes > decode_guards.image_bytes_cap(limit):
        raise ImageReadError(
            f"{path}: the file is {n_bytes / 1024**2:.0f} MB, more than an image within the "
            f"limit of {limit / 1e6:g} megapixels can need (set KNEEPLAN_MAX_PIXELS to raise it)")
    size = header_size(path)
    if size is not None:
        check_size(path, *size, limit=limit)


def check_size(path: str | Path, w: int, h: int, frames: int = 1, limit: int | None = None) -> None:
    """Refuse a ``w`` x ``h`` (x ``frames``) image over the pixel limit or whose padded square
    is over ``SQUARE_FACTOR`` times it (see :func:`check_pixel_limit`)."""
    limit = max_pixels() if limit is None else int(limit)
    if w * h * max(frames, 1) > limit:
        raise ImageReadError(
            f"{path}: {w} x {h} px{f' x {frames} frames' if frames > 1 else ''} exceeds the "
            f"limit of {limit / 1e6:g} megapixels (set KNEEPLAN_MAX_PIXELS to raise it)")
    side = max(w, h)
    if side * side > SQUARE_FACTOR * limit:
        raise ImageReadError(
            f"{path}: {w} x {h} px is too elongated: training and planning pad it to a "
            f"{side} x {side} square, more than {SQUARE_FACTOR} x the limit of "
            f"{limit / 1e6:g} megapixels (set KNEEPLAN_MAX_PIXELS to raise it)")


def _png_info(
    path: Path, data: bytes
) -> tuple[int | None, bool, int, tuple[int, int, int] | None]:
    """(significant bits from sBIT or None, whether the IEND chunk is present, the eXIf
    chunk's orientation or 1, the pHYs chunk's (x, y pixels per unit, unit) or None). An sBIT
    that cannot describe the samples (a palette image's, 0, or more than the bit depth) or that
    of 1, 2 or 4 bit samples (OpenCV scales them to 8 bits: red-team round 10) is None; of a
    gray + alpha (or RGBA) sBIT only the gray (colour) channels count, as the gray image is
    made of them."""
    if not data.startswith(PNG_SIGNATURE):
        raise ImageReadError(f"{path}: unreadable PNG, not a PNG file (bad signature)")
    depth, colour = (data[24], data[25]) if len(data) >= 26 else (0, 0)
    sbit, has_end, orientation, phys, image_data = None, False, 1, None, False
    one_frame, frame_control = False, False  # an acTL of 1 frame; an fcTL before the IDAT
    for ctype, pos, length in decode_guards.png_chunks(data):
        body = data[pos + 8 : pos + 8 + length]
        if ctype == b"IDAT" and not image_data and one_frame and not frame_control:
            # the IDAT is then a fallback outside the animation: an APNG viewer shows the fdAT
            raise ImageReadError(
                f"{path}: animated PNG (APNG) whose one frame is not its default image (no "
                "fcTL before the IDAT): two different pictures, send one as a still PNG")
        image_data = image_data or ctype == b"IDAT"
        frame_control = frame_control or ctype == b"fcTL"
        n = struct.unpack(">I", body[:4])[0] if ctype == b"acTL" and len(body) >= 4 else None
        if ctype == b"acTL" and not image_data and n != 1:  # (after IDAT: no animation; one
            # frame: a still in APNG clothing, read as the PNG it also is)
            frames = "an unreadable number of" if n is None else f"{n}"
            raise ImageReadError(
                f"{path}: animated PNG (APNG, its acTL chunk declares {frames} frames): one "
                "radiograph expected, send one frame as a still PNG")
        one_frame = one_frame or (ctype == b"acTL" and not image_data)
        if ctype == b"sBIT" and body:
            # gray: 1 byte; gray + alpha: gray, alpha; RGB: 3; RGBA: 3 + alpha
            sbit = max(body[:1] if colour in (0, 4) else body[:3])
        if ctype == b"eXIf":
            orientation = exif_orientation(body)
        if ctype == b"pHYs" and len(body) == 9:
            phys = struct.unpack(">IIB", body)
        has_end = ctype == b"IEND"
    if sbit is not None and (colour == 3 or not 0 < sbit <= depth or depth < 8):
        sbit = None  # (1-4 bit samples reach us scaled to 8 bits by the decoder)
    return sbit, has_end, orientation, phys


def _png_aspect(phys: tuple[int, int, int] | None, orientation: int) -> tuple[float, str] | None:
    """The pixel shape a pHYs chunk declares (its ratio only: the unit is metres or unknown,
    and the values usually a print resolution, not the detector's pitch)."""
    if phys is None:
        return None
    x, y, unit = phys
    per = "pixels per metre" if unit == 1 else "pixels per unit (unit unknown)"
    return declared_aspect(x, y, f"PNG pHYs chunk ({x} x {y} {per})", orientation)


def png_orientation(data: bytes) -> int:
    """The EXIF orientation of a PNG file's bytes (its eXIf chunk), 1 when none."""
    try:
        return _png_info(Path("."), data)[2]
    except ImageReadError:
        return 1


def _gray_dtype(arr: np.ndarray) -> type:
    """float32 where it holds every stored value exactly (integers of <= 16 bits, floats of <=
    32 bits), float64 otherwise: a 36 MP image then peaks at ~0.4 GB, not ~0.9 GB, in float64."""
    small = arr.dtype.itemsize <= 2 if np.issubdtype(arr.dtype, np.integer) else (
        arr.dtype.itemsize <= 4)
    return np.float32 if small else np.float64


def _to_gray(arr: np.ndarray, bgr: bool) -> np.ndarray:
    """Colour (H, W, 3|4) to gray float (``_gray_dtype``); gray (and gray + alpha) passes
    through. The weighted sum is accumulated channel by channel: a float copy of all three
    channels was 3x the image."""
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"unsupported pixel type {arr.dtype}")
    dtype = _gray_dtype(arr)
    if arr.ndim == 2:
        return arr.astype(dtype)
    if arr.ndim == 3 and arr.shape[2] in (1, 2, 3, 4):
        if arr.shape[2] in (1, 2):  # gray, or gray + alpha (a TIFF's; OpenCV makes a PNG's BGRA)
            return arr[..., 0].astype(dtype)
        order = (2, 1, 0) if bgr else (0, 1, 2)  # the channels holding R, G, B
        gray = np.empty(arr.shape[:2], dtype)
        part = np.empty_like(gray)
        for i, (channel, weight) in enumerate(zip(order, _GRAY_WEIGHTS_RGB, strict=True)):
            np.multiply(arr[..., channel], dtype(weight), out=gray if i == 0 else part,
                        casting="unsafe")
            if i:
                gray += part
        return gray
    raise ValueError(f"unsupported array shape {arr.shape}")


def _normalise_stored(
    path: Path, arr: np.ndarray, gray: np.ndarray, bits: int | None,
    stored_max: int | None = None,
) -> tuple[np.ndarray, int]:
    """Divide an integer image by its stored range (or pass a [0, 1] float image through), in
    place on ``gray`` (the caller's own float copy)."""
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(gray)):
            raise ImageReadError(f"{path}: float image contains NaN or infinity")
        lo, hi = float(gray.min()), float(gray.max())
        if lo < 0.0 or hi > 1.0:  # float outside [0, 1]: no stored range to go by, so stretch,
            # between robust percentiles (one stray -1e30 pixel made a min-max stretch white)
            lo, hi = (float(q) for q in np.percentile(gray[::2, ::2], [0.1, 99.9]))
            if hi <= lo:
                lo, hi = float(gray.min()), float(gray.max())
            # in float64: float32 data spanning -3e38..3e38 overflowed to NaN in float32
            return (_stretch(gray.astype(np.float64, copy=False), lo, hi, clip=True),
                    8 * arr.dtype.itemsize)
        return gray.astype(np.float32, copy=False), 8 * arr.dtype.itemsize
    if not np.issubdtype(arr.dtype, np.integer):
        raise ImageReadError(f"{path}: unsupported pixel type {arr.dtype}")
    info = np.iinfo(arr.dtype)
    depth = bits if bits is not None else 8 * arr.dtype.itemsize
    if bits is None and arr.dtype.itemsize > 2:  # 32/64-bit integers: no detector stores that
        lo, hi = float(gray.min()), float(gray.max())  # many bits, so the data's own range
        return _stretch(gray, lo, hi, clip=False), depth
    if stored_max is not None:
        lo, hi, depth = 0.0, float(stored_max), int(stored_max).bit_length()
    elif info.min < 0:  # signed: 0 .. the type's maximum, by the type alone (not the data)
        lo, hi = 0.0, float(info.max)
    else:
        lo, hi = 0.0, float(2**depth - 1)
    return _stretch(gray, lo, hi, clip=True), depth


def _stretch(gray: np.ndarray, lo: float, hi: float, clip: bool) -> np.ndarray:
    """``(gray - lo) / (hi - lo)`` as float32 (zeros when hi <= lo), clipped to [0, 1] if asked;
    in place where ``gray`` is float32 already."""
    if hi <= lo:
        return np.zeros(gray.shape, np.float32)
    gray -= gray.dtype.type(lo)
    gray /= gray.dtype.type(hi - lo)
    if clip:
        np.clip(gray, 0.0, 1.0, out=gray)
    return gray.astype(np.float32, copy=False)


def imdecode(path: str | Path, data: np.ndarray | bytes, flags: int = cv2.IMREAD_UNCHANGED) -> Any:
    """``cv2.imdecode`` of a file's bytes; None when OpenCV cannot decode them, ImageReadError
    when the decoded image would exceed OpenCV's decode cap (``datamodules.pixel_limit``), or,
    where that cap is off (cv2 imported before this package), when the header gives no size."""
    from datamodules.pixel_limit import opencv_cap_active

    if not opencv_cap_active() and header_size(path) is None:
        raise ImageReadError(
            f"{path}: its size cannot be read from its header, and OpenCV's decode cap is off in "
            "this process (cv2 was imported before kneeplan's datamodules): refused unread")
    _check_container(path, data)
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as err:
        if "MAX_IMAGE_PIXELS" in str(err):
            raise ImageReadError(
                f"{path}: the image inside exceeds the limit of {max_pixels() / 1e6:g} megapixels "
                "(its header did not say; set KNEEPLAN_MAX_PIXELS to raise it)") from None
        why = one_line(str(err), 160)
        raise ImageReadError(f"{path}: OpenCV cannot decode it ({why})") from None


def _check_container(path: str | Path, data: np.ndarray | bytes) -> None:
    """Before OpenCV decodes ``data``, whatever the file's suffix: a PNG's chunk lengths must
    fit in the file, a JPEG may have at most ``decode_guards.MAX_JPEG_SCANS`` scans."""
    view = data
    if isinstance(data, np.ndarray):
        view = memoryview(np.ascontiguousarray(data)).cast("B")
    if bytes(view[:8]) == PNG_SIGNATURE:
        problem = decode_guards.png_chunk_problem(view)
    elif bytes(view[:2]) == b"\xff\xd8":
        problem = decode_guards.jpeg_scan_problem(view)
    elif bytes(view[:4]) in TIFF_MAGIC:
        problem = _tiff_jpeg_problem(Path(path), view)
    else:
        problem = None
    if problem is not None:
        raise ImageReadError(f"{path}: {problem}")


def _tiff_jpeg_problem(path: Path, view: memoryview) -> str | None:
    """What is wrong with a JPEG compressed TIFF's strips or tiles, on any page (OpenCV's
    libtiff decodes them with libjpeg: ``decode_guards.tiff_jpeg_problem``); None when the
    file has none, or tifffile cannot read its tags (libtiff then reports it)."""
    import io

    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(view)) as tif:
            for page in _tiff_pages(path, tif):
                problem = decode_guards.tiff_jpeg_problem(view, page)
                if problem is not None:
                    return problem
    except ImageReadError:
        raise
    except Exception:  # broken tags: OpenCV's libtiff judges the file
        return None
    return None


def write_image(path: str | Path, array: np.ndarray, params: Sequence[int] = ()) -> None:
    """Encode ``array`` by ``path``'s suffix and write it; OSError naming the file on failure.
    (Not ``cv2.imwrite``: its Python binding crashes on a path that is not valid UTF-8.)"""
    path = Path(path)
    ok, buf = cv2.imencode(path.suffix or ".png", array, list(params))
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the image")
    replace_link(path).write_bytes(buf)  # (never through a link: path_limits; no bytes copy)


ORIENTATIONS = {2: "mirrored", 3: "rotated 180 deg", 4: "flipped upside down",
                5: "transposed", 6: "rotated 90 deg clockwise", 7: "transversed",
                8: "rotated 90 deg counter-clockwise"}  # EXIF/TIFF Orientation (274), 1 = as stored


def exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (274) of IFD0 of a TIFF-structured EXIF block, 1 when absent or
    outside 1..8. Stored as SHORT (the standard's type) or LONG (some writers; Pillow's
    ``exif_transpose`` applies it too)."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    end = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack(end + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return 1
    (n,) = struct.unpack(end + "H", tiff[ifd : ifd + 2])
    for i in range(min(n, 512)):
        at = ifd + 2 + 12 * i
        if at + 12 > len(tiff):
            break
        tag, typ, count = struct.unpack(end + "HHI", tiff[at : at + 8])
        if tag == 274 and typ in (3, 4) and count >= 1:  # SHORT or LONG, value inline
            (value,) = struct.unpack(end + ("H" if typ == 3 else "I"), tiff[at + 8 : at + 8 + (
                2 if typ == 3 else 4)])
            return value if value in ORIENTATIONS else 1
    return 1


def _jpeg_exif(data: bytes) -> bytes:
    """The TIFF block of a JPEG's APP1 Exif segment, found by walking the segments up to the
    scan (an "Exif" inside a comment is not one); empty when there is none."""
    return _jpeg_segment(data, 0xE1, b"Exif\x00\x00")


def _jpeg_aspect(data: bytes, orientation: int) -> tuple[float, str] | None:
    """The pixel shape a JPEG's JFIF APP0 density declares (X and Y density: only their ratio
    counts), or None."""
    jfif = _jpeg_segment(data, 0xE0, b"JFIF\x00")
    if len(jfif) < 7:
        return None
    unit, x, y = struct.unpack(">BHH", jfif[2:7])
    per = {1: "dots per inch", 2: "dots per cm"}.get(unit, "(aspect ratio only)")
    return declared_aspect(x, y, f"JFIF density ({x} x {y} {per})", orientation)


def _jpeg_segment(data: bytes, app: int, prefix: bytes) -> bytes:
    """The body after ``prefix`` of a JPEG's first ``app`` marker segment that starts with it,
    found by walking the segments up to the scan; empty when there is none."""
    try:
        for marker, pos, length in jpeg_segments(data):
            body = data[pos + 2 : pos + length]
            if marker == app and body.startswith(prefix):
                return body[len(prefix):]
    except JpegSegmentError:
        pass  # refused before decoding (decode_guards.jpeg_scan_problem)
    return b""


def _orientation_note(orientation: int) -> str:
    return (f"the file's orientation tag ({orientation}: {ORIENTATIONS[orientation]}) was "
            "applied: the image is read as it is displayed")


def orient(arr: np.ndarray, orientation: int, notes: list[str]) -> np.ndarray:
    """``arr`` as displayed under an EXIF/TIFF Orientation (a phone photo of a light box stores
    the sensor's pixels and this tag); a note says what was done."""
    if orientation not in ORIENTATIONS:
        return arr
    notes.append(_orientation_note(orientation))
    if orientation in (5, 6, 7, 8):
        arr = np.swapaxes(arr, 0, 1)  # transpose, then flip as for 2, 4, 3
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    if orientation in (2, 3):
        arr = arr[:, ::-1]
    if orientation in (3, 4):
        arr = arr[::-1]
    return np.ascontiguousarray(arr)


def declared_aspect(x: Any, y: Any, where: str, orientation: int = 1) -> tuple[float, str] | None:
    """(height / width of a pixel as read, ``where``) from a resolution pair in pixels per unit
    across (``x``) and down (``y``) the stored image (PNG pHYs, TIFF X/YResolution, JFIF
    density: only their ratio means anything here); an orientation that transposes the image
    (5-8) swaps them. None when either is not a positive finite number."""
    try:
        xf, yf = float(x), float(y)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not (np.isfinite(xf) and np.isfinite(yf) and xf > 0 and yf > 0):
        return None
    ratio = xf / yf  # pixel height / width = (1 / y) / (1 / x)
    if orientation in (5, 6, 7, 8):
        ratio = 1.0 / ratio
    return ratio, where


def aspect_text(ratio: float) -> str:
    """``2:1`` or ``1:2`` (height:width of a pixel)."""
    return f"{ratio:.3g}:1" if ratio >= 1 else f"1:{1 / ratio:.3g}"


def _set_aspect(loaded: LoadedImage, aspect: tuple[float, str] | None) -> LoadedImage:
    """Keep the file's declared pixel shape; a note when it is not square (the resolver makes
    it a review reason)."""
    from geometry.pixel_spacing import MAX_ASPECT

    if aspect is None:
        return loaded
    loaded.declared_aspect = aspect
    ratio, where = aspect
    if max(ratio, 1 / ratio) > MAX_ASPECT:
        loaded.notes.append(f"the file's {where} declares non-square pixels ({aspect_text(ratio)}, "
                            "height:width): read as stored, not resampled, so the knee is "
                            "squeezed; the plan is flagged for review")
    return loaded


CONTRADICTED_SHARE = 0.01  # more than this share of the pixels beyond a bit-depth tag: the
# tag is wrong (a few such pixels are stray bits, or an overlay drawn into the unused bits)


def _sbit_in_use(arr: np.ndarray, sbit: int, notes: list[str]) -> int | None:
    """``sbit`` unless the pixels contradict it: when more than ``CONTRADICTED_SHARE`` of the
    values lie above its range (a 16-bit PNG stating 4 bits clipped half its pixels to white)
    the chunk is ignored and the file's bit depth used, with a note; a few such values are
    clipped, with a note too (sBIT is advice, the PNG's bit depth is what it stores)."""
    top = _top_in_use(arr, 2**sbit - 1, f"the PNG's sBIT chunk ({sbit} significant bits)",
                      f"the {sbit}-bit range the PNG's sBIT chunk states", notes)
    return None if top is None else sbit


def _top_in_use(arr: np.ndarray, top: int, claim: str, stated: str,
                notes: list[str]) -> int | None:
    """``top``, the largest value a file's header declares its samples reach, unless more than
    ``CONTRADICTED_SHARE`` of the pixels lie above it (None: ignored, with a note naming
    ``claim``); a few above it are clipped to white, with a note naming ``stated``."""
    n_over = int(np.count_nonzero(arr > top))
    if not n_over:
        return top
    share = n_over / arr.size
    if share > CONTRADICTED_SHARE:
        notes.append(f"{claim} is contradicted by the pixels ({100 * share:.0f} % of the values "
                     f"lie above {top}): ignored, the file's {8 * arr.dtype.itemsize}-bit range "
                     "is used")
        return None
    notes.append(f"{n_over} values ({100 * share:.2g} %) lie above {stated}: clipped to white")
    return top


def image_samples(arr: np.ndarray) -> np.ndarray:
    """The samples a gray image is made of: gray + alpha -> gray, RGBA (or BGRA) -> colour; an
    alpha channel's range is its own."""
    if arr.ndim == 3 and arr.shape[2] == 2:
        return arr[..., :1]
    return arr[..., :3] if arr.ndim == 3 and arr.shape[2] == 4 else arr


def _max_sample_in_use(arr: np.ndarray, max_sample: int | None, notes: list[str]) -> int | None:
    """A TIFF's MaxSampleValue as the samples' range unless the pixels contradict it, with a
    note either way (None when there is none to use)."""
    if max_sample is None:
        return None
    what = f"the TIFF's MaxSampleValue ({max_sample})"
    top = _top_in_use(image_samples(arr), max_sample, what, f"the range {what} states", notes)
    if top is not None:
        notes.append(f"{what} is the samples' range (not their {8 * arr.dtype.itemsize}-bit "
                     "type's)")
    return top


def _tiff_max_sample(page: Any) -> int | None:
    """A TIFF page's MaxSampleValue (281) when it states a bit depth below its unsigned
    samples' (2^k - 1: 12-bit data in 16-bit samples says 4095 there; read as 16 bits it was
    16x too dark: red-team round 10), else None."""
    tag = page.tags.get(281)
    if tag is None or int(page.sampleformat) != 1:  # 1: unsigned integer
        return None
    values = tag.value if isinstance(tag.value, tuple | list) else (tag.value,)
    try:
        top, bits = max(int(v) for v in values), int(page.bitspersample)
    except (TypeError, ValueError):
        return None
    # only a bit depth (4095, 1023, ...): TIFF 6.0 calls the tag statistics, not display advice,
    # and a writer may record the data's own maximum there (3012 would stretch it to white)
    return top if 0 < top < 2**bits - 1 and top & (top + 1) == 0 else None


def _spec_scaled(arr: np.ndarray, sbit: int) -> bool:
    """Whether ``sbit``-bit samples were scaled up to the full depth as the PNG spec says (low
    bits all zero, or the top bits replicated into them) rather than stored as they are: by
    the bit pattern, not the maximum (one stray pixel above 2^sbit - 1 would decide that);
    but samples that all fit in ``sbit`` bits are taken as stored (red-team round 7)."""
    shift = 8 * arr.dtype.itemsize - sbit
    if shift <= 0 or not np.issubdtype(arr.dtype, np.unsignedinteger) or not arr.any():
        return False
    a = arr.astype(np.uint32)
    if int(a.max()) < 1 << sbit:  # scaled, such samples would use 1/2^shift of the range:
        return False  # e.g. an 8-bit image * 16 stored as 12 bits, read 16x too dark before
    low = a & ((1 << shift) - 1)
    replicated = (a >> sbit) if shift <= sbit else None
    return bool(not low.any() or (replicated is not None and np.array_equal(low, replicated)))


def _load_png(path: Path) -> LoadedImage:
    data = path.read_bytes()
    sbit, has_end, orientation, phys = _png_info(path, data)
    arr = imdecode(path, data)
    if arr is None or not has_end:
        reason = "truncated (no IEND chunk)" if not has_end else "OpenCV cannot decode it"
        raise ImageReadError(f"{path}: unreadable PNG, {reason}")
    samples = image_samples(arr)  # (not the alpha channel, whose sBIT is its own)
    if sbit is not None and _spec_scaled(samples, sbit):
        sbit = None  # samples scaled up to the full depth, as the PNG spec prescribes
    notes: list[str] = []
    if sbit is not None:
        sbit = _sbit_in_use(samples, sbit, notes)
    arr = orient(arr, orientation, notes)
    loaded = _from_decoded(path, arr, sbit, "png", notes=notes)
    return _set_aspect(loaded, _png_aspect(phys, orientation))


def _read_tiff_page(
    path: Path, notes: list[str]
) -> tuple[np.ndarray, bool, tuple[float, str] | None, bool, int | None]:
    """The largest page of a TIFF (a thumbnail may come first; a note when there are several),
    its palette applied, planes last; whether it is MinIsWhite (dark = dense), the pixel shape
    it declares, whether its compression is lossy, and its MaxSampleValue when the samples
    use a smaller range than their type's (else None)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        pages = _tiff_pages(path, tif)
        if not pages:
            raise ValueError("no pages")
        k = _largest_page(pages)
        page = pages[k]
        _check_samples(path, page)
        _check_photometric(path, int(page.photometric))
        _check_segments(path, page)
        if int(page.photometric) == YCBCR:  # tifffile returns Y, Cb, Cr as they are stored
            raise _UseOpenCV("its YCbCr colour is converted by OpenCV's libtiff")
        if int(page.compression) not in TIFFFILE_COMPRESSIONS:
            raise _UseOpenCV(f"its {_compression_name(int(page.compression))} compression is "
                             "decoded by OpenCV's libtiff")
        problem = decode_guards.tiff_inflate_problem(path, page)
        if problem is not None:
            raise ImageReadError(f"{path}: {problem}")
        if len(pages) > 1:
            notes.append(f"the TIFF holds {len(pages)} pages: the largest (page {k + 1}, "
                         f"{'x'.join(str(n) for n in page.shape)}) was read")
        arr = page.asarray()
        photometric, colormap = int(page.photometric), page.colormap
        planes_first = int(page.planarconfig) == 2 and arr.ndim == 3  # SEPARATE
        orientation = _tiff_orientation(page)
        aspect, lossy = _tiff_aspect(page, orientation), _tiff_lossy(page)
        max_sample = None if photometric == 3 else _tiff_max_sample(page)
        alpha = bool(set(page.extrasamples or ()) & {1, 2})  # associated / unassociated alpha
    if photometric == 3 and colormap is not None:  # PALETTE: indices into a colour map
        cmap = np.asarray(colormap)
        arr = np.moveaxis(cmap[:, np.clip(arr.astype(np.int64), 0, cmap.shape[1] - 1)], 0, -1)
    if planes_first:  # planar configuration 2: (samples, H, W)
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[2] == 2 and not alpha:  # read as gray + alpha only when so
        raise ImageReadError(f"{path}: TIFF of two samples per pixel whose second is not an "
                             "alpha channel (ExtraSamples): not one grayscale image")
    max_sample = _max_sample_in_use(arr, max_sample, notes)
    return orient(arr, orientation, notes), photometric == 0, aspect, lossy, max_sample


def _load_tiff_by_opencv(path: Path, err: Exception) -> LoadedImage:
    """A TIFF tifffile could not decode (it needs the optional ``imagecodecs`` for LZW, Deflate,
    JPEG-in-TIFF, common in exported radiographs), read by OpenCV's libtiff; the page count,
    MinIsWhite and orientation come from the tags, which tifffile still reads."""
    photometric, pages, orientation, aspect, lossy, max_sample = _tiff_tags(path)
    _check_photometric(path, photometric)
    arr = imdecode(path, path.read_bytes())
    if arr is None:
        raise ImageReadError(f"{path}: unreadable or truncated TIFF ({_brief(err)})") from err
    notes = []
    if pages > 1:
        why = (str(err) if isinstance(err, _UseOpenCV)
               else "its compression needs a codec tifffile lacks")
        notes.append(f"the TIFF holds {pages} pages: OpenCV read the first ({why}; convert it "
                     "to one-page TIFF or PNG)")
    if orientation in ORIENTATIONS:  # OpenCV's libtiff applies the tag itself
        notes.append(_orientation_note(orientation))
    # (not for 8-bit MinIsWhite: OpenCV has inverted those samples, and so their range)
    inverted = photometric == 0 and arr.dtype == np.uint8
    max_sample = _max_sample_in_use(arr, None if inverted else max_sample, notes)
    loaded = _from_decoded(path, arr, None, "tiff", lossy=lossy, notes=notes,
                           stored_max=max_sample)
    # MinIsWhite: OpenCV's libtiff path inverts 8-bit samples itself (stored 10 reads 245) but
    # returns deeper ones as stored; inverting both read 8-bit LZW/PackBits files as negatives
    if photometric == 0 and arr.dtype != np.uint8:
        loaded.image = 1.0 - loaded.image
    return _set_aspect(loaded, aspect)


def _load_tiff(path: Path) -> LoadedImage:
    notes: list[str] = []
    try:
        arr, min_is_white, aspect, lossy, max_sample = _read_tiff_page(path, notes)
    except ImageReadError:
        raise
    except Exception as err:  # tifffile raises many types for broken files
        return _load_tiff_by_opencv(path, err)
    arr = np.squeeze(arr)
    try:
        gray = _to_gray(arr, bgr=False)
    except ValueError as err:
        hint = "" if "pixel type" in str(err) else " (one grayscale or RGB page expected)"
        raise ImageReadError(f"{path}: {err}{hint}") from err
    image, depth = _normalise_stored(path, arr, gray, None, max_sample)
    if min_is_white:  # PhotometricInterpretation MinIsWhite: as DICOM MONOCHROME1
        image = 1.0 - image
    loaded = LoadedImage(image, depth, {"format": "tiff", "dtype": str(arr.dtype)}, lossy=lossy,
                         notes=notes)
    return _set_aspect(loaded, aspect)


def _load_jpeg(path: Path) -> LoadedImage:
    data = path.read_bytes()
    arr = imdecode(path, data)
    if arr is None:
        raise ImageReadError(f"{path}: unreadable JPEG (OpenCV cannot decode it)")
    notes: list[str] = []
    orientation = exif_orientation(_jpeg_exif(data))
    arr = orient(arr, orientation, notes)
    # content OpenCV reads that no magic number here names (a Sun raster) decodes here too
    loaded = _from_decoded(path, arr, None, "jpeg", lossy=data[:2] == b"\xff\xd8", notes=notes)
    return _set_aspect(loaded, _jpeg_aspect(data, orientation))


def _load_other(path: Path, name: str) -> LoadedImage:
    """A format of ``OTHER_FORMATS`` behind a supported suffix, decoded by OpenCV (under its
    decode cap), with a note naming it; lossy for lossy WebP (VP8, not VP8L), AVIF/HEIF and
    JPEG 2000 (which may also be lossless: the warning then errs on the safe side)."""
    data = path.read_bytes()
    header = other_header(name, data)  # what OpenCV would miss or pay for (other_formats)
    if header.problem is not None:
        raise ImageReadError(f"{path}: {header.problem}")
    arr = imdecode(path, data)
    if arr is None:
        raise ImageReadError(f"{path}: unreadable {name} image (OpenCV cannot decode it)")
    lossy = header.lossy if header.lossy is not None else name in ("AVIF/HEIF", "JPEG 2000", "WebP")
    notes = [f"the file holds a {name} image but its name ends in "
             f"{printable(path.suffix)[:20]!r}: read by OpenCV (by its content)"]
    arr = orient(arr, exif_orientation(header.exif), notes)
    stored_max = header.stored_max
    if stored_max is not None and np.issubdtype(arr.dtype, np.integer):
        if int(arr.max()) > stored_max:  # the header does not describe these samples
            notes.append(f"samples above the {stored_max} its header declares: read by the "
                         f"{arr.dtype} range")
            stored_max = None
        else:
            notes.append(f"samples read on the 0-{stored_max} range its header declares")
    else:
        stored_max = None
    return _from_decoded(path, arr, None, name, lossy=lossy, notes=notes, stored_max=stored_max)


def _from_decoded(
    path: Path, arr: np.ndarray, bits: int | None, fmt: str, lossy: bool = False,
    notes: list[str] | None = None, stored_max: int | None = None,
) -> LoadedImage:
    """An OpenCV-decoded (BGR or gray) array as a LoadedImage, values by the stored range
    (``stored_max``: a sample range the header declares, e.g. a PNM's maxval)."""
    try:
        gray = _to_gray(arr, bgr=True)
    except ValueError as err:
        raise ImageReadError(f"{path}: {err}") from err
    image, depth = _normalise_stored(path, arr, gray, bits, stored_max)
    return LoadedImage(image, depth, {"format": fmt, "dtype": str(arr.dtype)}, lossy=lossy,
                       notes=list(notes or []))


# pydicom's words for an element whose length is no whole number of its values (they quote the
# raw bytes, which may be a whole file meta group)
_WRONG_LENGTH = re.compile(r"with length (\d+) and struct format '\w' which corresponds to bytes "
                           r"per value of (\d+)\. This occurred while trying to parse "
                           r"\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\) according to VR '(\w+)'")


def _brief(err: BaseException) -> str:
    """A decoder's exception on one line (its type when it says nothing)."""
    found = _WRONG_LENGTH.search(str(err))
    if found is not None:  # pydicom's BytesLengthException
        n, size, group, element, vr = found.groups()
        return _wrong_length(int(group, 16), int(element, 16), int(n), int(size), vr)
    return one_line(str(err), 300) or type(err).__name__


def _dicom_window(ds: Any) -> tuple[list[float] | None, str | None]:
    """The file's first VOI window [centre, width] (None when absent or unusable) and why it
    cannot be used (non-numeric, non-finite or width < 1; None when it can or there is none)."""
    if not ("WindowCenter" in ds and "WindowWidth" in ds):
        return None, None
    try:
        centre = float(np.ravel([ds.WindowCenter])[0])
        width = float(np.ravel([ds.WindowWidth])[0])
    except (TypeError, ValueError, IndexError):
        return None, "its values are not numbers"
    if not (np.isfinite(centre) and np.isfinite(width)) or width < 1:
        return None, f"centre {centre:g}, width {width:g}"
    return [centre, width], None


def _first_window_only(ds: Any, notes: list[str]) -> None:
    """Keep only the first of several VOI windows when the others hold values that are not
    finite numbers (``2000\\nan``, ``1\\x``), with a note: pydicom parses them all and
    failed on a text one, although only the first is used. (The first is judged by
    ``_dicom_window``.)"""
    if not ("WindowCenter" in ds and "WindowWidth" in ds):
        return
    try:
        centres = list(np.ravel([ds["WindowCenter"].value]))
        widths = list(np.ravel([ds["WindowWidth"].value]))
    except Exception:  # noqa: BLE001 - unreadable: _dicom_window says so
        return
    if len(centres) < 2 and len(widths) < 2:
        return

    def usable(value: Any) -> bool:
        try:
            return bool(np.isfinite(float(value)))
        except (TypeError, ValueError):
            return False

    if all(usable(v) for v in (*centres[1:], *widths[1:])):
        return  # (pydicom applies the first of several good windows itself)
    raw = [printable("\\".join(str(getattr(v, "original_string", v)) for v in values))[:40]
           for values in (centres, widths)]  # fmt: skip
    try:
        ds["WindowCenter"].value, ds["WindowWidth"].value = centres[:1], widths[:1]
    except (TypeError, ValueError):  # pydicom re-checks on assignment ("1,5" is no number):
        return  # the window is then judged, and ignored with a note, by _dicom_window
    notes.append(f"DICOM window list (WindowCenter '{raw[0]}', WindowWidth '{raw[1]}') holds "
                 "values that are not numbers: only the first window is considered")


WRAP_SHARE = 0.01  # of the pixels on each side of the wrap: see _wrap_note


def _wrap_note(arr: np.ndarray, bits: int) -> str | None:
    """A note when signed samples are continuous across the wrap of their range (more than
    ``WRAP_SHARE`` of the pixels in each outer sixteenth) but not across zero (four times fewer
    there): unsigned data labelled signed, whose bright half wrapped to the most negative
    values (red-team round 10: read garbled without a word). Signed data that uses its range
    crosses zero. Read as the file says; the note tells the user."""
    if not 2 <= bits <= 64 or not np.issubdtype(arr.dtype, np.signedinteger):
        return None
    half = 2 ** (bits - 1)
    band = max(half // 8, 1)
    wrap = min(np.count_nonzero(arr < -half + band), np.count_nonzero(arr >= half - band))
    zero = min(np.count_nonzero((arr >= -band) & (arr < 0)),
               np.count_nonzero((arr >= 0) & (arr < band)))
    if wrap > WRAP_SHARE * arr.size and wrap > 4 * zero:
        return (f"DICOM PixelRepresentation 1 (signed), yet the values run on across the wrap "
                f"from the most positive to the most negative {bits}-bit value and not across "
                "zero: unsigned data labelled signed? (read as the file says)")
    return None


def _drop_unusable_voi_lut(ds: Any, notes: list[str]) -> None:
    """A VOI LUT Sequence whose first item lacks its descriptor or data was skipped silently by
    pydicom (red-team round 10): it is removed (a window, if any, then applies), with a note."""
    seq = ds.get("VOILUTSequence")
    if seq is None or not len(seq):
        return
    missing = [t for t in ("LUTDescriptor", "LUTData") if t not in seq[0]]
    if missing:
        del ds["VOILUTSequence"]
        notes.append(f"DICOM VOI LUT Sequence ignored (its item has no {' or '.join(missing)})")


def _spacing_tag(ds: Any, tag: str) -> tuple[tuple[float, float] | None, str | None]:
    """(valid (row_mm, col_mm) or None, raw text when the tag is present but invalid)."""
    from geometry.pixel_spacing import PixelSpacing

    if tag not in ds:
        return None, None
    items = dicom_values(ds[tag].value)
    raw = "\\".join("" if v is None else str(v) for v in items)
    try:
        vals = [float(v) for v in items]
        if len(vals) != 2:
            raise ValueError(f"{len(vals)} value(s)")
        return PixelSpacing(vals[0], vals[1], tag).as_tuple(), None
    except (TypeError, ValueError):
        return None, raw


def _dicom_aspect(ds: Any, notes: list[str]) -> tuple[float, str] | None:
    """``PixelAspectRatio`` (vertical \\ horizontal size of a pixel) when present and valid
    (else a note), as (height / width, where)."""
    tag = "PixelAspectRatio"
    if tag not in ds:
        return None
    raw = "(unreadable)"
    try:
        items = dicom_values(ds[tag].value)
        raw = printable("\\".join("" if v is None else str(v) for v in items))[:40]
        # height / width = vertical / horizontal (declared_aspect's x / y)
        aspect = (declared_aspect(float(items[0]), float(items[1]), f"DICOM {tag} {raw}")
                  if len(items) == 2 else None)
    except Exception:  # pydicom may raise on reading a malformed value
        aspect = None
    if aspect is None:
        notes.append(f"DICOM {tag} {raw!r} is invalid (two positive numbers expected): ignored")
    return aspect


# Transfer syntaxes whose compression is lossy: JPEG Baseline, Extended and the retired lossy
# JPEG processes, JPEG-LS near-lossless (JPEG 2000 may be either: LossyImageCompression says)
LOSSY_TRANSFER_SYNTAXES = {f"1.2.840.10008.1.2.4.{n}" for n in
                           (50, 51, 52, 53, 54, 55, 56, 58, 59, 60, 61, 62, 63, 64, 81)}


def _dicom_ratio(ds: Any) -> float:
    """The largest ``LossyImageCompressionRatio`` recorded (0 when none or unreadable; 1 or
    less is no compression)."""
    try:
        values = dicom_values(ds.get("LossyImageCompressionRatio"))
        return max((float(v) for v in values if v not in (None, "")), default=0.0)
    except (TypeError, ValueError):
        return 0.0


def _dicom_lossy(ds: Any) -> bool:
    """Whether a DICOM's pixels were lossy compressed: ``LossyImageCompression`` "01" (at any
    time in their history; also written "1"), a lossy compression method or ratio recorded, a
    lossy transfer syntax, or a compressed frame whose own header is lossy (a JPEG baseline or
    9-7 wavelet frame under a "lossless" syntax: red-team round 10)."""
    stated = str(ds.get("LossyImageCompression", "") or "").strip()
    if stated in ("01", "1"):
        return True
    if stated not in ("00", "0") and (_dicom_ratio(ds) > 1.0 or str(
            ds.get("LossyImageCompressionMethod", "") or "").strip()):  # an explicit 00 wins
        return True
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "") or "").strip() if meta is not None else ""
    if syntax in LOSSY_TRANSFER_SYNTAXES:
        return True
    if syntax not in dicom_frames.JPEG_SYNTAXES | dicom_frames.J2K_SYNTAXES:
        return False
    from pydicom.encaps import generate_fragments

    try:  # the frame header sits in the first fragment after the Basic Offset Table item
        first = next(itertools.islice(generate_fragments(ds.PixelData), 1, None), b"")
    except Exception:  # noqa: BLE001 - an unreadable fragment list: decoding said so already
        return False
    return dicom_frames.frame_lossy(bytes(first[:1 << 20]))


MAGNIFICATION_RANGE = (1.0, 2.0)  # source-to-detector / source-to-object of a radiograph


def _spacings_disagree(pixel: tuple[float, float], imager: tuple[float, float]) -> str | None:
    """A note when ImagerPixelSpacing / PixelSpacing, the magnification the calibration found,
    lies outside what a radiograph can have (red-team round 10: 3x passed without a word)."""
    ratios = [i / p for i, p in zip(imager, pixel, strict=True)]
    lo, hi = MAGNIFICATION_RANGE
    if all(0.95 * lo <= r <= hi for r in ratios):
        return None
    worst = max(ratios, key=lambda r: abs(r - 1))
    return (f"DICOM ImagerPixelSpacing / PixelSpacing = {worst:.3g}: a radiograph magnifies "
            f"{lo:g}-{hi:g}x, so one of the two is wrong (PixelSpacing takes precedence)")


def _magnification(ds: Any, notes: list[str]) -> float | None:
    """``EstimatedRadiographicMagnificationFactor`` when present and plausible (else a note)."""
    tag = "EstimatedRadiographicMagnificationFactor"
    if tag not in ds:
        return None
    try:
        m = float(ds[tag].value)
    except (TypeError, ValueError):
        m = float("nan")
    lo, hi = MAGNIFICATION_RANGE
    if not lo <= m <= hi:  # (NaN fails too)
        notes.append(f"DICOM {tag} {printable(str(ds[tag].value))[:40]!r} is outside "
                     f"[{lo:g}, {hi:g}]: ignored (ImagerPixelSpacing used as the detector's)")
        return None
    return m


def _widen_byte_luts(ds: Any) -> None:
    """Give an 8-bit Modality or VOI LUT to pydicom as a 16-bit one with the same entries.
    pydicom unpacks OW LUT Data as 16-bit words only, and fails on the legal one-byte-per-entry
    layout ("equivalent to 8 bits allocated": PS3.3 C.11.2.1.1); and it indexes an 8-bit VOI LUT
    with uint8, so entry 256 reads entry 0. The display is scaled by the LUT's output range, so
    the wider type shows the same image. Anything unexpected is left alone."""
    from pydicom.dataelem import DataElement

    for name in ("ModalityLUTSequence", "VOILUTSequence"):
        try:
            item = ds[name].value[0] if name in ds else None
            if item is None or "LUTData" not in item or "LUTDescriptor" not in item:
                continue
            desc, data = list(item.LUTDescriptor), item.LUTData
            entries = int(desc[0]) or 65536
            if len(desc) != 3 or int(desc[2]) != 8:
                continue
            if isinstance(data, bytes):  # OW: one byte per entry (one pad byte when odd),
                if len(data) in (entries, entries + 1):  # or one 16-bit word per entry
                    item["LUTData"] = DataElement(0x00283006, "US", list(data[:entries]))
                elif len(data) != 2 * entries:
                    continue  # _lut_problem names a short LUT
            item["LUTDescriptor"] = DataElement(0x00283002, item["LUTDescriptor"].VR,
                                                [desc[0], desc[1], 16])
        except Exception:  # noqa: BLE001, S112 - not this layout: pydicom and _lut_problem judge
            continue


def _lut_problem(ds: Any) -> str | None:
    """Why the first item of a Modality or VOI LUT Sequence cannot be applied, when its LUT
    Data is empty or shorter than its LUT Descriptor declares (pydicom fails on it with an
    ``int()`` or index error); None when it looks whole."""
    for name in ("ModalityLUTSequence", "VOILUTSequence"):
        try:
            seq = ds.get(name)
            if not seq:
                continue
            item = seq[0]
            desc = item.get("LUTDescriptor")
            entries = None
            if desc is not None and len(desc) == 3:
                entries = int(desc[0]) or 65536  # (0 means 2^16)
            data = item.get("LUTData")
            per_entry = 1 if desc is not None and len(desc) == 3 and int(desc[2]) == 8 else 2
            n = (0 if data is None else len(data) // per_entry if isinstance(data, bytes)  # OW
                 else len(np.ravel([data])))
        except Exception:  # noqa: BLE001 - a value pydicom cannot read: the caller's message
            continue
        what = f"DICOM {name} item 1: its LUT Data"
        declared = f" (its LUT Descriptor declares {entries} entries)" if entries else ""
        if n == 0:
            return f"{what} is empty{declared}: the LUT is incomplete, the file is broken"
        if entries is not None and n < entries:
            return (f"{what} holds {n} value{'s' * (n != 1)}, but its LUT Descriptor declares "
                    f"{entries} entries: the LUT is incomplete, the file is broken")
    return None


def _frame_bits_problem(ds: Any) -> str | None:
    """After a JPEG or JPEG-LS DICOM failed to decode: whether its first frame's sample
    precision contradicts BitsAllocated (``dicom_frames.jpeg_precision_problem``), else None."""
    from datamodules.dicom_frames import JPEG_SYNTAXES, jpeg_precision_problem

    try:
        syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "").strip()
        if syntax not in JPEG_SYNTAXES:
            return None
        from pydicom.encaps import generate_frames

        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        stored = ds.get("BitsStored")
        return jpeg_precision_problem(frame, int(ds.BitsAllocated),
                                      int(stored) if stored is not None else None)
    except Exception:  # noqa: BLE001 - no frame to look at: the decoder's message stands
        return None


def _display_image(
    ds: Any, arr: np.ndarray, bits: int, signed: bool, use_window: bool
) -> tuple[np.ndarray, float, float]:
    """Pixels through the modality LUT (and the window when ``use_window``), scaled to [0, 1]
    by the pipeline's output range over every storable value; with that range (lo, hi)."""
    values = _display_pipeline(ds, arr, use_window)
    if bits <= 16:  # output range of the pipeline over every storable value
        lo_s, hi_s = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        ramp = _display_pipeline(ds, np.arange(lo_s, hi_s + 1, dtype=arr.dtype), use_window)
        lo, hi = float(ramp.min()), float(ramp.max())
    else:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros_like(values), lo, hi
    if np.shares_memory(values, arr):  # the steps below work in place on the pipeline's output
        values = values.copy()
    values -= lo
    values /= hi - lo
    return np.clip(values, 0.0, 1.0, out=values), lo, hi


_PIPELINE_BLOCK = 1 << 22  # pixels per block: pydicom's LUT functions make several float64
# temporaries of their input (a 36 MP image peaked at +1.1 GB in one call)


def _display_pipeline(ds: Any, arr: np.ndarray, use_window: bool = True) -> np.ndarray:
    """``_pipeline_block`` over blocks of rows (both LUTs map each pixel on its own)."""
    if arr.ndim != 2 or arr.size <= _PIPELINE_BLOCK:
        return _pipeline_block(ds, arr, use_window)
    out = np.empty(arr.shape, np.float64)
    step = max(1, _PIPELINE_BLOCK // arr.shape[1])
    for top in range(0, arr.shape[0], step):
        out[top:top + step] = _pipeline_block(ds, arr[top:top + step], use_window)
    return out


def _pipeline_block(ds: Any, arr: np.ndarray, use_window: bool = True) -> np.ndarray:
    """Pixels through pydicom's modality LUT, then its VOI LUT or window when asked, as float64."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    out = apply_modality_lut(arr, ds)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if has_voi and use_window:
        out = apply_voi_lut(out, ds, index=0)
    return np.asarray(out, dtype=np.float64)


def _embedded_overlay(ds: Any, bits: int) -> bool:
    """Whether an overlay plane is stored in the pixel data's unused bits (retired, but old
    files do: ``OverlayBitPosition`` at or above ``BitsStored``)."""
    for group in range(0x6000, 0x6020, 2):  # the 16 overlay groups
        tag = group << 16 | 0x0102
        try:
            if tag in ds and int(ds[tag].value) >= bits:
                return True
        except (TypeError, ValueError):
            continue
    return False


def _clear_unused_bits(path: Path, ds: Any, arr: np.ndarray, bits: int,
                       notes: list[str]) -> np.ndarray:
    """Clear (or sign-extend) the bits above ``BitsStored`` as the standard prescribes and
    pydicom does, after checking that they are unused: when more than ``CONTRADICTED_SHARE``
    of the pixels set them (12-bit values shifted into the top bits, say), BitsStored is
    contradicted and clearing would garble the image: refused. A few such pixels get a note
    (none when an overlay plane lives there)."""
    alloc = 8 * arr.dtype.itemsize
    if not np.issubdtype(arr.dtype, np.integer) or not 0 < bits < alloc:
        return arr
    if not arr.dtype.isnative:  # Explicit VR Big Endian: pydicom gives ">u2"; a native view
        arr = arr.astype(arr.dtype.newbyteorder("="))  # of it would swap every value's bytes
    shift = alloc - bits
    unsigned = arr.view(np.dtype(f"u{arr.dtype.itemsize}"))
    high = unsigned >> bits
    unused = high != 0
    if arr.dtype.kind == "i":  # sign extension of a negative value is not a use
        extended = (high == (1 << shift) - 1) & (((unsigned >> (bits - 1)) & 1) == 1)
        unused &= ~extended
    n_bad = int(np.count_nonzero(unused))
    if n_bad and not _embedded_overlay(ds, bits):
        share = n_bad / arr.size
        high_bit = ds.get("HighBit", bits - 1)
        if share > CONTRADICTED_SHARE:
            raise ImageReadError(
                f"{path}: DICOM BitsStored {bits} (HighBit {high_bit}) is contradicted by the "
                f"pixel data: {100 * share:.0f} % of the pixels set higher bits (values up to "
                f"{int(unsigned.max())}), so reading {bits} bits would garble the image")
        notes.append(f"DICOM pixel data sets bits above BitsStored {bits} in {n_bad} pixels "
                     f"({100 * share:.2g} %): cleared, as the standard prescribes")
    out = np.left_shift(arr, shift)
    return np.right_shift(out, shift, out=out)


# the group of a dataset's first element, when the file starts with one (no preamble): file
# meta (0002) or identification (0008) elements, little or big endian
_DATASET_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x08")


def _check_dicom_prefix(path: Path) -> None:
    """Refuse, in words, a file read as DICOM (by its suffix) without the 128-byte preamble and
    "DICM" prefix of the DICOM file format: an old ACR-NEMA style dataset (it is not parsed by
    guessing its encoding: pydicom's ``force``), or not DICOM at all."""
    head = _head(path)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return
    if head[:2] in _DATASET_STARTS and len(head) >= 8:
        raise ImageReadError(
            f"{path}: a DICOM dataset without the DICOM file meta header (no 128-byte preamble "
            "and 'DICM' prefix: an old ACR-NEMA style file): not read, export it as a DICOM "
            "file")
    raise ImageReadError(f"{path}: not a DICOM file (no 'DICM' prefix at byte 128, and it "
                         "does not start with a DICOM data element)")


_BINARY_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "AT": 4, "UV": 8, "SV": 8}


def _check_element_lengths(path: Path, ds: Any) -> None:
    """Refuse a top-level element of a fixed-size binary type (US, UL, FL, ...) whose value is
    no whole number of values, from the raw length (nothing is converted: a 6 MB list of DS
    values took 7 s and 1.3 GB to convert), so that it is named as such and not met later
    inside the pixel decode."""
    from pydicom.datadict import dictionary_VR

    for tag in list(ds.keys()):
        try:
            raw = ds.get_item(tag)  # (pydicom may convert an element of unknown VR here)
        except Exception:  # noqa: BLE001, S112 - an unknown VR, a bad sequence: judged later
            continue
        value = getattr(raw, "value", None)
        if not isinstance(value, bytes | bytearray):
            continue  # converted already (a value of the right length)
        vr = getattr(raw, "VR", None)
        if not vr:
            try:
                vr = dictionary_VR(tag)
            except KeyError:  # a private tag without an explicit VR: its length means nothing
                continue
        size = _BINARY_SIZES.get(str(vr)[:2])
        if size and len(value) % size:
            raise ImageReadError(f"{path}: unreadable DICOM "
                                 f"({_wrong_length(tag.group, tag.element, len(value), size, vr)})")


def _wrong_length(group: int, element: int, n: int, size: int, vr: str | None) -> str:
    """An element whose value is no whole number of its type's values, in words."""
    from pydicom.datadict import keyword_for_tag

    keyword = keyword_for_tag((group << 16) | element)
    vr_words = f"VR {vr}, " if vr and vr != "None" else ""
    return (f"element ({group:04X},{element:04X}){' ' + keyword if keyword else ''} holds {n} "
            f"bytes, not a whole number of {size}-byte values ({vr_words}the file is damaged)")


def _dicom_pixels(ds: Any) -> tuple[np.ndarray, str | None]:
    """The dataset's pixel array, and a note when it took a second decoder. Data a native
    decoder reads (GDCM, Pillow) is decoded in a forked child (``forked_decode``): GDCM aborts
    the process on some malformed streams. When GDCM crashes and Pillow can read the syntax,
    Pillow tries (a stray byte before a JPEG marker aborts GDCM; libjpeg skips it)."""
    from pydicom.pixels import get_decoder

    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        plugins = tuple(get_decoder(syntax).available_plugins) if syntax is not None else ()
    except (NotImplementedError, ValueError, TypeError):  # no decoder: pydicom says so below
        plugins = ()
    if not set(plugins) - {"pydicom"}:
        return ds.pixel_array, None  # numpy (native data) or pydicom's own RLE: nothing to crash
    try:
        return decode_in_child(lambda: ds.pixel_array, _brief), None
    except DecoderCrashed as crash:
        if crash.signal_name is None or "pillow" not in plugins:  # hung or killed: no retry
            raise
        ds.pixel_array_options(correct_unused_bits=False, decoding_plugin="pillow")
        with warnings.catch_warnings(record=True) as said:  # Pillow's words count only if
            warnings.simplefilter("always")  # it decodes ("cannot identify image file ...")
            try:
                arr = decode_in_child(lambda: ds.pixel_array, _brief)
            except (DecoderCrashed, DecoderFailed):
                raise crash from None
        for w in said:
            warnings.warn(w.message, w.category, stacklevel=2)
        return arr, (f"the DICOM decoder GDCM crashed ({crash.signal_name}): the compressed "
                     "stream is malformed; Pillow decoded the pixel data")


BIG_ENDIAN_SYNTAX = "1.2.840.10008.1.2.2"
PIXEL_DATA_TAG = {"<": b"\xe0\x7f\x10\x00", ">": b"\x7f\xe0\x00\x10"}  # (7FE0,0010) per order


def _byte_order_lie(path: Path, meta: Any) -> str:
    """Why a DICOM shows no pixel data: "truncated?", or, when the file holds a pixel data
    element in the other byte order than its transfer syntax declares, that (red-team round 7:
    a little-endian file declared Explicit VR Big Endian was called truncated)."""
    import mmap

    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    declared, other = (">", "<") if syntax == BIG_ENDIAN_SYNTAX else ("<", ">")
    try:
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            found = data.find(PIXEL_DATA_TAG[other]) >= 0 and data.find(
                PIXEL_DATA_TAG[declared]) < 0
    except (OSError, ValueError):
        return "truncated?"
    if not found:
        return "truncated?"
    names = {"<": "little-endian", ">": "big-endian"}
    return (f"its transfer syntax {syntax or '(none)'} declares {names[declared]} data, but "
            f"its pixel data element is written {names[other]}: a broken file")


def _non_image_kind(ds: Any, sop: str) -> str | None:
    """The name of a known SOP class that holds no image (Key Object Selection, Presentation
    State, Structured Report, Encapsulated PDF, ...), from the file meta's or the dataset's
    SOP Class UID; None for image classes and unknown UIDs."""
    from pydicom.uid import UID

    for uid in (sop.strip(), str(ds.get("SOPClassUID", "") or "").strip()):
        name = UID(uid).name if uid else ""
        if name and name != uid and "Image" not in name:
            return printable(name.removesuffix(" Storage"))[:80]
    return None


def _header_text(ds: Any, keyword: str) -> str:
    """A short DICOM text attribute, upper case and stripped, at most 64 characters ('' when
    absent or unreadable: a header value never fails the read)."""
    try:
        value = ds.get(keyword, "")
        text = str(value if value is not None else "")
    except Exception:  # noqa: BLE001 (a malformed element is just not known)
        return ""
    return " ".join(text.split()).upper()[:64]


def _load_dicom(path: Path) -> LoadedImage:
    from pydicom.errors import BytesLengthException

    try:
        return _read_dicom(path)
    except BytesLengthException as err:  # pydicom converts an element when it is first read:
        raise ImageReadError(f"{path}: unreadable DICOM ({_brief(err)})") from err  # anywhere


def _read_dicom(path: Path) -> LoadedImage:
    import pydicom
    from pydicom.errors import BytesLengthException, InvalidDicomError

    _check_dicom_structure(path)
    _check_dicom_prefix(path)
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError,
            zlib.error) as err:  # (zlib: a Deflated transfer syntax whose stream is broken)
        raise ImageReadError(f"{path}: unreadable DICOM ({_brief(err)})") from err
    _check_element_lengths(path, ds)
    if "PixelData" not in ds:
        meta = getattr(ds, "file_meta", None)
        sop = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
        if "DirectoryRecordSequence" in ds or sop == "1.2.840.10008.1.3.10":
            raise ImageReadError(f"{path}: a DICOMDIR (an index of other files), not an image")
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise ImageReadError(f"{path}: DICOM float pixel data is not supported (a "
                                 "radiograph stores integers)")
        kind = _non_image_kind(ds, sop)
        if kind is not None:  # a PACS export holds these beside the images
            raise ImageReadError(f"{path}: a DICOM {kind} object, not an image")
        raise ImageReadError(f"{path}: DICOM has no pixel data ({_byte_order_lie(path, meta)})")
    notes: list[str] = []
    try:  # an Enhanced DICOM's rescale, window and spacing may live in functional groups only
        bad_group_spacing = lift_functional_groups(ds, notes)
    except FunctionalGroupError as err:
        raise ImageReadError(f"{path}: {err}") from err
    for tag in ("RescaleSlope", "RescaleIntercept"):
        if tag in ds and "ModalityLUTSequence" not in ds:
            try:
                value = float(ds[tag].value)
            except (TypeError, ValueError):
                value = float("nan")
            bad = not np.isfinite(value) or abs(value) > 1e12 or (tag == "RescaleSlope"
                                                                   and value == 0)
            if bad:
                raise ImageReadError(f"{path}: DICOM {tag} {printable(str(ds[tag].value))[:40]!r} "
                                     "cannot scale the pixels (the file is broken)")
    raw_pi = ds.get("PhotometricInterpretation")
    if raw_pi is not None and not isinstance(raw_pi, str):  # a MultiValue: pydicom's decoders
        values = printable("\\".join(str(v) for v in raw_pi))[:60]  # fail on it (a TypeError)
        raise ImageReadError(f"{path}: DICOM PhotometricInterpretation holds several values "
                             f"('{values}'): one expected")
    if isinstance(raw_pi, str) and raw_pi.strip().upper() in ("MONOCHROME1", "MONOCHROME2") \
            and raw_pi != raw_pi.strip().upper():  # "monochrome1": a writer's case slip
        ds.PhotometricInterpretation = raw_pi.strip().upper()
    ds.pixel_array_options(correct_unused_bits=False)  # _clear_unused_bits looks first
    try:
        arr, decoded_note = _dicom_pixels(ds)
    except DecoderCrashed as err:  # GDCM's abort, or a hang: the process lives on
        raise ImageReadError(f"{path}: cannot decode DICOM pixel data ({err})") from err
    except BytesLengthException:  # a nested header element, not the pixel data: named as
        raise  # such by _load_dicom
    except Exception as err:  # pydicom raises ValueError/AttributeError/... on bad pixel data
        problem = _frame_bits_problem(ds)
        if problem is not None:  # the cause, found in the frame: the decoder's words go
            raise _DiagnosedError(f"{path}: DICOM pixel data: {problem}") from err
        raise ImageReadError(f"{path}: cannot decode DICOM pixel data ({_brief(err)})") from err
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ImageReadError(f"{path}: multi-frame DICOM ({ds.NumberOfFrames} frames), expected 1")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageReadError(f"{path}: photometric interpretation {photometric} is not grayscale")
    if arr.ndim != 2:  # e.g. Columns smaller than the data: the rest is read as extra frames
        raise ImageReadError(f"{path}: pixel data of shape {arr.shape} is not one grayscale "
                             f"frame of Rows x Columns = {ds.get('Rows')} x {ds.get('Columns')}")
    bits = int(ds.get("BitsStored", 8 * arr.dtype.itemsize))
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    notes += [] if decoded_note is None else [decoded_note]
    arr = _clear_unused_bits(path, ds, arr, bits, notes)
    if signed and (wrapped := _wrap_note(arr, bits)):
        notes.append(wrapped)
    _first_window_only(ds, notes)
    _drop_unusable_voi_lut(ds, notes)
    _widen_byte_luts(ds)
    window, window_problem = _dicom_window(ds)
    if "VOILUTSequence" in ds:  # a VOI LUT sequence takes precedence over the window
        window_problem = None
    if window_problem is not None:
        notes.append(f"DICOM window ignored ({window_problem}): the stored value range is "
                     "shown instead")
    try:
        image, lo, hi = _display_image(ds, arr, bits, signed, window_problem is None)
        if window_problem is None and np.ptp(image) == 0:
            plain, lo_p, hi_p = _display_image(ds, arr, bits, signed, False)
            if np.ptp(plain) > 0:  # the window (or VOI LUT) maps every pixel to one value
                image, lo, hi, window = plain, lo_p, hi_p, None
                notes.append("DICOM window ignored (it shows every pixel at one level): the "
                             "stored value range is shown instead")
    except Exception as err:
        problem = _lut_problem(ds)
        if problem is not None:
            raise ImageReadError(f"{path}: {problem}") from err
        raise ImageReadError(f"{path}: cannot apply modality/VOI LUT ({_brief(err)})") from err
    lut = presentation_lut(ds)  # a Presentation LUT Sequence (MONOCHROME2 only)
    if isinstance(lut, str) or (lut is not None and photometric == "MONOCHROME1"):
        why = lut if isinstance(lut, str) else "on a MONOCHROME1 image"
        notes.append(f"DICOM Presentation LUT Sequence ignored ({why})")
        lut = None
    if photometric == "MONOCHROME1":  # in place: a 36 MP image is 288 MB a copy
        np.subtract(1.0, image, out=image)
    elif lut is not None:  # the viewer's last mapping, an inversion included (it stands for
        image = apply_presentation_lut(image, lut)  # PresentationLUTShape: they exclude each other)
        turn = " (decreasing: the image is shown inverted)" if lut[-1] < lut[0] else ""
        notes.append(f"DICOM Presentation LUT Sequence applied ({lut.size} entries){turn}")
    elif str(ds.get("PresentationLUTShape", "") or "").strip().upper() == "INVERSE":
        np.subtract(1.0, image, out=image)  # MONOCHROME2 shown inverted, as MONOCHROME1 is
        notes.append("DICOM PresentationLUTShape INVERSE on a MONOCHROME2 image: applied (the "
                     "image is inverted, as a viewer shows it)")
    pixel, bad_pixel = _spacing_tag(ds, "PixelSpacing")
    imager, bad_imager = _spacing_tag(ds, "ImagerPixelSpacing")
    magnification = _magnification(ds, notes) if imager is not None else None
    if pixel is not None and imager is not None and (odd := _spacings_disagree(pixel, imager)):
        notes.append(odd)
    invalid = [(t, r) for t, r in (("PixelSpacing", bad_pixel), ("ImagerPixelSpacing", bad_imager))
               if r is not None]  # fmt: skip
    invalid += [bad_group_spacing] if bad_group_spacing is not None else []
    meta = {
        "format": "dicom",
        "photometric": photometric,
        "bits_stored": bits,
        "window": window,
        "output_range": [lo, hi],
        # what the file says it shows (planning flags another modality or body part)
        "modality": _header_text(ds, "Modality"),
        "body_part": _header_text(ds, "BodyPartExamined"),
    }
    aspect = _dicom_aspect(ds, notes)
    loaded = LoadedImage(image.astype(np.float32, copy=False), bits, meta, pixel, imager,
                         magnification, invalid, lossy=_dicom_lossy(ds), notes=notes)
    return _set_aspect(loaded, aspect)
