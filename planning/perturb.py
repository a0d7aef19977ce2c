"""Perturbed copies of a test sample, its truth transformed alike (for ``planning.stress``).

Each perturbation is something a real radiograph can show or a user can do by mistake: a
mirrored (other-side) knee, an image upside down or on its side, inverted contrast (MONOCHROME1
shown as MONOCHROME2), half the resolution, quantum noise, blur, heavy JPEG, low contrast, the
knee small on a large black canvas, the bottom of the image cut off. Geometric ones move the
masks, landmarks, cortex points and Schoettle point with the pixels (pixel centres on integers:
``x' = W - 1 - x`` for a mirror, ``x' = (x + 0.5) s - 0.5`` for a resampling by ``s``);
photometric ones keep the truth. ``LATERAL`` lists those after which the image is still a
lateral knee radiograph the model should plan; after the others every wrong plan must be flagged.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable

import cv2
import numpy as np

from datamodules.sample import Sample

Points = Callable[[np.ndarray], np.ndarray]

# still a lateral knee radiograph (plan it); the rest are not, as shown (flag every wrong plan)
LATERAL = ("hflip", "half", "noise", "blur", "jpeg", "lowcontrast", "pad", "cropbottom")
FOREIGN = ("vflip", "rot180", "rot90", "invert")
KINDS = LATERAL + FOREIGN
PAD_SCALE = 2.2  # "pad": the canvas is this many times the image per side


def warped_sample(sample: Sample, warp: Callable[[np.ndarray, bool], np.ndarray],
                  points: Points, scale_rc: tuple[float, float] = (1.0, 1.0)) -> Sample | None:
    """Apply ``warp`` (array, is_mask) to image and masks and ``points`` to every truth point;
    None when a landmark or the Schoettle point leaves the new image. ``scale_rc``: new pixels
    per old pixel (rows, cols)."""
    image = warp(sample.image, False).astype(np.float32)
    masks = np.stack([warp(m, True) for m in sample.masks]).astype(np.uint8)
    h, w = image.shape
    anns = [dataclasses.replace(a, landmarks=points(a.landmarks),
                                cortex_points=points(a.cortex_points)) for a in sample.annotations]
    truth = [a.landmarks for a in anns]  # cortex points may lie beyond the image (a cut shaft)
    sp = sample.schoettle_point
    if sp is not None:
        sp = points(np.asarray(sp, np.float64)[None])[0]
        truth.append(sp[None])
    for pts in truth:
        if np.any(pts < -0.5) or np.any(pts[:, 0] > w - 0.5) or np.any(pts[:, 1] > h - 0.5):
            return None
    spacing = None
    if sample.spacing_mm is not None:
        spacing = (sample.spacing_mm[0] / scale_rc[0], sample.spacing_mm[1] / scale_rc[1])
    return dataclasses.replace(sample, image=image, masks=masks, annotations=anns,
                               schoettle_point=sp, spacing_mm=spacing)


def _affine(m: np.ndarray) -> Points:
    """Points (N, 2) through the (2, 3) affine map ``m``."""
    return lambda p: np.asarray(p, np.float64) @ m[:, :2].T + m[:, 2]


def _photometric(sample: Sample, image: np.ndarray) -> Sample:
    return dataclasses.replace(sample, image=np.clip(image, 0.0, 1.0).astype(np.float32))


def _rng(sample: Sample, kind: str) -> np.random.Generator:
    """Per (sample, perturbation) generator: the same copy every run."""
    return np.random.default_rng(zlib.crc32(f"{sample.id}/{kind}".encode()))


def perturb(sample: Sample, kind: str) -> Sample | None:
    """``sample`` perturbed by ``kind`` (one of ``KINDS``), with its truth transformed alike; None
    when the truth would leave the image (a crop through a landmark). The id gets ``@kind``."""
    h, w = sample.image.shape
    img = sample.image
    if kind == "hflip":
        out = warped_sample(sample, lambda a, _: a[:, ::-1],
                            _affine(np.array([[-1, 0, w - 1], [0, 1, 0]], float)))
    elif kind == "vflip":
        out = warped_sample(sample, lambda a, _: a[::-1],
                            _affine(np.array([[1, 0, 0], [0, -1, h - 1]], float)))
    elif kind == "rot180":
        out = warped_sample(sample, lambda a, _: a[::-1, ::-1],
                            _affine(np.array([[-1, 0, w - 1], [0, -1, h - 1]], float)))
    elif kind == "rot90":  # clockwise: new (x, y) = (h - 1 - y, x)
        out = warped_sample(sample, lambda a, _: np.rot90(a, -1),
                            _affine(np.array([[0, -1, h - 1], [1, 0, 0]], float)))
        if out is not None and out.spacing_mm is not None:
            out = dataclasses.replace(out, spacing_mm=out.spacing_mm[::-1])
    elif kind == "half":
        nh, nw = max(h // 2, 1), max(w // 2, 1)
        sy, sx = nh / h, nw / w

        def half(a: np.ndarray, mask: bool) -> np.ndarray:
            return cv2.resize(a, (nw, nh), interpolation=cv2.INTER_NEAREST if mask
                              else cv2.INTER_AREA)

        out = warped_sample(sample, half, _affine(np.array([[sx, 0, 0.5 * sx - 0.5],
                                                            [0, sy, 0.5 * sy - 0.5]])), (sy, sx))
    elif kind == "pad":
        ch, cw = int(PAD_SCALE * h), int(PAD_SCALE * w)
        y0, x0 = int(0.25 * (PAD_SCALE - 1) * h), int(0.75 * (PAD_SCALE - 1) * w)  # off-centre

        def pad(a: np.ndarray, _: bool) -> np.ndarray:
            canvas = np.zeros((ch, cw), a.dtype)
            canvas[y0 : y0 + h, x0 : x0 + w] = a
            return canvas

        out = warped_sample(sample, pad, _affine(np.array([[1, 0, x0], [0, 1, y0]], float)))
    elif kind == "cropbottom":
        keep = int(0.62 * h)
        out = warped_sample(sample, lambda a, _: a[:keep], _affine(np.eye(2, 3)))
    elif kind == "invert":
        out = _photometric(sample, 1.0 - img)
    elif kind == "noise":
        out = _photometric(sample, img + _rng(sample, kind).normal(0.0, 0.08, img.shape))
    elif kind == "blur":
        out = _photometric(sample, cv2.GaussianBlur(img, (0, 0), 0.004 * min(h, w)))
    elif kind == "jpeg":
        ok, buf = cv2.imencode(".jpg", np.round(np.clip(img, 0, 1) * 255).astype(np.uint8),
                               [cv2.IMWRITE_JPEG_QUALITY, 15])
        out = _photometric(sample, cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) / 255.0)
    elif kind == "lowcontrast":
        out = _photometric(sample, 0.45 + 0.1 * img)
    else:
        raise ValueError(f"perturb.py: unknown perturbation {kind!r}; choose from {KINDS}")
    if out is None:
        return None
    meta = {**sample.meta, "perturbation": kind}
    meta.pop("spacing_inputs", None)  # the spacing is the sample's own, transformed above
    if kind in ("hflip", "vflip") and meta.get("side") in ("left", "right"):
        meta["side"] = {"left": "right", "right": "left"}[meta["side"]]
    return dataclasses.replace(out, id=f"{sample.id}@{kind}", meta=meta,
                               spacing_source=sample.spacing_source or "annotation")


__all__ = ["FOREIGN", "KINDS", "LATERAL", "perturb"]
