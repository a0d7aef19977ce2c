"""Tests of the synthetic knee phantoms: determinism, sizes, ground-truth geometry checked
independently (numpy / OpenCV on the masks), the Schoettle construction, disk round trip and
additive overlap intensities."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from datamodules.annotations import read_annotation
from datamodules.dataset_io import write_sample
from datamodules.phantoms import PhantomConfig, generate_phantom, sample_seed
from datamodules.phantoms.__main__ import main as phantoms_main

SMALL = PhantomConfig(min_side=160, max_side=256)
SEEDS = range(20)


@pytest.fixture(scope="module")
def small_samples():
    return [generate_phantom(sample_seed(3, i), SMALL) for i in SEEDS]


def _fit_line(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Total-least-squares line (point, unit direction) through points, via SVD."""
    c = points.mean(0)
    _, _, vt = np.linalg.svd(points - c)
    return c, vt[0]


def _signed_dist(p: np.ndarray, c: np.ndarray, u: np.ndarray) -> float:
    return float(u[0] * (p[1] - c[1]) - u[1] * (p[0] - c[0]))


def _mask_at(mask: np.ndarray, p: np.ndarray) -> int:
    return int(mask[int(round(p[1])), int(round(p[0]))])


def test_same_seed_byte_identical_and_seeds_differ():
    for cfg in (SMALL, None):
        a, b = generate_phantom(11, cfg), generate_phantom(11, cfg)
        assert a.image.tobytes() == b.image.tobytes()
        assert a.masks.tobytes() == b.masks.tobytes()
        assert np.array_equal(a.landmarks, b.landmarks)
        assert np.array_equal(a.cortex_points, b.cortex_points)
        assert a.meta == b.meta
        c = generate_phantom(12, cfg)
        assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)
        assert not np.allclose(a.landmarks, c.landmarks)


def test_default_sizes_spacing_and_types():
    for seed in range(6):
        s = generate_phantom(seed)
        h, w = s.shape
        assert 512 <= h <= 1500 and 512 <= w <= 1500 and h != w
        assert 0.1 <= s.spacing_mm[0] <= 0.2 and s.spacing_mm[0] == s.spacing_mm[1]
        assert s.spacing_source == "phantom"
        assert s.image.dtype == np.float32 and s.image.min() >= 0 and s.image.max() <= 1
        assert s.masks.shape == (4, h, w) and s.masks.dtype == np.uint8
        assert set(np.unique(s.masks)) <= {0, 1}
        assert s.cortex_points.shape[0] >= 2 and s.cortex_points.shape[1] == 2
        assert s.meta["side"] in ("left", "right")


def test_small_config_sizes(small_samples):
    for s in small_samples:
        h, w = s.shape
        assert 160 <= h <= 256 and 160 <= w <= 256 and h != w
        # anatomy still fits: the femoral field of view is >= 135 mm tall
        assert h * s.spacing_mm[0] >= 130.0


def test_masks_overlap_where_bones_overlap(small_samples):
    fib_tib = sum(bool((s.masks[2] & s.masks[3]).any()) for s in small_samples)
    pat_fem = sum(bool((s.masks[0] & s.masks[1]).any()) for s in small_samples)
    assert fib_tib >= 15, fib_tib
    assert pat_fem >= 15, pat_fem
    for s in small_samples:  # every bone is visible in every sample
        assert all(s.masks[b].sum() > 0 for b in (0, 2)), s.id


def test_landmarks_on_femur_and_relative_to_cortex_line(small_samples):
    for s in small_samples:
        mm = s.spacing_mm[0]
        femur = s.masks[0]
        p_blum, p_tmc = s.landmarks
        inside = cv2.distanceTransform(femur, cv2.DIST_L2, 5)
        outside = cv2.distanceTransform(1 - femur, cv2.DIST_L2, 5)
        assert (
            _mask_at(femur, p_blum) == 1
            or outside[int(round(p_blum[1])), int(round(p_blum[0]))] <= 1.0
        )
        r, c = int(round(p_tmc[1])), int(round(p_tmc[0]))
        # on/near the femur outline (the lateral condyle may project up to ~3.5 mm behind it)
        assert max(inside[r, c], outside[r, c]) * mm <= 4.0 + 1.5 * mm, s.id
        lc, lu = _fit_line(s.cortex_points)
        d_blum = _signed_dist(p_blum, lc, lu)
        assert abs(_signed_dist(p_tmc, lc, lu)) * mm < 2.0
        assert abs(d_blum) * mm > 2.0
        # anterior = the patella's side of the cortex line
        pat = np.argwhere(s.masks[1])[:, ::-1].mean(0) if s.masks[1].any() else None
        if pat is not None:
            assert np.sign(_signed_dist(pat, lc, lu)) == np.sign(d_blum), s.id


