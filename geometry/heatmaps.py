"""Heat-map codec: landmark Gaussians encoded as targets, positions and peaks decoded back.

``HeatmapCodec(input_size, heatmap_size, sigma)`` is the one owner of the heat-map policy (in the
spirit of mmpose's ``MSRAHeatmap``): training targets (``datamodules.targets``), validation
metrics, planning and the oracle all build it from the same three numbers, which are saved in the
checkpoint's hyper-parameters (``to_dict`` / ``from_dict``).

Decoding methods, selectable by name:

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
  asymmetrically, so it must span about 3 sigma (the codec uses ceil(3 sigma); the bare function's
  default 18 = 3 x the paper's sigma of 6 px); near the border it shrinks to stay symmetric
  about the arg max (less accurate there).

Frames: pixel centres lie on integers in both frames, so an input-frame x maps to the heat-map
frame as ``(x + 0.5) * heatmap_size / input_size - 0.5`` (the identity when the sizes match).

Example:
    >>> pts, peaks = decode_heatmap(hm, method="quadratic")  # hm: (2, 256, 256)
    >>> pts.shape, peaks.shape
    ((2, 2), (2,))
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DECODE_METHODS = ("argmax", "quadratic", "soft_argmax")
_ALIASES = {"soft-argmax": "soft_argmax"}


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
    method = _ALIASES.get(method, method)
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


def gaussian_heatmap(
    size: int | tuple[int, int], center_xy: np.ndarray | tuple[float, float], sigma: float = 6.0
) -> np.ndarray:
    """(H, W) float32 Gaussian with peak 1 at ``center_xy`` = (x, y); ``size`` is S or (H, W)."""
    h, w = (int(size), int(size)) if isinstance(size, int | np.integer) else map(int, size)
    cx, cy = (float(v) for v in np.asarray(center_xy, dtype=np.float64).reshape(2))
    gx = np.exp(-((np.arange(w) - cx) ** 2) / (2.0 * sigma**2))
    gy = np.exp(-((np.arange(h) - cy) ** 2) / (2.0 * sigma**2))
    return np.outer(gy, gx).astype(np.float32)


@dataclass(frozen=True)
class HeatmapCodec:
    """Encode points as Gaussian heat-maps and decode heat-maps back to points.

    Args:
        input_size: side S of the (square) network input; points are given in its pixels.
        heatmap_size: side of the (square) heat-maps (= S for this network).
        sigma: Gaussian sigma in heat-map pixels (paper: 6 at 256).

    Example:
        >>> codec = HeatmapCodec(256, 256, 6.0)
        >>> maps = codec.encode(np.array([[100.3, 50.7]]), np.array([True]))  # (1, 256, 256)
        >>> codec.decode(maps, "quadratic")[0]   # ~ [[100.3, 50.7]]
    """

    input_size: int
    heatmap_size: int
    sigma: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", int(self.input_size))
        object.__setattr__(self, "heatmap_size", int(self.heatmap_size))
        object.__setattr__(self, "sigma", float(self.sigma))
        if self.input_size < 1 or self.heatmap_size < 1:
            raise ValueError(f"HeatmapCodec: sizes must be >= 1, got {self.input_size}, "
                             f"{self.heatmap_size}")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"HeatmapCodec: sigma must be positive, got {self.sigma}")

    @property
    def stride(self) -> float:
        """Input pixels per heat-map pixel."""
        return self.input_size / self.heatmap_size

    @property
    def window(self) -> int:
        """Soft-argmax half-width: ceil(3 sigma) heat-map pixels."""
        return int(math.ceil(3.0 * self.sigma))

    def to_heatmap(self, points: Any) -> np.ndarray:
        """(..., 2) input-frame points -> heat-map frame."""
        return (np.asarray(points, dtype=np.float64) + 0.5) / self.stride - 0.5

    def to_input(self, points: Any) -> np.ndarray:
        """(..., 2) heat-map-frame points -> input frame."""
        return (np.asarray(points, dtype=np.float64) + 0.5) * self.stride - 0.5

    def encode(self, points: Any, visible: Any = None) -> np.ndarray:
        """(K, 2) input-frame points -> (K, H, H) float32 maps; invisible or non-finite points
        (``visible`` False) get an all-zero map."""
        pts = self.to_heatmap(np.asarray(points, dtype=np.float64).reshape(-1, 2))
        vis = np.ones(len(pts), bool) if visible is None else np.asarray(visible, bool).reshape(-1)
        out = np.zeros((len(pts), self.heatmap_size, self.heatmap_size), dtype=np.float32)
        for i, (p, v) in enumerate(zip(pts, vis, strict=True)):
            if v and np.all(np.isfinite(p)):
                out[i] = gaussian_heatmap(self.heatmap_size, p, self.sigma)
        return out

    def decode(self, maps: Any, method: str = "argmax") -> tuple[np.ndarray, np.ndarray]:
        """(K, H, W) or (B, K, H, W) maps (numpy or torch) -> points (..., K, 2) (x, y) in the
        input frame and peaks (..., K); ``method``: argmax, quadratic or soft_argmax."""
        method = _ALIASES.get(method, method)
        arr = as_numpy(maps)
        if arr.ndim == 4:
            res = [self.decode(m, method) for m in arr]
            k = arr.shape[1]
            pts = np.stack([r[0] for r in res]) if res else np.zeros((0, k, 2))
            peaks = np.stack([r[1] for r in res]) if res else np.zeros((0, k))
            return pts, peaks
        pts, peaks = decode_heatmap(arr, method=method, window=self.window)
        return self.to_input(pts), peaks

    def to_dict(self) -> dict[str, Any]:
        """Plain types for checkpoints and JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeatmapCodec:
        """Inverse of ``to_dict``; raises ValueError on missing or bad fields."""
        try:
            return cls(int(d["input_size"]), int(d["heatmap_size"]), float(d["sigma"]))
        except (KeyError, TypeError) as err:
            raise ValueError(f"HeatmapCodec: bad codec description {d!r}") from err
