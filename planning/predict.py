"""Image in original pixels -> the network's maps in the network frame (pad + resize + forward).

The image is zero-padded (centred) to a square and resized to the module's input size with
``geometry.frame.PadResize``, exactly as in training; the returned ``NetworkMaps`` carries that
frame so every decoded point can be mapped back to original pixels.

Example:
    >>> module = load_module("runs/quick/last.ckpt")
    >>> maps = predict_image(module, image)          # image: (H, W) float32 in [0, 1]
    >>> maps.seg.shape, maps.lm.shape, maps.roi.shape
    ((4, 256, 256), (2, 256, 256), (1, 256, 256))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from geometry.frame import PadResize


@dataclass
class NetworkMaps:
    """The three task outputs of one image in the (S, S) network frame.

    Args:
        seg: (4, S, S) bone probabilities in [0, 1] (multi-label, ``BONES`` order).
        lm: (2, S, S) landmark heat-maps (``LANDMARKS`` order).
        roi: (1, S, S) cortex-line ROI heat-map.
        frame: the pad + resize that took the original image to the network frame.
        lm_prev: (2, S, S) the second-to-last hourglass's landmark heat-maps, when the model
            gives them (used for the hourglass-agreement check), else None.
    """

    seg: np.ndarray
    lm: np.ndarray
    roi: np.ndarray
    frame: PadResize
    lm_prev: np.ndarray | None = None


def network_input(image: np.ndarray, size: int) -> tuple[np.ndarray, PadResize]:
    """Pad (centred) and resize an (H, W) image to (size, size) as in training."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2 or min(img.shape) < 1:
        raise ValueError(f"expected a non-empty (H, W) image, got shape {img.shape}")
    frame = PadResize.from_shape(img.shape[0], img.shape[1], size)
    return frame.apply(img).astype(np.float32), frame


def module_device(module: Any) -> torch.device:
    """The device of the module's parameters (CPU when it has none)."""
    try:
        return next(module.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def predict_images(
    module: Any, images: Sequence[np.ndarray], batch_size: int = 4
) -> list[NetworkMaps]:
    """Run ``module.predict_maps`` on original-resolution images, in batches.

    Args:
        module: a loaded module with ``image_size`` and ``predict_maps(x) -> dict(seg, lm, roi)``
            (seg as probabilities), e.g. from ``lightning_modules.module.load_module``.
        images: (H_i, W_i) float32 images in [0, 1]; sizes may differ.
        batch_size: images per forward pass.
    """
    size = int(module.image_size)
    device = module_device(module)
    out: list[NetworkMaps] = []
    for start in range(0, len(images), batch_size):
        chunk = [network_input(img, size) for img in images[start : start + batch_size]]
        x = torch.from_numpy(np.stack([c[0] for c in chunk])[:, None]).to(device)
        with torch.inference_mode():
            maps = module.predict_maps(x)
        seg, lm, roi = (maps[k].detach().float().cpu().numpy() for k in ("seg", "lm", "roi"))
        prev = maps.get("lm_prev")
        prev = None if prev is None else prev.detach().float().cpu().numpy()
        for i, (_, frame) in enumerate(chunk):
            out.append(NetworkMaps(seg[i], lm[i], roi[i].reshape(1, size, size), frame,
                                   None if prev is None else prev[i]))
    return out


def predict_image(module: Any, image: np.ndarray) -> NetworkMaps:
    """``predict_images`` for one image."""
    return predict_images(module, [image], batch_size=1)[0]
