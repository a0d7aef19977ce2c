"""Training entry point: LightningCLI (typed YAML configs) + run folders, loggers, checkpoints.

Command line (what ``make train`` calls)::

    python -m lightning_modules.train [--config YAML ...] [--data-root DIR] [--devices N]
        [--num-nodes N] [--resume PATH|last] [--run-name NAME] [--wandb-project P]
        [--wandb-group G] [--wandb-name N] [LightningCLI overrides, e.g. --trainer.max_epochs=3]

Without ``--config`` the quick CPU preset (``configs/quick.yaml``) is used when no GPU is found
and the paper preset (``configs/paper.yaml``) when CUDA is available; which one is printed.
``--print_config`` prints the resolved config and exits. Every run gets its own folder
``<run.root>/<run.name>/<YYYYmmdd-HHMMSS>/`` with ``config.yaml`` (resolved), ``metrics.csv``
(CSV logger, always), ``wandb/`` (W&B, offline unless ``WANDB_MODE=online``),
``checkpoints/`` (``last.ckpt`` every epoch, ``best-*.ckpt`` by ``run.monitor``),
``val_images/`` and ``gradnorm_weights.png``.

Programmatic use (sweeps, tests)::

    result = fit(["--config", "configs/tiny.yaml", "--model.beta=0.3"], callbacks=[...])
    result.run_dir, result.metrics["val/lm_err_px"], result.first_metrics

Multi-GPU: ``--devices 4`` (DDP on one node); multi-node: ``--num-nodes 2 --devices 4`` launched
once per node by SLURM (``srun``) or ``torchrun``; Lightning reads the cluster environment.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from datamodules.annotations import AnnotationError
from datamodules.config_file import ConfigFileError, check_config_file
from datamodules.datamodule import KneeDataModule
from datamodules.dataset_io import DatasetError, worker_original
from datamodules.decoder_messages import one_line
from datamodules.image_io import ImageReadError
from datamodules.seeding import RNG_KEY, rng_state, set_rng_state
from datamodules.validate import DatasetValidationError
from lightning_modules.callbacks import (
    ConfigInCheckpoint,
    GradNormHistory,
    MetricsHistory,
    TrainingIdsInCheckpoint,
    ValidationImages,
    format_metric_comparison,
)
from lightning_modules.checkpoints import (
    CheckpointError,
    FiniteModelCheckpoint,
    SameFolderCheckpointIO,
    check_architecture,
    check_callback_state,
    read_checkpoint,
    remove_stale_temporaries,
)
from lightning_modules.config_checks import check_config_values, monitor_mode
from lightning_modules.config_classes import check_argv_classes, check_config_classes
from lightning_modules.malloc_tuning import keep_freed_memory
from lightning_modules.module import (
    KneePlanModule,
    NonFiniteTrainingError,
)
from lightning_modules.progress import progress_callback
from lightning_modules.run_csv_logger import RunCSVLogger
from lightning_modules.run_folder import (
    RUN_DIR_ENV,
    find_last_checkpoint,
    launcher_problem,
    make_run_dir,
    outside_link,
    requeued_checkpoint,
    run_folder_of,
)
from lightning_modules.training_state import (
    ARCHITECTURE_KEYS,
    OPTIMISER_KEYS,
    TARGET_KEYS,
    dataset_change,
    fresh_optimizers,
    loop_state_problem,
    optimizer_state_problem,
    scheduler_state_problem,
    settings_mismatch,
)

# Two lines of every training (every sweep trial) a user cannot act on: Lightning's advert for
# its cloud logger (this project logs offline unless asked), and torch's deprecation of a class
# Lightning itself instantiates (pytorch_lightning/utilities/_pytree.py)
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: "litlogger" not in str(record.msg))
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                        category=FutureWarning)

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICK_CONFIG = REPO_ROOT / "configs" / "quick.yaml"
PAPER_CONFIG = REPO_ROOT / "configs" / "paper.yaml"
MAX_SEED = 2**32 - 1  # Lightning's seed_everything refuses others with a traceback


@dataclass
class RunOptions:
    """Run folder, loggers and checkpointing (the ``run:`` section of a config).

    Args:
        name: run name; the run folder is ``<root>/<name>/<timestamp>``.
        root: folder that holds all runs.
        resume: checkpoint to resume from, or ``last`` = the newest ``last.ckpt`` of ``name``.
        wandb: attach a W&B logger (its mode: ``WANDB_MODE`` if set, else ``wandb_mode``).
        wandb_mode: ``offline`` (default, never asks or blocks), ``online`` or ``disabled``.
        wandb_project: W&B project.
        wandb_group: W&B group (e.g. a sweep's study name).
        wandb_name: W&B run name (default: ``<name>-<timestamp>``).
        monitor: validation metric of the best checkpoint (lower is better; higher for the
            IoUs, ``val/iou*``).
        val_images: validation images drawn per epoch (0 = none).
        cpu_threads: torch intra-op threads (None = torch's default, one per core). Small
            models on a few shared cores train many times faster on 1 thread: OpenMP threads
            that wait for each other on an oversubscribed machine (DataLoader workers, other
            jobs) spin instead of working.
    """

    name: str = "kneeplan"
    root: str = "runs"
    resume: str | None = None
    wandb: bool = True
    wandb_mode: str = "offline"
    wandb_project: str = "kneeplan"
    wandb_group: str | None = None
    wandb_name: str | None = None
    monitor: str = "val/lm_err_px"
    val_images: int = 4
    cpu_threads: int | None = None


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    trainer: pl.Trainer
    module: KneePlanModule
    run_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)  # last validation
    first_metrics: dict[str, float] = field(default_factory=dict)  # first validation
    best_checkpoint: str | None = None
    last_checkpoint: str | None = None


# ------------------------------------------------------------------------ convenience flags
def translate_args(argv: list[str], announce: bool = True) -> list[str]:
    """Turn the Makefile's convenience flags into LightningCLI arguments.

    ``--config`` files come first (later arguments override them); with none given the quick
    or paper preset is chosen by GPU availability.
    """
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--config", action="append", default=[])
    p.add_argument("--data-root")
    p.add_argument("--devices")
    p.add_argument("--num-nodes")
    p.add_argument("--resume")
    p.add_argument("--run-name")
    p.add_argument("--wandb-project")
    p.add_argument("--wandb-group")
    p.add_argument("--wandb-name")
    known, rest = p.parse_known_args(argv)
    configs = list(known.config)
    preset = PAPER_CONFIG if torch.cuda.is_available() else QUICK_CONFIG
    tail: list[str] = []
    if not configs and known.resume and (own := resumed_run_config(
            known.resume, preset, known.run_name, rest)) is not None:
        # RESUME= alone continues the run as it was configured, from the checkpoint found now
        # ("last" looked up again under the loaded config's run.root could be another run)
        (own_config, known.resume), configs = own, [str(own[0])]
        if _option_value(rest, "--run.wandb_mode") is None:  # the folder's file does not opt
            tail = ["--run.wandb_mode=offline"]  # in to the network; the command line may
        if announce and int(os.environ.get("LOCAL_RANK", "0")) == 0:
            print(f"resuming with the run's own settings: {own_config}", flush=True)
    if not configs:
        if torch.cuda.is_available():
            configs = [str(PAPER_CONFIG)]
            msg = f"GPU found: using {PAPER_CONFIG.relative_to(REPO_ROOT)} (paper preset)"
        else:
            configs = [str(QUICK_CONFIG)]
            msg = f"no GPU found: using {QUICK_CONFIG.relative_to(REPO_ROOT)} (quick CPU preset)"
        if announce and int(os.environ.get("LOCAL_RANK", "0")) == 0:
            print(msg, flush=True)
    out: list[str] = []
    for c in configs:
        out += ["--config", c]
    flags = {
        "data_root": "--data.data_root", "devices": "--trainer.devices",
        "num_nodes": "--trainer.num_nodes", "resume": "--run.resume", "run_name": "--run.name",
        "wandb_project": "--run.wandb_project", "wandb_group": "--run.wandb_group",
        "wandb_name": "--run.wandb_name",
    }
    for attr, option in flags.items():
        value = getattr(known, attr)
        if value is not None:
            out.append(f"{option}={value}")
    return out + rest + tail


def resumed_run_config(resume: str, preset: Path, run_name: str | None,
                       rest: list[str]) -> tuple[Path, str] | None:
    """(the ``config.yaml`` of the run that ``--resume`` continues, its checkpoint's path)
    (``last``: the newest run of the run name and root that ``rest`` or ``preset`` give), or
    None when there is none: a resume without ``--config`` then uses it, so that ``make train
    RESUME=...`` alone trains on what the run trained on (it went on with the preset's phantoms
    after a run on ``DATA=``). The file is checked as any config file."""
    try:
        if resume == "last":
            run = _yaml_section(preset, "run")
            root = _option_value(rest, "--run.root") or run.get("root") or "runs"
            name = run_name or _option_value(rest, "--run.name") or run.get("name") or "kneeplan"
            ckpt = find_last_checkpoint(root, str(name))
        else:
            ckpt = Path(resume).expanduser().absolute()
        folder = run_folder_of(ckpt) if ckpt.is_file() else None
    except (CheckpointError, OSError, RuntimeError, ValueError):
        return None  # resume_checkpoint says what is wrong, in one line
    return (folder / "config.yaml", str(ckpt)) if folder is not None else None


def _yaml_section(path: Path, key: str) -> dict[str, Any]:
    """One top-level mapping of a YAML file (empty when absent)."""
    import yaml

    section = (yaml.safe_load(path.read_text()) or {}).get(key)
    return section if isinstance(section, dict) else {}


def _option_value(args: list[str], option: str) -> str | None:
    """The last value given to ``option`` in ``args`` (``--x v`` or ``--x=v``), or None."""
    value = None
    for i, arg in enumerate(args):
        if arg == option and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(option + "="):
            value = arg[len(option) + 1:]
    return value


OWN_SETTINGS = ("resume with the run's own settings (make train RESUME={path}, without CONFIG "
                "or DATA: its config.yaml is used)")


def resume_checkpoint(run: RunOptions, module: KneePlanModule,
                      data_hparams: Mapping[str, Any] | None = None,
                      trainer: Mapping[str, Any] | None = None) -> Path:
    """The checkpoint ``run.resume`` names, checked to be a safe, complete training checkpoint of
    ``module``'s architecture and settings (and of ``data_hparams``' targets, when given), with
    an optimiser and scheduler state in range and loop counters Lightning can run from
    (``loop_state_problem``); raises CheckpointError (one line naming the file)."""
    path = (find_last_checkpoint(run.root, run.name) if run.resume == "last"
            else Path(str(run.resume)).expanduser().absolute())
    ckpt = read_checkpoint(path)
    check_callback_state(path, ckpt)
    missing = [k for k in ("optimizer_states", "loops", "epoch") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: holds no training state ({', '.join(missing)} missing): "
                              "cannot resume from it (plan/evaluate can still use it)")
    try:
        check_architecture(path, ckpt["state_dict"], module)
    except CheckpointError as err:  # (user walkthrough: a paper-preset run resumed on CPU)
        raise CheckpointError(f"{err}; {OWN_SETTINGS.format(path=path)}") from None
    problem = (loop_state_problem(ckpt)
               or optimizer_state_problem(ckpt["optimizer_states"], fresh_optimizers(module))
               or scheduler_state_problem(ckpt.get("lr_schedulers", [])))
    if problem:
        raise CheckpointError(f"{path}: its training state is unusable: {problem}")
    changed = settings_mismatch(ckpt.get("hyper_parameters"), dict(module.hparams),
                                ARCHITECTURE_KEYS)
    if changed is None and data_hparams is not None:
        saved_data = ckpt.get("datamodule_hyper_parameters")
        changed = (settings_mismatch(saved_data, data_hparams, TARGET_KEYS)
                   or dataset_change(saved_data, data_hparams))
    if changed:
        raise CheckpointError(f"{path}: the config changes what this run trains ({changed}): "
                              f"{OWN_SETTINGS.format(path=path)}, or start a new run")
    if changed := settings_mismatch(ckpt.get("hyper_parameters"), dict(module.hparams),
                                    OPTIMISER_KEYS):
        raise CheckpointError(
            f"{path}: the config changes the optimiser ({changed}), but a resumed run restores "
            "the saved optimiser and scheduler state, so the new value would be ignored: resume "
            "with the run's own config.yaml, or start a new run with it")
    _check_rng_state(path, ckpt.get(RNG_KEY))
    if trainer is not None and (done := finished_run(ckpt, trainer)):
        raise CheckpointError(f"{path}: nothing to train: the run has {done}; raise it to go "
                              "on (e.g. ARGS=\"--trainer.max_epochs N\")")
    return path


def finished_run(ckpt: Mapping[str, Any], trainer: Mapping[str, Any]) -> str | None:
    """What the checkpoint has finished of the configured ``max_epochs`` / ``max_steps``
    ("finished its 8 epochs (trainer.max_epochs 8)"), or None while there is training left.
    (Resumed, such a run printed an empty first-vs-last table and started another W&B run.)"""
    loops = ckpt.get("loops")
    fit = loops.get("fit_loop") if isinstance(loops, Mapping) else None
    epochs = fit.get("epoch_progress") if isinstance(fit, Mapping) else None
    try:
        processed = int(epochs["current"]["processed"])  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        processed = None
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps")
    if isinstance(max_epochs, int) and max_epochs >= 0 and processed is not None \
            and processed >= max_epochs:
        return f"finished its {processed} epochs (trainer.max_epochs {max_epochs})"
    step = ckpt.get("global_step")
    if isinstance(max_steps, int) and max_steps > 0 and isinstance(step, int) \
            and step >= max_steps:
        return f"made its {step} steps (trainer.max_steps {max_steps})"
    return None


def _check_rng_state(path: Path, saved: Any) -> None:
    """Try the saved RNG state once (then put the current one back): a malformed one is refused
    now, in one line, not at train start (``on_train_start`` applies it)."""
    if saved is None:
        return
    current = rng_state()
    try:
        set_rng_state(saved)
    except Exception as err:  # noqa: BLE001 - any malformed state the file holds
        raise CheckpointError(f"{path}: its saved random-number state is unusable "
                              f"({type(err).__name__}: {str(err)[:120]})") from None
    finally:
        set_rng_state(current)


def _refuse_restore_errors(trainer: pl.Trainer, path: str) -> None:
    """Turn any error while Lightning restores the training state from ``path`` (a loop,
    optimiser or callback state of the wrong type or shape, a missing version key) into one
    :class:`CheckpointError` line instead of a traceback from deep inside Lightning."""
    connector = getattr(trainer, "_checkpoint_connector", None)
    for name in ("_restore_modules_and_callbacks", "restore_training_state"):
        restore = getattr(connector, name, None)  # private in Lightning 2.4-2.6: skip if gone
        if restore is None:
            continue

        @functools.wraps(restore)
        def guarded(*args: Any, _restore: Any = restore, **kwargs: Any) -> Any:
            try:
                return _restore(*args, **kwargs)
            except CheckpointError:
                raise
            except Exception as err:  # noqa: BLE001 - whatever the file made Lightning raise
                text = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
                raise CheckpointError(f"{path}: cannot restore the training state "
                                      f"({type(err).__name__}: {text})") from None

        setattr(connector, name, guarded)


# Trainer settings typed ``float | int | None``: jsonargparse reads "1" on the command line as
# 1.0 (Lightning: 100 % of the batches) where Lightning documents int 1 as one batch (a YAML
# ``1`` stays an int); a whole number above 1 is made an int by Lightning itself.
ONE_BATCH_KEYS = ("limit_train_batches", "limit_val_batches", "limit_test_batches",
                  "limit_predict_batches")


def _last_flag_value(args: list[str], flag: str) -> str | None:
    """The text of the last ``flag=value`` / ``flag value`` in ``args`` (None: not given)."""
    found = None
    for a, nxt in zip(args, [*args[1:], None], strict=True):
        if a.startswith(flag + "="):
            found = a.split("=", 1)[1]
        elif a == flag and nxt is not None:
            found = nxt
    return None if found is None else found.strip()


def _as_run_options(value: Any) -> RunOptions:
    if isinstance(value, RunOptions):
        return value
    return RunOptions(**{k: v for k, v in dict(vars(value)).items() if not k.startswith("_")})


# ------------------------------------------------------------------------------------- CLI
class KneePlanCLI(LightningCLI):
    """LightningCLI with a ``run:`` section, ``data.size -> model.image_size`` and our folders."""

    def __init__(self, *args: Any, user_callbacks: list | None = None, **kwargs: Any) -> None:
        self.user_callbacks = list(user_callbacks or [])
        self.run_dir: Path | None = None
        self.resume_path: str | None = None
        self.own: dict[str, Any] = {}
        self.one_batch_keys: list[str] = []  # trainer limits given as 1 batch on the command line
        super().__init__(*args, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        """jsonargparse's parse, with a wrong type or an unknown key in a config file, a seed
        outside numpy's range, or a value ``check_config_values`` refuses, answered by one
        :class:`ConfigFileError` line (exit status 2) instead of its usage text or a traceback;
        all before Lightning seeds (which logs "Seed set to ...") or anything is built."""
        from jsonargparse import ArgumentError

        parser.exit_on_error = False
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            files = [a for k, a in zip(args, args[1:], strict=False) if k in ("--config", "-c")]
            files += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
            text = " ".join(str(err).split())[:300]
            key = re.search(r'Parser key "([^"]+)"', text)
            value = key and _last_flag_value(list(args or []), f"--{key[1]}")
            # the command line's own value refused (NODES=abc), not the file's
            given = value is not None and re.search(
                rf"(?:Got|Given) value: {re.escape(value)}(?:\s|$)", text) is not None
            source = (f"command line (--{key[1]})" if given
                      else f"config ({', '.join(files) or 'command line'})")
            raise ConfigFileError(f"{source}: {text}") from None
        finally:
            parser.exit_on_error = True
        # Lightning's seed_everything runs before ``before_instantiate_classes`` and raises a
        # traceback on a seed numpy cannot take
        seed = self.config.get("seed_everything")  # (no subcommands: run=False)
        if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed <= MAX_SEED:
            raise ConfigFileError(f"config: seed_everything={seed!r:.40} must be in "
                                  f"0..{MAX_SEED} (the seeds numpy takes)")
        files = [str(c) for c in (self.config.get("config") or [])]  # (run=False: no subcommand)
        source = f"config ({', '.join(files)} and the command line)" if files else "config"
        config = self.config.as_dict()
        check_config_values(config, source)
        run = config.get("run") or {}  # (a W&B mode typo, checked again when the loggers are made)
        wandb_mode(RunOptions(**{k: v for k, v in run.items() if k in RunOptions.__annotations__}))
        # --trainer.limit_train_batches=1: one batch, as Lightning documents, not 100 %
        self.one_batch_keys = [k for k in ONE_BATCH_KEYS if self.config.get(f"trainer.{k}") == 1
                               and _last_flag_value(list(args or []), f"--trainer.{k}") in (
                                   "1", "+1")]
        for key in self.one_batch_keys:  # (the saved config.yaml says 1, not 1.0)
            self.config[f"trainer.{key}"] = 1

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(RunOptions, "run")
        parser.link_arguments("data.size", "model.image_size")

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        self.wandb_env_set = False
        run = _as_run_options(self._get(self.config_init, "run"))
        trainer_settings = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        if problem := launcher_problem(trainer_settings.get("num_nodes"),
                                       trainer_settings.get("plugins")):
            raise MisconfigurationException(problem)
        if not run.resume and (requeued := requeued_checkpoint(run.root, run.name)):
            rank_zero_info(f"SLURM job {os.environ['SLURM_JOB_ID']} requeued: continuing from "
                           f"{requeued}")
            run = replace(run, resume=str(requeued))  # checked as any --resume
        reuse = None
        if run.resume:  # checked here, before any folder is made: one line on any problem
            data = getattr(self, "datamodule", None)
            resume = resume_checkpoint(run, self.model,
                                       dict(data.hparams) if data is not None else None,
                                       trainer_settings)
            self.resume_path = str(resume)
            reuse = run_folder_of(resume)  # continue that run: same folder, best score kept
            if reuse is not None and (link := outside_link(reuse)):
                raise CheckpointError(
                    f"{resume}: refused: its run folder {reuse} holds {link}; "
                    "resuming writes and deletes files there: copy the run without links")
        self.run_dir = run_dir = make_run_dir(run.root, run.name, reuse=reuse)
        remove_stale_temporaries(run_dir / "checkpoints")
        if run.cpu_threads is not None:
            torch.set_num_threads(max(int(run.cpu_threads), 1))
        loggers: list = [RunCSVLogger(save_dir=str(run_dir), name="", version="")]
        mode = wandb_mode(run)
        if run.wandb and mode != "disabled":
            if not os.environ.get("WANDB_MODE"):  # wandb.init(mode="offline") alone still looked
                # up its API host (a DNS query): the variable says it; removed after the run
                os.environ["WANDB_MODE"] = mode
                self.wandb_env_set = True
            # mode= goes to wandb.init; offline=True would set WANDB_MODE for the whole process
            # config: the global seed, which the module's and data's hyper-parameters (what
            # Lightning logs) lack, so runs differing only in it looked alike in W&B
            wandb_logger = WandbLogger(
                save_dir=str(run_dir), project=run.wandb_project, group=run.wandb_group,
                name=run.wandb_name or f"{run.name}-{run_dir.name}", mode=mode,
                offline=False, log_model=False,
                config={"seed_everything": self.config_init.get("seed_everything")},
            )
            # Lightning passes anonymous=None, which W&B warns about ("has no effect") in every
            # run; unset, it says nothing (pytorch_lightning/loggers/wandb.py builds this dict)
            getattr(wandb_logger, "_wandb_init", {}).pop("anonymous", None)
            loggers.append(wandb_logger)
        checkpoint = FiniteModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"), filename="best-epoch{epoch:03d}",
            auto_insert_metric_name=False, monitor=run.monitor,
            mode=monitor_mode(run.monitor), save_top_k=1,
        )
        # last.ckpt every epoch: a callback of its own, since Lightning's save_last=True only
        # refreshes last.ckpt in epochs where the monitored metric improved.
        last = FiniteModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"), filename="last", monitor=None, save_top_k=1,
            enable_version_counter=False,
        )
        history = MetricsHistory()
        self.own = {"checkpoint": checkpoint, "last": last, "history": history}
        config_yaml = self.parser.dump(self.config, skip_none=False)
        ours = [checkpoint, last, history, GradNormHistory(run_dir),
                ConfigInCheckpoint(config_yaml), TrainingIdsInCheckpoint()]
        if run.val_images > 0:
            ours.append(ValidationImages(run_dir, num_images=run.val_images))
        keys = self._parser(self.subcommand).callback_keys
        extra = [self._get(self.config_init, c) for c in keys]
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs,
                          "logger": loggers, "default_root_dir": str(run_dir),
                          "plugins": [SameFolderCheckpointIO()]}
        for key in self.one_batch_keys:  # (instantiating the trainer config made it 1.0 again)
            trainer_config[key] = 1
        # a bar on a terminal, plain lines in a log file (no carriage returns)
        ours += progress_callback(trainer_config, extra + self.user_callbacks)
        try:
            trainer = self._instantiate_trainer(trainer_config, extra + ours + self.user_callbacks)
            # what the launcher checks only inside fit (SLURM: devices vs --ntasks-per-node)
            if (env := getattr(trainer.strategy, "cluster_environment", None)) is not None:
                env.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)
        except (TypeError, ValueError) as err:  # Lightning refusing devices, a strategy or a
            if not _raised_by_lightning(err):  # SLURM task count: one line (status 2), not a
                raise  # 50-line traceback; anything else: as it is
            raise MisconfigurationException(one_line(str(err), 400)) from None
        if self.resume_path:
            _refuse_restore_errors(trainer, self.resume_path)
        return trainer


def _raised_by_lightning(err: BaseException) -> bool:
    """Whether ``err`` was raised inside Lightning itself (its argument checks), not in code of
    ours or a user's callback or logger, whose errors keep their traceback."""
    import traceback

    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and any(part in frames[-1].filename for part in (
        f"{os.sep}pytorch_lightning{os.sep}", f"{os.sep}lightning_fabric{os.sep}",
        f"{os.sep}lightning{os.sep}"))


def _finish_wandb(trainer: pl.Trainer) -> None:
    """Close the W&B run (Lightning never does; a second fit would reuse it)."""
    if not any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        return
    import wandb

    if wandb.run is not None:
        wandb.finish()


def make_cli(argv: list[str], **kwargs: Any) -> KneePlanCLI:
    """Parse and check translated training arguments (config file, keys, types, value rules,
    trainer settings) and build the CLI's objects without training; sweeps check with it too."""
    for flag, value in zip(argv, [*argv[1:], None], strict=True):  # before jsonargparse reads
        path = (value if flag in ("--config", "-c") else flag.split("=", 1)[1]
                if flag.startswith("--config=") else None)
        if path is not None:
            check_config_classes(path, check_config_file(path))
    check_argv_classes(argv)  # (jsonargparse imports what a class_path names while parsing)
    with warnings.catch_warnings():
        # fit(args) from a script that has its own sys.argv is intended, not a mistake
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        try:
            # allow_abbrev=False: --trainer.max_ep=3 was taken as --trainer.max_epochs=3 (and a
            # misspelt key could silently set another that shares its start)
            kwargs.setdefault("parser_kwargs", {"allow_abbrev": False})
            return KneePlanCLI(KneePlanModule, KneeDataModule, args=argv, run=False,
                               auto_configure_optimizers=False, **kwargs)
        except OverflowError:  # jsonargparse's float() of a 400-digit integer on the command
            raise ConfigFileError("command line: a value is too large to be read as a number"
                                  ) from None  # line (config files are checked above)


def fit(args: list[str] | None = None, callbacks: list | None = None) -> FitResult:
    """Parse ``args`` (as on the command line), train, and return a :class:`FitResult`.

    Args:
        args: command-line style arguments (convenience flags and LightningCLI overrides);
            None = ``sys.argv[1:]``.
        callbacks: extra Lightning callbacks (e.g. an Optuna pruning callback).
    """
    argv = translate_args(list(sys.argv[1:] if args is None else args))
    threads_before = torch.get_num_threads()  # run.cpu_threads is restored afterwards
    try:
        return _fit(argv, callbacks)
    finally:
        torch.set_num_threads(threads_before)


WANDB_MODES = ("offline", "online", "disabled")


def wandb_mode(run: RunOptions) -> str:
    """The W&B mode: ``WANDB_MODE`` if set, else ``run.wandb_mode`` (``false``/``off`` mean
    disabled); anything else is a ConfigFileError line (a typo was a 50-line traceback)."""
    env = os.environ.get("WANDB_MODE")
    mode = str(env or run.wandb_mode).strip().lower()
    mode = "disabled" if mode in ("false", "off") else mode
    if mode not in WANDB_MODES:
        where = "WANDB_MODE" if env else "run.wandb_mode"
        raise ConfigFileError(f"{where}={env or run.wandb_mode!r:.40} is not one of "
                              f"{', '.join(WANDB_MODES)}")
    return mode


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after Lightning's graceful shutdown; the message names the last
    checkpoint to resume from (a KeyboardInterrupt, so a sweep stops on it as on any Ctrl-C)."""


class WandbError(RuntimeError):
    """W&B failed (online without an API key or a network); one line saying so."""


def _interrupted(cli: Any, trainer: pl.Trainer) -> TrainingInterrupted:
    """The interruption, naming ``last.ckpt`` when one was written; SIGINT is given back its
    default handler (Lightning ignores it after the first, so a second Ctrl-C did nothing)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    last = _existing(cli.own["last"].best_model_path) or _existing(
        str(cli.run_dir / "checkpoints" / "last.ckpt"))
    where = (f"last checkpoint {last} (continue with --resume {last}, or make train "
             f"RESUME={last})"
             if last else "no checkpoint was written yet")
    return TrainingInterrupted(f"training interrupted in epoch {trainer.current_epoch}: {where}")


def _fit(argv: list[str], callbacks: list | None) -> FitResult:
    cli = make_cli(argv, user_callbacks=callbacks, save_config_kwargs={"overwrite": True})
    trainer, module = cli.trainer, cli.model
    assert cli.run_dir is not None
    if cli.resume_path:
        rank_zero_info(f"resuming from {cli.resume_path}")
    refused = False
    try:
        with warnings.catch_warnings():  # a resumed run continues its own (non-empty) folder
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not")
            trainer.fit(module, datamodule=cli.datamodule, ckpt_path=cli.resume_path,
                        weights_only=True)
    except (*DATA_ERRORS, CheckpointError):
        refused = True  # before anything was written: the folder goes (after W&B finished)
        raise
    except SystemExit:  # Lightning ends a Ctrl-C'd fit with sys.exit(1)
        if trainer.interrupted:
            raise _interrupted(cli, trainer) from None
        raise
    except Exception as err:
        if type(err).__module__.split(".")[0] == "wandb":
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise WandbError(f"W&B ({os.environ.get('WANDB_MODE', 'online')}): {first} "
                             "(runs are offline unless WANDB_MODE=online or run.wandb_mode: "
                             "online asks for W&B)") from None
        raise
    finally:
        _finish_wandb(trainer)
        if cli.wandb_env_set:
            os.environ.pop("WANDB_MODE", None)
        if refused:
            _remove_refused_run(cli.run_dir)
    history: MetricsHistory = cli.own["history"]
    checkpoint: FiniteModelCheckpoint = cli.own["checkpoint"]
    result = FitResult(
        trainer=trainer, module=module, run_dir=cli.run_dir, metrics=dict(history.last),
        first_metrics=dict(history.first),
        best_checkpoint=checkpoint.best_model_path or None,
        last_checkpoint=_existing(cli.own["last"].best_model_path),
    )
    if trainer.is_global_zero:
        if history.first:
            print("\nvalidation metrics, first vs last epoch:")
            print(format_metric_comparison(history.first, history.last))
        print(f"\nrun folder: {cli.run_dir}")
        if result.best_checkpoint:
            print(f"best checkpoint: {result.best_checkpoint}")
    return result


# Problems with the user's data: reported in one message (the validator lists every one).
DATA_ERRORS = (DatasetValidationError, DatasetError, AnnotationError, ImageReadError)
# Exit statuses of the command line (README "Exit codes").
EXIT_BAD_INPUT, EXIT_USAGE, EXIT_DIVERGED = 1, 2, 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C'd command


def _existing(path: str | None) -> str | None:
    return path if path and Path(path).is_file() else None


def _remove_refused_run(path: Path) -> None:
    """Remove the run folder of a run refused before it wrote anything: empty, or holding only
    the ``wandb/`` folder its logger opened (a refused run left an offline W&B run that
    ``wandb sync`` would upload); then its run-name folder when that is left empty too (it
    looked like a run had been made). A folder with anything else in it is left alone."""
    import shutil

    wandb = path / "wandb"
    try:
        if wandb.is_dir() and not wandb.is_symlink() and [p.name for p in path.iterdir()] == [
                "wandb"]:
            shutil.rmtree(wandb)  # (never follows a link inside)
    except OSError:
        return
    for folder in (path, path.parent):
        try:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        except OSError:
            return


def main(argv: list[str] | None = None) -> None:
    """Command-line entry (``python -m lightning_modules.train``).

    No traceback for what the user can fix: an unusable dataset ends with its report and exit
    status 1; a bad ``--resume`` checkpoint or ``--config`` file with one line and status 2; a
    diverged training (non-finite steps, ``model.max_nonfinite_steps`` in a row) with one line
    and status 3.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    from datamodules.pixel_limit import env_problem

    if problem := env_problem():
        print(f"train: error: {problem}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    keep_freed_memory()  # the steps reuse freed activations instead of page-faulting them in
    try:
        if any(a.startswith("--print_config") for a in argv):
            make_cli(translate_args(argv, announce=False))
            return
        fit(argv)
    except (ConfigFileError, WandbError) as err:
        print(f"train: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except MisconfigurationException as err:  # Lightning refusing a trainer setting
        print(f"train: error: trainer settings: {str(err).strip().splitlines()[0]}",
              file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except DATA_ERRORS as err:
        print(f"train: error: {worker_original(err)}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    except CheckpointError as err:
        print(f"train: error: cannot resume: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except NonFiniteTrainingError as err:
        print(f"train: error: {err}; no checkpoint with non-finite weights was written",
              file=sys.stderr)
        raise SystemExit(EXIT_DIVERGED) from None
    except TrainingInterrupted as err:
        print(f"train: {err}", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except RuntimeError as err:
        if not (lost := peer_lost(err)):
            raise
        print(f"train: error: {lost}", file=sys.stderr)
        raise SystemExit(1) from None


# What torch.distributed's backends say when another rank of the run is gone (killed, out of
# memory, its node lost): the survivors fail in their next collective.
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "NCCL communicator was "
             "aborted", "Socket Timeout", "Broken pipe")


def peer_lost(err: BaseException) -> str | None:
    """One line for a training that failed because another process of the multi-device run
    ended (a 150-line gloo traceback without the way to resume before), or None."""
    text = str(err)
    if not any(words in text for words in PEER_LOST):
        return None
    run = os.environ.get(RUN_DIR_ENV)
    last = Path(run) / "checkpoints" / "last.ckpt" if run else None
    hint = (f"; resume with --resume {last} (make train RESUME={last})"
            if last is not None and last.is_file() else "")
    return f"another process of this multi-device run ended ({one_line(text, 200)}){hint}"


if __name__ == "__main__":
    main()
