"""image_io: PNG/TIFF bit depths, DICOM LUTs, MONOCHROME1, spacing tags, broken files, real CR."""

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

from datamodules.image_io import ImageReadError, load_image

RNG = np.random.default_rng(7)


def _add_sbit(png: Path, bits: int) -> None:
    """Insert an sBIT chunk (significant bits) right after IHDR."""
    data = png.read_bytes()
    ihdr_end = 8 + 8 + 13 + 4
    body = bytes([bits])
    chunk = struct.pack(">I", 1) + b"sBIT" + body + struct.pack(">I", zlib.crc32(b"sBIT" + body))
    png.write_bytes(data[:ihdr_end] + chunk + data[ihdr_end:])


def test_png_8_and_16_bit_divide_by_dtype_range(tmp_path):
    a8 = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
    a16 = RNG.integers(0, 65536, (20, 30), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "a8.png"), a8)
    cv2.imwrite(str(tmp_path / "a16.png"), a16)
    l8, l16 = load_image(tmp_path / "a8.png"), load_image(tmp_path / "a16.png")
    assert l8.image.dtype == np.float32 and l8.image.shape == (20, 30)
    np.testing.assert_allclose(l8.image, a8 / 255.0, atol=1e-7)
    np.testing.assert_allclose(l16.image, a16 / 65535.0, atol=1e-7)
    assert (l8.bit_depth, l16.bit_depth) == (8, 16)
    assert l8.spacing_mm is None and l8.spacing_source is None


def test_png_sbit_12_bit_uses_stored_depth(tmp_path):
    a = RNG.integers(0, 4096, (16, 16), dtype=np.uint16)
    a[0, 0] = 4095
    path = tmp_path / "a12.png"
    cv2.imwrite(str(path), a)
    _add_sbit(path, 12)
    loaded = load_image(path)
    assert loaded.bit_depth == 12
    np.testing.assert_allclose(loaded.image, a / 4095.0, atol=1e-7)
    assert loaded.image.max() == pytest.approx(1.0)


def test_colour_png_and_tiff_become_gray(tmp_path):
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red
    cv2.imwrite(str(tmp_path / "c.png"), rgb[..., ::-1])  # OpenCV writes BGR
    tifffile.imwrite(tmp_path / "c.tif", rgb)
    for name in ("c.png", "c.tif"):
        np.testing.assert_allclose(load_image(tmp_path / name).image, 0.299, atol=1e-6)


def test_tiff_16_bit(tmp_path):
    a = RNG.integers(0, 65536, (12, 9), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "t.tiff", a)
    loaded = load_image(tmp_path / "t.tiff")
    np.testing.assert_allclose(loaded.image, a / 65535.0, atol=1e-7)
    assert loaded.bit_depth == 16


