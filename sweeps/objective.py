"""The sweep objective: train one model with a trial's parameters, return its validation score.

Lower is better. Default: the median landmark error (over all landmarks of all validation
images) in mm when the validation data has pixel spacing (the mm metric is logged and finite),
else in px; `lm_mm_key`/`lm_px_key` select other logged metrics (e.g. the means). `weight_iou > 0`
adds
`weight_iou * (1 - mean IoU)` to `weight_lm * landmark error`.

A trial that raises, or whose objective is NaN/inf, ends FAILED with its reason in the user
attribute `fail_reason`; the study goes on (the runner passes `catch=(Exception,)`).
Ctrl-C (with an `InterruptGuard`) ends the running trial FAILED with reason "interrupted" (a NaN
value: Optuna logs one line, no traceback) and queues its parameters again (they run first when
the study continues); the runner then stops. A trial whose training had finished keeps its value.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from sweeps.guards import InterruptGuard
from sweeps.pruning import OptunaPruning
from sweeps.space import SearchSpace, cli_overrides

FitFn = Callable[..., Any]  # lightning_modules.train.fit(args, callbacks=...) -> FitResult


@dataclass(frozen=True)
class ObjectiveSpec:
    """How validation metrics become the single number Optuna minimises.

    Args:
        unit: "auto" (mm when logged and finite, else px), "mm" or "px".
        weight_lm: weight of the median landmark error.
        weight_iou: weight of (1 - mean IoU); 0 leaves segmentation out.
        lm_mm_key, lm_px_key, iou_key: metric names logged by the LightningModule.
        health_keys: losses that must stay finite; a NaN/inf one means the run diverged
            (landmark errors stay finite then: the arg max of a NaN heat-map is pixel 0).
    """

    unit: str = "auto"
    weight_lm: float = 1.0
    weight_iou: float = 0.0
    lm_mm_key: str = "val/lm_err_mm_median"
    lm_px_key: str = "val/lm_err_px_median"
    iou_key: str = "val/iou_mean"
    health_keys: tuple[str, ...] = ("val/loss", "train/loss", "train/loss_epoch")

    def __post_init__(self) -> None:
        if self.unit not in ("auto", "mm", "px"):
            raise ValueError(f"objective unit {self.unit!r} must be auto, mm or px")
        if self.weight_lm < 0 or self.weight_iou < 0 or self.weight_lm + self.weight_iou == 0:
            raise ValueError("objective weights must be >= 0 and not both 0 "
                             f"(weight_lm={self.weight_lm}, weight_iou={self.weight_iou})")

    def landmark_key(self, metrics: Mapping[str, float]) -> str:
        """The landmark metric used: mm when known (auto), else px."""
        if self.unit == "mm":
            return self.lm_mm_key
        if self.unit == "px":
            return self.lm_px_key
        mm = metrics.get(self.lm_mm_key)
        return self.lm_mm_key if mm is not None and math.isfinite(mm) else self.lm_px_key

    def divergence(self, metrics: Mapping[str, float]) -> str | None:
        """Why the run diverged (non-finite loss or objective), or None when healthy."""
        bad = [f"{k}={metrics[k]}" for k in self.health_keys
               if k in metrics and not math.isfinite(metrics[k])]
        if not bad:
            try:
                value = self(metrics)
            except KeyError:
                return None
            if not math.isfinite(value):
                bad = [f"objective={value}"]
        return ", ".join(bad) or None

    def describe(self) -> str:
        """Human-readable formula, e.g. `1*(val/lm_err_mm_median if finite else ...)`."""
        lm = {"mm": self.lm_mm_key, "px": self.lm_px_key,
              "auto": f"{self.lm_mm_key} if finite else {self.lm_px_key}"}[self.unit]
        text = f"{self.weight_lm:g}*({lm})"
        if self.weight_iou:
            text += f" + {self.weight_iou:g}*(1 - {self.iou_key})"
        return text

    def __call__(self, metrics: Mapping[str, float]) -> float:
        """Objective value from one validation's metrics; NaN propagates (caller fails it)."""
        value = 0.0
        if self.weight_lm:
            key = self.landmark_key(metrics)
            if key not in metrics:
                raise KeyError(key)
            value += self.weight_lm * float(metrics[key])
        if self.weight_iou:
            if self.iou_key not in metrics:
                raise KeyError(self.iou_key)
            value += self.weight_iou * (1.0 - float(metrics[self.iou_key]))
        return value


def _default_fit() -> FitFn:
    from lightning_modules.train import fit  # late: keeps `sweeps.report` free of torch

    return fit


