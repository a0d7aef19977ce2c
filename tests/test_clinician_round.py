"""A clinician's walkthrough of ``make plan`` (session 30): an earlier plan of another patient
is never overwritten; a report says which model made it, when, and its verdict in words; the
overlay names a detector-plane spacing as such, keeps labels of close points apart, draws the
Schoettle point as a ring without a mm scale and accented file names readably; model-file
mix-ups (an ONNX export named .ckpt, its .json, an .onnx without its .json) are named; a refused
model leaves no empty output folder; a folder's subfolders are said to be skipped; a DICOM whose
header says another modality or body part is flagged first; mm without a pixel spacing are said
to be estimates."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
from model_files import exported_tiny_model, phantom_images

from planning.batch import output_stems, renamed_plans
from planning.plan import main


def _report(folder: Path, image: Path, name: str = "knee") -> Path:
    """An earlier plan report in ``folder`` recording ``image``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_plan.json"
    path.write_text(json.dumps({"image": {"path": str(image)}}))
    (folder / f"{name}_plan.png").write_bytes(b"png")
    return path


def test_output_stems_keep_another_images_plan(tmp_path):
    a, b = tmp_path / "a" / "knee.png", tmp_path / "b" / "knee.png"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(b"x")
    out = tmp_path / "out"
    assert output_stems([a], out) == ["knee"]  # nothing there yet
    _report(out, a)
    assert output_stems([a], out) == ["knee"]  # the same image: its plan is replaced
    assert output_stems([b], out) == ["knee-2"]  # another image: kept
    assert renamed_plans([b], ["knee-2"], out) == [
        f"{out / 'knee_plan.json'} is the plan of another image (or its overlay a file of "
        f"another): the plan of {b} is written as knee-2_plan.json / .png"]
    _report(out, b, "knee-2")
    assert output_stems([b], out) == ["knee-2"]  # and b's own plan is found again
    assert output_stems([a, b], out) == ["knee_png", "knee_png-2"]  # one batch, two folders
    # an overlay without its report, or a report that is not one: not ours to overwrite
    (out / "x_plan.png").write_bytes(b"png")
    (out / "y_plan.json").write_text("{not json")
    (out / "z_plan.json").write_text(json.dumps({"image": {"path": 3}}))
    for stem in ("x", "y", "z"):
        p = tmp_path / "a" / f"{stem}.png"
        p.write_bytes(b"x")
        assert output_stems([p], out) == [f"{stem}-2"]


def test_single_plans_of_two_patients_named_alike(tmp_path_factory, tmp_path, capsys):
    """PACS exports name every patient's file IM0001: the second plan took the first one's
    place without a word (walkthrough, session 30)."""
    model = exported_tiny_model(tmp_path_factory)
    good = phantom_images(tmp_path_factory, n=2)
    a, b = tmp_path / "a" / "knee.png", tmp_path / "b" / "knee.png"
    for src, dst in zip(good, (a, b), strict=True):
        dst.parent.mkdir()
        shutil.copy(src, dst)
    out = tmp_path / "plans"
    args = ["--ckpt", str(model), "--out", str(out), "--tta", "0"]
    assert main(["--image", str(a), *args]) == 0
    first = (out / "knee_plan.json").read_text()
    capsys.readouterr()
    assert main(["--image", str(b), *args]) == 0
    err = capsys.readouterr().err
    assert "is the plan of another image" in err and "knee-2_plan.json" in err
    assert (out / "knee_plan.json").read_text() == first  # the first patient's plan kept
    rep = json.loads((out / "knee-2_plan.json").read_text())
    assert rep["image"]["path"] == str(b)
    # which model, when, which software, the verdict in words
    meta = model.with_suffix(".json")
    both = (hashlib.sha256(model.read_bytes()).digest()
            + hashlib.sha256(meta.read_bytes()).digest())
    assert rep["model_sha256"] == hashlib.sha256(both).hexdigest()
    made = datetime.fromisoformat(rep["created_utc"])
    assert abs((datetime.now(UTC) - made).total_seconds()) < 600
    assert rep["kneeplan_version"] == version("kneeplan")
    assert rep["verdict"] == ("needs review" if rep["needs_review"] else "no review reason found")
    assert rep["verdict"] == "needs review"  # (--tta 0 is a reason by itself)
    assert rep["image"]["sha256"] == hashlib.sha256(b.read_bytes()).hexdigest()
    assert rep["image"]["real_path"] == str(b.resolve())
    # the same image again: its own plan is replaced, nothing new is made
    assert main(["--image", str(a), *args]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "knee-2_plan.json", "knee-2_plan.png", "knee_plan.json", "knee_plan.png"]
    # the same file name re-used for another patient (a PACS export folder, each day): the
    # path is the same, the bytes are not: kept (review: decided by path alone it was replaced)
    first = (out / "knee_plan.json").read_text()
    shutil.copy(b, a)
    assert main(["--image", str(a), *args]) == 0
    assert (out / "knee_plan.json").read_text() == first
    # (its bytes are b's now: b's plan, knee-2, is the same image's and is replaced)
    assert json.loads((out / "knee-2_plan.json").read_text())["image"]["path"] == str(a)


