"""image_io: tags a file declares are kept whatever its name says (rt6_io items 4, 5).

A. a pixel shape the file declares (PNG pHYs, TIFF X/YResolution, DICOM PixelAspectRatio) that is
   not square is the same review reason as a non-square spacing;
B. the reader is chosen by the content's magic bytes, not the suffix (EXIF orientation, sBIT,
   MinIsWhite and the lossy mark survive a wrong name), with a note;
C. an EXIF Orientation stored as LONG is applied;
D. JPEG-in-TIFF and lossy DICOM are marked lossy;
E. MONOCHROME2 + PresentationLUTShape INVERSE is inverted; a gray + alpha sBIT uses the gray's.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import tifffile
from dicom_files import write_dicom
from PIL import Image

from datamodules.image_io import ImageReadError, load_image
from geometry.pixel_spacing import resolve_pixel_spacing

Y, X = np.mgrid[0:48, 0:64]
PICTURE = np.clip(20 + 3 * X + (Y < 12) * 40, 0, 255).astype(np.uint8)  # no symmetry


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def _with_png_chunks(png: bytes, *chunks: bytes) -> bytes:
    """Ancillary chunks inserted right after IHDR (8 + 25 bytes)."""
    return png[:33] + b"".join(chunks) + png[33:]


def _png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def _jpeg(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    return buf.tobytes()


def _exif(orientation: int, typ: int = 3) -> bytes:
    """A little-endian TIFF block whose IFD0 holds only Orientation, as SHORT (3) or LONG (4)."""
    value = struct.pack("<HH", orientation, 0) if typ == 3 else struct.pack("<I", orientation)
    ifd = struct.pack("<H", 1) + struct.pack("<HHI", 274, typ, 1) + value
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


def _jpeg_with_exif(jpeg: bytes, orientation: int, typ: int = 3) -> bytes:
    body = b"Exif\x00\x00" + _exif(orientation, typ)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def _phys(x: int, y: int, unit: int = 1) -> bytes:
    return _chunk(b"pHYs", struct.pack(">IIB", x, y, unit))


def _rot6_stored(display: np.ndarray) -> np.ndarray:
    """The stored pixels of an image shown as ``display`` under orientation 6 (90 deg cw)."""
    return np.ascontiguousarray(np.rot90(display, 1))


# --- A: declared pixel shape ---------------------------------------------------------------


def _reasons(path: Path, spacing: float | None = 0.18) -> list[str]:
    loaded = load_image(path)
    return resolve_pixel_spacing(None, user=[spacing] if spacing else None, detect_sphere=False,
                                 **loaded.spacing_inputs()).reasons  # fmt: skip


def test_png_phys_non_square_is_a_review_reason_with_its_source(tmp_path):
    path = tmp_path / "phys.png"
    path.write_bytes(_with_png_chunks(_png(PICTURE), _phys(10000, 5000)))  # rows 2x as tall
    loaded = load_image(path)
    ratio, where = loaded.declared_aspect
    assert ratio == pytest.approx(2.0) and "pHYs" in where
    assert any("pHYs" in n and "non-square" in n for n in loaded.notes)
    assert loaded.spacing_mm is None  # a print resolution, never a spacing in mm
    reasons = _reasons(path)
    assert len(reasons) == 1 and "pixels are not square" in reasons[0]
    assert "pHYs" in reasons[0] and "2:1" in reasons[0]


@pytest.mark.parametrize("x, y, unit", [(11811, 11811, 1), (3, 3, 0), (1050, 1000, 1)])
def test_png_phys_square_or_within_tolerance_is_no_reason(tmp_path, x, y, unit):
    path = tmp_path / "sq.png"
    path.write_bytes(_with_png_chunks(_png(PICTURE), _phys(x, y, unit)))
    loaded = load_image(path)
    assert loaded.spacing_mm is None and loaded.notes == []
    assert _reasons(path) == []


def test_png_phys_unit_unknown_still_gives_its_ratio(tmp_path):
    path = tmp_path / "u.png"
    path.write_bytes(_with_png_chunks(_png(PICTURE), _phys(1, 2, unit=0)))  # pixels 1:2 (h:w)
    assert load_image(path).declared_aspect[0] == pytest.approx(0.5)
    assert any("not square" in r and "1:2" in r for r in _reasons(path))


def test_png_phys_ratio_follows_a_transposing_orientation(tmp_path):
    path = tmp_path / "t.png"
    path.write_bytes(_with_png_chunks(_png(_rot6_stored(PICTURE)), _phys(10000, 5000),
                                      _chunk(b"eXIf", _exif(6))))  # fmt: skip
    loaded = load_image(path)
    np.testing.assert_allclose(loaded.image, PICTURE / 255.0, atol=1e-6)
    assert loaded.declared_aspect[0] == pytest.approx(0.5)  # stored rows are displayed columns


def test_dicom_pixel_aspect_ratio_non_square_is_a_review_reason(tmp_path):
    path = tmp_path / "a.dcm"
    write_dicom(path, PICTURE.astype(np.uint16) * 16)
    ds = pydicom.dcmread(path)
    ds.PixelAspectRatio = [2, 1]  # vertical \ horizontal
    ds.save_as(path, enforce_file_format=True)
    loaded = load_image(path)
    assert loaded.declared_aspect[0] == pytest.approx(2.0)
    reasons = _reasons(path)
    assert len(reasons) == 1 and "not square" in reasons[0] and "PixelAspectRatio" in reasons[0]


def test_dicom_square_pixel_aspect_ratio_and_invalid_one(tmp_path):
    path = tmp_path / "a.dcm"
    write_dicom(path, PICTURE.astype(np.uint16) * 16, pixel_spacing=[0.18, 0.18])
    ds = pydicom.dcmread(path)
    ds.PixelAspectRatio = [1, 1]
    ds.save_as(path, enforce_file_format=True)
    assert _reasons(path, None) == []
    ds.PixelAspectRatio = [0, 1]
    ds.save_as(path, enforce_file_format=True)
    loaded = load_image(path)
    assert loaded.declared_aspect is None
    assert any("PixelAspectRatio" in n and "invalid" in n for n in loaded.notes)


def test_tiff_resolution_ratio_non_square_is_a_review_reason(tmp_path):
    path = tmp_path / "r.tif"
    tifffile.imwrite(path, PICTURE, resolution=(100, 50))  # 100 px/inch across, 50 down
    assert load_image(path).declared_aspect[0] == pytest.approx(2.0)
    assert any("not square" in r and "XResolution" in r for r in _reasons(path))
    tifffile.imwrite(path, PICTURE, resolution=(300, 300))
    assert _reasons(path) == []


def test_non_square_declared_aspect_flags_the_plan(tmp_path):
    """End to end at the plan's spacing step (``resolve_plan_spacing``, whose reasons become the
    plan's "spacing" review reasons): --spacing 0.18 on a 2:1 PNG, before: no reason at all."""
    from planning.plan import load_input, resolve_plan_spacing

    path = tmp_path / "knee.png"
    path.write_bytes(_with_png_chunks(_png(cv2.resize(PICTURE, (128, 96))), _phys(10000, 5000)))
    res = resolve_plan_spacing(load_input(path), path, None, [0.18], detect_sphere=False)
    assert res.spacing.as_tuple() == (0.18, 0.18)
    assert any(r.startswith("pixels are not square") and "pHYs" in r for r in res.reasons)


