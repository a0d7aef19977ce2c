"""blank_dependent: a blank (shuttered) region next to the distal femur is shown as soft tissue
and the image planned again (planning/blank_out.py)."""

from __future__ import annotations

import numpy as np
import pytest

from planning.blank_out import MIN_SIZE_MM, blank_next_to_femur, blank_out_shift, straight_cut_mm
from planning.ood import femur_shape

MMPP = 0.5  # mm per px of the drawn knee


def knee(shutter_col: int | None = 100, gap_px: int = 4, seed: int = 0):
    """A drawn lateral knee, 400 x 300 px at 0.5 mm/px: shaft up, round condyles (columns
    90-210) at the bottom, a tibia below; noisy soft tissue at 0.3, bone at 0.6; a black
    shutter (exactly 0) over every column left of ``shutter_col`` (None: none), the predicted
    femur stopping ``gap_px`` short of it (as a network's does)."""
    rng = np.random.default_rng(seed)
    h, w = 400, 300
    yy, xx = np.mgrid[0:h, 0:w]
    femur = ((np.abs(xx - 150) < 30) & (yy < 250)) | (np.hypot(xx - 150, yy - 250) < 60)
    tibia = (np.abs(xx - 150) < 55) & (yy > 318)
    img = 0.3 + 0.02 * rng.standard_normal((h, w))
    img[femur | tibia] = 0.6 + 0.02 * rng.standard_normal(np.count_nonzero(femur | tibia))
    img = np.clip(img, 0.05, 1.0).astype(np.float32)
    img[0, 0] = 1.0
    masks = np.zeros((4, h, w), bool)
    masks[0], masks[2] = femur, tibia
    if shutter_col is not None:
        img[:, :shutter_col] = 0.0
        masks[:, :, : shutter_col + gap_px] = False
    return img, masks