def test_broken_files_raise_naming_the_file(tmp_path):
    a = RNG.integers(0, 65536, (50, 60), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "ok.png"), a)
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.png").write_bytes(b"this is not a png")
    tifffile.imwrite(tmp_path / "ok.tif", a)
    tdata = (tmp_path / "ok.tif").read_bytes()
    (tmp_path / "trunc.tif").write_bytes(tdata[: len(tdata) // 2])
    write_dicom(tmp_path / "ok.dcm", a[:, :].astype(np.uint16) >> 4, bits=12)
    ddata = (tmp_path / "ok.dcm").read_bytes()
    (tmp_path / "trunc.dcm").write_bytes(ddata[: len(ddata) - 1000])
    (tmp_path / "garbage.dcm").write_bytes(b"\x00" * 10)
    for name in ("trunc.png", "garbage.png", "trunc.tif", "trunc.dcm", "garbage.dcm",
                 "missing.png"):
        with pytest.raises(ImageReadError, match=name.replace(".", r"\.")):
            load_image(tmp_path / name)
    with pytest.raises(ImageReadError, match="truncated"):
        load_image(tmp_path / "trunc.png")


# --------------------------------------------------------------------------- DICOM (written here)
def _ramp(h: int = 8, w: int = 16, top: int = 4095) -> np.ndarray:
    return np.linspace(0, top, h * w).round().astype(np.uint16).reshape(h, w)


def test_dicom_no_lut_divides_by_stored_range_and_keeps_orientation(tmp_path):
    px = _ramp()
    write_dicom(tmp_path / "a.dcm", px, bits=12)
    loaded = load_image(tmp_path / "a.dcm")
    np.testing.assert_allclose(loaded.image, px / 4095.0, atol=1e-6)
    assert loaded.bit_depth == 12


def test_dicom_monochrome1_is_inverted(tmp_path):
    px = _ramp()
    write_dicom(tmp_path / "m2.dcm", px, photometric="MONOCHROME2", window=(2048, 4096))
    write_dicom(tmp_path / "m1.dcm", px, photometric="MONOCHROME1", window=(2048, 4096))
    m2, m1 = load_image(tmp_path / "m2.dcm").image, load_image(tmp_path / "m1.dcm").image
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    # MONOCHROME1: the lowest stored value is displayed white (bright = bone)
    assert m1[0, 0] == pytest.approx(1.0) and m1[-1, -1] == pytest.approx(0.0)


def _dicom_linear_window(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 'LINEAR' window, output in [0, 1] (independent of pydicom)."""
    y = (x - (c - 0.5)) / (w - 1) + 0.5
    y[x <= c - 0.5 - (w - 1) / 2] = 0.0
    y[x > c - 0.5 + (w - 1) / 2] = 1.0
    return y


def test_dicom_window_applied_by_hand_formula(tmp_path):
    px = np.array([[0, 500, 799, 800, 1000, 1100, 1200, 4095]], dtype=np.uint16)
    c, w = 1000.0, 401.0
    write_dicom(tmp_path / "w.dcm", px, window=(c, w))
    loaded = load_image(tmp_path / "w.dcm")
    expected = _dicom_linear_window(px.astype(float), c, w)
    np.testing.assert_allclose(loaded.image, expected, atol=1e-6)
    assert loaded.meta["window"] == [c, w]


def test_dicom_modality_lut_before_window(tmp_path):
    """Window is in rescaled units: slope 2, intercept -1000 puts stored 500 at value 0."""
    px = np.array([[0, 250, 500, 750, 1000, 4095]], dtype=np.uint16)
    slope, intercept, c, w = 2.0, -1000.0, 0.0, 1001.0
    write_dicom(tmp_path / "r.dcm", px, window=(c, w), rescale=(slope, intercept))
    loaded = load_image(tmp_path / "r.dcm")
    expected = _dicom_linear_window(px * slope + intercept, c, w)
    np.testing.assert_allclose(loaded.image, expected, atol=1e-6)
    assert loaded.image[0, 2] == pytest.approx(0.5 + 0.5 / 1000, abs=1e-6)


@pytest.mark.parametrize(
    ("pixel", "imager", "expected", "source"),
    [
        ([0.15, 0.16], [0.2, 0.21], (0.15, 0.16), "PixelSpacing"),
        (None, [0.2, 0.21], (0.2, 0.21), "ImagerPixelSpacing"),
        ([0.0, 0.0], [0.2, 0.21], (0.2, 0.21), "ImagerPixelSpacing"),  # zero = not calibrated
        (None, None, None, None),
    ],
)
def test_dicom_spacing_tags(tmp_path, pixel, imager, expected, source):
    write_dicom(tmp_path / "s.dcm", _ramp(), pixel_spacing=pixel, imager_spacing=imager)
    loaded = load_image(tmp_path / "s.dcm")
    assert loaded.spacing_source == source
    if expected is None:
        assert loaded.spacing_mm is None
    else:
        np.testing.assert_allclose(loaded.spacing_mm, expected)


def test_imager_spacing_is_taken_to_the_object_plane_by_the_stated_magnification(tmp_path):
    """ImagerPixelSpacing 0.1 with EstimatedRadiographicMagnificationFactor 1.25: the file says
    the patient's pixels are 0.08 mm (mm were 25 % too large); PixelSpacing still comes first,
    and an implausible factor is ignored with a note."""
    write_dicom(tmp_path / "m.dcm", _ramp(), imager_spacing=[0.1, 0.1], magnification=1.25)
    loaded = load_image(tmp_path / "m.dcm")
    np.testing.assert_allclose(loaded.spacing_mm, (0.08, 0.08))
    assert loaded.spacing_source == "ImagerPixelSpacing" and not loaded.notes
    from geometry.pixel_spacing import resolve_pixel_spacing

    res = resolve_pixel_spacing(None, detect_sphere=False, **loaded.spacing_inputs())
    assert "EstimatedRadiographicMagnificationFactor 1.25" in res.spacing.note
    write_dicom(tmp_path / "p.dcm", _ramp(), pixel_spacing=[0.09, 0.09], imager_spacing=[0.1, 0.1],
                magnification=1.25)
    np.testing.assert_allclose(load_image(tmp_path / "p.dcm").spacing_mm, (0.09, 0.09))
    for bad in ("5.0", "0.5"):
        write_dicom(tmp_path / "b.dcm", _ramp(), imager_spacing=[0.1, 0.1], magnification=bad)
        loaded = load_image(tmp_path / "b.dcm")
        np.testing.assert_allclose(loaded.spacing_mm, (0.1, 0.1))
        assert len(loaded.notes) == 1 and "outside [1, 2]: ignored" in loaded.notes[0]


# --------------------------------------------------------------------------- real CR (pydicom-data)
def _real(name: str) -> Path:
    data_store = pytest.importorskip("data_store")
    path = Path(data_store.__file__).parent / "data" / name
    if not path.is_file():
        pytest.skip(f"{name} not in pydicom-data")
    return path


def _tag_spacing(ds) -> tuple[tuple[float, float] | None, str | None]:
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        if tag in ds:
            vals = tuple(float(v) for v in ds[tag].value)
            if len(vals) == 2 and min(vals) > 0:
                return vals, tag
    return None, None


@pytest.mark.parametrize("name", ["RG1_UNCI.dcm", "RG3_UNCI.dcm"])
def test_real_computed_radiography(name):
    path = _real(name)
    ds = pydicom.dcmread(path)
    raw = ds.pixel_array.astype(np.float64)
    loaded = load_image(path)
    img = loaded.image
    # orientation: same shape, and pixel by pixel the image is a non-increasing function of the
    # raw value (MONOCHROME1: low = white); a flipped copy breaks that order almost everywhere
    assert img.shape == raw.shape
    assert ds.PhotometricInterpretation == "MONOCHROME1"

    def order_violations(raw_values: np.ndarray) -> float:
        order = np.argsort(raw_values.ravel(), kind="stable")
        return float(np.mean(np.diff(img.ravel()[order].astype(np.float64)) > 1e-6))

    assert order_violations(raw) == 0.0
    for moved in (raw[::-1], raw[:, ::-1]):
        assert order_violations(moved) > 0.05
    # bit depth: the stored bits are read, values lie in [0, 1] and use the range
    assert loaded.bit_depth == int(ds.BitsStored)
    assert img.dtype == np.float32 and img.min() >= 0.0 and img.max() <= 1.0
    lo, hi = np.percentile(img, [1, 99])
    assert hi - lo > 0.5
    # spacing: whatever the tags say (RG1's PixelSpacing is 0.000 = unknown; RG3 has none)
    spacing, tag = _tag_spacing(ds)
    assert loaded.spacing_source == tag
    if spacing is None:
        assert loaded.spacing_mm is None
    else:
        np.testing.assert_allclose(loaded.spacing_mm, spacing)


@pytest.mark.parametrize("block", [97, 1 << 22])
def test_real_rg3_matches_hand_windowing(monkeypatch, block):
    """RG3 (10-bit, window 550/1024): our image equals the DICOM linear window by hand, inverted,
    normalised by the window's output over the storable values 0..1023. The display pipeline
    runs over blocks of rows (pydicom's LUT functions make several float64 copies of their
    input): blocks of 97 pixels (one row at a time, RG3's rows are wider) and one block."""
    from datamodules import image_io

    monkeypatch.setattr(image_io, "_PIPELINE_BLOCK", block)
    path = _real("RG3_UNCI.dcm")
    ds = pydicom.dcmread(path)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    y = _dicom_linear_window(ds.pixel_array.astype(np.float64), c, w)
    ramp = _dicom_linear_window(np.arange(2 ** int(ds.BitsStored), dtype=np.float64), c, w)
    expected = 1.0 - (y - ramp.min()) / (ramp.max() - ramp.min())
    np.testing.assert_allclose(load_image(path).image, expected, atol=2e-3)


def test_dicom_rescale_window_monochrome1_by_row_blocks(tmp_path, monkeypatch):
    """Slope, intercept, window and MONOCHROME1 through 3-row blocks: the hand formula."""
    from datamodules import image_io

    rng = np.random.default_rng(5)
    px = rng.integers(0, 4096, (20, 7), dtype=np.uint16)
    write_dicom(tmp_path / "m.dcm", px, photometric="MONOCHROME1", window=(900.0, 1500.0),
                rescale=(0.5, -100.0))
    monkeypatch.setattr(image_io, "_PIPELINE_BLOCK", 21)
    y = _dicom_linear_window(px * 0.5 - 100.0, 900.0, 1500.0)
    ramp = _dicom_linear_window(np.arange(4096) * 0.5 - 100.0, 900.0, 1500.0)
    expected = 1.0 - (y - ramp.min()) / (ramp.max() - ramp.min())
    np.testing.assert_allclose(load_image(tmp_path / "m.dcm").image, expected, atol=1e-6)


@pytest.mark.parametrize("window, why", [((100.0, 0.0), "centre 100, width 0"),
                                         ("nan", "centre nan, width nan")])  # fmt: skip
def test_broken_dicom_window_is_ignored_with_a_note(tmp_path, window, why):
    """A window that cannot be applied (width < 1, NaN) is not a reason to refuse the image, nor
    to show it blank: the stored 12-bit range is used, and the plan says so."""
    px = (np.arange(60 * 50).reshape(60, 50) % 4096).astype(np.uint16)
    path = tmp_path / "w.dcm"
    if window == "nan":
        write_dicom(path, px, bits=12, window=(777, 778))
        path.write_bytes(path.read_bytes().replace(b"777", b"nan").replace(b"778", b"nan"))
    else:
        write_dicom(path, px, bits=12, window=window)
    loaded = load_image(path)
    np.testing.assert_allclose(loaded.image, px / 4095.0, atol=1e-6)  # by hand: stored range
    # "nan" parses as NaN or stays text, by pydicom's validation mode: either is a broken window
    whys = [why, "its values are not numbers"] if window == "nan" else [why]
    assert loaded.notes in [[f"DICOM window ignored ({w}): the stored value range is shown "
                             "instead"] for w in whys]  # fmt: skip
    assert load_image(_dicom_without_window(tmp_path, px)).notes == []
    from planning.plan import input_warnings

    assert loaded.notes[0] in input_warnings(loaded)


def _dicom_without_window(tmp_path, px):
    path = tmp_path / "plain.dcm"
    write_dicom(path, px, bits=12)
    return path


def test_exotic_pixel_types(tmp_path):
    import warnings

    import tifffile

    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "c.tif", (rng.random((40, 40)) + 1j).astype(np.complex64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning on the way to the error
        with pytest.raises(ImageReadError) as err:
            load_image(tmp_path / "c.tif")
    assert str(err.value) == f"{tmp_path / 'c.tif'}: unsupported pixel type complex64"
    # 64-bit integers: no detector stores that many bits; the data's own range is used
    big = rng.integers(-(2**40), 2**40, (40, 40))
    tifffile.imwrite(tmp_path / "i.tif", big)
    want = (big - big.min()) / (big.max() - big.min())
    np.testing.assert_allclose(load_image(tmp_path / "i.tif").image, want, atol=1e-6)


@pytest.mark.parametrize("kind", ["rgb16_png", "rgba8_png", "rgb16_tif", "i32_narrow_tif",
                                  "f32_wide_tif", "f32_extreme_tif"])
def test_gray_conversion_matches_float64_numpy(tmp_path, kind):
    """The reader works in float32 where that holds every stored value (a 36 MP image peaked at
    ~0.9 GB in float64): its result must equal the float64 formula to float32 precision, and
    32-bit integers with a narrow range far from 0 (float32 cannot hold them) must keep it."""
    import tifffile

    rng = np.random.default_rng(3)
    if kind == "rgb16_png":
        rgb = rng.integers(0, 65536, (30, 41, 3), dtype=np.uint16)
        cv2.imwrite(str(tmp_path / "a.png"), rgb[..., ::-1])
        want = rgb @ np.array([0.299, 0.587, 0.114]) / 65535
    elif kind == "rgba8_png":
        rgba = rng.integers(0, 256, (30, 41, 4), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / "a.png"), rgba[..., [2, 1, 0, 3]])
        want = rgba[..., :3] @ np.array([0.299, 0.587, 0.114]) / 255
    elif kind == "rgb16_tif":
        rgb = rng.integers(0, 65536, (30, 41, 3), dtype=np.uint16)
        tifffile.imwrite(tmp_path / "a.tif", rgb, photometric="rgb")
        want = rgb @ np.array([0.299, 0.587, 0.114]) / 65535
    elif kind == "i32_narrow_tif":
        x = rng.integers(2_000_000_000, 2_000_000_100, (30, 41), dtype=np.int32)
        tifffile.imwrite(tmp_path / "a.tif", x)
        want = (x - x.min()) / (x.max() - x.min())
    elif kind == "f32_extreme_tif":  # red-team round 8: NaN from a float32 overflow
        x = np.where(np.arange(41) < 20, -3e38, 3e38).astype(np.float32)[None].repeat(30, 0)
        x[:, 20] = 0.0
        tifffile.imwrite(tmp_path / "a.tif", x)
        lo, hi = np.percentile(x[::2, ::2].astype(np.float64), [0.1, 99.9])
        want = np.clip((x.astype(np.float64) - lo) / (hi - lo), 0, 1)
    else:
        x = (rng.random((30, 41)) * 5000 - 30).astype(np.float32)
        tifffile.imwrite(tmp_path / "a.tif", x)
        lo, hi = np.percentile(x[::2, ::2].astype(np.float64), [0.1, 99.9])
        want = np.clip((x - lo) / (hi - lo), 0, 1)
    (path,) = tmp_path.glob("a.*")
    got = load_image(path).image
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-7)
    assert len(np.unique(got)) == len(np.unique(want))  # no two stored levels merged


def test_multi_line_decoder_messages_become_one_line(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    path = tmp_path / "j.dcm"
    write_dicom(path, np.zeros((40, 40), np.uint16))
    import pydicom

    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 100])  # a broken J2K stream
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: cannot decode DICOM pixel data")


# --- what decoders print: found by fuzzing PNG, TIFF, JPEG and DICOM files (one line each) ---


def _gradient(h: int = 96, w: int = 120) -> np.ndarray:
    return (np.add.outer(np.arange(h), np.arange(w)) * (65535 / (h + w))).astype(np.uint16)


def test_png_crc_error_is_one_line_naming_libpng_and_prints_nothing(tmp_path, capfd):
    cv2.imwrite(str(tmp_path / "ok.png"), _gradient())
    data = bytearray((tmp_path / "ok.png").read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 20] ^= 0xFF  # damage the compressed pixels: the chunk's CRC no longer matches
    bad = tmp_path / "crc.png"
    bad.write_bytes(bytes(data))
    with pytest.raises(ImageReadError) as err:
        load_image(bad)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and "libpng error" in msg, msg
    out, printed = capfd.readouterr()
    assert printed == "" and out == ""  # libpng wrote to fd 2 before: now it is in the message


def test_damaged_tiff_logs_nothing(tmp_path, capfd):
    tifffile.imwrite(tmp_path / "ok.tif", _gradient())
    data = bytearray((tmp_path / "ok.tif").read_bytes())
    data[4:8] = struct.pack("<I", len(data) + 1000)  # first-page offset beyond the file
    bad = tmp_path / "offset.tif"
    bad.write_bytes(bytes(data))
    with pytest.raises(ImageReadError) as err:
        load_image(bad)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)
    assert capfd.readouterr().err == ""  # tifffile logged "invalid offset to first page" before


def test_corrupt_but_decodable_jpeg_is_planned_with_a_note(tmp_path, capfd):
    cv2.imwrite(str(tmp_path / "ok.jpg"), (_gradient() >> 8).astype(np.uint8))
    data = (tmp_path / "ok.jpg").read_bytes()
    bad = tmp_path / "extra.jpg"
    bad.write_bytes(data[:-2] + b"\x00" * 40 + data[-2:])  # junk before the end marker
    loaded = load_image(bad)
    assert loaded.image.shape == (96, 120)
    assert any("Corrupt JPEG data" in n for n in loaded.notes), loaded.notes
    assert capfd.readouterr().err == ""


def test_lzw_tiff_is_read_without_imagecodecs(tmp_path, monkeypatch):
    a = _gradient()
    path = tmp_path / "lzw.tif"
    assert cv2.imwrite(str(path), a, [cv2.IMWRITE_TIFF_COMPRESSION, 5])  # LZW, as PACS exports

    def no_codec(*args, **kwargs):  # what tifffile does without the optional imagecodecs
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile, "imread", no_codec)
    loaded = load_image(path)
    np.testing.assert_allclose(loaded.image, a / 65535.0, atol=1e-6)


