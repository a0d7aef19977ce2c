"""Red-team round 10 (inputs): what was read wrong or said unclearly, now read right or refused.

- An Enhanced DICOM's rescale, window and pixel spacing kept only in its functional groups
  were ignored: an image stored inverted with RescaleSlope -1 there was read as a negative,
  `validate` passed it, `plan` said nothing.
- An APNG of one frame whose IDAT is a fallback outside the animation (no fcTL before it):
  the fallback was read, an APNG viewer shows the other picture.
- JPEG baseline or 9-7 wavelet frames under a "lossless" transfer syntax, and
  LossyImageCompression written "1", were marked lossless.
- Key Object Selection / Presentation State files were "DICOM has no pixel data (truncated?)";
  a multi-valued PhotometricInterpretation a TypeError's words; 1-bit PNGs with an sBIT got a
  wrong "contradicted" note; OpenCV's log decoration (source files, temporary file names) in
  error lines.
- A TIFF's MaxSampleValue (4095 over 16-bit samples) was ignored: the image read 16x too dark.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_files import cr_dataset, write_dicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence

from datamodules import image_io
from datamodules.decoder_messages import opencv_plain
from datamodules.image_io import ImageReadError, load_image

BITS = 12
TOP = 2**BITS - 1


def _ramp() -> np.ndarray:
    """A 48 x 64 12-bit image, darker on the left, with a bright block at the top left."""
    a = np.tile(np.linspace(200, 3000, 64), (48, 1))
    a[:10, :10] = 3900
    return np.round(a).astype(np.uint16)


def _one_line_error(path: Path) -> str:
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    line = str(err.value)
    assert "\n" not in line and line.startswith(str(path)), line
    return line


def _group_item(groups: dict[str, dict]) -> Sequence:
    """A functional groups sequence of one item holding ``{macro: {attribute: value}}``."""
    item = Dataset()
    for macro, attrs in groups.items():
        inner = Dataset()
        for key, value in attrs.items():
            setattr(inner, key, value)
        setattr(item, macro, Sequence([inner]))
    return Sequence([item])


def _with_groups(path: Path, stored: np.ndarray, shared: dict[str, dict] | None = None,
                 per_frame: dict[str, dict] | None = None, **tags) -> Path:
    """A DICOM of ``stored`` whose functional groups hold ``{macro: {attribute: value}}``."""
    write_dicom(path, stored, bits=BITS, **tags)
    ds = pydicom.dcmread(path)
    for seq_name, groups in (("SharedFunctionalGroupsSequence", shared),
                             ("PerFrameFunctionalGroupsSequence", per_frame)):
        if groups is not None:
            setattr(ds, seq_name, _group_item(groups))
    ds.NumberOfFrames = 1
    ds.save_as(path, enforce_file_format=True)
    return path


INVERT = {"PixelValueTransformationSequence": {"RescaleSlope": -1, "RescaleIntercept": TOP,
                                               "RescaleType": "US"}}


def test_rescale_in_the_shared_functional_groups_is_applied(tmp_path):
    a = _ramp()
    loaded = load_image(_with_groups(tmp_path / "inv.dcm", TOP - a, shared=INVERT))
    np.testing.assert_allclose(loaded.image, a / TOP, atol=1e-6)  # -(TOP - a) + TOP = a
    assert any("functional groups applied" in n and "RescaleSlope" in n for n in loaded.notes)


def test_a_per_frame_rescale_wins_over_the_shared_one(tmp_path):
    a = _ramp()
    identity = {"PixelValueTransformationSequence": {"RescaleSlope": 1, "RescaleIntercept": 0}}
    loaded = load_image(_with_groups(tmp_path / "pf.dcm", TOP - a, shared=identity,
                                     per_frame=INVERT))
    np.testing.assert_allclose(loaded.image, a / TOP, atol=1e-6)


def test_a_window_in_the_frame_voi_lut_group_equals_the_same_window_at_the_top_level(tmp_path):
    a = _ramp()
    top = load_image(_with_groups(tmp_path / "top.dcm", a, window=(2000, 1000)))
    grouped = load_image(_with_groups(
        tmp_path / "grp.dcm", a,
        shared={"FrameVOILUTSequence": {"WindowCenter": 2000, "WindowWidth": 1000}}))
    plain = load_image(_with_groups(tmp_path / "plain.dcm", a))
    np.testing.assert_array_equal(grouped.image, top.image)
    assert not np.allclose(grouped.image, plain.image)  # the window did change the image
    assert grouped.meta["window"] == [2000.0, 1000.0]


def test_pixel_spacing_only_in_pixel_measures_is_found(tmp_path):
    loaded = load_image(_with_groups(tmp_path / "pm.dcm", _ramp(),
                                     shared={"PixelMeasuresSequence": {"PixelSpacing": [0.2,
                                                                                        0.25]}}))
    assert loaded.dicom_pixel == (0.2, 0.25)


def test_pixel_spacing_disagreeing_with_the_groups_is_unknown_and_listed_invalid(tmp_path):
    loaded = load_image(_with_groups(
        tmp_path / "dis.dcm", _ramp(), pixel_spacing=[0.15, 0.15],
        per_frame={"PixelMeasuresSequence": {"PixelSpacing": [0.3, 0.3]}}))
    assert loaded.dicom_pixel is None
    assert [t for t, _ in loaded.invalid_spacing_tags] == ["PixelSpacing"]
    assert any("disagrees with the functional groups" in n for n in loaded.notes)


def test_a_rescale_disagreeing_with_the_groups_is_refused_in_one_line(tmp_path):
    path = _with_groups(tmp_path / "both.dcm", _ramp(), rescale=(1.0, 0.0), shared=INVERT)
    line = _one_line_error(path)
    assert "RescaleSlope '1.0' disagrees with the functional groups' '-1.0'" in line


def test_agreeing_top_level_and_group_values_read_as_without_groups(tmp_path):
    a = _ramp()
    same = {"PixelValueTransformationSequence": {"RescaleSlope": 1, "RescaleIntercept": 0}}
    loaded = load_image(_with_groups(tmp_path / "same.dcm", a, rescale=(1.0, 0.0), shared=same))
    np.testing.assert_allclose(loaded.image, a / TOP, atol=1e-6)


# ------------------------------------------------------------------------------- APNG fallback
def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _apng(a: np.ndarray, b: np.ndarray, fctl_first: bool) -> bytes:
    """acTL of 1 frame, an IDAT of ``a`` (with or without an fcTL before it), an fdAT of ``b``."""
    h, w = a.shape

    def raw(x: np.ndarray) -> bytes:
        return zlib.compress(b"".join(b"\x00" + row.tobytes() for row in x))

    def fctl(seq: int) -> bytes:
        return _chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, w, h, 0, 0, 1, 1, 0, 0))

    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    head += _chunk(b"acTL", struct.pack(">II", 1, 0))
    if fctl_first:  # the IDAT is the one frame: a still in APNG clothing
        return head + fctl(0) + _chunk(b"IDAT", raw(a)) + _chunk(b"IEND", b"")
    return (head + _chunk(b"IDAT", raw(a)) + fctl(0)
            + _chunk(b"fdAT", struct.pack(">I", 1) + raw(b)) + _chunk(b"IEND", b""))


def test_one_frame_apng_whose_idat_is_a_fallback_is_refused(tmp_path):
    a = (_ramp() >> 4).astype(np.uint8)
    path = tmp_path / "fallback.png"
    path.write_bytes(_apng(255 - a, a, fctl_first=False))
    assert "not its default image (no fcTL before the IDAT)" in _one_line_error(path)
    still = tmp_path / "still.png"
    still.write_bytes(_apng(a, a, fctl_first=True))
    np.testing.assert_allclose(load_image(still).image, a / 255.0, atol=1e-6)


# ------------------------------------------------------------------------------- lossy frames
def _encapsulated(path: Path, syntax: str, frame: bytes, shape: tuple[int, int]) -> Path:
    ds = cr_dataset(syntax)
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return path


def _encoded(a: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt, **kw)
    return buf.getvalue()


JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"


def test_lossy_frames_under_a_lossless_syntax_are_marked_lossy(tmp_path):
    a = (_ramp() >> 4).astype(np.uint8)
    baseline = _encapsulated(tmp_path / "jpg.dcm", JPEG_LOSSLESS_SV1,
                             _encoded(a, "JPEG", quality=30), a.shape)
    wavelet97 = _encapsulated(tmp_path / "j97.dcm", J2K_LOSSLESS,
                              _encoded(a, "JPEG2000", irreversible=True, no_jp2=True), a.shape)
    wavelet53 = _encapsulated(tmp_path / "j53.dcm", J2K_LOSSLESS,
                              _encoded(a, "JPEG2000", irreversible=False, no_jp2=True), a.shape)
    assert load_image(baseline).lossy and load_image(wavelet97).lossy
    reversible = load_image(wavelet53)
    assert not reversible.lossy
    np.testing.assert_allclose(reversible.image, a / 255.0, atol=1e-6)  # truly lossless


@pytest.mark.parametrize("tag, value", [("LossyImageCompression", "1"),
                                        ("LossyImageCompressionMethod", "ISO_10918_1"),
                                        ("LossyImageCompressionRatio", ["1", "8"])])
def test_lossy_history_written_otherwise_is_marked_lossy(tmp_path, tag, value):
    path = tmp_path / "h.dcm"
    write_dicom(path, _ramp(), bits=BITS)
    ds = pydicom.dcmread(path)
    setattr(ds, tag, value)
    ds.save_as(path, enforce_file_format=True)
    assert load_image(path).lossy
    if tag != "LossyImageCompression":  # an explicit 00 wins over a method or ratio
        ds.LossyImageCompression = "00"
        ds.save_as(path, enforce_file_format=True)
        assert not load_image(path).lossy
    ds.LossyImageCompression = "00"
    del ds[tag]
    ds.save_as(path, enforce_file_format=True)
    assert not load_image(path).lossy


# ----------------------------------------------------------------------------- clearer refusals
@pytest.mark.parametrize("sop, name", [
    ("1.2.840.10008.5.1.4.1.1.88.59", "a DICOM Key Object Selection Document object, not an image"),
    ("1.2.840.10008.5.1.4.1.1.11.1",
     "a DICOM Grayscale Softcopy Presentation State object, not an image")])
def test_non_image_objects_of_a_pacs_export_are_named(tmp_path, sop, name):
    ds = cr_dataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop
    path = tmp_path / "obj.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert _one_line_error(path) == f"{path}: {name}"


def test_an_image_without_pixel_data_is_still_called_so(tmp_path):
    path = tmp_path / "cut.dcm"
    cr_dataset().save_as(path, enforce_file_format=True)
    assert "DICOM has no pixel data" in _one_line_error(path)


def test_a_multi_valued_photometric_interpretation_is_one_clear_line(tmp_path):
    path = tmp_path / "pi.dcm"
    write_dicom(path, _ramp(), bits=BITS)
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = ["MONOCHROME1", "MONOCHROME2"]
    ds.save_as(path, enforce_file_format=True)
    line = _one_line_error(path)
    assert "PhotometricInterpretation holds several values ('MONOCHROME1\\MONOCHROME2')" in line


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_low_depth_gray_png_with_its_sbit_reads_without_a_note(tmp_path, depth):
    levels = 2**depth
    q = (np.arange(48 * 64).reshape(48, 64) % levels).astype(np.uint8)
    per_byte = 8 // depth
    rows = []
    for row in q:
        packed = bytearray()
        for i in range(0, len(row), per_byte):
            byte = 0
            for j, v in enumerate(row[i:i + per_byte]):
                byte |= int(v) << (8 - depth * (j + 1))
            packed.append(byte)
        rows.append(b"\x00" + bytes(packed))
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 48, depth, 0, 0, 0, 0))
    png = (b"\x89PNG\r\n\x1a\n" + header + _chunk(b"sBIT", bytes([depth]))
           + _chunk(b"IDAT", zlib.compress(b"".join(rows))) + _chunk(b"IEND", b""))
    path = tmp_path / f"g{depth}.png"
    path.write_bytes(png)
    loaded = load_image(path)
    assert loaded.notes == []
    np.testing.assert_allclose(loaded.image, q / (levels - 1), atol=1e-6)


def test_opencv_log_decoration_is_taken_out_of_messages():
    line = ("[ERROR:0@0.240] global loadsave.cpp:1377 imdecode_ "
            "imdecode_('/tmp/__opencv_temp.6e8f'): can't read header: OpenCV(5.1.0) "
            "/io/opencv/modules/imgcodecs/src/rgbe.cpp:94: "
            "error: (-2:Unspecified error) RGBE read header failed in function 'rgbe_error'")
    assert opencv_plain(line) == ("can't read header: RGBE read header failed in function "
                                  "'rgbe_error'")
    assert opencv_plain("libpng error: IDAT: CRC error") == "libpng error: IDAT: CRC error"


# ------------------------------------------------------------------------ TIFF MaxSampleValue
def _tiff_12_in_16(path: Path, a: np.ndarray, max_sample: int = TOP) -> Path:
    import tifffile

    tifffile.imwrite(path, a, extratags=[(281, "H", 1, max_sample, True)])
    return path


@pytest.mark.parametrize("by_opencv", [False, True])
def test_tiff_max_sample_value_is_the_samples_range(tmp_path, monkeypatch, by_opencv):
    """12-bit data in 16-bit samples with MaxSampleValue 4095 was read 16x too dark."""
    if by_opencv:  # the path of LZW/Deflate files (tifffile lacks their codecs here)
        monkeypatch.setattr(image_io, "TIFFFILE_COMPRESSIONS", set())
    a = _ramp()
    loaded = load_image(_tiff_12_in_16(tmp_path / "ms.tif", a))
    np.testing.assert_allclose(loaded.image, a / TOP, atol=1e-6)
    assert loaded.bit_depth == BITS
    assert any("MaxSampleValue (4095) is the samples' range" in n for n in loaded.notes)


def test_tiff_max_sample_value_contradicted_by_the_pixels_is_ignored(tmp_path):
    a = _ramp().astype(np.uint32) * 16  # uses the 16-bit range
    loaded = load_image(_tiff_12_in_16(tmp_path / "lie.tif", a.astype(np.uint16)))
    np.testing.assert_allclose(loaded.image, a / 65535.0, atol=1e-6)
    assert any("MaxSampleValue (4095) is contradicted by the pixels" in n for n in loaded.notes)


def test_a_gray_and_alpha_tiff_reads_its_gray_as_a_png_does(tmp_path):
    """A gray + alpha TIFF was refused ("shape (48, 64, 2)") while a gray + alpha PNG was read."""
    import tifffile

    gray = (_ramp() >> 4).astype(np.uint8)
    alpha = np.full_like(gray, 255)
    path = tmp_path / "ga.tif"
    tifffile.imwrite(path, np.dstack([gray, alpha]), photometric="minisblack",
                     extrasamples=["unassalpha"])
    np.testing.assert_allclose(load_image(path).image, gray / 255.0, atol=1e-6)


@pytest.mark.parametrize("missing", ["LUTData", "LUTDescriptor"])
def test_a_voi_lut_item_without_its_data_is_named_and_the_window_applies(tmp_path, missing):
    """Such an item was skipped silently (and with it any window's effect was unclear)."""
    a = _ramp()
    path = tmp_path / "v.dcm"
    write_dicom(path, a, bits=BITS, window=(2000, 1000))
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", list(range(4095, -1, -1)))  # LUTData: an inverting LUT
    del item[missing]
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(path, enforce_file_format=True)
    loaded = load_image(path)
    window_only = load_image(_with_groups(tmp_path / "w.dcm", a, window=(2000, 1000)))
    np.testing.assert_array_equal(loaded.image, window_only.image)
    assert f"DICOM VOI LUT Sequence ignored (its item has no {missing})" in loaded.notes


def _groups_only(top: dict, shared: dict) -> Dataset:
    """A bare dataset with top-level ``top`` attributes and shared functional groups."""
    ds = Dataset()
    for key, value in top.items():
        setattr(ds, key, value)
    ds.SharedFunctionalGroupsSequence = _group_item(shared)
    return ds


def test_functional_group_edge_cases_from_the_review():
    """An empty top-level element is absent (the group's value is used); a NaN agrees with
    nothing (refused, not taken as the group's); only the first of several top-level windows is
    compared (the reader keeps only that one)."""
    from datamodules.dicom_functional_groups import FunctionalGroupError, lift_functional_groups

    ds = _groups_only({"RescaleSlope": None},
                      {"PixelValueTransformationSequence": {"RescaleSlope": "2"}})
    notes: list[str] = []
    lift_functional_groups(ds, notes)
    assert float(ds.RescaleSlope) == 2.0 and "RescaleSlope" in notes[0]
    window = {"FrameVOILUTSequence": {"WindowCenter": "40", "WindowWidth": "400"}}
    with pytest.raises(FunctionalGroupError, match="WindowCenter 'nan' disagrees"):
        lift_functional_groups(_groups_only({"WindowCenter": "nan", "WindowWidth": "400"},
                                            window), [])
    several = _groups_only({"WindowCenter": ["40", "50"], "WindowWidth": ["400", "10"]}, window)
    lift_functional_groups(several, [])  # agrees on the first window: nothing refused


def test_a_max_sample_value_that_is_no_bit_depth_is_statistics_only(tmp_path):
    """TIFF 6.0: MaxSampleValue is "for statistical purposes"; a writer may record the data's
    own maximum there (3012 of a full 16-bit range would have been stretched to white)."""
    a = (_ramp().astype(np.uint32) * 16).astype(np.uint16)
    loaded = load_image(_tiff_12_in_16(tmp_path / "stat.tif", a, max_sample=int(a.max())))
    np.testing.assert_allclose(loaded.image, a / 65535.0, atol=1e-6)
    assert not any("MaxSampleValue" in n for n in loaded.notes)


def test_two_samples_that_are_not_gray_and_alpha_are_refused(tmp_path):
    import tifffile

    gray = (_ramp() >> 4).astype(np.uint8)
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, np.dstack([gray, 255 - gray]), photometric="minisblack",
                     planarconfig="contig", extrasamples=["unspecified"])
    assert "second is not an alpha channel" in _one_line_error(path)


