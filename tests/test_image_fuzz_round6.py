"""Reader robustness found after fuzz round 5 (review of the image commit): a native decoder
that aborts the process, pydicom's wrong-length elements, and 8-bit LUTs stored in OW."""

from __future__ import annotations

import multiprocessing
import os
import struct
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

from datamodules.decoder_messages import decoder_messages
from datamodules.forked_decode import DecoderCrashed, DecoderFailed, decode_in_child
from datamodules.image_io import load_image
from tests.test_image_fuzz_round5 import _dataset, _one_line_error, _ramp, _save

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork only")


def _jpeg_dicom(tmp_path: Path, name: str, damage: bool = False) -> tuple[Path, np.ndarray]:
    """An 8-bit JPEG Baseline DICOM and OpenCV's own decode of its frame; ``damage`` turns the
    first DHT marker (FF C4) into FF 01, which makes GDCM abort the process."""
    pixels = (_ramp() * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", pixels)
    assert ok
    frame = buf.tobytes()
    expected = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    if damage:
        at = frame.index(b"\xff\xc4")
        frame = frame[:at + 1] + b"\x01" + frame[at + 2:]
    ds = _dataset(pixels)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return _save(ds, tmp_path / name), expected


@needs_fork
def test_a_decoder_abort_is_one_line_and_this_process_lives_on(tmp_path):
    path, _ = _jpeg_dicom(tmp_path, "abort.dcm", damage=True)
    msg = _one_line_error(path, "cannot decode DICOM pixel data", "decoder crashed",
                          "malformed")
    assert "SIGABRT" in msg or "SIGSEGV" in msg, msg
    good, expected = _jpeg_dicom(tmp_path, "good.dcm")  # and the next file is read as before
    loaded = load_image(good)
    assert np.abs(loaded.image * 255 - expected).max() <= 2  # libjpeg vs GDCM's IDCT rounding
    assert loaded.lossy


def _abort() -> np.ndarray:
    os.abort()


def _sleep() -> np.ndarray:
    time.sleep(30)
    return np.zeros(1)


def _raise() -> np.ndarray:
    raise ValueError("bad\nstream")


@needs_fork
@pytest.mark.parametrize("dtype", ["<u2", ">u2", "|u1", "<i4", "<f4", "|b1"])
def test_the_array_comes_back_whole(dtype):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 200, size=(37, 53)).astype(dtype)
    out = decode_in_child(lambda: arr, str)
    assert out.dtype == arr.dtype and out.shape == arr.shape and np.array_equal(out, arr)
    out[0, 0] = 1  # the caller may write to it (bit clearing does)


@needs_fork
def test_a_non_contiguous_and_an_empty_array_come_back():
    arr = np.arange(100, dtype=np.uint16).reshape(10, 10)[:, ::3]
    assert np.array_equal(decode_in_child(lambda: arr, str), arr)
    assert decode_in_child(lambda: np.zeros((0, 4), np.uint8), str).shape == (0, 4)


@needs_fork
def test_a_crash_a_hang_and_an_error_in_the_child():
    with pytest.raises(DecoderCrashed, match="crashed \\(SIGABRT\\)"):
        decode_in_child(_abort, str)
    start = time.monotonic()
    with pytest.raises(DecoderCrashed, match="longer than 1 s"):
        decode_in_child(_sleep, str, timeout_s=1.0)
    assert time.monotonic() - start < 10  # killed, not waited for
    with pytest.raises(DecoderFailed) as info:
        decode_in_child(_raise, lambda err: f"{type(err).__name__}: {err!s:.3}")
    assert str(info.value) == "ValueError: bad"


@needs_fork
def test_without_a_process_to_spare_it_decodes_here(monkeypatch):
    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
    assert decode_in_child(lambda: np.arange(3, dtype=np.uint8), str).tolist() == [0, 1, 2]
    if before:
        assert len(os.listdir("/proc/self/fd")) == before  # the pipe was closed


def _noisy() -> np.ndarray:
    import warnings

    os.write(2, b"libfoo: corrupt data\n")
    warnings.warn("pydicom-like warning", UserWarning, stacklevel=1)
    return np.ones((2, 2), np.uint8)


@needs_fork
def test_what_the_child_prints_reaches_the_callers_collector(capfd):
    with decoder_messages() as said:
        out = decode_in_child(_noisy, str)
    assert out.sum() == 4
    assert "libfoo: corrupt data" in said and "pydicom-like warning" in said
    assert "libfoo" not in capfd.readouterr().err


