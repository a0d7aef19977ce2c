"""read_checkpoint reads the file once: what its checks passed is what torch.load loads."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from lightning_modules import checkpoint_file, model_limits
from lightning_modules.checkpoint_file import CheckpointError, read_checkpoint


def _save(path, value: float) -> None:
    torch.save({"w": torch.full((3,), value)}, path)


def test_a_file_swapped_after_the_checks_is_not_the_one_loaded(tmp_path, monkeypatch):
    """The file is replaced (os.replace, as a sync tool or an attacker would) after the CRC
    check: the loaded weights are still the checked file's."""
    path, other = tmp_path / "model.ckpt", tmp_path / "other.ckpt"
    _save(path, 1.0)
    _save(other, 7.0)
    checked = checkpoint_file._damaged_member

    def check_then_swap(archive):
        result = checked(archive)
        os.replace(other, path)
        return result

    monkeypatch.setattr(checkpoint_file, "_damaged_member", check_then_swap)
    ckpt = read_checkpoint(path, require_lightning=False)
    assert not other.exists()  # the swap happened
    assert torch.equal(ckpt["w"], torch.ones(3))
    monkeypatch.undo()
    assert torch.equal(read_checkpoint(path, require_lightning=False)["w"], torch.full((3,), 7.0))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_pipe_in_the_files_place_is_refused_at_once(tmp_path):
    """A pipe that replaced the file after the first look: refused, not waited on for ever."""
    fifo = tmp_path / "model.ckpt"
    os.mkfifo(fifo)
    errors: list[Exception] = []

    def read() -> None:
        try:
            model_limits.read_model_file(fifo)
        except ValueError as err:
            errors.append(err)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # unblock the reader before failing
        with open(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK), "wb"):
            pass
        pytest.fail("reading a pipe blocked")
    assert len(errors) == 1 and str(fifo) in str(errors[0])
    assert "not a regular file" in str(errors[0])


def test_a_file_that_changes_size_while_read_is_refused(tmp_path, monkeypatch):
    """The size read differs from the size stat gave (a copy still being written)."""
    path = tmp_path / "model.ckpt"
    _save(path, 1.0)
    real = os.fstat

    def smaller(fd):
        fields = list(real(fd))
        fields[6] -= 10  # st_size
        return os.stat_result(fields)

    monkeypatch.setattr(model_limits.os, "fstat", smaller)
    with pytest.raises(CheckpointError, match="changed while it was read") as err:
        read_checkpoint(path, require_lightning=False)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_file_over_the_limit_is_refused_by_the_reader_itself(tmp_path, monkeypatch):
    """read_model_file applies the limit itself (to the open file), not only the callers'
    first look at the path."""
    path = tmp_path / "model.ckpt"
    _save(path, 1.0)
    monkeypatch.setattr(model_limits, "MAX_MODEL_BYTES", path.stat().st_size - 1)
    with pytest.raises(ValueError, match="larger than the"):
        model_limits.read_model_file(path)


def test_a_folder_is_named_and_no_descriptor_is_left_open(tmp_path):
    """A folder where a model file is expected (an export's JSON made a folder): its own
    message, and the descriptor opened to look at it is closed."""
    folder = tmp_path / "model.json"
    folder.mkdir()
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for _ in range(20):
        with pytest.raises(ValueError, match="is a folder, not a model file"):
            model_limits.read_model_file(folder)
    if fds is not None:
        assert len(os.listdir("/proc/self/fd")) == fds


def test_a_corrupt_deflated_member_is_one_line(tmp_path):
    """A member stored deflated whose stream is broken: zlib's own error used to escape."""
    import struct
    import zipfile

    plain, packed = tmp_path / "plain.ckpt", tmp_path / "packed.ckpt"
    torch.save({"w": torch.zeros(20_000)}, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with zipfile.ZipFile(packed) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)  # the tensor's record
    raw = bytearray(packed.read_bytes())
    at = info.header_offset
    name_len, extra_len = struct.unpack("<HH", raw[at + 26 : at + 30])
    start = at + 30 + name_len + extra_len
    raw[start : start + 8] = b"\xff" * 8  # deflate block type 3: invalid
    packed.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(packed, require_lightning=False)
    assert str(packed) in str(err.value) and "\n" not in str(err.value)
