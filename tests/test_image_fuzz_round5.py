"""Fifth fuzz round of the image readers (F5, F11): a legal big-endian DICOM refused with a false
reason, and broken or odd files answered with a message that did not name their problem. Each
case failed before its fix; each message is one line naming the file and what is wrong."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import tifffile
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from datamodules.image_io import ImageReadError, load_image


def _ramp(h: int = 96, w: int = 80) -> np.ndarray:
    """A smooth 0..1 test pattern (not constant: a blank image is refused elsewhere)."""
    y, x = np.mgrid[0:h, 0:w]
    return (0.5 + 0.25 * np.sin(x / 7.0) + 0.25 * np.cos(y / 11.0)).clip(0, 1)


def _dataset(arr: np.ndarray, bits_stored: int | None = None) -> Dataset:
    """A one-frame MONOCHROME2 DX dataset holding ``arr`` (Explicit VR Little Endian)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8 * arr.dtype.itemsize
    ds.BitsStored = bits_stored or 8 * arr.dtype.itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    ds.PixelData = arr.tobytes()
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _raw(ds: Dataset, tag: int, vr: str, text: str) -> None:
    """Put ``text`` into ``ds`` as it is (pydicom would refuse to set a DS of "x")."""
    data = text.encode()
    data += b" " * (len(data) % 2)
    ds[tag] = RawDataElement(Tag(tag), vr, len(data), data, 0, False, True)


def _one_line_error(path: Path, *words: str) -> str:
    """load_image's error for ``path``: one line naming the file and ``words``."""
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    for word in words:
        assert word in msg, (word, msg)
    return msg


# ---------------------------------------------------------------- F5: big-endian DICOM


@pytest.mark.parametrize("signed", [False, True])
def test_big_endian_dicom_with_fewer_stored_bits_is_read(tmp_path, signed):
    """Before: refused, "BitsStored 12 ... contradicted by the pixel data: 66 % of the pixels
    set higher bits": the unused-bit check looked at the big-endian words byte-swapped (the
    sign-extension test of signed data too). Now read, pixel for pixel as pydicom reads them
    and as the same pixels stored little endian."""
    ramp = _ramp()
    if signed:  # -2048 .. 2047, negatives sign-extended into the 4 unused bits
        values = np.round(ramp * 4095 - 2048).astype(np.int16)
        lo, hi = -2048.0, 2047.0
    else:
        values = np.round(ramp * 4095).astype(np.uint16)
        lo, hi = 0.0, 4095.0
    little = _save(_dataset(values, 12), tmp_path / "little.dcm")
    ds = _dataset(values, 12)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.PixelData = values.astype(values.dtype.newbyteorder(">")).tobytes()
    big = _save(ds, tmp_path / "big.dcm")

    reference = pydicom.dcmread(big).pixel_array  # pydicom's own array (">u2" / ">i2")
    assert reference.dtype.byteorder == ">" and np.array_equal(reference, values)
    loaded = load_image(big)
    expected = (reference.astype(np.float64) - lo) / (hi - lo)
    assert np.allclose(loaded.image, expected, atol=1e-6)
    assert np.array_equal(loaded.image, load_image(little).image)
    assert loaded.bit_depth == 12 and not loaded.notes, loaded.notes
    # the check itself still works on big-endian data: 12-bit values shifted into the top
    # bits contradict BitsStored 12
    shifted = (np.round(ramp * 4095).astype(np.uint16) << 4) | 1
    ds = _dataset(shifted, 12)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.PixelData = shifted.astype(">u2").tobytes()
    _one_line_error(_save(ds, tmp_path / "shifted.dcm"), "BitsStored 12", "contradicted")


# ---------------------------------------------------------------- F11: messages


def test_tiff_whose_ifd_chain_loops_says_so(tmp_path):
    """Before: "TIFF with more than 64 pages" (tifffile yields the one page again and again)."""
    path = tmp_path / "loop.tif"
    tifffile.imwrite(path, (_ramp() * 65535).astype(np.uint16))
    data = bytearray(path.read_bytes())
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    (n_tags,) = struct.unpack_from(order + "H", data, ifd)
    struct.pack_into(order + "I", data, ifd + 2 + 12 * n_tags, ifd)  # next IFD: itself
    path.write_bytes(bytes(data))
    msg = _one_line_error(path, "IFD chain loops", "page 1")
    assert "64 pages" not in msg


