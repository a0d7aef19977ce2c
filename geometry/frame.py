"""The zero-pad-to-square + resize frame between original pixels and the network's input.

Padding is centred (extra pixel on the bottom/right). Resizing follows OpenCV's half-pixel
convention (pixel centres on integers), so a point maps as x' = (x + pad + 0.5) * s - 0.5 with
s = size / side. The inverse is exact in floating point up to rounding.

:class:`WindowResize` is the same map for any square window of the image (cropping where the
window lies inside, zeros where it reaches outside): the frame of a zoomed second look.

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

    def _overlap(self) -> tuple[slice, slice, slice, slice]:
        """(rows, cols) of the image inside the square, then the same pixels in the square."""
        r0, c0 = max(0, -self.pad_top), max(0, -self.pad_left)
        r1 = max(r0, min(self.orig_h, self.side - self.pad_top))
        c1 = max(c0, min(self.orig_w, self.side - self.pad_left))
        return (slice(r0, r1), slice(c0, c1), slice(r0 + self.pad_top, r1 + self.pad_top),
                slice(c0 + self.pad_left, c1 + self.pad_left))

    def pad(self, img: np.ndarray) -> np.ndarray:
        """The (side, side[, C]) square of an (H, W[, C]) array: zeros where it has no pixels."""
        rows, cols, sq_rows, sq_cols = self._overlap()
        out = np.zeros((self.side, self.side) + img.shape[2:], dtype=img.dtype)
        out[sq_rows, sq_cols] = img[rows, cols]
        return out

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
        rows, cols, sq_rows, sq_cols = self._overlap()
        if (rows.stop - rows.start, cols.stop - cols.start) == (self.orig_h, self.orig_w):
            return up[sq_rows, sq_cols]  # the square holds the whole image (always, unzoomed)
        out = np.zeros((self.orig_h, self.orig_w) + img.shape[2:], dtype=up.dtype)
        out[rows, cols] = up[sq_rows, sq_cols]
        return out

    def as_dict(self) -> dict[str, int]:
        """Plain dict (for batching and JSON)."""
        return asdict(self)


@dataclass(frozen=True)
class WindowResize(PadResize):
    """A square window of ``window`` px whose top-left corner is at (-pad_left, -pad_top) in
    the image (anywhere: outside the image reads as zeros), resized to ``size``."""

    window: int = 1

    @classmethod
    def around(cls, h: int, w: int, centre_xy: np.ndarray, side: float, size: int) -> WindowResize:
        """The window of ``side`` px centred on ``centre_xy`` (x, y) of an (h, w) image."""
        side_i = max(1, int(round(side)))
        x0 = int(round(float(centre_xy[0]) + 0.5 - side_i / 2))
        y0 = int(round(float(centre_xy[1]) + 0.5 - side_i / 2))
        return cls(int(h), int(w), -y0, -x0, int(size), side_i)

    @property
    def side(self) -> int:
        """Side of the window, in original pixels."""
        return self.window
