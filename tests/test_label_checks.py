"""Ground-truth labels that are valid files but plainly wrong (red-team round 7): the validator
names the file and the likely cause in one line (``datamodules.label_checks``)."""

from __future__ import annotations

import json
import struct
import unicodedata
from pathlib import Path

import cv2
import numpy as np
import pytest
from dicom_files import write_dicom

from datamodules.annotations import write_annotation
from datamodules.dataset_io import annotation_path, mask_path, write_sample
from datamodules.phantoms import PhantomConfig, generate_phantom
from datamodules.sample import BONES, Sample
from datamodules.validate import validate_dataset
from tests.small_datasets import small_sample

SMALL = PhantomConfig(min_side=200, max_side=256)


def _phantom(root: Path, seed: int = 1) -> Sample:
    ph = generate_phantom(seed=seed, config=SMALL)
    write_sample(root, ph)
    return ph


def _lines(root: Path, text: str, errors: bool = False) -> list[str]:
    report = validate_dataset(root)
    return [str(i) for i in (report.errors if errors else report.warnings) if text in i.message]


def _write_mask(root: Path, sample_id: str, bone: str, mask: np.ndarray) -> None:
    cv2.imwrite(str(mask_path(root, sample_id, bone)), (mask > 0).astype(np.uint8) * 255)


def _edit_annotation(root: Path, sample_id: str, change) -> None:
    path = annotation_path(root, sample_id)
    data = json.loads(path.read_text())
    change(data)
    write_annotation(path, data)


@pytest.mark.parametrize("config", [SMALL, PhantomConfig.from_yaml("configs/phantoms/all_on.yaml")])
def test_true_phantoms_get_no_label_warning(tmp_path, config):
    """The new checks stay quiet on correct data (an empty fibula, or a cortex point outside,
    are the generator's own and older warnings)."""
    config.min_side, config.max_side = 200, 256
    for seed in range(8):
        write_sample(tmp_path, generate_phantom(seed=seed, config=config))
    report = validate_dataset(tmp_path)
    other = [str(w) for w in report.warnings
             if "empty mask" not in w.message and "lies outside" not in w.message]
    assert report.ok and not other, report.format()


def test_small_samples_stay_clean(tmp_path):
    """The 40 x 50 test samples (noise images, rectangle bones) get no label warning."""
    for i in range(3):
        write_sample(tmp_path, small_sample(f"k{i}", seed=i))
    report = validate_dataset(tmp_path)
    assert report.ok and not report.warnings, report.format()


def test_mask_copied_to_another_bone_is_an_error(tmp_path):
    ph = _phantom(tmp_path)
    for bone in BONES[1:]:
        _write_mask(tmp_path, ph.id, bone, ph.masks[0])
    same = _lines(tmp_path, "identical to the femur mask", errors=True)
    assert len(same) == 3  # one line per copied file, not one per pair
    assert all(f"{ph.id}_{b}.png" in "".join(same) for b in BONES[1:])


def test_masks_drawing_one_region_twice_are_warned(tmp_path):
    ph = _phantom(tmp_path)
    eroded = cv2.erode(ph.masks[0].astype(np.uint8), np.ones((5, 5), np.uint8))
    _write_mask(tmp_path, ph.id, "patella", eroded)  # the femur again, a little smaller
    lines = _lines(tmp_path, "overlap with IoU")
    assert len(lines) == 1 and f"{ph.id}_patella.png" in lines[0]


@pytest.mark.parametrize("bone", ["femur", "tibia"])
def test_inverted_mask_is_an_error_naming_it(tmp_path, bone):
    """0 = bone: the femur's only line used to blame the annotation's spacing."""
    ph = _phantom(tmp_path)
    b = BONES.index(bone)
    _write_mask(tmp_path, ph.id, bone, 1 - ph.masks[b])
    report = validate_dataset(tmp_path)
    assert len(report.errors) == 1, report.format()
    line = str(report.errors[0])
    assert f"{ph.id}_{bone}.png" in line and "inverted mask?" in line
    assert not [w for w in report.warnings if "unit error" in w.message]


def test_all_white_mask_is_an_error(tmp_path):
    ph = _phantom(tmp_path)
    _write_mask(tmp_path, ph.id, "femur", np.ones_like(ph.masks[0]))
    assert len(_lines(tmp_path, "inverted mask?", errors=True)) == 1


def test_flipped_tibia_mask_is_warned(tmp_path):
    ph = _phantom(tmp_path)
    _write_mask(tmp_path, ph.id, "tibia", ph.masks[2][::-1])
    lines = _lines(tmp_path, "fits the image's edges")
    assert len(lines) == 1 and f"{ph.id}_tibia.png" in lines[0] and "flipped" in lines[0]
    assert "contrast" in lines[0]