def test_dicom_without_file_meta_header_is_named_so(tmp_path):
    """Before: pydicom's "File is missing DICOM File Meta Information header ... Use
    force=True to force reading." (an API hint). A file that is no dataset at all is told
    apart."""
    ds = _dataset(np.round(_ramp() * 4095).astype(np.uint16), 12)
    del ds.file_meta
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=False, implicit_vr=True, little_endian=True)
    raw = buf.getvalue()
    assert raw[128:132] != b"DICM" and raw[:2] == b"\x08\x00"  # an ACR-NEMA style dataset
    path = tmp_path / "acr_nema.dcm"
    path.write_bytes(raw)
    msg = _one_line_error(path, "DICOM dataset without the DICOM file meta header", "ACR-NEMA")
    assert "force" not in msg
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"hello, this is no DICOM at all\n" * 10)
    msg = _one_line_error(junk, "not a DICOM file", "'DICM'")
    assert "force" not in msg


@pytest.mark.parametrize(("entries", "data", "words"), [
    (4096, [], ("ModalityLUTSequence", "LUT Data is empty", "4096 entries")),
    (0, list(range(10)), ("ModalityLUTSequence", "holds 10 values", "65536 entries")),
])
def test_incomplete_modality_lut_is_named(tmp_path, entries, data, words):
    """Before: "cannot apply modality/VOI LUT (int() argument must be ... not 'NoneType')" for
    an empty LUT Data, "(index 16 is out of bounds ...)" for a short one."""
    ds = _dataset(np.round(_ramp() * 4095).astype(np.uint16), 12)
    item = Dataset()
    item.LUTDescriptor = [entries, 0, 16]
    item.ModalityLUTType = "US"
    item.add_new(0x00283006, "US", data)
    ds.ModalityLUTSequence = Sequence([item])
    msg = _one_line_error(_save(ds, tmp_path / "mlut.dcm"), *words, "incomplete")
    assert "NoneType" not in msg and "out of bounds" not in msg


def test_window_list_with_values_that_are_not_numbers(tmp_path):
    """Before: "cannot apply modality/VOI LUT ('<' not supported between instances of 'str'
    and 'int')" for WindowCenter 2000\\nan, WindowWidth 400\\x. Now the first window, which is
    usable, is applied, and a note says the rest are not numbers."""
    values = np.round(_ramp() * 4095).astype(np.uint16)
    ds = _dataset(values, 12)
    _raw(ds, 0x00281050, "DS", "2000\\nan")
    _raw(ds, 0x00281051, "DS", "400\\x")
    loaded = load_image(_save(ds, tmp_path / "win.dcm"))
    assert loaded.meta["window"] == [2000.0, 400.0]
    assert any("not numbers" in n and "first window" in n and "400\\x" in n
               for n in loaded.notes), loaded.notes
    plain = _dataset(values, 12)
    plain.WindowCenter, plain.WindowWidth = 2000, 400
    assert np.array_equal(loaded.image, load_image(_save(plain, tmp_path / "plain.dcm")).image)
    # a first value pydicom will not take back ("1,5"; "4000 2000"): the window is ignored with
    # a note, as before (its review: the write-back raised a raw ValueError out of load_image)
    for centre, width in (("2000\\nan", "4000 2000"), ("1,5\\2000", "4000\\x")):
        odd = _dataset(values, 12)
        _raw(odd, 0x00281050, "DS", centre)
        _raw(odd, 0x00281051, "DS", width)
        notes = load_image(_save(odd, tmp_path / "odd.dcm")).notes
        assert any("window ignored" in n for n in notes), notes


