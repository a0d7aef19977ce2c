"""Training callbacks: GradNorm weight curves (PNG), validation pictures, metric history, config.

* :class:`GradNormHistory` records every hourglass's weights each step (kept in checkpoints, so
  a resumed run's curves are complete) and writes ``gradnorm_weights.png`` (paper Fig. 4 style,
  one panel per hourglass) into the run folder when training ends.
* :class:`ValidationImages` draws a few validation images with true (left) and predicted (right)
  bone masks, landmarks and the cortex-line ROI (column titles, a colour legend, the epoch and
  its metrics), saves them as PNG in ``val_images/`` and sends them to W&B when a
  ``WandbLogger`` is attached.
* :class:`MetricsHistory` keeps the first and the latest validation metrics (for printing and
  for :func:`lightning_modules.train.fit`).
* :class:`ConfigInCheckpoint` stores the resolved YAML config in every checkpoint and, on resume,
  checks the saved optimiser state against the network's own fresh optimisers.

A restored history (``load_state_dict``) of the wrong type or shape is refused (``ValueError``,
one ``cannot resume`` line through ``train._refuse_restore_errors``) before training starts: it
crashed the table or the plot after the last epoch (red-team round 6).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from datamodules.colours import BONE_RGB, LANDMARK_RGB, TASK_COLOURS
from datamodules.colours import CORTEX_RGB as ROI_RGB
from datamodules.path_limits import replace_link
from datamodules.sample import BONES, LANDMARKS
from lightning_modules.training_state import (
    MAX_RECORDED_IDS,
    TRAINING_IDS_KEY,
    fresh_optimizers,
    gradnorm_history_problem,
    metrics_history_problem,
    optimizer_state_problem,
)


def plot_gradnorm_weights(
    steps: np.ndarray, weights: np.ndarray, task_names: list[str], path: str | Path,
    title: str = "GradNorm task weights per hourglass",
) -> Path:
    """Write Fig.-4-style curves: one panel per hourglass, one line per task.

    Args:
        steps: ``(N,)`` global steps.
        weights: ``(N, L, T)`` weights.
        task_names: ``T`` names.
        path: output PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 3 or weights.shape[0] != len(steps) or weights.shape[2] != len(task_names):
        raise ValueError(
            f"callbacks.py: weights {weights.shape} do not match {len(steps)} steps and tasks "
            f"{task_names}"
        )
    num_stacks = weights.shape[1]
    fig, axes = plt.subplots(1, num_stacks, figsize=(3.6 * num_stacks, 3.5), sharey=True,
                             squeeze=False)
    top = max(float(weights.max()) * 1.05, 1.5) if weights.size else 3.0
    for l, ax in enumerate(axes[0]):
        for t, name in enumerate(task_names):
            ax.plot(steps, weights[:, l, t], label=f"w_{name}",
                    color=TASK_COLOURS.get(name), lw=1.2)
        ax.axhline(1.0, color="0.6", lw=0.6, ls=":")
        ax.set_title(f"hourglass {l + 1} (hg{l})")
        ax.set_xlabel("step")
        ax.set_ylim(0.0, top)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("weight")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(task_names), fontsize=9,
               frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(replace_link(path), dpi=110)
    plt.close(fig)
    return path


