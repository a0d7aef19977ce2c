"""Calibration-sphere detection on synthetic radiographs, and the spacing priority.

The discs are drawn as spheres (path-length profile): a flat disc below the clip level is, by
design, no longer taken for a sphere (tests/test_sphere_detector.py).
"""

import cv2
import numpy as np
import pytest

from geometry.pixel_spacing import resolve_pixel_spacing
from geometry.spacing import detect_calibration_sphere


def draw_disc(img: np.ndarray, cx: float, cy: float, r: float, value: float) -> None:
    """Add a sphere's projection in place: path length sqrt(r^2 - d^2) through 1 - exp(-2 c),
    peak ``value`` above the background, anti-aliased at the edge."""
    ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    d = np.hypot(xs - cx, ys - cy)
    cov = np.clip(r - d + 0.5, 0.0, 1.0)
    c = np.sqrt(np.clip(1 - (d / r) ** 2, 0, 1))
    level = value * (1 - np.exp(-2.0 * c)) / (1 - np.exp(-2.0))
    img += cov * level


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


def sphere_image(mm_per_px: float = 0.3) -> np.ndarray:
    """A radiograph with one 30 mm sphere at ``mm_per_px``."""
    img = np.clip(radiograph(None) + np.random.default_rng(3).normal(0, 0.01, (300, 360)), 0, 1)
    draw_disc(img, 250.0, 150.0, 15.0 / mm_per_px, 0.95)
    return img


def test_resolve_spacing_priority():
    img = sphere_image(0.3)

    def res(**kw):
        r = resolve_pixel_spacing(img, **kw)
        return (None, None) if r.spacing is None else (r.spacing.as_tuple(), r.source)

    assert res(dicom_pixel=(0.1, 0.1), annotation=(0.2, 0.2)) == ((0.2, 0.2), "annotation")
    assert res(dicom_pixel=(0.1, 0.12)) == ((0.1, 0.12), "PixelSpacing")
    (sp, src) = res(dicom_imager=(0.1, 0.1))
    assert src == "sphere" and sp == pytest.approx((0.3, 0.3), rel=0.02)
    assert resolve_pixel_spacing(
        img, dicom_imager=(0.1, 0.1), detect_sphere=False
    ).spacing.as_tuple() == (
        0.1,
        0.1,
    )
    assert res(annotation=0.15) == ((0.15, 0.15), "annotation")
    assert resolve_pixel_spacing(None, dicom_pixel=(np.nan, np.nan)).spacing is None
    assert resolve_pixel_spacing(None).spacing is None
    with pytest.raises(ValueError, match="spacing"):
        resolve_pixel_spacing(None, user=(0.1, -1.0))