def test_jpeg_frame_of_other_bits_than_declared(tmp_path):
    """Before: "cannot decode DICOM pixel data (could not broadcast ...) (decoder said:
    'NoneType' object has no attribute 'encode')" for an 8-bit JPEG in a dataset declaring
    16 bits allocated, 12 stored."""
    pixels = (_ramp() * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", pixels)
    assert ok
    ds = _dataset(pixels)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.tobytes()])
    ds["PixelData"].VR = "OB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    msg = _one_line_error(_save(ds, tmp_path / "jpeg8_as12.dcm"), "JPEG frame of 8-bit samples",
                          "BitsAllocated 16", "BitsStored 12", "does not match the declared bits")
    assert "decoder said" not in msg and "NoneType" not in msg


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(pixels: np.ndarray, before_idat: list[tuple[bytes, bytes]] = (),
         after_idat: list[tuple[bytes, bytes]] = ()) -> bytes:
    """An 8-bit gray PNG with extra chunks around its IDAT."""
    h, w = pixels.shape
    idat = zlib.compress(b"".join(b"\x00" + row.tobytes() for row in pixels))
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    for kind, body in before_idat:
        out += _chunk(kind, body)
    out += _chunk(b"IDAT", idat)
    for kind, body in after_idat:
        out += _chunk(kind, body)
    return out + _chunk(b"IEND", b"")


def _fctl(seq: int, w: int, h: int) -> bytes:
    return struct.pack(">IIIIIHHBB", seq, w, h, 0, 0, 1, 10, 0, 0)


def test_animated_png_is_refused_like_a_multi_frame_file(tmp_path):
    """Before: a gray PNG with an acTL chunk (its IDAT no frame) was "blank (constant
    intensity 0)" (OpenCV returned the empty animation frame), and a real 2-frame APNG was
    planned from its first frame without a word. A PNG whose acTL comes after IDAT is no
    animation and is read."""
    pixels = (_ramp() * 255).astype(np.uint8)
    h, w = pixels.shape
    odd = tmp_path / "actl_only.png"
    odd.write_bytes(_png(pixels, [(b"acTL", struct.pack(">II", 2**31 - 1, 0))]))
    _one_line_error(odd, "animated PNG", "2147483647 frames", "one frame")
    second = zlib.compress(b"".join(b"\x00" + row.tobytes() for row in 255 - pixels))
    real = tmp_path / "two_frames.png"
    real.write_bytes(_png(pixels, [(b"acTL", struct.pack(">II", 2, 0)), (b"fcTL", _fctl(0, w, h))],
                          [(b"fcTL", _fctl(1, w, h)), (b"fdAT", struct.pack(">I", 2) + second)]))
    _one_line_error(real, "animated PNG", "2 frames")
    still = tmp_path / "late_actl.png"
    still.write_bytes(_png(pixels, after_idat=[(b"acTL", struct.pack(">II", 2, 0))]))
    assert np.allclose(load_image(still).image, pixels / 255.0, atol=1e-6)
    # one frame declared before IDAT: a still in APNG clothing (its review: "declares 1
    # frame" was refused, a message that contradicts itself)
    single = tmp_path / "one_frame.png"
    single.write_bytes(_png(pixels, [(b"acTL", struct.pack(">II", 1, 0)),
                                     (b"fcTL", _fctl(0, w, h))]))
    assert np.allclose(load_image(single).image, pixels / 255.0, atol=1e-6)


@pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="needs Linux procfs")
def test_link_to_a_proc_file_is_named_a_special_file(tmp_path):
    """Before: plan said "the file is empty (0 bytes)" (procfs reports size 0) and load_image
    "not a PNG file (bad signature)". Now both: not a regular file, a special file."""
    from datamodules.dataset_io import stat_problem
    from planning.plan import PlanInputError, load_input

    link = tmp_path / "env.png"
    link.symlink_to("/proc/self/environ")
    _one_line_error(link, "not a regular file", "special file", "proc file system")
    with pytest.raises(PlanInputError) as info:
        load_input(link)
    msg = str(info.value)
    assert msg.startswith(f"{link}: ") and "special file" in msg and "empty" not in msg, msg
    assert isinstance(stat_problem(link), str)
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), (_ramp() * 255).astype(np.uint8))
    assert not isinstance(stat_problem(good), str)
