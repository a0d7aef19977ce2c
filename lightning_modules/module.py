"""LightningModule: multi-task stacked hourglass + per-hourglass GradNorm, manual optimisation.

One training step (paper; docs/ARCHITECTURE.md, "Training step"):

1. forward all hourglasses, task losses ``(L, T)`` (deep supervision);
2. one ``manual_backward`` of ``sum_l sum_t w_t^l L_t^l`` (weights constant) gives the network
   gradients; ``GradNorm.backward_fused`` runs it and, from the network's GradNorm taps during
   that backward, sets the gradient of the weights ``w^l`` (closed form, gradnorm.py);
3. the network's RMSProp steps (optionally after gradient clipping);
4. the weights' own RMSProp steps, then ``renormalise`` (each ``w^l`` sums to ``T``).

``trainer.global_step`` counts batches: under manual optimisation Lightning counts every
``LightningOptimizer.step()``, so the GradNorm optimiser is stepped through the raw torch
optimiser (``opt.optimizer.step()``) and only the network's step is counted.

The network's learning rate is halved every ``lr_step_epochs`` epochs by a ``StepLR`` that is
brought up to date at the start of every training epoch (``last_epoch == current_epoch``), which
is the same as stepping it at the end of each epoch but also stays right when a run is resumed
from a checkpoint written at the end of validation, before the epoch-end hooks.

Checkpoints carry, besides Lightning's state (network, GradNorm weights and ``L(0)``, both
optimisers, the scheduler, epoch/step, callbacks), the torch/numpy/python RNG states; they are
restored at the start of the resumed training so that a resumed run continues exactly.

Example:
    >>> module = load_module("runs/quick/20260101-120000/checkpoints/last.ckpt")
    >>> maps = module.predict_maps(torch.zeros(1, 1, module.image_size, module.image_size))
    >>> maps["seg"].shape   # probabilities
    torch.Size([1, 4, 128, 128])
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from datamodules.sample import TASKS
from datamodules.seeding import RNG_KEY, rng_state, set_rng_state
from geometry.heatmaps import HeatmapCodec
from lightning_modules.gradnorm import GradNorm, ddp_ignore_gradnorm
from lightning_modules.losses import MultiTaskLoss
from lightning_modules.metrics import ValidationMetrics
from lightning_modules.shgn import MultiTaskSHGN, final_maps

GRAD_CLIP_ALGORITHMS = ("norm", "value")  # Lightning's clip_gradients algorithms


class KneePlanModule(pl.LightningModule):
    """Multi-task SHGN trained with per-hourglass GradNorm (Kordon et al. 2019).

    Args:
        image_size: network input side ``S`` (square); linked to ``data.size`` by the CLI.
        num_stacks: number of hourglasses ``L`` (paper 4).
        depth: pooling levels per hourglass (paper 4).
        c1: stem width ``C1`` (paper 64).
        c2: stem residual width ``C2`` (paper 128).
        c_star: hourglass width ``C*`` (paper 256).
        norm: ``instance`` (paper), ``batch``, ``group`` or ``none``.
        lr: network RMSProp learning rate (paper 2.5e-4).
        gradnorm_lr: RMSProp learning rate of the GradNorm weights (paper 0.025).
        lr_step_epochs: the network's learning rate is multiplied by ``lr_gamma`` every this
            many epochs (paper 60).
        lr_gamma: factor of that step (paper 0.5).
        alpha: GradNorm asymmetry (paper 1.0).
        beta: overlap weight of the segmentation loss (paper 0.6).
        grad_clip_val: clip the network's gradients at this value; None = no clipping.
        grad_clip_algorithm: ``norm`` or ``value``.
        net_kwargs: further keyword arguments of ``MultiTaskSHGN`` (head/skip widths ...).
        max_nonfinite_steps: a step whose loss or gradient is NaN/inf is skipped (no optimiser
            step), counted (``train/nonfinite_steps``) and logged with ``train/loss`` NaN;
            this many in a row stop training with :class:`NonFiniteTrainingError`.
        heatmap_codec: ``HeatmapCodec.to_dict()`` of the targets; None: taken from the
            DataModule when a checkpoint is saved (so plan and evaluate can rebuild it).

    Shape:
        ``batch["image"] (B, 1, S, S)`` -> ``SHGNOutput`` with ``stacks[l][task] (B, C_t, S, S)``.
    """

    def __init__(
        self,
        image_size: int = 256,
        num_stacks: int = 4,
        depth: int = 4,
        c1: int = 64,
        c2: int = 128,
        c_star: int = 256,
        norm: str = "instance",
        lr: float = 2.5e-4,
        gradnorm_lr: float = 0.025,
        lr_step_epochs: int = 60,
        lr_gamma: float = 0.5,
        alpha: float = 1.0,
        beta: float = 0.6,
        grad_clip_val: float | None = None,
        grad_clip_algorithm: str = "norm",
        net_kwargs: dict[str, Any] | None = None,
        max_nonfinite_steps: int = 5,
        heatmap_codec: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if grad_clip_algorithm not in GRAD_CLIP_ALGORITHMS:
            raise ValueError(
                f"module.py: grad_clip_algorithm must be 'norm' or 'value', got "
                f"{grad_clip_algorithm!r}"
            )
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.image_size = int(image_size)
        self.net = MultiTaskSHGN(
            in_channels=1,
            stem_channels=c1,
            stem_residual_channels=c2,
            hourglass_channels=c_star,
            num_stacks=num_stacks,
            depth=depth,
            tasks=dict(TASKS),
            norm=norm,
            **(net_kwargs or {}),
        )
        self.task_names: list[str] = self.net.task_names
        self.gradnorm = GradNorm(num_stacks, len(self.task_names), alpha,
                                 task_names=self.task_names)
        self.criterion = MultiTaskLoss(beta)
        self.val_metrics = ValidationMetrics(
            codec=HeatmapCodec.from_dict(heatmap_codec) if heatmap_codec else None)
        self._pending_rng: dict | None = None
        ddp_ignore_gradnorm(self)  # GradNorm synchronises itself; DDP must not wait for it
        self._nonfinite_streak = 0  # consecutive skipped steps
        self._nonfinite_total = 0
        self._val_nonfinite = False  # a validation map held NaN/inf this epoch

    # ----------------------------------------------------------------------------- inference
    def forward(self, x: Tensor):  # noqa: D102 - returns SHGNOutput
        return self.net(x)

    @torch.no_grad()
    def predict_maps(self, x: Tensor) -> dict[str, Tensor]:
        """Final hourglass's maps for ``x (B, 1, S, S)``: ``seg`` sigmoid probabilities
        ``(B, 4, S, S)``, ``lm`` ``(B, 2, S, S)`` and ``roi`` ``(B, 1, S, S)`` heat-maps; with two
        or more hourglasses also ``lm_prev``, the second-to-last one's landmark heat-maps."""
        return final_maps(self.net, x.to(self.device, dtype=self.dtype))

    # ----------------------------------------------------------------------------- training
    def configure_optimizers(self):
        hp = self.hparams
        opt_net = torch.optim.RMSprop(self.net.parameters(), lr=hp.lr)
        opt_gn = torch.optim.RMSprop(self.gradnorm.parameters(), lr=hp.gradnorm_lr)
        sched = torch.optim.lr_scheduler.StepLR(opt_net, step_size=hp.lr_step_epochs,
                                                gamma=hp.lr_gamma)
        return [opt_net, opt_gn], [{"scheduler": sched, "interval": "epoch"}]

    def on_train_start(self) -> None:
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None

    def on_train_epoch_start(self) -> None:
        sched = self.lr_schedulers()
        with warnings.catch_warnings():
            # After a resume the restored scheduler is one epoch behind (saved at the last
            # epoch's end) and is stepped before this process made an optimiser step: torch's
            # "lr_scheduler.step() before optimizer.step()" warning then claims a skipped lr
            # value, which is not so (test_resume: lr equal to the uninterrupted run's).
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            while sched.last_epoch < self.current_epoch:
                sched.step()

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        opt_net, opt_gn = self.optimizers()
        out = self.net(batch["image"])
        losses = self.criterion(out, batch)  # (L, T)
        num_stacks = self.net.num_stacks
        shared = [self.net.shared_params(l) for l in range(num_stacks)]

        opt_gn.zero_grad()
        opt_net.zero_grad()
        taps = out.gradnorm_taps(self.criterion.task_names)
        total = self.gradnorm.total_loss(losses.detach())  # for logging: the value backpropagated
        self.gradnorm.backward_fused(losses, taps, shared, backward=self.manual_backward)
        if not self._step_is_finite(total):
            opt_net.zero_grad()
            opt_gn.zero_grad()
            # a skipped step logs its loss as NaN (no update was made), and so does the epoch's
            # mean: monitors and sweeps (health check on train/loss) see the bad step
            b, nan = batch["image"].shape[0], torch.full_like(total.detach(), math.nan)
            self.log("train/loss", nan, on_step=True, on_epoch=False, batch_size=b)
            self.log("train/loss_epoch", nan, on_step=False, on_epoch=True, batch_size=b,
                     sync_dist=True)
            return total.detach()
        if self.hparams.grad_clip_val is not None:
            self.clip_gradients(opt_net, gradient_clip_val=self.hparams.grad_clip_val,
                                gradient_clip_algorithm=self.hparams.grad_clip_algorithm)
        opt_net.step()  # counted: global_step += 1
        opt_gn.optimizer.step()  # raw torch step: not counted as a global step
        self.gradnorm.renormalise()

        self._log_train(losses.detach(), total.detach(), batch["image"].shape[0])
        return total.detach()

    def _step_is_finite(self, total: Tensor) -> bool:
        """False (and counted, stopping after ``max_nonfinite_steps`` in a row) when the loss or
        any network/GradNorm gradient is NaN or infinite; all ranks agree (gradients are
        all-reduced, the loss is not)."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else total.new_zeros(())
        ok = bool(torch.isfinite(total.detach()).all() and torch.isfinite(norm))
        if self._trainer is not None:
            ok = self.trainer.strategy.reduce_boolean_decision(ok, all=True)
        if ok:
            self._nonfinite_streak = 0
            return True
        self._nonfinite_streak += 1
        self._nonfinite_total += 1
        self.log("train/nonfinite_steps", float(self._nonfinite_total), on_step=True,
                 on_epoch=False, batch_size=1)
        limit = int(self.hparams.get("max_nonfinite_steps", 5))
        if self._nonfinite_streak >= limit:
            raise NonFiniteTrainingError(
                f"training stopped at epoch {self.current_epoch}, step {self.global_step}: "
                f"{self._nonfinite_streak} consecutive steps with a NaN/infinite loss or "
                f"gradient (loss {float(total):.3g}); lower --model.lr or set "
                "--model.grad_clip_val")
        return False

    def _log_train(self, losses: Tensor, total: Tensor, batch_size: int) -> None:
        logs: dict[str, Tensor | float] = {"train/loss": total}
        for l in range(losses.shape[0]):
            for t, name in enumerate(self.task_names):
                logs[f"train/loss/hg{l}/{name}"] = losses[l, t]
        logs.update(self.gradnorm.weight_dict("gradnorm"))
        opt_net, opt_gn = self.optimizers()
        logs["lr/net"] = opt_net.param_groups[0]["lr"]
        logs["lr/gradnorm"] = opt_gn.param_groups[0]["lr"]
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=batch_size)
        # progress bar: the loss and the last hourglass's weights
        w_last = self.gradnorm.weights[-1].tolist()
        bar = {"loss": total, **{f"w_{n}": w for n, w in zip(self.task_names, w_last, strict=True)}}
        self.log_dict(bar, prog_bar=True, logger=False, on_step=True, on_epoch=False,
                      batch_size=batch_size)
        self.log("train/loss_epoch", total, on_step=False, on_epoch=True, batch_size=batch_size,
                 sync_dist=True)

    # --------------------------------------------------------------------------- validation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.net(batch["image"])
        losses = self.criterion(out, batch)
        b = batch["image"].shape[0]
        logs = {"val/loss": losses.sum()}
        for t, name in enumerate(self.task_names):
            logs[f"val/loss/{name}"] = losses[-1, t]
        self.log_dict(logs, on_step=False, on_epoch=True, batch_size=b, sync_dist=True)
        finite = bool(torch.isfinite(losses).all()) and all(
            bool(torch.isfinite(v).all()) for v in out.final.values())
        self._val_nonfinite = self._val_nonfinite or not finite
        if finite:  # a diverged model's NaN maps cannot be decoded; the epoch's metrics go NaN
            self.val_metrics.update(out.final, batch)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        bad = self._val_nonfinite
        if self._trainer is not None:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        self._val_nonfinite = False
        if bad:  # argmax of a NaN map is still a pixel: make the monitor see the divergence
            # (a non-finite map or validation loss turns every metric NaN)
            values = {k: math.nan for k in values}
        bar = {"val/lm_err_px", "val/iou_mean"}
        for k, v in values.items():
            # already synced by torchmetrics, identical on every rank: the mean over ranks
            # changes nothing and keeps Lightning from warning once per metric under DDP
            self.log(k, v, prog_bar=k in bar, sync_dist=True)

    # --------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_KEY] = rng_state()
        codec = self.hparams.get("heatmap_codec") or _datamodule_codec(self)
        if codec is not None:  # plain types, for torch.load(weights_only=True)
            checkpoint.setdefault("hyper_parameters", {})["heatmap_codec"] = codec

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._pending_rng = checkpoint.get(RNG_KEY)


class NonFiniteTrainingError(RuntimeError):
    """Training stopped after too many consecutive steps with a NaN/infinite loss or gradient."""


def _datamodule_codec(module: pl.LightningModule) -> dict[str, Any] | None:
    """The DataModule's heat-map codec as plain types, None without one."""
    dm = getattr(module._trainer, "datamodule", None) if module._trainer else None
    targets = getattr(dm, "targets", None)
    if dm is None or targets is None or not hasattr(dm, "size"):
        return None
    return HeatmapCodec(dm.size, dm.size, targets.sigma).to_dict()


def load_module(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> KneePlanModule:
    """Rebuild a trained :class:`KneePlanModule` from a checkpoint alone, in eval mode.

    The file is read with ``weights_only=True`` (a pickled object is refused, never run); the
    hyper-parameters saved in it rebuild the network; ``module.image_size`` is the input side
    it was trained with. Raises ``CheckpointError`` (one line naming the file) on any problem.
    """
    from lightning_modules.checkpoints import CheckpointError, check_architecture, read_checkpoint

    path = Path(ckpt_path)
    ckpt = read_checkpoint(path, map_location=map_location)
    hparams = ckpt["hyper_parameters"]
    if not isinstance(hparams, dict):
        raise CheckpointError(f"{path}: 'hyper_parameters' is not a dict")
    try:
        module = KneePlanModule(**{k: v for k, v in hparams.items() if not k.startswith("_")})
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{path}: its hyper-parameters do not build this network "
                              f"({str(err).splitlines()[0] if str(err) else err!r})") from None
    check_architecture(path, ckpt["state_dict"], module)
    module.load_state_dict(ckpt["state_dict"])
    module.on_load_checkpoint(ckpt)
    module.to(map_location)
    module.eval()
    return module
