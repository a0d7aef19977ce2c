"""The one review verdict: the oracle plan of a phantom passes; every reason fires on a case
built for it; the femur-side rule flags a p_blum behind LM1 and never flips the circle; the JSON
report and evaluate's per-image row give the same reasons for the same image."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from datamodules.dataset_io import write_sample
from datamodules.phantoms import PhantomConfig, generate_phantom
from geometry.anatomy_scale import shaft_axis
from geometry.lines import Line
from geometry.plan_geometry import masks_to_original, plan_from_maps
from planning.ood import femur_shape
from planning.oracle import oracle_maps
from planning.report import segmentation_confidence
from planning.review import CONFIG_PATH, ReviewConfig, ReviewContext, review
from planning.second_knee import SecondKnee
from planning.tta import Uncertainty

CFG = PhantomConfig(min_side=400, max_side=560)
REVIEW_PY = Path(__file__).resolve().parents[1] / "planning" / "review.py"


@pytest.fixture(scope="module")
def case():
    """A clean phantom, its oracle maps, plan and review context (which must pass)."""
    sample = generate_phantom(11, CFG.clean())
    maps = oracle_maps(sample, 256)
    plan = plan_from_maps(maps.seg, maps.lm, maps.roi, frame=maps.frame,
                          spacing=sample.spacing_mm, decode="quadratic")  # fmt: skip
    masks = masks_to_original(maps.seg, maps.frame)
    return sample, maps, plan, masks


def ctx(sample, masks, **kw) -> ReviewContext:
    return ReviewContext(masks=masks, image=sample.image, **kw)


def gaussian(frame, p_orig, size=256, sigma=6.0) -> np.ndarray:
    x, y = frame.to_network(np.asarray(p_orig, float)[None])[0]
    ys, xs = np.mgrid[0:size, 0:size]
    return np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))


def codes(plan, context) -> set[str]:
    return {r.code for r in review(plan, context)}


def test_oracle_plans_pass_the_gate():
    """Ground-truth maps of clean and standard phantoms: no reason at all (the gate must not
    flag good plans)."""
    for seed, cfg in ((11, CFG.clean()), (3, CFG), (5, CFG), (8, CFG)):
        sample = generate_phantom(seed, cfg)
        maps = oracle_maps(sample, 256)
        plan = plan_from_maps(maps.seg, maps.lm, maps.roi, frame=maps.frame,
                              spacing=sample.spacing_mm)  # fmt: skip
        masks = masks_to_original(maps.seg, maps.frame)
        assert review(plan, ctx(sample, masks)) == [], seed


def test_config_file_matches_the_defaults_and_refuses_unknown_keys(tmp_path):
    assert ReviewConfig.load() == ReviewConfig()
    assert ReviewConfig.load(CONFIG_PATH).max_schoettle_spread_mm == 2.5
    bad = tmp_path / "r.yaml"
    bad.write_text("min_peak: 0.2\nmax_pek: 3\n")
    with pytest.raises(ValueError, match="max_pek"):
        ReviewConfig.load(bad)


def test_femur_side_rule_flags_and_never_flips(case):
    sample, maps, plan, masks = case
    assert plan.femur_side != 0 and plan.blum_offset > 0
    # move p_blum 4 mm behind LM1 (posterior, away from the femur)
    sp = sample.spacing_mm
    n_px = plan.lm1.normal * plan.femur_side  # unit normal toward the femur (px frame, iso)
    behind = plan.lm1.foot(plan.landmark("p_blum")) - n_px * 4.0 / sp[1]
    lm = maps.lm.copy()
    lm[0] = gaussian(maps.frame, behind)
    moved = plan_from_maps(maps.seg, lm, maps.roi, frame=maps.frame, spacing=sp,
                           decode="quadratic")  # fmt: skip
    assert moved.blum_offset < 0
    found = review(moved, ctx(sample, masks))
    assert "blum_posterior" in {r.code for r in found}
    assert any("posterior of LM1" in r for r in found)
    # the circle stays on the femur side: same side as the clean plan's point, same radius
    side_clean = np.sign(plan.lm1.signed_distance(plan.schoettle))
    side_moved = np.sign(moved.lm1.signed_distance(moved.schoettle))
    assert side_moved == side_clean == plan.femur_side
    d = moved.lm1.distance(moved.schoettle) * sp[1]
    assert d == pytest.approx(moved.radius_mm, rel=1e-6)


def test_each_reason_fires_on_its_case(case):
    sample, maps, plan, masks = case
    sp = sample.spacing_mm
    fired: dict[str, set[str]] = {}
    base = ctx(sample, masks)

    def check(code, p=plan, c=base):
        got = codes(p, c)
        fired[code] = got
        assert code in got, (code, got)

    # --- construction
    check("spacing", c=ctx(sample, masks, spacing_reasons=["pixel spacing unknown"]))
    low = plan_from_maps(maps.seg, 0.2 * maps.lm, maps.roi, frame=maps.frame, spacing=sp)
    check("low_peak", low)
    check("uncalibrated_peak", replace(plan, peaks=np.array([3.0, 0.9])))
    h, w = sample.shape
    pad = plan_from_maps(maps.seg, maps.lm, maps.roi, frame=maps.frame, spacing=sp)
    check("landmark_outside", replace(pad, landmarks=np.array([[-30.0, 10.0],
                                                                pad.landmarks[1]])))
    small_roi = gaussian(maps.frame, plan.lm1_points[len(plan.lm1_points) // 2], sigma=0.7)
    check("lm1_support", plan_from_maps(maps.seg, maps.lm, small_roi[None], frame=maps.frame,
                                        spacing=sp))  # fmt: skip
    check("no_lm1", plan_from_maps(maps.seg, maps.lm, 0 * maps.roi, frame=maps.frame,
                                   spacing=sp))  # fmt: skip
    check("lm_coincide", replace(plan, lm_separation=0.5))
    check("separation_large", replace(plan, lm_separation=45.0))
    check("blum_posterior", replace(plan, blum_offset=-3.0))
    check("no_femur_side", replace(plan, femur_side=0))
    check("tmc_far", replace(plan, tmc_offset=12.0))
    check("schoettle_outside", replace(plan, schoettle=np.array([w + 40.0, h / 2])))
    # --- anatomy
    none = masks.copy()
    none[0] = False
    check("no_femur", c=ctx(sample, none))
    full = masks.copy()
    full[0] = True
    check("femur_area", c=ctx(sample, full))
    split = masks.copy()
    fe = np.nonzero(split[0].any(axis=1))[0]
    mid = (fe.min() + fe.max()) // 2
    split[0, mid - 8 : mid + 8] = False
    check("femur_fragmented", c=ctx(sample, split))
    disc = masks.copy()
    yy, xx = np.mgrid[0:h, 0:w]
    disc[0] = (xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (0.3 * min(h, w)) ** 2
    check("femur_shape", c=ctx(sample, disc))
    rot = np.stack([np.rot90(m) for m in masks])
    check("femur_rotated", c=ReviewContext(masks=rot, image=np.rot90(sample.image)))
    no_tib = masks.copy()
    no_tib[2] = False
    check("no_tibia", c=ctx(sample, no_tib))
    no_pat = masks.copy()
    no_pat[1] = False
    check("no_patella", c=ctx(sample, no_pat))
    tiny_pat = masks.copy()  # a few pixels of patella: 0.1 % of the femur's width squared
    tiny_pat[1] = False
    tiny_pat[1, : 2, : 3] = True
    check("no_patella", c=ctx(sample, tiny_pat))
    # a "tibia" up the femoral shaft (the femur's half farthest from the knee): proximal of the
    # femur at any rotation of the image
    up_tib = masks.copy()
    far_from_knee = np.hypot(xx - plan.landmark("p_blum")[0], yy - plan.landmark("p_blum")[1])
    up_tib[2] = masks[0] & (far_from_knee > np.median(far_from_knee[masks[0]]))
    check("tibia_position", c=ctx(sample, up_tib))
    swapped = masks.copy()  # the tibia taken for the femur and the condyles for the tibia
    swapped[0], swapped[2] = masks[2], masks[0]
    check("tibia_rounder", c=ctx(sample, swapped))
    bitten = masks.copy()  # a lesion where the cortex meets the condyle: a bite at p_tmc
    tmc, width = plan.landmark("p_tmc"), femur_shape(masks[0]).condyle_width_px
    bitten[0] &= np.hypot(xx - tmc[0], yy - tmc[1]) > 0.35 * width
    check("cortex_bite", c=ctx(sample, bitten))
    ap = masks.copy()
    ap[1] = masks[0] & (np.abs(yy - np.nonzero(masks[0])[0].mean()) < 20)
    check("patella_on_femur", c=ctx(sample, ap))
    check("bone_contrast", c=ReviewContext(masks=masks, image=1.0 - sample.image))
    sat = sample.image.copy()
    sat[masks[0]] = 1.0
    sat[0, 0] = 1.0
    check("saturated", c=ReviewContext(masks=masks, image=sat))
    dark = sample.image.copy()
    dark[masks[0]] = 0.0
    check("unexposed", c=ReviewContext(masks=masks, image=dark))
    ys, xs = np.nonzero(~masks[0])
    far = np.argmax(np.hypot(xs - plan.schoettle[0], ys - plan.schoettle[1]))
    check("off_femur", replace(plan, schoettle=np.array([xs[far], ys[far]], float)))
    # LM1 turned 30-45 deg, away from both femur axes the check uses (the principal axis and
    # the shaft's midline: a real knee's condyles tilt the first up to ~20 deg off the true LM1,
    # so turning towards it may not reach the 20 deg limit)
    axes = [femur_shape(masks[0] > 0).proximal_dir, shaft_axis(masks[0] > 0)]
    turns = [np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) @ plan.lm1.direction
             for t in np.radians([30.0, -30.0, 40.0, -40.0, 45.0, -45.0])]
    turned = min(turns, key=lambda d: max(abs(float(d @ a)) for a in axes))
    assert max(abs(float(turned @ a)) for a in axes) < np.cos(np.radians(25.0))
    check("lm1_axis", replace(plan, lm1=Line(plan.lm1.point, turned)))
    fy, fx = np.nonzero(masks[0])
    # LM1 moved parallel to just behind the femur's hindmost pixel: no condyle behind it
    d = (np.column_stack([fx, fy]) - plan.lm1.point) @ plan.lm1.normal
    side = np.sign(d.mean())
    behind = plan.lm1.point - side * (float(np.max(-side * d)) + 2.0) * plan.lm1.normal
    check("no_condyle_bulge", replace(plan, lm1=Line(behind, plan.lm1.direction)))
    # read back to front: the anterior side flipped, so the patella lies behind LM1 (no fibula:
    # only the patella's own test can fire)
    no_fib = masks.copy()
    no_fib[3] = False
    check("bone_order", replace(plan, femur_side=-plan.femur_side), ctx(sample, no_fib))
    # the fibula 20 px in front of the patella (the patella itself stays where it is)
    ahead = np.round(20 * side * plan.lm1.normal).astype(int)
    fib_front = masks.copy()
    fib_front[3] = np.roll(masks[1], (ahead[1], ahead[0]), axis=(0, 1))
    check("bone_order", c=ctx(sample, fib_front))
    top = np.argmin(fy)  # the most proximal femur pixel, far up the shaft
    check("not_distal", replace(plan, schoettle=np.array([fx[top], fy[top] + 2.0])))
    # --- model uncertainty (TTA / hourglass)
    pts = np.zeros((8, 3, 2))
    calm = np.stack([np.eye(2) * 0.01] * 3)
    wild = calm.copy()
    wild[2] = np.eye(2) * (5.0 / sp[1]) ** 2  # Schoettle point 5 mm (1 sigma)
    check("tta_spread", c=ctx(sample, masks, uncertainty=Uncertainty(pts, wild, 0.0)))
    check("tta_failures", c=ctx(sample, masks, uncertainty=Uncertainty(pts, calm, 0.5)))
    shift = np.array([0.0, 6.0 / sp[1]])  # p_tmc: 6 mm between the last two hourglasses
    check("hourglass_disagree",
          c=ctx(sample, masks, uncertainty=Uncertainty(pts, calm, 0.0, shift)))
    metal = np.array([0.0, 6.0 / sp[1], 1.0])  # p_tmc moves 6 mm with the metal painted out
    check("metal_dependent",
          c=ctx(sample, masks, uncertainty=Uncertainty(pts, calm, 0.0, None, None, metal)))
    small = np.array([4.0, 4.9, 0.0]) / sp[1]  # within 5 mm: the metal did not matter
    assert "metal_dependent" not in codes(plan, ctx(sample, masks, uncertainty=Uncertainty(
        pts, calm, 0.0, None, None, small)))
    lost = np.array([0.0, 0.0, np.nan])  # the Schoettle point is lost without the metal
    check("metal_dependent",
          c=ctx(sample, masks, uncertainty=Uncertainty(pts, calm, 0.0, None, None, lost)))
    blank = np.array([0.0, 0.0, 7.0 / sp[1]])  # the point moves 7 mm with the shutter filled
    check("blank_dependent", c=ctx(sample, masks, uncertainty=Uncertainty(
        pts, calm, 0.0, blank_shift_px=blank)))
    assert "blank_dependent" not in codes(plan, ctx(sample, masks, uncertainty=Uncertainty(
        pts, calm, 0.0, blank_shift_px=small)))
    check("blank_dependent", c=ctx(sample, masks, uncertainty=Uncertainty(
        pts, calm, 0.0, blank_shift_px=lost)))
    check("blank_cut", c=ctx(sample, masks, uncertainty=Uncertainty(
        pts, calm, 0.0, blank_shift_px=small, blank_cut_mm=15.0)))  # a 15 mm straight cut
    for short in (0.0, 8.0):
        assert "blank_cut" not in codes(plan, ctx(sample, masks, uncertainty=Uncertainty(
            pts, calm, 0.0, blank_shift_px=small, blank_cut_mm=short)))
    looks = np.array([12.0 / sp[1], 0.0])  # p_blum: 12 mm between the whole image and the zoom
    check("looks_disagree",
          c=ctx(sample, masks, uncertainty=Uncertainty(pts, calm, 0.0, None, looks)))
    check("tta_off", c=ctx(sample, masks, tta_count=0))  # --tta 0: the spread is unmeasured
    check("two_knees", c=ctx(sample, masks, second_knee=SecondKnee((w + 0.0, h / 2), 50.0, 3.1)))
    # the file's own header: another modality, another body part (first in the list)
    check("dicom_modality", c=ctx(sample, masks, tta_count=8, header={"modality": "MR"}))
    assert review(plan, ctx(sample, masks, tta_count=8, header={"modality": "CT"}))[0].code \
        == "dicom_modality"
    check("dicom_body_part", c=ctx(sample, masks, tta_count=8, header={"body_part": "CHEST"}))
    for fine in ({"modality": "DX", "body_part": "KNIE"}, {"modality": "CR", "body_part":
                 "LOWER LIMB"}, {"modality": "", "body_part": "EXTREMITY"}, {}):
        assert codes(plan, ctx(sample, masks, tta_count=8, header=fine)) == set(), fine
    assert codes(plan, ctx(sample, masks, tta_count=8)) == set()
    assert codes(plan, ctx(sample, masks, tta_count=0, config=ReviewConfig(min_tta=0))) == set()
    near = np.array([8.0 / sp[1], 8.0 / sp[1]])  # 8 mm: the second look is expected to move
    assert codes(plan, ctx(sample, masks, uncertainty=Uncertainty(pts, calm, 0.0, None, near))) \
        == set()
    assert codes(plan, ctx(sample, masks, uncertainty=Uncertainty(pts, calm, 0.0))) == set()
    # every reason review.py can give is exercised above
    all_codes = set(re.findall(r'Reason\(\s*"(\w+)"', REVIEW_PY.read_text()))
    assert all_codes == set(fired), all_codes ^ set(fired)


def test_unknown_spacing_still_runs_every_mm_check(case):
    sample, maps, plan, masks = case
    px = plan_from_maps(maps.seg, maps.lm, maps.roi, frame=maps.frame, spacing=None)
    scale = SimpleNamespace(mm_per_px=float(np.mean(sample.spacing_mm)))
    assert review(px, ctx(sample, masks, scale=scale)) == []
    far = replace(px, tmc_offset=12.0 / scale.mm_per_px)  # 12 mm in px
    got = [r for r in review(far, ctx(sample, masks, scale=scale)) if r.code == "tmc_far"]
    assert got and "12.0 mm" in got[0]
    # a Schoettle point 90 mm up the shaft is caught with the nominal scale alone
    fy, fx = np.nonzero(masks[0])
    top = np.argmin(fy)
    shaft = replace(px, schoettle=np.array([fx[top], fy[top] + 2.0]))
    assert "not_distal" in codes(shaft, ctx(sample, masks))


def test_uncertain_fraction_is_at_most_one():
    p = np.zeros((4, 32, 32))
    p[0, 10:20, :] = 0.4  # a thin, unsure band
    p[0, 14:16, :] = 0.6  # with a thinner predicted core
    conf = segmentation_confidence(p)
    # uncertain = the whole band (320 px), likely (p >= 0.25) = the band too: 1.0
    assert conf["femur"]["uncertain_fraction"] == pytest.approx(1.0)
    p[0, 12:18, :] = 0.9  # core sure: uncertain 4 rows of 10
    assert segmentation_confidence(p)["femur"]["uncertain_fraction"] == pytest.approx(0.4)
    assert segmentation_confidence(p)["tibia"]["uncertain_fraction"] is None


class _Oracle:
    image_size = 256

    def __init__(self, sample, scale_lm=1.0):
        m = oracle_maps(sample, 256)
        self.maps = {"seg": m.seg, "lm": m.lm * scale_lm, "roi": m.roi}

    def predict_maps(self, x):
        return {k: torch.from_numpy(np.asarray(v, np.float32)[None].copy())
                for k, v in self.maps.items()}  # fmt: skip


def test_json_and_csv_give_the_same_reasons(tmp_path):
    from planning.evaluate import evaluate_sample
    from planning.plan import run_plan
    from planning.predict import predict_image

    sample = generate_phantom(11, CFG.clean())
    path = write_sample(tmp_path / "data", sample)
    module = _Oracle(sample, scale_lm=0.25)  # weak peaks: a flagged plan
    rep = run_plan(path, module, tmp_path / "out", tta=0).report
    row = evaluate_sample(sample, predict_image(module, sample.image), predictor=module,
                          tta=0).row
    assert rep["needs_review"] and row["needs_review"] == 1
    assert row["review_reasons"].split(" | ") == rep["review_reasons"]
    assert " ".join(sorted(set(rep["review_codes"]))) == row["review_codes"]


@pytest.fixture(scope="module")
def long_shaft_case():
    """A clean, nearly upright phantom with a long femoral shaft in view (the default mixture
    rotates up to 45 deg and may cut the shaft at 30 mm)."""
    cfg = replace(CFG.clean(), rotation_deg=(-8.0, 8.0), fov_height_mm=(250.0, 290.0),
                  visible_shaft_mm=(100.0, 140.0))
    sample = generate_phantom(11, cfg)
    maps = oracle_maps(sample, 256)
    plan = plan_from_maps(maps.seg, maps.lm, maps.roi, frame=maps.frame,
                          spacing=sample.spacing_mm, decode="quadratic")  # fmt: skip
    return sample, maps, plan, masks_to_original(maps.seg, maps.frame)


def test_confident_wrong_landmarks_are_flagged(long_shaft_case):
    """A 'well-trained' model that is confidently wrong: both landmark heat-maps peak at 1, but
    up the femoral shaft (the top of the femur in this image). Peaks alone would pass it; the
    anatomy must not."""
    sample, maps, plan, masks = long_shaft_case
    assert review(plan, ctx(sample, masks)) == []  # the right plan passes
    sp = sample.spacing_mm
    fy, _ = np.nonzero(masks[0])
    up = np.array([0.0, fy.min() + 12.0 - plan.landmark("p_blum")[1]])
    assert -up[1] * sp[0] > ReviewConfig().max_from_distal_end_mm + 5.0  # shaft long enough
    lm = np.stack([gaussian(maps.frame, plan.landmark(n) + up) for n in ("p_blum", "p_tmc")])
    wrong = plan_from_maps(maps.seg, lm, maps.roi, frame=maps.frame, spacing=sp)
    assert wrong.peaks.min() > 0.9
    found = codes(wrong, ctx(sample, masks))
    assert "not_distal" in found, found
    assert not found & {"low_peak", "uncalibrated_peak"}  # it is not the peaks that catch it


def test_off_femur_distance_equals_scipy_edt(case):
    """The distance in the off-femur reason is the Euclidean distance in mm to the nearest femur
    pixel, as scipy's distance transform gives it (anisotropic pixels included)."""
    from scipy.ndimage import distance_transform_edt

    sample, _, plan, masks = case
    femur = masks[0]
    ys, xs = np.nonzero(~femur)
    far = np.argmax(np.hypot(xs - plan.schoettle[0], ys - plan.schoettle[1]))
    for sp in ((0.2, 0.2), (0.15, 0.25)):
        moved = replace(plan, schoettle=np.array([xs[far], ys[far]], float), spacing=sp)
        want = distance_transform_edt(~femur, sampling=sp)[ys[far], xs[far]]
        text = [r for r in review(moved, ctx(sample, masks)) if r.code == "off_femur"]
        assert text and f"({want:.1f} mm)" in str(text[0])


