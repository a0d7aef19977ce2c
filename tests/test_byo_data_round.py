"""A researcher's own data set, followed through the README: what used to break, confuse or go
silently wrong (JPEG exports skipped, a flat 16-bit DICOM, (row, col) landmarks, spacing in cm,
split files that leave ids out, an empty run folder after a refused data set)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from dicom_files import write_dicom
from small_datasets import small_sample

from datamodules.annotations import write_annotation
from datamodules.datamodule import read_split_file
from datamodules.dataset_io import annotation_path, list_ids, read_sample, write_sample
from datamodules.phantoms import PhantomConfig, generate_phantom
from datamodules.validate import validate_dataset

SMALL = PhantomConfig(min_side=200, max_side=256)


def _warnings(root: Path, text: str) -> list[str]:
    report = validate_dataset(root)
    assert report.ok, report.format()
    return [str(w) for w in report.warnings if text in w.message]


def _edit_annotation(root: Path, sample_id: str, change) -> None:
    path = annotation_path(root, sample_id)
    data = json.loads(path.read_text())
    change(data)
    write_annotation(path, data)


def test_jpeg_export_is_part_of_the_dataset(tmp_path):
    """A JPEG in images/ (README: read like PNG, marked lossy; ``make plan`` takes it) was
    skipped as "not an image type", so its masks and annotation became orphan errors."""
    write_sample(tmp_path, small_sample("a"))
    png = tmp_path / "images" / "a.png"
    gray = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(tmp_path / "images" / "a.JPG"), (gray >> 8).astype(np.uint8))
    png.unlink()
    _edit_annotation(tmp_path, "a", lambda d: d.update(image="a.JPG"))
    assert list_ids(tmp_path) == ["a"]
    assert _warnings(tmp_path, "lossy (JPEG)")
    assert read_sample(tmp_path, "a").image.shape == gray.shape


def test_flat_dicom_is_warned(tmp_path):
    """A MONOCHROME1 DICOM whose rescaled values fill 3 % of the 16-bit range, without a window,
    trained as a near-white image with no word from the validator."""
    sample = small_sample("flat")
    write_sample(tmp_path, sample)
    (tmp_path / "images" / "flat.png").unlink()
    stored = np.round((1.0 - sample.image) * 2000 + 500)  # (value + 1000) / 2 of 0..4000
    write_dicom(tmp_path / "images" / "flat.dcm", stored, bits=16, photometric="MONOCHROME1",
                rescale=(2.0, -1000.0))
    _edit_annotation(tmp_path, "flat", lambda d: d.update(image="flat.dcm"))
    flat = _warnings(tmp_path, "of its value range")
    assert len(flat) == 1 and "flat.dcm" in flat[0]
    image = read_sample(tmp_path, "flat").image
    assert np.corrcoef(image.ravel(), sample.image.ravel())[0, 1] > 0.99  # bone stays bright


def test_true_phantoms_get_no_warning(tmp_path):
    """The new checks (flat image, off-femur points, spacing vs femur size) stay quiet on
    correct data."""
    for seed in range(1, 5):
        write_sample(tmp_path, generate_phantom(seed=seed, config=SMALL))
    report = validate_dataset(tmp_path)
    assert report.ok and not report.warnings, report.format()


def test_row_col_landmarks_are_warned(tmp_path):
    """Landmarks and cortex points written (row, col) stay inside a near-square image, so no
    schema check saw them; the femur mask does (true points lie on it)."""
    ph = generate_phantom(seed=1, config=SMALL)
    write_sample(tmp_path, ph)

    def swap(d: dict) -> None:
        for r in d["raters"]:
            r["landmarks"] = {k: v[::-1] for k, v in r["landmarks"].items()}
            r["cortex_line"] = [p[::-1] for p in r["cortex_line"]]
        d["schoettle_point"] = None

    _edit_annotation(tmp_path, ph.id, swap)
    off = _warnings(tmp_path, "off the femur mask")
    assert len(off) == 1 and "raters[0].landmarks.p_blum" in off[0] and "(row, col)" in off[0]


def test_spacing_in_cm_is_warned(tmp_path):
    """0.1 x the true spacing (cm written as mm) lies in the plausible 0.01-5 mm range, so it
    trained and evaluated 10x too small; the femur mask's size disagrees by far."""
    ph = generate_phantom(seed=1, config=SMALL)
    write_sample(tmp_path, ph)
    _edit_annotation(tmp_path, ph.id, lambda d: d.update(
        pixel_spacing_mm=[v / 10 for v in d["pixel_spacing_mm"]]))
    unit = _warnings(tmp_path, "unit error")
    assert len(unit) == 1 and f"annotations/{ph.id}.json" in unit[0]


