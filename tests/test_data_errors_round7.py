"""Red-team round 7, data side: an error raised in a DataLoader worker reaches the user as its
own line (torch put the worker's traceback into the message), an empty mask file is named as
such (OpenCV answered with an assertion), degenerate labels (landmarks on top of each other,
a cortex line a fraction of a pixel long) are errors, not training targets, and a mask named
in another case or Unicode form is one line saying so, not "missing" plus "orphan"."""

from __future__ import annotations

import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from torch._utils import ExceptionWrapper

from datamodules.annotations import check_annotation
from datamodules.dataset_io import DatasetError, read_mask, worker_original, write_sample
from datamodules.image_io import ImageReadError
from datamodules.validate import validate_dataset
from tests.small_datasets import annotation, small_sample

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", [DatasetError, ImageReadError])
def test_an_error_from_a_worker_is_reported_by_its_own_line(kind):
    try:
        raise kind("/data/masks/k_femur.png: unreadable or truncated mask")
    except kind:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(kind) as err:
        wrapped.reraise()  # what the DataLoader does in the main process
    assert "Original Traceback" in str(err.value)  # torch's own wording, which we undo
    assert worker_original(err.value) == "/data/masks/k_femur.png: unreadable or truncated mask"
    plain = DatasetError("/data/a.png: broken")
    assert worker_original(plain) == "/data/a.png: broken"


def test_an_empty_mask_file_is_named_empty(tmp_path):
    path = tmp_path / "k_femur.png"
    path.write_bytes(b"")
    with pytest.raises(DatasetError) as err:
        read_mask(path)
    assert str(err.value) == f"{path}: the mask file is empty (0 bytes)"


def test_landmarks_on_top_of_each_other_are_an_error():
    check = check_annotation(annotation(lm_p_tmc=[20.5, 12.5]), "k", "k.png", (40, 50))
    assert any("landmarks p_blum and p_tmc coincide" in e for e in check.errors), check.errors
    apart = check_annotation(annotation(lm_p_tmc=[20.0, 16.0]), "k", "k.png", (40, 50))
    assert not apart.errors, apart.errors


def test_a_cortex_line_shorter_than_two_pixels_is_an_error():
    short = annotation(r_cortex_line=[[12.0, 2.0], [12.0005, 2.0008], [12.001, 2.001]])
    check = check_annotation(short, "k", "k.png", (40, 50))
    assert any("cortex_line points span 0.00141 px" in e for e in check.errors), check.errors
    longer = annotation(r_cortex_line=[[12.0, 2.0], [12.5, 4.0]])
    assert not check_annotation(longer, "k", "k.png", (40, 50)).errors


@pytest.mark.slow  # one fresh interpreter with a DataLoader worker (~15 s on 2 busy cores)
def test_train_names_a_mask_that_breaks_in_a_worker(tmp_path):
    """validate: false (or a file changed after validation) lets the empty mask reach a worker;
    before, the error line held the worker's 2 kB traceback."""
    root = tmp_path / "data"
    for i in range(4):
        write_sample(root, small_sample(f"k{i}", seed=i))
    (root / "masks" / "k0_femur.png").write_bytes(b"")
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    res = subprocess.run(
        [sys.executable, "-m", "lightning_modules.train", "--config",
         str(REPO / "configs" / "tiny.yaml"), "--data-root", str(root), "--data.validate", "false",
         "--data.num_workers", "1", "--data.size", "32", "--trainer.max_epochs", "1",
         "--run.root", str(tmp_path / "runs")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("train: error:")]
    assert res.returncode == 1, res.stderr[-2000:]
    assert lines == [f"train: error: {root / 'masks' / 'k0_femur.png'}: the mask file is empty "
                     "(0 bytes)"], res.stderr[-2000:]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("rename", [
    lambda name: name.removesuffix(".png") + ".PNG",  # saved by a tool that upper-cases
    lambda name: name.upper().removesuffix(".PNG") + ".png",  # the id in another case
], ids=["suffix", "case"])
def test_masks_named_in_another_case_get_one_line_each_not_missing_plus_orphan(tmp_path, rename):
    root = tmp_path / "data"
    for i in range(2):
        write_sample(root, small_sample(f"k{i}", seed=i))
    for mask in sorted((root / "masks").glob("k0_*.png")):
        mask.rename(mask.with_name(rename(mask.name)))
    report = validate_dataset(root)
    messages = [(Path(i.path).name, i.message) for i in report.errors]
    assert len(messages) == 4, messages
    assert all("rename it k0_" in m and "missing" not in m and "orphan" not in m
               for _, m in messages), messages
    with pytest.raises(DatasetError, match=r"missing bone mask \('.*' differs from it only in "
                                           r"case or Unicode form: rename it\)"):
        read_mask(root / "masks" / "k0_femur.png")


def test_an_nfd_mask_name_beside_an_nfc_image_id_is_one_line(tmp_path):
    root = tmp_path / "data"
    write_sample(root, small_sample("kn\u00e9e", seed=0))
    write_sample(root, small_sample("k1", seed=1))
    for mask in sorted((root / "masks").glob("kn\u00e9e_*.png")):
        mask.rename(mask.with_name(unicodedata.normalize("NFD", mask.name)))
    messages = [i.message for i in validate_dataset(root).errors]
    assert len(messages) == 4 and all("Unicode normalisation" in m for m in messages), messages


def test_a_fifo_or_a_looping_link_is_one_line_not_two(tmp_path):
    """Red-team round 7: a FIFO annotation was "not a regular file" and "missing annotation",
    a looping mask link "symlink loop" and "missing bone mask"."""
    root = tmp_path / "data"
    for i in range(2):
        write_sample(root, small_sample(f"k{i}", seed=i))
    ann = root / "annotations" / "k0.json"
    ann.unlink()
    os.mkfifo(ann)
    mask = root / "masks" / "k1_femur.png"
    mask.unlink()
    mask.symlink_to(mask.name)  # a link to itself
    errors = [(i.path, i.message) for i in validate_dataset(root).errors]
    assert sorted(p for p, _ in errors) == sorted([str(ann), str(mask)]), errors
    assert dict(errors)[str(mask)] == "symlink loop"
    assert dict(errors)[str(ann)].startswith("not a regular file")


def test_an_image_plan_would_refuse_as_too_small_is_a_validation_error(tmp_path):
    """Red-team round 7: a 20 x 24 px image validated and trained; plan refuses under 32 px."""
    import cv2

    root = tmp_path / "data"
    for i in range(2):
        write_sample(root, small_sample(f"k{i}", seed=i))
    cv2.imwrite(str(root / "images" / "k0.png"), np.zeros((24, 20), np.uint8) + 100)
    messages = [i.message for i in validate_dataset(root).errors if i.path.endswith("k0.png")]
    assert "image of 20 x 24 px is too small (need at least 32 x 32 px)" in messages, messages