@pytest.mark.parametrize("seed", range(6))
def test_nearest_pixel_mm_equals_scipy_distance_transform(seed):
    """The box-doubling search gives the exact Euclidean distance (anisotropic sampling), as
    scipy's distance transform of the mask's complement does."""
    from scipy.ndimage import distance_transform_edt

    from planning.review import nearest_pixel_mm

    rng = np.random.default_rng(seed)
    h, w = rng.integers(40, 300, size=2)
    mask = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(1, 4))):  # a few blobs, or a single far pixel
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(0, 25)
        yy, xx = np.ogrid[:h, :w]
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    sampling = (float(rng.uniform(0.1, 0.5)), float(rng.uniform(0.1, 0.5)))
    edt = distance_transform_edt(~mask, sampling=sampling)
    for y, x in zip(rng.integers(0, h, 30), rng.integers(0, w, 30), strict=True):
        got = nearest_pixel_mm(mask, int(x), int(y), sampling)
        assert got == pytest.approx(edt[y, x], abs=1e-9)


def test_nearest_pixel_mm_of_an_empty_mask_is_inf():
    from planning.review import nearest_pixel_mm

    assert nearest_pixel_mm(np.zeros((50, 70), bool), 10, 20, (0.2, 0.2)) == float("inf")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf in the covariance's eigenvalues
