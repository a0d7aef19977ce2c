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

    def _affine(self, y0: int, x0: int) -> np.ndarray:
        """(2, 3) map to the network frame from the pixels of the image from (x0, y0) on."""
        s = self.scale
        bx = (x0 + self.pad_left + 0.5) * s - 0.5
        by = (y0 + self.pad_top + 0.5) * s - 0.5
        return np.array([[s, 0.0, bx], [0.0, s, by]])

    def _area_weights(self, first: int, n: int, pad: int) -> np.ndarray:
        """(size, n) weights of image pixels ``first .. first + n - 1`` (window pixels shifted
        by ``pad``) in each network pixel: the overlap of their areas, as INTER_AREA."""
        s = self.scale
        j = np.arange(self.size, dtype=np.float64)
        lo, hi = j / s, (j + 1) / s
        w = np.arange(first, first + n, dtype=np.float64) + pad
        overlap = np.minimum(hi[:, None], w[None, :] + 1) - np.maximum(lo[:, None], w[None, :])
        return (np.clip(overlap, 0.0, None) * s).astype(np.float32)

    def apply(self, img: np.ndarray, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
        """The window of an (H, W[, C]) image in the (size, size) network frame, computed from
        the window's overlap with the image (a window may be far larger than the image): what
        resizing the zero-padded window would give. INTER_AREA (either way: OpenCV's is the
        same area-overlap rule when enlarging) uses the exact area weights as two matrices
        (``Wr @ crop @ Wc^T``, memory ``size`` x the image's sides); anything else is bilinear
        (``cv2.warpAffine``; nearest for INTER_NEAREST)."""
        if img.shape[:2] != (self.orig_h, self.orig_w):
            raise ValueError(f"image shape {img.shape[:2]} != frame {(self.orig_h, self.orig_w)}")
        rows, cols, _, _ = self._overlap()
        out_shape = (self.size, self.size) + img.shape[2:]
        if rows.stop <= rows.start or cols.stop <= cols.start:
            return np.zeros(out_shape, dtype=img.dtype)
        crop = img[rows, cols]
        if interpolation == cv2.INTER_AREA:
            wr = self._area_weights(rows.start, rows.stop - rows.start, self.pad_top)
            wc = self._area_weights(cols.start, cols.stop - cols.start, self.pad_left)
            planes = crop.reshape(crop.shape[:2] + (-1,)).astype(np.float32)
            out = np.stack([wr @ planes[..., c] @ wc.T for c in range(planes.shape[2])], -1)
            return out.reshape(out_shape).astype(img.dtype)
        flags = cv2.INTER_NEAREST if interpolation == cv2.INTER_NEAREST else cv2.INTER_LINEAR
        out = cv2.warpAffine(np.ascontiguousarray(crop), self._affine(rows.start, cols.start),
                             (self.size, self.size), flags=flags,
                             borderMode=cv2.BORDER_CONSTANT)
        return out.reshape(out_shape)

    def invert_image(self, img: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        """A (size, size[, C]) network-frame map back to (orig_h, orig_w[, C]), zeros outside the
        window; only the window's overlap with the image is computed (memory of the image)."""
        rows, cols, _, _ = self._overlap()
        out = np.zeros((self.orig_h, self.orig_w) + img.shape[2:], dtype=img.dtype)
        if rows.stop <= rows.start or cols.stop <= cols.start:
            return out
        dsize = (cols.stop - cols.start, rows.stop - rows.start)
        back = cv2.warpAffine(np.ascontiguousarray(img), self._affine(rows.start, cols.start),
                              dsize,
                              flags=interpolation | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)  # as cv2.resize at the border
        out[rows, cols] = back.reshape(out[rows, cols].shape)
        return out
