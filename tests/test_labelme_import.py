"""LabelMe files (polygons, points, a line strip) become a dataset the validator passes and the
reader reads; every problem is one line naming the LabelMe file, and then nothing is written."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from dicom_files import write_dicom

from datamodules.dataset_io import read_sample
from datamodules.image_io import write_image
from datamodules.labelme_import import import_folder, main, normalised
from datamodules.phantoms.config import PhantomConfig
from datamodules.phantoms.generate import generate_phantom
from datamodules.sample import BONES
from datamodules.validate import validate_dataset


def _polygon(mask: np.ndarray) -> list[list[float]]:
    """The outline of a mask's largest part through its boundary pixels' centres (OpenCV)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    return max(contours, key=cv2.contourArea)[:, 0, :].astype(float).tolist()


def _shape(label: str, points, kind: str) -> dict:
    return {"label": label, "points": points, "group_id": None, "description": "",
            "shape_type": kind, "flags": {}, "mask": None}


def _labelme(sample, image_name: str, labels: dict[str, str] | None = None) -> dict:
    """A LabelMe 5 file for a phantom sample, as the tool writes it (image beside it)."""
    labels = labels or {}
    r = sample.annotations[0]
    shapes = [_shape(labels.get(b, b.capitalize()), _polygon(sample.masks[i]), "polygon")
              for i, b in enumerate(BONES)]
    shapes += [_shape(labels.get("p_blum", "p_blum"), [r.landmarks[0].tolist()], "point"),
               _shape(labels.get("p_tmc", "P-TMC"), [r.landmarks[1].tolist()], "point"),
               _shape(labels.get("cortex", "cortex line"), r.cortex_points.tolist(),
                      "linestrip")]
    h, w = sample.image.shape
    return {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": image_name,
            "imageData": None, "imageHeight": h, "imageWidth": w}


@pytest.fixture(scope="module")
def phantoms():
    cfg = PhantomConfig(min_side=256, max_side=320)
    return [generate_phantom(500 + i, cfg, sample_id=f"knee {i}") for i in range(2)]


def _write_labelme(folder: Path, samples, **kw) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for s in samples:
        write_image(folder / f"{s.id}.png", np.round(s.image * 65535).astype(np.uint16))
        path = folder / f"{s.id}.json"
        path.write_text(json.dumps(_labelme(s, f"{s.id}.png", **kw)))
        out.append(path)
    return out


def test_polygon_fill_puts_pixel_centres_on_integers(tmp_path):
    """Hand-computed: a square through the centres of pixels (1..3, 1..3) fills exactly those
    9 pixels, as LabelMe's own export (Pillow, outline included) does."""
    from datamodules.labelme_import import _masks

    square = np.array([[1, 1], [3, 1], [3, 3], [1, 3]], dtype=float)
    found = {b: [square] for b in BONES}
    masks = _masks(found, (6, 6), tmp_path / "x.json")
    expected = np.zeros((6, 6), np.uint8)
    expected[1:4, 1:4] = 255
    assert all(np.array_equal(m, expected) for m in masks)


def test_imported_phantoms_validate_and_read_back(phantoms, tmp_path):
    _write_labelme(tmp_path / "lm", phantoms)
    problems, done = import_folder(tmp_path / "lm", tmp_path / "data", {}, set(),
                                   spacing_mm=(0.2, 0.2))
    assert problems == [] and done == 2
    report = validate_dataset(tmp_path / "data")
    assert report.errors == [], report.errors
    for s in phantoms:
        back = read_sample(tmp_path / "data", s.id)
        np.testing.assert_array_equal(back.landmarks, s.landmarks)
        np.testing.assert_array_equal(back.cortex_points, s.cortex_points)
        assert back.spacing_mm == (0.2, 0.2)
        for b, bone in enumerate(BONES):
            truth = s.masks[b] > 0
            if truth.sum() == 0:
                continue
            # the largest part's outline: holes and stray pieces of the phantom's mask differ
            iou = (truth & (back.masks[b] > 0)).sum() / (truth | (back.masks[b] > 0)).sum()
            assert iou > 0.97, (bone, iou)