def test_decoder_messages_gathers_warnings_logs_and_raw_stderr(capfd):
    import logging
    import os
    import warnings

    from datamodules.decoder_messages import brief, decoder_messages

    with decoder_messages() as said:
        warnings.warn("Invalid value for VR UI: '1.2|3'", UserWarning, stacklevel=1)  # pydicom
        logging.getLogger("tifffile").warning("invalid offset to first page")  # tifffile
        os.write(2, b"libpng error: IDAT: CRC error\n")  # a C library, below Python
    assert said == ["invalid offset to first page", "Invalid value for VR UI: '1.2|3'",
                    "libpng error: IDAT: CRC error"]  # fmt: skip
    assert brief(said) == "invalid offset to first page" and brief([]) == ""
    assert capfd.readouterr().err == ""
    os.write(2, b"after\n")  # descriptor 2 is restored
    assert capfd.readouterr().err == "after\n"


@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm",
                                  "MR_small_jpeg_ls_lossless.dcm"])  # fmt: skip
def test_compressed_dicom_as_pacs_exports_it(name):
    """JPEG Lossless (process 14, the usual CR/DX export) and JPEG-LS decode (python-gdcm)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    assert path, f"{name} is missing from pydicom / pydicom-data"
    ds = pydicom.dcmread(path)
    assert "Lossless" in ds.file_meta.TransferSyntaxUID.name
    loaded = load_image(path)
    assert loaded.image.shape == ds.pixel_array.shape[-2:]
    assert loaded.image.dtype == np.float32 and float(loaded.image.std()) > 0  # not blank


def test_a_window_that_blanks_the_image_is_ignored_with_a_note(tmp_path):
    px = _gradient() >> 4  # 12-bit
    plain, off = tmp_path / "plain.dcm", tmp_path / "off.dcm"
    write_dicom(plain, px, bits=12)
    write_dicom(off, px, bits=12, window=(90000.0, 10.0))  # far above every stored value
    a, b = load_image(plain), load_image(off)
    assert float(b.image.std()) > 0.1 and any("window ignored" in n for n in b.notes), b.notes
    np.testing.assert_allclose(b.image, a.image)  # as if the file had no window
    assert not a.notes


def test_pixel_data_that_does_not_fit_rows_and_columns_is_one_line(tmp_path):
    path = tmp_path / "cols.dcm"
    write_dicom(path, _gradient() >> 4, bits=12)
    ds = pydicom.dcmread(path)
    ds.Columns = 30  # the stored bytes now read as several frames of 96 x 30
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "not one grayscale frame" in msg, msg


def _bar() -> np.ndarray:
    """Truth for the reader tests: a bright 'bone' bar on the left of a darker background."""
    y, x = np.mgrid[0:60, 0:40]
    return (0.2 + 0.6 * (x < 12) + 0.2 * y / 60).clip(0, 1)


def _png_with_sbit(path: Path, arr: np.ndarray, sbit: bytes) -> None:
    """Write ``arr`` as PNG and insert an sBIT chunk after IHDR."""
    import zlib

    ok, buf = cv2.imencode(".png", arr)
    data = buf.tobytes()
    chunk = struct.pack(">I", len(sbit)) + b"sBIT" + sbit
    chunk += struct.pack(">I", zlib.crc32(b"sBIT" + sbit) & 0xFFFFFFFF)
    path.write_bytes(data[:33] + chunk + data[33:])  # 8-byte signature + 25-byte IHDR


def test_tiff_photometric_pages_and_planes(tmp_path):
    """MinIsWhite is inverted (as DICOM MONOCHROME1), a palette is applied, the largest page
    is read (a thumbnail may come first; a note says so), planes-first RGB is transposed, and a
    float image with one stray pixel is stretched by robust percentiles (min-max made it white)."""
    import tifffile

    truth = _bar()
    u16 = np.round(truth * 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "white.tif", 65535 - u16, photometric="miniswhite")
    ramp = np.linspace(65535, 0, 256).astype(np.uint16)  # an inverting grey palette
    idx = np.round((1 - truth) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "pal.tif", idx, photometric="palette",
                     colormap=np.stack([ramp, ramp, ramp]))
    with tifffile.TiffWriter(tmp_path / "thumb.tif") as tw:
        tw.write(u16[::6, ::6])
        tw.write(u16)
    tifffile.imwrite(tmp_path / "planar.tif", np.stack([u16] * 3), photometric="rgb",
                     planarconfig="separate")
    odd = truth.astype(np.float32) * 3.0
    odd[5, 5] = -1e30
    tifffile.imwrite(tmp_path / "float.tif", odd)
    for name, atol in (("white", 1e-4), ("pal", 0.01), ("thumb", 1e-4), ("planar", 1e-4)):
        loaded = load_image(tmp_path / f"{name}.tif")
        np.testing.assert_allclose(loaded.image, truth, atol=atol, err_msg=name)
    assert load_image(tmp_path / "thumb.tif").notes == [
        "the TIFF holds 2 pages: the largest (page 2, 60x40) was read"]
    img = load_image(tmp_path / "float.tif").image
    assert img[:, :10].mean() > 0.8 and img[:, -10:].mean() < 0.4  # bone bright, not all white


def test_png_sbit_that_cannot_describe_the_samples(tmp_path):
    """sBIT of a palette image (it describes the palette), an sBIT above the bit depth (libpng
    ignores it), and 16-bit samples scaled to the full range as the PNG spec says (sBIT 12,
    values up to 65535): each read by the full depth, not divided by 2**sbit - 1 and clipped."""
    truth = _bar()
    v12 = np.round(truth * 4095).astype(np.uint16)
    u8 = np.round(truth * 255).astype(np.uint8)
    _png_with_sbit(tmp_path / "replicated.png", (v12 << 4) | (v12 >> 8), b"\x0c")  # the spec's
    _png_with_sbit(tmp_path / "shifted.png", v12 << 4, b"\x0c")  # left shift, low bits zero
    _png_with_sbit(tmp_path / "over.png", u8, b"\x10")
    for name, atol in (("replicated", 5e-4), ("shifted", 5e-4), ("over", 3e-3)):
        np.testing.assert_allclose(load_image(tmp_path / f"{name}.png").image, truth, atol=atol)
    stray = v12.copy()
    stray[0, 0] = 65535  # unscaled 12-bit data with one burnt-in marker pixel: still 12-bit
    _png_with_sbit(tmp_path / "stray.png", stray, b"\x0c")
    img = load_image(tmp_path / "stray.png").image
    np.testing.assert_allclose(img.ravel()[1:], truth.ravel()[1:], atol=2e-4)
    low = np.round(truth * 4095).astype(np.uint16)  # unscaled 12-bit data: sBIT still honoured
    _png_with_sbit(tmp_path / "low.png", low, b"\x0c")
    np.testing.assert_allclose(load_image(tmp_path / "low.png").image, truth, atol=2e-4)


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """A JPEG with an APP1 Exif segment whose IFD0 holds only Orientation (tag 274)."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 274, 3, 1, orientation, 0)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    body = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_opencv_displays_it(tmp_path, orientation):
    """A phone photo of a light box stores the sensor's pixels plus an orientation tag: it is
    read as displayed, exactly as OpenCV's own EXIF handling (IMREAD_GRAYSCALE) shows it."""
    y, x = np.mgrid[0:40, 0:60]
    img = np.clip(30 + 3 * x + (y < 10) * 60, 0, 255).astype(np.uint8)  # no symmetry
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 100])
    path = tmp_path / "photo.jpg"
    path.write_bytes(_with_exif_orientation(buf.tobytes(), orientation))
    ref = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_GRAYSCALE) / 255.0
    loaded = load_image(path)
    np.testing.assert_allclose(loaded.image, ref, atol=1.5 / 255)
    assert (len(loaded.notes) == 1) == (orientation != 1)
    assert loaded.lossy