def test_relative_image_paths_from_two_folders_keep_both_plans(
        tmp_path_factory, tmp_path, capsys, monkeypatch):
    """A report recorded the path as typed; read back from another working folder, patient B's
    ``IM0001.png`` was taken for patient A's and replaced it (review, session 30)."""
    model = exported_tiny_model(tmp_path_factory)
    good = phantom_images(tmp_path_factory, n=2)
    out = tmp_path / "plans"
    for src, name in zip(good, ("a", "b"), strict=True):
        (tmp_path / name).mkdir()
        shutil.copy(src, tmp_path / name / "IM0001.png")
        monkeypatch.chdir(tmp_path / name)
        assert main(["--image", "IM0001.png", "--ckpt", str(model), "--out", str(out),
                     "--tta", "0"]) == 0
    assert sorted(p.name for p in out.glob("*.json")) == ["IM0001-2_plan.json",
                                                          "IM0001_plan.json"]
    # an older report (no digest) naming the image by a relative path: not taken for ours
    old = out / "IM0001_plan.json"
    rep = json.loads(old.read_text())
    del rep["image"]["sha256"]
    old.write_text(json.dumps(rep))
    assert output_stems([tmp_path / "a" / "IM0001.png"], out) == ["IM0001-3"]
    rep["image"]["path"] = str(tmp_path / "a" / "IM0001.png")
    old.write_text(json.dumps(rep))
    assert output_stems([tmp_path / "a" / "IM0001.png"], out) == ["IM0001"]


def test_model_digest_of_a_checkpoint_is_its_sha256sum(tmp_path):
    from planning.batch import model_digest

    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"some bytes" * 1000)
    assert model_digest(ckpt) == hashlib.sha256(ckpt.read_bytes()).hexdigest()


def test_verdict_words():
    from planning.report import verdict

    assert verdict(None) == "not reviewed"
    assert verdict([]) == "no review reason found"
    assert verdict(["x"]) == "needs review"


def test_accented_file_names_are_drawn_readably():
    from planning.overlay import printable

    assert printable("Röntgen knie links.png") == "Rontgen knie links.png"
    assert printable("Straße Ærø Łódź") == "Strasse AEro Lodz"
    assert printable("x\udcff.png") == "x\\udcff.png"  # not UTF-8: escaped, no crash
    assert printable("膝.png") == "\\u819d.png"


def test_labels_of_close_points_do_not_overlap():
    """Two points 14 px apart had their labels drawn over each other."""
    from planning.overlay import Style, _covers, _overlap, _place_labels

    img = np.zeros((900, 900, 3), np.uint8)
    st = Style(900, 900)
    pts = [np.array([450.0, 450.0]), np.array([464.0, 450.0]), np.array([457.0, 470.0])]
    items = [(name, p, (255, 255, 255), float(st.marker))
             for name, p in zip(("p_tmc", "Schoettle", "p_blum"), pts, strict=True)]
    boxes = _place_labels(img, items, st)
    assert len(boxes) == 3
    for i in range(3):
        for j in range(i + 1, 3):
            assert not _overlap(boxes[i], boxes[j]), (boxes[i], boxes[j])
    for i, box in enumerate(boxes):  # and no label covers another point
        assert not any(_covers(box, p, 0.0) for k, p in enumerate(pts) if k != i)
    assert img.any()


