"""Augmentation (albumentations) and the pad-to-square + resize into the network frame.

Paper setup: rotation, scaling, horizontal flip and linear contrast scaling, each with p = 0.5,
applied to the image, the four bone masks and every keypoint (landmarks and cortex points)
together (beyond the paper, with ``p_style``: two photometric "style" changes, image only);
then centred zero-padding to a square and resizing to ``size``
(``geometry.frame.PadResize``, whose record maps predictions back to original pixels exactly).

Coordinate conventions: albumentations 2.0.8 puts pixel centres on integers like we do (its
rotation/scale centre is ((W-1)/2, (H-1)/2), its horizontal flip maps x -> W-1-x); the tests
check keypoints against the warped image. Rotation and scaling keep the image size (no
``fit_output``), uncovered corners are filled with 0 (like the padding). Keypoints pushed out of
the image are kept at their exact transformed position and flagged invisible (``*_visible``);
nothing is dropped or clamped. Linear contrast scaling is albumentations'
``RandomBrightnessContrast`` with brightness fixed to 0, which in 2.0.8 computes
x' = clip(c * x, 0, 1), a gain about 0 (its docstring claims scaling about the mean; the code and
our test say otherwise). The black background and padding stay black.

Note: with augmentation on, ``frame`` maps the network frame back to the AUGMENTED image, which
is the original image only when no augmentation is applied (validation, test, inference).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import cv2
import numpy as np

from datamodules.sample import Sample
from geometry.frame import PadResize


@dataclass
class AugmentConfig:
    """Ranges and probabilities of the training augmentation.

    Args:
        enabled: False turns every augmentation off.
        rotate_deg: rotation angle drawn uniformly from [-rotate_deg, rotate_deg] degrees
            (positive = counter-clockwise on screen).
        p_rotate: probability of rotating.
        scale: (min, max) isotropic zoom factor about the image centre. Default (0.7, 1.45),
            wider than the first (0.85, 1.15): a quick model trained with that one lost the
            femur on another renderer's tightly framed knees (femur IoU 0.27) and on our own
            phantoms cropped by 1.3x (0.89 -> 0.59); the wider range keeps the femur under
            such crops for every seed tried, its effect on landmark medians is mixed (README
            "Scale augmentation").
        p_scale: probability of scaling.
        p_hflip: probability of a horizontal flip.
        contrast: (min, max) contrast factor c in x' = clip(c * x, 0, 1).
        p_contrast: probability of contrast scaling.
        p_style: probability of two photometric "style" changes drawn from ``style_steps()``
            (gamma, CLAHE, blur, unsharp mask, noise, JPEG, downscaling, tone curve): what other
            detectors and processing chains do to the same anatomy. Not in the paper (0 in
            ``configs/paper.yaml``); on by default because a model must not learn one
            generator's look. Masks and keypoints are untouched.
    """

    enabled: bool = True
    rotate_deg: float = 15.0
    p_rotate: float = 0.5
    scale: tuple[float, float] = (0.7, 1.45)
    p_scale: float = 0.5
    p_hflip: float = 0.5
    contrast: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.5
    p_style: float = 0.5

    def __post_init__(self) -> None:
        """Probabilities in [0, 1], an angle in [0, 180], ranges of two positive finite
        numbers low <= high (albumentations would take some silently, e.g. a reversed range)."""
        for name in ("p_rotate", "p_scale", "p_hflip", "p_contrast", "p_style"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0.0 <= v <= 1.0):
                raise ValueError(f"augment {name}={v!r:.40} is a probability: give [0, 1]")
        if not (isinstance(self.rotate_deg, int | float) and 0.0 <= self.rotate_deg <= 180.0):
            raise ValueError(f"augment rotate_deg={self.rotate_deg!r:.40} must be in [0, 180] "
                             "(angles are drawn from [-rotate_deg, rotate_deg])")
        for name in ("scale", "contrast"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
                raise ValueError(f"augment {name}=[{lo}, {hi}] must be two positive numbers, "
                                 "low <= high")

    @classmethod
    def from_any(cls, value: AugmentConfig | dict[str, Any] | bool | None) -> AugmentConfig:
        """Build from a config dict (YAML), an instance, True (defaults) or None/False (off)."""
        if isinstance(value, cls):
            return value
        if value is None or value is False:
            return cls(enabled=False)
        if value is True:
            return cls()
        if not isinstance(value, dict):
            raise TypeError(f"augment must be a dict or AugmentConfig, got {type(value).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"augment has unknown option(s) {unknown}; known: {sorted(known)}")
        kwargs = dict(value)
        for key in ("scale", "contrast"):
            if key in kwargs:
                try:
                    lo, hi = (float(v) for v in kwargs[key])
                except (TypeError, ValueError):
                    raise ValueError(f"augment {key}={kwargs[key]!r:.40} must be [low, high]"
                                     ) from None
                kwargs[key] = (lo, hi)
        return cls(**kwargs)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for hyper-parameter logging)."""
        return asdict(self)


