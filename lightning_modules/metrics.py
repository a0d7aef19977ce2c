"""Validation metrics: per-bone IoU and landmark error (network px, original px, mm).

Landmarks are decoded by the arg max of each predicted heat-map (paper), through the run's
``geometry.heatmaps.HeatmapCodec`` (heat-map -> input frame). Errors are measured
between the decoded and the true landmark in the network frame, then mapped back: the pad offset
cancels in a difference, so an error vector ``(dx, dy)`` in network pixels is
``(dx, dy) / scale`` original pixels with ``scale = size / max(orig_h, orig_w)``
(``geometry.frame.PadResize.scale``), and
``sqrt((dx / scale * col_mm)^2 + (dy / scale * row_mm)^2)`` mm where the batch's ``spacing``
``(row_mm, col_mm)`` is known (NaN otherwise). Landmarks that left the image (``lm_visible``
False) are not scored.

All accumulators are torchmetrics objects, so they sync over ranks under DDP on ``compute()``.

Example:
    >>> m = ValidationMetrics()
    >>> m.update(final, batch)      # final: {"seg": (B,4,S,S) logits, "lm": (B,2,S,S), ...}
    >>> m.compute()["val/lm_err_px"]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchmetrics import CatMetric, MeanMetric
from torchmetrics.classification import MultilabelJaccardIndex

from datamodules.sample import BONES, LANDMARKS
from geometry.heatmaps import HeatmapCodec


def heatmap_argmax(heatmaps: Tensor) -> Tensor:
    """(x, y) of the maximum of each heat-map: ``(B, C, H, W)`` -> ``(B, C, 2)`` float.

    Ties resolve to the first maximum in row-major order (``torch.argmax``).
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"metrics.py: heat-maps must be (B, C, H, W), got {tuple(heatmaps.shape)}")
    b, c, _, w = heatmaps.shape
    idx = heatmaps.reshape(b, c, -1).argmax(dim=-1)
    return torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], dim=-1).float()