def test_dicom_without_integer_pixels_says_what_it_is(tmp_path):
    """A DICOMDIR (an index) and float pixel data were both reported as 'truncated?'."""
    import pydicom

    write_dicom(tmp_path / "f.dcm", _ramp())
    ds = pydicom.dcmread(tmp_path / "f.dcm")
    del ds.PixelData
    ds.FloatPixelData = np.zeros(ds.Rows * ds.Columns, np.float32).tobytes()
    ds.save_as(tmp_path / "f.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match="float pixel data is not supported"):
        load_image(tmp_path / "f.dcm")
    del ds.FloatPixelData
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.save_as(tmp_path / "d.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match="a DICOMDIR"):
        load_image(tmp_path / "d.dcm")


@pytest.mark.parametrize("slope", ["0", "NaN", "1e308"])
def test_dicom_rescale_that_cannot_scale(tmp_path, slope):
    """A zero, NaN or absurd RescaleSlope was reported as 'blank' or 'NaN values'."""
    import pydicom

    write_dicom(tmp_path / "r.dcm", _ramp(), rescale=(1.0, 0.0))
    ds = pydicom.dcmread(tmp_path / "r.dcm")
    ds.RescaleSlope = slope
    ds.save_as(tmp_path / "r.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match="DICOM RescaleSlope .* cannot scale the pixels"):
        load_image(tmp_path / "r.dcm")


def test_dataset_images_with_an_orientation_tag_are_named_by_the_validator(tmp_path):
    """A dataset image is read as displayed; its masks and points must be in that frame, so
    the validator says when a tag turned the image (a mask PNG's own eXIf tag is applied too)."""
    import tifffile

    from datamodules.dataset_io import read_mask, write_sample
    from datamodules.phantoms import PhantomConfig, generate_phantom
    from datamodules.validate import validate_dataset

    sample = generate_phantom(5, PhantomConfig(min_side=120, max_side=160).clean())
    write_sample(tmp_path, sample)
    png = tmp_path / "images" / f"{sample.id}.png"
    stored = np.round(sample.image[::-1, ::-1] * 65535).astype(np.uint16)  # stored turned
    tifffile.imwrite(png.with_suffix(".tif"), stored, extratags=[(274, "H", 1, 3, True)])
    png.unlink()
    ann = tmp_path / "annotations" / f"{sample.id}.json"
    ann.write_text(ann.read_text().replace(png.name, png.with_suffix(".tif").name))
    np.testing.assert_allclose(load_image(png.with_suffix(".tif")).image, sample.image,
                               atol=1e-4)
    report = validate_dataset(tmp_path)
    assert report.ok and any("orientation tag (3: rotated 180 deg)" in w.message
                             and "displayed frame" in w.message for w in report.warnings)
    mask = (sample.masks[0] > 0).astype(np.uint8) * 255
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(mask[::-1, ::-1]))
    data = buf.tobytes()
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 274, 3, 1, 3, 0)
    exif = b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    import zlib

    chunk = struct.pack(">I", len(exif)) + b"eXIf" + exif
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + exif) & 0xFFFFFFFF)
    path = tmp_path / "m.png"
    path.write_bytes(data[:33] + chunk + data[33:])
    np.testing.assert_array_equal(read_mask(path, sample.image.shape), sample.masks[0] > 0)


