"""Red-team round 9, data side: an image whose name is legal but whose masks' names are not (an
id of 246 bytes: ``<id>_patella.png`` is 258) is one error naming the image, in the validator and
in the dataset reader (``Path.exists`` raised ENAMETOOLONG: a traceback in validate and train)."""

from __future__ import annotations

import shutil

import pytest

from datamodules.dataset_io import DatasetError, id_name_problem, read_sample, write_sample
from datamodules.validate import validate_dataset
from tests.small_datasets import small_sample

LONG = "M" * 246  # "<LONG>.png" is 250 bytes (legal), "<LONG>_patella.png" 258


def test_id_name_problem_counts_bytes_of_the_longest_name():
    assert id_name_problem("M" * 243) is None  # "_patella.png": 255 bytes exactly
    assert "would be 256 bytes (file names hold at most 255)" in id_name_problem("M" * 244)
    assert "would be 256 bytes" in id_name_problem("é" * 122)  # 2 bytes each in UTF-8


def test_an_id_too_long_for_its_masks_is_one_error(tmp_path):
    root = tmp_path / "data"
    write_sample(root, small_sample("ok"))
    write_sample(root, small_sample("ok2", seed=1))
    long_image = root / "images" / f"{LONG}.png"
    shutil.copy(root / "images" / "ok.png", long_image)
    report = validate_dataset(root)
    errors = [(str(e.path), e.message) for e in report.errors]
    assert errors == [(str(long_image), f"its id is too long for its files: {'M' * 24!r}... "
                       "would be 258 bytes (file names hold at most 255): shorten the image name")]
    with pytest.raises(DatasetError, match=r"MMMM\.png: its id is too long for its files"):
        read_sample(root, LONG)
    assert read_sample(root, "ok").id == "ok"


def test_a_dataset_subfolder_that_is_a_file_or_a_loop_is_named_once(tmp_path):
    """``masks`` a file and ``annotations`` a link to itself were both "missing folder", then
    one "missing" line per mask and annotation of every image."""
    root = tmp_path / "data"
    write_sample(root, small_sample("ok"))
    write_sample(root, small_sample("ok2", seed=1))
    shutil.rmtree(root / "masks")
    (root / "masks").write_text("not a folder")
    shutil.rmtree(root / "annotations")
    (root / "annotations").symlink_to(root / "annotations")
    errors = [(e.path, e.message) for e in validate_dataset(root).errors]
    assert errors == [(str(root / "masks"), "is a file, not a folder"),
                      (str(root / "annotations"),
                       "symlink loop (a link that leads back to itself)")]
    shutil.rmtree(root / "images")
    assert [e.message for e in validate_dataset(root).errors][0] == "missing folder"
