"""Dataset reading and the validator: a clean dataset passes, every listed fault is reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from dicom_files import write_dicom

from datamodules.dataset_io import list_ids, read_sample, write_sample
from datamodules.sample import BONES
from datamodules.validate import DatasetValidationError, main, validate_dataset
from tests.small_datasets import H, W, small_sample


def test_write_then_read_round_trip(tmp_path):
    s = small_sample("k1")
    write_sample(tmp_path, s)
    assert list_ids(tmp_path) == ["k1"]
    r = read_sample(tmp_path, "k1")
    np.testing.assert_allclose(r.image, s.image, atol=1.0 / 65535)
    np.testing.assert_array_equal(r.masks, s.masks)
    assert len(r.annotations) == 2 and [a.rater for a in r.annotations] == ["r1", "r2"]
    for a, b in zip(r.annotations, s.annotations, strict=True):
        np.testing.assert_allclose(a.landmarks, b.landmarks)
        np.testing.assert_allclose(a.cortex_points, b.cortex_points)
    assert r.spacing_mm == (0.2, 0.25) and r.spacing_source == "annotation"
    assert r.meta["side"] == "left"


def test_clean_dataset_passes(tmp_path):
    for i in range(3):
        write_sample(tmp_path, small_sample(f"k{i}", seed=i))
    report = validate_dataset(tmp_path)
    assert report.ok and report.errors == [] and report.warnings == []
    assert report.num_images == 3
    report.raise_if_invalid()
    assert main([str(tmp_path)]) == 0


def _edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))  # json writes NaN as the bare NaN literal


@pytest.fixture
def broken(tmp_path) -> Path:
    """One fault per id (plus a clean one); returns the dataset root."""
    ids = ["clean", "trunc", "garbage", "size", "nonbin", "nomask", "outside", "onecortex", "nan",
           "version", "dup", "noann", "nospacing"]
    for i, name in enumerate(ids):
        write_sample(tmp_path, small_sample(name, spacing=None if name == "nospacing" else
                                            (0.2, 0.2), seed=i))
    img, msk, ann = tmp_path / "images", tmp_path / "masks", tmp_path / "annotations"
    data = (img / "trunc.png").read_bytes()
    (img / "trunc.png").write_bytes(data[: len(data) // 2])
    (img / "garbage.png").write_bytes(b"not an image at all")
    cv2.imwrite(str(msk / "size_tibia.png"), np.zeros((H + 3, W), np.uint8))
    nonbin = np.zeros((H, W), np.uint8)
    nonbin[:5], nonbin[5:10] = 128, 255
    cv2.imwrite(str(msk / "nonbin_patella.png"), nonbin)
    (msk / "nomask_fibula.png").unlink()
    _edit_json(ann / "outside.json",
               lambda d: d["raters"][0]["landmarks"].update(p_tmc=[W + 10.0, 5.0]))
    _edit_json(ann / "onecortex.json",
               lambda d: d["raters"][1].update(cortex_line=[[1.0, 2.0]]))
    _edit_json(ann / "onecortex.json",  # and rater 0's points coincide
               lambda d: d["raters"][0].update(cortex_line=[[4.0, 5.0], [4.0, 5.0]]))
    _edit_json(ann / "nan.json", lambda d: d["raters"][0]["landmarks"].update(p_blum=[np.nan, 3]))
    _edit_json(ann / "version.json", lambda d: d.update(schema_version=99))
    write_dicom(img / "dup.dcm", np.zeros((H, W), np.uint16))
    (ann / "noann.json").unlink()
    cv2.imwrite(str(msk / "ghost_femur.png"), np.zeros((H, W), np.uint8))
    (ann / "ghost2.json").write_text((ann / "clean.json").read_text())
    return tmp_path


EXPECTED_ERRORS = [  # (file name, words in the message)
    ("trunc.png", "truncated"),
    ("garbage.png", "unreadable"),
    ("size_tibia.png", "differs from its image"),
    ("nonbin_patella.png", "non-binary"),
    ("nomask_fibula.png", "missing bone mask"),
    ("outside.json", "p_tmc: (60, 5) lies outside"),
    ("onecortex.json", "raters[1]: 'cortex_line' needs at least two points"),
    ("onecortex.json", "raters[0]: all cortex_line points coincide"),
    ("nan.json", "p_blum: NaN"),
    ("version.json", "unknown schema_version 99"),
    ("dup.dcm", "duplicate id 'dup'"),
    ("noann.json", "missing annotation"),
    ("ghost_femur.png", "orphan mask"),
    ("ghost2.json", "orphan annotation"),
]


def test_broken_dataset_reports_every_fault_with_its_file(broken):
    report = validate_dataset(broken)
    assert not report.ok
    text = report.format()
    for name, words in EXPECTED_ERRORS:
        hits = [e for e in report.errors if Path(e.path).name == name and words in e.message]
        assert hits, f"no error for {name!r} containing {words!r}:\n{text}"
    # nothing else is an error: every error concerns a faulty id
    faulty = {n.split(".")[0].split("_")[0] for n, _ in EXPECTED_ERRORS}
    for e in report.errors:
        assert Path(e.path).name.split(".")[0].split("_")[0] in faulty, str(e)
    # missing spacing is only a warning, and names its file
    assert any(Path(w.path).name == "nospacing.json" and "spacing" in w.message
               for w in report.warnings)
    assert not any("nospacing" in e.path for e in report.errors)
    with pytest.raises(DatasetValidationError) as info:
        report.raise_if_invalid()
    for name, _ in EXPECTED_ERRORS:
        assert name in str(info.value)


def test_command_line_exit_status(broken, tmp_path_factory):
    proc = subprocess.run([sys.executable, "-m", "datamodules.validate", str(broken)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    for name, _ in EXPECTED_ERRORS:
        assert name in proc.stdout
    clean = tmp_path_factory.mktemp("clean")
    write_sample(clean, small_sample("a"))
    assert main([str(clean)]) == 0


def test_missing_folders_are_errors(tmp_path):
    report = validate_dataset(tmp_path / "nope")
    assert not report.ok and "does not exist" in report.errors[0].message
    (tmp_path / "images").mkdir()
    report = validate_dataset(tmp_path)
    names = {Path(e.path).name for e in report.errors}
    assert {"masks", "annotations", "images"} <= names


def test_read_sample_refuses_bad_mask(tmp_path):
    write_sample(tmp_path, small_sample("k"))
    cv2.imwrite(str(tmp_path / "masks" / f"k_{BONES[0]}.png"), np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match="k_femur.png"):
        read_sample(tmp_path, "k")


def test_validator_and_reader_share_one_schema_checker(tmp_path):
    """Every annotation the reader refuses, the validator reports with the same first message,
    and vice versa (one checker: datamodules.annotations.check_annotation)."""
    from datamodules.annotations import AnnotationError, read_annotation

    write_sample(tmp_path, small_sample("k1"))
    path = tmp_path / "annotations" / "k1.json"
    clean = json.loads(path.read_text())
    variants = {
        "bool landmark": ("landmarks", "p_blum", [True, False]),
        "string landmark": ("landmarks", "p_tmc", ["1", "2"]),
        "nested": ("landmarks", "p_tmc", [[1.0], [2.0]]),
        "spacing bool": ("pixel_spacing_mm", None, True),
        "spacing string": ("pixel_spacing_mm", None, "0.2"),
    }
    for name, (field, key, value) in variants.items():
        data = json.loads(json.dumps(clean))
        if key is None:
            data[field] = value
        else:
            data["raters"][0][field][key] = value
        path.write_text(json.dumps(data))
        with pytest.raises(AnnotationError) as err:
            read_annotation(path)
        report = validate_dataset(tmp_path)
        assert [str(i) for i in report.errors] == [str(err.value)], name


def test_validator_and_reader_share_one_mask_reader(tmp_path):
    """A gray mask stored as RGB is accepted by both; a coloured one refused by both."""
    write_sample(tmp_path, small_sample("k1"))
    path = tmp_path / "masks" / "k1_femur.png"
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(path), np.dstack([m, m, m]))
    assert validate_dataset(tmp_path).ok
    np.testing.assert_array_equal(read_sample(tmp_path, "k1").masks[0], m > 0)
    cv2.imwrite(str(path), np.dstack([m, m * 0, m]))
    errors = [str(i) for i in validate_dataset(tmp_path).errors]
    assert len(errors) == 1 and "colour mask" in errors[0]
    with pytest.raises(Exception, match="colour mask"):
        read_sample(tmp_path, "k1")


def test_macos_metadata_files_and_jpeg_masks_are_one_line_each(tmp_path):
    """User walkthrough: a macOS `._knee.png` (AppleDouble, written beside every file copied to
    a USB disk) gave six error lines; a mask saved as .jpg gave "missing" plus "orphan" and
    never said why."""
    write_sample(tmp_path, small_sample("k0"))
    write_sample(tmp_path, small_sample("k1", seed=1))
    for sub, name in (("images", "._k0.png"), ("masks", "._k0_femur.png"),
                      ("annotations", "._k0.json")):
        (tmp_path / sub / name).write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # AppleDouble
    report = validate_dataset(tmp_path)
    assert report.errors == [] and len(report.warnings) == 3
    assert all("AppleDouble" in str(w) for w in report.warnings)
    assert list_ids(tmp_path) == ["k0", "k1"]

    mask = tmp_path / "masks" / "k1_tibia.png"
    cv2.imwrite(str(mask.with_suffix(".jpg")), cv2.imread(str(mask)))
    mask.unlink()
    errors = [str(e) for e in validate_dataset(tmp_path).errors]
    assert any("k1_tibia.jpg: a mask must be a PNG file (k1_tibia.png)" in e for e in errors)
    assert not any("orphan" in e for e in errors), errors
