"""In-memory sample shared by phantoms, the on-disk reader, transforms and evaluation.

Coordinates are (x, y) = (column, row) in pixels of the ORIGINAL image, with pixel centres on
integers (pixel [r, c] is centred at x=c, y=r). Pixel spacing is (row_mm, col_mm) per pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BONES: tuple[str, ...] = ("femur", "patella", "tibia", "fibula")
LANDMARKS: tuple[str, ...] = ("p_blum", "p_tmc")
# network tasks and their output channels, in head order: bone masks, landmark heat-maps, ROI
TASKS: dict[str, int] = {"seg": len(BONES), "lm": len(LANDMARKS), "roi": 1}


@dataclass
class RaterAnnotation:
    """One rater's annotation of one image.

    Args:
        landmarks: (2, 2) float array, rows in ``LANDMARKS`` order, columns (x, y).
        cortex_points: (K, 2) points on the posterior femoral cortex line, K >= 2, ordered
            proximal to distal where known.
        rater: rater id, or None for a single anonymous annotation.
    """

    landmarks: np.ndarray
    cortex_points: np.ndarray
    rater: str | None = None


@dataclass
class Sample:
    """One radiograph with masks and annotations.

    Args:
        id: unique id (file stem).
        image: (H, W) float32 in [0, 1]; bright = more attenuation (bone), as radiographs are read.
        masks: (4, H, W) uint8 {0, 1} in ``BONES`` order; they overlap (multi-label).
        annotations: one or more raters; the first is the training target.
        spacing_mm: (row_mm, col_mm) per pixel, or None when unknown.
        spacing_source: how spacing was found, e.g. "PixelSpacing", "ImagerPixelSpacing",
            "annotation", "phantom", "sphere", or None.
        schoettle_point: (x, y) true Schoettle point where known exactly (phantoms), else None.
        meta: free-form extras (side, flexion, ...), JSON-serialisable.
    """

    id: str
    image: np.ndarray
    masks: np.ndarray
    annotations: list[RaterAnnotation]
    spacing_mm: tuple[float, float] | None = None
    spacing_source: str | None = None
    schoettle_point: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def landmarks(self) -> np.ndarray:
        """(2, 2) landmarks of the primary (first) rater."""
        return self.annotations[0].landmarks

    @property
    def cortex_points(self) -> np.ndarray:
        """(K, 2) cortex points of the primary (first) rater."""
        return self.annotations[0].cortex_points

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the original image."""
        return int(self.image.shape[0]), int(self.image.shape[1])