def test_tiffs_tifffile_cannot_decode_keep_their_photometric_and_pages(tmp_path):
    """LZW TIFFs (common PACS exports) need a codec tifffile lacks and go to OpenCV: MinIsWhite
    is still honoured and several pages still noted (both were lost on that path)."""
    import tifffile
    from PIL import Image

    truth = _bar()
    u8 = np.round(truth * 255).astype(np.uint8)
    # Pillow stores 255 - data for a MinIsWhite "L" image (it keeps what is shown): the file
    # shows u8. Checked on an uncompressed twin, whose stored samples tifffile reads.
    Image.fromarray(u8).save(tmp_path / "w0.tif", tiffinfo={262: 0})
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "w0.tif"), 255 - u8)
    Image.fromarray(u8).save(tmp_path / "w.tif", compression="tiff_lzw",
                             tiffinfo={262: 0})  # PhotometricInterpretation MinIsWhite
    np.testing.assert_allclose(load_image(tmp_path / "w.tif").image, truth, atol=3e-3)
    pages = [Image.fromarray(u8), Image.fromarray(u8[::2, ::2])]
    pages[0].save(tmp_path / "p.tif", compression="tiff_lzw", save_all=True,
                  append_images=pages[1:])
    loaded = load_image(tmp_path / "p.tif")
    np.testing.assert_allclose(loaded.image, truth, atol=3e-3)
    assert len(loaded.notes) == 1 and "holds 2 pages: OpenCV read the first" in loaded.notes[0]