def test_schoettle_point_without_scale_is_a_ring():
    """Without a mm scale the point was a 4 px dot, the hardest mark on the overlay to find."""
    from dataclasses import replace

    from datamodules.phantoms import PhantomConfig, generate_phantom
    from geometry.plan_geometry import plan_from_maps
    from planning.oracle import oracle_maps
    from planning.overlay import SCHOETTLE_COLOUR, Style, draw_plan

    sample = generate_phantom(11, PhantomConfig(min_side=400, max_side=560).clean())
    maps = oracle_maps(sample, 256)
    plan = plan_from_maps(maps.seg, maps.lm, maps.roi, frame=maps.frame, spacing=None)
    h, w = sample.image.shape
    centre = np.array([w / 2, h / 2])  # away from the landmarks' own marks
    plan = replace(plan, schoettle=centre, lm1=None, lm2=None, lm3=None)
    rgb = draw_plan(np.full((h, w), 0.5, np.float32), plan)
    # (anti-aliased: a 1 px ring has few pixels of exactly its colour)
    green = np.abs(rgb[:h, :w].astype(int) - SCHOETTLE_COLOUR).sum(axis=2) < 120
    ys, xs = np.nonzero(green)
    r = np.hypot(xs - centre[0], ys - centre[1])
    marker = Style(h, w).marker
    assert (np.abs(r - marker) < 1.5).sum() > 20  # the ring at a marker's radius
    assert (r < 3).sum() > 0  # and the dot at its centre


def test_detector_plane_spacing_is_named_on_the_overlay():
    from geometry.pixel_spacing import PixelSpacing, SpacingResolution
    from planning.overlay import _scale_line

    raw = SpacingResolution(PixelSpacing(0.132, 0.132, "ImagerPixelSpacing"),
                            [{"source": "ImagerPixelSpacing", "accepted": True}])
    scaled = SpacingResolution(PixelSpacing(0.11, 0.11, "ImagerPixelSpacing"),
                               [{"source": "ImagerPixelSpacing", "accepted": True,
                                 "magnification": 1.2}])
    assert raw.source_detail == "ImagerPixelSpacing"
    assert scaled.source_detail == "ImagerPixelSpacing/magnification"
    line = _scale_line((0.132, 0.132), raw.source_detail)
    assert "not corrected for magnification" in line and "/ magnification" not in line
    assert _scale_line((0.11, 0.11), scaled.source_detail).endswith(
        "from DICOM ImagerPixelSpacing / magnification")


