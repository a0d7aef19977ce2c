"""Red-team round 5 (a 30-minute quick checkpoint against images a clinic might send): the gate
behaviours that corpus relied on, rebuilt from hand-drawn masks and heat-maps (no checkpoint, no
phantom generator), each beside a clean hand-built knee that must pass, so every test can fail.

Corpus (drawn with OpenCV, or derived from phantoms): TKA / UKA / nail / plate / cast / child /
deep flexion / hyperextension / bilateral / side by side / knee in the top third / condyles only /
shaft only / rotated 35-45 deg / MONOCHROME1 DICOM / 4000 px / 150 px / grid and moire / light-box
photograph / malrotated lateral / open physes / ruler / metal over the posterior condyle / ankle /
hip / hand / skull / elbow (extended, 45, 60 mirrored, 90, 100 deg). Every knee image was flagged
or planned on the distal femur; two knees side by side were flagged as a fragmented femur, deep
flexion by the tibia's position, crops by the femur's shape. A metal disc over the posterior
condyle was planned 14 mm off and caught only by a TTA spread just over its limit: the new
``saturated``-under-the-points check (``planning.ood.point_saturation``) flags it. The lateral
elbow flexed 45-90 deg passed the gate (``test_hinge_joint_...``, not fixed): the network reads it
as a knee, and its masks are those of a flexed knee.
"""

from __future__ import annotations

import cv2
import numpy as np

from geometry.plan_geometry import plan_from_maps
from planning.ood import point_saturation
from planning.review import ReviewContext, review

S = 256  # maps drawn directly in original pixels (frame=None), 0.5 mm per pixel
SPACING = (0.5, 0.5)


def _gauss(p, sigma=4.0) -> np.ndarray:
    ys, xs = np.mgrid[0:S, 0:S]
    return np.exp(-((xs - p[0]) ** 2 + (ys - p[1]) ** 2) / (2 * sigma**2)).astype(np.float32)


def _poly(pts) -> np.ndarray:
    m = np.zeros((S, S), np.uint8)
    cv2.fillPoly(m, [np.round(np.asarray(pts)).astype(np.int32)], 1)
    return m > 0


def _disc(c, r) -> np.ndarray:
    m = np.zeros((S, S), np.uint8)
    cv2.circle(m, (int(c[0]), int(c[1])), int(r), 1, -1)
    return m > 0


def knee_masks(flex: str = "slight") -> dict[str, np.ndarray]:
    """A lateral knee, anterior to the left: the shaft from the top, the condyles bulging
    posteriorly (right), the patella in front, the tibia below (or beside, in deep flexion)."""
    femur = _poly([[95, -5], [145, -5], [150, 120], [100, 120]]) | _disc((135, 150), 36)
    femur |= _poly([[100, 110], [150, 110], [160, 150], [100, 165]])
    if flex == "slight":
        tibia = _poly([[100, 192], [170, 192], [160, 230], [150, 260], [110, 260], [105, 225]])
        fibula = _poly([[160, 215], [170, 215], [168, 260], [158, 260]]) & ~tibia
    else:  # deep flexion: the tibia folded up behind the femur (its centroid above the femur's)
        tibia = _poly([[168, 135], [256, -5], [256, 45], [188, 155]])
        fibula = _poly([[190, 150], [256, 50], [256, 62], [195, 158]]) & ~tibia
    patella = _poly([[75, 120], [92, 112], [100, 150], [85, 165], [72, 150]])
    return {"femur": femur, "patella": patella & ~femur | (patella & femur),
            "tibia": tibia & ~femur, "fibula": fibula}  # fmt: skip


def build(
    masks: dict[str, np.ndarray],
    blum=(125, 168),
    tmc=(148, 130),
    cortex_x=(146, 150),
    image: np.ndarray | None = None,
):
    """(plan, context) from hand-built masks; LM1 along the posterior cortex (x from
    ``cortex_x[0]`` at the top to ``cortex_x[1]`` at y=135)."""
    seg = np.stack([masks[k].astype(np.float32) for k in ("femur", "patella", "tibia", "fibula")])
    lm = np.stack([_gauss(blum), _gauss(tmc)])
    roi = np.zeros((S, S), np.float32)
    for y in range(0, 136, 3):
        x = cortex_x[0] + (cortex_x[1] - cortex_x[0]) * y / 135
        roi = np.maximum(roi, _gauss((x, y), 3.0))
    plan = plan_from_maps(seg, lm, roi[None], frame=None, spacing=SPACING, decode="quadratic")
    if image is None:
        rng = np.random.default_rng(0)
        bone = np.any(seg > 0.5, axis=0)
        image = np.where(bone, 0.65, 0.3) + rng.normal(0, 0.03, (S, S))
        image = np.clip(cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.0), 0, 1)
    return plan, ReviewContext(masks=seg > 0.5, image=image)


