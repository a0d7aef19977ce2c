"""torch Datasets (folder, phantoms, in-memory samples) yielding network-ready items, and collate.

Every dataset turns a ``Sample`` into one item with ``make_item`` (augment, pad+resize, targets);
``collate_batch`` stacks items into the batch dict of docs/ARCHITECTURE.md:

    image (B,1,S,S) float32, seg (B,4,S,S) float32, lm (B,2,S,S), roi (B,1,S,S),
    lm_visible (B,2) bool, landmarks (B,2,2) float32, cortex_points list of (K_i,2) float32,
    frame dict of (B,) int64 (orig_h, orig_w, pad_top, pad_left, size),
    spacing (B,2) float32 (NaN when unknown), id list[str].

``spacing`` is the (row_mm, col_mm) of the image the frame maps back to: with scale
augmentation it is divided by the applied zoom, so mm stay right in the augmented image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.dataset_io import image_files, read_sample
from datamodules.sample import Sample
from datamodules.targets import (
    ROI_EXTENTS,
    default_roi_spacing,
    landmark_heatmaps,
    roi_heatmap,
)
from datamodules.transforms import SampleTransform

FRAME_KEYS = ("orig_h", "orig_w", "pad_top", "pad_left", "size")


@dataclass
class TargetConfig:
    """Heat-map target settings (network frame pixels).

    Args:
        sigma: Gaussian sigma of landmark and ROI heat-maps (paper: 6 at S = 256).
        roi_spacing_px: distance between cortex pseudo-landmarks; None: 2/3 sigma (4 px at 6).
        roi_extent: "segment" (annotated stretch) or "image" (whole line), see targets.py.
    """

    sigma: float = 6.0
    roi_spacing_px: float | None = None
    roi_extent: str = "segment"

    def __post_init__(self) -> None:
        if self.roi_spacing_px is None:
            self.roi_spacing_px = default_roi_spacing(self.sigma)
        if self.roi_extent not in ROI_EXTENTS:
            raise ValueError(f"roi_extent must be one of {ROI_EXTENTS}, got {self.roi_extent!r}")
        if self.sigma <= 0 or self.roi_spacing_px <= 0:
            raise ValueError("sigma and roi_spacing_px must be positive")


def _applied_zoom(transform: SampleTransform) -> tuple[float, float]:
    """(y, x) zoom of the last augmentation (1, 1 when none)."""
    zy, zx = 1.0, 1.0
    for name, params in transform.last_applied:
        scale = params.get("scale") if name == "Affine" else None
        if isinstance(scale, dict):
            zy *= float(scale.get("y", 1.0))
            zx *= float(scale.get("x", 1.0))
    return zy, zx


def make_item(sample: Sample, transform: SampleTransform, targets: TargetConfig) -> dict[str, Any]:
    """One sample -> one unbatched item (tensors; see the module docstring for keys)."""
    view = transform(sample)
    size = transform.size
    spacing = np.full(2, np.nan, dtype=np.float32)
    if sample.spacing_mm is not None:
        zy, zx = _applied_zoom(transform)
        spacing[:] = (sample.spacing_mm[0] / zy, sample.spacing_mm[1] / zx)
    lm = landmark_heatmaps(view.landmarks, view.landmark_visible, size, targets.sigma)
    try:
        roi = roi_heatmap(view.cortex_points, size, targets.sigma, targets.roi_spacing_px,
                          targets.roi_extent)
    except ValueError as err:
        raise ValueError(f"sample {sample.id!r}: cannot build the ROI target: {err}") from err
    return {
        "image": torch.from_numpy(view.image[None].astype(np.float32)),
        "seg": torch.from_numpy(view.masks.astype(np.float32)),
        "lm": torch.from_numpy(lm),
        "roi": torch.from_numpy(roi),
        "lm_visible": torch.from_numpy(view.landmark_visible.astype(bool)),
        "landmarks": torch.from_numpy(view.landmarks.astype(np.float32)),
        "cortex_points": torch.from_numpy(view.cortex_points.astype(np.float32)),
        "frame": view.frame.as_dict(),
        "spacing": torch.from_numpy(spacing),
        "id": sample.id,
    }


def collate_batch(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack items from ``make_item`` into the batch dict (cortex points stay a list)."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, Any] = {
        key: torch.stack([it[key] for it in items])
        for key in ("image", "seg", "lm", "roi", "lm_visible", "landmarks", "spacing")
    }
    batch["cortex_points"] = [it["cortex_points"] for it in items]
    batch["frame"] = {
        k: torch.tensor([it["frame"][k] for it in items], dtype=torch.int64) for k in FRAME_KEYS
    }
    batch["id"] = [it["id"] for it in items]
    return batch


class SampleDataset(Dataset):
    """Base: subclasses give ``__len__`` and ``load(index) -> Sample``; items via ``make_item``.

    Args:
        transform: augmentation + pad/resize (its ``size`` is S).
        targets: heat-map settings.
    """

    def __init__(self, transform: SampleTransform, targets: TargetConfig | None = None):
        self.transform = transform
        self.targets = targets or TargetConfig()

    def load(self, index: int) -> Sample:
        """The index-th sample in the original frame."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        return make_item(self.load(index), self.transform, self.targets)


class FolderDataset(SampleDataset):
    """Samples of a dataset folder (images/, masks/, annotations/), read on demand.

    Example:
        >>> ds = FolderDataset("data/knees", ["k1", "k2"], SampleTransform(256))
        >>> ds[0]["image"].shape
        torch.Size([1, 256, 256])
    """

    def __init__(self, root: str | Path, ids: Sequence[str], transform: SampleTransform,
                 targets: TargetConfig | None = None):
        super().__init__(transform, targets)
        self.root = Path(root)
        self.ids = list(ids)
        self.files = image_files(self.root)  # listed once, not per item

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> Sample:
        return read_sample(self.root, self.ids[index], self.files)


class PhantomDataset(SampleDataset):
    """Synthetic phantoms ``generate_phantom(seed, config)``, one fixed seed per index.

    The same index always gives the same phantom (augmentation still varies per epoch).
    ``cache=True`` keeps generated samples in memory (per worker process).
    """

    def __init__(self, seeds: Sequence[int], transform: SampleTransform,
                 targets: TargetConfig | None = None, config: Any = None, cache: bool = False):
        super().__init__(transform, targets)
        self.seeds = [int(s) for s in seeds]
        self.config = config
        self.cache = cache
        self._cache: dict[int, Sample] = {}

    def __len__(self) -> int:
        return len(self.seeds)

    def load(self, index: int) -> Sample:
        if index in self._cache:
            return self._cache[index]
        from datamodules.phantoms import generate_phantom  # lazy: heavy, optional

        sample = generate_phantom(self.seeds[index], self.config)
        if self.cache:
            self._cache[index] = sample
        return sample


class InMemoryDataset(SampleDataset):
    """Samples already in memory (tests, notebooks, a pre-generated phantom list)."""

    def __init__(self, samples: Sequence[Sample], transform: SampleTransform,
                 targets: TargetConfig | None = None):
        super().__init__(transform, targets)
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Sample:
        return self.samples[index]
