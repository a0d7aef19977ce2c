"""A careless or hostile user's dataset folder: each bad input is answered with one line naming
the file and the problem, never a traceback, a silent wrong result or unbounded time/memory.

Each case here was found by attacking ``datamodules`` and failed before its fix: huge JSON
integers (OverflowError), an annotation spacing the resolver ignores (silently dropped),
repeated and unknown keys (silently taken or ignored), a byte-order mark (refused), landmarks
outside the image when reading without the validator (``planning.evaluate``), a far cortex point
(a ROI target of unbounded cost), a 2-pixel-high strip (a padded square of GBs), a folder named
like an image (silently lost), newlines in file names (a two-line error) and split files
(tracebacks through ``train``, typos silently dropping the test set).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from datamodules.annotations import AnnotationError, check_annotation, read_annotation
from datamodules.datamodule import KneeDataModule, SplitError, read_split_file, seeded_split
from datamodules.dataset_io import DatasetError, read_sample, write_sample
from datamodules.datasets import TargetConfig, make_item
from datamodules.image_io import ImageReadError, load_image
from datamodules.sample import BONES
from datamodules.targets import cortex_pseudo_landmarks, roi_heatmap
from datamodules.transforms import SampleTransform
from datamodules.validate import validate_dataset
from tests.small_datasets import H, W, annotation, small_sample

REPO = Path(__file__).resolve().parents[1]
HUGE = "1" + "0" * 400  # valid JSON, but float() of it raises OverflowError




@pytest.fixture
def root(tmp_path) -> Path:
    """A valid three-image dataset."""
    for i in range(3):
        write_sample(tmp_path / "data", small_sample(f"k{i}", seed=i, raters=1))
    return tmp_path / "data"


def one_line(text: object) -> str:
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got {lines}"
    assert "Traceback" not in lines[0]
    return lines[0]


def _ann(**change) -> dict:
    return annotation('k0', **change)


def _validator_and_reader_refuse(root: Path, expected: str, sample_id: str = "k0") -> None:
    """The validator reports ``expected`` for the annotation and the reader refuses with it."""
    ann = root / "annotations" / f"{sample_id}.json"
    report = validate_dataset(root)
    assert not report.ok
    assert any(i.path == str(ann) and expected in i.message for i in report.errors), \
        report.format()
    with pytest.raises(AnnotationError) as err:
        read_sample(root, sample_id)
    line = one_line(err.value)
    assert line.startswith(str(ann)) and expected in line


# ------------------------------------------------------------------------- annotation JSON
@pytest.mark.parametrize("where", ["landmark", "cortex", "spacing", "schoettle"])
def test_an_integer_too_large_for_a_float_is_an_error_not_an_overflow(where, root):
    raw = json.dumps(_ann())
    raw = {"landmark": raw.replace("[20.0, 12.0]", f"[{HUGE}, 12.0]"),
           "cortex": raw.replace("[13, 20]", f"[13, {HUGE}]"),
           "spacing": raw.replace('"pixel_spacing_mm": [0.2, 0.2]', f'"pixel_spacing_mm": {HUGE}'),
           "schoettle": raw.replace('"schoettle_point": null', f'"schoettle_point": [{HUGE}, 1]'),
           }[where]
    (root / "annotations" / "k0.json").write_text(raw)
    expected = "pixel_spacing_mm" if where == "spacing" else "NaN or infinite"
    _validator_and_reader_refuse(root, expected)
    line = str(validate_dataset(root).errors[0])
    assert len(line) < 400, "the 400-digit number is cut in the message"


@pytest.mark.parametrize("spacing", [[20.0, 20.0], 1e-9, [0.2, 7.0]])
def test_annotation_spacing_the_resolver_would_ignore_is_an_error(spacing, root):
    """Before: valid for the validator, then silently dropped by the one resolver (0.01..5 mm),
    so training fell back to the DICOM tags or to no spacing at all."""
    (root / "annotations" / "k0.json").write_text(json.dumps(_ann(pixel_spacing_mm=spacing)))
    _validator_and_reader_refuse(root, "outside the plausible range")


def test_a_repeated_key_is_refused(root):
    """JSON allows it and Python keeps the last value silently: which spacing was meant?"""
    raw = json.dumps(_ann())[:-1] + ', "pixel_spacing_mm": [0.3, 0.3]}'
    (root / "annotations" / "k0.json").write_text(raw)
    _validator_and_reader_refuse(root, 'duplicate key "pixel_spacing_mm"')


@pytest.mark.parametrize("change, expected", [
    ({"pixel_spacing": [0.3, 0.3]}, 'unknown key "pixel_spacing"'),  # typo: spacing lost
    ({"r_landmark": {}}, 'raters[0]: unknown key "landmark"'),
    ({"lm_p_blumm": [1, 2]}, 'raters[0].landmarks: unknown landmark "p_blumm"'),
    ({"r_landmarks": [[20, 12], [15, 25]]}, "'landmarks' must be an object"),
])
def test_unknown_keys_and_wrong_nesting_are_named(change, expected):
    errors = check_annotation(_ann(**change), "k0", "k0.png", (H, W)).errors
    assert any(expected in e for e in errors), errors


def test_extras_under_meta_stay_allowed():
    assert check_annotation(_ann(meta={"notes": "x", "n": [1, 2]}), "k0", "k0.png",
                            (H, W)).errors == []


def test_a_utf8_byte_order_mark_is_accepted(root):
    """Windows editors write one; JSON parsers may ignore it (RFC 8259), and nothing is lost."""
    path = root / "annotations" / "k0.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert validate_dataset(root).ok
    assert read_annotation(path)["id"] == "k0"


def test_long_values_are_cut_in_messages():
    errors = check_annotation(_ann(id="x" * 1_000_000), "k0").errors
    assert errors and all(len(e) < 400 for e in errors)


def test_reader_checks_the_annotation_against_its_image(root):
    """``planning.evaluate`` reads without the validator: a landmark outside the image or an
    annotation of another id must be refused there too, not used."""
    (root / "annotations" / "k0.json").write_text(json.dumps(_ann(lm_p_blum=[500.0, 12.0])))
    _validator_and_reader_refuse(root, "outside the 50x40")
    (root / "annotations" / "k0.json").write_text(json.dumps(_ann(id="k1")))
    _validator_and_reader_refuse(root, "'id' is 'k1', expected 'k0'")


# ----------------------------------------------------------------------- bounded time/memory
def test_roi_of_a_far_cortex_point_is_cut_to_the_image_and_unchanged_inside():
    """A cortex point outside the image is only a warning, but at 1e12 px the ROI target asked
    for ~1e12 Gaussians (before: 15 s per item at 1e6, a MemoryError beyond)."""
    pts = cortex_pseudo_landmarks(np.array([[10.0, 5.0], [12.0, 1e12]]), 4.0, "segment", 64,
                                  margin=8.0)
    assert 2 <= len(pts) <= 30
    # a line leaving the image by a moderate amount: the same heat-map as without cutting
    cortex = np.array([[20.0, 10.0], [22.0, 40.0], [30.0, 400.0]])
    cut = roi_heatmap(cortex, 64, 2.0)
    full = np.zeros((64, 64), np.float32)
    from geometry.heatmaps import gaussian_heatmap

    for p in cortex_pseudo_landmarks(cortex, 4.0 / 3.0, "segment"):
        np.maximum(full, gaussian_heatmap(64, p, 2.0), out=full)
    np.testing.assert_allclose(cut[0], full, atol=1e-3)


def test_training_item_with_a_far_cortex_point_is_fast(root):
    """The farthest point still only a warning (just within 100 longer sides of the image)."""
    far = 99.0 * max(H, W)
    (root / "annotations" / "k0.json").write_text(
        json.dumps(_ann(r_cortex_line=[[12, 2], [13, 20], [14, far]])))
    report = validate_dataset(root)
    assert report.ok and any("cortex_line[2]" in str(w) for w in report.warnings)
    start = time.perf_counter()
    item = make_item(read_sample(root, "k0"), SampleTransform(64, None), TargetConfig(2.0))
    assert time.perf_counter() - start < 5.0
    assert float(item["roi"].max()) > 0.9


@pytest.mark.parametrize("far", [101.0 * max(H, W), 1e12, 1e30, -1e300])
def test_a_cortex_point_beyond_a_hundred_image_sides_is_an_error(root, far):
    """Red-team round 10: at 1e30 px the line fit lost the image (an all-zero ROI target, no
    word), at 1e300 its SVD failed in training; the validator had only warned."""
    (root / "annotations" / "k0.json").write_text(
        json.dumps(_ann(r_cortex_line=[[12, 2], [13, 20], [14, far]])))
    _validator_and_reader_refuse(root, "cortex_line[2]: (14, ")
    _validator_and_reader_refuse(root, "image, far beyond it (more than 100 x its longer side")


def test_without_an_image_a_point_beyond_a_billion_px_is_an_error():
    out = check_annotation(_ann(r_cortex_line=[[12, 2], [13, 20], [14, 2e9]]), "k0")
    assert any("cortex_line[2]: (14, 2e+09) lies beyond 1e+09 px" in e for e in out.errors), \
        out.errors
    assert not check_annotation(_ann(r_cortex_line=[[12, 2], [13, 20], [14, 5e8]]), "k0").errors


@pytest.mark.parametrize("twin", ["genou_e\u0301", "GENOU_\u00c9"])
def test_ids_one_file_on_macos_and_windows_are_warned_about(tmp_path, twin):
    """Red-team round 10: NFC/NFD twins (and case twins) passed validate silently."""
    root = tmp_path / "data"
    for i, name in enumerate(["genou_\u00e9", twin]):
        write_sample(root, small_sample(name, seed=i, raters=1))
    report = validate_dataset(root)
    assert report.ok and any("differ only in letter case or Unicode normalisation" in w.message
                             for w in report.warnings), report.format()


def test_an_elongated_image_is_refused_before_its_padded_square_is_built(tmp_path, monkeypatch):
    """Training and planning pad to a square of the longer side: a 2 x 40000 strip (80 kpx)
    needed a 40000^2 float square (GBs). Shown with a small limit: 2 x 200 px is within a 4000
    px limit, its 200 x 200 square is not within twice it."""
    monkeypatch.setenv("KNEEPLAN_MAX_PIXELS", "4000")
    path = tmp_path / "strip.png"
    cv2.imwrite(str(path), (np.arange(400) % 255).reshape(2, 200).astype(np.uint8))
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    line = one_line(err.value)
    assert line.startswith(str(path)) and "too elongated" in line
    ok = tmp_path / "ok.png"
    cv2.imwrite(str(ok), (np.arange(40 * 50) % 255).reshape(40, 50).astype(np.uint8))
    assert load_image(ok).image.shape == (40, 50)  # 50^2 = 2500 <= 2 x 4000


# ---------------------------------------------------------------------------- file system
def test_a_folder_named_like_an_image_is_an_error(root):
    """Before: skipped silently (with no masks or annotation left for it, validation passed)."""
    (root / "images" / "k0.png").unlink()
    (root / "images" / "k0.png").mkdir()
    for bone in BONES:
        (root / "masks" / f"k0_{bone}.png").unlink()
    (root / "annotations" / "k0.json").unlink()
    (root / "images" / "old").mkdir()
    report = validate_dataset(root)
    assert [str(i) for i in report.errors] == [
        f"{root / 'images' / 'k0.png'}: a folder, not an image file (the dataset would silently "
        "lose it)"]
    assert any(i.path == str(root / "images" / "old") for i in report.warnings)


def test_a_folder_named_like_an_annotation_is_named_so(root):
    (root / "annotations" / "k0.json").unlink()
    (root / "annotations" / "k0.json").mkdir()
    errors = [str(i) for i in validate_dataset(root).errors]
    assert errors == [f"{root / 'annotations' / 'k0.json'}: a folder, not an annotation file"]


def test_a_newline_in_a_file_name_still_gives_one_line_per_problem(root):
    for sub in ("images", "masks", "annotations"):
        for p in list((root / sub).iterdir()):
            if p.name.startswith("k0"):
                p.rename(p.with_name(p.name.replace("k0", "k\n0")))
    report = validate_dataset(root)
    assert not report.ok  # the annotation's "id" and "image" name the old file
    assert len(report.format().splitlines()) == 1 + len(report.errors) + len(report.warnings)
    assert all("\\n" in str(i) for i in report.errors)
    with pytest.raises(AnnotationError) as err:
        read_sample(root, "k\n0")
    assert one_line(err.value).startswith(str(root / "annotations" / "k\\n0.json"))


# ------------------------------------------------------------------------------ split files
@pytest.mark.parametrize("raw, expected", [
    (b"\xff\xfe{}", "cannot read JSON"),                                  # UnicodeDecodeError
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),               # RecursionError
    (json.dumps({"train": ["k0"], "val": ["k1"], "tset": ["k2"]}).encode(), "unknown key 'tset'"),
    (json.dumps({"train": ["k0", "k0"], "val": ["k1"]}).encode(), "'k0' is twice in 'train'"),
    (b'{"train": ["k0"], "val": ["k1"], "val": ["k2"]}', "duplicate key"),
])
def test_bad_split_file_is_one_line_naming_it(raw, expected, tmp_path):
    path = tmp_path / "split.json"
    path.write_bytes(raw)
    with pytest.raises(SplitError) as err:
        read_split_file(path, ["k0", "k1", "k2"])
    line = one_line(err.value)
    assert str(path) in line and expected in line
    assert isinstance(err.value, DatasetError) and isinstance(err.value, ValueError)


def test_bad_val_fraction_is_a_data_error():
    with pytest.raises(SplitError, match=r"val_fraction must be in \[0, 1\)"):
        seeded_split(["a", "b"], 1.5, 0)


def test_datamodule_refuses_a_bad_split_file_with_a_data_error(root, tmp_path):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["k0"], "val": ["zz"]}))
    dm = KneeDataModule(data_root=str(root), split_file=str(split), size=32, sigma=2.0)
    with pytest.raises(DatasetError, match="'val' names ids with no sample"):
        dm.setup("fit")


@pytest.mark.slow  # one fresh interpreter (~10 s on 2 busy cores)
def test_train_answers_a_bad_split_file_in_one_line(root, tmp_path):
    """Before: a UnicodeDecodeError traceback (the split file's errors were plain ValueErrors,
    which ``train`` does not treat as data errors)."""
    split = tmp_path / "split.json"
    split.write_bytes(b"\xff\xfe{}")
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    res = subprocess.run(
        [sys.executable, "-m", "lightning_modules.train", "--config",
         str(REPO / "configs" / "tiny.yaml"), "--data-root", str(root),
         "--data.split_file", str(split), "--run.root", str(tmp_path / "runs")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    naming = [ln for ln in res.stderr.splitlines() if str(split) in ln]
    assert len(naming) == 1 and "cannot read JSON" in naming[0], res.stderr[-2000:]


def test_an_integer_beyond_pythons_digit_limit_is_named(root):
    """Fifth fuzz round: a 5000-digit coordinate gave Python's "Exceeds the limit (4300 digits)
    ... use sys.set_int_max_str_digits()" hint instead of what is wrong with the file."""
    raw = json.dumps(_ann()).replace("[20.0, 12.0]", f"[{'9' * 5000}, 12.0]")
    (root / "annotations" / "k0.json").write_text(raw)
    with pytest.raises(AnnotationError, match="an integer of more than 4300 digits") as err:
        read_annotation(root / "annotations" / "k0.json")
    assert "set_int_max_str_digits" not in str(err.value)
