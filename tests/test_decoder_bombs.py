"""Files that made a decoder allocate GBs, work for minutes, or return a wrong image (third fuzz
round: F01-F05, F13, F14). Each now gets its image, or one line naming the file and the
problem, within bounded memory and time. The bombs here are small (or the pixel limit is
lowered), so that the tests stay fast and, run on a reader without the guards, fail instead
of allocating GBs; the one that would need GBs runs in a child process with a memory cap.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import tifffile
from dicom_files import write_dicom
from PIL import Image

from datamodules.image_io import ImageReadError, check_pixel_limit, load_image

REPO = Path(__file__).resolve().parents[1]


def one_line(err: pytest.ExceptionInfo, path: Path) -> str:
    """The error's message, checked to be one line that names ``path``."""
    text = str(err.value)
    assert "\n" not in text and text.startswith(str(path)), text
    return text


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def _png16(a: np.ndarray, sbit: int | None = None) -> bytes:
    """A 16-bit gray PNG of ``a`` (optionally with an sBIT chunk), written by hand."""
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in a)
    ihdr = struct.pack(">IIBBBBB", a.shape[1], a.shape[0], 16, 0, 0, 0, 0)
    extra = _chunk(b"sBIT", bytes([sbit])) if sbit is not None else b""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def _png_with_lying_text_chunk(claimed: int) -> bytes:
    """F01: a 64 x 64 PNG with a tEXt chunk header claiming ``claimed`` bytes (172 bytes)."""
    raw = b"".join(b"\x00" + bytes(range(64)) for _ in range(64))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0))
            + struct.pack(">I", claimed) + b"tEXt"
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def _run_capped(code: str, mem_bytes: int = 1536 * 1024**2) -> str:
    """Run ``code`` in a child Python whose address space is capped at ``mem_bytes`` (an
    unguarded decoder fails there instead of taking GBs); its stdout."""
    prelude = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({mem_bytes}, "
               f"{mem_bytes}))\n")
    res = subprocess.run([sys.executable, "-c", prelude + code], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


# ------------------------------------------------------------------------------------ F01 PNG
def test_png_chunk_longer_than_the_file_is_refused_before_opencv_allocates_it(tmp_path):
    """OpenCV (libpng) allocated the 4 GB a 172-byte PNG's tEXt chunk claimed, then failed."""
    path = tmp_path / "text.png"
    path.write_bytes(_png_with_lying_text_chunk(64 * 1024**2))  # 64 MB here: cheap if unguarded
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    assert "chunk 'tEXt' at byte 33 claims 67108864 bytes" in one_line(err, path)
    renamed = tmp_path / "text.jpg"  # OpenCV decodes by content, whatever the suffix says
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(ImageReadError, match="chunk 'tEXt'"):
        load_image(renamed)


def test_the_172_byte_png_of_4_gb_costs_no_memory(tmp_path):
    """The finding's own file, as image and as a training mask, in a child capped at 1.5 GB."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_with_lying_text_chunk(0xFFFFFFF0))
    out = _run_capped(
        "from datamodules.image_io import ImageReadError, load_image\n"
        "from datamodules.dataset_io import DatasetError, read_mask\n"
        "for read, error in ((load_image, ImageReadError), (read_mask, DatasetError)):\n"
        "    try:\n"
        f"        read({str(path)!r})\n"
        "    except error as err:\n"
        "        print(err)\n"
        "status = open('/proc/self/status').read()  # (ru_maxrss carries the parent's over)\n"
        "print(int(status.split('VmHWM:')[1].split()[0]) // 1024)\n")
    *lines, peak_mb = out.splitlines()
    assert len(lines) == 2 and all("chunk 'tEXt' at byte 33 claims 4294967280" in x
                                   for x in lines), lines
    assert int(peak_mb) < 400


# ----------------------------------------------------------------------------------- F02 TIFF
def _tiff(entries: list[tuple[int, int, int, int]], data: bytes) -> bytes:
    """A little-endian one-page TIFF of the given (tag, type, count, value) entries, with
    ``data`` at offset 512."""
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in sorted(entries):
        ifd += (struct.pack("<HHIHH", tag, typ, count, value, 0) if typ == 3
                else struct.pack("<HHII", tag, typ, count, value))
    head = b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    return head + b"\0" * (512 - len(head)) + data


def test_tiff_strip_that_inflates_far_past_its_size_is_refused(tmp_path):
    """tifffile inflated a 64 x 64 px TIFF's one deflate strip whole: 2 GB from 2 MB. Here
    16 MB from 16 kB (a 4 kB strip)."""
    strip = zlib.compress(bytes(16 * 1024**2), 9)
    path = tmp_path / "strip.tif"
    path.write_bytes(_tiff([(256, 3, 1, 64), (257, 3, 1, 64), (258, 3, 1, 8), (259, 3, 1, 8),
                            (262, 3, 1, 1), (273, 4, 1, 512), (277, 3, 1, 1), (278, 3, 1, 64),
                            (279, 4, 1, len(strip))], strip))
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    assert "TIFF strip 1 of 1 inflates to more than 73728 bytes, though it holds 4096 " \
        "(Deflate decompression bomb)" in one_line(err, path)


def test_tiff_tiles_are_held_to_the_pixel_limit(tmp_path, monkeypatch):
    """A 64 x 64 px TIFF of one 32768^2 px tile: tifffile decoded (and padded) the whole tile,
    4 GB. The tile geometry is now checked like the image size (here against a lowered
    limit: a 256^2 px tile over 10 000 px)."""
    monkeypatch.setenv("KNEEPLAN_MAX_PIXELS", "10000")
    tile = zlib.compress(bytes(256 * 256 * 2))
    path = tmp_path / "tile.tif"
    path.write_bytes(_tiff([(256, 3, 1, 64), (257, 3, 1, 64), (258, 3, 1, 16), (259, 3, 1, 8),
                            (262, 3, 1, 1), (277, 3, 1, 1), (322, 3, 1, 256), (323, 3, 1, 256),
                            (324, 4, 1, 512), (325, 4, 1, len(tile))], tile))
    expected = ("TIFF tiles of 256 x 256 px x 1 samples x 16 bits exceed the limit of 0.01 "
                "megapixels")
    with pytest.raises(ImageReadError) as err:
        check_pixel_limit(path)  # the header check sees it, before anything is decoded
    assert expected in one_line(err, path)
    with pytest.raises(ImageReadError, match=expected):
        load_image(path)


@pytest.mark.parametrize("compression", ["zlib", "lzma"])
def test_compressed_tiffs_within_bounds_read_exactly(tmp_path, compression):
    """The bound costs real files nothing: deflate and LZMA, strips and tiles, as written."""
    a = np.random.default_rng(3).integers(0, 65536, (70, 90), dtype=np.uint16)
    for name, kw in {"strips": {"rowsperstrip": 16}, "tiles": {"tile": (32, 48)}}.items():
        path = tmp_path / f"{compression}_{name}.tif"
        tifffile.imwrite(path, a, compression=compression, **kw)
        np.testing.assert_array_equal(load_image(path).image, (a / 65535).astype(np.float32))


def _packbits(data: bytes) -> bytes:
    """PackBits literal runs of up to 128 bytes (what TIFF compression 32773 stores)."""
    return b"".join(bytes([len(data[i:i + 128]) - 1]) + data[i:i + 128]
                    for i in range(0, len(data), 128))


def test_packbits_tiff_is_read_by_libtiff(tmp_path, monkeypatch):
    """tifffile's PackBits decoder is pure Python and builds a list of ints without a bound (a
    bomb's 2 bytes give 128); OpenCV's libtiff decodes it into a buffer of the image's size."""
    a = np.random.default_rng(4).integers(0, 256, (40, 60), dtype=np.uint8)
    data = b"".join(_packbits(row.tobytes()) for row in a)
    path = tmp_path / "packbits.tif"
    path.write_bytes(_tiff([(256, 3, 1, 60), (257, 3, 1, 40), (258, 3, 1, 8), (259, 3, 1, 32773),
                            (262, 3, 1, 1), (273, 4, 1, 512), (277, 3, 1, 1), (278, 3, 1, 40),
                            (279, 4, 1, len(data))], data))
    np.testing.assert_array_equal(load_image(path).image, (a / 255).astype(np.float32))
    bomb = b"\x81\x00" * 8192  # 16 kB that inflate to 1 MB, for a 4 kB strip
    path.write_bytes(_tiff([(256, 3, 1, 64), (257, 3, 1, 64), (258, 3, 1, 8), (259, 3, 1, 32773),
                            (262, 3, 1, 1), (273, 4, 1, 512), (277, 3, 1, 1), (278, 3, 1, 64),
                            (279, 4, 1, len(bomb))], bomb))
    calls: list[int] = []

    def spy(data: bytes, out: object = None) -> bytes:
        calls.append(len(data))
        return b""

    monkeypatch.setitem(tifffile.TIFF.DECOMPRESSORS._codecs, 32773, spy)
    assert load_image(path).image.shape == (64, 64) and calls == []


# ---------------------------------------------------------------------------------- F03 DICOM
def _deflated_dicom(path: Path, pixels: np.ndarray, private_bytes: int = 0) -> None:
    """A Deflated Explicit VR Little Endian CR file, with a private OB element of zeros."""
    write_dicom(path, pixels)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    if private_bytes:
        block = ds.private_block(0x0009, "KNEEPLAN TEST", create=True)
        block.add_new(0x10, "OB", bytes(private_bytes))
    ds.save_as(path, enforce_file_format=True)


def test_deflated_dicom_that_inflates_past_the_byte_cap_is_refused(tmp_path, monkeypatch):
    """pydicom inflates a deflated dataset whole: a 2.4 MB file held a 2.5 GB element (4.9 GB
    RSS, then planned). Here 20 MB from 20 kB, over the cap of a 10 000 px limit (16 MB)."""
    monkeypatch.setenv("KNEEPLAN_MAX_PIXELS", "10000")
    path = tmp_path / "deflated.dcm"
    _deflated_dicom(path, np.zeros((64, 64), np.uint16), private_bytes=20 * 1024**2)
    assert path.stat().st_size < 100_000
    for check in (check_pixel_limit, load_image):
        with pytest.raises(ImageReadError) as err:
            check(path)
        assert "deflated DICOM dataset inflates to more than 16 MB" in one_line(err, path)


def test_deflated_dicom_within_the_cap_reads_as_uncompressed(tmp_path):
    a = np.random.default_rng(5).integers(0, 4096, (50, 40), dtype=np.uint16)
    write_dicom(tmp_path / "plain.dcm", a)
    _deflated_dicom(tmp_path / "deflated.dcm", a, private_bytes=1000)
    np.testing.assert_array_equal(load_image(tmp_path / "deflated.dcm").image,
                                  load_image(tmp_path / "plain.dcm").image)


# ----------------------------------------------------------------------------------- F04 JPEG
def _jpeg_with_repeated_scan(repeats: int) -> bytes:
    """A small progressive JPEG whose smallest AC scan is repeated ``repeats`` times more
    (libjpeg decodes each over the whole image: 30 000 took 83 s at 6000^2 px)."""
    img = np.full((32, 32), 128, np.uint8)
    img[0] = 140
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    pos, scans = 2, []
    while data[pos + 1] != 0xD9:
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        end = pos + 2 + length
        if data[pos + 1] == 0xDA:  # entropy-coded data up to the next marker
            while data[end] != 0xFF or data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                end += 1
            scans.append(data[pos:end])
        pos = end
    ac = min((s for s in scans if s[7] != 0), key=len)  # spectral start > 0: an AC scan
    return data[:-2] + ac * repeats + b"\xff\xd9"


def test_jpeg_with_hundreds_of_scans_is_refused_unread(tmp_path):
    path = tmp_path / "scans.jpg"
    path.write_bytes(_jpeg_with_repeated_scan(150))
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    assert "JPEG with more than 100 scans" in one_line(err, path)
    for repeats in (0, 80):  # a plain progressive JPEG, and one of 86 scans, are read
        path.write_bytes(_jpeg_with_repeated_scan(repeats))
        assert load_image(path).image.shape == (32, 32)


# ---------------------------------------------------------------------------------- F05 DICOM
def _with_elements(path: Path, elements: bytes) -> None:
    """Insert raw Explicit VR Little Endian ``elements`` just before a file's PixelData."""
    raw = path.read_bytes()
    at = raw.index(struct.pack("<HH", 0x7FE0, 0x0010) + b"OW")
    path.write_bytes(raw[:at] + elements + raw[at:])


def _empty_elements(n: int, first_group: int) -> bytes:
    """``n`` empty UN elements in ascending private groups from ``first_group``."""
    tags = [(first_group + 2 * (i // 0xFF00), 0x0100 + i % 0xFF00) for i in range(n)]
    return b"".join(struct.pack("<HH2sHI", g, e, b"UN", 0, 0) for g, e in tags)


def test_dicom_with_more_elements_than_any_radiograph_is_refused(tmp_path):
    """7 million empty private elements (84 MB, 64 x 64 px) took pydicom 62 s and 2.4 GB; the
    limit is 100 000, counted before pydicom parses, in the top level or in sequences."""
    px = np.zeros((64, 64), np.uint16)
    n = 100_001
    flat, nested = tmp_path / "flat.dcm", tmp_path / "nested.dcm"
    write_dicom(flat, px)
    _with_elements(flat, _empty_elements(n, 0x0029))
    write_dicom(nested, px)
    sq = struct.pack("<HH2sHI", 0x0029, 0x1000, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    ends = struct.pack("<HHIHHI", 0xFFFE, 0xE00D, 0, 0xFFFE, 0xE0DD, 0)
    _with_elements(nested, sq + item + _empty_elements(n, 0x0031) + ends)
    for path in (flat, nested):
        with pytest.raises(ImageReadError) as err:
            check_pixel_limit(path)
        assert "DICOM with more than 100000 data elements" in one_line(err, path)
        with pytest.raises(ImageReadError, match="more than 100000 data elements"):
            load_image(path)
    ok = tmp_path / "ok.dcm"  # a few thousand private elements are fine
    write_dicom(ok, px + 7)
    _with_elements(ok, _empty_elements(5000, 0x0029))
    assert load_image(ok).image.shape == (64, 64)


def test_dicom_sequences_nested_beyond_any_real_file_are_refused(tmp_path):
    path = tmp_path / "deep.dcm"
    write_dicom(path, np.zeros((8, 8), np.uint16))
    sq = struct.pack("<HH2sHI", 0x0029, 0x1000, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    ends = struct.pack("<HHIHHI", 0xFFFE, 0xE00D, 0, 0xFFFE, 0xE0DD, 0)
    _with_elements(path, (sq + item) * 70 + ends * 70)
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    assert "DICOM sequences nested more than 64 deep" in one_line(err, path)


# ------------------------------------------------------------------------------ F13 CMYK TIFF
def _gray_ramp(h: int = 30, w: int = 64) -> np.ndarray:
    return np.tile(np.linspace(0, 255, w).round().astype(np.uint8), (h, 1))


@pytest.mark.parametrize("writer", ["pillow", "pillow_lzw", "tifffile_inverted"])
def test_cmyk_tiff_is_refused_not_read_as_rgb(tmp_path, writer):
    """Separated (CMYK) samples were read as R, G, B: Pillow's CMYK TIFF of a radiograph (all in
    K) was refused as blank, one inverted in all four inks was planned inverted, silently. LZW
    goes to OpenCV (no imagecodecs), which is held to the same rule."""
    g = _gray_ramp()
    path = tmp_path / f"{writer}.tif"
    if writer == "tifffile_inverted":
        tifffile.imwrite(path, np.dstack([255 - g] * 4), photometric="separated")
    else:
        compression = "tiff_lzw" if writer == "pillow_lzw" else None
        Image.fromarray(g).convert("CMYK").save(path, compression=compression)
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    assert "CMYK (separated) TIFF is not supported" in one_line(err, path)


def test_ycbcr_tiff_is_converted_not_read_as_rgb(tmp_path):
    """tifffile returns Y, Cb, Cr as stored: read as R, G, B the gray came out 25 % too bright.
    OpenCV's libtiff converts them."""
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 50, 100
    path = tmp_path / "ycbcr.tif"
    Image.fromarray(rgb).convert("YCbCr").save(path)
    assert tifffile.TiffFile(path).pages[0].photometric == 6
    expected = float(rgb[0, 0] @ [0.299, 0.587, 0.114]) / 255
    np.testing.assert_allclose(load_image(path).image, expected, atol=2 / 255)


# --------------------------------------------------------------------------- F14 bit depths
def test_dicom_pixels_above_bits_stored_are_refused_not_masked(tmp_path):
    """BitsStored 12 holding 12-bit values shifted into the top bits: pydicom kept the low 12
    bits, a garbled image planned without a word."""
    a = np.random.default_rng(6).integers(0, 65536, (40, 50), dtype=np.uint16)
    path = tmp_path / "shifted.dcm"
    write_dicom(path, (a >> 4) << 4, bits=12)
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    assert "DICOM BitsStored 12 (HighBit 11) is contradicted by the pixel data" in one_line(
        err, path)


def test_a_few_stray_high_bits_are_cleared_with_a_note(tmp_path):
    a = np.random.default_rng(7).integers(0, 4096, (40, 50), dtype=np.uint16)
    stray = a.copy()
    stray[0, :3] |= 0x8000  # 3 of 2000 pixels: stray bits, cleared as the standard says
    write_dicom(tmp_path / "clean.dcm", a)
    write_dicom(tmp_path / "stray.dcm", stray)
    clean, loaded = load_image(tmp_path / "clean.dcm"), load_image(tmp_path / "stray.dcm")
    np.testing.assert_array_equal(loaded.image, clean.image)
    assert clean.notes == []
    assert loaded.notes == ["DICOM pixel data sets bits above BitsStored 12 in 3 pixels "
                            "(0.15 %): cleared, as the standard prescribes"]


def test_sign_extended_dicom_values_are_no_contradiction(tmp_path):
    path = tmp_path / "signed.dcm"
    write_dicom(path, np.zeros((20, 30), np.uint16))
    ds = pydicom.dcmread(path)
    values = np.random.default_rng(8).integers(-2048, 2048, (20, 30)).astype(np.int16)
    ds.PixelRepresentation = 1
    ds.PixelData = values.tobytes()  # negative values sign-extended to 16 bits
    ds.save_as(path, enforce_file_format=True)
    loaded = load_image(path)
    assert loaded.notes == []
    np.testing.assert_allclose(loaded.image, (values + 2048) / 4095, atol=1e-6)


def test_png_sbit_that_the_pixels_contradict_is_ignored_with_a_note(tmp_path):
    """A 16-bit PNG stating 4 significant bits whose values use all 16: divided by 15, 48 % of
    the pixels clipped to white, planned without a word."""
    a = np.random.default_rng(9).integers(0, 65536, (40, 50), dtype=np.uint16)
    path = tmp_path / "sbit4.png"
    path.write_bytes(_png16(a, sbit=4))
    loaded = load_image(path)
    np.testing.assert_allclose(loaded.image, a / 65535, atol=1e-6)
    assert loaded.bit_depth == 16
    assert len(loaded.notes) == 1 and "sBIT chunk (4 significant bits) is contradicted by the " \
        "pixels" in loaded.notes[0] and "the file's 16-bit range is used" in loaded.notes[0]


def test_png_sbit_with_a_few_values_above_it_is_kept_with_a_note(tmp_path):
    a = np.random.default_rng(10).integers(0, 4096, (40, 50), dtype=np.uint16)
    a[5, 5] = a[6, 6] = 65535  # two hot pixels; the other 1998 are 12-bit
    path = tmp_path / "sbit12.png"
    path.write_bytes(_png16(a, sbit=12))
    loaded = load_image(path)
    assert loaded.bit_depth == 12
    np.testing.assert_allclose(loaded.image, np.minimum(a / 4095, 1.0), atol=1e-6)
    assert loaded.notes == ["2 values (0.1 %) lie above the 12-bit range the PNG's sBIT chunk "
                            "states: clipped to white"]


def test_opencv_reads_what_the_guards_pass(tmp_path):
    """The guards sit in ``imdecode``, before any OpenCV decode: an ordinary PNG and JPEG pass."""
    a = _gray_ramp()
    for suffix in (".png", ".jpg"):
        ok, buf = cv2.imencode(suffix, a)
        path = tmp_path / f"ramp{suffix}"
        path.write_bytes(buf.tobytes())
        assert load_image(path).image.shape == a.shape


# ------------------------------------------------------- JPEG scans inside DICOM and TIFF
def _encapsulated_dicom(path: Path, jpeg: bytes, syntax: str, split: bool = False) -> None:
    """A 32 x 32 px 8-bit DICOM whose Pixel Data holds ``jpeg`` encapsulated under
    ``syntax``: one fragment, or two (cut in the middle: pydicom joins them)."""
    write_dicom(path, np.zeros((32, 32), np.uint16), bits=8)
    ds = pydicom.dcmread(path)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    fragments = [jpeg[: len(jpeg) // 2], jpeg[len(jpeg) // 2 :]] if split else [jpeg]

    def item(body: bytes) -> bytes:
        body += b"\0" * (len(body) % 2)
        return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body

    ds.PixelData = (item(b"") + b"".join(item(f) for f in fragments)
                    + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                                    "1.2.840.10008.1.2.4.70"])
def test_jpeg_scan_bomb_inside_a_dicom_is_refused_unread(tmp_path, syntax):
    """pydicom hands encapsulated JPEG to libjpeg (Pillow, GDCM), which decodes every scan over
    the whole frame: 3000 repeats of a scan in a 2000^2 px frame took 1.9 s and 210 MB, and
    the time grows with the repeats. The fragments are now walked and counted first."""
    path = tmp_path / "scans.dcm"
    for split in (False, True):  # the scans in one fragment, or across two
        _encapsulated_dicom(path, _jpeg_with_repeated_scan(150), syntax, split)
        for check in (check_pixel_limit, load_image):
            with pytest.raises(ImageReadError) as err:
                check(path)
            assert "DICOM pixel data: JPEG with more than 100 scans" in one_line(err, path)
    if syntax.endswith(".70"):
        return  # (lossless: GDCM cannot decode the progressive frame at all)
    for repeats in (0, 80):  # a plain progressive JPEG, and one of 86 scans, are read
        _encapsulated_dicom(path, _jpeg_with_repeated_scan(repeats), syntax, split=True)
        assert load_image(path).image.shape == (32, 32)


def test_jpeg_scan_bomb_inside_a_tiff_is_refused_unread(tmp_path):
    """A JPEG compressed TIFF goes to OpenCV's libtiff, which decodes each strip or tile with
    libjpeg: its strips are counted like a JPEG file's scans first (libtiff's own cap, where
    the build has one, only said "unreadable or truncated TIFF")."""
    def jpeg_tiff(strip: bytes) -> bytes:
        return _tiff([(256, 3, 1, 32), (257, 3, 1, 32), (258, 3, 1, 8), (259, 3, 1, 7),
                      (262, 3, 1, 1), (273, 4, 1, 512), (277, 3, 1, 1), (278, 3, 1, 32),
                      (279, 4, 1, len(strip))], strip)

    path = tmp_path / "scans.tif"
    path.write_bytes(jpeg_tiff(_jpeg_with_repeated_scan(150)))
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    assert "TIFF strip 1 of 1: JPEG with more than 100 scans" in one_line(err, path)
    path.write_bytes(jpeg_tiff(_jpeg_with_repeated_scan(0)))
    assert load_image(path).image.shape == (32, 32)


# --------------------------------------------------------------- huge DICOM header values
def _implicit_dicom_with_value(path: Path, tag: tuple[int, int], value: bytes) -> None:
    """An Implicit VR Little Endian CR file (4-byte value lengths) whose ``tag`` holds
    ``value``."""
    write_dicom(path, np.zeros((16, 16), np.uint16) + 7, window=(2000, 4000),
                pixel_spacing=[0.1, 0.1], rescale=(1, 0))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    at = raw.index(struct.pack("<HH", *tag), 132 + 100)  # (past the file meta)
    (length,) = struct.unpack_from("<I", raw, at + 4)
    value += b" " * (len(value) % 2)
    path.write_bytes(raw[:at] + struct.pack("<HHI", *tag, len(value)) + value
                     + raw[at + 8 + length :])


@pytest.mark.parametrize(("keyword", "tag"), [("WindowCenter", (0x0028, 0x1050)),
                                              ("PixelSpacing", (0x0028, 0x0030)),
                                              ("RescaleSlope", (0x0028, 0x1053))])
def test_dicom_value_longer_than_any_real_one_is_refused(tmp_path, keyword, tag):
    """pydicom turns a DS or IS value into Python numbers when the reader touches it: one
    million values (2 MB) took 2.3 s and 400 MB, and a file may be 300 MB. A value the
    reader converts may now hold at most 8 kB (here 100 000 values, 200 kB)."""
    path = tmp_path / "long.dcm"
    _implicit_dicom_with_value(path, tag, b"\\".join([b"1"] * 100_000))
    for check in (check_pixel_limit, load_image):
        with pytest.raises(ImageReadError) as err:
            check(path)
        expected = f"DICOM {keyword} ({tag[0]:04X},{tag[1]:04X}) holds 200000 bytes"
        assert expected in one_line(err, path)
    real = {"WindowCenter": b"\\".join([b"2000.5"] * 40), "PixelSpacing": b"0.139\\0.139",
            "RescaleSlope": b"1.0"}[keyword]  # (40 windows: more than any real file)
    _implicit_dicom_with_value(path, tag, real)
    assert load_image(path).image.shape == (16, 16)


def test_lzma_tiff_strip_that_inflates_far_past_its_size_is_refused(tmp_path):
    """LZMA strips are inflated with the same bounded budget as Deflate's."""
    import lzma

    strip = lzma.compress(bytes(16 * 1024**2))
    path = tmp_path / "lzma.tif"
    path.write_bytes(_tiff([(256, 3, 1, 64), (257, 3, 1, 64), (258, 3, 1, 8),
                            (259, 3, 1, 34925), (262, 3, 1, 1), (273, 4, 1, 512),
                            (277, 3, 1, 1), (278, 3, 1, 64), (279, 4, 1, len(strip))], strip))
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    assert "TIFF strip 1 of 1 inflates to more than 73728 bytes, though it holds 4096 " \
        "(LZMA decompression bomb)" in one_line(err, path)