def test_an_unbounded_spread_is_said_in_words(case):
    """A spread of inf read "moves inf mm" in the plan's reasons (red-team round 6)."""
    sample, _, plan, masks = case
    cov = np.stack([np.eye(2) * 0.01] * 3)
    cov[2] = np.eye(2) * np.inf
    got = review(plan, ctx(sample, masks, uncertainty=Uncertainty(np.zeros((8, 3, 2)), cov, 0.0)))
    text = [r for r in got if r.code == "tta_spread"]
    assert text and "moves without bound" in text[0] and "inf" not in text[0]


def test_ahead_of_line_is_the_largest_components_centroid_distance():
    """``ahead_of_line_px`` against scipy: the centroid of the largest 8-connected component
    (a speck elsewhere ignored), its distance from a slanted line, signed by the femur side."""
    from scipy import ndimage

    from planning.ood import ahead_of_line_px

    rng = np.random.default_rng(3)
    for _ in range(5):
        mask = np.zeros((120, 160), bool)
        y0, x0 = rng.integers(10, 60), rng.integers(10, 90)
        mask[y0 : y0 + 30, x0 : x0 + 45] = rng.random((30, 45)) < 0.9  # ragged but one piece
        mask[y0 : y0 + 30, x0 + 20] = True
        mask[y0 + 15, x0 : x0 + 45] = True
        mask[2:5, 150:154] = True  # a speck, far away
        labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
        sizes = np.bincount(labels.ravel())[1:]
        cy, cx = ndimage.center_of_mass(labels == 1 + np.argmax(sizes))
        point, t = np.array([40.0, 70.0]), rng.uniform(0, np.pi)
        normal = np.array([-np.sin(t), np.cos(t)])
        expected = (np.array([cx, cy]) - point) @ normal
        for side in (1, -1):
            got = ahead_of_line_px(mask, point, normal, side)
            assert got == pytest.approx(side * expected, abs=1e-6)
    assert np.isnan(ahead_of_line_px(np.zeros((8, 8), bool), point, normal, 1))