@pytest.mark.parametrize("kind", ["onnx_as_ckpt", "json_as_ckpt", "onnx_without_json"])
def test_model_file_mixups_are_named(tmp_path_factory, tmp_path, capsys, kind):
    model = exported_tiny_model(tmp_path_factory)
    image = phantom_images(tmp_path_factory, n=2)[0]
    given = tmp_path / {"onnx_as_ckpt": "model.ckpt", "json_as_ckpt": "desc.ckpt",
                        "onnx_without_json": "lone.onnx"}[kind]
    shutil.copy(model.with_suffix(".json") if kind == "json_as_ckpt" else model, given)
    for spec, out in ((str(image), tmp_path / "o1"), (str(image.parent), tmp_path / "o2")):
        assert main(["--image", spec, "--ckpt", str(given), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("plan: error: "), err
        want = {"onnx_as_ckpt": "an ONNX model (make export's output)",
                "json_as_ckpt": "a JSON file (an export's description?",
                "onnx_without_json": "lone.json: missing: an exported model needs the "
                                     "description"}[kind]
        assert want in err[0], err
        assert not out.exists()  # a refused model leaves no empty output folder


def test_subfolders_of_a_folder_are_said_to_be_skipped(tmp_path_factory, tmp_path, capsys):
    from planning.batch import subfolders

    model = exported_tiny_model(tmp_path_factory)
    folder = tmp_path / "export"
    (folder / "series2").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    shutil.copy(phantom_images(tmp_path_factory, n=2)[0], folder / "knee.png")
    assert subfolders(str(folder)) == [folder / "series2"]
    assert subfolders(str(folder / "knee.png")) == []
    main(["--image", str(folder), "--ckpt", str(model), "--out", str(tmp_path / "o"),
          "--tta", "0"])
    err = capsys.readouterr().err
    assert "export: 1 subfolder(s) (series2) not searched: give each folder" in err


def test_dicom_header_of_another_modality_or_body_part_is_a_reason(tmp_path):
    """A chest or an MR file was planned as a knee, flagged only by image evidence."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from datamodules.image_io import load_image
    from planning.plan import dicom_header

    def write(name: str, **tags: str) -> Path:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = tmp_path / name
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.Rows = ds.Columns = 64
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 0
        ds.PixelData = (np.arange(64 * 64, dtype=np.uint16) * 7).tobytes()
        for key, value in tags.items():
            setattr(ds, key, value)
        ds.save_as(path, enforce_file_format=True)
        assert pydicom.dcmread(path).Rows == 64
        return path

    from planning.review import header_reasons

    mr = dicom_header(load_image(write("mr.dcm", Modality="MR", BodyPartExamined="knee ")))
    assert mr == {"modality": "MR", "body_part": "KNEE"}
    assert [r.code for r in header_reasons(mr)] == ["dicom_modality"]
    chest = dicom_header(load_image(write("chest.dcm", Modality="DX",
                                          BodyPartExamined="CHEST")))
    assert [r.code for r in header_reasons(chest)] == ["dicom_body_part"]
    assert "BodyPartExamined 'CHEST'" in header_reasons(chest)[0]
    assert dicom_header(load_image(write("plain.dcm"))) == {}
    assert header_reasons(dicom_header(load_image(write("knee.dcm", Modality="CR",
                                                        BodyPartExamined="KNIE")))) == []


def test_mm_without_spacing_are_said_to_be_estimates():
    from datamodules.phantoms import PhantomConfig, generate_phantom
    from geometry.plan_geometry import masks_to_original, plan_from_maps
    from planning.oracle import oracle_maps
    from planning.review import ReviewContext, review
    from planning.tta import Uncertainty

    sample = generate_phantom(11, PhantomConfig(min_side=400, max_side=560).clean())
    maps = oracle_maps(sample, 256)
    masks = masks_to_original(maps.seg, maps.frame)
    calm = np.stack([np.eye(2) * 0.01] * 3)
    wild = calm.copy()
    wild[2] = np.eye(2) * 100.0  # the Schoettle point 10 px (1 sigma)
    unc = Uncertainty(np.zeros((8, 3, 2)), wild, 0.0)
    for spacing, said in ((sample.spacing_mm, False), (None, True)):
        plan = plan_from_maps(maps.seg, maps.lm, maps.roi, frame=maps.frame, spacing=spacing,
                              decode="quadratic")
        scale = type("Scale", (), {"mm_per_px": float(np.mean(sample.spacing_mm))})()
        found = review(plan, ReviewContext(masks=masks, image=sample.image, uncertainty=unc,
                                           scale=scale, tta_count=8))
        spread = [r for r in found if r.code == "tta_spread"]
        assert spread, [str(r) for r in found]
        assert ("mm estimated from the femur's size" in spread[0]) is said, spread[0]


def test_a_folder_of_series_subfolders_says_so(tmp_path_factory, tmp_path, capsys):
    """A PACS export holding only series folders: "no image files found" and no hint."""
    model = exported_tiny_model(tmp_path_factory)
    (tmp_path / "export" / "series1").mkdir(parents=True)
    shutil.copy(phantom_images(tmp_path_factory, n=2)[0], tmp_path / "export" / "series1")
    assert main(["--image", str(tmp_path / "export"), "--ckpt", str(model), "--out",
                 str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no image files" in err[0], err
    assert "it holds 1 subfolder(s) (series1): give one, or a quoted glob" in err[0]


def test_output_stems_end_where_the_folder_cannot_be_looked_at(tmp_path):
    """Taken as existing, every name of an output folder whose name is too long was taken and
    output_stems never ended (the batch hung before its output check could say so)."""
    image = tmp_path / "knee.png"
    image.write_bytes(b"x")
    assert output_stems([image], tmp_path / ("x" * 300)) == ["knee"]