class GradNormHistory(pl.Callback):
    """Record ``pl_module.gradnorm.weights`` after every training batch; plot at the end.

    Args:
        run_dir: folder that receives ``gradnorm_weights.png`` (None: ``trainer.default_root_dir``).
        every_n_steps: record every n-th step (1 = all).
    """

    def __init__(self, run_dir: str | Path | None = None, every_n_steps: int = 1) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.every_n_steps = max(int(every_n_steps), 1)
        self.steps: list[int] = []
        self.weights: list[torch.Tensor] = []
        self._shape: tuple[int, ...] | None = None  # the network's (hourglasses, tasks)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 or step == 1:
            self.steps.append(step)
            self.weights.append(pl_module.gradnorm.weights.detach().float().cpu().clone())

    def state_dict(self) -> dict[str, Any]:
        stacked = torch.stack(self.weights) if self.weights else torch.zeros(0)
        return {"steps": torch.tensor(self.steps, dtype=torch.int64), "weights": stacked}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        """Note the network's ``(hourglasses, tasks)``: the restored weights must have them."""
        gradnorm = getattr(pl_module, "gradnorm", None)
        self._shape = tuple(gradnorm.weights.shape) if gradnorm is not None else None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history; one the plot cannot draw is refused (``ValueError``)."""
        if problem := gradnorm_history_problem(state_dict, self._shape):
            raise ValueError(problem)
        self.steps = [int(s) for s in state_dict["steps"].tolist()]
        w = state_dict["weights"]
        self.weights = list(w.unbind(0)) if w.numel() else []

    def output_path(self, trainer: pl.Trainer) -> Path:
        return Path(self.run_dir or trainer.default_root_dir) / "gradnorm_weights.png"

    @rank_zero_only
    def write_png(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path | None:
        if not self.weights:
            return None
        return plot_gradnorm_weights(
            np.asarray(self.steps), torch.stack(self.weights).numpy(),
            list(pl_module.gradnorm.task_names), self.output_path(trainer),
        )

    def on_train_end(self, trainer, pl_module) -> None:
        self.write_png(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.write_png(trainer, pl_module)


def _overlay(image: np.ndarray, seg: np.ndarray, lm_xy: np.ndarray, lm_ok: np.ndarray,
             roi: np.ndarray | None, scale: int) -> np.ndarray:
    """RGB picture: image, bone masks (tinted fill + outline), ROI (cortex colour), landmarks."""
    img = np.clip(image, 0.0, 1.0)
    rgb = np.repeat((img * 255).astype(np.uint8)[..., None], 3, axis=2)
    side = img.shape[0] * scale
    rgb = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_NEAREST).astype(np.float32)
    if roi is not None:
        r = cv2.resize(np.clip(roi, 0, 1).astype(np.float32), (side, side))[..., None]
        rgb = rgb * (1 - 0.5 * r) + 0.5 * r * np.array(ROI_RGB, np.float32)
    for c, name in enumerate(BONES):
        m = cv2.resize(seg[c].astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST)
        colour = np.array(BONE_RGB[name], np.float32)
        rgb[m > 0] = 0.75 * rgb[m > 0] + 0.25 * colour
    out = np.ascontiguousarray(np.clip(rgb, 0, 255).astype(np.uint8))
    for c, name in enumerate(BONES):
        m = cv2.resize(seg[c].astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, BONE_RGB[name], 1)
    for k, name in enumerate(LANDMARKS):
        if not lm_ok[k]:
            continue
        x, y = ((lm_xy[k] + 0.5) * scale - 0.5).round().astype(int)
        cv2.drawMarker(out, (int(x), int(y)), LANDMARK_RGB[name], cv2.MARKER_CROSS, 12, 2)
    return out


# Metrics written in a validation picture's header, in this order (when logged).
PICTURE_METRICS = ("val/loss", "val/lm_err_px", "val/lm_err_mm", "val/iou_mean")
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _put(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.5,
         colour: tuple[int, int, int] = (0, 0, 0), thick: int = 1) -> int:
    """Text at ``org`` (baseline left); returns its width in px."""
    cv2.putText(img, text, org, _FONT, scale, colour, thick, cv2.LINE_AA)
    return cv2.getTextSize(text, _FONT, scale, thick)[0][0]


def _legend_band(width: int) -> np.ndarray:
    """White band: a swatch and name per bone, landmark (cross) and the ROI, wrapped to rows."""
    entries = [(name, BONE_RGB[name], "fill") for name in BONES]
    entries += [(name, LANDMARK_RGB[name], "cross") for name in LANDMARKS]
    entries.append(("cortex ROI", ROI_RGB, "fill"))
    row_h, x, y = 22, 6, 16
    rows = [[]]
    for name, colour, kind in entries:  # lay out first, to size the band
        w = 18 + cv2.getTextSize(name, _FONT, 0.45, 1)[0][0] + 14
        if x + w > width and rows[-1]:
            rows.append([])
            x = 6
        rows[-1].append((x, name, colour, kind))
        x += w
    band = np.full((row_h * len(rows) + 6, width, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        y = 16 + r * row_h
        for x, name, colour, kind in row:
            if kind == "fill":
                cv2.rectangle(band, (x, y - 11), (x + 12, y + 1), colour, -1)
            else:  # outlined: p_tmc's white cross was invisible on the white band
                cv2.drawMarker(band, (x + 6, y - 5), (0, 0, 0), cv2.MARKER_CROSS, 14, 4)
                cv2.drawMarker(band, (x + 6, y - 5), colour, cv2.MARKER_CROSS, 12, 2)
            _put(band, name, (x + 18, y), 0.45, (0, 0, 0))
    return band


def _header(width: int, col_w: int, gap: int, epoch: int | None,
            metrics: dict[str, float] | None) -> np.ndarray:
    """White band: the epoch and its metrics, then the column titles truth / prediction."""
    parts = [] if epoch is None else [f"epoch {epoch} validation:"]
    for k in PICTURE_METRICS:
        v = (metrics or {}).get(k)
        if v is not None and math.isfinite(v):
            parts.append(f"{k.removeprefix('val/')} {v:.3g}")
    lines: list[str] = []
    for part in parts:  # wrap " | "-joined parts to the width
        sep = " " if lines and lines[-1].endswith(":") else " | "
        trial = f"{lines[-1]}{sep}{part}" if lines else part
        if lines and cv2.getTextSize(trial, _FONT, 0.5, 1)[0][0] > width - 12:
            lines.append(part)
        else:
            lines[-1:] = [trial]
    band = np.full((22 * len(lines) + 30, width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        _put(band, line, (6, 18 + 22 * i), 0.5)
    y = 22 * len(lines) + 22
    for c, title in enumerate(("truth", "prediction")):
        tw = cv2.getTextSize(title, _FONT, 0.6, 2)[0][0]
        _put(band, title, (c * (col_w + gap) + (col_w - tw) // 2, y), 0.6, (0, 0, 0), 2)
    return band


def validation_picture(batch: dict, maps: dict[str, torch.Tensor], n: int = 4,
                       epoch: int | None = None,
                       metrics: dict[str, float] | None = None) -> np.ndarray:
    """``n`` rows of truth (left) vs prediction (right): masks, landmarks and the cortex ROI.

    A header names the columns and gives the epoch and its ``val/`` metrics; a legend below
    names the colours.

    Args:
        batch: a validation batch (docs/ARCHITECTURE.md keys).
        maps: ``predict_maps`` output for ``batch["image"][:n]`` (seg probabilities).
        epoch: epoch number shown in the header (None: not shown).
        metrics: validation metrics shown in the header (``PICTURE_METRICS``).
    """
    from lightning_modules.metrics import heatmap_argmax

    n = min(n, batch["image"].shape[0])
    s = batch["image"].shape[-1]
    scale = max(1, 256 // s)
    pred_xy = heatmap_argmax(maps["lm"][:n].float()).cpu().numpy()
    rows = []
    gap = 4
    for i in range(n):
        image = batch["image"][i, 0].float().cpu().numpy()
        true = _overlay(image, batch["seg"][i].cpu().numpy() > 0.5,
                        batch["landmarks"][i].float().cpu().numpy(),
                        batch["lm_visible"][i].cpu().numpy(),
                        batch["roi"][i, 0].float().cpu().numpy(), scale)
        pred = _overlay(image, maps["seg"][i].float().cpu().numpy() > 0.5, pred_xy[i],
                        np.ones(len(LANDMARKS), bool),
                        maps["roi"][i, 0].float().cpu().numpy(), scale)
        sep = np.full((true.shape[0], gap, 3), 255, np.uint8)
        rows.append(np.concatenate([true, sep, pred], axis=1))
        rows.append(np.full((gap, rows[-1].shape[1], 3), 255, np.uint8))
    grid = np.concatenate(rows[:-1], axis=0)
    width, col_w = grid.shape[1], (grid.shape[1] - gap) // 2
    return np.concatenate([_header(width, col_w, gap, epoch, metrics), grid,
                           _legend_band(width)], axis=0)


class ValidationImages(pl.Callback):
    """Save (and log to W&B) pictures of the first validation batch every ``every_n_epochs``.

    The maps are taken at the first batch; the picture is drawn when validation ends, so its
    header carries that epoch's metrics.

    Args:
        run_dir: run folder; pictures go to ``<run_dir>/val_images/epoch_XXX.png``.
        num_images: images per picture.
        every_n_epochs: how often.
    """

    def __init__(self, run_dir: str | Path | None = None, num_images: int = 4,
                 every_n_epochs: int = 1) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.num_images = num_images
        self.every_n_epochs = max(int(every_n_epochs), 1)
        self._pending: tuple[dict, dict] | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0) -> None:
        if (batch_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero
                or trainer.current_epoch % self.every_n_epochs):
            return
        n = min(self.num_images, batch["image"].shape[0])
        maps = pl_module.predict_maps(batch["image"][:n])
        keys = ("image", "seg", "landmarks", "lm_visible", "roi")
        self._pending = ({k: batch[k][:n].detach().cpu() for k in keys},
                         {k: v.detach().cpu() for k, v in maps.items()})

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._pending is None:
            return
        batch, maps = self._pending
        self._pending = None
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith("val/") and getattr(v, "numel", lambda: 1)() == 1}
        picture = validation_picture(batch, maps, batch["image"].shape[0],
                                     epoch=trainer.current_epoch, metrics=metrics)
        folder = Path(self.run_dir or trainer.default_root_dir) / "val_images"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"epoch_{trainer.current_epoch:03d}.png"
        cv2.imwrite(str(replace_link(path)), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("val/images", [picture], step=trainer.global_step,
                                 caption=["left: truth, right: prediction"])


class MetricsHistory(pl.Callback):
    """First and latest validation metrics (``val/...`` floats), sanity check excluded."""

    def __init__(self) -> None:
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items()
                  if k.startswith("val/")}
        if not self.first:
            self.first = values
        self.last = values

    def state_dict(self) -> dict[str, Any]:
        return {"first": dict(self.first)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the first metrics; values that are not numbers are refused (``ValueError``)."""
        if problem := metrics_history_problem(state_dict):
            raise ValueError(problem)
        self.first = {k: float(v) for k, v in state_dict.get("first", {}).items()}


