"""Per-epoch pruning of an Optuna trial from inside a `pytorch_lightning` Trainer.

Why our own callback and not optuna-integration's `PyTorchLightningPruningCallback`:
- the integration subclasses `lightning.pytorch.Callback`; kneeplan uses the `pytorch_lightning`
  package, and a Trainer of one package rejects callbacks of the other (mixing fails);
- its DDP mode pickles the trial to the workers and needs RDB storage reachable from all ranks;
  our sweeps run one trial per process (parallelism comes from several workers sharing one
  study), so the simple rule "rank 0 reports, the decision is broadcast" is enough;
- we separate a diverged run (NaN/inf objective: the trial must end FAILED with a reason) from
  a poor one (the pruner decides: PRUNED). Feeding NaN to Optuna's pruners would prune it.
The callback never raises inside `fit` (Lightning would treat it as a crash); it stops the
trainer and the objective raises `optuna.TrialPruned` after `fit` returns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import optuna
import pytorch_lightning as pl


class OptunaPruning(pl.Callback):
    """Report the objective after every validation epoch and stop the trainer when pruned.

    Args:
        trial: the running Optuna trial.
        value_fn: maps the trainer's `callback_metrics` (floats) to the objective value.
        health_fn: maps them to a reason when the run diverged (NaN loss...), else None;
            default: the objective is not finite.

    After `fit`: `pruned_at` is the epoch whose value made the pruner stop the trial (else
    None); `diverged` holds a reason when the objective was NaN/inf (else None); `reported`
    maps epoch -> value reported to Optuna; `finished` is True once the fit loop ended
    normally (its last epoch reported), and `last_metrics` holds the last validation's metrics,
    so that a trial interrupted after training (Ctrl-C during teardown) keeps its value.
    """

    def __init__(
        self,
        trial: optuna.Trial,
        value_fn: Callable[[Mapping[str, float]], float],
        health_fn: Callable[[Mapping[str, float]], str | None] | None = None,
    ) -> None:
        super().__init__()
        self.trial = trial
        self.value_fn = value_fn
        self.health_fn = health_fn
        self.pruned_at: int | None = None
        self.diverged: str | None = None
        self.reported: dict[int, float] = {}
        self.finished = False
        self.last_metrics: dict[str, float] = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.finished = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = int(trainer.current_epoch)
        stop = False
        if trainer.is_global_zero:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                       if getattr(v, "numel", lambda: 1)() == 1}
            self.last_metrics = metrics
            try:
                value = float(self.value_fn(metrics))
            except KeyError as err:
                raise KeyError(f"pruning: objective metric {err} missing at epoch {epoch}; "
                               f"logged metrics: {sorted(metrics)}") from None
            reason = self.health_fn(metrics) if self.health_fn is not None else None
            if reason is None and not math.isfinite(value):
                reason = f"objective={value}"
            if reason is not None:
                self.diverged = f"{reason} at epoch {epoch}"
                stop = True
            else:
                self.trial.report(value, step=epoch)
                self.reported[epoch] = value
                # Pruning after the last epoch would throw away a finished result.
                last = trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch + 1
                if not last and self.trial.should_prune():
                    self.pruned_at = epoch
                    stop = True
        # Under DDP every rank must stop together; only rank 0 holds the decision.
        stop = bool(trainer.strategy.broadcast(stop, src=0))
        if stop:
            trainer.should_stop = True
