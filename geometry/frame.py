"""The zero-pad-to-square + resize frame between original pixels and the network's input.

Padding is centred (extra pixel on the bottom/right). Resizing follows OpenCV's half-pixel
convention (pixel centres on integers), so a point maps as x' = (x + pad + 0.5) * s - 0.5 with
s = size / side. The inverse is exact in floating point up to rounding.

Example:
    >>> f = PadResize.from_shape(600, 800, 256)
    >>> f.to_original(f.to_network(np.array([[10.0, 20.0]])))
    array([[10., 20.]])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class PadResize:
    """Record of one pad-to-square-then-resize, with its forward and inverse point maps."""

    orig_h: int
    orig_w: int
    pad_top: int
    pad_left: int
    size: int

    @classmethod
    def from_shape(cls, h: int, w: int, size: int) -> PadResize:
        """Frame for an (h, w) image padded (centred) to a square and resized to ``size``."""
        side = max(h, w)
        return cls(int(h), int(w), (side - h) // 2, (side - w) // 2, int(size))

    @property
    def side(self) -> int:
        """Side of the padded square, in original pixels."""
        return max(self.orig_h, self.orig_w)

    @property
    def scale(self) -> float:
        """Network pixels per original pixel."""
        return self.size / self.side

    def to_network(self, pts: np.ndarray) -> np.ndarray:
        """Map (N, 2) original (x, y) points into the network frame."""
        pts = np.asarray(pts, dtype=np.float64)
        off = np.array([self.pad_left, self.pad_top], dtype=np.float64)
        return (pts + off + 0.5) * self.scale - 0.5

    def to_original(self, pts: np.ndarray) -> np.ndarray:
        """Map (N, 2) network-frame (x, y) points back to original pixels (exact inverse)."""
        pts = np.asarray(pts, dtype=np.float64)
        off = np.array([self.pad_left, self.pad_top], dtype=np.float64)
        return (pts + 0.5) / self.scale - 0.5 - off

    def pad(self, img: np.ndarray) -> np.ndarray:
        """Zero-pad an (H, W) or (H, W, C) array to the centred square."""
        bottom = self.side - self.orig_h - self.pad_top
        right = self.side - self.orig_w - self.pad_left
        widths = [(self.pad_top, bottom), (self.pad_left, right)] + [(0, 0)] * (img.ndim - 2)
        return np.pad(img, widths)

    def apply(self, img: np.ndarray, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
        """Pad and resize an (H, W) or (H, W, C) image into the (size, size) network frame."""
        if img.shape[:2] != (self.orig_h, self.orig_w):
            raise ValueError(f"image shape {img.shape[:2]} != frame {(self.orig_h, self.orig_w)}")
        out = cv2.resize(self.pad(img), (self.size, self.size), interpolation=interpolation)
        return out.reshape((self.size, self.size) + img.shape[2:])

    def invert_image(self, img: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        """Map a (size, size[, C]) network-frame map back to an (orig_h, orig_w[, C]) image."""
        up = cv2.resize(img, (self.side, self.side), interpolation=interpolation)
        up = up.reshape((self.side, self.side) + img.shape[2:])
        rows = slice(self.pad_top, self.pad_top + self.orig_h)
        return up[rows, self.pad_left : self.pad_left + self.orig_w]

    def as_dict(self) -> dict[str, int]:
        """Plain dict (for batching and JSON)."""
        return asdict(self)
