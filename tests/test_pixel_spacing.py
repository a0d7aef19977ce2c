"""One PixelSpacing value, one resolver: precedence, invalid tags, anatomy, JPEG, and the same mm
from ``make plan`` and ``make evaluate`` for the same DICOM file."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from datamodules.dataset_io import read_sample, write_sample
from datamodules.image_io import load_image
from datamodules.phantoms import PhantomConfig, generate_phantom
from geometry.anatomy_scale import ScaleEstimate
from geometry.pixel_spacing import PRECEDENCE, PixelSpacing, resolve_pixel_spacing
from planning.evaluate import evaluate_sample
from planning.oracle import oracle_maps
from planning.plan import run_plan
from tests.dicom_files import write_dicom


def test_pixel_spacing_value():
    sp = PixelSpacing(0.1, 0.12, "PixelSpacing")
    assert sp.as_tuple() == (0.1, 0.12) and sp.mean_mm == pytest.approx(0.11)
    for bad in (0.0, -0.1, float("nan"), float("inf"), 6.0, 0.001):
        with pytest.raises(ValueError, match="PixelSpacing"):
            PixelSpacing(bad, 0.1, "PixelSpacing")
    with pytest.raises(dataclasses.FrozenInstanceError):
        sp.row_mm = 0.2  # type: ignore[misc]
    assert PixelSpacing.from_value(0.2, "user").as_tuple() == (0.2, 0.2)


def test_precedence_every_pair():
    """Each source beats every later one (no sphere search: image None)."""
    vals = {"user": 0.11, "annotation": 0.12, "PixelSpacing": 0.13, "ImagerPixelSpacing": 0.15}
    keys = {"user": "user", "annotation": "annotation", "PixelSpacing": "dicom_pixel",
            "ImagerPixelSpacing": "dicom_imager"}  # fmt: skip
    order = [s for s in PRECEDENCE if s != "sphere"]
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            res = resolve_pixel_spacing(None, **{keys[a]: vals[a], keys[b]: vals[b]})
            assert res.source == a and res.spacing.row_mm == vals[a]
            assert [c["accepted"] for c in res.candidates] == [True, False]


def test_invalid_tag_is_reported_not_absent():
    res = resolve_pixel_spacing(None, invalid_tags=[("PixelSpacing", "0\\0")],
                                dicom_imager=(0.2, 0.2))  # fmt: skip
    assert res.source == "ImagerPixelSpacing"
    assert any("PixelSpacing is present but invalid ('0\\\\0')" in r for r in res.reasons)
    res = resolve_pixel_spacing(None, annotation=(0.0, 0.1))  # invalid annotation: a reason
    assert res.spacing is None and any("annotation" in r and "invalid" in r for r in res.reasons)
    assert any("pixel spacing unknown" in r for r in res.reasons)


def test_dicom_zero_pixel_spacing_is_invalid_not_absent(tmp_path):
    write_dicom(tmp_path / "z.dcm", np.zeros((40, 40), np.uint16), pixel_spacing=[0.0, 0.0])
    loaded = load_image(tmp_path / "z.dcm")
    assert loaded.dicom_pixel is None and loaded.invalid_spacing_tags[0][0] == "PixelSpacing"
    assert loaded.invalid_spacing_tags[0][1] in ("0\\0", "0.0\\0.0")
    res = resolve_pixel_spacing(None, **loaded.spacing_inputs())
    assert res.spacing is None and any("present but invalid" in r for r in res.reasons)


def test_anatomy_rejects_sphere_and_flags_tags():
    img = np.full((300, 360), 0.2, np.float32)
    ys, xs = np.mgrid[0:300, 0:360]
    c = np.sqrt(np.clip(1 - ((xs - 250) ** 2 + (ys - 150) ** 2) / 50.0**2, 0, 1))
    img += (0.7 * (1 - np.exp(-2 * c)) / (1 - np.exp(-2))).astype(np.float32)  # 0.3 mm/px
    ok = ScaleEstimate(0.3, 0.25, 0.36, "test", "test")
    res = resolve_pixel_spacing(img, dicom_imager=0.5, anatomy=ok)
    assert res.source == "sphere" and res.sphere["accepted"]
    far = ScaleEstimate(0.1, 0.08, 0.12, "test", "test")
    res = resolve_pixel_spacing(img, dicom_imager=0.5, anatomy=far)
    assert res.source == "ImagerPixelSpacing" and not res.sphere["accepted"]
    assert any("sphere candidate rejected" in r and "2.5x" in r for r in res.reasons)
    assert any("spacing from ImagerPixelSpacing disagrees with anatomy by 4.2x" in r
               for r in res.reasons)  # fmt: skip
    assert res.as_dict()["anatomy"]["lo"] == 0.08
    res = resolve_pixel_spacing(None, anatomy=far)  # unknown: the reason carries the hint
    assert any("spacing unknown" in r and "0.080-0.120 mm/px" in r for r in res.reasons)


def test_jpeg_is_read_and_marked_lossy(tmp_path):
    img = (np.linspace(0, 255, 64 * 80).reshape(64, 80)).astype(np.uint8)
    assert cv2.imwrite(str(tmp_path / "x.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    loaded = load_image(tmp_path / "x.jpg")
    assert loaded.lossy and loaded.meta["format"] == "jpeg" and loaded.spacing_mm is None
    np.testing.assert_allclose(loaded.image, img / 255.0, atol=4 / 255)
    assert not load_image(write_png(tmp_path / "x.png", img)).lossy


def write_png(path, img):
    cv2.imwrite(str(path), img)
    return path


class OracleModule:
    """Stands in for a trained module: the ground-truth maps of one sample."""

    image_size = 256

    def __init__(self, sample):
        self.maps = oracle_maps(sample, self.image_size)

    def predict_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.asarray(getattr(self.maps, k))[None].copy())
                for k in ("seg", "lm", "roi")}  # fmt: skip


@pytest.mark.parametrize(("pixel", "source"), [(True, "PixelSpacing"), (False, "sphere")])
def test_plan_and_evaluate_give_the_same_mm(tmp_path, pixel, source):
    """A DICOM with ImagerPixelSpacing (and PixelSpacing or not) and a calibration sphere."""
    cfg = PhantomConfig(min_side=400, max_side=640, p_sphere=1.0).clean()
    cfg = dataclasses.replace(cfg, p_sphere=1.0)
    sample = next(s for s in (generate_phantom(i, cfg) for i in range(10)) if "sphere" in s.meta)
    true = sample.spacing_mm[0]
    write_sample(tmp_path, dataclasses.replace(sample, spacing_mm=None))  # annotation: null
    (tmp_path / "images" / f"{sample.id}.png").unlink()
    dcm = tmp_path / "images" / f"{sample.id}.dcm"
    write_dicom(dcm, np.round(sample.image * 65535), bits=16,
                pixel_spacing=[0.9 * true] * 2 if pixel else None,
                imager_spacing=[1.15 * true] * 2)  # fmt: skip
    rep = run_plan(dcm, OracleModule(sample), tmp_path / "out", tta=0).report  # fixed maps
    read = read_sample(tmp_path, sample.id)
    row = evaluate_sample(read, oracle_maps(read, 256)).row
    assert rep["spacing"]["source"] == row["spacing_source"] == source
    assert rep["spacing"]["row_mm"] == pytest.approx(row["row_mm"], rel=1e-12)
    assert rep["spacing"]["col_mm"] == pytest.approx(row["col_mm"], rel=1e-12)
    expected = 0.9 * true if pixel else true
    err = abs(row["row_mm"] / expected - 1.0)
    if pixel:
        assert err <= 0.02
    else:  # right or flagged: within 2 %, or flagged with a bound that covers the error
        bound = rep["spacing"]["sphere"]["uncertainty"]
        flagged = any("sphere edge blurred" in r for r in rep["review_reasons"])
        assert err <= 0.02 or (flagged and rep["needs_review"] and err <= bound), (err, bound)
    cands = {c["source"]: c for c in rep["spacing"]["candidates"]}
    assert not cands["ImagerPixelSpacing"]["accepted"] and cands[source]["accepted"]
    if source == "sphere":  # the JSON names the candidate, its score and why it was accepted
        sph = rep["spacing"]["sphere"]
        assert sph["accepted"] and sph["why"].startswith("sphere") and 0 < sph["score"] <= 1


def test_real_rg1_pixel_spacing_is_invalid_not_absent():
    from pathlib import Path

    data_store = pytest.importorskip("data_store")
    path = Path(data_store.__file__).parent / "data" / "RG1_UNCI.dcm"
    if not path.is_file():
        pytest.skip("RG1_UNCI.dcm not in pydicom-data")
    loaded = load_image(path)
    assert [t for t, _ in loaded.invalid_spacing_tags] == ["PixelSpacing"]
    res = resolve_pixel_spacing(None, **loaded.spacing_inputs())
    assert any("DICOM PixelSpacing is present but invalid" in r for r in res.reasons)


def test_evaluate_keeps_phantom_source_and_reports_implausible_spacing():
    from planning.evaluate import sample_spacing

    s = generate_phantom(3, PhantomConfig(min_side=400, max_side=640).clean())
    res = sample_spacing(s, s.masks[0] > 0)
    assert res.source == "phantom" and res.spacing.as_tuple() == pytest.approx(s.spacing_mm)
    assert res.anatomy is not None and res.anatomy.lo <= s.spacing_mm[0] <= res.anatomy.hi
    assert res.reasons == []  # true spacing, agreeing anatomy: nothing to review
    bad = dataclasses.replace(s, spacing_mm=(8.0, 8.0))
    res = sample_spacing(bad, s.masks[0] > 0, detect_sphere=False)
    assert res.spacing is None and any("invalid" in r for r in res.reasons)


def test_sphere_candidates_searched_ahead_give_the_same_resolution():
    """Candidates found before the call (beside the network) resolve as the search inside it."""
    from geometry.pixel_spacing import sphere_search_needed
    from geometry.spacing import find_sphere_candidates

    s = generate_phantom(2, PhantomConfig(min_side=400, max_side=640, p_sphere=1.0))
    assert sphere_search_needed(dicom_imager=[0.2, 0.2])  # the sphere ranks above it
    assert not sphere_search_needed(dicom_pixel=[0.2, 0.2], dicom_imager=[0.3, 0.3])
    assert not sphere_search_needed(user=[0.0])  # a bad user value stops before any search
    inside = resolve_pixel_spacing(s.image)
    ahead = resolve_pixel_spacing(s.image, sphere_candidates=find_sphere_candidates(s.image))
    assert inside.source == ahead.source == "sphere"
    assert inside.spacing == ahead.spacing and inside.sphere == ahead.sphere


def test_non_square_pixels_are_a_review_reason():
    """0.08 x 0.8 mm (10:1, a typo or a broken export): the network saw the knee squeezed."""
    res = resolve_pixel_spacing(None, dicom_pixel=[0.08, 0.8], detect_sphere=False)
    assert res.spacing.as_tuple() == (0.08, 0.8)
    assert len(res.reasons) == 1 and "not square" in res.reasons[0] and "10:1" in res.reasons[0]
    ok = resolve_pixel_spacing(None, dicom_pixel=[0.14, 0.15], detect_sphere=False)
    assert ok.reasons == []


def test_dataset_dicom_with_a_magnification_factor_reads(tmp_path):
    """read_sample copied every spacing input as a list: the magnification (one number) made
    it raise a TypeError, so training and evaluate crashed on such a DICOM."""
    sample = generate_phantom(3, PhantomConfig(min_side=200, max_side=260).clean())
    write_sample(tmp_path, dataclasses.replace(sample, spacing_mm=None))
    (tmp_path / "images" / f"{sample.id}.png").unlink()
    write_dicom(tmp_path / "images" / f"{sample.id}.dcm", np.round(sample.image * 65535),
                bits=16, imager_spacing=[0.3, 0.3], magnification=1.2)
    read = read_sample(tmp_path, sample.id)
    assert read.spacing_mm == pytest.approx((0.25, 0.25))
    assert read.meta["spacing_inputs"]["dicom_magnification"] == 1.2


def test_imager_spacing_candidate_shows_the_value_used():
    """The candidate showed only the detector-plane tag (0.3) while 0.3 / 1.2 = 0.25 was used."""
    res = resolve_pixel_spacing(None, dicom_imager=[0.3, 0.3], dicom_magnification=1.2,
                                detect_sphere=False)
    (entry,) = [c for c in res.candidates if c["source"] == "ImagerPixelSpacing"]
    assert entry["value"] == [0.3, 0.3] and entry["magnification"] == 1.2
    assert entry["object_plane_value"] == pytest.approx([0.25, 0.25])
    assert res.spacing.as_tuple() == pytest.approx((0.25, 0.25))


def _dome(radius: float = 50.0) -> np.ndarray:
    """A 300 x 360 image with one ball of ``radius`` px (path-length profile, log display)."""
    img = np.full((300, 360), 0.2, np.float32)
    ys, xs = np.mgrid[0:300, 0:360]
    c = np.sqrt(np.clip(1 - ((xs - 250) ** 2 + (ys - 150) ** 2) / radius**2, 0, 1))
    return img + (0.7 * (1 - np.exp(-2 * c)) / (1 - np.exp(-2))).astype(np.float32)


def test_sphere_diameter_scales_the_spacing_and_is_reported():
    """A 25 mm ball read as 30 mm would make every distance 20 % too long: the diameter is the
    user's, the spacing is diameter / (2 x radius) whatever size the search assumed."""
    from geometry.spacing import find_sphere_candidates

    img = _dome()
    at30 = resolve_pixel_spacing(img)
    at25 = resolve_pixel_spacing(img, sphere_diameter_mm=25.0)
    assert at30.source == at25.source == "sphere"
    radius = at30.sphere["radius_px"]
    assert abs(radius - 50.0) < 1.0  # the fit itself (a sharp synthetic ball)
    assert at25.spacing.row_mm == pytest.approx(25.0 / (2 * radius), rel=1e-3)
    assert at25.spacing.row_mm / at30.spacing.row_mm == pytest.approx(25.0 / 30.0, rel=1e-9)
    assert at25.sphere["diameter_mm"] == 25.0 and at30.sphere["diameter_mm"] == 30.0
    assert "25 mm calibration sphere" in at25.spacing.note
    ahead = resolve_pixel_spacing(img, sphere_diameter_mm=25.0,
                                  sphere_candidates=find_sphere_candidates(img))  # 30 mm search
    assert ahead.spacing == at25.spacing


