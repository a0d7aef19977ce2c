"""Checks of a resumed checkpoint's training state: optimiser, scheduler, loops and settings.

Lightning restores the optimisers' and the scheduler's state as the file gives it, after the
config checks have run: a crafted or damaged checkpoint with a negative learning rate,
``maximize: True`` or a scheduler ``gamma`` of -100 trained the network uphill and exited 0, and
NaN in RMSProp's ``square_avg`` turned every weight to NaN at the first step; RMSProp switches
(``capturable``, ``centered``, ``differentiable``), duplicated parameter ids or running averages
of another shape loaded fine and crashed the first step, and a ``MetricsHistory`` or
``GradNormHistory`` callback state of the wrong type or shape crashed the end of training
(red-team round 6: a traceback, status 1, after the epochs had run). A resume is
also a continuation of one run: a config that changes the network's norm, the input size or the
heat-map targets would write checkpoints whose settings describe another training than their
weights had. Lightning-free (plain dicts and tensors), like ``checkpoint_file``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch

from datamodules.real_numbers import finite_real, real_value

# optimiser group settings: (lowest allowed, lower bound included); the upper bound is finite
_GROUP_RANGES: dict[str, tuple[float, bool]] = {
    "lr": (0.0, True), "initial_lr": (0.0, True), "momentum": (0.0, True),
    "weight_decay": (0.0, True), "eps": (0.0, False), "alpha": (0.0, True),
}  # fmt: skip
_NONNEGATIVE_STATE = ("square_avg", "step", "exp_avg_sq")  # running averages of squares, counts
# optimiser switches that change what a step does: a resumed group keeps the values its fresh
# optimiser has (capturable wants CUDA, centered reads ``grad_avg``, differentiable with foreach
# asserts); one the fresh group lacks (RMSProp has no ``fused``) must be off (None or False)
_FLAGS = ("capturable", "centered", "differentiable", "foreach", "fused", "maximize")
# settings that make a run: module hyper-parameters and the DataModule's target settings
ARCHITECTURE_KEYS = ("num_stacks", "depth", "c1", "c2", "c_star", "norm", "net_kwargs",
                     "image_size")  # fmt: skip
TARGET_KEYS = ("size", "sigma", "roi_spacing_px", "roi_extent")
# the DataModule settings that choose the training images: a resume without ``DATA=`` trained
# on phantoms after an epoch of the user's data, without a word (user walkthrough)
DATASET_KEYS = ("data_root", "split_file", "val_fraction", "seed", "num_train", "num_val",
                "min_side", "max_side", "phantom_config", "phantom_overrides")
# the ids of a dataset folder's training images, stored in every checkpoint (evaluate
# --held-out leaves exactly these out); not recorded beyond MAX_RECORDED_IDS (~3 pickle opcodes
# each: far below the checkpoint scan's 10^6)
TRAINING_IDS_KEY = "kneeplan_training_ids"
MAX_RECORDED_IDS = 50_000
# read only when the optimisers and the scheduler are built: a resumed run restores their saved
# state instead, so a changed value would be ignored while config.yaml and the checkpoint's
# hyper-parameters recorded it as used
OPTIMISER_KEYS = ("lr", "gradnorm_lr", "lr_step_epochs", "lr_gamma")


def _number_problem(name: str, value: Any, low: float, inclusive: bool) -> str | None:
    x = real_value(value)
    if x is None or not math.isfinite(x) or x < low or (x == low and not inclusive):
        bound = f">= {low:g}" if inclusive else f"> {low:g}"
        return f"{name} is {value!r} (must be a finite number {bound})"
    return None


def _group_problem(where: str, group: Mapping[str, Any]) -> str | None:
    for key, (low, inclusive) in _GROUP_RANGES.items():
        if key in group and (p := _number_problem(f"{where} {key}", group[key], low, inclusive)):
            return p
    if (alpha := real_value(group.get("alpha"))) is not None and alpha > 1:
        return f"{where} alpha is {group['alpha']!r} (RMSProp's smoothing lies in [0, 1])"
    if group.get("maximize", False) is not False:
        return f"{where} maximize is {group['maximize']!r} (kneeplan minimises its loss)"
    return None


def _tensor_problem(where: str, key: str, value: Any) -> str | None:
    if not isinstance(value, torch.Tensor):
        return None if finite_real(value) is not None else (
            f"{where} {key} is {value!r} (not a finite number)")
    if value.is_complex():
        return f"{where} {key} holds complex values"
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        return f"{where} {key} holds NaN or inf"
    if key in _NONNEGATIVE_STATE and value.numel() and bool((value < 0).any()):
        return f"{where} {key} holds negative values (a running average of squares or a count)"
    return None


@cache
def _rmsprop_group() -> dict[str, Any]:
    """The settings of a fresh group of the RMSprop ``configure_optimizers`` builds (torch's
    defaults, rates aside): what a saved group is compared with when no fresh optimiser is
    given (``train.resume_checkpoint``, before the network's optimisers exist)."""
    return dict(torch.optim.RMSprop([torch.zeros(1, requires_grad=True)], lr=1.0).defaults)


def _kind(value: Any) -> str:
    """A setting's kind as compared: ``real`` for an int or float (not a bool), else its type."""
    return "real" if real_value(value) is not None else type(value).__name__


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _setting_problem(where: str, group: Mapping[str, Any], fresh: Mapping[str, Any]
                     ) -> str | None:
    """A saved group setting of another kind than the fresh group's, or a switch (``_FLAGS``)
    of another value; settings the fresh group lacks (other torch versions) are not compared,
    except switches, which must then be off."""
    for key, value in group.items():
        if key == "params" or (key not in fresh and key not in _FLAGS):
            continue
        expected = fresh.get(key)
        if key in _FLAGS:
            off = key not in fresh and (value is None or value is False)
            if not off and not (type(value) is type(expected) and value == expected):
                return (f"{where} {key} is {_name(value)[:40]} (kneeplan's RMSProp is built "
                        f"with {expected!r})")
        elif _kind(value) != _kind(expected):
            return f"{where} {key} is a {type(value).__name__}, not a {_kind(expected)}"
    return None


def _entry_problem(where: str, entry: Mapping[str, Any], group: Mapping[str, Any],
                   shape: tuple[int, ...] | None) -> str | None:
    """What is wrong with one parameter's saved RMSProp state: non-finite or negative values, a
    running average that is not a tensor (of the parameter's ``shape``, when known), a step
    that is not one count, or a tensor the group's step reads missing."""
    for key, value in entry.items():
        if p := _tensor_problem(where, key, value):
            return p
        if key == "step":
            if isinstance(value, torch.Tensor) and value.numel() != 1:
                return f"{where} step holds {value.numel()} values (one count)"
            continue
        if not isinstance(value, torch.Tensor):
            return f"{where} {key} is a {type(value).__name__}, not a tensor"
        if shape is not None and tuple(value.shape) != shape:
            return f"{where} {key} has shape {tuple(value.shape)}, the parameter {shape}"
    if not entry:  # no state yet: the first step makes it
        return None
    needed = ["step", "square_avg"]
    if (real_value(group.get("momentum", 0)) or 0.0) > 0:
        needed.append("momentum_buffer")
    if group.get("centered"):
        needed.append("grad_avg")
    if missing := [k for k in needed if k not in entry]:
        return f"{where} lacks {', '.join(missing)} (read by its group's RMSProp step)"
    return None


def optimizer_state_problem(states: Any,
                            fresh: Sequence[torch.optim.Optimizer] | None = None) -> str | None:
    """What is wrong with Lightning's ``optimizer_states`` (a list of optimiser state dicts), or
    None: group settings out of range or of another kind than a fresh group's, switches
    (``_FLAGS``) other than a fresh group's, parameter ids other than torch's ``0..N-1`` in
    order (duplicated ids loaded one parameter's state into another), state entries for other
    ids, non-finite / negative running state or state a step reads missing.

    ``fresh``: the network's own new optimisers (``configure_optimizers``), when they exist:
    their groups are compared instead of RMSprop's defaults, group and parameter counts too,
    and every running average must have its parameter's shape.
    """
    if not isinstance(states, list):
        return f"optimizer_states is a {type(states).__name__}, not a list"
    if fresh is not None and len(states) != len(fresh):
        return f"{len(states)} optimiser states for the network's {len(fresh)} optimisers"
    for i, opt in enumerate(states):
        if not isinstance(opt, Mapping):
            return f"optimiser {i}'s state is a {type(opt).__name__}, not a mapping"
        groups = opt.get("param_groups")
        if not isinstance(groups, list):
            return f"optimiser {i}'s param_groups is a {type(groups).__name__}, not a list"
        new_groups = fresh[i].state_dict()["param_groups"] if fresh is not None else None
        if new_groups is not None and len(groups) != len(new_groups):
            return (f"optimiser {i} has {len(groups)} parameter groups, the network's "
                    f"{len(new_groups)}")
        owner: dict[int, Mapping[str, Any]] = {}
        ids: list[int] = []
        for g, group in enumerate(groups):
            where = f"optimiser {i} group {g}"
            if not isinstance(group, Mapping):
                return f"{where} is not a mapping"
            if p := (_group_problem(where, group) or _setting_problem(
                    where, group, new_groups[g] if new_groups is not None else _rmsprop_group())):
                return p
            params = group.get("params")
            if not isinstance(params, list | tuple) or not all(_is_id(x) for x in params):
                return f"{where} params are not a list of parameter ids"
            if new_groups is not None and len(params) != len(new_groups[g]["params"]):
                return (f"{where} holds {len(params)} parameters, the network's "
                        f"{len(new_groups[g]['params'])}")
            ids += params
            owner.update(dict.fromkeys(params, group))
        if ids != list(range(len(ids))):
            return (f"optimiser {i}'s params are not the ids 0..{len(ids) - 1} in order "
                    "(duplicated or unknown parameter ids)")
        shapes = ([tuple(p.shape) for g in fresh[i].param_groups for p in g["params"]]
                  if fresh is not None else None)
        state = opt.get("state") or {}
        if not isinstance(state, Mapping):
            return f"optimiser {i}'s per-parameter state is not a mapping"
        for param, entry in state.items():
            where = f"optimiser {i} parameter {param}"
            if not _is_id(param) or param not in owner:
                return (f"optimiser {i}'s state names parameter {_name(param)[:40]}, in none of "
                        "its groups")
            if not isinstance(entry, Mapping):
                return f"{where}'s state is a {type(entry).__name__}, not a mapping"
            if p := _entry_problem(where, entry, owner[param],
                                   shapes[param] if shapes is not None else None):
                return p
    return None


def fresh_optimizers(module: Any) -> list[torch.optim.Optimizer] | None:
    """New optimisers from ``module.configure_optimizers()`` (kneeplan's: a list of optimisers
    and a list of schedulers), or None when it returns another form; what a saved optimiser
    state is compared with (``optimizer_state_problem``)."""
    made = module.configure_optimizers()
    if isinstance(made, tuple | list) and made and isinstance(made[0], tuple | list):
        made = made[0]
    opts = list(made) if isinstance(made, tuple | list) else [made]
    return opts if opts and all(isinstance(o, torch.optim.Optimizer) for o in opts) else None


def metrics_history_problem(state: Any) -> str | None:
    """What is wrong with a saved ``MetricsHistory`` state (``{"first": {name: number}}``), or
    None: the first-vs-last table formats every value as a number after training, where a
    string or None crashed it. NaN is allowed: a validation can give it (printed as ``nan``)."""
    if not isinstance(state, Mapping):
        return f"MetricsHistory state is a {type(state).__name__}, not a mapping"
    first = state.get("first", {})
    if not isinstance(first, Mapping):
        return f"MetricsHistory first is a {type(first).__name__}, not a mapping"
    for name, value in first.items():
        if not isinstance(name, str):
            return f"MetricsHistory first names a metric {_name(name)[:40]} (not a string)"
        if real_value(value) is None:
            return f"MetricsHistory first {_name(name)} is {_name(value)[:40]} (not a number)"
    return None


def gradnorm_history_problem(state: Any, shape: Sequence[int] | None = None) -> str | None:
    """What is wrong with a saved ``GradNormHistory`` state, or None: ``steps`` must be ``(N,)``
    non-negative integers and ``weights`` ``(N, hourglasses, tasks)`` finite non-negative
    floats (``shape``: the network's ``(hourglasses, tasks)``, when known; N = 0: any empty
    tensor). The weight plot at the end of training crashed on any other."""
    if not isinstance(state, Mapping):
        return f"GradNormHistory state is a {type(state).__name__}, not a mapping"
    for key in ("steps", "weights"):
        if not isinstance(state.get(key), torch.Tensor):
            return f"GradNormHistory {key} is a {type(state.get(key)).__name__}, not a tensor"
    steps, weights = state["steps"], state["weights"]
    if (steps.ndim != 1 or steps.is_floating_point() or steps.is_complex()
            or steps.dtype == torch.bool):
        return (f"GradNormHistory steps are {tuple(steps.shape)} {steps.dtype}, not integer "
                "steps (N,)")
    if steps.numel() and bool((steps < 0).any()):
        return "GradNormHistory steps hold negative values"
    n = steps.numel()
    if n == 0:
        return None if weights.numel() == 0 else (
            f"GradNormHistory holds weights {tuple(weights.shape)} for no steps")
    want = (n, *shape) if shape is not None else None
    if (weights.ndim != 3 or weights.shape[0] != n or min(weights.shape) < 1
            or (want is not None and tuple(weights.shape) != want)):
        expected = want or f"({n}, hourglasses, tasks)"
        return f"GradNormHistory weights are {tuple(weights.shape)}, not {expected}"
    if not weights.is_floating_point():
        return f"GradNormHistory weights are {weights.dtype}, not floats"
    if not bool(torch.isfinite(weights).all()):
        return "GradNormHistory weights hold NaN or inf"
    if bool((weights < 0).any()):
        return "GradNormHistory weights hold negative values"
    return None


def scheduler_state_problem(states: Any) -> str | None:
    """What is wrong with Lightning's ``lr_schedulers`` (a list of StepLR state dicts), or None:
    a step size below 1, a negative or non-finite gamma, negative or non-finite rates."""
    if not isinstance(states, list):
        return f"lr_schedulers is a {type(states).__name__}, not a list"
    for i, sched in enumerate(states):
        if not isinstance(sched, Mapping):
            return f"scheduler {i}'s state is not a mapping"
        checks = {"gamma": (0.0, True), "step_size": (1.0, True), "last_epoch": (-1.0, True)}
        for key, (low, inclusive) in checks.items():
            if key in sched and (p := _number_problem(f"scheduler {i} {key}", sched[key], low,
                                                       inclusive)):
                return p
        for key in ("base_lrs", "_last_lr"):
            for value in sched.get(key) or []:
                if p := _number_problem(f"scheduler {i} {key}", value, 0.0, True):
                    return p
    return None


def settings_mismatch(saved: Mapping[str, Any] | None, configured: Mapping[str, Any],
                      keys: tuple[str, ...]) -> str | None:
    """The first of ``keys`` whose saved value differs from the configured one (keys missing on
    either side, from older checkpoints, are not compared), as ``key: saved -> configured``."""
    if not isinstance(saved, Mapping):
        return None
    for key in keys:
        if key in saved and key in configured and comparable(saved[key]) != comparable(
                configured[key]):
            return f"{key} {saved[key]!r} -> {configured[key]!r}"
    return None


def dataset_change(saved: Mapping[str, Any] | None, configured: Mapping[str, Any]) -> str | None:
    """The first ``DATASET_KEYS`` setting that differs between a checkpoint's DataModule
    record and the configured one, as ``key: saved -> configured``, or None. A data folder,
    split file or phantom config is compared by the path it names; one recorded that no longer
    exists (the data were moved) may be given anew."""
    if not isinstance(saved, Mapping):
        return None
    for key, kind in (("data_root", Path.is_dir), ("split_file", Path.is_file),
                      ("phantom_config", Path.is_file)):
        old, new = saved.get(key), configured.get(key)
        if old is not None and new is not None and (
                same_path(old, new) or not _recorded_is(old, kind)):
            saved = {k: v for k, v in saved.items() if k != key}
    return settings_mismatch(saved, configured, DATASET_KEYS)


def _recorded_is(name: Any, kind: Callable[[Path], bool]) -> bool:
    """Whether a recorded path (any text a checkpoint holds) names an existing folder or file
    (``kind``: ``Path.is_dir``, ``Path.is_file``); False where it cannot be looked at."""
    try:
        return kind(Path(str(name)).expanduser())
    except (OSError, RuntimeError, ValueError):  # NUL bytes, no home folder, a link loop
        return False


def same_path(a: Any, b: Any) -> bool:
    """Whether two recorded paths lead to one file or folder (text first, then the file
    system, ``~`` expanded); False where either cannot be resolved."""
    if str(a) == str(b):
        return True
    try:
        return Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return False


def comparable(value: Any) -> Any:
    """A value as compared: lists as tuples (YAML and a re-parsed config differ there), and an
    empty mapping as None (``net_kwargs`` None and {} build the same network)."""
    if isinstance(value, Mapping):
        return {k: comparable(v) for k, v in value.items()} or None
    if isinstance(value, list | tuple):
        return tuple(comparable(v) for v in value)
    return value


# Lightning's loop progress trackers (``_Progress``: ``current`` and ``total`` counts of these
# events) and the largest count taken as real: 10^9 epochs or steps are far beyond any run. The
# counters of one tracker are not compared with each other: Lightning's restart paths raise
# ``processed`` or ``completed`` alone (a run stopped by ``max_steps`` mid-epoch and resumed
# saves ``processed`` 2 with ``started`` 1). ``current`` restarts each run or epoch while
# ``total`` only grows, so no current count exceeds its total where Lightning saves.
_PROGRESS_COUNTERS = ("ready", "started", "processed", "completed")
MAX_COUNT = 10**9
_MAX_DEPTH = 16  # Lightning nests its loop states four or five levels deep
# where Lightning's ``global_step`` comes from: automatic or manual optimisation's step total
_STEP_TRACKERS = (("epoch_loop.automatic_optimization.optim_progress", "optimizer", "step"),
                  ("epoch_loop.manual_optimization.optim_step_progress",))


def _name(key: Any) -> str:
    """A state key as named in a message: printable and short (a crafted key may hold a line
    break or be long)."""
    text = key if isinstance(key, str) else repr(key)
    return text[:60] if text.isprintable() else ascii(text)[:60]


def _count_problem(where: str, value: Any) -> str | None:
    if not _is_id(value) or not 0 <= value < MAX_COUNT:
        return (f"{where} is {_name(value)[:40]} (a count: a whole number from 0 to "
                f"{MAX_COUNT - 1})")
    return None


def _tracker_problem(where: str, tracker: Mapping[str, Any]) -> str | None:
    """What is wrong with one saved progress tracker (``{"current": {...}, "total": {...}}``):
    counts that are not whole numbers in range, keys other than Lightning's counters (it sets
    every saved key as an attribute of the tracker), other counters in ``current`` than in
    ``total``, a current count above its total, an ``is_last_batch`` that is not a bool."""
    parts: dict[str, Mapping[str, Any]] = {}
    for part in ("current", "total"):
        counts = tracker[part]
        if not isinstance(counts, Mapping):
            return f"{where}.{part} is a {type(counts).__name__}, not a mapping"
        if unknown := [k for k in counts if k not in _PROGRESS_COUNTERS]:
            return f"{where}.{part} holds {_name(unknown[0])} (not a progress counter)"
        for key in _PROGRESS_COUNTERS:
            if key in counts and (p := _count_problem(f"{where}.{part}.{key}", counts[key])):
                return p
        parts[part] = counts
    current, total = parts["current"], parts["total"]
    if set(current) != set(total):
        return f"{where}.current and {where}.total hold other counters"
    for key in _PROGRESS_COUNTERS:
        if key in current and current[key] > total[key]:
            return (f"{where}.current.{key} is {current[key]}, above its total {total[key]} "
                    "(the total counts every run)")
    if "is_last_batch" in tracker and not isinstance(tracker["is_last_batch"], bool):
        return f"{where}.is_last_batch is {_name(tracker['is_last_batch'])[:40]} (not a bool)"
    return None


def _lookup(state: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        state = state.get(key) if isinstance(state, Mapping) else None
    return state


def loop_state_problem(ckpt: Mapping[str, Any]) -> str | None:
    """What is wrong with a checkpoint's ``epoch``, ``global_step`` and Lightning's ``loops``
    progress, or None. Lightning restores the loops' counters as they are and takes the epoch
    from them: -1000000 ran a million empty epochs (a thousand a second, never ending), NaN
    crashed the first epoch (``int(epoch)``) after the run folder was made (red-team round 8).

    Every progress tracker in ``loops`` is checked (``_tracker_problem``), ``fit_loop``'s
    ``epoch_progress`` must be one; ``_batches_that_stepped`` (the logging step), ``epoch``
    and ``global_step`` must be counts, and the latter two what Lightning saves them from: the
    epoch is ``epoch_progress.current.completed``, the step an optimisation's step total.
    Parts that are missing are not required here (Lightning's restore refuses a ``loops``
    without them, ``train._refuse_restore_errors``).
    """
    for key in ("epoch", "global_step"):
        if key in ckpt and (p := _count_problem(key, ckpt[key])):
            return p
    loops = ckpt.get("loops")
    if not isinstance(loops, Mapping):
        return f"loops is a {type(loops).__name__}, not a mapping"
    stack: list[tuple[str, Mapping[str, Any], int]] = [("loops", loops, 0)]
    while stack:  # depth first, without recursion (a crafted state may nest deeply)
        where, state, depth = stack.pop()
        if depth > _MAX_DEPTH:
            return f"{where} nests more than {_MAX_DEPTH} levels deep"
        if "current" in state and "total" in state:
            if p := _tracker_problem(where, state):
                return p
            continue
        for key, value in state.items():
            name = f"{where}.{_name(key)}"
            if isinstance(value, Mapping):
                stack.append((name, value, depth + 1))
            elif key == "_batches_that_stepped" and (p := _count_problem(name, value)):
                return p
    fit = loops.get("fit_loop")
    epochs = _lookup(fit, ("epoch_progress",))
    if epochs is not None and not (isinstance(epochs, Mapping)
                                   and {"current", "total"} <= set(epochs)):
        return "loops.fit_loop.epoch_progress is not a progress tracker (current and total)"
    completed = _lookup(epochs, ("current", "completed"))
    if "epoch" in ckpt and completed is not None and ckpt["epoch"] != completed:
        return (f"epoch is {ckpt['epoch']}, its loops.fit_loop.epoch_progress.current."
                f"completed {completed} (Lightning saves the one from the other)")
    steps = [s for keys in _STEP_TRACKERS
             if (s := _lookup(fit, (*keys, "total", "completed"))) is not None]
    if "global_step" in ckpt and steps and ckpt["global_step"] not in steps:
        return (f"global_step is {ckpt['global_step']}, its loops' optimiser steps "
                f"{' or '.join(map(str, steps))} (Lightning saves the one from the other)")
    return None
