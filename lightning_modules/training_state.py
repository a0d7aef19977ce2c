"""Checks of a resumed checkpoint's training state: optimiser, scheduler and settings.

Lightning restores the optimisers' and the scheduler's state as the file gives it, after the
config checks have run: a crafted or damaged checkpoint with a negative learning rate,
``maximize: True`` or a scheduler ``gamma`` of -100 trained the network uphill and exited 0, and
NaN in RMSProp's ``square_avg`` turned every weight to NaN at the first step. A resume is
also a continuation of one run: a config that changes the network's norm, the input size or the
heat-map targets would write checkpoints whose settings describe another training than their
weights had. Lightning-free (plain dicts and tensors), like ``checkpoint_file``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from datamodules.real_numbers import finite_real, real_value

# optimiser group settings: (lowest allowed, lower bound included); the upper bound is finite
_GROUP_RANGES: dict[str, tuple[float, bool]] = {
    "lr": (0.0, True), "initial_lr": (0.0, True), "momentum": (0.0, True),
    "weight_decay": (0.0, True), "eps": (0.0, False), "alpha": (0.0, True),
}  # fmt: skip
_NONNEGATIVE_STATE = ("square_avg", "step", "exp_avg_sq")  # running averages of squares, counts
# settings that make a run: module hyper-parameters and the DataModule's target settings
ARCHITECTURE_KEYS = ("num_stacks", "depth", "c1", "c2", "c_star", "norm", "net_kwargs",
                     "image_size")  # fmt: skip
TARGET_KEYS = ("size", "sigma", "roi_spacing_px", "roi_extent")
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
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        return f"{where} {key} holds NaN or inf"
    if key in _NONNEGATIVE_STATE and value.numel() and bool((value < 0).any()):
        return f"{where} {key} holds negative values (a running average of squares or a count)"
    return None


def optimizer_state_problem(states: Any) -> str | None:
    """What is wrong with Lightning's ``optimizer_states`` (a list of optimiser state dicts), or
    None: group settings out of range, ``maximize``, or non-finite / negative running state."""
    if not isinstance(states, list):
        return f"optimizer_states is a {type(states).__name__}, not a list"
    for i, opt in enumerate(states):
        if not isinstance(opt, Mapping):
            return f"optimiser {i}'s state is a {type(opt).__name__}, not a mapping"
        for g, group in enumerate(opt.get("param_groups") or []):
            if not isinstance(group, Mapping):
                return f"optimiser {i} group {g} is not a mapping"
            if p := _group_problem(f"optimiser {i} group {g}", group):
                return p
        state = opt.get("state") or {}
        if not isinstance(state, Mapping):
            return f"optimiser {i}'s per-parameter state is not a mapping"
        for param, entry in state.items():
            for key, value in (entry.items() if isinstance(entry, Mapping) else ()):
                if p := _tensor_problem(f"optimiser {i} parameter {param}", key, value):
                    return p
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
        if key in saved and key in configured and _same(saved[key]) != _same(configured[key]):
            return f"{key} {saved[key]!r} -> {configured[key]!r}"
    return None


def _same(value: Any) -> Any:
    """A value as compared: lists as tuples (YAML and a re-parsed config differ there), and an
    empty mapping as None (``net_kwargs`` None and {} build the same network)."""
    if isinstance(value, Mapping):
        return {k: _same(v) for k, v in value.items()} or None
    if isinstance(value, list | tuple):
        return tuple(_same(v) for v in value)
    return value