def test_dicom_spacing_in_cm_is_warned_on_the_image(tmp_path):
    """The same check for a spacing that comes from the DICOM file: the warning names it."""
    ph = generate_phantom(seed=1, config=SMALL)
    write_sample(tmp_path, ph)
    (tmp_path / "images" / f"{ph.id}.png").unlink()
    write_dicom(tmp_path / "images" / f"{ph.id}.dcm", np.round(ph.image * 4095),
                pixel_spacing=[v / 10 for v in ph.spacing_mm])
    _edit_annotation(tmp_path, ph.id, lambda d: d.update(image=f"{ph.id}.dcm",
                                                         pixel_spacing_mm=None))
    unit = _warnings(tmp_path, "unit error")
    assert len(unit) == 1 and f"{ph.id}.dcm" in unit[0] and "PixelSpacing" in unit[0]


def test_split_file_that_leaves_ids_out_is_warned(tmp_path, caplog):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["a", "b"], "val": ["c"]}))
    with caplog.at_level(logging.WARNING, logger="datamodules.datamodule"):
        out = read_split_file(split, ["a", "b", "c", "new1", "new2"])
    assert out["train"] == ["a", "b"]
    assert "2 of the 5 ids" in caplog.text and "new1" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datamodules.datamodule"):
        read_split_file(split, ["a", "b", "c"])
    assert "not used" not in caplog.text


def test_refused_run_leaves_no_empty_run_name_folder(tmp_path):
    """A first run refused for its data left ``runs/<name>/`` behind, empty (and, with W&B on,
    its offline W&B run: session 29); a folder holding anything else is kept."""
    from lightning_modules.train import _remove_refused_run

    run = tmp_path / "runs" / "tiny" / "20260101-000000"
    run.mkdir(parents=True)
    _remove_refused_run(run)
    assert not (tmp_path / "runs" / "tiny").exists() and (tmp_path / "runs").is_dir()
    kept = tmp_path / "runs" / "tiny" / "older"
    kept.mkdir(parents=True)
    (run / "wandb" / "offline-run-1").mkdir(parents=True)
    _remove_refused_run(run)
    assert kept.is_dir() and not run.exists()
    (run / "wandb").mkdir(parents=True)
    (run / "notes.txt").write_text("mine")
    _remove_refused_run(run)
    assert (run / "notes.txt").read_text() == "mine" and (run / "wandb").is_dir()


@pytest.mark.parametrize("bits", [12, 16])
def test_dicom_pixel_spacing_is_what_training_uses(tmp_path, bits):
    """DICOM PixelSpacing (no annotation spacing) reaches the sample, with its source."""
    ph = generate_phantom(seed=2, config=SMALL)
    write_sample(tmp_path, ph)
    (tmp_path / "images" / f"{ph.id}.png").unlink()
    write_dicom(tmp_path / "images" / f"{ph.id}.dcm", np.round(ph.image * (2**bits - 1)),
                bits=bits, pixel_spacing=list(ph.spacing_mm))
    _edit_annotation(tmp_path, ph.id, lambda d: d.update(image=f"{ph.id}.dcm",
                                                         pixel_spacing_mm=None))
    assert validate_dataset(tmp_path).ok
    sample = read_sample(tmp_path, ph.id)
    assert sample.spacing_source == "PixelSpacing"
    assert np.allclose(sample.spacing_mm, ph.spacing_mm, rtol=1e-6)


@pytest.mark.parametrize(("root", "expected"), [("", "empty path"),
                                                 (__file__, "is a file, not a dataset folder")])
def test_validate_names_an_empty_path_and_a_file(root, expected):
    """``''`` validated the current folder; a file was said not to exist."""
    from datamodules.validate import validate_dataset

    report = validate_dataset(root)
    assert not report.ok and expected in report.format()