def _packbits_tiff(path: Path, stored: np.ndarray, photometric: int) -> None:
    """A one-strip PackBits TIFF of ``stored`` samples (8 or 16 bit), written byte by byte: what
    the file holds is known exactly (tifffile needs a codec for PackBits, so OpenCV reads it)."""
    from tests.test_decoder_bombs import _tiff

    h, w = stored.shape
    data = b"".join(bytes([len(c) - 1]) + c for row in stored
                    for b in [row.astype(stored.dtype.newbyteorder("<")).tobytes()]
                    for c in [b[i:i + 128] for i in range(0, len(b), 128)])
    path.write_bytes(_tiff([(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8 * stored.itemsize),
                            (259, 3, 1, 32773), (262, 3, 1, photometric), (273, 4, 1, 512),
                            (277, 3, 1, 1), (278, 4, 1, h), (279, 4, 1, len(data))], data))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_min_is_white_tiff_read_by_opencv_is_inverted_once(tmp_path, dtype):
    """OpenCV inverts 8-bit MinIsWhite samples itself and returns 16-bit ones as stored; both
    were inverted again, so 8-bit LZW / PackBits MinIsWhite files read as negatives."""
    top = np.iinfo(dtype).max
    stored = np.full((16, 16), round(0.04 * top), dtype)
    stored[:4] = round(0.8 * top)
    _packbits_tiff(tmp_path / "w.tif", stored, photometric=0)
    _packbits_tiff(tmp_path / "b.tif", stored, photometric=1)
    white, black = load_image(tmp_path / "w.tif").image, load_image(tmp_path / "b.tif").image
    np.testing.assert_allclose(black, stored / top, atol=1e-6)
    np.testing.assert_allclose(white, 1 - stored / top, atol=1e-6)


