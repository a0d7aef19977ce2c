"""make plan: image in, overlay PNG + JSON report out; never a traceback on a bad input.

An "oracle module" that returns a phantom's ground-truth maps stands in for a trained network,
so the whole path (reading, spacing, pad+resize, geometry, mapping back, drawing, report) is
checked against the rater's own Schoettle construction; an untrained tiny checkpoint checks the
real checkpoint path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from datamodules.dataset_io import write_sample
from datamodules.phantoms import PhantomConfig, generate_phantom
from datamodules.sample import Sample
from geometry.lines import Line
from geometry.plan_geometry import Plan
from planning.oracle import oracle_maps
from planning.overlay import SCHOETTLE_COLOUR, draw_plan, to_rgb
from planning.plan import main, run_plan
from planning.predict import network_input, predict_images
from planning.references import rater_schoettle
from planning.report import build_report
from tests.model_files import untrained_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
CFG = PhantomConfig(min_side=400, max_side=640)


class OracleModule:
    """Stands in for a trained module: returns the ground-truth maps of one sample."""

    image_size = 256

    def __init__(self, sample: Sample):
        self.maps = oracle_maps(sample, self.image_size)
        self.expected_input, _ = network_input(sample.image, self.image_size)

    def predict_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        assert x.shape == (1, 1, 256, 256)
        np.testing.assert_allclose(x[0, 0].numpy(), self.expected_input, atol=1e-4)
        return {k: torch.from_numpy(np.asarray(getattr(self.maps, k))[None].copy())
                for k in ("seg", "lm", "roi")}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> tuple[Sample, Path]:
    root = tmp_path_factory.mktemp("plan_data")
    sample = generate_phantom(7, CFG.clean())
    return sample, write_sample(root, sample)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """An untrained tiny checkpoint in Lightning's format (no training needed)."""
    return untrained_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


