"""Heat-map decoding: landmark positions (x, y) and peak heights from predicted heat-maps.

Three methods, selectable by name:
- ``argmax`` (paper): the pixel centre of the maximum.
- ``quadratic``: arg max refined by one Newton step of a second-order Taylor expansion around the
  peak, computed from central differences on the 3x3 neighbourhood. By default the expansion is
  taken on the logarithm of the heat-map (as in DARK, Zhang et al. CVPR 2020): the log of a
  Gaussian is exactly quadratic, so a Gaussian peak is recovered without bias. Falls back to the
  raw values when the neighbourhood is not positive, and to arg max at the border or when the
  Hessian is not negative definite. The offset is clipped to +-0.5 px (the true maximum of a
  unimodal map lies within half a pixel of its arg max).
- ``soft_argmax``: the heat-map-weighted mean position (negative values clipped to 0) in a square
  window of half-width ``window`` around the arg max. The window truncates the Gaussian
  asymmetrically, so it must span about 3 sigma (default 18 = 3 x the paper's sigma of 6 px);
  near the border it shrinks to stay symmetric about the arg max (less accurate there).

Example:
    >>> pts, peaks = decode_heatmap(hm, method="quadratic")  # hm: (2, 256, 256)
    >>> pts.shape, peaks.shape
    ((2, 2), (2,))
"""

from __future__ import annotations

from typing import Any

import numpy as np

DECODE_METHODS = ("argmax", "quadratic", "soft_argmax")


def as_numpy(a: Any) -> np.ndarray:
    """A float64 numpy copy of an array-like or a torch tensor (detached, on the CPU)."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _refine_quadratic(hm: np.ndarray, x: int, y: int, log: bool) -> tuple[float, float]:
    """Sub-pixel offset (dx, dy) of the peak at integer (x, y) by one Newton step."""
    h, w = hm.shape
    if not (0 < x < w - 1 and 0 < y < h - 1):
        return 0.0, 0.0
    patch = hm[y - 1 : y + 2, x - 1 : x + 2]
    if log and np.all(patch > 0):
        patch = np.log(patch)
    gx = (patch[1, 2] - patch[1, 0]) / 2.0
    gy = (patch[2, 1] - patch[0, 1]) / 2.0
    hxx = patch[1, 2] - 2.0 * patch[1, 1] + patch[1, 0]
    hyy = patch[2, 1] - 2.0 * patch[1, 1] + patch[0, 1]
    hxy = (patch[2, 2] - patch[2, 0] - patch[0, 2] + patch[0, 0]) / 4.0
    det = hxx * hyy - hxy * hxy
    if not (hxx < 0 and det > 0):  # not a proper maximum: keep the arg max
        return 0.0, 0.0
    dx = -(hyy * gx - hxy * gy) / det
    dy = -(hxx * gy - hxy * gx) / det
    return float(np.clip(dx, -0.5, 0.5)), float(np.clip(dy, -0.5, 0.5))


def _refine_soft_argmax(hm: np.ndarray, x: int, y: int, window: int) -> tuple[float, float]:
    """Weighted mean position (absolute x, y) in a window of half-width ``window``."""
    h, w = hm.shape
    rx, ry = min(window, x, w - 1 - x), min(window, y, h - 1 - y)  # symmetric about the peak
    y0, y1 = y - ry, y + ry + 1
    x0, x1 = x - rx, x + rx + 1
    patch = np.clip(hm[y0:y1, x0:x1], 0.0, None)
    total = patch.sum()
    if total <= 0:
        return float(x), float(y)
    ys, xs = np.mgrid[y0:y1, x0:x1]
    return float((patch * xs).sum() / total), float((patch * ys).sum() / total)


def decode_heatmap(
    hm: Any, method: str = "argmax", *, log: bool = True, window: int = 18
) -> tuple[np.ndarray, np.ndarray]:
    """Decode (x, y) positions and peak heights from heat-maps.

    Args:
        hm: (H, W) or (C, H, W) heat-map(s), numpy or torch.
        method: ``argmax`` (paper), ``quadratic`` or ``soft_argmax`` (see module docstring).
        log: ``quadratic`` only: expand the log of the heat-map (exact for Gaussians).
        window: ``soft_argmax`` only: half-width of the window in pixels.

    Returns:
        points (C, 2) float64 (x, y) in the heat-map's pixel frame, and peaks (C,) = the maximum
        value of each channel (its confidence). C = 1 for a 2-D input.
    """
    if method not in DECODE_METHODS:
        raise ValueError(f"decode_heatmap: unknown method {method!r}; use one of {DECODE_METHODS}")
    arr = as_numpy(hm)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"decode_heatmap: expected (H, W) or (C, H, W), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("decode_heatmap: heat-map contains NaN or infinite values")
    points = np.zeros((arr.shape[0], 2))
    peaks = np.zeros(arr.shape[0])
    for c, ch in enumerate(arr):
        y, x = np.unravel_index(int(np.argmax(ch)), ch.shape)
        peaks[c] = ch[y, x]
        if method == "argmax":
            points[c] = (x, y)
        elif method == "quadratic":
            dx, dy = _refine_quadratic(ch, int(x), int(y), log)
            points[c] = (x + dx, y + dy)
        else:
            points[c] = _refine_soft_argmax(ch, int(x), int(y), window)
    return points, peaks