def test_unsigned_data_labelled_signed_gets_a_note_and_signed_data_none(tmp_path):
    """16-bit unsigned samples (0.1-0.95 of the range) labelled PixelRepresentation 1 wrap:
    their bright half reads as the most negative values, garbled without a word before."""
    def signed_file(name: str, values: np.ndarray) -> Path:
        path = tmp_path / name
        write_dicom(path, np.zeros((48, 64), np.uint16), bits=16)
        ds = pydicom.dcmread(path)
        ds.PixelRepresentation = 1
        ds.PixelData = values.astype(np.int16).tobytes()
        ds.save_as(path, enforce_file_format=True)
        return path

    unsigned = np.round(np.tile(np.linspace(0.1, 0.95, 64), (48, 1)) * 65535).astype(np.uint16)
    wrapped = load_image(signed_file("wrapped.dcm", unsigned.view(np.int16)))
    assert any("unsigned data labelled signed?" in n for n in wrapped.notes), wrapped.notes
    full_range = np.round(np.tile(np.linspace(-32000, 32000, 64), (48, 1)))  # crosses zero
    assert not any("labelled signed" in n
                   for n in load_image(signed_file("signed.dcm", full_range)).notes)


@pytest.mark.parametrize("imager, noted", [(0.45, True), (0.1, True), (0.18, False),
                                           (0.15, False)])
def test_spacings_implying_an_impossible_magnification_are_noted(tmp_path, imager, noted):
    """PixelSpacing 0.15 with ImagerPixelSpacing 0.45 (a magnification of 3) passed silently."""
    path = tmp_path / "s.dcm"
    write_dicom(path, _ramp(), bits=BITS, pixel_spacing=[0.15, 0.15],
                imager_spacing=[imager, imager])
    loaded = load_image(path)
    assert loaded.dicom_pixel == (0.15, 0.15)
    assert any("ImagerPixelSpacing / PixelSpacing" in n for n in loaded.notes) == noted
