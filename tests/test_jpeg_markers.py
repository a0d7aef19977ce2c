"""The bounded JPEG marker walk (datamodules/jpeg_markers.py) and the readers that use it:
segments as a hand-written file lays them out, fill bytes skipped, too many segments refused in
one line (red-team round 7: 80 MB of empty comment segments kept `plan` busy for 73 s)."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from datamodules.decode_guards import jpeg_scan_problem
from datamodules.dicom_frames import codestream_problem, jpeg_frame_sizes
from datamodules.image_io import ImageReadError, header_size, load_image
from datamodules.jpeg_markers import MAX_JPEG_SEGMENTS, JpegSegmentError, Segment, jpeg_segments


def seg(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def sof(width: int, height: int) -> bytes:
    return seg(0xC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")


def real_jpeg() -> bytes:
    img = (np.add.outer(np.arange(120), np.arange(90)) % 256).astype(np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def test_segments_where_a_hand_written_file_puts_them():
    data = (b"\xff\xd8" + seg(0xE0, b"JFIF\x00" + b"\x00" * 9) + b"\xff\xff\xff"  # fill bytes
            + seg(0xFE, b"hi") + sof(40, 30) + seg(0xDA, b"\x01\x01\x00\x00\x3f\x00")
            + b"\x12\x34\xff\x00\x56\xff\xd0\x78" + b"\xff\xd9")
    walk = list(jpeg_segments(data))
    assert walk == [Segment(0xE0, 4, 16), Segment(0xFE, 25, 4), Segment(0xC0, 31, 11),
                    Segment(0xDA, 44, 8)]  # ends at the scan header
    through = list(jpeg_segments(data, through_scans=True))
    assert through[-2:] == [Segment(0xDA, 44, 8), Segment(0xD9, len(data), 0)]
    # the stuffed 0xFF00 and the RST0 inside the entropy-coded data are not markers
    assert [s.marker for s in through] == [0xE0, 0xFE, 0xC0, 0xDA, 0xD9]
    assert jpeg_frame_sizes(data) == [(40, 30, 1, 0xC0, 8)]


def test_resync_skips_bytes_that_are_not_markers_as_libjpeg_does():
    data = b"\xff\xd8" + seg(0xFE, b"x") + b"junk" + sof(64, 48) + seg(0xDA, b"\x00" * 6)
    assert [s.marker for s in jpeg_segments(data)] == [0xFE]  # a strict walk ends at the junk
    assert [s.marker for s in jpeg_segments(data, resync=True)] == [0xFE, 0xC0, 0xDA]
    assert jpeg_frame_sizes(data) == [(64, 48, 1, 0xC0, 8)]


def test_fill_bytes_change_nothing_the_readers_see(tmp_path):
    body = real_jpeg()
    plain, filled = tmp_path / "plain.jpg", tmp_path / "filled.jpg"
    plain.write_bytes(body)
    filled.write_bytes(body[:2] + b"\xff" * 3_000_000 + body[2:])
    assert header_size(plain) == header_size(filled) == (90, 120, 1)
    assert jpeg_scan_problem(filled.read_bytes()) is None
    a, b = load_image(plain), load_image(filled)
    np.testing.assert_array_equal(a.image, b.image)


@pytest.mark.parametrize("count, refused", [(MAX_JPEG_SEGMENTS - 10, False),
                                            (MAX_JPEG_SEGMENTS + 1, True)])
def test_too_many_empty_segments_are_refused_in_one_line(tmp_path, count, refused):
    body = real_jpeg()
    path = tmp_path / "padded.jpg"
    path.write_bytes(body[:2] + seg(0xFE, b"") * count + body[2:])
    data = path.read_bytes()
    if not refused:
        assert header_size(path) == (90, 120, 1)
        assert jpeg_scan_problem(data) is None
        assert load_image(path).image.shape == (120, 90)
        return
    with pytest.raises(JpegSegmentError):
        list(jpeg_segments(data))
    assert "marker segments" in jpeg_scan_problem(data)
    assert "marker segments" in codestream_problem(data, {}, 10**8)
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    message = str(err.value)
    assert message.startswith(f"{path}: JPEG with more than {MAX_JPEG_SEGMENTS} marker")
    assert "\n" not in message
