"""Sweep guards (red-team round 7): a continued study keeps its objective and training settings,
Ctrl-C stops the sweep, training options and enqueued values are checked before any trial, and
storage / output problems are one line with status 2 (no password shown).

The trials here are test doubles of `lightning_modules.train.fit` (instant, or a real Trainer
on a two-parameter toy), but every sweep's training arguments still go through the real
training CLI check (configs/tiny.yaml).
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import pytorch_lightning as pl
import torch
from optuna.trial import TrialState

import sweeps.run
from sweeps.guards import SETTINGS_ATTR
from sweeps.objective import ObjectiveSpec
from sweeps.report import main as report_main
from sweeps.run import run_sweep
from sweeps.storage import mask_url, open_storage
from tests.sweep_doubles import instant_fit, never_fit, opts

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"

optuna.logging.set_verbosity(optuna.logging.WARNING)




def _sweep(tmp_path, *argv, study="s", trials=1, fit=instant_fit):
    return run_sweep(["--trials", str(trials), "--study", study, "--studies-dir",
                      str(tmp_path / "st"), "--config", str(TINY), "--pruner", "none", *argv],
                     fit=fit)


def _one_error(capsys, prefix="sweeps.run: error:"):
    err = [ln for ln in capsys.readouterr().err.splitlines()
           if ln.strip() and not ln.startswith("[I ")]  # (Optuna's own info line)
    assert len(err) == 1 and err[0].startswith(prefix), err
    assert "Traceback" not in err[0]
    return err[0]


# ------------------------------------------------------- 1. a continued study keeps its settings
@pytest.mark.parametrize(
    ("change", "named"),
    [(["--weight-iou", "1000"], "--weight-iou=0.0, this run has --weight-iou=1000.0"),
     (["--objective-unit", "px"], "--objective-unit=auto, this run has --objective-unit=px"),
     (["--trainer.max_epochs=3"], "trainer.max_epochs=2, this run has trainer.max_epochs=3"),
     (["--data.num_train=6"], "data.num_train=8, this run has data.num_train=6"),
     (["--config", "OTHER"], "model.c1=4, this run has model.c1=8"),
     # a dict-valued option set where the study had none (review: accepted as "added since")
     (['--data.phantom_overrides={"factors_off": ["metal"]}'],
      'data.phantom_overrides=null, this run has data.phantom_overrides={"factors_off": '
      '["metal"]}')],
)
def test_continued_study_refuses_another_objective_or_training(tmp_path, capsys, change, named):
    """Was accepted: a trial scored in px + 1000 (1 - IoU) was ranked beside trials in mm, and
    best_trial.json still named the first formula."""
    _sweep(tmp_path)
    assert SETTINGS_ATTR in _load(tmp_path, "s").user_attrs
    if change[0] == "--config":  # the same options, one network width changed
        other = tmp_path / "other.yaml"
        other.write_text(TINY.read_text().replace("  c1: 4\n", "  c1: 8\n"))
        change = ["--config", str(other)]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        _sweep(tmp_path, *change, fit=never_fit)
    assert stop.value.code == 2
    line = _one_error(capsys)
    assert "study 's'" in line and named in line, line
    assert len(_load(tmp_path, "s").get_trials(deepcopy=False)) == 1


def test_continued_study_with_the_same_settings_goes_on(tmp_path, capsys):
    _sweep(tmp_path)
    # display settings and the run folder section do not change a trial's score
    study = _sweep(tmp_path, "--trainer.enable_progress_bar=false", "--run.val_images=2",
                   "--enqueue", "beta=0.6,alpha=1")
    assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.COMPLETE] * 2
    assert "warning" not in capsys.readouterr().err


def test_study_of_older_code_is_warned_once_and_recorded(tmp_path, capsys):
    """A study made before the settings were recorded: its objective formula is compared, the
    rest recorded (one warning), and later workers are compared with that record."""
    storage = open_storage(None, "old", tmp_path / "st")
    study = optuna.create_study(study_name="old", storage=storage)
    study.set_user_attr("objective", ObjectiveSpec().describe())
    dist = {"beta": optuna.distributions.FloatDistribution(0, 2),
            "alpha": optuna.distributions.FloatDistribution(0, 3)}
    study.add_trial(optuna.create_trial(state=TrialState.COMPLETE, value=1.0,
                                        params={"beta": 1.0, "alpha": 1.0}, distributions=dist))
    with pytest.raises(SystemExit) as stop:  # another formula than the recorded one
        _sweep(tmp_path, "--weight-iou", "5", study="old", fit=never_fit)
    assert stop.value.code == 2 and "objective=" in _one_error(capsys)
    _sweep(tmp_path, study="old")
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "older sweeps.run" in warnings[0]
    assert SETTINGS_ATTR in _load(tmp_path, "old").user_attrs
    _sweep(tmp_path, study="old")
    assert "warning" not in capsys.readouterr().err  # once
    with pytest.raises(SystemExit):
        _sweep(tmp_path, "--trainer.max_epochs=5", study="old", fit=never_fit)


def _load(tmp_path, name):
    return optuna.load_study(study_name=name, storage=open_storage(None, name, tmp_path / "st"))


# ------------------------------------------------------------------------ 2. Ctrl-C stops it
class _Toy(pl.LightningModule):
    """Two epochs of two steps; logs val/lm_err_mm_median = (beta - 0.6)^2 + (alpha - 1)^2."""

    def __init__(self, value):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.value = value

    def training_step(self, batch, batch_idx):
        return (self.w - batch).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/lm_err_mm_median", self.value)
        self.log("val/loss", 1.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(4, 1), batch_size=2)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(2, 1), batch_size=2)


class _CtrlC(pl.Callback):
    """Sends this process SIGINT (as Ctrl-C does) at one point of one trial's training."""

    def __init__(self, when):
        self.when = when

    def _send(self):
        os.kill(os.getpid(), signal.SIGINT)

    def on_train_batch_end(self, trainer, *args):
        if self.when == "mid-training" and trainer.current_epoch == 1:
            self._send()

    def on_train_end(self, trainer, pl_module):  # after the last epoch, in Lightning's fit
        if self.when == "train-end":
            self._send()