class ConfigInCheckpoint(pl.Callback):
    """Store the resolved YAML config (a string) in every checkpoint as ``kneeplan_config``."""

    def __init__(self, config_yaml: str) -> None:
        self.config_yaml = config_yaml

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint["kneeplan_config"] = self.config_yaml

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        """Compare the saved optimiser state with the network's own fresh optimisers (group
        switches, parameter ids and counts, running averages of each parameter's shape) before
        Lightning restores it: one that loads but breaks the first step is refused
        (``ValueError``) while nothing has trained. ``train.resume_checkpoint`` has checked it
        against RMSprop's defaults already; only here do the network's optimisers exist."""
        states = checkpoint.get("optimizer_states")
        fresh = fresh_optimizers(pl_module) if states is not None else None
        if fresh is not None and (problem := optimizer_state_problem(states, fresh)):
            raise ValueError(problem)


class TrainingIdsInCheckpoint(pl.Callback):
    """Store the ids of the training images of a dataset folder in every checkpoint (``evaluate
    --held-out`` leaves exactly these out: rebuilding the split from the folder as it is later
    scored images added after training, or moved by an edited split file, as held out)."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        train_set = getattr(getattr(trainer, "datamodule", None), "train_set", None)
        ids = getattr(train_set, "ids", None)  # a dataset folder's (phantoms have none)
        if isinstance(ids, list) and len(ids) <= MAX_RECORDED_IDS:
            checkpoint[TRAINING_IDS_KEY] = [str(i) for i in ids]


def _fmt(v: float) -> str:
    return f"{v:12.4f}" if math.isfinite(v) else f"{'nan':>12}"


def format_metric_comparison(first: dict[str, float], last: dict[str, float]) -> str:
    """Table of the first vs the last validation metrics (keys in both)."""
    keys = [k for k in sorted(first) if k in last]
    lines = [f"{'metric':<28}{'first':>12}{'last':>12}"]
    for k in keys:
        lines.append(f"{k:<28}{_fmt(first[k])}{_fmt(last[k])}")
    return "\n".join(lines)

