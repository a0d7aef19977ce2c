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
import difflib
import functools
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
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
from datamodules.dataset_io import DatasetError
from datamodules.image_io import ImageReadError
from datamodules.real_numbers import real_value
from datamodules.sample import TASKS
from datamodules.seeding import RNG_KEY, rng_state, set_rng_state
from datamodules.transforms import AugmentConfig
from datamodules.validate import DatasetValidationError
from lightning_modules.blocks import NORMS
from lightning_modules.callbacks import (
    ConfigInCheckpoint,
    GradNormHistory,
    MetricsHistory,
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
from lightning_modules.malloc_tuning import keep_freed_memory
from lightning_modules.metrics import ValidationMetrics
from lightning_modules.model_cost import build_network, compute_problem
from lightning_modules.model_limits import check_hyper_parameters
from lightning_modules.module import (
    GRAD_CLIP_ALGORITHMS,
    KneePlanModule,
    NonFiniteTrainingError,
)
from lightning_modules.progress import progress_callback
from lightning_modules.run_csv_logger import RunCSVLogger
from lightning_modules.shgn import input_side_problem
from lightning_modules.training_state import (
    ARCHITECTURE_KEYS,
    OPTIMISER_KEYS,
    TARGET_KEYS,
    optimizer_state_problem,
    scheduler_state_problem,
    settings_mismatch,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICK_CONFIG = REPO_ROOT / "configs" / "quick.yaml"
PAPER_CONFIG = REPO_ROOT / "configs" / "paper.yaml"
MAX_SEED = 2**32 - 1  # Lightning's seed_everything refuses others with a traceback
RUN_DIR_ENV = "KNEEPLAN_RUN_DIR"  # lets DDP child processes find their parent's run folder


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
        monitor: validation metric of the best checkpoint (lower is better).
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
    return out + rest


def check_config_values(config: Mapping[str, Any], source: str) -> None:
    """Raise :class:`ConfigFileError` for a NaN or infinite number in the ``model`` or ``data``
    section, a network beyond what a checkpoint may ask for (``model_limits``) or cost
    (``model_cost``: plan, evaluate and export would refuse its checkpoints), a training value
    out of range (``training_value_problem``), a ``run.monitor`` the module never logs, or a
    run folder that would be outside ``run.root`` or cannot be made: jsonargparse checks types
    only, so ``lr: .nan`` trained on NaN and ``num_stacks: 100000`` ran out of memory building
    the network."""
    for section in ("model", "data"):
        stack = [(section, config.get(section) or {})]
        while stack:
            name, value = stack.pop()
            if isinstance(value, Mapping):
                stack += [(f"{name}.{k}", v) for k, v in value.items()]
            elif isinstance(value, float) and not math.isfinite(value):
                raise ConfigFileError(f"{source}: {name}={value} must be a finite number")
    model, data = dict(config.get("model") or {}), config.get("data") or {}
    try:  # as the DataModule will build it
        AugmentConfig.from_any(data.get("augment", True))
    except (TypeError, ValueError) as err:
        raise ConfigFileError(f"{source}: data.{err}") from None
    if data.get("phantom_config") or data.get("phantom_overrides"):
        from datamodules.phantoms import PhantomConfig

        try:  # as the DataModule will build it (the YAML read bounded: see read_yaml)
            base = (PhantomConfig.from_yaml(data["phantom_config"]) if data.get("phantom_config")
                    else PhantomConfig())
            base.with_overrides(data.get("phantom_overrides"))
        except ValueError as err:
            where = "" if data.get("phantom_config") else "data.phantom_overrides: "
            raise ConfigFileError(f"{source}: {where}{err}") from None
    if "size" in data:  # linked to model.image_size
        model["image_size"] = data["size"]
    try:
        check_hyper_parameters(source, model)
    except ValueError as err:
        raise ConfigFileError(str(err)) from None
    if problem := training_value_problem(model, data, config.get("trainer") or {}):
        raise ConfigFileError(f"{source}: {problem}")
    if problem := model_cost_problem(model):
        raise ConfigFileError(f"{source}: {problem}")
    run = config.get("run") or {}
    if problem := monitor_problem(run.get("monitor"), (config.get("trainer") or {}).get(
            "callbacks")):
        raise ConfigFileError(f"{source}: {problem}")
    if problem := run_folder_problem(run.get("root", "runs"), run.get("name", "kneeplan")):
        raise ConfigFileError(problem)


# (section.key, test, what it must be): values the optimiser, the loss or the data loader would
# refuse later with a traceback (``lr: -1`` in torch.optim, ``batch_size: 0`` in the DataLoader)
# (a learning rate of 0 is allowed: it freezes the network or the GradNorm weights)
TRAINING_VALUE_RULES: tuple[tuple[str, Any, str], ...] = (
    ("model.lr", lambda v: v >= 0, "must be >= 0"),
    ("model.gradnorm_lr", lambda v: v >= 0, "must be >= 0"),
    ("model.lr_gamma", lambda v: v >= 0, "must be >= 0"),
    ("model.lr_step_epochs", lambda v: v >= 1, "must be at least 1"),
    ("model.beta", lambda v: v >= 0, "must be >= 0"),
    # GradNorm's asymmetry: a negative alpha pushes the weights of the tasks that lag towards
    # less training (the paper: alpha >= 0, 0 = equal rates)
    ("model.alpha", lambda v: v >= 0, "must be >= 0 (GradNorm's asymmetry)"),
    # a negative clip value turns clip_grad_norm_ into a sign flip of every gradient
    ("model.grad_clip_val", lambda v: v > 0, "must be a positive number (or null: no clipping)"),
    ("model.max_nonfinite_steps", lambda v: v >= 1, "must be at least 1"),
    ("data.sigma", lambda v: v > 0, "must be a positive number"),
    ("data.batch_size", lambda v: v >= 1, "must be at least 1"),
    ("data.num_workers", lambda v: v >= 0, "must be >= 0"),
)


# phantom counts (``data.data_root: null``; a folder's own split is checked by the DataModule,
# an empty folder being a data error, status 1): an empty training or validation set was a
# DatasetError only when Lightning asked for its loader
PHANTOM_COUNT_RULES: tuple[tuple[str, int], ...] = (
    ("num_train", 1), ("num_val", 1), ("num_test", 0))


def training_value_problem(model: Mapping[str, Any], data: Mapping[str, Any],
                           trainer: Mapping[str, Any] | None = None) -> str | None:
    """Why a training value is out of range (``TRAINING_VALUE_RULES``, ``PHANTOM_COUNT_RULES``;
    the input side must fit the network's depth), or None. ``trainer``: its
    ``limit_val_batches: 0`` (no validation) allows ``data.num_val: 0``."""
    sections = {"model": model, "data": data}
    choices = (("model.norm", NORMS), ("model.grad_clip_algorithm", GRAD_CLIP_ALGORITHMS))
    for key, allowed in choices:
        section, name = key.split(".")
        value = sections[section].get(name)
        if value is not None and value not in allowed:
            return f"{key}={value!r:.40} is not one of {', '.join(allowed)}"
    for key, ok, what in TRAINING_VALUE_RULES:
        section, name = key.split(".")
        value = sections[section].get(name)
        if (x := real_value(value)) is not None and not ok(x):
            return f"{key}={value} {what}"
    no_validation = (trainer or {}).get("limit_val_batches") == 0
    if data.get("data_root") is None:  # phantoms
        for name, least in PHANTOM_COUNT_RULES:
            value = data.get(name)
            if name == "num_val" and no_validation:
                least = 0
            if isinstance(value, int) and not isinstance(value, bool) and value < least:
                split = {"num_train": "training", "num_val": "validation",
                         "num_test": "test"}[name]
                return (f"data.{name}={value} must be at least {least} (the {split} phantoms"
                        + ("; 0 only with trainer.limit_val_batches=0" if name == "num_val"
                           else "") + ")")
    codec, sigma = model.get("heatmap_codec"), data.get("sigma")
    if isinstance(codec, Mapping) and isinstance(sigma, int | float) and isinstance(
            codec.get("sigma"), int | float) and not math.isclose(codec["sigma"], sigma):
        return (f"model.heatmap_codec sigma {codec['sigma']} differs from data.sigma {sigma} "
                "(the targets): every checkpoint would be refused as inconsistent")
    size, depth = data.get("size"), model.get("depth", 4)
    norm = str(model.get("norm", "instance"))
    if (isinstance(size, int) and isinstance(depth, int) and 1 <= depth <= 10
            and (problem := input_side_problem(size, depth, norm))):
        return f"data.size (model.depth={depth}): {problem}"
    return None


NETWORK_KEYS = ("num_stacks", "depth", "c1", "c2", "c_star", "norm", "net_kwargs")


def model_cost_problem(model: Mapping[str, Any]) -> str | None:
    """Why the network ``model`` describes, at its ``image_size`` (``data.size``), costs more
    than plan, evaluate and export accept from a checkpoint (``model_cost.compute_problem``:
    ``MAX_GRAPH_FLOP`` / ``MAX_TOTAL_ELEMENTS`` for one image), or None. Built on the meta
    device (no weights), sized analytically: no forward pass at full size. Call after
    ``check_hyper_parameters`` and ``training_value_problem`` (bounded widths, a fitting side)."""
    hp = {k: model[k] for k in NETWORK_KEYS if k in model}
    size = int(model.get("image_size", 256))
    try:
        with torch.device("meta"):
            net = build_network(hp)
    except (TypeError, ValueError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        return f"model: cannot build the network ({first})"
    problem = compute_problem(net, hp, size)
    if problem is None:
        return None
    shape = ", ".join(f"{k}={hp[k]}" for k in ("num_stacks", "depth", "c1", "c2", "c_star")
                      if k in hp)
    return (f"data.size={size} with model {shape}: the {problem.removeprefix('its ')}; plan, "
            "evaluate and export would refuse its checkpoints (MAX_GRAPH_FLOP, "
            "MAX_TOTAL_ELEMENTS in lightning_modules/model_limits.py): lower data.size or the "
            "widths")


def logged_metric_names() -> frozenset[str]:
    """The metrics ``KneePlanModule`` logs once per epoch that a checkpoint or early stopping
    may monitor: every ``ValidationMetrics`` key (from its own ``compute``), ``val/loss`` and
    ``val/loss/<task>`` (``datamodules.sample.TASKS``), ``train/loss_epoch`` and the last
    step's ``train/loss``."""
    with warnings.catch_warnings():  # (computed before any update: NaNs, and a warning)
        warnings.simplefilter("ignore")
        names = set(ValidationMetrics().compute())
    names |= {"val/loss", *(f"val/loss/{t}" for t in TASKS), "train/loss_epoch", "train/loss"}
    return frozenset(names)


def monitor_problem(monitor: Any, callbacks: Any = None) -> str | None:
    """Why ``run.monitor``, or the ``monitor`` of an ``EarlyStopping`` / ``ModelCheckpoint`` in
    ``trainer.callbacks`` (the config's ``class_path`` / ``init_args`` form), names no metric
    the module logs (``logged_metric_names``), or None; a misspelling was refused by Lightning
    only at the end of the first epoch."""
    wanted: list[tuple[str, Any]] = [("run.monitor", monitor)]
    items = callbacks if isinstance(callbacks, list) else [callbacks] if callbacks else []
    for k, cb in enumerate(items):
        if isinstance(cb, Mapping) and str(cb.get("class_path", "")).rsplit(".", 1)[-1] in (
                "EarlyStopping", "ModelCheckpoint"):
            args = cb.get("init_args") or {}
            if isinstance(args, Mapping) and isinstance(args.get("monitor"), str):
                wanted.append((f"trainer.callbacks[{k}].monitor", args["monitor"]))
    names = logged_metric_names()
    for key, value in wanted:
        if value is None or value in names:
            continue
        close = difflib.get_close_matches(str(value), sorted(names), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        return (f"{key}={value!r:.60} is not a metric the module logs ({hint}e.g. "
                "val/lm_err_px, val/lm_err_mm, val/loss, val/iou_mean; all: "
                f"{', '.join(sorted(names))})")
    return None


MAX_PATH_BYTES = 4096 - 256  # PATH_MAX, less room for the files inside a run folder


def _name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system of ``folder`` takes (255 if unknown)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _stamp_source() -> tuple[str, str | None]:
    """(the run folder's stamp, the environment variable it came from or None)."""
    stamp = _run_stamp()
    for var in ("KNEEPLAN_RUN_STAMP", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        if os.environ.get(var) and os.environ[var] in stamp:
            return stamp, var
    return stamp, None


def run_folder_problem(root: Any, name: Any) -> str | None:
    """Why ``<run.root>/<run.name>/<stamp>`` cannot be this run's folder, or None: a
    ``run.name`` (or a stamp from ``KNEEPLAN_RUN_STAMP``, ``SLURM_JOB_ID``,
    ``TORCHELASTIC_RUN_ID``) that is absolute or goes up (``..``) out of ``run.root``, a name
    the file system refuses (too long, a NUL), or a file (not a folder) on the way. Checked
    before anything is built: these were a traceback, or a run written outside ``run.root``."""
    root_s, name_s = str(root), str(name)
    stamp, var = _stamp_source()
    if "\0" in root_s or "\0" in name_s:
        return "run.root/run.name holds a NUL character"
    if not name_s.strip() or PurePath(name_s) == PurePath("."):
        return f"run.name={name_s!r} is empty: name the run"
    if PurePath(name_s).is_absolute():
        return (f"run.name={name_s!r:.80} is an absolute path: the run folder must stay inside "
                f"run.root ({root_s[:200]}); give a plain name")
    if ".." in PurePath(name_s).parts:
        return (f"run.name={name_s!r:.80} goes up (..) out of run.root ({root_s[:200]}): the run "
                "folder must stay inside it; give a plain name")
    seps = {os.sep, os.altsep or os.sep, "/"}
    if var and (any(s in stamp for s in seps) or stamp in (".", "..") or "\0" in stamp):
        return (f"{var}={os.environ.get(var, '')!r:.80} would make the run folder "
                f"{stamp!r:.80}: it must be one plain folder name (no path separator, not . or "
                "..) so the run stays inside run.root")
    base = Path(root_s)  # (as make_run_dir takes it: no ~ expansion)
    run_dir = base / name_s / stamp
    # (os.path's tests never raise: a too long name or a folder that may not be searched is
    # "not there"; Path.exists raised ENAMETOOLONG)
    existing = next((p for p in (run_dir, *run_dir.parents) if os.path.exists(p)), Path("."))
    limit = _name_max(existing if os.path.isdir(existing) else Path("."))
    for key, text in (("run.name", name_s), (var or "the run stamp", stamp),
                      ("run.root", root_s)):
        for part in PurePath(text).parts:
            if len(os.fsencode(part)) > limit:
                return (f"{key}: the folder name {part[:40]!r}... is {len(os.fsencode(part))} "
                        f"bytes, longer than the {limit} a file name may have (run folder "
                        f"{str(run_dir)[:100]}...)")
    if len(os.fsencode(str(run_dir.absolute()))) > MAX_PATH_BYTES:
        return (f"run folder {str(run_dir.absolute())[:80]!r}...: the path is longer than the "
                f"{MAX_PATH_BYTES} bytes it may have")
    for p in reversed((run_dir, *run_dir.parents)):
        if os.path.lexists(p) and not os.path.isdir(p):
            key = "run.root" if p == base or p in base.parents else "run.name"
            return (f"{key}: {p} is a file (or a link to nothing), not a folder: the run folder "
                    f"{run_dir} cannot be made")
    if existing != run_dir and not os.access(existing, os.W_OK | os.X_OK):
        return f"run.root: cannot create the run folder in {existing} (no write permission)"
    return None


# -------------------------------------------------------------------------------- run folder
def _run_stamp() -> str:
    for var in ("KNEEPLAN_RUN_STAMP", "SLURM_JOB_ID"):
        if os.environ.get(var):
            return os.environ[var] if var != "SLURM_JOB_ID" else f"slurm{os.environ[var]}"
    rdzv = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if rdzv not in ("", "none"):
        return f"torchrun-{rdzv}"
    return time.strftime("%Y%m%d-%H%M%S")


def make_run_dir(root: str | Path, name: str, reuse: Path | None = None) -> Path:
    """``<root>/<name>/<stamp>``; a DDP child reuses its parent's folder (``KNEEPLAN_RUN_DIR``);
    ``reuse`` (a resumed run's folder) is continued instead of opening a new one.

    The folder is not created here (rank 0's loggers create it).
    """
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and int(os.environ.get("LOCAL_RANK", "0")) > 0:
        return Path(inherited)
    if reuse is not None:
        os.environ[RUN_DIR_ENV] = str(reuse.resolve())
        return reuse.resolve()
    base = Path(root) / name
    run_dir = base / _run_stamp()
    k = 1
    while run_dir.exists() and "KNEEPLAN_RUN_STAMP" not in os.environ:
        run_dir = base / f"{_run_stamp()}-{k}"
        k += 1
    os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
    return run_dir.resolve()


def find_last_checkpoint(root: str | Path, name: str, exclude: Path | None = None) -> Path:
    """The newest ``<root>/<name>/*/checkpoints/last.ckpt`` (for ``--resume last``)."""
    base = Path(root) / name
    found = [p for p in base.glob("*/checkpoints/last.ckpt")
             if exclude is None or p.resolve().parents[1] != exclude.resolve()]
    if not found:
        raise CheckpointError(
            f"{base}: --resume last: no earlier run with checkpoints/last.ckpt here; give a "
            "checkpoint path"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def resume_checkpoint(run: RunOptions, module: KneePlanModule,
                      data_hparams: Mapping[str, Any] | None = None) -> Path:
    """The checkpoint ``run.resume`` names, checked to be a safe, complete training checkpoint of
    ``module``'s architecture and settings (and of ``data_hparams``' targets, when given), with
    an optimiser and scheduler state in range; raises CheckpointError (one line naming the
    file)."""
    path = (find_last_checkpoint(run.root, run.name) if run.resume == "last"
            else Path(str(run.resume)).expanduser().absolute())
    ckpt = read_checkpoint(path)
    check_callback_state(path, ckpt)
    missing = [k for k in ("optimizer_states", "loops", "epoch") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: holds no training state ({', '.join(missing)} missing): "
                              "cannot resume from it (plan/evaluate can still use it)")
    check_architecture(path, ckpt["state_dict"], module)
    problem = (optimizer_state_problem(ckpt["optimizer_states"])
               or scheduler_state_problem(ckpt.get("lr_schedulers", [])))
    if problem:
        raise CheckpointError(f"{path}: its training state is unusable: {problem}")
    changed = settings_mismatch(ckpt.get("hyper_parameters"), dict(module.hparams),
                                ARCHITECTURE_KEYS)
    if changed is None and data_hparams is not None:
        changed = settings_mismatch(ckpt.get("datamodule_hyper_parameters"), data_hparams,
                                    TARGET_KEYS)
    if changed:
        raise CheckpointError(
            f"{path}: the config changes what this run trains ({changed}): resume with the run's "
            "own config.yaml, or start a new run")
    if changed := settings_mismatch(ckpt.get("hyper_parameters"), dict(module.hparams),
                                    OPTIMISER_KEYS):
        raise CheckpointError(
            f"{path}: the config changes the optimiser ({changed}), but a resumed run restores "
            "the saved optimiser and scheduler state, so the new value would be ignored: resume "
            "with the run's own config.yaml, or start a new run with it")
    _check_rng_state(path, ckpt.get(RNG_KEY))
    return path


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


def run_folder_of(ckpt: Path) -> Path | None:
    """The run folder a checkpoint was written in (``<run>/checkpoints/x.ckpt``), else None."""
    run = ckpt.absolute().parent.parent
    if ckpt.absolute().parent.name == "checkpoints" and (run / "config.yaml").is_file():
        return run
    return None


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
            raise ConfigFileError(f"config ({', '.join(files) or 'command line'}): {text}"
                                  ) from None
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
        reuse = None
        if run.resume:  # checked here, before any folder is made: one line on any problem
            data = getattr(self, "datamodule", None)
            resume = resume_checkpoint(run, self.model,
                                       dict(data.hparams) if data is not None else None)
            self.resume_path = str(resume)
            reuse = run_folder_of(resume)  # continue that run: same folder, best score kept
        self.run_dir = run_dir = make_run_dir(run.root, run.name, reuse=reuse)
        remove_stale_temporaries(run_dir / "checkpoints")
        if run.cpu_threads is not None:
            torch.set_num_threads(max(int(run.cpu_threads), 1))
        loggers: list = [RunCSVLogger(save_dir=str(run_dir), name="", version="")]
        mode = wandb_mode(run)
        if run.wandb and mode != "disabled":
            if "WANDB_MODE" not in os.environ:  # wandb.init(mode="offline") alone still looked
                # up its API host (a DNS query): the variable says it; removed after the run
                os.environ["WANDB_MODE"] = mode
                self.wandb_env_set = True
            # mode= goes to wandb.init; offline=True would set WANDB_MODE for the whole process
            loggers.append(WandbLogger(
                save_dir=str(run_dir), project=run.wandb_project, group=run.wandb_group,
                name=run.wandb_name or f"{run.name}-{run_dir.name}", mode=mode,
                offline=False, log_model=False,
            ))
        checkpoint = FiniteModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"), filename="best-epoch{epoch:03d}",
            auto_insert_metric_name=False, monitor=run.monitor, mode="min", save_top_k=1,
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
                ConfigInCheckpoint(config_yaml)]
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
        trainer = self._instantiate_trainer(trainer_config, extra + ours + self.user_callbacks)
        if self.resume_path:
            _refuse_restore_errors(trainer, self.resume_path)
        return trainer


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
        if flag in ("--config", "-c") and value is not None:
            check_config_file(value)
        elif flag.startswith("--config="):
            check_config_file(flag.split("=", 1)[1])
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
    where = (f"last checkpoint {last} (continue with --resume {last}, or make train RESUME=last)"
             if last else "no checkpoint was written yet")
    return TrainingInterrupted(f"training interrupted in epoch {trainer.current_epoch}: {where}")


def _fit(argv: list[str], callbacks: list | None) -> FitResult:
    cli = make_cli(argv, user_callbacks=callbacks, save_config_kwargs={"overwrite": True})
    trainer, module = cli.trainer, cli.model
    assert cli.run_dir is not None
    if cli.resume_path:
        rank_zero_info(f"resuming from {cli.resume_path}")
    try:
        with warnings.catch_warnings():  # a resumed run continues its own (non-empty) folder
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not")
            trainer.fit(module, datamodule=cli.datamodule, ckpt_path=cli.resume_path,
                        weights_only=True)
    except (*DATA_ERRORS, CheckpointError):
        _remove_if_empty(cli.run_dir)  # refused before anything was written
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


def _remove_if_empty(path: Path) -> None:
    """Remove a run folder that holds nothing (a run refused before it wrote anything), and
    then its run-name folder when that is left empty too: a first run refused for its data
    left an empty ``runs/<name>/`` that looked like a run had been made."""
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
    except ConfigFileError as err:
        print(f"train: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except MisconfigurationException as err:  # Lightning refusing a trainer setting
        print(f"train: error: trainer settings: {str(err).strip().splitlines()[0]}",
              file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except DATA_ERRORS as err:
        print(f"train: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    except CheckpointError as err:
        print(f"train: error: cannot resume: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except NonFiniteTrainingError as err:
        print(f"train: error: {err}; no checkpoint with non-finite weights was written",
              file=sys.stderr)
        raise SystemExit(EXIT_DIVERGED) from None
    except WandbError as err:
        print(f"train: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    except TrainingInterrupted as err:
        print(f"train: {err}", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None


if __name__ == "__main__":
    main()