@pytest.mark.parametrize("bad", [0.0, -30.0, 3.0, 300.0, float("nan"), float("inf"), "x"])
def test_an_implausible_sphere_diameter_is_refused(bad):
    with pytest.raises(ValueError, match="sphere diameter"):
        resolve_pixel_spacing(None, sphere_diameter_mm=bad)


def test_a_sphere_implying_an_implausible_spacing_is_rejected_not_an_error():
    """A ball of 6 px radius read as 100 mm would be 8.3 mm/px: the candidate is rejected and the
    next source used (before, the resolver raised as for a bad --spacing)."""
    from geometry.spacing import SphereDetection

    tiny = SphereDetection(np.array([50.0, 50.0]), 6.0, 2.5, 0.9, True, "sphere: test")
    res = resolve_pixel_spacing(None, sphere_diameter_mm=100.0, dicom_imager=0.5,
                                sphere_candidates=[tiny])  # fmt: skip
    assert res.source == "ImagerPixelSpacing"
    assert not res.sphere["accepted"] and "plausible range" in res.sphere["why"]
    assert res.sphere["mm_per_px"] == pytest.approx(100.0 / 12.0, rel=1e-4)


def test_plan_sphere_mm_option(tmp_path, capsys):
    """``--sphere-mm`` reaches the plan: a usage error when implausible (one line, status 2),
    recorded in the JSON's settings and used for the spacing otherwise."""
    from planning.plan import main

    cfg = dataclasses.replace(PhantomConfig(min_side=400, max_side=640).clean(), p_sphere=1.0)
    sample = next(s for s in (generate_phantom(i, cfg) for i in range(10)) if "sphere" in s.meta)
    png = write_png(tmp_path / "knee.png", np.round(sample.image * 65535).astype(np.uint16))
    assert main(["--image", str(png), "--ckpt", str(tmp_path / "none.ckpt"),
                 "--sphere-mm", "3"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--sphere-mm" in err and "millimetres" in err
    reps = {mm: run_plan(png, OracleModule(sample), tmp_path / f"o{mm}", tta=0,
                         sphere_mm=mm).report for mm in (30.0, 25.0)}  # fmt: skip
    assert reps[25.0]["settings"]["sphere_mm"] == 25.0
    assert reps[30.0]["spacing"]["source"] == reps[25.0]["spacing"]["source"] == "sphere"
    ratio = reps[25.0]["spacing"]["row_mm"] / reps[30.0]["spacing"]["row_mm"]
    assert ratio == pytest.approx(25.0 / 30.0, rel=1e-9)
    assert reps[25.0]["spacing"]["sphere"]["diameter_mm"] == 25.0
    bare = dataclasses.replace(sample, spacing_mm=None)  # evaluate resolves as plan does
    row = evaluate_sample(bare, oracle_maps(bare, 256), sphere_mm=25.0).row
    assert row["spacing_source"] == "sphere"
    # (the plan read the 16-bit PNG, evaluate the float image: the fits differ by ~1e-6)
    assert row["row_mm"] == pytest.approx(reps[25.0]["spacing"]["row_mm"], rel=1e-4)
    row30 = evaluate_sample(bare, oracle_maps(bare, 256)).row
    assert row["row_mm"] / row30["row_mm"] == pytest.approx(25.0 / 30.0, rel=1e-9)


def test_evaluate_sphere_mm_is_checked_before_anything_runs(capsys):
    from planning.evaluate import main

    assert main(["--oracle", "--sphere-mm", "nan"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sphere diameter" in err


def test_pixel_spacing_equal_to_imager_spacing_with_a_magnification_is_not_at_the_patient():
    """Red-team round 6: PixelSpacing 0.2 = ImagerPixelSpacing 0.2 with a stated magnification
    of 1.25 was taken as calibrated at the patient, 25 % too large (within the anatomy's range,
    so unflagged). Equal tags mean the detector pitch was copied (DICOM PS3.3 C.8.11.4)."""
    from geometry.pixel_spacing import resolve_pixel_spacing, sphere_search_needed

    img = np.zeros((64, 64), np.float32)
    kw = {"dicom_pixel": [0.2, 0.2], "dicom_imager": [0.2, 0.2], "dicom_magnification": 1.25}
    res = resolve_pixel_spacing(img, detect_sphere=False, **kw)
    assert res.spacing.source == "ImagerPixelSpacing"
    assert res.spacing.as_tuple() == pytest.approx((0.16, 0.16))  # 0.2 / 1.25 by hand
    ps = next(c for c in res.candidates if c["source"] == "PixelSpacing")
    assert not ps["accepted"] and "detector's pitch copied" in ps["why"]
    assert sphere_search_needed(**kw)  # a sphere outranks the detector's spacing
    # calibrated (differs from the imager's), or no magnification stated: taken as given
    for pixel, mag in (([0.16, 0.16], 1.25), ([0.2, 0.2], None), ([0.2, 0.2], 1.0)):
        res = resolve_pixel_spacing(img, detect_sphere=False, **{**kw, "dicom_pixel": pixel,
                                                                  "dicom_magnification": mag})
        assert res.spacing.source == "PixelSpacing" and res.spacing.row_mm == pixel[0]