def test_tiff_header_check_sees_the_largest_page(tmp_path):
    """The reader decodes the largest page, so the header check must size that page (a small
    first page hid a 7000^2 one: 3.4 GB decoded from 160 kB before the refusal)."""
    import tifffile

    from datamodules.image_io import check_pixel_limit, header_size

    with tifffile.TiffWriter(tmp_path / "b.tif") as tw:
        tw.write(np.zeros((64, 64), np.uint8))
        tw.write(np.zeros((7000, 7000), np.uint8), compression="zlib")
    assert (tmp_path / "b.tif").stat().st_size < 500_000
    assert header_size(tmp_path / "b.tif") == (7000, 7000, 1)
    with pytest.raises(ImageReadError, match="7000 x 7000 px exceeds the limit"):
        check_pixel_limit(tmp_path / "b.tif")


def test_dicom_photometric_in_lower_case_is_read(tmp_path):
    """'monochrome1' (a writer's case slip) was refused by pydicom's decoder."""
    import pydicom

    write_dicom(tmp_path / "u.dcm", _ramp(), photometric="MONOCHROME1")
    ds = pydicom.dcmread(tmp_path / "u.dcm")
    ds.PhotometricInterpretation = "monochrome1"
    ds.save_as(tmp_path / "l.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(load_image(tmp_path / "l.dcm").image,
                                  load_image(tmp_path / "u.dcm").image)
