"""Formats OpenCV decodes behind a supported suffix, read by their headers first
(``datamodules/other_formats.py``). Red-team round 8: a 271-byte JPEG 2000 file of 65 025 tiles
x 64 components took 4.8 GB before failing; WebP EXIF and AVIF ``irot`` orientations were not
applied (a rotated or mirrored knee planned as stored, without a note); 12-bit PGM/PAM/JPEG 2000
samples were read 16x too dark; an animated GIF or WebP was read as its first frame silently.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from datamodules.image_io import ImageReadError, check_pixel_limit, header_size, load_image
from datamodules.other_formats import MAX_TILE_COMPONENTS

# a picture whose orientation shows: a bright block at the top left of a mid-gray field
PICTURE = np.full((60, 80), 60, np.uint8)
PICTURE[:15, :15] = 250


def _j2k(w: int, h: int, tile: int, comps: int, precision: int = 8) -> bytes:
    """A JPEG 2000 codestream header (SOC SIZ COD QCD EOC) without tile data."""
    siz = struct.pack(">HIIIIIIII", 0, w, h, 0, 0, tile, tile, 0, 0) + struct.pack(">H", comps)
    siz += bytes([precision - 1, 1, 1]) * comps
    cod = bytes([0, 0]) + struct.pack(">H", 1) + bytes([0, 5, 4, 4, 0, 1])
    qcd = bytes([0x40]) * 17
    seg = b"".join(m + struct.pack(">H", len(b) + 2) + b for m, b in (
        (b"\xff\x51", siz), (b"\xff\x52", cod), (b"\xff\x5c", qcd)))  # fmt: skip
    return b"\xff\x4f" + seg + b"\xff\xd9"


@pytest.mark.parametrize("w, tile, comps, expect", [
    (6120, 24, 64, "64 components"),
    (64, 64, 16384, "16384 components"),
    (6120, 24, 3, f"65025 tiles x 3 components (at most {MAX_TILE_COMPONENTS}"),
    (4096, 15, 1, "75076 tiles x 1 components"),
])  # fmt: skip
def test_jpeg2000_decoder_bombs_are_refused_from_the_header(tmp_path, w, tile, comps, expect):
    path = tmp_path / "k.png"
    path.write_bytes(_j2k(w, w, tile, comps))
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    assert str(err.value).startswith(f"{path}: a JPEG 2000 image of ") and expect in str(err.value)


def test_jpeg2000_size_is_read_for_the_pixel_cap(tmp_path, monkeypatch):
    monkeypatch.setenv("KNEEPLAN_MAX_PIXELS", "1000000")
    path = tmp_path / "k.png"
    path.write_bytes(_j2k(3000, 2000, 3000, 1, 12))
    assert header_size(path) == (3000, 2000, 1)
    with pytest.raises(ImageReadError, match="pixels"):
        check_pixel_limit(path)
    # inside a JP2 file: the codestream is the jp2c box's body
    jp2 = (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + struct.pack(">I", 20) + b"ftypjp2 " + bytes(8)
           + struct.pack(">I", 8 + len(_j2k(50, 40, 50, 1))) + b"jp2c" + _j2k(50, 40, 50, 1))
    (tmp_path / "k.jp2.tif").write_bytes(jp2)
    assert header_size(tmp_path / "k.jp2.tif") == (50, 40, 1)


def test_jpeg2000_of_12_bit_precision_is_read_on_its_range(tmp_path):
    """OpenCV returns the samples of a 12-bit codestream unscaled: the SIZ precision sets the
    range (the file: OpenCV's 16-bit codestream, relabelled 12-bit, samples 0..4095)."""
    ramp = (np.linspace(0, 4095, 80)[None, :] * np.ones((60, 1))).astype(np.uint16)
    ok, buf = cv2.imencode(".jp2", ramp + (32768 - 2048))  # the DC shift of a 12-bit stream
    data = bytearray(buf.tobytes())
    start = data.find(b"\xff\x4f\xff\x51")
    ssiz = start + 2 + 2 + 2 + 2 + 32 + 2
    assert ok and data[ssiz] == 15
    data[ssiz] = 11
    path = tmp_path / "k.png"
    path.write_bytes(bytes(data[start:]))
    loaded = load_image(path)
    decoded = cv2.imdecode(np.frombuffer(bytes(data[start:]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.max() <= 4095  # what OpenCV hands over: 12-bit samples in a 16-bit array
    np.testing.assert_allclose(loaded.image, decoded / 4095.0, atol=1e-6)
    assert any("0-4095 range its header declares" in n for n in loaded.notes)


@pytest.mark.parametrize("header, maxval, dtype", [
    (b"P5\n# a comment\n80 60\n4095\n", 4095, ">u2"),
    (b"P5 80 60 15\n", 15, "u1"),
    (b"P7\nWIDTH 80\nHEIGHT 60\nDEPTH 1\nMAXVAL 1023\nTUPLTYPE GRAYSCALE\nENDHDR\n", 1023, ">u2"),
])  # fmt: skip
def test_pnm_samples_are_read_on_their_maxval(tmp_path, header, maxval, dtype):
    samples = (PICTURE.astype(np.float64) / 255 * maxval).round().astype(dtype)
    path = tmp_path / "k.png"
    path.write_bytes(header + samples.tobytes())
    loaded = load_image(path)
    assert header_size(path) == (80, 60, 1)
    np.testing.assert_allclose(loaded.image, samples.astype(np.float64) / maxval, atol=1e-6)
    assert not loaded.lossy


def test_samples_above_the_declared_maxval_keep_the_type_range(tmp_path, monkeypatch):
    """A header that does not describe its samples is not believed, and that is said (OpenCV's
    PNM and JPEG 2000 decoders clip today; a decoder that does not is simulated)."""
    from datamodules import image_io

    path = tmp_path / "k.png"
    path.write_bytes(b"P5\n80 60\n300\n" + np.full((60, 80), 200, ">u2").tobytes())
    monkeypatch.setattr(image_io, "imdecode", lambda p, d, *a: np.full((60, 80), 600, np.uint16))
    loaded = load_image(path)
    assert any("above the 300 its header declares" in n for n in loaded.notes)
    np.testing.assert_allclose(loaded.image, 600 / 65535, atol=1e-7)


def _exif(orientation: int) -> bytes:
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 274, 3, 1, orientation, 0) + bytes(4)
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def _chunk(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


@pytest.mark.parametrize("orientation, shown", [(3, PICTURE[::-1, ::-1]), (2, PICTURE[:, ::-1]),
                                                (1, PICTURE)])  # fmt: skip
def test_webp_exif_orientation_is_applied(tmp_path, orientation, shown):
    ok, buf = cv2.imencode(".webp", PICTURE, [cv2.IMWRITE_WEBP_QUALITY, 101])  # lossless
    assert ok and buf.tobytes()[12:16] == b"VP8L"
    h, w = PICTURE.shape
    vp8x = _chunk(b"VP8X", bytes([0x08, 0, 0, 0]) + (w - 1).to_bytes(3, "little")
                  + (h - 1).to_bytes(3, "little"))
    body = b"WEBP" + vp8x + buf.tobytes()[12:] + _chunk(b"EXIF", _exif(orientation))
    path = tmp_path / "k.png"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    loaded = load_image(path)
    np.testing.assert_allclose(loaded.image, shown / 255.0, atol=1e-6)
    assert not loaded.lossy  # lossless inside an extended (VP8X) file
    assert any("orientation tag" in n for n in loaded.notes) == (orientation != 1)


@pytest.mark.parametrize("fmt, suffix", [("GIF", ".png"), ("WEBP", ".jpg")])
def test_animated_gif_and_webp_are_refused(tmp_path, fmt, suffix):
    from PIL import Image

    frames = [Image.fromarray(PICTURE), Image.fromarray(PICTURE[::-1].copy()),
              Image.fromarray(255 - PICTURE)]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=100)
    path = tmp_path / f"k{suffix}"
    path.write_bytes(buf.getvalue())
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    message = str(err.value)
    assert message.startswith(f"{path}: an animated ") and "one still image" in message
    # one frame of either is read, as before
    one = io.BytesIO()
    frames[0].save(one, format=fmt, lossless=True) if fmt == "WEBP" else frames[0].save(one, fmt)
    path.write_bytes(one.getvalue())
    np.testing.assert_allclose(load_image(path).image, PICTURE / 255.0, atol=1e-6)


def test_avif_with_a_rotation_is_refused(tmp_path):
    from PIL import Image, features

    if not features.check("avif"):
        pytest.skip("Pillow without AVIF")
    exif = Image.Exif()
    exif[274] = 3
    buf = io.BytesIO()
    Image.fromarray(PICTURE).convert("RGB").save(buf, format="AVIF", exif=exif, quality=100)
    if b"irot" not in buf.getvalue():
        pytest.skip("this Pillow writes no irot box")
    path = tmp_path / "k.png"
    path.write_bytes(buf.getvalue())
    with pytest.raises(ImageReadError, match=r"AVIF/HEIF image with a rotation of 180 deg"):
        load_image(path)


def test_lossy_warning_names_the_format(tmp_path):
    from planning.plan import input_warnings

    ok, buf = cv2.imencode(".webp", PICTURE, [cv2.IMWRITE_WEBP_QUALITY, 80])
    path = tmp_path / "k.png"
    path.write_bytes(buf.tobytes())
    warnings = input_warnings(load_image(path))
    assert warnings[0].startswith("lossy WebP input")


def test_header_walks_survive_cut_files(tmp_path):
    """Every header cut short is read or refused in one line, never a traceback."""
    ok, webp = cv2.imencode(".webp", PICTURE, [cv2.IMWRITE_WEBP_QUALITY, 101])
    samples = [_j2k(80, 60, 80, 1), b"P5\n80 60\n4095\n" + bytes(9600), webp.tobytes()]
    for data in samples:
        for cut in range(4, min(len(data), 200)):
            path = Path(tmp_path / "k.png")
            path.write_bytes(data[:cut])
            try:
                load_image(path)
            except ImageReadError as err:
                assert "\n" not in str(err)


def test_a_pnm_header_of_hashes_is_read_at_once():
    """Review of round 8: the PNM header regex ``(\\s|#...)+`` backtracked exponentially on a
    run of ``#`` (24 of them: 2.9 s, 40: hours). A fresh interpreter must finish at once."""
    import subprocess
    import sys

    code = ("from datamodules.other_formats import other_header as h; "
            "print(h('PNM (PBM/PGM/PPM)', b'P5\\n' + b'#' * 60 + b'\\n').size)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and done.stdout.strip() == "None", done.stderr


def test_ascii_pnm_is_read_as_opencv_scales_it(tmp_path):
    """OpenCV scales ASCII PGM (P2) samples to 0-255 itself: maxval is not applied again."""
    path = tmp_path / "k.png"
    path.write_bytes(b"P2\n3 1\n100\n0 20 39\n")
    decoded = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_allclose(load_image(path).image, decoded / 255.0, atol=1e-6)


def test_a_jp2_that_hides_its_codestream_behind_many_boxes_is_refused(tmp_path):
    """A walk that gave up let OpenJPEG decode a 65 025-tile codestream after 4097 boxes."""
    from datamodules.other_formats import MAX_RECORDS

    stream = _j2k(6120, 6120, 24, 3)
    jp2 = (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + struct.pack(">I", 20) + b"ftypjp2 " + bytes(8)
           + (struct.pack(">I", 8) + b"free") * (MAX_RECORDS + 1)
           + struct.pack(">I", 8 + len(stream)) + b"jp2c" + stream)
    path = tmp_path / "k.png"
    path.write_bytes(jp2)
    with pytest.raises(ImageReadError, match="codestream box .jp2c. was not found"):
        load_image(path)


def test_a_gif_that_hides_its_second_image_behind_many_blocks_is_refused(tmp_path):
    from PIL import Image

    from datamodules.other_formats import MAX_GIF_BLOCKS

    buf = io.BytesIO()
    frames = [Image.fromarray(PICTURE), Image.fromarray(255 - PICTURE)]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    data = buf.getvalue()
    packed = data[10]  # after the header and its global colour table, before any block
    first = 13 + (3 * 2 ** ((packed & 7) + 1) if packed & 0x80 else 0)
    comment = b"\x21\xfe" + b"\x01a" * (MAX_GIF_BLOCKS + 1) + b"\x00"
    path = tmp_path / "k.png"
    path.write_bytes(data[:first] + comment + data[first:])
    with pytest.raises(ImageReadError, match="more than 1000000 data blocks"):
        load_image(path)


def test_a_webp_of_many_chunks_is_refused(tmp_path):
    from datamodules.other_formats import MAX_RECORDS

    ok, buf = cv2.imencode(".webp", PICTURE, [cv2.IMWRITE_WEBP_QUALITY, 101])
    body = b"WEBP" + buf.tobytes()[12:] + _chunk(b"XMP ", b"") * (MAX_RECORDS + 1)
    path = tmp_path / "k.png"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    with pytest.raises(ImageReadError, match=f"more than {MAX_RECORDS} chunks"):
        load_image(path)
