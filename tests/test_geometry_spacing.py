"""Calibration-sphere detection on synthetic radiographs, and the spacing priority."""

import cv2
import numpy as np
import pytest

from geometry.spacing import SphereDetection, detect_calibration_sphere, resolve_spacing


def draw_disc(img: np.ndarray, cx: float, cy: float, r: float, value: float) -> None:
    """Anti-aliased filled disc (coverage ramps over one pixel at the edge), blended in place."""
    ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    cov = np.clip(r - np.hypot(xs - cx, ys - cy) + 0.5, 0.0, 1.0)
    img[:] = img * (1 - cov) + value * cov


def radiograph(rng, h=300, w=360) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    img = 0.15 + 0.1 * xs / w
    img += 0.35 * (np.abs(xs - 0.4 * w - 0.2 * ys) < 30)  # a bone-like bright band
    return img


@pytest.mark.parametrize(("r", "centre"), [(23.7, (260.3, 70.6)), (14.2, (80.0, 230.5))])
def test_sphere_radius_within_two_percent(r, centre):
    rng = np.random.default_rng(0)
    img = radiograph(rng)
    # distractors: a bright non-uniform blob (soft Gaussian) and an ellipse
    ys, xs = np.mgrid[0:300, 0:360]
    img += 0.4 * np.exp(-((xs - 300) ** 2 + (ys - 230) ** 2) / (2 * 12.0**2))
    cv2.ellipse(img, (200, 240), (30, 12), 20, 0, 360, 0.8, -1)
    draw_disc(img, *centre, r, 0.9)
    img = np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)
    det = detect_calibration_sphere(img, diameter_mm=30.0)
    assert det is not None
    np.testing.assert_allclose(det.center, centre, atol=0.5)
    assert det.mm_per_px == pytest.approx(30.0 / (2 * r), rel=0.02)
    assert det.spacing == (det.mm_per_px, det.mm_per_px) and 0 < det.score <= 1


def test_no_sphere_gives_none():
    rng = np.random.default_rng(1)
    img = np.clip(radiograph(rng) + rng.normal(0, 0.02, (300, 360)), 0, 1)
    assert detect_calibration_sphere(img) is None


def test_large_image_is_downscaled_for_hough_and_refined_at_full_size():
    img = np.full((1400, 1700), 0.2)
    draw_disc(img, 1200.4, 400.8, 101.3, 0.95)
    det = detect_calibration_sphere(img, diameter_mm=30.0, expected_px_range=(60, 150))
    assert det is not None
    assert det.radius_px == pytest.approx(101.3, rel=0.005)


def test_resolve_spacing_priority():
    sphere = SphereDetection(np.zeros(2), 50.0, 0.3, 0.9)
    assert resolve_spacing((0.1, 0.1), (0.2, 0.2), sphere) == ((0.2, 0.2), "annotation")
    assert resolve_spacing((0.1, 0.12), None, sphere) == ((0.1, 0.12), "PixelSpacing")
    assert resolve_spacing((0.1, 0.1), None, sphere, "ImagerPixelSpacing") == (
        (0.3, 0.3),
        "sphere",
    )
    assert resolve_spacing((0.1, 0.1), None, None, "ImagerPixelSpacing") == (
        (0.1, 0.1),
        "ImagerPixelSpacing",
    )
    assert resolve_spacing(None, 0.15) == ((0.15, 0.15), "annotation")
    assert resolve_spacing((np.nan, np.nan), None, None) == (None, None)
    assert resolve_spacing() == (None, None)
    with pytest.raises(ValueError, match="tag"):
        resolve_spacing((0.1, 0.1), dicom_tag="Spacing")