def test_swapped_patella_and_fibula_are_warned(tmp_path):
    ph = _phantom(tmp_path)
    _write_mask(tmp_path, ph.id, "patella", ph.masks[3])
    _write_mask(tmp_path, ph.id, "fibula", ph.masks[1])
    lines = _lines(tmp_path, "patella and fibula masks swapped?")
    assert len(lines) == 1 and f"{ph.id}_patella.png" in lines[0]


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """A JPEG with an APP1 Exif segment whose IFD0 holds only Orientation (tag 274)."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 274, 3, 1, orientation, 0)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    body = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def test_square_jpeg_with_orientation_tag_and_masks_in_stored_frame(tmp_path):
    """Masks and points drawn on a square JPEG's stored pixels, while its EXIF tag rotates the
    image by 90 deg: the points agree with the masks, the sizes agree, only the image does not."""
    ph = generate_phantom(seed=1, config=SMALL)
    h, w = ph.image.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    pad = [(top, side - h - top), (left, side - w - left)]
    image = np.pad(ph.image, pad, mode="edge")
    masks = np.stack([np.pad(m, pad) for m in ph.masks])
    shift = np.array([left, top], float)
    raters = [type(r)(r.landmarks + shift, r.cortex_points + shift, r.rater)
              for r in ph.annotations]
    square = Sample(ph.id, image, masks, raters, ph.spacing_mm, "annotation", meta=ph.meta)
    write_sample(tmp_path, square)
    png = tmp_path / "images" / f"{ph.id}.png"
    ok, buf = cv2.imencode(".jpg", np.round(image * 255).astype(np.uint8),
                           [cv2.IMWRITE_JPEG_QUALITY, 95])
    (tmp_path / "images" / f"{ph.id}.jpg").write_bytes(_with_exif_orientation(buf.tobytes(), 6))
    png.unlink()
    _edit_annotation(tmp_path, ph.id, lambda d: d.update(image=f"{ph.id}.jpg"))
    lines = _lines(tmp_path, "fit the image's edges")
    assert len(lines) == 1 and f"{ph.id}.jpg" in lines[0]
    assert "orientation tag" in lines[0] and "stored" in lines[0]


def test_swapped_landmark_names_are_warned(tmp_path):
    ph = _phantom(tmp_path)

    def swap(d: dict) -> None:
        for r in d["raters"]:
            lm = r["landmarks"]
            lm["p_blum"], lm["p_tmc"] = lm["p_tmc"], lm["p_blum"]

    _edit_annotation(tmp_path, ph.id, swap)
    lines = _lines(tmp_path, "p_blum and p_tmc swapped?")
    assert len(lines) == 1 and f"annotations/{ph.id}.json" in lines[0]


def test_swapped_landmark_names_without_any_spacing(tmp_path):
    """No spacing and a small femur: the femur's extent is the scale."""
    ph = _phantom(tmp_path)

    def swap(d: dict) -> None:
        d["pixel_spacing_mm"] = None
        for r in d["raters"]:
            lm = r["landmarks"]
            lm["p_blum"], lm["p_tmc"] = lm["p_tmc"], lm["p_blum"]

    _edit_annotation(tmp_path, ph.id, swap)
    assert len(_lines(tmp_path, "p_blum and p_tmc swapped?")) == 1


def test_invalid_dicom_pixel_spacing_is_named(tmp_path):
    """``PixelSpacing = 0\\0`` was reported as "no pixel spacing (neither in the annotation
    nor the image file)"."""
    ph = _phantom(tmp_path)
    (tmp_path / "images" / f"{ph.id}.png").unlink()
    write_dicom(tmp_path / "images" / f"{ph.id}.dcm", np.round(ph.image * 4095),
                pixel_spacing=[0, 0])
    _edit_annotation(tmp_path, ph.id, lambda d: d.update(image=f"{ph.id}.dcm",
                                                         pixel_spacing_mm=None))
    report = validate_dataset(tmp_path)
    assert not [w for w in report.warnings if "no pixel spacing (neither" in w.message]
    lines = [str(w) for w in report.warnings if "invalid PixelSpacing" in w.message]
    assert len(lines) == 1 and f"{ph.id}.dcm" in lines[0] and "0\\0" in lines[0]


@pytest.mark.parametrize(("name", "said"), [
    ("k0.csv", "must be JSON files named <image id>.json"),
    ("k0.yaml", "must be JSON files named <image id>.json"),
    ("k0.JSON", "lower-case .json"),
    ("K0.json", "only in case"),
])
def test_misnamed_annotation_is_one_line_saying_why(tmp_path, name, said):
    write_sample(tmp_path, small_sample("k0"))
    ann = tmp_path / "annotations" / "k0.json"
    ann.rename(tmp_path / "annotations" / name)
    report = validate_dataset(tmp_path)
    assert len(report.errors) == 1, report.format()
    assert name in str(report.errors[0]) and said in report.errors[0].message


def test_annotation_name_in_other_unicode_form_is_one_line(tmp_path):
    nfc = unicodedata.normalize("NFC", "kn\u00e9e_01")
    write_sample(tmp_path, small_sample(nfc))
    ann = tmp_path / "annotations" / f"{nfc}.json"
    try:
        ann.rename(tmp_path / "annotations" / f"{unicodedata.normalize('NFD', nfc)}.json")
    except OSError:
        pytest.skip("the file system cannot hold both Unicode forms")
    if ann.exists():
        pytest.skip("the file system normalises names (both forms are one file)")
    report = validate_dataset(tmp_path)
    assert len(report.errors) == 1, report.format()
    assert "only in Unicode normalisation" in report.errors[0].message