@pytest.mark.parametrize("family", ["independent", "raycast", "sdf"])
def test_bone_order_holds_on_the_truth_of_the_other_phantom_families(family, tmp_path):
    """Truth masks and the truth cortex line of phantoms written apart from ours: the patella
    lies in front of LM1 and of the fibula (``bone_order`` never fires on a true knee)."""
    from benchmark_scripts import load_benchmark

    from datamodules.dataset_io import image_files, read_sample
    from geometry.lines import fit_line_tls, largest_component
    from planning.ood import ahead_of_line_px

    name = {"independent": "independent_phantoms", "raycast": "raycast_phantoms",
            "sdf": "sdf_phantoms"}[family]
    module = load_benchmark(name)
    n = {"independent": "4", "raycast": "2", "sdf": "4"}[family]  # a ray-cast knee takes ~8 s
    module.main(["--out", str(tmp_path), "--n", n, "--seed", "21"])
    files = image_files(tmp_path)
    for sid in sorted(files):
        s = read_sample(tmp_path, sid, files)
        line = fit_line_tls(np.asarray(s.annotations[0].cortex_points, float))
        ys, xs = np.nonzero(largest_component(s.masks[0] > 0))
        side = int(np.sign(line.signed_distance(np.column_stack([xs, ys]).astype(float)).mean()))
        patella = ahead_of_line_px(s.masks[1] > 0, line.point, line.normal, side)
        fibula = ahead_of_line_px(s.masks[3] > 0, line.point, line.normal, side)
        assert patella > 0 and not fibula >= patella, (sid, patella, fibula)
