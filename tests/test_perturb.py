"""Perturbed test samples keep their truth on the anatomy (``planning.perturb``), and the stress
table (``planning.stress``) counts an unflagged wrong plan as unsafe."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from datamodules.sample import RaterAnnotation, Sample
from planning.perturb import FOREIGN, KINDS, LATERAL, perturb
from planning.stress import parse_kinds, summarise

H, W = 61, 90
P_BLUM = np.array([57.3, 20.6])  # (x, y), off the pixel grid on purpose


def blob_sample() -> Sample:
    """Image = a Gaussian blob at p_blum (its intensity centroid is p_blum, to ~1e-3 px)."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    img = np.exp(-((xx - P_BLUM[0]) ** 2 + (yy - P_BLUM[1]) ** 2) / (2 * 3.0**2))
    masks = np.zeros((4, H, W), np.uint8)
    masks[0, 10:35, 30:80] = 1  # inside the "cropbottom" cut (row 37)
    ann = RaterAnnotation(np.array([P_BLUM, [40.0, 30.0]]), np.array([[35.0, -5.0], [45.0, 50.0]]))
    return Sample("s", img.astype(np.float32), masks, [ann], spacing_mm=(0.2, 0.25),
                  schoettle_point=np.array([44.0, 25.5]), meta={"side": "left"})


def centroid(img: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    w = np.clip(img - 0.05, 0, None)  # the blob alone (JPEG or noise floors do not count)
    return np.array([(xx * w).sum(), (yy * w).sum()]) / w.sum()


@pytest.mark.parametrize("kind", ["hflip", "vflip", "rot180", "rot90", "half", "pad", "cropbottom"])
def test_landmark_moves_with_the_pixels(kind):
    s = blob_sample()
    p = perturb(s, kind)
    assert p is not None and p.id == f"s@{kind}" and p.meta["perturbation"] == kind
    np.testing.assert_allclose(centroid(s.image), P_BLUM, atol=0.01)
    # the blob's measured centre, carried as a landmark, lands where the moved blob is measured
    c0 = np.array([centroid(s.image), [40.0, 30.0]])
    moved = perturb(Sample("c", s.image, s.masks, [RaterAnnotation(c0, s.cortex_points)]), kind)
    tol = 0.02 if kind == "half" else 1e-6  # INTER_AREA at an odd side: a 0.01 px shift
    np.testing.assert_allclose(centroid(p.image), moved.landmarks[0], atol=tol)
    # the mask's centre moves alike (pixel centres on integers)
    ys, xs = np.nonzero(p.masks[0])
    ys0, xs0 = np.nonzero(s.masks[0])
    box = np.array([[xs0.min(), ys0.min()], [xs0.max(), ys0.max()]], float)
    q = perturb(Sample("b", s.image, s.masks, [RaterAnnotation(box, box)],
                       spacing_mm=s.spacing_mm), kind)
    lo, hi = q.landmarks.min(0), q.landmarks.max(0)
    tol_m = 0.6 if kind == "half" else 1e-9
    np.testing.assert_allclose([xs.min(), ys.min()], lo, atol=tol_m)
    np.testing.assert_allclose([xs.max(), ys.max()], hi, atol=tol_m)


def test_spacing_side_and_schoettle_follow():
    s = blob_sample()
    half = perturb(s, "half")
    assert half.image.shape == (H // 2, W // 2)
    assert half.spacing_mm == pytest.approx((0.2 * H / (H // 2), 0.25 * W / (W // 2)))
    assert perturb(s, "rot90").spacing_mm == (0.25, 0.2)
    assert perturb(s, "hflip").meta["side"] == "right"
    assert perturb(s, "rot180").meta["side"] == "left"
    np.testing.assert_allclose(perturb(s, "hflip").schoettle_point, [W - 1 - 44.0, 25.5])
    np.testing.assert_allclose(perturb(s, "rot90").schoettle_point, [H - 1 - 25.5, 44.0])


@pytest.mark.parametrize("kind", ["invert", "noise", "blur", "jpeg", "lowcontrast"])
def test_photometric_keeps_the_truth_and_is_repeatable(kind):
    s = blob_sample()
    a, b = perturb(s, kind), perturb(s, kind)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.masks, s.masks)
    np.testing.assert_array_equal(a.landmarks, s.landmarks)
    assert a.image.dtype == np.float32 and a.image.min() >= 0 and a.image.max() <= 1
    assert not np.array_equal(a.image, s.image)
    if kind == "invert":
        np.testing.assert_allclose(a.image, 1 - s.image, atol=1e-6)


def test_a_crop_through_a_landmark_gives_none():
    s = blob_sample()
    low = Sample("l", s.image, s.masks, [RaterAnnotation(np.array([[10.0, 55.0], [20.0, 5.0]]),
                                                         s.cortex_points)])
    assert perturb(low, "cropbottom") is None  # p_blum at row 55 of 61, the cut at 37


def test_kinds_and_errors():
    assert set(LATERAL) | set(FOREIGN) == set(KINDS) and not set(LATERAL) & set(FOREIGN)
    assert parse_kinds("all") == list(KINDS)
    assert parse_kinds(" hflip, rot90 ") == ["hflip", "rot90"]
    with pytest.raises(ValueError, match="unknown perturbation"):
        parse_kinds("hflip,sideways")
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(blob_sample(), "sideways")


def row(err: float, flagged: bool, unit: str = "mm") -> dict:
    return {"schoettle": err, "needs_review": flagged, "iou_femur": 0.9, "unit": unit}


def test_unflagged_wrong_plan_is_unsafe():
    ok = summarise("hflip", [row(2.0, False), row(40.0, True), row(9.9, False)], 0, 10.0)
    assert ok["unsafe"] == 0 and ok["verdict"] == "ok" and ok["flagged"] == 1
    assert ok["unflagged_max"] == pytest.approx(9.9) and ok["median"] == pytest.approx(9.9)
    bad = summarise("vflip", [row(69.4, False), row(50.0, True), row(math.nan, False)], 1, 10.0)
    assert bad["unsafe"] == 2 and bad["verdict"].startswith("UNSAFE") and bad["expected"] == "flag"
    px = summarise("half", [row(25.0, False, "px")], 0, 10.0)  # pixels: no mm limit to apply
    assert px["unsafe"] == 0


def test_stress_end_to_end_with_the_oracle(tmp_path):
    """The oracle plans every geometric copy from its own transformed truth: right each time."""
    from planning.evaluate import main

    out = tmp_path / "ev"
    assert main(["--oracle", "--n-phantoms", "2", "--phantom-max-side", "300", "--n-boot", "50",
                 "--tta", "0", "--perturb", "hflip,half,rot90", "--out", str(out)]) == 0
    with open(out / "stress.csv") as fh:
        rows = {r["perturbation"]: r for r in csv.DictReader(fh)}
    assert list(rows) == ["none", "hflip", "half", "rot90"]
    for kind in ("none", "hflip", "half", "rot90"):
        assert float(rows[kind]["median"]) < 2.0, (kind, rows[kind])
    assert "| rot90 | flag |" in (out / "stress.md").read_text()