def test_declared_aspect_survives_a_json_round_trip_of_the_inputs():
    """dataset_io keeps the inputs as lists (meta["spacing_inputs"]) for ``make evaluate``."""
    res = resolve_pixel_spacing(None, user=[0.2], detect_sphere=False,
                                declared_aspect=[0.4, "PNG pHYs chunk"])  # fmt: skip
    assert len(res.reasons) == 1 and "1:2.5" in res.reasons[0]
    square = resolve_pixel_spacing(None, user=[0.2], detect_sphere=False, declared_aspect=1.05)
    assert square.reasons == []
    both = resolve_pixel_spacing(None, dicom_pixel=[0.18, 0.36], detect_sphere=False,
                                 declared_aspect=(2.0, "DICOM PixelAspectRatio 2\\1"))
    assert len(both.reasons) == 1  # one "not square" reason, the spacing's


# --- B: content, not suffix ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["photo.tif", "photo.TIFF", "photo.png"])
def test_jpeg_named_otherwise_keeps_orientation_and_lossy_mark(tmp_path, name):
    data = _jpeg_with_exif(_jpeg(_rot6_stored(PICTURE)), 6)
    (tmp_path / "photo.jpg").write_bytes(data)
    (tmp_path / name).write_bytes(data)
    ref, loaded = load_image(tmp_path / "photo.jpg"), load_image(tmp_path / name)
    assert loaded.image.shape == PICTURE.shape
    np.testing.assert_array_equal(loaded.image, ref.image)
    assert loaded.lossy
    assert any("JPEG" in n and "by its content" in n for n in loaded.notes)
    assert any("orientation tag (6" in n for n in loaded.notes)