def test_images_from_another_folder_and_embedded_images(phantoms, tmp_path):
    """--images takes the originals (here DICOM) by the stem of imagePath; without the file
    beside it, the embedded imageData is used."""
    s = phantoms[0]
    lm = tmp_path / "lm"
    _write_labelme(lm, [s])
    originals = tmp_path / "dicom"
    originals.mkdir()
    write_dicom(originals / f"{s.id}.dcm", np.round(s.image * 4095).astype(np.uint16),
                pixel_spacing=[0.15, 0.15])
    assert main([str(lm), str(tmp_path / "d1"), "--images", str(originals)]) == 0
    assert [p.name for p in (tmp_path / "d1" / "images").iterdir()] == [f"{s.id}.dcm"]
    assert read_sample(tmp_path / "d1", s.id).spacing_mm == pytest.approx((0.15, 0.15))

    png = (lm / f"{s.id}.png").read_bytes()
    (lm / f"{s.id}.png").unlink()
    data = json.loads((lm / f"{s.id}.json").read_text())
    data["imageData"] = base64.b64encode(png).decode()
    (lm / f"{s.id}.json").write_text(json.dumps(data))
    assert main([str(lm), str(tmp_path / "d2")]) == 0
    assert (tmp_path / "d2" / "images" / f"{s.id}.png").read_bytes() == png


