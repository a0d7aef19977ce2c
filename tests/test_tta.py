"""Test-time augmentation: warps are undone exactly, and the spread grows on a degraded input.

The network is a deterministic, equivariant stand-in (thresholds and a blur: it "finds" a bright
dot wherever it is), so these tests prove the TTA machinery: the maps of every augmented copy
are brought back to the unaugmented frame (spread ~0 on a clean image), and the spread measures
instability (large when noise makes the stand-in's answer depend on the sub-pixel sampling).
They do not prove that a trained network's spread tracks its error; ``make evaluate`` measures
that on the test phantoms (risk-coverage table).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from geometry.plan_geometry import plan_from_maps
from planning.predict import predict_image
from planning.tta import TTAConfig, Uncertainty, _affines, _warp, hourglass_shift, tta_uncertainty

S = 128
DOT_A, DOT_B = (70, 80), (46, 96)  # p_blum (brightest), p_tmc (second brightest)


class BlobNet:
    """Stand-in network: femur = the bright bar, cortex ROI = its 0.7 stripe, p_blum = the 1.0
    dot, p_tmc = the 0.85 dot (all by intensity, so it answers alike in any pose)."""

    image_size = S

    def predict_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        seg, lm, roi = [], [], []
        for img in x[:, 0].numpy():
            blur = cv2.GaussianBlur(img, (0, 0), 1.0)
            femur = (blur > 0.3).astype(np.float32)
            a = cv2.GaussianBlur((img >= 0.95).astype(np.float32), (0, 0), 3.0)
            b = cv2.GaussianBlur(((img > 0.78) & (img < 0.92)).astype(np.float32), (0, 0), 3.0)
            seg.append(np.stack([femur, np.zeros_like(femur), femur * 0, femur * 0]))
            lm.append(np.stack([a / max(a.max(), 1e-6), b / max(b.max(), 1e-6)]))
            stripe = ((img > 0.62) & (img < 0.78)).astype(np.float32)
            roi.append(cv2.GaussianBlur(stripe, (0, 0), 1.5)[None] * 3.0)
        return {k: torch.from_numpy(np.stack(v)) for k, v in (("seg", seg), ("lm", lm),
                                                              ("roi", roi))}  # fmt: skip


def scene(noise: float = 0.0, seed: int = 0) -> np.ndarray:
    img = np.zeros((S, S), np.float32)
    img[10:110, 40:80] = 0.5  # the "femur"
    img[10:110, 40:43] = 0.7  # its posterior cortex
    cv2.circle(img, DOT_A, 2, 1.0, -1)
    cv2.circle(img, DOT_B, 2, 0.85, -1)
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0.0, noise, img.shape), 0.0, 1.0).astype(np.float32)


def run(image: np.ndarray, count: int = 8) -> Uncertainty:
    net = BlobNet()
    base = predict_image(net, image)
    return tta_uncertainty(net, image, base, config=TTAConfig(count=count, seed=1))


def test_warp_back_is_the_inverse():
    x = scene()
    for m in _affines(TTAConfig(count=6, seed=3), S)[1:]:
        back = _warp(_warp(x[None], m, inverse=False), m, inverse=True)[0]
        inner = slice(20, 108)  # away from the border that leaves the frame
        assert np.abs(back[inner, inner] - x[inner, inner]).mean() < 0.02
    ident = _affines(TTAConfig(count=2), S)[0]
    np.testing.assert_array_equal(ident, [[1, 0, 0], [0, 1, 0]])


def test_flip_and_similarity_are_undone_on_a_clean_image():
    unc = run(scene())
    assert unc.points.shape == (8, 3, 2) and unc.failures == 0.0
    # every augmented plan finds the dots where they are in the unaugmented image
    np.testing.assert_allclose(unc.points[:, 0], np.tile(DOT_A, (8, 1)), atol=1.5)
    np.testing.assert_allclose(unc.points[:, 1], np.tile(DOT_B, (8, 1)), atol=1.5)
    for name in ("p_blum", "p_tmc", "schoettle"):
        assert unc.spread(name) < 1.5, (name, unc.spread(name))
    # in mm: x scales by col_mm, y by row_mm
    cov_mm = unc.covariance_mm((0.1, 0.2))
    np.testing.assert_allclose(cov_mm[0, 0, 0], unc.covariance[0, 0, 0] * 0.04, rtol=1e-9)
    np.testing.assert_allclose(cov_mm[0, 1, 1], unc.covariance[0, 1, 1] * 0.01, rtol=1e-9)


def test_spread_grows_when_the_input_is_degraded():
    clean = run(scene(), count=10)
    noisy = run(scene(noise=0.35, seed=2), count=10)
    for name in ("p_blum", "p_tmc"):
        assert noisy.spread(name) > 5 * max(clean.spread(name), 0.5), name
        assert noisy.spread(name) > 3.0


def test_spread_matches_numpy_covariance():
    pts = np.array([[[0.0, 0.0]] * 3, [[2.0, 0.0]] * 3, [[0.0, 4.0]] * 3, [[2.0, 4.0]] * 3])
    cov = np.stack([np.cov(pts[:, j].T) for j in range(3)])
    unc = Uncertainty(pts, cov, 0.0)
    # x variance 4/3, y variance 16/3, no correlation: major semi-axis sqrt(16/3)
    assert unc.spread("schoettle") == pytest.approx(np.sqrt(16 / 3))
    assert unc.spread("schoettle", (0.5, 0.5)) == pytest.approx(0.5 * np.sqrt(16 / 3))


def test_hourglass_shift_from_the_second_to_last_stack():
    net = BlobNet()
    maps = predict_image(net, scene())
    assert hourglass_shift(maps) is None  # a one-stack model gives no lm_prev
    moved = np.roll(maps.lm, 6, axis=2)  # the previous stack 6 px to the right
    maps.lm_prev = moved
    np.testing.assert_allclose(hourglass_shift(maps), [6.0, 6.0], atol=1e-9)
    plan = plan_from_maps(maps.seg, maps.lm, maps.roi, frame=maps.frame)
    np.testing.assert_allclose(plan.landmarks, [DOT_A, DOT_B], atol=1.0)
    # without TTA the hourglass agreement still reaches the review; no spread is claimed
    from planning.review import ReviewContext, review
    from planning.tta import hourglass_only

    only = hourglass_only(maps)
    assert only is not None and len(only.points) == 1
    found = {r.code for r in review(plan, ReviewContext(uncertainty=only))}
    assert "hourglass_disagree" in found and "tta_spread" not in found



def test_overlay_draws_the_two_sigma_ellipse():
    from planning.overlay import LANDMARK_COLOURS, draw_plan

    img = scene()
    maps = predict_image(BlobNet(), img)
    plan = plan_from_maps(maps.seg, maps.lm, maps.roi, frame=maps.frame)
    pts = np.tile(np.array([DOT_A, DOT_B, [np.nan, np.nan]], float), (4, 1, 1))
    cov = np.full((3, 2, 2), np.nan)
    cov[0] = np.diag([100.0, 25.0])  # p_blum: sigma 10 px along x, 5 px along y
    plain = draw_plan(img, plan)
    rgb = draw_plan(img, plan, uncertainty=Uncertainty(pts, cov, 0.0))
    colour = np.array(LANDMARK_COLOURS["p_blum"])
    x, y = DOT_A

    def hits(img: np.ndarray, k: float) -> float:
        """Fraction of 72 points on the k-sigma ellipse (semi-axes 10k, 5k px) with the
        colour in their 3x3 neighbourhood."""
        t = np.linspace(0.0, 2 * np.pi, 72, endpoint=False)
        found = 0
        for px, py in zip(np.round(x + 10 * k * np.cos(t)).astype(int),
                          np.round(y + 5 * k * np.sin(t)).astype(int), strict=True):
            window = img[py - 1 : py + 2, px - 1 : px + 2].reshape(-1, 3).astype(int)
            found += bool((np.abs(window - colour).max(axis=1) < 60).any())
        return found / 72

    # dashed: about half of the outline is drawn (the marker's label crosses a few points)
    assert hits(rgb, 2.0) - hits(plain, 2.0) > 0.25 and hits(plain, 2.0) < 0.1
    assert hits(rgb, 1.0) < 0.1 and hits(rgb, 3.0) < 0.1  # the 2-sigma size, not 1 or 3


def test_report_carries_the_uncertainty(tmp_path):
    from planning.plan import run_plan

    path = tmp_path / "scene.png"
    cv2.imwrite(str(path), np.round(scene() * 65535).astype(np.uint16))
    rep = run_plan(path, BlobNet(), tmp_path / "out", tta=6, detect_sphere=False).report
    unc = rep["uncertainty"]
    assert set(unc["points"]) == {"p_blum", "p_tmc", "schoettle"}
    blum = unc["points"]["p_blum"]
    assert blum["spread_unit"] == "px" and blum["ellipse_mm"] is None
    assert blum["ellipse_px"]["major"] == pytest.approx(blum["spread"], rel=1e-9)
    assert blum["spread"] < 1.5 and unc["hourglass_shift_px"] is None
    assert rep["warnings"] == [] and rep["settings"]["tta"] == 6
    jpg = tmp_path / "knee.JPG"  # the decoder, not the suffix, marks the input lossy
    cv2.imwrite(str(jpg), np.round(scene() * 255).astype(np.uint8))
    rep = run_plan(jpg, BlobNet(), tmp_path / "out", tta=0, detect_sphere=False).report
    assert len(rep["warnings"]) == 1 and "lossy JPEG" in rep["warnings"][0]


def test_augmented_maps_run_ahead_give_the_same_spread():
    """The network half (``augmented_maps``, run before the spacing is known) passed in gives
    exactly the spread that running it inside ``tta_uncertainty`` gives."""
    from planning.tta import augmented_maps

    net, image = BlobNet(), scene(noise=0.05, seed=2)
    cfg = TTAConfig(count=6, seed=1)
    base = predict_image(net, image)
    inside = tta_uncertainty(net, image, base, spacing=(0.2, 0.2), config=cfg)
    ahead = augmented_maps(net, image, cfg)
    assert len(ahead.maps) == cfg.count - 1
    given = tta_uncertainty(net, image, base, spacing=(0.2, 0.2), config=cfg, augmented=ahead)
    np.testing.assert_array_equal(given.points, inside.points)
    np.testing.assert_array_equal(given.covariance, inside.covariance)


def test_documented_example_report_has_every_field_a_plan_writes(tmp_path):
    """docs/plan_report.json (the README's example) carries the fields of a fresh report, two
    levels deep, and its version: a field added to the planner must reach the example."""
    import json
    from pathlib import Path

    from planning.plan import run_plan
    from planning.report import REPORT_VERSION

    path = tmp_path / "scene.png"
    cv2.imwrite(str(path), np.round(scene() * 65535).astype(np.uint16))
    rep = run_plan(path, BlobNet(), tmp_path / "out", tta=6, detect_sphere=False).report
    example = json.loads((Path(__file__).parents[1] / "docs" / "plan_report.json").read_text())
    assert example["report_version"] == rep["report_version"] == REPORT_VERSION
    assert set(example) == set(rep)
    for key, value in rep.items():
        if isinstance(value, dict) and isinstance(example[key], dict):
            assert set(value) <= set(example[key]), (key, set(value) - set(example[key]))