def landmark_errors(
    pred_xy: Tensor, true_xy: Tensor, frame: dict[str, Tensor], spacing: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Euclidean landmark errors in network px, original px and mm.

    Args:
        pred_xy: ``(B, K, 2)`` predicted (x, y), network frame.
        true_xy: ``(B, K, 2)`` true (x, y), network frame.
        frame: ``PadResize`` fields as ``(B,)`` tensors (needs ``orig_h``, ``orig_w``, ``size``).
        spacing: ``(B, 2)`` ``(row_mm, col_mm)``, NaN where unknown.

    Returns:
        ``(err_net_px, err_orig_px, err_mm)``, each ``(B, K)``; ``err_mm`` is NaN where the
        spacing is unknown.
    """
    d = (pred_xy - true_xy).double()
    side = torch.maximum(frame["orig_h"], frame["orig_w"]).to(d)
    scale = frame["size"].to(d) / side  # network px per original px
    d_orig = d / scale[:, None, None]
    sp = spacing.to(d)
    d_mm = torch.stack([d_orig[..., 0] * sp[:, None, 1], d_orig[..., 1] * sp[:, None, 0]], -1)
    return d.norm(dim=-1), d_orig.norm(dim=-1), d_mm.norm(dim=-1)


class ValidationMetrics(nn.Module):
    """Accumulates IoU per bone and landmark errors over a validation epoch.

    ``compute()`` returns floats under these keys: ``val/iou/<bone>``, ``val/iou_mean``,
    ``val/lm_err_px`` (network frame), ``val/lm_err_orig_px``, ``val/lm_err_mm`` (NaN if no
    spacing was known) and per landmark ``val/lm_err_px/<name>``, ``val/lm_err_mm/<name>``.
    ``val/lm_err_px_median`` and ``val/lm_err_mm_median`` are the median over all scored
    landmarks of all images (the paper reports medians; sweeps optimise these).
    IoU is pooled over all validation pixels (torchmetrics ``MultilabelJaccardIndex``, sigmoid
    probabilities thresholded at 0.5); NaN for a bone absent from every mask and prediction.
    """

    def __init__(self, bones: tuple[str, ...] = BONES, landmarks: tuple[str, ...] = LANDMARKS,
                 codec: HeatmapCodec | None = None):
        super().__init__()
        self.codec = codec  # None: heat-maps at the input size (arg max needs no sigma)
        self.bones = tuple(bones)
        self.landmarks = tuple(landmarks)
        # a bone in no truth mask and never predicted has no IoU (NaN, as in
        # geometry.segmentation_metrics and make evaluate), not 0: a model right to find no
        # fibula scored 0 and pulled the mean down
        self.iou = MultilabelJaccardIndex(num_labels=len(bones), average="none", threshold=0.5,
                                          zero_division=float("nan"))
        self.err_px = nn.ModuleList(MeanMetric(nan_strategy="ignore") for _ in landmarks)
        self.err_orig = nn.ModuleList(MeanMetric(nan_strategy="ignore") for _ in landmarks)
        self.err_mm = nn.ModuleList(MeanMetric(nan_strategy="ignore") for _ in landmarks)
        # Every scored error, pooled over landmarks, for the medians (CatMetric syncs over ranks).
        self.all_px = CatMetric(nan_strategy="ignore")
        self.all_mm = CatMetric(nan_strategy="ignore")

    @torch.no_grad()
    def update(self, final: dict[str, Tensor], batch: dict) -> None:
        """Add one batch: ``final`` = the last hourglass's ``{"seg": logits, "lm": maps}``."""
        probs = torch.sigmoid(final["seg"].float())
        self.iou.update(probs, batch["seg"].round().long())
        lm = final["lm"].float()
        codec = self.codec or HeatmapCodec(lm.shape[-1], lm.shape[-1], 1.0)
        pred = torch.from_numpy(codec.decode(lm, "argmax")[0]).to(lm.device, torch.float32)
        e_px, e_orig, e_mm = landmark_errors(pred, batch["landmarks"].float(), batch["frame"],
                                             batch["spacing"])
        visible = batch["lm_visible"].bool()
        for k in range(len(self.landmarks)):
            vis = visible[:, k]
            if not bool(vis.any()):
                continue
            self.err_px[k].update(e_px[vis, k].float())
            self.err_orig[k].update(e_orig[vis, k].float())
            self.err_mm[k].update(e_mm[vis, k].float())
            self.all_px.update(e_px[vis, k].float())
            self.all_mm.update(e_mm[vis, k].float())

    def compute(self) -> dict[str, float]:
        """Epoch values (synced over ranks); a landmark never visible gives NaN."""
        out: dict[str, float] = {}
        iou = self.iou.compute()
        for name, v in zip(self.bones, iou.tolist(), strict=True):
            out[f"val/iou/{name}"] = v
        out["val/iou_mean"] = float(iou.nanmean())  # over the bones that were there to find
        groups = (("lm_err_px", self.err_px), ("lm_err_orig_px", self.err_orig),
                  ("lm_err_mm", self.err_mm))
        for key, metrics in groups:
            vals = [_safe_compute(m) for m in metrics]
            for name, v in zip(self.landmarks, vals, strict=True):
                if key != "lm_err_orig_px":
                    out[f"val/{key}/{name}"] = v
            finite = [v for v in vals if math.isfinite(v)]
            out[f"val/{key}"] = sum(finite) / len(finite) if finite else math.nan
        out["val/lm_err_px_median"] = _median(self.all_px)
        out["val/lm_err_mm_median"] = _median(self.all_mm)
        return out

    def reset(self) -> None:
        """Clear all accumulators (call after ``compute`` at epoch end)."""
        self.iou.reset()
        for group in (self.err_px, self.err_orig, self.err_mm):
            for m in group:
                m.reset()
        self.all_px.reset()
        self.all_mm.reset()


def _safe_compute(metric: MeanMetric) -> float:
    """Mean value, NaN when nothing (finite) was added."""
    if float(metric.weight) == 0.0 and not _distributed():
        return math.nan
    v = float(metric.compute())
    return v if math.isfinite(v) else math.nan


def _median(metric: CatMetric) -> float:
    """Median of the finite values collected, NaN when there are none."""
    if not metric.value and not _distributed():
        return math.nan
    values = metric.compute()
    values = values[torch.isfinite(values)] if values.numel() else values
    # quantile interpolates like numpy.median (torch.median takes the lower middle value).
    return float(torch.quantile(values.double(), 0.5)) if values.numel() else math.nan


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()