def test_p_tmc_is_where_the_outline_visibly_leaves_lm1(small_samples):
    """p_tmc is the point of the condyle's outline ``TMC_DEPARTURE_MM`` behind LM1 (the side
    away from p_blum), distal of where the outline leaves LM1 along its tangent: a point the
    image shows, not the tangent point nothing marks (README, "Where p_tmc sits")."""
    from datamodules.phantoms.anatomy import TMC_DEPARTURE_MM

    for s in small_samples:
        mm = s.spacing_mm[0]
        p_blum, p_tmc = s.landmarks
        lc, lu = _fit_line(s.cortex_points)
        d_tmc, d_blum = _signed_dist(p_tmc, lc, lu), _signed_dist(p_blum, lc, lu)
        assert np.sign(d_tmc) == -np.sign(d_blum), s.id
        assert abs(d_tmc) * mm == pytest.approx(TMC_DEPARTURE_MM, abs=1e-6), s.id
        distal = s.cortex_points[-1] - s.cortex_points[0]
        assert float(np.dot(p_tmc - s.cortex_points[-1], distal)) > 0, s.id  # below the line's end
        # p_blum stays 4-10 mm (x the knee's scale) distal of it: LM2 and LM3 as far apart as
        # on the other families (p_tmc moved alone left 15 % under 2 mm apart, 2 % crossed)
        along = float(np.dot(p_blum - p_tmc, distal / np.linalg.norm(distal))) * mm
        assert 4.0 * s.meta["scale"] - 1e-6 <= along <= 10.0 * s.meta["scale"] + 1e-6, (s.id, along)


def test_visible_departure_of_a_parabola():
    """An outline leaving x = 0 along its tangent as x = -c y^2 (y < 0, distal) lies d behind it
    at y = -sqrt(d / c); a corner (the outline turning away at once) gives its first point."""
    from datamodules.phantoms.anatomy import visible_departure

    c = 0.08
    y = np.concatenate([np.linspace(60.0, 0.0, 61), -np.linspace(0.0, 20.0, 2001)[1:]])
    x = np.where(y < 0, -c * y**2, 0.0)
    for d in (0.25, 0.5, 1.0):
        got = visible_departure(np.stack([x, y], 1), d)
        np.testing.assert_allclose(got, [-d, -np.sqrt(d / c)], atol=2e-3)
    corner = np.array([[0.0, 50.0], [0.0, 0.0], [-3.0, -1.0], [-6.0, -5.0]])
    np.testing.assert_allclose(visible_departure(corner, 0.5), [-0.5, -1.0 / 6.0], atol=1e-9)


def test_cortex_points_lie_on_posterior_femoral_cortex():
    for seed in range(4):
        s = generate_phantom(seed, PhantomConfig(min_side=700, max_side=900))
        mm = s.spacing_mm[0]
        lc, lu = _fit_line(s.cortex_points)
        resid = [abs(_signed_dist(p, lc, lu)) for p in s.cortex_points]
        assert max(resid) < 1e-6  # exactly collinear
        n = np.array([-lu[1], lu[0]])  # unit normal; flipped to point anterior (p_blum's side)
        if np.dot(n, s.landmarks[0] - lc) < 0:
            n = -n
        prox, dist = s.cortex_points[0], s.cortex_points[-1]
        assert np.linalg.norm(prox - s.landmarks[1]) > np.linalg.norm(dist - s.landmarks[1])
        for p in s.cortex_points[:-1]:
            ant = p + n * 1.5 / mm
            post = p - n * 1.5 / mm
            assert _mask_at(s.masks[0], ant) == 1, (s.id, p)
            assert _mask_at(s.masks[0], post) == 0, (s.id, p)


def test_schoettle_point_satisfies_tangency(small_samples):
    for s in small_samples:
        p_blum, p_tmc = s.landmarks
        lc, lu = _fit_line(s.cortex_points)
        sp = s.schoettle_point
        d1 = abs(_signed_dist(sp, lc, lu))  # to LM1
        d2 = abs(float(np.dot(sp - p_tmc, lu)))  # to LM2 (perpendicular to LM1 through p_tmc)
        d3 = abs(float(np.dot(sp - p_blum, lu)))  # to LM3
        half = abs(float(np.dot(p_blum - p_tmc, lu))) / 2
        np.testing.assert_allclose([d1, d2, d3], [half, half, half], rtol=1e-6, atol=1e-6)
        assert np.sign(_signed_dist(sp, lc, lu)) == np.sign(_signed_dist(p_blum, lc, lu))
        assert s.meta["schoettle_radius_px"] == pytest.approx(half)


