"""A checkpoint whose loop progress counters, ``epoch`` or ``global_step`` Lightning cannot run
from is refused before the run folder is made, in one line with exit status 2.

Red-team round 8 (resume): Lightning restores ``loops.fit_loop.epoch_progress`` as it is and takes
the epoch from it. Counters of -1000000 ran about a million empty epochs (a thousand a second,
never ending); NaN crashed the first epoch (``int(epoch)`` in the DataModule) with a traceback,
status 1, after the run folder had been written.

One tiny run is made per module; each case saves an edited copy of its ``last.ckpt`` outside the
run folder and resumes from it with ``train.main``. Hostile resumes run under ``max_time``: the
old code trained the negative case without end.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch

from lightning_modules import train
from lightning_modules.checkpoint_file import CheckpointError
from lightning_modules.module import KneePlanModule
from lightning_modules.training_state import MAX_COUNT, loop_state_problem
from tests.test_resume_state_round6 import Ckpt, _resume, one_step_checkpoint

EPOCHS = "epoch_progress"
BATCHES = "epoch_loop.batch_progress"
STEPS = "epoch_loop.manual_optimization.optim_step_progress"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Ckpt:
    """``one_step_checkpoint`` of this module."""
    return one_step_checkpoint(tmp_path_factory.mktemp("base"))


def _fit(c: Ckpt) -> dict:
    return c["loops"]["fit_loop"]


def _all(tracker: str, value: object) -> Callable[[Ckpt], None]:
    """Every counter of ``fit_loop``'s ``tracker`` set to ``value`` (the red-team's edit)."""
    def edit(c: Ckpt) -> None:
        for part in ("current", "total"):
            counts = _fit(c)[tracker][part]
            counts.update(dict.fromkeys(counts, value))
    return edit


def _one(tracker: str, part: str, key: str, value: object) -> Callable[[Ckpt], None]:
    def edit(c: Ckpt) -> None:
        _fit(c)[tracker][part][key] = value
    return edit


def _top(key: str, value: object) -> Callable[[Ckpt], None]:
    def edit(c: Ckpt) -> None:
        c[key] = value
    return edit


def _batches_that_stepped(value: object) -> Callable[[Ckpt], None]:
    def edit(c: Ckpt) -> None:
        _fit(c)["epoch_loop.state_dict"]["_batches_that_stepped"] = value
    return edit


def _last_batch(value: object) -> Callable[[Ckpt], None]:
    def edit(c: Ckpt) -> None:
        _fit(c)[BATCHES]["is_last_batch"] = value
    return edit


def _epoch_progress_without_total(c: Ckpt) -> None:
    del _fit(c)[EPOCHS]["total"]


MUTATIONS: dict[str, tuple[Callable[[Ckpt], None], str]] = {
    # red-team round 8: a million empty epochs, never ending; a traceback after the restore
    "epoch_progress_negative": (_all(EPOCHS, -1_000_000), "is -1000000 (a count"),
    "epoch_progress_nan": (_all(EPOCHS, float("nan")), "is nan (a count"),
    # the same check, beyond the red-team's cases
    "epoch_progress_float": (_all(EPOCHS, 1.0), "is 1.0 (a count"),
    "epoch_progress_huge": (_all(EPOCHS, 10**12), f"(a count: a whole number from 0 to "
                                                  f"{MAX_COUNT - 1})"),
    "batch_progress_bool": (_one(BATCHES, "current", "started", True), "started is True"),
    "batch_progress_inf": (_all(BATCHES, float("inf")), "is inf"),
    "optimizer_steps_negative": (_one(STEPS, "total", "completed", -1), "completed is -1"),
    "batch_progress_unknown_counter": (_one(BATCHES, "current", "reset", 0),
                                       "reset (not a progress counter)"),
    "batch_progress_current_above_total": (_one(BATCHES, "current", "ready", 9),
                                           "current.ready is 9, above its total 1"),
    "epoch_progress_current_above_total": (_one(EPOCHS, "current", "processed", 2),
                                           "current.processed is 2, above its total 1"),
    "is_last_batch_not_bool": (_last_batch("yes"), "is_last_batch is yes (not a bool)"),
    "batches_that_stepped_negative": (_batches_that_stepped(-5), "_batches_that_stepped is -5"),
    "epoch_negative": (_top("epoch", -1), "epoch is -1 (a count"),
    "epoch_nan": (_top("epoch", float("nan")), "epoch is nan"),
    "global_step_huge": (_top("global_step", 10**15), "global_step is 1000000000000000"),
    "epoch_other_than_loops": (_top("epoch", 7), "epoch is 7, its loops"),
    "global_step_other_than_loops": (_top("global_step", 5), "global_step is 5, its loops"),
    "loops_not_a_mapping": (_top("loops", [1, 2]), "loops is a list"),
    "epoch_progress_without_total": (_epoch_progress_without_total,
                                     "epoch_progress is not a progress tracker"),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_unusable_loop_state_is_refused_before_the_run_folder(base, tmp_path, capsys, name):
    edit, expect = MUTATIONS[name]
    bad = copy.deepcopy(base)
    edit(bad)
    # max_time: the old code ran the negative case's million epochs without end
    code, err, path, root = _resume(tmp_path, bad, capsys, "--trainer.max_time=00:00:00:30")
    errors = [line for line in err.splitlines() if line.startswith("train: error")]
    assert code == 2, err[-2000:]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert errors[0].startswith(
        f"train: error: cannot resume: {path}: its training state is unusable: "), errors
    assert expect in errors[0], errors
    assert not any(root.rglob("*")), sorted(root.rglob("*"))


def test_resume_checkpoint_refuses_the_red_team_counters(base, tmp_path):
    """``resume_checkpoint`` itself, without a run: the negative counters hung the old code."""
    module = KneePlanModule(**{k: v for k, v in base["hyper_parameters"].items()
                               if not k.startswith("_")})
    for name in ("epoch_progress_negative", "epoch_progress_nan"):
        bad = copy.deepcopy(base)
        MUTATIONS[name][0](bad)
        path = tmp_path / f"{name}.ckpt"
        torch.save(bad, path)
        with pytest.raises(CheckpointError, match="epoch_progress.current.ready is"):
            train.resume_checkpoint(
                train.RunOptions(resume=str(path), root=str(tmp_path / "runs")), module)
    assert not (tmp_path / "runs").exists()


def test_the_unmodified_checkpoint_resumes(base, tmp_path, capsys):
    assert loop_state_problem(base) is None
    code, err, _, root = _resume(tmp_path, copy.deepcopy(base), capsys)
    assert code == 0 and "train: error" not in err, err[-2000:]
    (last,) = root.rglob("last.ckpt")
    resumed = torch.load(last, map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["global_step"] > base["global_step"]
    assert loop_state_problem(resumed) is None  # a resumed run's checkpoint resumes too


def _counts(ready: int, started: int, processed: int, completed: int) -> dict[str, int]:
    return {"ready": ready, "started": started, "processed": processed, "completed": completed}


def test_counters_lightning_writes_out_of_order_pass(base):
    """Lightning's restart paths raise ``processed``/``completed`` alone: a run stopped by
    ``max_steps`` mid-epoch, resumed and stopped so again saved this ``epoch_progress``, and
    a validation counts its current run below its total (several per epoch)."""
    c = copy.deepcopy(base)
    _fit(c)[EPOCHS] = {"current": _counts(1, 1, 2, 0), "total": _counts(1, 1, 2, 0)}
    c["epoch"] = 0
    _fit(c)["epoch_loop.val_loop.batch_progress"] = {
        "current": _counts(1, 1, 1, 1), "total": _counts(4, 4, 4, 4), "is_last_batch": True}
    assert loop_state_problem(c) is None
    # an older Lightning's loops without these trackers, global_step or batches_that_stepped
    del _fit(c)[STEPS], _fit(c)["epoch_loop.automatic_optimization.optim_progress"]
    del c["global_step"], _fit(c)["epoch_loop.state_dict"]["_batches_that_stepped"]
    assert loop_state_problem(c) is None


def test_crafted_keys_are_named_in_one_line(base):
    c = copy.deepcopy(base)
    _fit(c)[BATCHES]["current"]["a\nb"] = 1
    problem = loop_state_problem(c) or ""
    assert "\n" not in problem and "not a progress counter" in problem
    deep: dict = {}
    node = deep
    for _ in range(40):
        node["x"] = {}
        node = node["x"]
    c = copy.deepcopy(base)
    _fit(c)["deep"] = deep
    assert "nests more than" in (loop_state_problem(c) or "")


def test_crafted_history_and_optimiser_values_are_named_in_one_line(base):
    """A metric name, a metric value or an RMSProp switch holding a line break stays one line
    (``str(value)`` put the break into the message)."""
    from lightning_modules.training_state import metrics_history_problem, optimizer_state_problem

    problem = metrics_history_problem({"first": {"val/a\nb": "1\n2"}, "last": {}})
    assert problem is not None and "\n" not in problem, problem
    states = copy.deepcopy(base["optimizer_states"])
    states[0]["param_groups"][0]["foreach"] = "yes\nno"
    problem = optimizer_state_problem(states)
    assert problem is not None and "\n" not in problem and "foreach" in problem, problem