def _ctrl_c_fit(interrupt_trial, when):
    """A fit double: a real Trainer on `_Toy`; trial `interrupt_trial` gets Ctrl-C `when`."""

    def fit(args, callbacks=None):
        o = opts(args)
        value = (float(o["model.beta"]) - 0.6) ** 2 + (float(o["model.alpha"]) - 1.0) ** 2
        number = int(o["run.name"][1:])
        extra = [_CtrlC(when)] if number == interrupt_trial else []
        trainer = pl.Trainer(max_epochs=2, callbacks=[*(callbacks or []), *extra], logger=False,
                             enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu",
                             num_sanity_val_steps=0)
        trainer.fit(_Toy(value))
        return SimpleNamespace(trainer=trainer, run_dir=Path(o["run.root"]) / o["run.name"],
                               metrics={k: float(v) for k, v in trainer.callback_metrics.items()})

    return fit


@pytest.fixture
def sigint_handler():
    """The SIGINT handler before the test, put back after it whatever happened."""
    before = signal.getsignal(signal.SIGINT)
    yield before
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_during_training_stops_the_sweep(tmp_path, capsys, sigint_handler):
    """Was: the trial failed as "invalid arguments?" and the next trial started; a second
    Ctrl-C gave a traceback."""
    argv = ["--enqueue", "beta=0.6,alpha=1", "--enqueue", "beta=1.5,alpha=2"]
    with pytest.raises(SystemExit) as stop:
        _sweep(tmp_path, *argv, trials=4, fit=_ctrl_c_fit(1, "mid-training"))
    assert stop.value.code == 130
    out, err = capsys.readouterr()
    assert "best trial #0" in out  # the summary of the completed trials
    assert err.strip().splitlines()[-1] == (
        "sweeps.run: interrupted after 1 completed trials (study 's' kept; run the same "
        "command to continue)")
    assert signal.getsignal(signal.SIGINT) is sigint_handler  # handler given back
    t0, t1, t2 = _load(tmp_path, "s").get_trials(deepcopy=False)  # no further trial ran
    assert t0.state == TrialState.COMPLETE and t0.value == pytest.approx(0.0)
    assert t1.state == TrialState.FAIL
    assert t1.user_attrs["fail_reason"] == "interrupted (Ctrl-C) in epoch 1"
    # its parameters wait to run first when the study continues
    assert t2.state == TrialState.WAITING and t2.user_attrs["retry_of"] == 1
    # the report's table: the epochs the interrupted trial completed, and the values the
    # queued retry will run with (both cells were empty)
    from sweeps.report import trial_rows

    header, rows = trial_rows(_load(tmp_path, "s"))
    assert t1.user_attrs["epochs"] == 1 and rows[1]["epochs"] == 1
    assert (rows[2]["beta"], rows[2]["alpha"]) == pytest.approx((t1.params["beta"],
                                                                 t1.params["alpha"]))
    study = _sweep(tmp_path, *argv, trials=1, fit=_ctrl_c_fit(-1, ""))
    t2 = study.get_trials(deepcopy=False)[2]
    assert t2.state == TrialState.COMPLETE and t2.params == pytest.approx(t1.params)


