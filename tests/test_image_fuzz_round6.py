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


def _jpeg_dicom(tmp_path: Path, name: str, damage: bool = False,
                stray: bool = False) -> tuple[Path, np.ndarray]:
    """An 8-bit JPEG Baseline DICOM and OpenCV's own decode of its frame; ``damage`` turns the
    first DHT marker (FF C4) into FF 01, which makes GDCM abort the process; ``stray`` puts a
    0x00 byte before the first DHT marker (GDCM aborts, libjpeg skips it)."""
    pixels = (_ramp() * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", pixels)
    assert ok
    frame = buf.tobytes()
    expected = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    at = frame.index(b"\xff\xc4")
    if damage:
        frame = frame[:at + 1] + b"\x01" + frame[at + 2:]
    if stray:
        frame = frame[:at] + b"\x00" + frame[at:]
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


@needs_fork
def test_after_a_gdcm_crash_pillow_reads_what_it_can(tmp_path):
    """fuzz round 6: one stray byte before a JPEG marker aborts GDCM; Pillow (libjpeg) decodes
    the original pixels, and the plan's notes say which decoder did."""
    path, expected = _jpeg_dicom(tmp_path, "stray.dcm", stray=True)
    loaded = load_image(path)
    assert np.abs(loaded.image * 255 - expected).max() <= 1  # libjpeg both
    assert any("GDCM crashed" in n and "Pillow decoded" in n for n in loaded.notes), loaded.notes
    msg = _one_line_error(_jpeg_dicom(tmp_path, "abort.dcm", damage=True)[0], "decoder crashed")
    assert "cannot identify image file" not in msg and "0x" not in msg  # Pillow's failure


def test_a_broken_deflate_stream_is_one_line(tmp_path):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = _dataset((_ramp() * 255).astype(np.uint8))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    path = _save(ds, tmp_path / "deflated.dcm")
    assert load_image(path).image.shape == (96, 80)  # whole: read
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # the deflated dataset cut short
    _one_line_error(path, "unreadable DICOM", "truncated")


def _abort() -> np.ndarray:
    os.abort()


def _killed() -> np.ndarray:
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
    return np.zeros(1)


@needs_fork
def test_a_killed_decoder_is_not_called_a_malformed_stream():
    """Review of session 19: the OOM killer's SIGKILL read as a malformed stream (and sent a
    legal file to a second decoder)."""
    with pytest.raises(DecoderCrashed, match="killed .SIGKILL; out of memory"):
        decode_in_child(_killed, str)


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


@needs_fork
def test_descriptors_above_1024_and_an_ignored_sigchld(monkeypatch):
    """select.select cannot watch a descriptor >= 1024; a host that ignores SIGCHLD has its
    children reaped for it (waitpid: ECHILD)."""
    import resource
    import signal

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1100:
        pytest.skip("cannot open 1100 descriptors here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1100), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1050)]
    try:
        assert decode_in_child(lambda: np.ones(4, np.uint8), str).sum() == 4
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        assert decode_in_child(lambda: np.ones(4, np.uint8), str).sum() == 4
        with pytest.raises(DecoderCrashed, match="crashed|without a result"):
            decode_in_child(_abort, str)
    finally:
        signal.signal(signal.SIGCHLD, old)


_ORPHAN = """
import os, sys, time
import numpy as np
from datamodules.forked_decode import decode_in_child

def hang():
    with open(sys.argv[1], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)
    return np.zeros(1)

decode_in_child(hang, str)
"""


@needs_fork
@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_reader_leaves_no_decoder_behind(tmp_path):
    import signal
    import subprocess

    pid_file = tmp_path / "child.pid"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", _ORPHAN, str(pid_file)], cwd=root)
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    proc.send_signal(signal.SIGKILL)  # a DataLoader worker terminated, a scheduler's kill
    proc.wait(30)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    state = Path(f"/proc/{child}/stat").read_text().split()[2] if Path(
        f"/proc/{child}/stat").exists() else "gone"
    assert state in ("gone", "Z"), state  # (a zombie until init reaps it)


def _chatty() -> np.ndarray:
    import warnings

    for i in range(40_000):
        warnings.warn(f"warning {i}", UserWarning, stacklevel=1)
    return np.ones(2, np.uint8)


@needs_fork
def test_a_decoder_that_says_too_much_is_cut_not_called_a_crash():
    import warnings

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert decode_in_child(_chatty, str).sum() == 2
    assert 0 < len(said) <= 50


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


def test_an_8_bit_lut_in_16_bit_words_is_read_as_such(tmp_path):
    """fuzz round 6: LUT Data of one 16-bit word per 8-bit entry (twice the entry count in
    bytes) was left to pydicom's uint8 index, which wrapped at entry 256."""
    lut = (255 - np.arange(4096) // 16).astype(np.uint16)
    ds = _lut_dataset(lut.astype("<u2").tobytes(), [4096, 0, 8], "VOILUTSequence")
    loaded = load_image(_save(ds, tmp_path / "voi8w.dcm"))
    shown = lut[np.asarray(ds.pixel_array)].astype(np.float64)
    np.testing.assert_allclose(loaded.image, (shown - shown.min()) / np.ptp(shown), atol=1e-6)


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