def style_steps() -> list[Any]:
    """Photometric transforms (albumentations, float32 in [0, 1] in and out) for ``p_style``:
    gamma, CLAHE, blur, unsharp mask, noise, JPEG, downscaling, tone curve, with ranges of
    what real CR/DR processing and storage do."""
    import albumentations as A

    return [
        A.RandomGamma(gamma_limit=(70, 150), p=1.0),
        A.CLAHE(clip_limit=(1.0, 3.0), tile_grid_size=(8, 8), p=1.0),
        A.GaussianBlur(blur_limit=(3, 7), sigma_limit=(0.3, 1.5), p=1.0),
        A.UnsharpMask(blur_limit=(3, 15), alpha=(0.2, 0.6), threshold=0, p=1.0),
        A.GaussNoise(std_range=(0.005, 0.03), p=1.0),
        A.ImageCompression(quality_range=(40, 95), p=1.0),
        A.Downscale(scale_range=(0.5, 0.9), p=1.0),
        A.RandomToneCurve(scale=0.2, p=1.0),
    ]


def build_augmentation(cfg: AugmentConfig, seed: int | None = None):
    """The albumentations pipeline for ``cfg`` (image + masks + 'xy' keypoints)."""
    import albumentations as A

    geometric = {
        "border_mode": cv2.BORDER_CONSTANT,
        "fill": 0,
        "fill_mask": 0,
        "interpolation": cv2.INTER_LINEAR,
        "mask_interpolation": cv2.INTER_NEAREST,
    }
    steps = [
        A.HorizontalFlip(p=cfg.p_hflip),
        A.Affine(rotate=(-cfg.rotate_deg, cfg.rotate_deg), p=cfg.p_rotate, **geometric),
        A.Affine(scale=tuple(cfg.scale), keep_ratio=True, p=cfg.p_scale, **geometric),
        A.RandomBrightnessContrast(
            brightness_limit=(0.0, 0.0),
            contrast_limit=(cfg.contrast[0] - 1.0, cfg.contrast[1] - 1.0),
            p=cfg.p_contrast,
        ),
    ]
    if cfg.p_style > 0:
        steps.append(A.SomeOf(style_steps(), n=2, p=cfg.p_style))
    return A.Compose(
        steps,
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
        seed=seed,
        strict=True,
        save_applied_params=True,
    )