def test_ctrl_c_after_training_keeps_the_trials_value(tmp_path, capsys, sigint_handler):
    """Was: a trial that had finished all its epochs was stored as failed."""
    with pytest.raises(SystemExit) as stop:
        _sweep(tmp_path, "--enqueue", "beta=1.6,alpha=1", trials=3,
               fit=_ctrl_c_fit(0, "train-end"))
    assert stop.value.code == 130
    assert "interrupted after 1 completed trials" in capsys.readouterr().err
    (t0,) = _load(tmp_path, "s").get_trials(deepcopy=False)
    assert t0.state == TrialState.COMPLETE and t0.value == pytest.approx(1.0)
    assert t0.user_attrs["epochs"] == 2 and "fail_reason" not in t0.user_attrs


# --------------------------------------- 3, 5, 6. checked once before any trial: one line, 2
@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["--model.bogus=1"], "unrecognized arguments: --model.bogus=1"),
     (["--trainer.max_epochs=-5"], "max_epochs` must be a non-negative integer"),
     (["--data.batch_size=0"], "data.batch_size=0 must be at least 1"),
     (["--enqueue", "beta=nan"], "--enqueue beta=nan: values must be finite"),
     (["--enqueue", "beta=5,alpha=1"], "beta=5 is outside the searched range --beta 0,2"),
     (["--alpha=-1,2"], "GradNorm's alpha must be >= 0"),
     (["--enqueue", "beta=1,alpha=-1"], "alpha=-1 is outside the searched range --alpha 0,3"),
     (["--beta=-1,2"], "the loss weight beta must be >= 0"),
     (["--config", "nope.yaml"], "training config nope.yaml: no such file"),
     (["--pruner", "threshold"], "--pruner threshold needs --prune-above")],
)
def test_bad_training_options_and_enqueues_are_refused_before_any_trial(
        tmp_path, capsys, argv, expected):
    """Was: every trial failed with a traceback (exit 1, or 0 when the study had a completed
    trial); `--enqueue beta=nan` was a failed trial; a missing config was status 1."""
    with pytest.raises(SystemExit) as stop:
        _sweep(tmp_path, *argv, fit=never_fit)
    assert stop.value.code == 2
    line = _one_error(capsys)
    assert expected in line, line
    assert not (tmp_path / "st").exists()  # refused before the study folder is made


# --------------------------------------------------- 4. storage and output: one line, masked
def test_studies_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(SystemExit) as stop:
        run_sweep(["--trials", "1", "--study", "s", "--studies-dir", str(afile),
                   "--config", str(TINY)], fit=never_fit)
    assert stop.value.code == 2
    line = _one_error(capsys)
    assert f"--studies-dir {afile}" in line and "Not a directory" in line, line


@pytest.mark.parametrize("url", ["mysql://user:s3cret@127.0.0.1:1/db",
                                 "bogus://user:s3cret@host/db"])
def test_storage_problems_are_one_line_without_the_password(tmp_path, capsys, url):
    with pytest.raises(SystemExit) as stop:
        _sweep(tmp_path, "--storage", url, fit=never_fit)
    assert stop.value.code == 2
    line = _one_error(capsys)
    assert "s3cret" not in line and "user:***@" in line, line
    assert "cannot open the study storage" in line
    if url.startswith("mysql"):
        assert "driver is not installed" in line
    assert report_main(["--study", "s", "--storage", url]) == 2
    line = _one_error(capsys, "sweeps.report: error:")
    assert "s3cret" not in line and "user:***@" in line, line


def test_mask_url():
    assert (mask_url("see postgresql://u:p%40ss@db:5432/k now")
            == "see postgresql://u:***@db:5432/k now")
    assert mask_url("sqlite:////a/b.db") == "sqlite:////a/b.db"
    assert mask_url("postgresql://u@db/k") == "postgresql://u@db/k"


def test_report_out_that_is_a_file_is_one_line(tmp_path, capsys):
    _sweep(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "sub"):
        assert report_main(["--study", "s", "--studies-dir", str(tmp_path / "st"),
                            "--out", str(out)]) == 2
        line = _one_error(capsys, "sweeps.report: error:")
        assert str(afile) in line, line
    assert afile.read_text() == "x"


