"""Training progress for a terminal (Lightning's bar) or for a log file (one line per event).

Lightning's tqdm bar redraws itself with carriage returns; redirected to a file
(``make train > log.txt``, SLURM, nohup, CI) it leaves thousands of partial lines.
:func:`progress_callback` keeps the bar on a terminal and otherwise returns
:class:`LineProgress`, which prints one plain line every ``every_n_steps`` training steps and
one per epoch (with its validation metrics), never a carriage return.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import IO, Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar

from datamodules.progress import format_duration, use_bar

STEPS_ENV = "KNEEPLAN_PROGRESS_STEPS"  # overrides the default steps between lines
DEFAULT_EVERY_N_STEPS = 50
# Metrics shown in an epoch line, in this order (others are in metrics.csv).
EPOCH_KEYS = ("train/loss_epoch", "val/loss", "val/lm_err_px", "val/lm_err_mm", "val/iou_mean")


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.4g}"


class LineProgress(ProgressBar):
    """Plain-line progress for logs: ``every_n_steps`` steps and every epoch get one line.

    Args:
        every_n_steps: training steps between step lines (0: epoch lines only).
        stream: where to print (default stdout, like Lightning's bar).
    """

    def __init__(self, every_n_steps: int = DEFAULT_EVERY_N_STEPS,
                 stream: IO[str] | None = None) -> None:
        super().__init__()
        self.every_n_steps = max(int(every_n_steps), 0)
        self.stream = stream
        self._enabled = True
        self._t_fit = self._t_epoch = time.perf_counter()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self._enabled:
            kwargs.setdefault("file", self.stream or sys.stdout)
            kwargs.setdefault("flush", True)
            print(*args, **kwargs)

    def _epochs(self, trainer: pl.Trainer) -> str:
        """``3 (4/10)``: the epoch number as in metrics.csv, checkpoint and picture names
        (from 0), then how far along the run is."""
        e, m = trainer.current_epoch, trainer.max_epochs
        return f"{e} ({e + 1}/{m})" if m is not None and m > 0 else str(e)

    def on_train_start(self, trainer, pl_module) -> None:
        self._t_fit = time.perf_counter()
        total = self.total_train_batches
        n = "?" if not math.isfinite(total) else int(total)
        e = trainer.max_epochs
        span = (f"{e} epoch{'' if e == 1 else 's'}" if e is not None and e >= 0
                else "epochs until the time limit (max_time)")  # (max_epochs -1: "-1 epochs")
        self.print(f"training: {span} of {n} steps "
                   f"(progress lines: no terminal; every {self.every_n_steps} steps and epoch)")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t_epoch = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        done = batch_idx + 1
        if not self.every_n_steps or done % self.every_n_steps:
            return
        total = self.total_train_batches
        elapsed = time.perf_counter() - self._t_epoch
        of = f"/{int(total)}" if math.isfinite(total) else ""
        # the bar's step metrics (loss, GradNorm weights); val/ ones go in the epoch line
        shown = [f"{k} {_fmt(float(v)) if isinstance(v, float | int) else v}"
                 for k, v in self.get_metrics(trainer, pl_module).items()
                 if k != "v_num" and not k.startswith("val/")]
        self.print(f"epoch {self._epochs(trainer)} step {done}{of}: " + ", ".join(
            [*shown, f"{elapsed / done:.2f} s/step"]))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # runs after the epoch's validation, so the val/ metrics are this epoch's
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if getattr(v, "numel", lambda: 1)() == 1}
        shown = [f"{k} {_fmt(metrics[k])}" for k in EPOCH_KEYS if k in metrics]
        took = format_duration(time.perf_counter() - self._t_epoch)
        self.print(f"epoch {self._epochs(trainer)} done in {took}"
                   + (": " + ", ".join(shown) if shown else ""))

    def on_train_end(self, trainer, pl_module) -> None:
        self.print(f"training finished in {format_duration(time.perf_counter() - self._t_fit)}")

    def on_sanity_check_end(self, trainer, pl_module) -> None:
        self.print("sanity check done")


def progress_callback(trainer_config: dict[str, Any] | None = None,
                      callbacks: list | None = None,
                      stream: IO[str] | None = None) -> list[pl.Callback]:
    """The progress callback for this run: ``[]``, Lightning's bar, or :class:`LineProgress`.

    Args:
        trainer_config: Trainer arguments; ``enable_progress_bar=False`` means no progress,
            and a progress bar among its ``callbacks`` is kept (``[]``).
        callbacks: other callbacks already chosen (a progress bar among them is kept: ``[]``).
        stream: the stream progress goes to (default stdout; decides terminal or not).
    """
    cfg = trainer_config or {}
    given = cfg.get("callbacks") or []
    given = list(given) if isinstance(given, list | tuple) else [given]
    if cfg.get("enable_progress_bar") is False or any(
            isinstance(c, ProgressBar) for c in [*given, *(callbacks or [])]):
        return []
    if use_bar(stream):
        return [TQDMProgressBar()]
    every = os.environ.get(STEPS_ENV, "")
    return [LineProgress(int(every) if every.isdigit() else DEFAULT_EVERY_N_STEPS, stream)]
