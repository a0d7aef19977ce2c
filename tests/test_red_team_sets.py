"""benchmarks/red_team_sets.py: the red-team variants are written as a dataset, and the truth
moves with the pixels: a dot drawn at a landmark and warped with the image lands where the
point mapping puts the landmark (cv2's image warp against the script's point formulas)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from benchmark_scripts import load_benchmark

from datamodules.dataset_io import image_files, read_sample
from datamodules.phantoms import PhantomConfig, generate_phantom


@pytest.fixture(scope="module")
def rt():
    return load_benchmark("red_team_sets")


@pytest.fixture(scope="module")
def sample():
    return generate_phantom(7, PhantomConfig(min_side=300, max_side=420))


def test_writes_every_kind_as_a_dataset(rt, tmp_path, capsys):
    from datamodules.dataset_io import write_sample

    src = tmp_path / "src"
    for seed in (3, 4):
        write_sample(src, generate_phantom(seed, PhantomConfig(min_side=300, max_side=420)))
    assert rt.main([str(src), str(tmp_path / "out")]) == 0
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["written"]
    assert all(counts[k] == 8 for k in rt.BLANKS)
    assert all(counts.get(k, 0) >= 2 for k in rt.KINDS if k not in rt.BLANKS)
    files = image_files(tmp_path / "out")
    assert len(files) == sum(counts.values())
    one = read_sample(tmp_path / "out", sorted(files)[0], files)
    assert one.meta["perturbation"]["kind"] in rt.KINDS and one.schoettle_point is not None


@pytest.mark.parametrize("kind", ["keystone", "shear", "barrel"])
def test_the_truth_moves_with_the_pixels(rt, sample, kind):
    """A Gaussian dot (sigma 1.5 px) at p_tmc, warped as the image is: its centroid lies within
    0.25 px of where the variant's p_tmc was mapped."""
    h, w = sample.shape
    p = np.asarray(sample.annotations[0].landmarks[rt.TMC], float)
    yy, xx = np.mgrid[0:h, 0:w]
    dot = np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2) / (2 * 1.5**2)).astype(np.float32)
    warp, points, _ = rt.WARPS[kind](sample, rt.rng_for(sample.id, kind))
    img = warp(dot, False)
    q = points(p)[0]
    win = (np.abs(xx - q[0]) < 8) & (np.abs(yy - q[1]) < 8)
    wts = img * win
    centroid = np.array([(wts * xx).sum(), (wts * yy).sum()]) / wts.sum()
    assert np.hypot(*(centroid - q)) < 0.25, (kind, centroid, q)


def _axes(sample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel offsets from the truth point, anterior normal and distal direction of the truth
    cortex line, recomputed here: the line by numpy's SVD, "anterior" as towards the femur's
    pixels, "distal" as away from the femur's median pixel (the shaft: proximal)."""
    cortex = np.asarray(sample.annotations[0].cortex_points, float)
    centre = cortex.mean(axis=0)
    direction = np.linalg.svd(cortex - centre)[2][0]
    normal = np.array([-direction[1], direction[0]])
    ys, xs = np.nonzero(sample.masks[0])
    normal *= np.sign(((np.column_stack([xs, ys]) - centre) @ normal).mean())  # anterior
    point = np.asarray(sample.schoettle_point, float)
    femur_median = np.median(np.column_stack([xs, ys]), axis=0)
    direction *= -np.sign((femur_median - point) @ direction)  # distal: away from the shaft
    h, w = sample.shape
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx, yy], -1) - point, normal, direction


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_shutter_blanks_the_half_plane_behind_the_point(rt, sample, fill):
    """Every shutter variant sets to ``fill`` (black, or white for ``white``) exactly the pixels
    more than ``behind_mm`` behind the truth Schoettle point across a line at ``angle_deg`` to
    the cortex line; truth unchanged."""
    off, normal, _ = _axes(sample)
    mmpp = float(np.mean(sample.spacing_mm))
    for k in range(len(rt.SHUTTERS)):
        img, params = rt.blanked(sample, "white" if fill else "shutter", k)
        t = np.radians(params["angle_deg"])
        n = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) @ normal
        behind = off @ n < -params["behind_mm"] / mmpp
        changed = img != sample.image
        assert np.array_equal(changed, behind & (sample.image != fill))
        assert np.all(img[behind] == fill) and behind.mean() > 0.05