def _in_daemon(queue) -> None:
    try:
        queue.put(int(decode_in_child(lambda: np.full(3, 7, np.uint8), str).sum()))
    except Exception as err:  # noqa: BLE001 - reported to the test
        queue.put(repr(err))


@needs_fork
@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_it_works_inside_a_daemon_process_like_a_dataloader_worker():
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_in_daemon, args=(queue,), daemon=True)
    proc.start()
    assert queue.get(timeout=60) == 21
    proc.join(60)


def _widen(path: Path, tag: tuple[int, int], vr: bytes) -> Path:
    """``path`` with one more byte in element ``tag``'s value (and its length)."""
    data = path.read_bytes()
    key = struct.pack("<HH", *tag) + vr
    at = data.index(key)
    (n,) = struct.unpack("<H", data[at + 6:at + 8])
    out = data[:at + 6] + struct.pack("<H", n + 1) + data[at + 8:at + 8 + n] + b"\x07"
    path.write_bytes(out + data[at + 8 + n:])
    return path


@pytest.mark.parametrize(("tag", "keyword"), [((0x28, 0x10), "Rows"),
                                              ((0x28, 0x101), "BitsStored"),
                                              ((0x28, 0x103), "PixelRepresentation")])
def test_an_element_of_the_wrong_length_is_named(tmp_path, tag, keyword):
    path = _save(_dataset((_ramp() * 255).astype(np.uint8)), tmp_path / "len.dcm")
    _widen(path, tag, b"US")
    msg = _one_line_error(path, f"({tag[0]:04X},{tag[1]:04X}) {keyword} holds 3 bytes",
                          "not a whole number of 2-byte values", "damaged")
    assert "\\x" not in msg  # pydicom quotes the raw bytes; they are left out


def test_a_file_meta_group_length_of_the_wrong_length_is_named(tmp_path):
    path = _save(_dataset((_ramp() * 255).astype(np.uint8)), tmp_path / "meta.dcm")
    data = bytearray(path.read_bytes())
    assert data[132:138] == b"\x02\x00\x00\x00UL"
    data[138:140] = struct.pack("<H", 5)  # 5 bytes of UL: the next element starts one later
    path.write_bytes(bytes(data[:144]) + b"\x00" + bytes(data[144:]))
    _one_line_error(path, "unreadable DICOM", "(0002,0000) FileMetaInformationGroupLength",
                    "holds 5 bytes", "4-byte values")


def _lut_dataset(data: bytes | list[int], descriptor: list[int], sequence: str) -> Dataset:
    """A 12-bit ramp image with one LUT item (LUT Data as OW bytes or a US list)."""
    pixels = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)
    ds = _dataset(pixels, bits_stored=12)
    item = Dataset()
    item.add(DataElement(0x00283002, "US", descriptor))
    item.add(DataElement(0x00283006, "OW" if isinstance(data, bytes) else "US", data))
    setattr(ds, sequence, [item])
    return ds


@pytest.mark.parametrize("vr", ["OW", "US"])
@pytest.mark.parametrize("sequence", ["VOILUTSequence", "ModalityLUTSequence"])
def test_an_8_bit_lut_of_4096_entries_is_applied_entry_by_entry(tmp_path, vr, sequence):
    """PS3.3 C.11.2.1.1: 8-bit LUT Data in OW is stored "equivalent to 8 bits allocated", one
    byte per entry (pydicom unpacks OW as 16-bit words and failed); and pydicom indexes an 8-bit
    VOI LUT with uint8, so pixel 256 read entry 0."""
    lut = (255 - np.arange(4096) // 16).astype(np.uint8)  # a falling ramp: visible if ignored
    data = lut.tobytes() if vr == "OW" else lut.tolist()
    ds = _lut_dataset(data, [4096, 0, 8], sequence)
    path = _save(ds, tmp_path / "voi8.dcm")
    loaded = load_image(path)
    pixels = np.asarray(ds.pixel_array)
    shown = lut[pixels].astype(np.float64)
    expected = (shown - shown.min()) / (shown.max() - shown.min())
    np.testing.assert_allclose(loaded.image, expected, atol=1e-6)


def test_a_short_8_bit_lut_counts_its_bytes_and_one_value_is_singular(tmp_path):
    ds = _lut_dataset(bytes(100), [4096, 0, 8], "VOILUTSequence")
    _one_line_error(_save(ds, tmp_path / "short8.dcm"), "holds 100 values",
                    "declares 4096 entries")
    ds = _lut_dataset(b"\x00\x01", [4096, 0, 16], "ModalityLUTSequence")
    msg = _one_line_error(_save(ds, tmp_path / "one.dcm"), "holds 1 value,")
    assert "1 values" not in msg
