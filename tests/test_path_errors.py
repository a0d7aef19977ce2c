"""Paths that cannot be read (red team round 6, rt6_io items 2, 3, 11): a symlink loop, a folder
that may not be entered, an extension-less DICOM in a folder and an annotation that is a loop, a
pipe or a device. Each is one line naming the file and the problem (never a traceback), status 1,
and in batch mode the other images are still planned."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from model_files import REPO, exported_tiny_model, phantom_images

from planning.batch import ImageListError, expand_images, overwritten_inputs
from planning.plan import PlanInputError, load_input, main


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _loop(path: Path) -> Path:
    """A symlink pointing at itself."""
    os.symlink(path.name, path)
    return path


def _dummy_model(tmp_path: Path) -> Path:
    """A model file that passes the early checks; the tests using it stop before it loads."""
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not read: the image fails first")
    return model


def _plan_errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [ln for ln in err.splitlines() if ln.startswith("plan: error: ")]


# ---- symlink loops ------------------------------------------------------------------------


def test_load_input_symlink_loop_is_a_plan_input_error(tmp_path):
    link = _loop(tmp_path / "self.png")
    with pytest.raises(PlanInputError, match=r"self\.png: symlink loop"):
        load_input(link)
    bare = _loop(tmp_path / "rootloop")  # no suffix
    with pytest.raises(PlanInputError, match="rootloop: symlink loop"):
        load_input(bare)


@pytest.mark.parametrize("name", ["self.png", "rootloop"])
def test_symlink_loop_as_image_is_one_line(tmp_path, capsys, name):
    link = _loop(tmp_path / name)
    rc = main(["--image", str(link), "--ckpt", str(_dummy_model(tmp_path)),
               "--out", str(tmp_path / "out")])
    errors = _plan_errors(capsys)
    assert rc == 1
    assert errors == [f"plan: error: {link}: symlink loop (a link that leads back to itself)"]


def test_overwritten_inputs_survives_a_symlink_loop(tmp_path):
    good = tmp_path / "a.png"
    good.write_bytes(b"x")
    paths = [good, _loop(tmp_path / "self.png")]
    assert overwritten_inputs(paths, tmp_path / "out") == []
    assert overwritten_inputs(paths, tmp_path) == []  # a_plan.png is not an input


def test_symlink_loop_in_a_folder_is_its_own_row(tmp_path_factory, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    good = phantom_images(tmp_path_factory, n=1)[0]
    shutil.copy(good, folder / good.name)
    _loop(folder / "self.png")
    out = tmp_path / "out"
    rc = main(["--image", str(folder), "--ckpt", str(exported_tiny_model(tmp_path_factory)),
               "--out", str(out), "--tta", "0"])
    errors = _plan_errors(capsys)
    assert rc == 1
    assert errors == [f"plan: error: {folder / 'self.png'}: symlink loop (a link that leads "
                      "back to itself)"]
    rows = {Path(r["image"]).name: r for r in _rows(out / "summary.csv")}
    assert rows[good.name]["status"] == "ok" and rows["self.png"]["status"] == "failed"


# ---- folders that may not be entered (a real EACCES: root without its DAC capabilities) ----


def _unprivileged(*args: str) -> subprocess.CompletedProcess:
    """Run ``python args`` where file modes apply: as root, without CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH (setpriv), as the red team did."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        drop = [setpriv or "setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
        if setpriv is None or subprocess.run([*drop, "true"], capture_output=True).returncode:
            pytest.skip("running as root and cannot drop CAP_DAC_* with setpriv: file modes "
                        "do not apply, so no permission error can be produced")
        prefix = drop
    env = dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="disabled",
               NO_ALBUMENTATIONS_UPDATE="1")
    return subprocess.run([*prefix, sys.executable, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def locked(tmp_path, tmp_path_factory):
    """``locked/x.png`` in a folder of mode 600 (listable, not enterable); restored after."""
    folder = tmp_path / "locked"
    folder.mkdir()
    shutil.copy(phantom_images(tmp_path_factory, n=1)[0], folder / "x.png")
    folder.chmod(0o600)
    yield folder
    folder.chmod(0o700)


def _one_error_line(proc: subprocess.CompletedProcess, prog: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def _plan_refused(image: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, str]:
    """``plan --image image`` run where file modes apply: status 1 and its one error line."""
    proc = _unprivileged("-m", "planning.plan", "--image", str(image),
                         "--ckpt", str(_dummy_model(tmp_path)), "--out", str(tmp_path / "out"))
    line = _one_error_line(proc, "plan")
    assert proc.returncode == 1, proc.stderr
    return proc, line


@pytest.mark.parametrize("inside", [True, False], ids=["image_inside", "the_folder"])
def test_image_or_folder_that_may_not_be_entered(inside, locked, tmp_path):
    """An image in a folder of mode 600, or that folder as --image."""
    image = locked / "x.png" if inside else locked
    proc, line = _plan_refused(image, tmp_path)
    assert line.startswith(f"plan: error: {image}: permission denied"), line
    assert proc.stderr.count("\n") == 1, proc.stderr


def test_image_that_may_not_be_read(tmp_path, tmp_path_factory):
    image = tmp_path / "x.png"
    shutil.copy(phantom_images(tmp_path_factory, n=1)[0], image)
    image.chmod(0o000)
    _, line = _plan_refused(image, tmp_path)
    assert line.startswith(f"plan: error: {image}: permission denied"), line


def test_unreadable_image_in_a_batch_is_its_own_row(locked, tmp_path, tmp_path_factory):
    folder = tmp_path / "in"
    folder.mkdir()
    good = phantom_images(tmp_path_factory, n=1)[0]
    shutil.copy(good, folder / good.name)
    (folder / "hidden.png").symlink_to(locked / "x.png")
    out = tmp_path / "out"
    proc = _unprivileged("-m", "planning.plan", "--image", str(folder), "--tta", "0",
                         "--ckpt", str(exported_tiny_model(tmp_path_factory)), "--out", str(out))
    line = _one_error_line(proc, "plan")
    assert proc.returncode == 1, proc.stderr
    assert line.startswith(f"plan: error: {folder / 'hidden.png'}: permission denied"), line
    rows = {Path(r["image"]).name: r for r in _rows(out / "summary.csv")}
    assert rows[good.name]["status"] == "ok" and rows["hidden.png"]["status"] == "failed"


def test_dataset_images_folder_that_may_not_be_entered(tmp_path, tmp_path_factory):
    root = tmp_path / "ds"
    shutil.copytree(phantom_images(tmp_path_factory, n=1)[0].parents[1], root)
    (root / "images").chmod(0o600)
    try:
        code = ("from datamodules.dataset_io import DatasetError, image_files\n"
                "try:\n"
                f"    image_files({str(root)!r})\n"
                "except DatasetError as err:\n"
                "    print('ERROR=' + str(err))\n")
        proc = _unprivileged("-c", code)
    finally:
        (root / "images").chmod(0o700)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert f"ERROR={root / 'images'}: permission denied" in proc.stdout, proc.stdout


def test_expand_images_does_not_raise_on_a_permission_error(tmp_path, monkeypatch):
    """Where no real permission error can be produced (root): every stat of the locked
    folder's contents is refused, as the kernel does without the x bit."""
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "x.png").write_bytes(b"x")
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if str(path).startswith(str(locked) + os.sep):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    assert expand_images(str(locked / "x.png")) == ([locked / "x.png"], False)
    with pytest.raises(PlanInputError, match="x.png: permission denied"):
        load_input(locked / "x.png")
    with pytest.raises(ImageListError, match="locked: permission denied"):
        expand_images(str(locked))


# ---- extension-less DICOM files in a folder (item 3) -------------------------------------------


def test_folder_lists_extension_less_dicom_files(tmp_path):
    from dicom_files import write_dicom

    pixels = (np.arange(64 * 64).reshape(64, 64) % 4000).astype(np.uint16)
    write_dicom(tmp_path / "IM0001", pixels)
    write_dicom(tmp_path / "1.2.840.113619.2.55", pixels)  # a UID as the name
    (tmp_path / "README").write_text("not an image\n")
    (tmp_path / "EMPTY").write_bytes(b"")
    os.mkfifo(tmp_path / "PIPE")  # never opened: it would block
    (tmp_path / "a.png").write_bytes(b"x")
    files, many = expand_images(str(tmp_path))
    assert many and [p.name for p in files] == ["1.2.840.113619.2.55", "IM0001", "a.png"]
    assert load_input(tmp_path / "IM0001").image.shape == (64, 64)


# ---- annotation that is a loop, a pipe or a device (item 4) ---------------------------------


@pytest.mark.parametrize("kind", ["loop", "fifo", "device", "big"])
def test_unusable_annotation_is_a_warning(tmp_path_factory, tmp_path, capsys, kind):
    from planning.plan import annotation_spacing

    root = tmp_path / "ds"
    shutil.copytree(phantom_images(tmp_path_factory, n=1)[0].parents[1], root)
    image = next((root / "images").glob("*.png"))
    ann = root / "annotations" / f"{image.stem}.json"
    assert annotation_spacing(image) is not None
    ann.unlink()
    assert annotation_spacing(image) is None  # none: no warning
    assert capsys.readouterr().err == ""
    if kind == "loop":
        _loop(ann)
    elif kind == "fifo":
        os.mkfifo(ann)
    elif kind == "device":
        ann.symlink_to("/dev/zero")
    else:
        with ann.open("wb") as f:
            f.truncate(11_000_000)
    assert annotation_spacing(image) is None
    err = capsys.readouterr().err
    why = {"loop": "symlink loop", "fifo": "not a regular file", "device": "not a regular file",
           "big": "larger than 10 MB"}[kind]
    assert err.startswith(f"plan: warning: ignoring annotation spacing: {ann}: {why}"), err
    assert err.count("\n") == 1, err
    assert annotation_spacing(image, warn=False) is None
    assert capsys.readouterr().err == ""


def test_validate_a_dataset_whose_images_folder_may_not_be_entered(tmp_path, tmp_path_factory):
    """``python -m datamodules.validate`` ended in a traceback there (one error line now)."""
    root = tmp_path / "ds"
    shutil.copytree(phantom_images(tmp_path_factory, n=1)[0].parents[1], root)
    (root / "images").chmod(0o600)
    try:
        proc = _unprivileged("-m", "datamodules.validate", str(root))
    finally:
        (root / "images").chmod(0o700)
    assert "Traceback" not in proc.stderr and proc.returncode == 1, proc.stderr
    assert f"{root / 'images'}: permission denied" in proc.stdout + proc.stderr


def test_folder_mode_skips_a_dicomdir(tmp_path, tmp_path_factory):
    """A CD or PACS export folder holds a DICOMDIR (DICM at byte 128, an index, no image): it
    was listed, failed its row and made plan exit 1 (found by review)."""
    import pydicom.data

    from planning.batch import expand_images

    index = next(f for f in pydicom.data.get_testdata_files() if f.endswith("/DICOMDIR"))
    shutil.copy(index, tmp_path / "DICOMDIR")
    shutil.copy(index, tmp_path / "INDEX0")  # the same by its SOP class, whatever its name
    shutil.copy(phantom_images(tmp_path_factory, n=1)[0], tmp_path / "knee.png")
    files, many = expand_images(str(tmp_path))
    assert many and [f.name for f in files] == ["knee.png"]
