"""plan_from_maps on ground-truth maps of a constructed femur: the plan reproduces the truth."""

import json

import cv2
import numpy as np
import pytest
import torch

from geometry.frame import PadResize
from geometry.lines import Line, cortex_points, from_mm, to_mm
from geometry.plan_geometry import masks_to_original, plan_from_maps
from geometry.schoettle import schoettle_point
from planning.review import review

H, W, S = 520, 400, 256
P_PROX, P_DIST = np.array([150.0, 20.0]), np.array([165.0, 330.0])  # posterior cortex line
P_TMC = np.array([166.9, 352.4])  # on LM1 (nearly)
P_BLUM = np.array([232.6, 391.3])  # anterior of LM1


def femur_coverage() -> np.ndarray:
    """(H, W) femur area coverage: shaft bounded posteriorly by the line, plus a condyle disc."""
    d = (P_DIST - P_PROX) / np.linalg.norm(P_DIST - P_PROX)
    n = np.array([d[1], -d[0]])  # points to +x (anterior)
    a, b = P_PROX - 0.1 * (P_DIST - P_PROX), P_PROX + 1.15 * (P_DIST - P_PROX)
    quad = np.array([a, b, b + 120 * n, a + 120 * n])
    big = np.zeros((H * 8, W * 8), np.uint8)
    cv2.fillPoly(big, [np.round((quad + 0.5) * 128).astype(np.int32)], 1, shift=4)
    cv2.circle(big, (round(245.5 * 128), round(430.5 * 128)), 85 * 128, 1, -1, shift=4)
    return cv2.resize(big.astype(np.float32), (W, H), interpolation=cv2.INTER_AREA)


def gaussians(centres: np.ndarray, sigma: float = 6.0) -> np.ndarray:
    ys, xs = np.mgrid[0:S, 0:S]
    g = [np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)) for x, y in centres]
    return np.max(g, axis=0)


def truth_maps(binary: bool, roi_from: float = 0.0, width: int = W):
    """Ground-truth maps; ``width`` > W widens the image (zeros on the right)."""
    frame = PadResize.from_shape(H, width, S)
    femur = frame.apply(np.pad(femur_coverage(), ((0, 0), (0, width - W))))
    if binary:  # as the datamodule renders targets: area resize, then >= 0.5
        femur = (femur >= 0.5).astype(np.float32)
    seg = np.zeros((4, S, S), np.float32)
    seg[0] = femur
    lm = np.stack([gaussians(frame.to_network(P_BLUM[None])),
                   gaussians(frame.to_network(P_TMC[None]))])  # fmt: skip
    ends = frame.to_network(np.stack([P_PROX + roi_from * (P_DIST - P_PROX), P_DIST]))
    n = int(np.ceil(np.linalg.norm(ends[1] - ends[0]) / 4.0)) + 1
    roi = gaussians(np.linspace(ends[0], ends[1], n))[None]
    return seg, lm, roi, frame


def true_schoettle(spacing):
    """The construction from the true points, in mm (or px), mapped back to pixels."""
    f = (lambda p: p) if spacing is None else (lambda p: to_mm(p, spacing))
    g = (lambda p: p) if spacing is None else (lambda p: from_mm(p, spacing))
    res = schoettle_point(Line.through(f(P_PROX), f(P_DIST)), f(P_TMC), f(P_BLUM))
    return g(res.point), res.radius


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("spacing", [None, (0.15, 0.15), (0.15, 0.12)])
def test_oracle_maps_reproduce_the_true_schoettle_point(binary, spacing):
    seg, lm, roi, frame = truth_maps(binary)
    plan = plan_from_maps(seg, lm, roi, frame=frame, spacing=spacing, decode="quadratic")
    expected, radius = true_schoettle(spacing)
    assert np.hypot(*(plan.schoettle - expected)) < 0.25  # measured: 0.01-0.07 px
    np.testing.assert_allclose(plan.landmark("p_blum"), P_BLUM, atol=0.05)
    np.testing.assert_allclose(plan.landmark("p_tmc"), P_TMC, atol=0.05)
    # LM1 passes within half a pixel of the true cortex end points
    assert plan.lm1.distance(np.stack([P_PROX, P_DIST])).max() < 0.5
    if spacing is None:
        assert plan.radius_mm is None and plan.radius_px == pytest.approx(radius, abs=0.5)
    else:
        assert plan.radius_mm == pytest.approx(radius, abs=0.1)
        np.testing.assert_allclose(plan.schoettle_mm, to_mm(plan.schoettle, spacing))
    assert plan.lm1_support >= 50 and not review(plan), review(plan)
    # LM2 / LM3 pass through the landmarks; in mm they are perpendicular to LM1
    assert plan.lm2.distance(P_TMC) < 1e-6 and plan.lm3.distance(P_BLUM) < 1e-6
    sp = spacing or (1.0, 1.0)
    lm1_mm, lm2_mm = (ln.map(lambda p: to_mm(p, sp)) for ln in (plan.lm1, plan.lm2))
    assert abs(lm1_mm.direction @ lm2_mm.direction) < 1e-9
    json.dumps(plan.as_dict())  # JSON-ready


