"""A leading ``~`` in a path flag is the home folder: zsh leaves ``make plan CKPT=~/x`` and
``DATA=~/x`` unexpanded (user walkthrough: "does not exist"). A dataset folder given to plan
points at its images/ folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.datamodule import KneeDataModule
from datamodules.dataset_io import write_sample
from datamodules.validate import main as validate_main
from planning.batch import expand_images
from planning.plan import main as plan_main
from planning.plan import path_argument
from tests.small_datasets import small_sample


def test_tilde_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_sample(tmp_path / "data", small_sample("k1"))
    assert path_argument("~/model.ckpt") == tmp_path / "model.ckpt"
    assert expand_images("~/data/images")[0] == [tmp_path / "data" / "images" / "k1.png"]
    assert KneeDataModule(data_root="~/data", split_file="~/s.json").data_root == str(
        tmp_path / "data")
    assert validate_main(["~/data"]) == 0


def test_plan_on_a_dataset_folder_points_at_its_images(tmp_path, capsys):
    write_sample(tmp_path / "data", small_sample("k1"))
    (tmp_path / "m.ckpt").write_bytes(np.zeros(4, np.uint8).tobytes())
    assert plan_main(["--image", str(tmp_path / "data"), "--ckpt", str(tmp_path / "m.ckpt"),
                      "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err
    assert f"a dataset folder? its images are in {Path(tmp_path / 'data' / 'images')}" in err


def test_plan_skips_macos_metadata_files_in_a_folder_and_a_glob(tmp_path):
    """Session 29 review: plan on a folder listed ``._x.png`` (AppleDouble) as an image."""
    write_sample(tmp_path / "data", small_sample("k1"))
    (tmp_path / "data" / "images" / "._k1.png").write_bytes(b"\x00\x05\x16\x07")
    folder = tmp_path / "data" / "images"
    assert expand_images(str(folder))[0] == [folder / "k1.png"]
    assert expand_images(str(folder / "*.png"))[0] == [folder / "k1.png"]


def test_a_home_folder_that_cannot_be_found_is_no_traceback(monkeypatch):
    monkeypatch.delenv("HOME", raising=False)
    assert str(path_argument("~nosuchuser_kneeplan/x.ckpt")) == "~nosuchuser_kneeplan/x.ckpt"