def _is_colour(px: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> bool:
    return bool(np.all(np.abs(px.astype(int) - np.array(rgb)) <= tol))


def _ring_fraction(img: np.ndarray, centre: np.ndarray, radius: float, rgb: tuple[int, int, int],
                   band: float = 1.0) -> float:
    """Fraction of 72 rays from ``centre`` (x, y) with a pixel of ``rgb`` (tolerance 90) within
    ``band`` px of ``radius``."""
    hits = []
    for a in np.linspace(0, 2 * np.pi, 72, endpoint=False):
        d = np.linspace(radius - band, radius + band, 9)
        xs = np.round(centre[0] + d * np.cos(a)).astype(int)
        ys = np.round(centre[1] + d * np.sin(a)).astype(int)
        hits.append(any(_is_colour(img[y, x], rgb, 90) for x, y in zip(xs, ys, strict=True)))
    return float(np.mean(hits))


def test_plan_with_oracle_maps_matches_rater_construction(phantom, tmp_path):
    sample, img_path = phantom
    from planning.review import ReviewConfig

    # the oracle's maps ignore the image, so TTA has nothing to measure: accept plans without it
    # openly (min_tta 0), as a user's review config would; by default --tta 0 is a reason
    res = run_plan(img_path, OracleModule(sample), tmp_path, decode="quadratic", tta=0,
                   review_config=ReviewConfig(min_tta=0))
    default = run_plan(img_path, OracleModule(sample), tmp_path / "d", decode="quadratic", tta=0)
    assert default.report["review_codes"] == ["tta_off"], default.report["review_reasons"]
    rep = res.report
    assert rep["settings"]["review_config"] == {"file": "defaults", "changed": {"min_tta": 0}}
    assert default.report["settings"]["review_config"]["changed"] == {}
    assert rep["spacing"]["source"] == "annotation"
    sp = sample.spacing_mm
    assert rep["spacing"]["row_mm"] == pytest.approx(sp[0])
    truth = rater_schoettle(sample.annotations[0], sp)
    px = np.array(rep["schoettle_point"]["px"])
    err_mm = np.hypot(*((px - truth) * [sp[1], sp[0]]))
    assert err_mm < 1.0, err_mm
    np.testing.assert_allclose(rep["schoettle_point"]["mm"], px * [sp[1], sp[0]], rtol=1e-9)
    for i, name in enumerate(("p_blum", "p_tmc")):
        np.testing.assert_allclose(rep["landmarks"][name]["px"], sample.landmarks[i], atol=0.05)
    assert rep["needs_review"] is False, rep["review_reasons"]
    assert rep["confidence"]["roi_support_points"] >= 10
    # overlay at the original resolution; Schoettle dot and 2.5 mm circle drawn in green
    over = cv2.imread(str(res.overlay))[..., ::-1]
    # the panel beside the image may be taller than it (every reason, wrapped)
    assert over.shape[0] >= sample.shape[0] and over.shape[1] > sample.shape[1]  # + legend panel
    cx, cy = np.round(px).astype(int)
    assert _is_colour(over[cy, cx], SCHOETTLE_COLOUR)
    r = 2.5 / sp[1]
    # the ring is anti-aliased, about a pixel wide, around the sub-pixel point: each of 72 rays
    # looks for the colour within 1 px of the radius; none at 1.5 x the radius (right size)
    assert _ring_fraction(over, px, r, SCHOETTLE_COLOUR) > 0.9
    assert _ring_fraction(over, px, 1.5 * r, SCHOETTLE_COLOUR) < 0.1
    assert json.loads(res.report_path.read_text())["schoettle_point"]["px"] == list(px)


def test_plan_dicom_spacing_and_unknown_spacing(phantom, tmp_path):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    sample, img_path = phantom
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = sample.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = [0.21, 0.21]
    ds.PixelData = np.round(sample.image * 65535).astype(np.uint16).tobytes()
    dcm = tmp_path / "knee.dcm"
    ds.save_as(dcm, enforce_file_format=True)
    rep = run_plan(dcm, OracleModule(sample), tmp_path / "out", tta=0).report
    assert rep["spacing"]["source"] == "PixelSpacing"
    assert (rep["spacing"]["row_mm"], rep["spacing"]["col_mm"]) == (0.21, 0.21)

    bare = tmp_path / "bare.png"  # not in a dataset folder, no sphere search: spacing unknown
    shutil.copy(img_path, bare)
    rep = run_plan(bare, OracleModule(sample), tmp_path / "out", detect_sphere=False,
                   tta=0).report
    assert rep["spacing"]["source"] == "unknown" and rep["spacing"]["row_mm"] is None
    assert rep["schoettle_point"]["mm"] is None and rep["schoettle_point"]["px"] is not None
    assert rep["needs_review"] and any("spacing unknown" in r for r in rep["review_reasons"])
    # the user's spacing wins over everything
    rep = run_plan(bare, OracleModule(sample), tmp_path / "out", user_spacing=[0.3],
                   tta=0).report
    assert rep["spacing"]["source"] == "user" and rep["spacing"]["col_mm"] == 0.3


def test_plan_cli_with_tiny_checkpoint(phantom, tiny_ckpt, tmp_path, capsys):
    sample, img_path = phantom
    rc = main(["--image", str(img_path), "--ckpt", str(tiny_ckpt), "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    over = cv2.imread(str(tmp_path / f"{img_path.stem}_plan.png"))
    # the panel beside the image may be taller than it (every reason, wrapped)
    assert over.shape[0] >= sample.shape[0] and over.shape[1] > sample.shape[1]
    text = (tmp_path / f"{img_path.stem}_plan.json").read_text()
    rep = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert rep["checkpoint"] == str(tiny_ckpt) and rep["settings"]["network_size"] == 64
    assert set(rep["confidence"]["segmentation"]) == {"femur", "patella", "tibia", "fibula"}
    assert isinstance(rep["needs_review"], bool)
    assert all(isinstance(r, str) for r in rep["review_reasons"])


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    (tmp / "empty.png").write_bytes(b"")
    (tmp / "text.png").write_text("this is not an image\n")
    (tmp / "junk.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x01\x02" * 50)
    cv2.imwrite(str(tmp / "blank.png"), np.full((300, 200), 128, np.uint8))
    cv2.imwrite(str(tmp / "tiny.png"), np.arange(64, dtype=np.uint8).reshape(8, 8))
    (tmp / "folder.png").mkdir()
    return {
        "missing": tmp / "nope.png", "empty": tmp / "empty.png", "text": tmp / "text.png",
        "junk dicom": tmp / "junk.dcm", "blank": tmp / "blank.png", "tiny": tmp / "tiny.png",
        "folder": tmp / "folder.png",
    }


def test_plan_bad_images_fail_cleanly(tiny_ckpt, tmp_path, capsys):
    for what, path in _bad_inputs(tmp_path).items():
        rc = main(["--image", str(path), "--ckpt", str(tiny_ckpt), "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert rc == 1, what
        assert err.startswith("plan: error: ") and path.name in err, (what, err)
        assert "Traceback" not in err
    assert not list(tmp_path.glob("*_plan.*"))
    rc = main(["--image", str(tmp_path / "blank.png"), "--ckpt", str(tmp_path / "none.ckpt")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_plan_process_exits_nonzero_without_traceback(tiny_ckpt, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)  # truncated PNG
    proc = subprocess.run(
        [sys.executable, "-m", "planning.plan", "--image", str(bad), "--ckpt", str(tiny_ckpt)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "broken.png" in proc.stderr


def test_predict_images_batches_like_single_images(tiny_ckpt):
    from lightning_modules.module import load_module

    module = load_module(tiny_ckpt)
    rng = np.random.default_rng(0)
    imgs = [rng.random((90, 70)).astype(np.float32), rng.random((50, 120)).astype(np.float32)]
    both = predict_images(module, imgs, batch_size=2)
    for img, m in zip(imgs, both, strict=True):
        single = predict_images(module, [img], batch_size=1)[0]
        assert m.seg.shape == (4, 64, 64) and m.lm.shape == (2, 64, 64)
        assert m.roi.shape == (1, 64, 64)
        assert (m.frame.orig_h, m.frame.orig_w) == img.shape
        np.testing.assert_allclose(m.seg, single.seg, atol=1e-5)
        assert m.seg.min() >= 0 and m.seg.max() <= 1


def _plan(schoettle: np.ndarray, spacing=(0.2, 0.2)) -> Plan:
    """LM1 is x = 50; the femur side is +x (normal (-1, 0): side -1); p_blum 40 px anterior."""
    lm1 = Line(np.array([50.0, 0.0]), np.array([0.0, 1.0]))
    unit = 1.0 if spacing is None else spacing[1]
    return Plan(
        landmarks=np.array([[90.0, 100.0], [50.0, 140.0]]), landmarks_network=np.zeros((2, 2)),
        peaks=np.array([0.9, 0.8]), lm1=lm1, lm1_support=40, lm1_points=np.zeros((0, 2)),
        lm1_rms=0.1, roi_peak=0.95, lm2=lm1.perpendicular_through(np.array([50.0, 140.0])),
        lm3=lm1.perpendicular_through(np.array([90.0, 100.0])), schoettle=schoettle,
        radius_mm=4.0, radius_px=20.0, lm_separation=8.0, spacing=spacing, image_shape=(200, 160),
        femur_side=-1, blum_offset=40.0 * unit, tmc_offset=0.0,
    )  # fmt: skip


def test_report_values_and_strict_json_with_degenerate_plan():
    plan = _plan(np.array([70.0, 120.0]), spacing=(0.1, 0.2))
    rep = build_report(plan, image_path="x.png", image_shape=(200, 160), spacing_source="sphere",
                       checkpoint=None, overlay_path=None)
    assert rep["schoettle_point"]["mm"] == pytest.approx([14.0, 12.0])  # x*col, y*row
    assert rep["landmarks"]["p_tmc"]["mm"] == pytest.approx([10.0, 14.0])
    assert rep["lm1"]["direction_px"] == pytest.approx([0.0, 1.0])
    assert rep["spacing"]["source"] == "sphere" and rep["needs_review"] is False
    nan_plan = _plan(np.full(2, np.nan), spacing=None)
    rep = build_report(nan_plan, image_path="x.png", image_shape=(200, 160), spacing_source=None,
                       checkpoint=None, overlay_path=None,
                       reasons=["p_blum lies on LM1: the anterior side is undefined"])
    json.dumps(rep, allow_nan=False)
    assert rep["schoettle_point"]["px"] is None and rep["spacing"]["source"] == "unknown"
    assert rep["needs_review"] is True


def test_overlay_draws_lines_circle_and_banner():
    img = np.full((200, 160), 0.3, np.float32)
    plan = _plan(np.array([70.0, 120.0]))
    rgb = draw_plan(img, plan)
    assert rgb.shape[0] >= 200 and rgb.shape[1] > 160 and rgb.dtype == np.uint8
    # the legend stands beside the radiograph: the image's empty top corners stay untouched
    gray = to_rgb(img)[0, 0, 0]
    assert (rgb[:20, :20] == gray).all() and (rgb[:20, 140:160] == gray).all()
    assert (rgb[:, 160:] != gray).any()  # the panel holds the legend
    assert _is_colour(rgb[170, 50], (255, 40, 40), 60)  # LM1 is the vertical line x = 50
    assert _is_colour(rgb[120, 70], SCHOETTLE_COLOUR)
    r = 2.5 / 0.2  # 12.5 px
    assert _is_colour(rgb[120, int(round(70 + r))], SCHOETTLE_COLOUR, 100)
    assert _is_colour(rgb[int(round(120 - r)), 70], SCHOETTLE_COLOUR, 100)
    # the verdict stands in the panel, never over the radiograph (it hides no anatomy)
    flagged = draw_plan(img, plan, reasons=["something is off"])
    assert np.array_equal(flagged[:200, :160], rgb[:200, :160])
    def red(x: np.ndarray) -> int:  # the verdict's red (LM1's legend swatch shares it)
        return int(np.all(np.abs(x[:, 160:].astype(int) - (255, 40, 40)) <= 30, axis=-1).sum())

    assert red(flagged) > red(rgb) + 20


def test_plausibility_checks_hand_made_plans():
    from dataclasses import replace
    from types import SimpleNamespace

    from planning.review import ReviewContext, review

    femur = np.zeros((200, 160), bool)
    femur[80:161, 40:101] = True
    masks = np.stack([femur] + [np.zeros_like(femur)] * 3)
    checked = {"uncalibrated_peak", "tmc_far", "separation_large", "off_femur"}

    def reasons(plan, scale=None):
        found = review(plan, ReviewContext(masks=masks, scale=scale))
        return [r for r in found if r.code in checked]

    good = _plan(np.array([70.0, 120.0]))  # spacing 0.2 mm, everything on the femur
    assert reasons(good) == []
    bad = replace(
        _plan(np.array([130.0, 120.0])),  # Schoettle 30 px = 6 mm right of the femur (x=100)
        peaks=np.array([3.0, 0.9]),
        landmarks=np.array([[90.0, 100.0], [100.0, 140.0]]),  # p_tmc 50 px = 10 mm from LM1
        tmc_offset=10.0, lm_separation=41.0,
    )  # fmt: skip
    found = reasons(bad)
    assert len(found) == 4, found
    assert "p_blum peaks at 3.00" in found[0]
    assert "p_tmc lies 10.0 mm from LM1" in found[1]
    assert "41.0 mm is implausible" in found[2]
    assert found[3] == "Schoettle point lies off the predicted femur (6.0 mm)"
    # without spacing no mm check is skipped: the anatomical scale (0.2 mm/px) stands in
    no_spacing = replace(bad, spacing=None, tmc_offset=50.0, lm_separation=205.0)
    found = reasons(no_spacing, scale=SimpleNamespace(mm_per_px=0.2))
    assert [r.code for r in found] == ["uncalibrated_peak", "tmc_far", "separation_large",
                                       "off_femur"], found  # fmt: skip
    assert "p_tmc lies 10.0 mm from LM1" in found[1] and "(6.0 mm)" in found[3]


def test_overlay_shows_a_narrow_range_image_stretched_and_others_as_they_are():
    ramp = np.tile(np.linspace(0.0, 1.0, 200, dtype=np.float32), (50, 1))
    np.testing.assert_array_equal(to_rgb(ramp)[..., 0], np.round(ramp * 255).astype(np.uint8))
    dark = ramp * np.float32(4095 / 65535)  # 12 bits in a 16-bit file, no window
    shown = to_rgb(dark)[..., 0]
    assert shown.min() == 0 and shown.max() == 255  # not a black picture
    assert np.all(np.diff(shown.astype(int), axis=1) >= 0)  # order kept


def test_sphere_search_needed_follows_the_precedence(tmp_path):
    """The search runs (beside the network) only when no source above it is valid."""
    from datamodules.image_io import load_image
    from planning.plan import sphere_search_needed
    from tests.dicom_files import write_dicom

    pixels = np.full((64, 64), 800, np.uint16)
    pixels[20:40, 20:40] = 3000
    png = tmp_path / "bare.png"
    cv2.imwrite(str(png), pixels)
    assert sphere_search_needed(load_image(png), png)
    assert not sphere_search_needed(load_image(png), png, [0.2])  # the user's spacing wins
    tagged, imager = tmp_path / "tagged.dcm", tmp_path / "imager.dcm"
    write_dicom(tagged, pixels, pixel_spacing=[0.2, 0.2])
    write_dicom(imager, pixels, imager_spacing=[0.2, 0.2])
    assert not sphere_search_needed(load_image(tagged), tagged)
    assert sphere_search_needed(load_image(imager), imager)  # the sphere ranks above it


def test_plan_spacing_from_the_sphere_searched_beside_the_network(tmp_path):
    """A bare PNG with the phantom's calibration sphere: the search (run in a thread while the
    network runs) gives the spacing, within the bench's error of the truth."""
    sample = generate_phantom(2, PhantomConfig(min_side=400, max_side=640, p_sphere=1.0))
    truth = sample.meta["sphere"]
    bare = tmp_path / "bare.png"
    cv2.imwrite(str(bare), np.round(sample.image * 65535).astype(np.uint16))
    rep = run_plan(bare, OracleModule(sample), tmp_path / "out", tta=0).report
    assert rep["spacing"]["source"] == "sphere"
    expected = truth["diameter_mm"] / (2 * truth["radius_px"])
    assert rep["spacing"]["col_mm"] == pytest.approx(expected, rel=0.03)
    assert rep["spacing"]["col_mm"] == pytest.approx(sample.spacing_mm[1], rel=0.03)
    assert rep["spacing"]["sphere"]["found"] and rep["spacing"]["sphere"]["accepted"]