def test_disk_round_trip_of_spacing_and_truth(tmp_path):
    s = generate_phantom(5, SMALL, sample_id="phantom_00000")
    write_sample(tmp_path, s)
    ann = read_annotation(tmp_path / "annotations" / "phantom_00000.json")
    assert ann["spacing_mm"] == s.spacing_mm
    assert ann["side"] == s.meta["side"]
    np.testing.assert_array_equal(ann["raters"][0].landmarks, s.landmarks)
    np.testing.assert_array_equal(ann["raters"][0].cortex_points, s.cortex_points)
    np.testing.assert_array_equal(ann["schoettle_point"], s.schoettle_point)
    img = cv2.imread(str(tmp_path / "images" / "phantom_00000.png"), cv2.IMREAD_UNCHANGED)
    assert np.abs(img / 65535.0 - s.image).max() <= 0.5 / 65535 + 1e-7
    femur = cv2.imread(str(tmp_path / "masks" / "phantom_00000_femur.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(femur > 0, s.masks[0] > 0)


def test_cli_writes_numbered_samples_from_derived_seeds(tmp_path):
    phantoms_main(
        [
            "--out",
            str(tmp_path),
            "--n",
            "2",
            "--seed",
            "4",
            "--min-side",
            "160",
            "--max-side",
            "256",
        ]
    )
    ann = read_annotation(tmp_path / "annotations" / "phantom_00001.json")
    ref = generate_phantom(sample_seed(4, 1), SMALL)
    np.testing.assert_array_equal(ann["raters"][0].landmarks, ref.landmarks)
    assert ann["meta"]["seed"] == sample_seed(4, 1)


def test_calibration_sphere_is_a_bright_disc_of_30_mm():
    cfg = replace(PhantomConfig(min_side=400, max_side=600).clean(), p_sphere=1.0)
    found = 0
    for seed in range(6):
        s = generate_phantom(seed, cfg)
        if "sphere" not in s.meta:
            continue
        found += 1
        sph = s.meta["sphere"]
        assert sph["radius_px"] * s.spacing_mm[0] == pytest.approx(15.0)
        (cx, cy), r = sph["centre_px"], sph["radius_px"]
        yy, xx = np.mgrid[0 : s.shape[0], 0 : s.shape[1]]
        rr = np.hypot(xx - cx, yy - cy)
        disc = s.image[rr < 0.7 * r].mean()
        ring = s.image[(rr > 1.15 * r) & (rr < 1.5 * r)].mean()
        assert disc > 0.9 and disc > ring + 0.2, (s.id, disc, ring)
    assert found >= 3


def _region_means(img, a, b, mm):
    """Mean intensity of the overlap a&b and of a-only / b-only pixels within 8 mm of it,
    all eroded by 1 mm so that blur at the outlines does not mix regions."""
    k = np.ones((3, 3), np.uint8)
    it = max(1, int(round(1.0 / mm)))
    ov = cv2.erode(a & b, k, iterations=it)
    near = cv2.dilate(a & b, k, iterations=int(round(8.0 / mm))) > 0
    a_only = cv2.erode(a & (1 - b), k, iterations=it).astype(bool) & near
    b_only = cv2.erode(b & (1 - a), k, iterations=it).astype(bool) & near
    if ov.sum() < 20 or a_only.sum() < 20 or b_only.sum() < 20:
        return None
    return img[ov.astype(bool)].mean(), img[a_only].mean(), img[b_only].mean()


def test_overlap_regions_are_brighter_than_either_bone_alone():
    cfg = PhantomConfig(min_side=500, max_side=700).clean()
    checked = 0
    for seed in range(8):
        s = generate_phantom(seed, cfg)
        for a, b in ((2, 3), (0, 1)):
            r = _region_means(s.image, s.masks[a], s.masks[b], s.spacing_mm[0])
            if r is None:
                continue
            ov, a_only, b_only = r
            assert ov > a_only and ov > b_only, (s.id, a, b, r)
            checked += 1
    assert checked >= 10


def test_inside_convex_ignores_a_repeated_vertex():
    """A polygon with a vertex twice (a zero-length edge) is the same region: before, 0/0 made
    every point 'outside' (with a RuntimeWarning)."""
    import warnings

    from datamodules.phantoms.generate import _inside_convex

    square = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]])
    doubled = np.insert(square, 2, square[1], axis=0)
    pts = np.array([[5.0, 5.0], [0.5, 9.0], [11.0, 5.0], [-1.0, -1.0], [5.0, 0.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _inside_convex(doubled, pts, margin=1.0)
    np.testing.assert_array_equal(got, [True, False, False, False, False])
    np.testing.assert_array_equal(got, _inside_convex(square, pts, margin=1.0))


@pytest.mark.parametrize(
    "argv",
    [["--seed", "-1"], ["--min-side", "0"], ["--min-side", "500", "--max-side", "500"],
     ["--min-side", "900", "--max-side", "500"],
     ["--min-side", "1", "--max-side", "2"],  # was a traceback after writing the image
     ["--max-side", "100000"]],  # 10^10 pixels: over the readers' limit
)
def test_cli_bad_numbers_are_usage_errors(tmp_path, capsys, argv):
    """A negative seed or side limits the generator cannot honour: status 2 and one line that
    names the flag (before: a traceback from numpy or the layout)."""
    with pytest.raises(SystemExit) as exc:
        phantoms_main(["--out", str(tmp_path / "d"), "--n", "1", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("phantoms: error:") and argv[0] in err
    assert not (tmp_path / "d").exists()


def test_side_limits_are_refused_before_an_image_is_made(tmp_path, monkeypatch):
    """Sides the readers would refuse (under 32 px, over the pixel limit) are one ValueError from
    the config (overrides, a YAML file with the DataModule's sides) and from the generator."""
    with pytest.raises(ValueError, match="min_side 20 is below 32 px"):
        PhantomConfig().with_overrides({"min_side": 20, "max_side": 40})
    with pytest.raises(ValueError, match="max_side 7000 makes images of up to 49 megapixels"):
        PhantomConfig().with_overrides({"max_side": 7000})
    monkeypatch.setenv("KNEEPLAN_MAX_PIXELS", "50000000")  # the limit can be raised
    assert PhantomConfig().with_overrides({"max_side": 7000}).max_side == 7000
    monkeypatch.delenv("KNEEPLAN_MAX_PIXELS")
    yml = tmp_path / "p.yaml"
    yml.write_text("min_side: 2000\n")  # above the default max_side, below the caller's
    assert PhantomConfig.from_yaml(yml, max_side=2500).min_side == 2000
    with pytest.raises(ValueError, match=r"p\.yaml: PhantomConfig: need 0 < min_side < max_side"):
        PhantomConfig.from_yaml(yml)
    cfg = PhantomConfig()
    cfg.max_side = 100_000  # set directly, past the checks: the generator refuses it
    with pytest.raises(ValueError, match="max_side 100000"):
        generate_phantom(0, cfg)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [({"p_sphere": 2.0}, "p_sphere: 2.0 is a probability"),
     ({"p_metal": "often"}, "p_metal: 'often' is not a finite number"),
     ({"flexion_deg": [90, 0]}, "flexion_deg: range [90, 0]: low must be <= high"),  # traceback
     ({"photons": [-5, 10]}, "photons: range [-5, 10]: values must be positive"),  # traceback
     ({"spacing_mm": [0, 0.1]}, "spacing_mm: range [0, 0.1]: values must be positive"),
     ({"rotation_deg": 5}, "rotation_deg: 5 is not a range"),
     ({"sphere_diameter_mm": 0}, "sphere_diameter_mm: 0 must be positive")],
)
def test_overrides_that_cannot_drive_the_generator_are_refused(overrides, expected):
    """A phantom YAML's values: probabilities in [0, 1], ranges low <= high of finite numbers,
    positive quantities positive (some ran silently, others failed deep in the generator)."""
    with pytest.raises(ValueError, match=re.escape(expected)):
        PhantomConfig().with_overrides(overrides)


def test_overrides_within_range_and_every_shipped_config_are_accepted():
    PhantomConfig().with_overrides({"p_sphere": 1.0, "usm_gain_coarse": [-0.5, 0.0],
                                    "flexion_deg": [30, 30]})
    for path in sorted((Path(__file__).resolve().parents[1] / "configs" / "phantoms").glob(
            "*.yaml")):
        PhantomConfig.from_yaml(path)
