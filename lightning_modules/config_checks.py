"""What a training config may ask for, checked before Lightning seeds or builds anything:
finite numbers, value rules (``TRAINING_VALUE_RULES``), phantom counts, a network whose cost plan,
evaluate and export accept (``model_cost``), a ``run.monitor`` the module logs, and a run folder
inside ``run.root`` (``run_folder``). Each problem is one ``ConfigFileError`` line (status 2)."""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from datamodules.config_file import ConfigFileError
from datamodules.real_numbers import real_value
from datamodules.sample import TASKS
from datamodules.transforms import AugmentConfig
from lightning_modules.blocks import NORMS
from lightning_modules.metrics import ValidationMetrics
from lightning_modules.model_cost import build_network, compute_problem
from lightning_modules.model_limits import check_hyper_parameters
from lightning_modules.module import GRAD_CLIP_ALGORITHMS
from lightning_modules.run_folder import run_folder_of, run_folder_problem
from lightning_modules.shgn import input_side_problem


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
    if problem := training_value_problem(model, data, config.get("trainer") or {},
                                         config.get("run") or {}):
        raise ConfigFileError(f"{source}: {problem}")
    if problem := model_cost_problem(model):
        raise ConfigFileError(f"{source}: {problem}")
    run = config.get("run") or {}
    if problem := monitor_problem(run.get("monitor"), (config.get("trainer") or {}).get(
            "callbacks")):
        raise ConfigFileError(f"{source}: {problem}")
    resume = run.get("resume")  # a checkpoint in a run folder continues in that folder
    own_folder = resume not in (None, "", "last") and run_folder_of(Path(str(resume))) is not None
    if not own_folder and (problem := run_folder_problem(run.get("root", "runs"),
                                                         run.get("name", "kneeplan"))):
        raise ConfigFileError(problem)


MAX_PARALLEL = 64  # worker processes and CPU threads (as ``make plan``'s --workers / --threads)

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
    # each worker is a process holding the dataset (~330 MB): 10000 started 668 processes and
    # took 13 GB in 9 s before one sample was read
    ("data.num_workers", lambda v: 0 <= v <= MAX_PARALLEL, f"must be 0..{MAX_PARALLEL}"),
    # torch.set_num_threads: 256 started 512 threads and ran a convolution 5 x slower
    ("run.cpu_threads", lambda v: 1 <= v <= MAX_PARALLEL, f"must be 1..{MAX_PARALLEL} (or null)"),
    # Lightning's loops divide by these: a ZeroDivisionError after the run folder was made
    ("trainer.check_val_every_n_epoch", lambda v: v >= 1, "must be at least 1 (or null)"),
    ("trainer.val_check_interval", lambda v: v > 0,
     "must be a positive fraction of an epoch or a number of steps"),
    ("trainer.num_nodes", lambda v: v >= 1, "must be at least 1"),
    # the module steps its optimisers itself (manual optimisation): Lightning ignores it
    ("trainer.gradient_clip_val", lambda v: False,
     "is not used (the module optimises manually): set model.grad_clip_val instead"),
)


# phantom counts (``data.data_root: null``; a folder's own split is checked by the DataModule,
# an empty folder being a data error, status 1): an empty training or validation set was a
# DatasetError only when Lightning asked for its loader
PHANTOM_COUNT_RULES: tuple[tuple[str, int], ...] = (
    ("num_train", 1), ("num_val", 1), ("num_test", 0))


def training_value_problem(model: Mapping[str, Any], data: Mapping[str, Any],
                           trainer: Mapping[str, Any] | None = None,
                           run: Mapping[str, Any] | None = None) -> str | None:
    """Why a training value is out of range (``TRAINING_VALUE_RULES``, ``PHANTOM_COUNT_RULES``;
    the input side must fit the network's depth), or None. ``trainer``: its
    ``limit_val_batches: 0`` (no validation) allows ``data.num_val: 0``."""
    sections = {"model": model, "data": data, "trainer": trainer or {}, "run": run or {}}
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


def monitor_mode(monitor: str) -> str:
    """``"max"`` for a metric where higher is better (the IoUs: ``val/iou_mean``,
    ``val/iou/<bone>``), else ``"min"`` (errors, losses): the best checkpoint's direction."""
    return "max" if str(monitor).startswith("val/iou") else "min"


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