def test_best_trial_json_names_the_studys_formula(tmp_path):
    _sweep(tmp_path, "--weight-iou", "2", "--objective-unit", "mm")
    assert report_main(["--study", "s", "--studies-dir", str(tmp_path / "st")]) == 0
    best = json.loads((tmp_path / "st" / "s" / "best_trial.json").read_text())
    assert best["objective"] == ObjectiveSpec(unit="mm", weight_iou=2).describe()
    assert math.isfinite(best["value"])


def test_settings_set_on_one_side_only():
    """A key inside a dict-valued option, or an option given whole on one side and by its keys
    on the other, is a change; a plain option only one code version knows is not."""
    from sweeps.guards import settings_problem

    rec = {"model.c1": 4, "data.phantom_overrides": None, "model.net_kwargs.a": 1}
    assert settings_problem("s", rec, dict(rec)) is None
    assert settings_problem("s", rec, {**rec, "data.strict_validation": False}) is None
    moved = {"model.c1": 4, "data.phantom_overrides.factors_off": ["metal"],
             "model.net_kwargs.a": 1}
    assert "data.phantom_overrides" in (settings_problem("s", rec, moved) or "")
    assert "data.phantom_overrides" in (settings_problem("s", moved, rec) or "")  # and back
    more = {**rec, "model.net_kwargs.b": 2}
    assert "model.net_kwargs.b=(not set), this run has model.net_kwargs.b=2" in (
        settings_problem("s", rec, more) or "")
    # an older study recorded only its objective: the rest is not compared
    assert settings_problem("s", {"objective": "x"}, {**rec, "objective": "x"},
                            complete=False) is None


def test_interrupted_trials_do_not_use_up_max_total_trials():
    """A Ctrl-C'd trial is FAILED "interrupted" and its parameters run again: it took one trial of
    --max-total-trials's budget and its re-run another (review, session 16)."""
    import optuna

    from sweeps.run import count_finished, stop_at_total

    study = optuna.create_study()
    for value, reason in ((1.0, None), (None, "interrupted (Ctrl-C) in epoch 1"),
                          (None, "training raised RuntimeError")):
        trial = study.ask()
        if reason:
            trial.set_user_attr("fail_reason", reason)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, value)
    assert count_finished(study) == 2  # the complete and the crashed one, not the interrupted
    stopped = []
    study.stop = lambda: stopped.append(True)  # (outside optimize: record the request)
    stop_at_total(3)(study, study.trials[-1])
    assert not stopped
    stop_at_total(2)(study, study.trials[-1])
    assert stopped


# ------------------------------------ 6. two workers starting a new study at the same moment
def _empty_study(tmp_path, name):
    """A study as its creator leaves it between creating it and recording its settings."""
    return optuna.create_study(study_name=name, storage=open_storage(None, name, tmp_path / "st"))


def test_a_joining_worker_waits_for_the_creators_settings(tmp_path, capsys):
    """Was: two workers creating a study at once each recorded their own settings (last write
    won), so one of them trained under settings the study no longer recorded. Now only the
    creator records them; a worker that joins an empty study waits for them and is compared."""
    _sweep(tmp_path, study="ref")
    creator_settings = _load(tmp_path, "ref").user_attrs
    study = _empty_study(tmp_path, "s")

    def creator_records():
        time.sleep(0.5)
        study.set_user_attr(SETTINGS_ATTR, creator_settings[SETTINGS_ATTR])
        study.set_user_attr("objective", creator_settings["objective"])

    writer = threading.Thread(target=creator_records)
    writer.start()
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        _sweep(tmp_path, "--trainer.max_epochs=3", study="s", fit=never_fit)
    writer.join()
    assert stop.value.code == 2
    assert "trainer.max_epochs=2, this run has trainer.max_epochs=3" in _one_error(capsys)
    assert _load(tmp_path, "s").user_attrs[SETTINGS_ATTR] == creator_settings[SETTINGS_ATTR]


def test_an_empty_study_whose_creator_never_recorded_is_taken_over(tmp_path, monkeypatch):
    """A creator that died before recording: after the wait the joiner records its own."""
    monkeypatch.setattr(sweeps.run, "SETTINGS_WAIT_S", 0.3)
    _empty_study(tmp_path, "s")
    study = _sweep(tmp_path, study="s")
    assert SETTINGS_ATTR in study.user_attrs
    assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.COMPLETE]