def upscaled(img: np.ndarray, masks: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The same knee at ``k`` times the pixels (nearest neighbour)."""
    big = np.kron(img, np.ones((k, k), np.float32))
    return big, np.stack([np.kron(m, np.ones((k, k), bool)) for m in masks])


@pytest.mark.parametrize("k", [1, 4])
def test_a_shutter_cutting_the_condyles_is_found_with_the_soft_tissue_level(k):
    """At 1x and at 4x the pixels (the regions are chosen on a copy of at most 384 px, the
    mask is drawn at full resolution)."""
    img, masks = upscaled(*knee(100), k)
    found = blank_next_to_femur(img, masks, femur_shape(masks[0]), MMPP / k)
    assert found is not None
    mask, level = found
    assert mask[:, : 100 * k].all()  # the whole shutter, and a few px of its edge
    assert not mask[:, 100 * k + 6 :].any()
    soft = (img > 0.15) & (img < 0.45) & ~np.any(masks, axis=0)  # independent: by value
    assert level == pytest.approx(np.median(img[soft]), abs=0.01)


@pytest.mark.parametrize(
    "case", ["none", "far", "air", "small", "nick", "noisy", "noisy_big", "hot_pixel", "grey"]
)
def test_no_blank_region_cutting_the_distal_femur(case):
    img, masks = knee(None)
    if case == "far":  # a shutter 20 mm from the condyles
        img[:, : 150 - 60 - 40] = 0.0
    elif case == "air":  # black 2 mm from the condyles: air beyond the skin, no bone cut
        img[:, : 150 - 60 - 4] = 0.0
    elif case == "small":  # a black text box next to the condyles, under MIN_SIZE_MM square
        side = int(MIN_SIZE_MM / MMPP) - 4
        img[240 : 240 + side, 88 - side : 88] = 0.0
    elif case == "noisy":  # dark, but with the detector's noise: not a blank
        rng = np.random.default_rng(1)
        img[:, :86] = np.abs(0.02 * rng.standard_normal((400, 86)))
    elif case == "noisy_big":  # the same at 4x the pixels: a 1/4 copy averages the noise away
        img, masks = upscaled(img, masks, 4)
        rng = np.random.default_rng(1)
        img[:, : 4 * 86] = np.abs(0.01 * rng.standard_normal((1600, 4 * 86)))
        assert blank_next_to_femur(img, masks, femur_shape(masks[0]), MMPP / 4) is None
        return
    elif case == "nick":  # a 5 mm black channel from the condyle to black air 20 mm away
        img[:, :50] = 0.0
        img[245:255, 50:92] = 0.0
    elif case == "hot_pixel":  # a faint image (soft 0.05, bone 0.1) with one pixel at 1
        img = (0.05 + 0.1 * (img - 0.3)).astype(np.float32)
        img[0, 0] = 1.0
    elif case == "grey":  # a grey shutter: flat, but not at the image's bottom
        img[:, :86] = 0.2
        img[-1, -1] = 0.0
    assert blank_next_to_femur(img, masks, femur_shape(masks[0]), MMPP) is None


def test_a_shutter_by_the_shaft_only_is_not_next_to_the_distal_femur():
    """A shutter next to the shaft more than one condyle width from the femur's end."""
    img, masks = knee(None)
    img[:60, :118] = 0.0  # beside the shaft's top, 2 mm from it
    assert blank_next_to_femur(img, masks, femur_shape(masks[0]), MMPP) is None


def test_the_replan_sees_the_shutter_filled_and_its_shift_is_measured():
    img, masks = knee(100)
    points = np.array([[100.0, 200.0], [110.0, 220.0], [120.0, 230.0]])
    seen = []

    def replan(image):
        seen.append(image)
        return points + [[0.0, 0.0], [30.0, 40.0], [np.nan, np.nan]]

    shift = blank_out_shift(img, points, masks, femur_shape(masks[0]), MMPP, replan)
    np.testing.assert_allclose(shift[:2], [0.0, 50.0])
    assert np.isnan(shift[2])  # lost: counts as moved in the review
    filled = seen[0]
    assert filled[:, :100].min() > 0.25 and filled[:, :100].max() < 0.35  # soft tissue's level
    np.testing.assert_array_equal(filled[:, 110:], img[:, 110:])  # nothing else changed
    clean, _ = knee(None)
    assert blank_out_shift(clean, points, masks, femur_shape(masks[0]), MMPP, replan) is None
    assert len(seen) == 1  # no re-plan without a shutter


@pytest.mark.parametrize("side", [1, -1])
def test_with_blank_shift_end_to_end_on_a_phantom(side, monkeypatch):
    """A phantom's truth plan, a black shutter cut along the femur's axis through the distal
    femur (either side), the re-plan stubbed (every point moves 20 px): the context gets
    ``blank_shift_px``, the review ``blank_dependent`` and the report the shifts; without the
    shutter nothing is re-planned."""
    import planning.metal_out as metal_out
    from datamodules.phantoms import PhantomConfig, generate_phantom
    from geometry.plan_geometry import masks_to_original, plan_from_maps
    from planning.blank_out import with_blank_shift
    from planning.oracle import oracle_maps
    from planning.report import uncertainty_report
    from planning.review import ReviewContext, review
    from planning.tta import Uncertainty, plan_points

    sample = generate_phantom(11, PhantomConfig(min_side=400, max_side=560).clean())
    maps = oracle_maps(sample, 256)
    plan = plan_from_maps(maps.seg, maps.lm, maps.roi, frame=maps.frame,
                          spacing=sample.spacing_mm)  # fmt: skip
    masks = masks_to_original(maps.seg, maps.frame)
    points = plan_points(plan)
    calls = []

    def stub(*args, **kwargs):
        def replan(image):
            calls.append(image)
            return points + 20.0

        return replan

    monkeypatch.setattr(metal_out, "replanner", stub)
    unc = Uncertainty(points, np.zeros((3, 2, 2)), 0.0)
    clean = ReviewContext(masks=masks, image=sample.image, uncertainty=unc)
    assert with_blank_shift(clean, plan, None).uncertainty.blank_shift_px is None
    assert with_blank_shift(clean, plan, None).uncertainty.blank_cut_mm is None
    assert not calls
    shape = clean.evidence().femur
    h, w = sample.image.shape
    yy, xx = np.mgrid[0:h, 0:w]
    normal = np.array([-shape.proximal_dir[1], shape.proximal_dir[0]])
    cut = side * ((np.stack([xx, yy], -1) - shape.distal_end) @ normal) > 0.25 * (
        shape.condyle_width_px)
    image, cut_masks = sample.image.copy(), masks.copy()
    image[cut] = 0.0
    cut_masks[:, cut] = False  # the network does not put bone on the blank
    ctx = with_blank_shift(ReviewContext(masks=cut_masks, image=image, uncertainty=unc), plan,
                           None)  # fmt: skip
    np.testing.assert_allclose(ctx.uncertainty.blank_shift_px, [20 * np.sqrt(2)] * 3)
    assert ctx.uncertainty.blank_cut_mm > 10.0  # a straight cut through the condyles
    assert {"blank_dependent", "blank_cut"} <= {r.code for r in review(plan, ctx)}
    shifts = uncertainty_report(ctx.uncertainty, sample.spacing_mm)["blank_shift_px"]
    assert shifts["schoettle"] == pytest.approx(20 * np.sqrt(2))


@pytest.mark.parametrize("k", [1, 3])
def test_a_shutter_cutting_the_condyles_is_a_straight_cut_of_their_chord(k):
    """The drawn knee's shutter at column 100 cuts the condyles (a circle of radius 60 px about
    column 150), and the femur mask stops 4 px short of it, at column 104: the chord there is
    2 sqrt(60^2 - 46^2) = 77 px = 38.5 mm; the edge runs up to 2 mm (4 px) past the bone at
    either end. At 1x and 3x the pixels."""
    img, masks = upscaled(*knee(100), k)
    mask, _ = blank_next_to_femur(img, masks, femur_shape(masks[0]), MMPP / k)
    chord_mm = 2 * np.sqrt(60**2 - 46**2) * MMPP
    assert chord_mm <= straight_cut_mm(img, mask, masks[0], MMPP / k) <= chord_mm + 4.5


def test_black_soft_tissue_along_the_bones_outline_is_no_straight_cut(monkeypatch):
    """A black band hugging the round condyles (as clipped soft tissue does) is blank next to
    the femur with bone right at its edge, but its edge is an arc, not a line: no cut. With the
    straightness limit lifted (and the run-on test passed) it would be one: the arc is
    rejected for being curved."""
    import planning.blank_out as blank_out

    img, masks = knee(None)
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    r = np.hypot(xx - 150, yy - 250)
    band = (r >= 60) & (r < 90) & (yy > 250)
    img[band] = 0.0
    blank = band.astype(np.uint8)
    assert straight_cut_mm(img, blank, masks[0], MMPP) == 0.0
    monkeypatch.setattr(blank_out, "STRAIGHT_MM", 100.0)
    monkeypatch.setattr(blank_out, "_runs_on", lambda *a: True)
    assert straight_cut_mm(img, blank, masks[0], MMPP) > 10.0


def test_black_soft_tissue_along_the_straight_shaft_is_no_cut(monkeypatch):
    """A black band along the shaft's straight outline that ends where the condyles begin:
    straight, with bone right at it, but its edge does not go on past the bone as a shutter's
    does (below it lie soft tissue and condyle, neither blank): no cut. Without the run-on
    test it would be one."""
    import planning.blank_out as blank_out

    img, masks = knee(None)
    img[:190, 100:120] = 0.0
    blank = np.zeros(img.shape, np.uint8)
    blank[:190, 100:120] = 1
    assert straight_cut_mm(img, blank, masks[0], MMPP) == 0.0
    monkeypatch.setattr(blank_out, "_runs_on", lambda *a: True)
    assert straight_cut_mm(img, blank, masks[0], MMPP) > 10.0


def test_a_femur_leaving_through_a_black_frame_is_no_cut(monkeypatch):
    """A black frame 12 px (3 %) deep along the image's top, where the shaft leaves the image:
    treated as the image's edge (no cut); the same edge with the frame rule off is a cut."""
    import planning.blank_out as blank_out

    img, masks = knee(None)
    img[:12] = 0.0
    masks[0, :14] = False
    blank = np.zeros(img.shape, np.uint8)
    blank[:12] = 1
    assert straight_cut_mm(img, blank, masks[0], MMPP) == 0.0
    monkeypatch.setattr(blank_out, "FRAME", 0.0)
    assert straight_cut_mm(img, blank, masks[0], MMPP) > 10.0


def test_a_straight_blank_edge_with_dark_tissue_before_the_bone_is_no_cut():
    """A straight black edge 3 px (1.5 mm) from the femur with dark, unclipped tissue between
    (a window that clips the soft tissue, not a shutter through the bone), its mask grown by
    ``MARGIN_PX`` as ``blank_next_to_femur`` grows it (which swallows the dark strip): the
    image just inside the blank is not bone, so no cut; with bone up to the edge, one."""
    import cv2

    from planning.blank_out import MARGIN_PX

    img, masks = knee(None)
    femur = masks[0].copy()
    femur[:, :100] = False
    img[:, :97] = 0.0
    hand = np.zeros(img.shape, np.uint8)
    hand[:, :97] = 1
    grown = cv2.dilate(hand, np.ones((2 * MARGIN_PX + 1,) * 2, np.uint8))
    dark = img.copy()
    dark[:, 97:100] = 0.08
    assert straight_cut_mm(dark, grown, femur, MMPP) == 0.0
    bone = img.copy()
    bone[:, 97:100] = 0.6
    assert straight_cut_mm(bone, grown, femur, MMPP) > 10.0


@pytest.mark.parametrize("mmpp", [3.0, 8.0])
def test_straight_cut_on_a_coarse_scale_returns_a_length(mmpp):
    """Pieces of a pixel or two at a coarse scale (3-8 mm/px) are skipped, not fitted."""
    img, masks = knee(100)
    blank = (img == 0).astype(np.uint8)
    assert straight_cut_mm(img, blank, masks[0], mmpp) >= 0.0


def test_straight_cut_without_a_scale_is_none():
    img, masks = knee(100)
    blank = (img == 0).astype(np.uint8)
    for mmpp in (0.0, float("nan"), -1.0):
        assert straight_cut_mm(img, blank, masks[0], mmpp) == 0.0


def _cut_condyles_called_tibia(bone_at_cut: bool = True):
    """The drawn knee with a shutter over columns < 116, dark noisy soft tissue (not blank)
    between it and the shaft (columns 121-179), the condyles (rows >= 190) predicted as tibia
    and the femur ending above them. ``bone_at_cut`` False: the condyles' cut part is shown as
    the dark tissue, so no bone meets the blank anywhere."""
    img, masks = knee(None)
    rng = np.random.default_rng(2)
    dark = (np.arange(300)[None, :] < 121) & ((np.arange(400)[:, None] < 190) | (not bone_at_cut))
    img[dark] = np.abs(0.03 + 0.01 * rng.standard_normal(np.count_nonzero(dark)))
    img[:, :116] = 0.0
    condyles = masks[0] & (np.arange(400)[:, None] >= 190)
    masks[2] |= condyles  # the network's reading: the epiphysis is tibia
    masks[0] &= ~condyles
    masks[:, :, :116] = False
    return img, masks


def test_a_shutter_cutting_condyles_the_model_called_tibia_is_found():
    """Red-team round 13: a collimator corner cut the condyles away and the model ended its
    femur at the physis, calling the epiphysis tibia (a plan 36 mm off); dark soft tissue lay
    between the blank and the predicted shaft, so no bone met the blank next to the predicted
    femur. Bone at the blank's edge next to any predicted bone at the knee (within a condyle
    width of the femur's distal end) counts: here the condyles, labelled tibia."""
    img, masks = _cut_condyles_called_tibia()
    shape = femur_shape(masks[0])
    assert np.linalg.norm(shape.distal_end - [150, 189]) < 15  # the predicted femur ends above
    found = blank_next_to_femur(img, masks, shape, MMPP)
    assert found is not None and found[0][:, :116].all()
    img, masks = _cut_condyles_called_tibia(bone_at_cut=False)  # nothing cut: dark tissue only
    assert blank_next_to_femur(img, masks, femur_shape(masks[0]), MMPP) is None


def test_bone_far_below_the_knee_at_the_blank_does_not_count():
    """Only bones within a condyle width (60 px here) of the femur's distal end count: the
    tibia's shaft ~130 px below it, meeting the same blank, is not a cut through the knee."""
    img, masks = _cut_condyles_called_tibia(bone_at_cut=False)
    img[319:, 116:121] = 0.6  # the tibia (rows > 318) reaches the blank, far from the femur's end
    masks[2, 319:, 116:121] = True
    assert blank_next_to_femur(img, masks, femur_shape(masks[0]), MMPP) is None
    img[200:260, 116:121] = 0.6  # bone at the blank within a condyle width: a cut at the knee
    masks[2, 200:260, 116:121] = True
    assert blank_next_to_femur(img, masks, femur_shape(masks[0]), MMPP) is not None


def white_knee(shutter_col: int = 100):
    """``knee`` with its shutter white (exactly 1, the image's top) instead of black."""
    img, masks = knee(shutter_col)
    img[:, :shutter_col] = 1.0
    return img, masks


@pytest.mark.parametrize("k", [1, 3])
def test_a_white_shutter_cutting_the_condyles_is_found_and_cuts_their_chord(k):
    """Red-team round 14: the same shutter at full white. ``bright=True`` finds it with the soft
    tissue's level (``bright=False`` does not: nothing in the image is black), and on the
    negative image its edge is the same straight 38.5 mm cut as the black shutter's."""
    img, masks = upscaled(*white_knee(100), k)
    shape = femur_shape(masks[0])
    assert blank_next_to_femur(img, masks, shape, MMPP / k) is None
    found = blank_next_to_femur(img, masks, shape, MMPP / k, bright=True)
    assert found is not None
    mask, level = found
    assert mask[:, : 100 * k].all() and not mask[:, 100 * k + 6 :].any()
    soft = (img > 0.15) & (img < 0.45) & ~np.any(masks, axis=0)
    assert level == pytest.approx(np.median(img[soft]), abs=0.01)
    chord_mm = 2 * np.sqrt(60**2 - 46**2) * MMPP
    assert chord_mm <= straight_cut_mm(-img, mask, masks[0], MMPP / k) <= chord_mm + 4.5


def test_a_white_region_meeting_soft_tissue_only_is_not_a_cut_shutter():
    """White beyond the skin (an inverted display's air) meets soft tissue, not bone: no blank
    region cutting the femur (the shutter moved 25 px left of the condyles, soft tissue between)."""
    img, masks = knee(None)
    img[:, :65] = 1.0
    assert blank_next_to_femur(img, masks, femur_shape(masks[0]), MMPP, bright=True) is None