def inside_image(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(N,) bool: points within the image area [-0.5, W-0.5] x [-0.5, H-0.5] (pixel edges)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    h, w = shape
    return (
        np.isfinite(pts).all(axis=1)
        & (pts[:, 0] >= -0.5) & (pts[:, 0] <= w - 0.5)
        & (pts[:, 1] >= -0.5) & (pts[:, 1] <= h - 0.5)
    )


@dataclass
class NetworkView:
    """One sample brought into the network frame.

    Args:
        image: (S, S) float32 in [0, 1].
        masks: (4, S, S) uint8 {0, 1}.
        landmarks: (2, 2) float64 (x, y), network frame (may lie outside when invisible).
        landmark_visible: (2,) bool, False when augmentation pushed the landmark out of the image.
        cortex_points: (K, 2) float64, network frame (never dropped, may lie outside).
        frame: the pad+resize record (network frame <-> augmented image).
    """

    image: np.ndarray
    masks: np.ndarray
    landmarks: np.ndarray
    landmark_visible: np.ndarray
    cortex_points: np.ndarray
    frame: PadResize


# A sample larger than this is shrunk before it is augmented: the network sees it at ``size``
# anyway, and albumentations worked at full size (a 36 MP image: 13 s and 1.2 GB an item;
# red-team round 7). Built-in phantoms (at most 1500 px) are never shrunk.
MIN_WORK_SIDE = 1536
WORK_SIDE_FACTOR = 4


def shrink_to(
    side: int, image: np.ndarray, masks: np.ndarray, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``image`` (H, W), ``masks`` (C, H, W) and (x, y) ``points`` shrunk (area-averaged; a
    mask pixel is bone where at least half of its area was) so the longer side is at most
    ``side``; as given when it already is. Points keep the pixel-centre convention of
    ``geometry.frame`` (``(x + 0.5) * s - 0.5``)."""
    h, w = image.shape[:2]
    if max(h, w) <= side:
        return image, masks, np.asarray(points, dtype=np.float64)
    new_w, new_h = max(1, round(w * side / max(h, w))), max(1, round(h * side / max(h, w)))
    small = cv2.resize(np.ascontiguousarray(image, dtype=np.float32), (new_w, new_h),
                       interpolation=cv2.INTER_AREA)
    small_masks = np.stack([  # uint8 0/255 through INTER_AREA: no float copy of a large mask
        cv2.resize((np.asarray(m) > 0).astype(np.uint8) * np.uint8(255), (new_w, new_h),
                   interpolation=cv2.INTER_AREA) >= 128 for m in masks]).astype(np.uint8)
    scale = np.array([new_w / w, new_h / h])
    return small, small_masks, (np.asarray(points, dtype=np.float64) + 0.5) * scale - 0.5


class SampleTransform:
    """Optional augmentation, then centred zero-padding to a square and resize to ``size``.

    Args:
        size: side S of the network input.
        augment: augmentation config; None or ``enabled=False`` for none (validation/test).
        seed: seed of the augmentation's own random state (see ``reseed``).

    Attributes:
        last_applied: (name, params) of each transform applied in the last call (albumentations'
            ``applied_transforms``: flip, angle, zoom, contrast factor); [] without augmentation.

    Example:
        >>> view = SampleTransform(256)(sample)      # sample.image (600, 800)
        >>> view.image.shape, view.masks.shape
        ((256, 256), (4, 256, 256))
    """

    def __init__(self, size: int = 256, augment: AugmentConfig | None = None, seed: int = 0):
        self.size = int(size)
        self.augment = augment if augment is not None and augment.enabled else None
        self._pipeline = build_augmentation(self.augment, seed) if self.augment else None
        self.last_applied: list[tuple[str, dict[str, Any]]] = []

    def reseed(self, seed: int) -> None:
        """Reset the augmentation's random state (``datamodules.seeding`` calls this per epoch)."""
        if self._pipeline is not None:
            self._pipeline.set_random_seed(int(seed))

    def augment_arrays(
        self, image: np.ndarray, masks: np.ndarray, keypoints: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Augment image (H, W), masks (4, H, W) and keypoints (N, 2) together (same size out)."""
        if self._pipeline is None:
            self.last_applied = []
            return image, masks, np.asarray(keypoints, dtype=np.float64)
        out = self._pipeline(
            image=np.ascontiguousarray(image, dtype=np.float32),
            masks=[np.ascontiguousarray(m, dtype=np.uint8) for m in masks],
            keypoints=np.asarray(keypoints, dtype=np.float32).reshape(-1, 2),
        )
        self.last_applied = list(out.get("applied_transforms", []))
        kps = np.asarray(out["keypoints"], dtype=np.float64).reshape(-1, 2)
        if len(kps) != len(keypoints):  # must never happen with remove_invisible=False
            raise RuntimeError(f"augmentation dropped keypoints: {len(keypoints)} -> {len(kps)}")
        return out["image"], np.stack([np.asarray(m) for m in out["masks"]]), kps

    def __call__(self, sample: Sample) -> NetworkView:
        """Transform one sample into the network frame."""
        landmarks = np.asarray(sample.landmarks, dtype=np.float64)
        cortex = np.asarray(sample.cortex_points, dtype=np.float64)
        image, masks, kps = shrink_to(max(MIN_WORK_SIDE, WORK_SIDE_FACTOR * self.size),
                                      sample.image, sample.masks,
                                      np.concatenate([landmarks, cortex]))
        image, masks, kps = self.augment_arrays(image, masks, kps)
        shape = image.shape[:2]
        frame = PadResize.from_shape(shape[0], shape[1], self.size)
        net_image = np.clip(frame.apply(image.astype(np.float32)), 0.0, 1.0)
        net_masks = frame.apply(np.moveaxis(masks.astype(np.float32), 0, -1))
        net_masks = (np.moveaxis(net_masks.reshape(self.size, self.size, -1), -1, 0) >= 0.5)
        net_kps = frame.to_network(kps)
        return NetworkView(
            image=net_image.astype(np.float32),
            masks=net_masks.astype(np.uint8),
            landmarks=net_kps[: len(landmarks)],
            landmark_visible=inside_image(kps[: len(landmarks)], shape),
            cortex_points=net_kps[len(landmarks) :],
            frame=frame,
        )
