"""Augmentation + pad/resize: keypoints vs hand-computed positions and vs the warped image."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from datamodules.datasets import TargetConfig, make_item
from datamodules.sample import RaterAnnotation, Sample
from datamodules.transforms import AugmentConfig, SampleTransform, inside_image

H, W, S = 90, 130, 64
ONLY = {"p_rotate": 0.0, "p_scale": 0.0, "p_hflip": 0.0, "p_contrast": 0.0, "p_style": 0.0}


def blob_image(points: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    ys, xs = np.mgrid[:H, :W]
    img = np.zeros((H, W))
    for x, y in points:
        img = np.maximum(img, np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)))
    return img.astype(np.float32)


def centroid(img: np.ndarray, near: np.ndarray, radius: float) -> np.ndarray:
    """Intensity-weighted (x, y) centroid of ``img`` within ``radius`` of ``near``."""
    ys, xs = np.mgrid[: img.shape[0], : img.shape[1]]
    win = (xs - near[0]) ** 2 + (ys - near[1]) ** 2 <= radius**2
    w = np.where(win, img, 0.0)
    return np.array([(xs * w).sum(), (ys * w).sum()]) / w.sum()


def make_sample(landmarks: np.ndarray, cortex: np.ndarray, image: np.ndarray | None = None,
                disk_radius: float = 6.0) -> Sample:
    """Masks: one disk per keypoint (landmarks then cortex points), bone channel = point index."""
    pts = np.concatenate([landmarks, cortex])
    ys, xs = np.mgrid[:H, :W]
    masks = np.zeros((4, H, W), dtype=np.uint8)
    for c, (x, y) in enumerate(pts[:4]):
        masks[c] = (xs - x) ** 2 + (ys - y) ** 2 <= disk_radius**2
    img = blob_image(pts) if image is None else image
    return Sample("s", img, masks, [RaterAnnotation(landmarks, cortex)], (0.2, 0.25))


def hand_augmented(points: np.ndarray, applied: list, shape=(H, W)) -> np.ndarray:
    """Apply the recorded flip / affine parameters with our own formulas (pixel centres on
    integers, centre ((W-1)/2, (H-1)/2), positive angle counter-clockwise on screen)."""
    h, w = shape
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    out = np.asarray(points, dtype=np.float64).copy()
    for name, params in applied:
        if name == "HorizontalFlip":
            out[:, 0] = (w - 1) - out[:, 0]
        elif name == "Affine":
            t = math.radians(params["rotate"])
            rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
            zoom = np.array([params["scale"]["x"], params["scale"]["y"]])
            out = c + ((out - c) @ rot.T) * zoom
    return out


# well apart (blobs do not touch) and near enough to the centre to stay inside when augmented
LMS = np.array([[40.0, 30.0], [90.0, 58.0]])
CORTEX = np.array([[86.0, 26.0], [42.0, 62.0]])


def test_no_augmentation_round_trip_and_image_alignment():
    sample = make_sample(LMS, CORTEX)
    view = SampleTransform(S)(sample)
    assert view.image.shape == (S, S) and view.masks.shape == (4, S, S)
    assert view.frame.pad_top == 20 and view.frame.pad_left == 0
    back = view.frame.to_original(view.landmarks)
    np.testing.assert_allclose(back, LMS, atol=1e-9)
    np.testing.assert_allclose(view.frame.to_original(view.cortex_points), CORTEX, atol=1e-9)
    # the network-frame keypoint sits on its blob in the resized image
    for p in np.concatenate([view.landmarks, view.cortex_points]):
        assert np.linalg.norm(centroid(view.image, p, 8.0) - p) < 0.05
    assert view.landmark_visible.all()


@pytest.mark.parametrize(
    "cfg",
    [
        AugmentConfig(**{**ONLY, "p_hflip": 1.0}),
        AugmentConfig(**{**ONLY, "p_rotate": 1.0, "rotate_deg": 30.0}),
        AugmentConfig(**{**ONLY, "p_scale": 1.0, "scale": (0.8, 1.25)}),
        AugmentConfig(**{**ONLY, "p_hflip": 1.0, "p_rotate": 1.0, "p_scale": 1.0,
                         "rotate_deg": 30.0, "scale": (0.8, 1.25)}),
    ],
    ids=["flip", "rotate", "scale", "flip+rotate+scale"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_augmented_keypoints_match_hand_computation_and_invert(cfg, seed):
    sample = make_sample(LMS, CORTEX)
    tf = SampleTransform(S, cfg, seed=seed)
    view = tf(sample)
    names = [n for n, _ in tf.last_applied]
    assert ("HorizontalFlip" in names) == (cfg.p_hflip == 1.0)
    expected = hand_augmented(np.concatenate([LMS, CORTEX]), tf.last_applied)
    got = view.frame.to_original(np.concatenate([view.landmarks, view.cortex_points]))
    np.testing.assert_allclose(got, expected, atol=0.5)
    assert np.abs(got - expected).max() < 1e-3  # in fact exact up to float32
    # and the keypoints sit on their blobs in the warped image (original px; a half-pixel
    # convention error would show as >= 0.5) and in the resized one (network px, 0.25 then)
    for p in np.concatenate([view.landmarks, view.cortex_points]):
        assert np.linalg.norm(centroid(view.image, p, 8.0) - p) < 0.05
    warped, _, kps = tf.augment_arrays(sample.image, sample.masks, np.concatenate([LMS, CORTEX]))
    for p in kps:
        assert np.linalg.norm(centroid(warped, p, 12.0) - p) < 0.05


def test_flip_is_w_minus_1_minus_x_and_mirrors_the_image():
    sample = make_sample(LMS, CORTEX)
    tf = SampleTransform(S, AugmentConfig(**{**ONLY, "p_hflip": 1.0}))
    img, masks, kps = tf.augment_arrays(sample.image, sample.masks, LMS)
    np.testing.assert_array_equal(img, sample.image[:, ::-1])
    np.testing.assert_array_equal(masks, sample.masks[:, :, ::-1])
    np.testing.assert_allclose(kps, np.column_stack([W - 1 - LMS[:, 0], LMS[:, 1]]))


@pytest.mark.parametrize("seed", range(8))
def test_masks_and_keypoints_stay_aligned_under_every_augmentation(seed):
    cfg = AugmentConfig(rotate_deg=30.0, scale=(0.8, 1.2), p_rotate=1.0, p_scale=1.0,
                        p_hflip=0.5, p_contrast=1.0)
    sample = make_sample(LMS, CORTEX, disk_radius=7.0)
    tf = SampleTransform(S, cfg, seed=seed)
    view = tf(sample)
    pts = np.concatenate([view.landmarks, view.cortex_points])
    for c, p in enumerate(pts):
        col, row = int(round(p[0])), int(round(p[1]))
        assert view.masks[c, row, col] == 1, f"keypoint {c} left its mask"
        ys, xs = np.nonzero(view.masks[c])
        assert np.hypot(xs.mean() - p[0], ys.mean() - p[1]) < 0.75


def test_keypoint_pushed_out_is_flagged_not_moved_and_gets_zero_heatmap():
    lms = np.array([[125.0, 45.0], [60.0, 45.0]])  # the first one leaves the image when zoomed
    sample = make_sample(lms, CORTEX)
    tf = SampleTransform(S, AugmentConfig(**{**ONLY, "p_scale": 1.0, "scale": (1.5, 1.5)}))
    item = make_item(sample, tf, TargetConfig(sigma=2.0))
    cx = (W - 1) / 2
    expected_x = cx + 1.5 * (125.0 - cx)  # 155.25 > W - 0.5
    assert item["lm_visible"].tolist() == [False, True]
    frame = tf(sample).frame
    np.testing.assert_allclose(frame.to_original(item["landmarks"].numpy().astype(float))[0],
                               [expected_x, (H - 1) / 2 + 1.5 * (45.0 - (H - 1) / 2)], atol=1e-3)
    assert not item["lm"][0].any() and item["lm"][1].max() > 0.9
    assert item["cortex_points"].shape == (2, 2)
    # spacing follows the zoom: 1.5x magnified image has 1/1.5 the mm per pixel
    np.testing.assert_allclose(item["spacing"].numpy(), [0.2 / 1.5, 0.25 / 1.5], rtol=1e-6)


def test_inside_image_uses_pixel_edges():
    pts = np.array([[-0.5, 0.0], [-0.51, 0.0], [W - 0.5, H - 0.5], [W - 0.49, 0.0], [np.nan, 1]])
    assert inside_image(pts, (H, W)).tolist() == [True, False, True, False, False]


def test_contrast_is_a_linear_gain():
    """albumentations 2.0.8 multiplies by the contrast factor (about 0, not about the mean)."""
    rng = np.random.default_rng(0)
    img = rng.uniform(0.3, 0.7, (H, W)).astype(np.float32)
    masks = np.zeros((4, H, W), np.uint8)
    tf = SampleTransform(S, AugmentConfig(**{**ONLY, "p_contrast": 1.0, "contrast": (0.6, 1.4)}))
    out, _, kps = tf.augment_arrays(img, masks, LMS)
    params = dict(tf.last_applied)["RandomBrightnessContrast"]
    alpha = params["alpha"]
    assert 0.6 <= alpha <= 1.4 and params["beta"] == 0.0
    expected = np.clip(img * alpha, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(kps, LMS)


def test_augment_config_from_any():
    assert AugmentConfig.from_any(None).enabled is False
    assert AugmentConfig.from_any(True) == AugmentConfig()
    cfg = AugmentConfig.from_any({"rotate_deg": 5, "scale": [0.9, 1.1]})
    assert cfg.rotate_deg == 5 and cfg.scale == (0.9, 1.1) and cfg.p_hflip == 0.5
    with pytest.raises(ValueError, match="rotation"):
        AugmentConfig.from_any({"rotation": 5})


@pytest.mark.parametrize("seed", range(6))
def test_style_changes_the_image_only(seed):
    """The photometric style steps leave masks and keypoints exactly as they were, keep the
    image finite in [0, 1] and are drawn from ``style_steps()``, two at a time."""
    from datamodules.transforms import style_steps

    style_names = {type(t).__name__ for t in style_steps()}
    assert len(style_names) == 8

    sample = make_sample(LMS, CORTEX, disk_radius=7.0)
    tf = SampleTransform(S, AugmentConfig(**{**ONLY, "p_style": 1.0}), seed=seed)
    img, masks, kps = tf.augment_arrays(sample.image, sample.masks, LMS)
    np.testing.assert_array_equal(masks, sample.masks)
    np.testing.assert_array_equal(kps, LMS)
    assert img.dtype == np.float32 and np.isfinite(img).all()
    assert img.min() >= 0.0 and img.max() <= 1.0
    assert not np.array_equal(img, sample.image)
    names = [n for n, _ in tf.last_applied]
    assert len([n for n in names if n in style_names]) == 2, names


def test_paper_preset_has_no_style_changes():
    from pathlib import Path

    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "paper.yaml")
                         .read_text())  # fmt: skip
    assert AugmentConfig.from_any(cfg["data"]["augment"]).p_style == 0.0
    assert AugmentConfig().p_style > 0  # the other presets randomise the look


@pytest.mark.parametrize(
    ("value", "expected"),
    [({"p_style": 2}, "p_style=2 is a probability"), ({"p_hflip": -0.1}, "p_hflip=-0.1"),
     ({"rotate_deg": -5}, "rotate_deg=-5 must be in [0, 180]"),
     ({"scale": [1.2, 0.8]}, "scale=[1.2, 0.8] must be two positive numbers, low <= high"),
     ({"contrast": [0, 1]}, "contrast=[0.0, 1.0] must be two positive numbers"),
     ({"scale": 3}, "scale=3 must be [low, high]"), ({"bogus": 1}, "unknown option(s)")],
)
def test_augment_values_out_of_range_are_refused(value, expected):
    """Albumentations took a reversed zoom range or a probability of 2 silently."""
    with pytest.raises(ValueError, match=re.escape(expected)):
        AugmentConfig.from_any(value)


def test_train_refuses_a_bad_augment_value_before_the_run(tmp_path, capsys):
    from lightning_modules import train

    with pytest.raises(SystemExit) as stop:
        tiny = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
        train.main(["--config", tiny, "--run.root", str(tmp_path / "r"),
                    "--data.augment={p_style: 2}"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train: error:") and "data.augment p_style=2" in err
    assert not (tmp_path / "r").exists()


def test_a_large_sample_is_shrunk_before_augmenting_to_the_same_network_view(monkeypatch):
    """Red-team round 7: albumentations worked on a 36 MP image at full size (13 s, 1.2 GB an
    item). Above max(1536, 4 x size) px a sample is shrunk first; without augmentation the
    network sees what it saw before: the same landmarks (to 0.05 px), image and masks."""
    import cv2

    import datamodules.transforms as transforms
    from datamodules.phantoms import PhantomConfig, generate_phantom

    small = generate_phantom(5, PhantomConfig(min_side=300, max_side=400))
    k = 6.0  # a ~2000 x 2400 px sample: nearest-neighbour copies, points scaled alike
    h, w = small.image.shape
    size = (round(w * k), round(h * k))
    big = Sample(small.id, cv2.resize(small.image, size, interpolation=cv2.INTER_LINEAR),
                 np.stack([cv2.resize(m, size, interpolation=cv2.INTER_NEAREST)
                           for m in small.masks]),
                 [RaterAnnotation((small.landmarks + 0.5) * k - 0.5,
                                  (small.cortex_points + 0.5) * k - 0.5, None)],
                 small.spacing_mm, "construction")
    assert max(big.image.shape) > 1536
    shrunk = SampleTransform(256)(big)
    monkeypatch.setattr(transforms, "MIN_WORK_SIDE", 10**6)
    whole = SampleTransform(256)(big)
    np.testing.assert_allclose(shrunk.landmarks, whole.landmarks, atol=0.05)
    np.testing.assert_allclose(shrunk.cortex_points, whole.cortex_points, atol=0.05)
    assert float(np.abs(shrunk.image - whole.image).mean()) < 0.005
    for a, b in zip(shrunk.masks.astype(bool), whole.masks.astype(bool), strict=True):
        if b.any():
            assert (a & b).sum() / (a | b).sum() > 0.97


def test_shrink_to_keeps_pixel_centres():
    from datamodules.transforms import shrink_to

    image = np.zeros((40, 20), np.float32)
    image[10:14, 6:8] = 1.0  # a 2 x 4 px block, centre (6.5, 11.5)
    masks = (image[None] > 0).astype(np.uint8)
    out, out_masks, pts = shrink_to(20, image, masks, np.array([[6.5, 11.5]]))
    assert out.shape == (20, 10) and out_masks.shape == (1, 20, 10)
    np.testing.assert_allclose(pts, [[3.0, 5.5]])  # (x + 0.5) / 2 - 0.5
    ys, xs = np.nonzero(out > 0)
    np.testing.assert_allclose([np.average(xs, weights=out[ys, xs]),
                                np.average(ys, weights=out[ys, xs])], [3.0, 5.5])
    same = shrink_to(40, image, masks, np.array([[6.5, 11.5]]))
    assert same[0] is image
    as_255 = shrink_to(20, image, masks * np.uint8(255), np.array([[6.5, 11.5]]))[1]
    np.testing.assert_array_equal(as_255, out_masks)  # any nonzero value is bone
