"""A hostile checkpoint whose callback or optimiser state passes Lightning's restore but breaks
training later is refused before training starts, in one line with exit status 2.

Red-team round 6 (resume): a ``MetricsHistory`` value that is not a number crashed the first-vs-
last table after training; ``GradNormHistory`` steps and weights of other lengths, shapes or
with NaN crashed the weight plot at the end; RMSProp groups with ``capturable``, ``centered``,
``differentiable``/``foreach``/``fused`` or duplicated parameter ids crashed the first step.
Each of these ended with a traceback and status 1, after the run folder had been written to.

One tiny run is made per module; each case saves an edited copy of its ``last.ckpt`` outside
the run folder and resumes from it with ``train.main``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lightning_modules import train
from lightning_modules.callbacks import ConfigInCheckpoint, GradNormHistory, MetricsHistory
from lightning_modules.module import KneePlanModule
from lightning_modules.training_state import gradnorm_history_problem, metrics_history_problem

REPO = Path(__file__).resolve().parents[1]
Ckpt = dict


def _args(root: Path, epochs: int, *extra: str) -> list[str]:
    return ["--config", str(REPO / "configs" / "tiny.yaml"), "--run.root", str(root),
            "--run.wandb=false", "--run.val_images=0", f"--trainer.max_epochs={epochs}",
            "--trainer.enable_progress_bar=false", "--data.num_train=2", "--data.num_val=1",
            *extra]


def one_step_checkpoint(root: Path) -> Ckpt:
    """The ``last.ckpt`` of a one-epoch tiny run (one training step) under ``root``."""
    run = train.fit(_args(root, 1))
    assert run.last_checkpoint
    return torch.load(run.last_checkpoint, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Ckpt:
    """``one_step_checkpoint`` of this module."""
    return one_step_checkpoint(tmp_path_factory.mktemp("base"))


def _groups(c: Ckpt) -> list[dict]:
    return [g for opt in c["optimizer_states"] for g in opt["param_groups"]]


def _set_groups(**values: object) -> Callable[[Ckpt], None]:
    def edit(c: Ckpt) -> None:
        for g in _groups(c):
            g.update(values)
    return edit


def _history_first(value: object) -> Callable[[Ckpt], None]:
    def edit(c: Ckpt) -> None:
        c["callbacks"]["MetricsHistory"]["first"]["val/loss"] = value
    return edit


def _all_first_none(c: Ckpt) -> None:
    first = c["callbacks"]["MetricsHistory"]["first"]
    first.update(dict.fromkeys(first))


def _gradnorm(key: str, value: torch.Tensor) -> Callable[[Ckpt], None]:
    def edit(c: Ckpt) -> None:
        c["callbacks"]["GradNormHistory"][key] = value
    return edit


def _duplicate_params(c: Ckpt) -> None:
    for g in _groups(c):
        g["params"] = [0] * len(g["params"])


def _square_avg_shape(c: Ckpt) -> None:
    entry = c["optimizer_states"][0]["state"][0]
    entry["square_avg"] = torch.zeros(entry["square_avg"].numel() + 1)


def _momentum_without_buffer(c: Ckpt) -> None:
    c["optimizer_states"][0]["param_groups"][0]["momentum"] = 0.5


MUTATIONS: dict[str, tuple[Callable[[Ckpt], None], str]] = {
    # red-team round 6 (each crashed after the restore, status 1)
    "history_first_str": (_history_first("x"), "MetricsHistory"),
    "history_first_all_none": (_all_first_none, "MetricsHistory"),
    "gradnorm_weights_shape": (_gradnorm("weights", torch.zeros(1, 7)), "GradNormHistory"),
    "gradnorm_steps_length": (_gradnorm("steps", torch.tensor([1, 2, 3])), "GradNormHistory"),
    "gradnorm_weights_nan": (_gradnorm("weights", torch.full((1, 2, 3), float("nan"))),
                             "GradNormHistory"),
    "rmsprop_capturable": (_set_groups(capturable=True), "capturable is True"),
    "rmsprop_centered": (_set_groups(centered=True), "centered is True"),
    "rmsprop_foreach_fused_differentiable": (
        _set_groups(foreach=True, fused=True, differentiable=True), "is True"),
    "rmsprop_duplicate_param_ids": (_duplicate_params, "params"),
    # the same checks, beyond the red-team's cases
    "gradnorm_weights_other_stacks": (_gradnorm("weights", torch.ones(1, 3, 3)),
                                      "GradNormHistory"),
    "rmsprop_state_shape": (_square_avg_shape, "square_avg"),
    "rmsprop_momentum_without_buffer": (_momentum_without_buffer, "momentum_buffer"),
}


def _resume(tmp_path: Path, ckpt: Ckpt, capsys: pytest.CaptureFixture[str], *extra: str
            ) -> tuple[int | str | None, str, Path, Path]:
    """Exit status, stderr, checkpoint path and run root of ``train.main`` resuming ``ckpt``
    (``extra``: more command-line options)."""
    path = tmp_path / "hostile.ckpt"
    torch.save(ckpt, path)
    root = tmp_path / "runs"
    capsys.readouterr()
    try:
        train.main(_args(root, 2, "--resume", str(path), *extra))
        code: int | str | None = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err, path, root


def _trained(root: Path) -> bool:
    """Whether a run under ``root`` wrote a checkpoint or a metrics row."""
    rows = [len(p.read_text().splitlines()) for p in root.rglob("metrics.csv")]
    return any(root.rglob("*.ckpt")) or any(n > 1 for n in rows)


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_hostile_training_state_is_refused_before_training(base, tmp_path, capsys, name):
    edit, expect = MUTATIONS[name]
    bad = copy.deepcopy(base)
    edit(bad)
    code, err, path, root = _resume(tmp_path, bad, capsys)
    errors = [line for line in err.splitlines() if line.startswith("train: error")]
    assert code == 2, err[-2000:]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert errors[0].startswith(f"train: error: cannot resume: {path}: "), errors
    assert expect in errors[0], errors
    assert not _trained(root)
    # refused by train.resume_checkpoint, before the run folder is made (a running average of
    # another shape was refused only in Lightning's restore, leaving a folder with config.yaml)
    assert not any(root.rglob("*")), sorted(root.rglob("*"))


def test_the_unmodified_checkpoint_resumes(base, tmp_path, capsys):
    code, err, _, root = _resume(tmp_path, copy.deepcopy(base), capsys)
    assert code == 0 and "train: error" not in err, err[-2000:]
    (last,) = root.rglob("last.ckpt")
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["global_step"] > base["global_step"]
    history = resumed["callbacks"]["GradNormHistory"]
    assert history["weights"].shape[0] == len(history["steps"]) > 1


@pytest.mark.parametrize("state, expect", [
    ({"steps": torch.tensor([1.5]), "weights": torch.ones(1, 2, 3)}, "integer"),
    ({"steps": torch.tensor([-1]), "weights": torch.ones(1, 2, 3)}, "negative"),
    ({"steps": torch.tensor([1]), "weights": torch.full((1, 2, 3), float("inf"))}, "NaN"),
    ({"steps": torch.tensor([1])}, "weights"),
    ({"steps": [1], "weights": torch.ones(1, 2, 3)}, "steps"),
])
def test_gradnorm_history_problems(state, expect):
    assert expect in (gradnorm_history_problem(state, (2, 3)) or "")


def test_history_states_lightning_writes_pass():
    assert gradnorm_history_problem({"steps": torch.zeros(0, dtype=torch.int64),
                                     "weights": torch.zeros(0)}, (2, 3)) is None
    assert gradnorm_history_problem({"steps": torch.tensor([1, 2]),
                                     "weights": torch.ones(2, 2, 3)}, (2, 3)) is None
    # a validation metric may be NaN (the table prints it as nan)
    assert metrics_history_problem({"first": {"val/loss": float("nan"), "val/n": 3}}) is None
    assert metrics_history_problem({}) is None
    assert "not a number" in (metrics_history_problem({"first": {"val/loss": True}}) or "")


def test_lightnings_restore_checks_the_states_again(base):
    """A file replaced after ``--resume`` checked it reaches Lightning's restore: the callbacks
    refuse it there (``ValueError``, one line through ``train._refuse_restore_errors``)."""
    module = KneePlanModule(**{k: v for k, v in base["hyper_parameters"].items()
                               if not k.startswith("_")})
    gradnorm, config = GradNormHistory(), ConfigInCheckpoint("")
    for callback in (gradnorm, config):
        callback.on_load_checkpoint(None, module, base)
    gradnorm.load_state_dict(base["callbacks"]["GradNormHistory"])
    assert len(gradnorm.steps) == len(gradnorm.weights) == 1
    for name in ("gradnorm_weights_other_stacks", "gradnorm_weights_nan"):
        bad = copy.deepcopy(base)
        MUTATIONS[name][0](bad)
        with pytest.raises(ValueError, match="GradNormHistory weights"):
            gradnorm.load_state_dict(bad["callbacks"]["GradNormHistory"])
    assert len(gradnorm.steps) == 1  # the refused state was not applied
    with pytest.raises(ValueError, match="not a number"):
        MetricsHistory().load_state_dict({"first": {"val/loss": "x"}})
    for name in ("rmsprop_capturable", "rmsprop_duplicate_param_ids", "rmsprop_state_shape"):
        bad = copy.deepcopy(base)
        MUTATIONS[name][0](bad)
        with pytest.raises(ValueError, match=MUTATIONS[name][1]):
            config.on_load_checkpoint(None, module, bad)
    bad = copy.deepcopy(base)
    bad["optimizer_states"][1]["param_groups"][0]["params"] = [0, 1]
    with pytest.raises(ValueError, match="holds 2 parameters, the network's 1"):
        config.on_load_checkpoint(None, module, bad)