def _one_problem(lm: Path, out: Path, capsys, *args: str) -> str:
    assert main([str(lm), str(out), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[-1].endswith("nothing imported"), err
    assert not out.exists() or not any(out.iterdir())
    return err[0]


@pytest.mark.parametrize("edit, words", [
    (lambda d: d["shapes"].append(_shape("ruler", [[1, 1], [5, 5]], "line")),
     "label 'ruler' is none of femur"),
    (lambda d: d["shapes"].append(d["shapes"][4]), "2 shapes labelled p_blum"),
    (lambda d: d["shapes"].pop(3), "no polygon labelled fibula"),
    (lambda d: d["shapes"][0].update(shape_type="rectangle"),
     "femur is drawn as a 'rectangle'; it must be a polygon"),
    (lambda d: d["shapes"][4].update(points=[[float("nan"), 3.0]]), "finite numbers"),
    (lambda d: d["shapes"][4].update(points=[[-50.0, 3.0]]), "p_blum: (-50, 3) lies outside the"),
    (lambda d: d.update(imageWidth=d["imageWidth"] + 1), "the points would not lie on it"),
    (lambda d: d.update(imagePath="gone.png"), "give the images' folder with --images"),
    (lambda d: d.pop("shapes"), "not a LabelMe file"),
    (lambda d: d["shapes"][4].update(points=[[10.0, 10.0], [20.0, 20.0]]),
     "the p_blum point holds 2 points; it must be one"),
    (lambda d: d["shapes"][4].update(points=[["20", "20"]]), "finite numbers"),
    (lambda d: d.update(imagePath="/etc/hostname.png"), "give the images' folder"),
])
def test_each_problem_is_one_line_naming_the_file(phantoms, tmp_path, capsys, edit, words):
    good, bad = _write_labelme(tmp_path / "lm", phantoms)
    data = json.loads(bad.read_text())
    edit(data)
    bad.write_text(json.dumps(data))
    line = _one_problem(tmp_path / "lm", tmp_path / "out", capsys)
    assert line.startswith(f"{bad}: ") and words in line, line


def test_labels_mapped_or_ignored(phantoms, tmp_path, capsys):
    lm = tmp_path / "lm"
    (path,) = _write_labelme(lm, phantoms[:1], labels={"femur": "Os femoris", "p_blum": "LM1"})
    data = json.loads(path.read_text())
    data["shapes"].append(_shape("Sphere", [[1, 1], [9, 1], [9, 9]], "polygon"))
    path.write_text(json.dumps(data))
    line = _one_problem(lm, tmp_path / "out", capsys)
    assert "label 'Os femoris' is none of" in line and "--label 'Os femoris=<target>'" in line
    assert main([str(lm), str(tmp_path / "out"), "--label", "os femoris=femur", "--label",
                 "LM1=p_blum", "--ignore", "sphere"]) == 0
    assert normalised("  Cortex-Line ") == "cortex_line"


def test_refuses_a_folder_that_holds_a_dataset(phantoms, tmp_path, capsys):
    _write_labelme(tmp_path / "lm", phantoms[:1])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert main([str(tmp_path / "lm"), str(tmp_path / "out")]) == 1
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


def test_costly_files_are_refused_before_the_work(phantoms, tmp_path, capsys, monkeypatch):
    """Bounded before parsing (file size) and before filling (points in all)."""
    import datamodules.labelme_import as labelme_import

    _, path = _write_labelme(tmp_path / "lm", phantoms)
    data = json.loads(path.read_text())
    for shape in data["shapes"][:4]:  # four bones of 30 000 points each
        shape["points"] = [[10.0 + (k % 7), 10.0 + (k % 11)] for k in range(30_000)]
    path.write_text(json.dumps(data))
    line = _one_problem(tmp_path / "lm", tmp_path / "out", capsys)
    assert line.startswith(f"{path}: more than 100000 points in all"), line
    (tmp_path / "lm" / f"{phantoms[0].id}.json").unlink()
    monkeypatch.setattr(labelme_import, "MAX_LABELME_BYTES", 1000)
    line = _one_problem(tmp_path / "lm", tmp_path / "out", capsys)
    assert line == f"{path}: larger than 0.001 MB: not a LabelMe file", line


def test_images_folder_is_searched_by_exact_name(phantoms, tmp_path, capsys):
    """An image named like a glob pattern ("knee[1]") is found by its name, not as a pattern;
    an --images path that is not a folder is one line."""
    s = phantoms[0]
    lm = tmp_path / "lm"
    (path,) = _write_labelme(lm, [s])
    data = json.loads(path.read_text())
    data["imagePath"] = "knee[1].png"
    path.write_text(json.dumps(data))
    originals = tmp_path / "originals"
    originals.mkdir()
    write_image(originals / "knee[1].png", np.round(s.image * 65535).astype(np.uint16))
    write_image(originals / "knee1.png", np.zeros((8, 8), np.uint8))  # what the pattern matches
    assert main([str(lm), str(tmp_path / "d"), "--images", str(originals)]) == 0
    assert (tmp_path / "d" / "images" / f"{s.id}.png").read_bytes() == (
        originals / "knee[1].png").read_bytes()
    assert main([str(lm), str(tmp_path / "d2"), "--images", str(path)]) == 1
    assert f"{path}: not a folder" in capsys.readouterr().err


def test_images_outside_the_labelme_folders_parent_are_not_copied(phantoms, tmp_path, capsys):
    """Session 29 review: an absolute or far imagePath copied any readable image on the disk
    into the dataset; LabelMe's own ../images/a.png layout still works."""
    s = phantoms[0]
    project = tmp_path / "project"
    (path,) = _write_labelme(project / "labels", [s])
    (project / "images").mkdir()
    (project / "labels" / f"{s.id}.png").rename(project / "images" / f"{s.id}.png")
    data = json.loads(path.read_text())
    data["imagePath"] = f"../images/{s.id}.png"
    path.write_text(json.dumps(data))
    assert main([str(project / "labels"), str(tmp_path / "d1")]) == 0
    secret = tmp_path / "secret.png"
    (project / "images" / f"{s.id}.png").rename(secret)
    data["imagePath"] = str(secret)
    path.write_text(json.dumps(data))
    line = _one_problem(project / "labels", tmp_path / "d2", capsys)
    assert f"its imagePath {str(secret)!r} lies outside {project}" in line, line
    assert secret.exists()


def test_macos_metadata_and_a_file_as_the_output_are_one_line(phantoms, tmp_path, capsys):
    lm = tmp_path / "lm"
    _write_labelme(lm, phantoms[:1])
    (lm / "._knee 0.json").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble: skipped
    assert main([str(lm), str(tmp_path / "d")]) == 0
    (tmp_path / "file").write_text("x")
    assert main([str(lm), str(tmp_path / "file")]) == 1
    assert f"{tmp_path / 'file'}: not a folder" in capsys.readouterr().err