def test_corner_blanks_behind_and_distal_to_the_point(rt, sample):
    """Each corner variant fills the union of the half-plane ``behind_mm`` behind the point and
    the one ``distal_mm`` distal to it along the cortex line (an L-shaped edge whose corner lies
    behind and distal to the point), black then white; the point itself stays exposed."""
    off, normal, distal = _axes(sample)
    mmpp = float(np.mean(sample.spacing_mm))
    fills = []
    for k in range(len(rt.CORNERS)):
        img, params = rt.corner(sample, k)
        blank = (off @ normal < -params["behind_mm"] / mmpp) | (
            off @ distal > params["distal_mm"] / mmpp)
        assert np.array_equal(img != sample.image, blank & (sample.image != params["fill"]))
        assert np.all(img[blank] == params["fill"])
        p = np.round(rt.truth_point(sample)).astype(int)
        assert img[p[1], p[0]] == sample.image[p[1], p[0]]
        # both arms of the L are there: blank pixels in front of the point and proximal to it
        assert np.any(blank & (off @ normal > 0)) and np.any(blank & (off @ distal < 0))
        fills.append(params["fill"])
    assert sorted(set(fills)) == [0.0, 1.0]


@pytest.mark.parametrize("kind", ["shutter", "white", "corner", "bite"])
def test_shutter_and_bite_keep_the_truth(rt, sample, kind):
    """Only the image changes: masks, annotations and the Schoettle point are the source's."""
    for v in rt.variants(sample, kind):
        assert np.array_equal(v.masks, sample.masks)
        for a, b in zip(v.annotations, sample.annotations, strict=True):
            assert np.array_equal(a.landmarks, b.landmarks)
            assert np.array_equal(a.cortex_points, b.cortex_points)
        np.testing.assert_array_equal(v.schoettle_point, rt.truth_point(sample))
        assert not np.array_equal(v.image, sample.image)


def test_bite_fills_at_p_tmc(rt, sample):
    img, params = rt.bite(sample, rt.rng_for(sample.id, "bite"))
    cx, cy = np.round(params["centre_xy"]).astype(int)
    assert abs(img[cy, cx] - params["level"]) < abs(sample.image[cy, cx] - params["level"]) + 0.05
    assert min(params["radii_mm"]) >= 6 and max(params["radii_mm"]) <= 15


def test_a_broken_image_is_one_line_naming_it(rt, tmp_path, capsys):
    from datamodules.dataset_io import write_sample

    src = tmp_path / "src"
    write_sample(src, generate_phantom(3, PhantomConfig(min_side=300, max_side=420)))
    bad = next((src / "images").iterdir())
    bad.write_bytes(b"not a png" * 100)
    assert rt.main([str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err


def test_bilateral_film_keeps_the_knee_and_moves_its_truth(rt, sample):
    """Both variants: the knee's own pixels and masks sit unchanged at ``knee_x``, its truth
    points moved by exactly that; the other knee, mirrored and scaled to the same height (cv2
    area resize here), fills the other side; the gap between is black."""
    other = generate_phantom(8, PhantomConfig(min_side=300, max_side=420))
    h, w = sample.shape
    pw = round(other.shape[1] * h / other.shape[0])
    mirrored = cv2.resize(other.image, (pw, h), interpolation=cv2.INTER_AREA)[:, ::-1]
    got = list(rt.variants(sample, "bilateral", other))
    assert len(got) == 2 and not list(rt.variants(sample, "bilateral", None))
    for k, v in enumerate(got):
        dx = v.meta["perturbation"]["knee_x"]
        assert dx == (0 if k == 0 else pw + round(0.02 * w))
        assert v.shape == (h, w + round(0.02 * w) + pw)
        np.testing.assert_array_equal(v.image[:, dx : dx + w], sample.image)
        np.testing.assert_array_equal(v.masks[:, :, dx : dx + w], sample.masks)
        assert v.masks.sum() == sample.masks.sum()
        px = w + round(0.02 * w) if k == 0 else 0
        np.testing.assert_allclose(v.image[:, px : px + pw], mirrored, atol=1e-6)
        gap = slice(w, w + round(0.02 * w)) if k == 0 else slice(pw, dx)
        assert np.all(v.image[:, gap] == 0)
        assert v.image.dtype == np.float32
        np.testing.assert_allclose(v.annotations[0].landmarks,
                                   sample.annotations[0].landmarks + [dx, 0])
        np.testing.assert_allclose(v.annotations[0].cortex_points,
                                   sample.annotations[0].cortex_points + [dx, 0])
        np.testing.assert_allclose(v.schoettle_point, rt.truth_point(sample) + [dx, 0])