def codes(plan, ctx) -> set[str]:
    return {r.code for r in review(plan, ctx)}


def test_hand_built_lateral_knee_passes():
    """The reference: every other test changes one thing about this knee."""
    plan, ctx = build(knee_masks())
    assert np.all(np.isfinite(plan.schoettle))
    assert review(plan, ctx) == []


def test_two_knees_side_by_side_read_as_a_fragmented_femur():
    """d_two_knees / p_two_knees: a bilateral film, both femurs predicted; the plan may be on
    either knee, so it is flagged (femur_fragmented), not trusted."""
    m = knee_masks()
    half = {k: cv2.resize(v.astype(np.uint8), (S // 2, S), interpolation=cv2.INTER_NEAREST) > 0
            for k, v in m.items()}  # fmt: skip
    two = {k: np.hstack([v, v[:, ::-1]]) for k, v in half.items()}
    plan, ctx = build(two, blum=(62, 168), tmc=(74, 130), cortex_x=(73, 75))
    assert "femur_fragmented" in codes(plan, ctx)


def test_deep_flexion_tibia_beside_the_femur_is_flagged():
    """d_flex130: the tibia folded up behind the condyles is not distal of the femur."""
    plan, ctx = build(knee_masks(flex="deep"))
    assert "tibia_position" in codes(plan, ctx)


def test_condyles_only_crop_has_no_shaft():
    """p_condyles_only: a crop that leaves the condyles and no shaft is no plannable femur (the
    cortex line needs the shaft): flagged by the femur's shape or its axis (the corpus image:
    femur_rotated, lm1_axis)."""
    m = knee_masks()
    crop = {k: np.zeros_like(v) for k, v in m.items()}
    for k in m:  # keep rows 110.. (the condyles), moved to the top of the image
        crop[k][: S - 110] = m[k][110:]
    plan, ctx = build(crop, blum=(125, 58), tmc=(148, 20), cortex_x=(149, 150))
    # the round blob has no shaft axis: the cortex line disagrees with its principal axis
    assert {"femur_shape", "femur_rotated", "lm1_axis", "no_lm1", "lm1_support"} & codes(plan, ctx)
    assert review(*build(m)) == []  # the same knee uncropped passes


def test_shaft_only_crop_has_no_condyles():
    """p_shaft_only: a straight bone band, no condyles, no tibia."""
    band = _poly([[95, -5], [145, -5], [150, 260], [100, 260]])
    empty = np.zeros((S, S), bool)
    m = {"femur": band, "patella": empty, "tibia": empty, "fibula": empty}
    plan, ctx = build(m)
    assert {"femur_shape", "no_tibia"} <= codes(plan, ctx)


def test_hinge_joint_read_as_a_flexed_knee_is_not_told_apart_by_the_masks():
    """Known gap (not fixed in round 5): a lateral elbow flexed 45-90 deg was planned unflagged by
    the 30-minute model. The network's reading (humerus = femur, ulna and radius = tibia and
    fibula pointing 'posteriorly', olecranon = patella) gives exactly the masks of a knee flexed
    ~90 deg, which this hand-built case reproduces: the mask evidence passes it, as it must pass
    a flexed knee. Telling them apart needs image evidence or a model trained with other joints
    as negatives; a change that flags this case must say why a flexed knee is not flagged too."""
    m = knee_masks()
    hinge = dict(m)
    hinge["tibia"] = _poly([[165, 150], [256, 150], [256, 195], [165, 190]]) & ~m["femur"]
    hinge["fibula"] = _poly([[175, 150], [256, 150], [256, 160], [175, 160]]) & ~m["femur"]
    hinge["patella"] = _poly([[95, 178], [120, 180], [118, 200], [95, 198]])
    plan, ctx = build(hinge)
    assert np.all(np.isfinite(plan.schoettle))
    assert review(plan, ctx) == []  # documents the gap; see the round-5 report


def _image(masks) -> np.ndarray:
    return build(masks)[1].image.copy()


def test_metal_over_the_schoettle_point_is_flagged():
    """p_metal_over_point: a metal disc (12 mm radius) over the posterior condyle; the plan was
    14 mm off and flagged only by a TTA spread of 3.1 mm against a 3.0 mm limit. Now the pixels
    under the points say it: the anatomy there is not visible (code ``saturated``)."""
    m = knee_masks()
    plan, ctx = build(m)
    assert review(plan, ctx) == []
    img = _image(m)
    s = plan.schoettle
    cv2.circle(img, (int(round(s[0])), int(round(s[1]))), int(6 / SPACING[0]), 1.0, -1)
    ctx_metal = ReviewContext(masks=ctx.masks, image=img)
    got = [r for r in review(plan, ctx_metal) if r.code == "saturated"]
    assert got and "around" in got[0] and "not visible" in got[0]
    assert not any("predicted femur lies" in r for r in got)  # the femur as a whole is not


def test_a_bright_cortex_line_or_distant_metal_is_not_flagged():
    """Clipped bone is a thin line, not a blob: a saturated 1-pixel line through the Schoettle
    point covers < 30 % of the 3 mm disc; metal 10 mm away is not under any point."""
    m = knee_masks()
    plan, ctx = build(m)
    s = plan.schoettle
    img = _image(m)
    cv2.line(img, (0, int(round(s[1]))), (S - 1, int(round(s[1]))), 1.0, 1)
    assert review(plan, ReviewContext(masks=ctx.masks, image=img)) == []
    img = _image(m)
    cv2.circle(img, (int(s[0]) - 24, int(s[1]) + 24), 6, 1.0, -1)  # ~17 mm away, r = 3 mm
    assert review(plan, ReviewContext(masks=ctx.masks, image=img)) == []


def test_point_saturation_measure():
    img = np.zeros((50, 60), np.float32)
    img[:, 30:] = 1.0
    assert point_saturation(img, np.array([45.0, 25.0]), 5) == 1.0
    assert point_saturation(img, np.array([10.0, 25.0]), 5) == 0.0
    assert 0.4 < point_saturation(img, np.array([29.5, 25.0]), 5) < 0.6  # on the edge: half
    assert np.isnan(point_saturation(img, np.array([np.nan, 3.0]), 5))
    assert np.isnan(point_saturation(img, np.array([70.0, 3.0]), 5))  # off the image


def test_metal_over_the_whole_femur_is_flagged():
    """d_tka / p_tka were caught by hourglass disagreement; with the femur predicted over
    saturated pixels the intensity evidence flags it too (both the femur and the points)."""
    m = knee_masks()
    rng = np.random.default_rng(1)
    img = np.where(m["femur"], 1.0, 0.3) + np.where(m["femur"], 0, rng.normal(0, 0.02, (S, S)))
    plan, ctx = build(m, image=np.clip(img, 0, 1).astype(np.float32))
    got = [r for r in review(plan, ctx) if r.code == "saturated"]
    assert len(got) == 2


def test_cortex_line_on_a_ruler_taken_into_the_femur_is_flagged():
    """Red-team round 8: a radiopaque ruler along the posterior shaft was taken into the femur
    mask and LM1 fitted to its straight edge (plans 10-17 mm off, unflagged): nothing of the
    femur then lies behind LM1, whereas the posterior condyles bulge behind the posterior cortex
    in any lateral knee (code ``no_condyle_bulge``)."""
    m = knee_masks()
    plan, ctx = build(m)
    assert "no_condyle_bulge" not in codes(plan, ctx)  # the condyles bulge ~10 mm behind LM1
    ruler = dict(m)
    ruler["femur"] = m["femur"] | _poly([[150, -5], [176, -5], [176, 190], [150, 190]])
    plan, ctx = build(ruler, cortex_x=(176, 176))
    assert plan.lm1 is not None and abs(plan.lm1.direction[0]) < 0.1  # LM1 on the ruler's edge
    got = [r for r in review(plan, ctx) if r.code == "no_condyle_bulge"]
    assert got and "behind LM1" in got[0], review(plan, ctx)
