"""Validation pictures (issue 14): column titles, a legend, the epoch and its metrics."""

from __future__ import annotations

import numpy as np
import torch

from datamodules.sample import BONES
from lightning_modules.callbacks import BONE_RGB, ROI_RGB, validation_picture


def _batch(n: int = 2, s: int = 64) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(0)
    seg = torch.zeros(n, 4, s, s)
    for c in range(4):
        seg[:, c, 8 + 10 * c: 16 + 10 * c, 10:50] = 1
    batch = {"image": torch.rand(n, 1, s, s, generator=g), "seg": seg,
             "landmarks": torch.tensor([[[20.0, 20.0], [40.0, 30.0]]] * n),
             "lm_visible": torch.ones(n, 2, dtype=torch.bool), "roi": torch.zeros(n, 1, s, s)}
    lm = torch.zeros(n, 2, s, s)
    lm[:, 0, 20, 20] = lm[:, 1, 30, 40] = 1
    return batch, {"seg": seg.clone(), "lm": lm, "roi": torch.zeros(n, 1, s, s)}


def _has(img: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool(np.all(img == np.array(rgb, np.uint8), axis=2).any())


def test_picture_has_header_titles_and_legend():
    batch, maps = _batch()
    plain = validation_picture(batch, maps, 2)
    pic = validation_picture(batch, maps, 2, epoch=3,
                             metrics={"val/lm_err_px": 12.5, "val/iou_mean": 0.8})
    grid_h = 2 * 256 + 4  # two 64 px images at 4x, one 4 px gap
    assert pic.shape[1] == 2 * 256 + 4
    assert pic.shape[0] > plain.shape[0] > grid_h  # header and legend; the metrics add a line
    # column titles: dark text in the left and in the right half of the header's last line
    header = plain[: plain.shape[0] - grid_h]
    dark = header.min(axis=2) < 100
    assert dark[:, :256].any() and dark[:, 260:].any()
    # the legend (below the grid) shows every bone's colour and the ROI's as swatches
    legend = pic[-60:]
    for bone in BONES:
        assert _has(legend, BONE_RGB[bone]), bone
    assert _has(legend, ROI_RGB)