def _finish_wandb() -> None:
    """Close a W&B run a crashed trial left open, so the next trial starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1)


class TrainObjective:
    """Optuna objective training `lightning_modules.train.fit` once per trial.

    Args:
        base_args: training arguments shared by all trials, e.g. `["--config", "x.yaml"]`.
        study_name: names the W&B group; each trial's W&B run is `<study>-t<number>`.
        trials_dir: each trial's run folder is `trials_dir/t<number>`.
        space: sampled ranges.
        spec: objective formula.
        trial_args: maps (trial number, run folder, study name) to extra training arguments
            (run folder, W&B group/name); see `sweeps.run.trial_args`.
        fit: the training entry (default `lightning_modules.train.fit`).
        interrupt: the worker's Ctrl-C handler (None: Ctrl-C is not handled here).
    """

    def __init__(
        self,
        base_args: Sequence[str],
        study_name: str,
        trials_dir: Path,
        space: SearchSpace,
        spec: ObjectiveSpec,
        trial_args: Callable[[int, Path, str], list[str]],
        fit: FitFn | None = None,
        interrupt: InterruptGuard | None = None,
    ) -> None:
        self.base_args = list(base_args)
        self.study_name = study_name
        self.trials_dir = Path(trials_dir)
        self.space = space
        self.spec = spec
        self.trial_args = trial_args
        self.fit = fit
        self.interrupt = interrupt or InterruptGuard()  # not installed: never requested

    def __call__(self, trial: optuna.Trial) -> float:
        params = self.space.suggest(trial)
        run_dir = self.trials_dir / f"t{trial.number:04d}"
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("run_dir", str(run_dir))
        args = (self.base_args + cli_overrides(params)
                + self.trial_args(trial.number, run_dir, self.study_name))
        pruning = OptunaPruning(trial, self.spec, self.spec.divergence)
        fit = self.fit or _default_fit()
        if self.interrupt.requested:  # Ctrl-C between trials: do not start this one
            return self._interrupted(trial, "before training")
        try:
            try:
                with self.interrupt.training():
                    result = fit(args, callbacks=[pruning])
            except (SystemExit, KeyboardInterrupt, Exception) as err:
                if not self.interrupt.requested:
                    if isinstance(err, SystemExit):
                        # LightningCLI/jsonargparse exit on a bad option; Optuna does not catch
                        # SystemExit and would leave the trial RUNNING: make it a failure.
                        raise RuntimeError(f"training exited with status {err.code} (invalid "
                                           "arguments? see the message above)") from err
                    raise
                # Ctrl-C: training raises TrainingInterrupted after Lightning's graceful
                # shutdown, or a DataLoader worker hit by the same signal raises
                if pruning.finished and pruning.pruned_at is None and pruning.reported:
                    # training had finished (Ctrl-C in its teardown): scored as usual
                    return self._score(trial, pruning, pruning.last_metrics,
                                       max(pruning.reported) + 1)
                epoch = max(pruning.reported, default=-1) + 1
                trial.set_user_attr("epochs", epoch)  # (completed ones: the table showed none)
                return self._interrupted(trial, f"in epoch {epoch}")
        except Exception as err:
            tb = traceback.format_exception_only(type(err), err)[-1].strip()
            trial.set_user_attr("fail_reason", f"training raised {tb}"[:1000])
            raise
        finally:
            _finish_wandb()
        trial.set_user_attr("run_dir", str(result.run_dir))
        return self._score(trial, pruning, dict(result.metrics), int(result.trainer.current_epoch))

    def _score(self, trial: optuna.Trial, pruning: OptunaPruning, last: dict[str, Any],
               epochs: int) -> float:
        """The trial's value from its last validation metrics ``last``, recorded with them;
        NaN (FAIL) when it diverged; raises TrialPruned when the pruner stopped it."""
        metrics = {k: float(v) for k, v in last.items()}
        trial.set_user_attr("metrics", {k: v for k, v in metrics.items() if math.isfinite(v)})
        trial.set_user_attr("epochs", epochs)
        if pruning.diverged is not None:
            trial.set_user_attr("fail_reason", f"diverged: {pruning.diverged}")
            return float("nan")
        if pruning.pruned_at is not None:
            value = pruning.reported[pruning.pruned_at]
            raise optuna.TrialPruned(f"pruned at epoch {pruning.pruned_at} (objective {value:.4g})")
        diverged = self.spec.divergence(metrics)
        if diverged is not None:
            trial.set_user_attr("fail_reason", f"diverged: {diverged} after training")
            return float("nan")
        value = self.spec(metrics)
        trial.set_user_attr("objective_metric", self.spec.landmark_key(metrics))
        return value

    def _interrupted(self, trial: optuna.Trial, when: str) -> float:
        """Record the trial as interrupted (NaN: FAIL) and queue its parameters again."""
        trial.set_user_attr("fail_reason", f"interrupted (Ctrl-C) {when}")
        if trial.params:  # the next worker (or this command run again) trains them first
            trial.study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
        return float("nan")