def test_other_options_stay_close():
    seg, lm, roi, frame = truth_maps(True)
    expected = true_schoettle((0.15, 0.15))[0]
    # arg max: landmarks off by up to half a network pixel (~1 original px here)
    plan = plan_from_maps(seg, lm, roi, frame=frame, spacing=(0.15, 0.15), decode="argmax")
    assert np.hypot(*(plan.schoettle - expected)) < 1.5
    for kw in ({"line_fit": "robust", "decode": "quadratic"}, {"decode": "soft_argmax"}):
        other = plan_from_maps(seg, lm, roi, frame=frame, spacing=(0.15, 0.15), **kw)
        assert np.hypot(*(other.schoettle - expected)) < 0.25
    # pixel-centre outline (no sub-pixel): LM1 shifts ~half a network pixel into the bone
    pix = plan_from_maps(seg, lm, roi, frame=frame, spacing=(0.15, 0.15), decode="quadratic",
                         subpixel_outline=False)  # fmt: skip
    shift = pix.lm1.distance(P_DIST)
    assert 0.5 / frame.scale * 0.6 < shift < 0.5 / frame.scale * 1.4


def test_outline_along_the_image_edge_is_ignored():
    # the ROI runs up to the top edge, where the shaft is cut: the cut must not enter the fit.
    # A wide image puts the top edge inside the network frame (padding above).
    seg, lm, roi, frame = truth_maps(True, roi_from=-20.0 / 310.0, width=700)
    assert frame.pad_top > 0
    cut = frame.to_original(cortex_points(seg[0], roi[0]))
    assert (cut[:, 1] < 0.5).sum() >= 5  # the cut is in the ROI ...
    plan = plan_from_maps(seg, lm, roi, frame=frame, decode="quadratic")
    assert plan.lm1_points[:, 1].min() > 1.0  # ... but not in the fit
    assert plan.lm1.distance(np.stack([P_PROX, P_DIST])).max() < 0.5
    assert np.hypot(*(plan.schoettle - true_schoettle(None)[0])) < 0.25


def test_needs_review_reasons():
    seg, lm, roi, frame = truth_maps(True)
    weak = plan_from_maps(seg, 0.2 * lm, roi, frame=frame, spacing=(0.15, 0.15))
    assert any("low heat-map peak for p_blum" in r for r in review(weak))
    # ROI confined to a few points -> too little support
    small_roi = gaussians(frame.to_network(P_PROX[None] + [0, 150]), sigma=1.0)[None]
    few = plan_from_maps(seg, lm, small_roi, frame=frame, spacing=(0.15, 0.15))
    assert any("LM1 fit rests on" in r for r in review(few))
    # both landmarks at the same height along LM1 -> LM2 and LM3 coincide
    lm_close = np.stack([gaussians(frame.to_network(P_BLUM[None])),
                         gaussians(frame.to_network(P_BLUM[None] - [40.0, 0.0]))])  # fmt: skip
    close = plan_from_maps(seg, lm_close, roi, frame=frame, spacing=(0.15, 0.15))
    assert any("nearly coincide" in r for r in review(close))
    # p_blum posterior of the cortex (away from the bone)
    lm_post = np.stack([gaussians(frame.to_network(np.array([[100.0, 390.0]]))), lm[1]])
    post = plan_from_maps(seg, lm_post, roi, frame=frame, spacing=(0.15, 0.15))
    assert any("posterior of LM1" in r for r in review(post))
    # no femur at all: no line, NaN point, still a plan
    empty = plan_from_maps(np.zeros_like(seg), lm, roi, frame=frame)
    assert empty.lm1 is None and np.isnan(empty.schoettle).all() and review(empty)
    assert empty.as_dict()["schoettle"] == [None, None]


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="expected"):
        plan_from_maps(np.zeros((4, 8, 8)), np.zeros((3, 8, 8)), np.zeros((8, 8)))
    with pytest.raises(ValueError, match="differ"):
        plan_from_maps(np.zeros((4, 8, 8)), np.zeros((2, 8, 8)), np.zeros((9, 9)))


def test_masks_back_to_original_and_torch_input():
    seg, lm, roi, frame = truth_maps(False)
    back = masks_to_original(torch.from_numpy(seg), frame)
    assert back.shape == (4, H, W) and not back[1:].any()
    truth = femur_coverage() >= 0.5
    assert (back[0] != truth).sum() / truth.sum() < 0.01
    plan = plan_from_maps(
        torch.from_numpy(seg),
        torch.from_numpy(lm),
        torch.from_numpy(roi),
        frame=frame,
        spacing=torch.tensor([0.15, 0.15]),
        decode="quadratic",
    )
    assert np.hypot(*(plan.schoettle - true_schoettle((0.15, 0.15))[0])) < 0.25
    with pytest.raises(ValueError, match="masks_to_original"):
        masks_to_original(seg[:, :100], frame)