@pytest.mark.parametrize("name", ["p.jpg", "p.tif"])
def test_png_with_exif_named_otherwise_is_oriented_not_lossy(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(_with_png_chunks(_png(_rot6_stored(PICTURE)), _chunk(b"eXIf", _exif(6))))
    loaded = load_image(path)
    np.testing.assert_allclose(loaded.image, PICTURE / 255.0, atol=1e-6)
    assert not loaded.lossy
    assert any("PNG image but its name ends in" in n for n in loaded.notes)


def test_min_is_white_tiff_named_jpg_is_not_planned_inverted(tmp_path):
    inv = (65535 - PICTURE.astype(np.uint16) * 257).astype(np.uint16)
    tifffile.imwrite(tmp_path / "m.jpg", inv, photometric="miniswhite")
    loaded = load_image(tmp_path / "m.jpg")
    np.testing.assert_allclose(loaded.image, PICTURE / 255.0, atol=1e-6)
    assert loaded.bit_depth == 16 and not loaded.lossy
    assert any("TIFF image" in n for n in loaded.notes)


def test_sbit_png_named_tif_reads_its_full_range(tmp_path):
    a12 = (PICTURE.astype(np.uint16) * 16 + 15).astype(np.uint16)  # 12-bit values, max 4095
    a12[0, 0] = 4095
    path = tmp_path / "s.tif"
    path.write_bytes(_with_png_chunks(_png(a12), _chunk(b"sBIT", b"\x0c")))
    loaded = load_image(path)
    assert loaded.bit_depth == 12
    np.testing.assert_allclose(loaded.image, a12 / 4095.0, atol=1e-6)


def test_sbit_png_whose_stored_values_happen_to_have_zero_low_bits_is_not_read_dark(tmp_path):
    """Red-team round 7: an 8-bit picture * 16 stored as 12-bit samples (max 4080, low 4 bits
    zero) was taken as scaled to 16 bits by the PNG spec and read 16x too dark, silently."""
    a12 = (PICTURE.astype(np.uint16) * 16).astype(np.uint16)
    path = tmp_path / "s.png"
    path.write_bytes(_with_png_chunks(_png(a12), _chunk(b"sBIT", b"\x0c")))
    loaded = load_image(path)
    assert loaded.bit_depth == 12
    np.testing.assert_allclose(loaded.image, a12 / 4095.0, atol=1e-6)
    scaled = (a12.astype(np.uint32) * 16).astype(np.uint16)  # as the spec writes 12 bits: kept
    path.write_bytes(_with_png_chunks(_png(scaled), _chunk(b"sBIT", b"\x0c")))
    np.testing.assert_allclose(load_image(path).image, scaled / 65535.0, atol=1e-6)


@pytest.mark.parametrize("encode, name, fmt, lossy", [
    (".webp", "w.tif", "WebP", True), (".bmp", "b.png", "BMP", False),
    (".pgm", "g.jpg", "PNM", False), (".jp2", "j.png", "JPEG 2000", True),
    (".hdr", "h.tif", "Radiance HDR", False), (".pfm", "f.png", "PFM", False)])
def test_another_format_behind_a_supported_suffix_is_read_with_a_note(tmp_path, encode, name,
                                                                      fmt, lossy):
    """Red-team round 7: OpenCV decoded these without a note (a lossy WebP named .tif as
    lossless)."""
    floats = encode in (".hdr", ".pfm")
    pixels = np.dstack([PICTURE] * 3).astype(np.float32) / 255.0 if floats else PICTURE
    ok, buf = cv2.imencode(encode, pixels, [cv2.IMWRITE_WEBP_QUALITY, 60] if encode == ".webp"
                           else [])  # (OpenCV's default WebP quality, 100, is lossless)
    assert ok
    path = tmp_path / name
    path.write_bytes(buf.tobytes())
    loaded = load_image(path)
    assert loaded.lossy is lossy
    assert any(n.startswith(f"the file holds a {fmt}") for n in loaded.notes), loaded.notes
    tol = 0.1 if lossy else 0.02  # (Radiance HDR keeps 8-bit mantissas)
    assert np.abs(loaded.image - PICTURE / 255.0).mean() < tol


def test_guards_follow_the_content_not_the_name(tmp_path):
    """A TIFF of 6 samples a pixel is refused as TIFF whatever it is called, and a PNG whose
    chunk runs past the file too."""
    tifffile.imwrite(tmp_path / "six.jpg", np.zeros((8, 8, 6), np.uint8), photometric="minisblack",
                     planarconfig="contig")  # fmt: skip
    with pytest.raises(ImageReadError, match="samples per pixel"):
        load_image(tmp_path / "six.jpg")
    png = bytearray(_png(PICTURE))
    idat = png.index(b"IDAT") - 4
    png[idat : idat + 4] = struct.pack(">I", 10**8)  # a chunk longer than the file
    (tmp_path / "bad.tif").write_bytes(bytes(png))
    with pytest.raises(ImageReadError):
        load_image(tmp_path / "bad.tif")


def test_unknown_content_still_goes_by_its_suffix(tmp_path):
    (tmp_path / "x.png").write_bytes(b"BM" + b"\x00" * 100)
    with pytest.raises(ImageReadError, match="not a PNG file"):
        load_image(tmp_path / "x.png")
    (tmp_path / "x.bmp").write_bytes(b"BM" + b"\x00" * 100)
    with pytest.raises(ImageReadError, match="unsupported image type"):
        load_image(tmp_path / "x.bmp")


# --- C: EXIF Orientation as LONG -------------------------------------------------------------


@pytest.mark.parametrize("orientation", [2, 6])
def test_exif_orientation_stored_as_long_is_applied(tmp_path, orientation):
    stored = _rot6_stored(PICTURE) if orientation == 6 else np.ascontiguousarray(PICTURE[:, ::-1])
    short, long_ = tmp_path / "s.jpg", tmp_path / "l.jpg"
    short.write_bytes(_jpeg_with_exif(_jpeg(stored), orientation, typ=3))
    long_.write_bytes(_jpeg_with_exif(_jpeg(stored), orientation, typ=4))
    a, b = load_image(short), load_image(long_)
    assert b.image.shape == PICTURE.shape
    np.testing.assert_array_equal(a.image, b.image)
    assert any(f"orientation tag ({orientation}" in n for n in b.notes)


def test_exif_orientation_outside_1_to_8_is_ignored(tmp_path):
    path = tmp_path / "o.jpg"
    path.write_bytes(_jpeg_with_exif(_jpeg(PICTURE), 70000, typ=4))
    loaded = load_image(path)
    assert loaded.image.shape == PICTURE.shape and loaded.notes == []


# --- D: lossy content ------------------------------------------------------------------------


def test_jpeg_compressed_tiff_is_marked_lossy(tmp_path):
    path = tmp_path / "j.tif"
    Image.fromarray(PICTURE).save(path, compression="jpeg", quality=30)
    assert load_image(path).lossy
    tifffile.imwrite(tmp_path / "plain.tif", PICTURE)
    assert not load_image(tmp_path / "plain.tif").lossy


def test_dicom_lossy_image_compression_01_is_marked_lossy(tmp_path):
    path = tmp_path / "l.dcm"
    write_dicom(path, PICTURE.astype(np.uint16) * 16)
    assert not load_image(path).lossy
    ds = pydicom.dcmread(path)
    ds.LossyImageCompression = "01"
    ds.save_as(path, enforce_file_format=True)
    assert load_image(path).lossy


def test_dicom_jpeg_baseline_transfer_syntax_is_marked_lossy(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    path = tmp_path / "jb.dcm"
    write_dicom(path, PICTURE.astype(np.uint16))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = encapsulate([_jpeg(PICTURE)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    try:
        loaded = load_image(path)
    except ImageReadError as err:  # no JPEG plugin for pydicom in this environment
        pytest.skip(str(err))
    assert loaded.lossy


# --- E: MONOCHROME2 + INVERSE, gray + alpha sBIT ---------------------------------------------


def test_monochrome2_with_inverse_presentation_lut_is_inverted(tmp_path):
    px = PICTURE.astype(np.uint16) * 16
    write_dicom(tmp_path / "plain.dcm", px)
    write_dicom(tmp_path / "inv.dcm", (4095 - px).astype(np.uint16))
    ds = pydicom.dcmread(tmp_path / "inv.dcm")
    ds.PresentationLUTShape = "INVERSE"
    ds.save_as(tmp_path / "inv.dcm", enforce_file_format=True)
    plain, inv = load_image(tmp_path / "plain.dcm"), load_image(tmp_path / "inv.dcm")
    np.testing.assert_allclose(inv.image, plain.image, atol=1e-6)
    assert any("PresentationLUTShape INVERSE" in n for n in inv.notes)


def _gray_alpha_png(gray: np.ndarray, alpha: np.ndarray) -> bytes:
    """A 16-bit gray + alpha PNG (colour type 4), written by hand (OpenCV writes no such PNG)."""
    h, w = gray.shape
    rows = np.dstack([gray, alpha]).astype(">u2").reshape(h, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"sBIT", bytes([12, 16]))
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def test_gray_alpha_png_sbit_uses_the_gray_channels_bits(tmp_path):
    g12 = (PICTURE.astype(np.uint16) * 16).astype(np.uint16)
    g12[0, 0] = 4095
    path = tmp_path / "ga.png"
    path.write_bytes(_gray_alpha_png(g12, np.full_like(g12, 65535)))
    loaded = load_image(path)
    assert loaded.bit_depth == 12
    np.testing.assert_allclose(loaded.image, g12 / 4095.0, atol=1e-6)


def test_tiff_full_image_in_a_subifd_is_read_not_its_thumbnail(tmp_path, monkeypatch):
    """A writer may put a thumbnail at the top level and the full image in a SubIFD: the
    117 x 143 thumbnail was planned (red-team round 6). SubIFD pages now count as pages, for
    the reader and the header's pixel limit alike."""
    rng = np.random.default_rng(0)
    full = rng.integers(0, 65535, (300, 240), dtype=np.uint16)
    path = tmp_path / "subifd.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(cv2.resize(full, (24, 30), interpolation=cv2.INTER_AREA), subifds=1)
        tw.write(full)
    loaded = load_image(path)
    assert loaded.image.shape == (300, 240)
    np.testing.assert_allclose(loaded.image, full / 65535.0, atol=1e-6)
    assert any("largest (page 2, 300x240)" in n for n in loaded.notes)
    monkeypatch.setenv("KNEEPLAN_MAX_PIXELS", str(300 * 240 - 1))  # the SubIFD is over it
    with pytest.raises(ImageReadError, match="limit|larger"):
        load_image(path)


def test_a_dicom_whose_syntax_lies_about_its_byte_order_is_named_so(tmp_path):
    """Red-team round 7: a little-endian file whose meta says Explicit VR Big Endian was
    "DICOM has no pixel data (truncated?)"."""
    path = tmp_path / "le.dcm"
    write_dicom(path, (PICTURE.astype(np.uint16) * 16).astype(np.uint16))
    assert load_image(path).image.shape == PICTURE.shape
    raw = path.read_bytes()
    little = pydicom.dcmread(path).file_meta.TransferSyntaxUID
    assert little == "1.2.840.10008.1.2.1"
    liar = tmp_path / "le_says_be.dcm"
    liar.write_bytes(raw.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.2\x00"))
    with pytest.raises(ImageReadError, match="declares big-endian data, but its pixel data "
                                             "element is written little-endian"):
        load_image(liar)
