"""Sweeps (issue 7): objective, pruning callback, heartbeat retry, report, and a real study.

The end-to-end test trains the real model (configs/tiny.yaml) in every trial: a normal trial,
a NaN trial (huge learning rate), a bad trial pruned through our callback, then a second worker
process that is killed mid-trial and a third that continues the study and retries the lost trial.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import pytorch_lightning as pl
import torch
from optuna.trial import TrialState

from sweeps.objective import ObjectiveSpec
from sweeps.pruning import OptunaPruning
from sweeps.report import main as report_main
from sweeps.report import write_report
from sweeps.run import run_sweep
from sweeps.space import SearchSpace, cli_overrides
from sweeps.storage import default_storage_url, normalise_url, open_storage

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ----------------------------------------------------------------------------- objective
def test_objective_auto_unit_uses_mm_when_finite_else_px():
    spec = ObjectiveSpec()
    assert spec({"val/lm_err_mm_median": 3.5, "val/lm_err_px_median": 9.0}) == 3.5
    assert spec({"val/lm_err_mm_median": math.nan, "val/lm_err_px_median": 9.0}) == 9.0
    assert spec({"val/lm_err_px_median": 9.0}) == 9.0
    both = {"val/lm_err_mm_median": 3.5, "val/lm_err_px_median": 9.0}
    assert ObjectiveSpec(unit="px")(both) == 9.0
    with pytest.raises(KeyError):
        ObjectiveSpec(unit="mm")({"val/lm_err_px_median": 9.0})


def test_objective_weighted_sum_with_iou_hand_computed():
    spec = ObjectiveSpec(weight_lm=0.5, weight_iou=10.0)
    # 0.5 * 4 mm + 10 * (1 - 0.8) = 2 + 2
    assert spec({"val/lm_err_mm_median": 4.0, "val/iou_mean": 0.8}) == pytest.approx(4.0)
    assert ObjectiveSpec(weight_lm=0.0, weight_iou=1.0)({"val/iou_mean": 0.25}) == 0.75
    with pytest.raises(ValueError, match="weights"):
        ObjectiveSpec(weight_lm=0.0, weight_iou=0.0)


def test_divergence_is_detected_from_losses_not_only_objective():
    spec = ObjectiveSpec()
    healthy = {"val/loss": 1.0, "val/lm_err_px_median": 5.0}
    assert spec.divergence(healthy) is None
    # a NaN network still yields a finite arg-max landmark error: the loss must tell
    reason = spec.divergence({"val/loss": math.nan, "val/lm_err_px_median": 5.0})
    assert reason is not None and "val/loss" in reason
    assert spec.divergence({"val/loss": 1.0, "val/lm_err_px_median": math.inf}) is not None


def test_search_space_and_cli_overrides():
    space = SearchSpace(lr=(1e-5, 1e-2))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        params = space.suggest(study.ask())
        assert 0 <= params["beta"] <= 2 and 0 <= params["alpha"] <= 3
        assert 1e-5 <= params["lr"] <= 1e-2
    assert cli_overrides({"beta": 0.6, "alpha": 1.0}) == ["--model.beta=0.6", "--model.alpha=1.0"]
    with pytest.raises(ValueError, match="low must be <= high"):
        SearchSpace(beta=(2.0, 0.0))
    with pytest.raises(KeyError, match="gamma"):
        cli_overrides({"gamma": 1.0})


def test_storage_urls(tmp_path):
    assert normalise_url("postgresql://u@h:5/db").startswith("postgresql+psycopg2://u@h:5/db")
    assert normalise_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"
    url = default_storage_url("s1", tmp_path)
    assert url == f"sqlite:///{(tmp_path / 's1' / 'study.db').resolve()}"
    with pytest.raises(ValueError, match="not a database URL"):
        normalise_url("studies/s1/study.db")
    with pytest.raises(ValueError, match="study name"):
        default_storage_url("a/b", tmp_path)


def test_lost_heartbeat_fails_trial_and_enqueues_retry(tmp_path):
    """A RUNNING trial whose worker stopped beating is failed and re-queued with its params."""
    storage = open_storage(None, "hb", tmp_path, heartbeat_interval=1, grace_period=1,
                           max_retry=1)
    study = optuna.create_study(study_name="hb", storage=storage)
    trial = study.ask()
    trial.suggest_float("beta", 0, 2)
    storage.record_heartbeat(trial._trial_id)  # then the "worker" dies: no more beats
    time.sleep(2.2)
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].params == trials[0].params
    assert trials[1].system_attrs["failed_trial"] == 0


# ----------------------------------------------------------------------------- pruning
class _Toy(pl.LightningModule):
    """Logs val/lm_err_px_median = values[epoch] (and a finite val/loss unless told otherwise)."""

    def __init__(self, values, loss=1.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.values, self.loss = values, loss

    def training_step(self, batch, batch_idx):
        return (self.w - batch).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/lm_err_px_median", float(self.values[self.current_epoch]))
        self.log("val/loss", self.loss)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(2, 1), batch_size=2)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(2, 1), batch_size=2)


def _fit_toy(trial, values, loss=1.0):
    spec = ObjectiveSpec(unit="px")
    cb = OptunaPruning(trial, spec, spec.divergence)
    trainer = pl.Trainer(max_epochs=len(values), callbacks=[cb], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=1,
                         accelerator="cpu")
    trainer.fit(_Toy(values, loss))
    return cb, trainer


def test_pruning_callback_reports_each_epoch_and_stops_when_pruned():
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=5.0))
    # every value below the threshold: all 4 epochs reported, never pruned
    cb, trainer = _fit_toy(study.ask(), [4.5, 4.0, 3.5, 3.0])
    assert cb.pruned_at is None and cb.diverged is None
    assert cb.reported == {0: 4.5, 1: 4.0, 2: 3.5, 3: 3.0}
    assert trainer.current_epoch == 4
    # rising values: above 5 at epoch 1 -> pruned there, 2 of 5 epochs run
    trial = study.ask()
    cb, trainer = _fit_toy(trial, [4.5, 6.0, 7.5, 9.0, 10.5])
    assert cb.pruned_at == 1
    assert cb.reported == {0: 4.5, 1: 6.0}
    assert trainer.current_epoch == 2  # stopped after epoch 1 (epochs 0 and 1 done)
    frozen = study._storage.get_trial(trial._trial_id)
    assert frozen.intermediate_values == {0: 4.5, 1: 6.0}


def test_pruning_callback_stops_diverged_run_without_reporting():
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    cb, trainer = _fit_toy(study.ask(), [3.0, 3.0, 3.0], loss=math.nan)
    assert cb.diverged is not None and "val/loss" in cb.diverged and cb.pruned_at is None
    assert cb.reported == {} and trainer.current_epoch == 1


def _toy_fit(args, callbacks=None):
    """Test double of `lightning_modules.train.fit` for the runner's bookkeeping only: a real
    Trainer on `_Toy`, whose per-epoch value is (beta - 0.6)^2 + (alpha - 1)^2 + 1 / (epoch + 1).
    """
    opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
    beta, alpha = float(opts["model.beta"]), float(opts["model.alpha"])
    values = [(beta - 0.6) ** 2 + (alpha - 1.0) ** 2 + 1.0 / (k + 1) for k in range(2)]
    trainer = pl.Trainer(max_epochs=2, callbacks=callbacks, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(_Toy(values))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return SimpleNamespace(trainer=trainer, run_dir=Path(opts["run.root"]) / opts["run.name"],
                           metrics=metrics)


def test_runner_counts_enqueues_and_caps_total_trials(tmp_path, capsys):
    argv = ["--study", "cap", "--studies-dir", str(tmp_path), "--config", str(TINY),
            "--pruner", "none", "--max-total-trials", "3", "--enqueue", "beta=0.6,alpha=1"]
    study = run_sweep(["--trials", "10", *argv], fit=_toy_fit)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[0].params == {"beta": 0.6, "alpha": 1.0}  # the enqueued point ran first
    assert trials[0].value == pytest.approx(0.5)  # 0 + 0 + 1/2 after epoch 1
    assert trials[0].user_attrs["run_dir"].endswith("t0000")
    out = capsys.readouterr().out
    assert "best trial #0" in out and "best params: beta=0.6, alpha=1" in out
    # a restarted worker finds the cap reached and runs nothing; the enqueue is not repeated
    study = run_sweep(["--trials", "5", *argv], fit=_toy_fit)
    assert len(study.get_trials(deepcopy=False)) == 3
    assert "nothing to run" in capsys.readouterr().out


# ----------------------------------------------------------------------------- report
def _synthetic_study(tmp_path, n_complete):
    storage = open_storage(None, "rep", tmp_path)
    study = optuna.create_study(study_name="rep", storage=storage)
    dist = {"beta": optuna.distributions.FloatDistribution(0, 2),
            "alpha": optuna.distributions.FloatDistribution(0, 3)}
    for k in range(n_complete):
        beta, alpha = 0.2 + 0.3 * k, 2.5 - 0.4 * k
        study.add_trial(optuna.create_trial(
            state=TrialState.COMPLETE, value=(beta - 0.6) ** 2 + (alpha - 1.0) ** 2,
            params={"beta": beta, "alpha": alpha}, distributions=dist,
            user_attrs={"objective_metric": "val/lm_err_mm"}))
    study.add_trial(optuna.create_trial(
        state=TrialState.FAIL, params={"beta": 1.0, "alpha": 1.0}, distributions=dist,
        user_attrs={"fail_reason": "diverged: val/loss=nan at epoch 0"}))
    study.add_trial(optuna.create_trial(state=TrialState.FAIL, params={"beta": 1.5, "alpha": 0.5},
                                        distributions=dist))
    return study


def test_report_tables_best_and_plot(tmp_path):
    study = _synthetic_study(tmp_path, 5)
    paths = write_report(study, tmp_path / "rep")
    names = {p.name for p in paths}
    assert {"trials.csv", "trials.md", "best_trial.json", "trials_beta_alpha.png"} <= names
    # 5 completed trials: too few for a contour (tests/test_sweep_report_plots.py has enough)
    assert "contour_beta_alpha.png" not in names
    assert "no contour: 5 completed trials" in (tmp_path / "rep" / "trials.md").read_text()
    best = json.loads((tmp_path / "rep" / "best_trial.json").read_text())
    # values: k=0 (0.2, 2.5): 0.16+2.25; k=1 (0.5, 2.1): 0.01+1.21; k=2 (0.8, 1.7): 0.04+0.49
    # k=3 (1.1, 1.3): 0.25+0.09 = 0.34 (min); k=4 (1.4, 0.9): 0.64+0.01
    assert best["number"] == 3 and best["value"] == pytest.approx(0.34)
    assert best["params"] == pytest.approx({"beta": 1.1, "alpha": 1.3})
    with (tmp_path / "rep" / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["state"] for r in rows] == ["COMPLETE"] * 5 + ["FAIL", "FAIL"]
    assert rows[5]["fail_reason"].startswith("diverged")
    assert "heartbeat" in rows[6]["fail_reason"]  # no reason recorded: the worker was lost
    assert (tmp_path / "rep" / "trials_beta_alpha.png").stat().st_size > 10_000


def test_report_with_too_few_trials(tmp_path, capsys):
    _synthetic_study(tmp_path, 1)
    assert report_main(["--study", "rep", "--studies-dir", str(tmp_path)]) == 0
    folder = tmp_path / "rep"
    assert (folder / "trials_beta_alpha.png").is_file()
    assert not (folder / "contour_beta_alpha.png").exists()
    assert json.loads((folder / "best_trial.json").read_text())["n_complete"] == 1
    capsys.readouterr()
    # a usage error: one line and status 2 (README: exit codes)
    assert report_main(["--study", "nope", "--studies-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sweeps.report: error: no study database") and "\n" not in err


# ----------------------------------------------------------------------------- end to end
def _env(**extra):
    # PYTHONPATH: worker processes import this checkout, whatever the venv's editable install
    # points at (another clone had re-pointed it: workers silently ran that clone's code)
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled",
               WANDB_SILENT="true", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get(
                   "PYTHONPATH")])]))
    env.update(extra)
    return env


def _load(tmp_path, name):
    # open_storage waits on SQLite's lock while a worker process writes
    return optuna.load_study(study_name=name, storage=open_storage(None, name, tmp_path))


def _wait_for_running(tmp_path, name, number, proc, log, timeout=300.0):
    """Until trial `number` is RUNNING, has written a heartbeat (Optuna writes the first one
    just after creating the trial; a trial killed before it has none and is never found stale,
    an Optuna limit) and has all its parameters (its `run_dir` is recorded after them). The
    worker trains with the study's settings, so it is killed as soon as that holds, long
    before its 2 epochs end."""
    import sqlite3

    deadline = time.monotonic() + timeout
    db = tmp_path / name / "study.db"
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"worker exited early: {log.read_text()}"
        with sqlite3.connect(db, timeout=60) as con:
            rows = con.execute(
                "SELECT t.state FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id"
                " JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'run_dir'"
                " WHERE t.number = ?", (number,)).fetchall()
        if rows:
            assert rows[0][0] == "RUNNING", rows
            return
        time.sleep(0.05)
    raise AssertionError(f"trial {number} never started running")


@pytest.mark.slow
def test_real_study_prunes_fails_survives_a_killed_worker_and_continues(tmp_path, monkeypatch):
    """3 real trials in-process (normal / NaN / pruned), then worker processes join the study.

    Trial 0 completes, trial 1 diverges (FAIL), trial 2 is pruned at epoch 0 through
    `OptunaPruning`; a worker process killed mid-trial leaves trial 3 to the heartbeat check,
    and the next worker fails it and re-runs its parameters as trial 4.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    name = "e2e"
    common = ["--study", name, "--studies-dir", str(tmp_path), "--config", str(TINY),
              "--lr", "1e-9,1e5", "--heartbeat-interval", "1", "--grace-period", "1",
              "--trainer.enable_progress_bar=false", "--data.num_train=4"]
    # Trial 0 trains normally (lr 3e-3, 2 epochs); trial 1 diverges (lr 1e4: NaN losses).
    study = run_sweep(["--trials", "2", *common, "--run.wandb=true",
                       "--enqueue", "beta=0.6,alpha=1,lr=3e-3",
                       "--enqueue", "beta=0.6,alpha=1,lr=1e4"])
    # Trial 2 is bad: lr 1e-9 leaves the network at its initialisation. The tiny preset learns
    # too little in 2 epochs to separate it reliably from trial 0 by a median rule (measured:
    # 77.0 vs 78.0 mm), so this worker prunes against an absolute bound: a landmark error above
    # 5 mm at any epoch (an untrained network is tens of mm off). Same study, next number.
    study = run_sweep(["--trials", "1", *common, "--pruner", "threshold",
                       "--prune-above", "5", "--enqueue", "beta=0.6,alpha=1,lr=1e-9"])
    t0, t1, t2 = study.get_trials(deepcopy=False)
    assert t0.state == TrialState.COMPLETE and t0.user_attrs["epochs"] == 2
    assert sorted(t0.intermediate_values) == [0, 1]
    assert math.isfinite(t0.value) and t0.value == pytest.approx(t0.intermediate_values[1])
    # phantoms know their spacing
    assert t0.user_attrs["objective_metric"] == "val/lm_err_mm_median"
    assert t1.state == TrialState.FAIL
    assert t1.user_attrs["fail_reason"].startswith("diverged") and "nan" in t1.user_attrs[
        "fail_reason"]
    assert t2.state == TrialState.PRUNED and t2.params["lr"] == pytest.approx(1e-9)
    assert list(t2.intermediate_values) == [0] and t2.user_attrs["epochs"] == 1  # stopped early
    assert t2.intermediate_values[0] > 5.0
    # one W&B run per trial, grouped by study, each finished before the next trial
    import wandb

    assert wandb.run is None
    for t in (t0, t1):
        run_dir = Path(t.user_attrs["run_dir"])
        assert run_dir.is_relative_to(tmp_path / name / "trials" / f"t{t.number:04d}")
        runs = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(runs) == 1, f"expected one W&B run in {run_dir}"
        record = runs[0].read_bytes()  # protobuf records: group, run name, config keys
        assert name.encode() in record and f"{name}-t{t.number:04d}".encode() in record
        assert b"beta" in record and b"alpha" in record
        config = (run_dir / "config.yaml").read_text()
        assert f"wandb_group: {name}\n" in config
        assert f"wandb_name: {name}-t{t.number:04d}\n" in config

    # A second worker process joins the same SQLite study (with the study's training settings:
    # another max_epochs would be refused) and is killed mid-trial ...
    worker = [sys.executable, "-m", "sweeps.run", *common, "--pruner", "none"]
    log = tmp_path / "worker1.log"
    with log.open("w") as out:
        p1 = subprocess.Popen([*worker, "--trials", "1", "--enqueue",
                               "beta=1.2,alpha=0.5,lr=3e-3"], cwd=tmp_path, env=_env(),
                              stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_running(tmp_path, name, 3, p1, log)
    finally:
        os.killpg(p1.pid, signal.SIGKILL)
        p1.wait(timeout=30)
    # ... and a third one continues the count: it fails the dead worker's trial (lost
    # heartbeat) and runs it again with the same parameters.
    p2 = subprocess.run([*worker, "--trials", "1"], cwd=tmp_path, env=_env(),
                        capture_output=True, text=True, timeout=600)
    assert p2.returncode == 0, p2.stdout + p2.stderr
    assert "best params: beta=" in p2.stdout and "5 trials (2 complete" in p2.stdout
    trials = _load(tmp_path, name).get_trials(deepcopy=False)
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED,
                                         TrialState.FAIL, TrialState.COMPLETE]
    assert trials[4].params == trials[3].params == pytest.approx(
        {"beta": 1.2, "alpha": 0.5, "lr": 3e-3})
    assert trials[4].system_attrs["failed_trial"] == 3
    assert "fail_reason" not in trials[3].user_attrs  # failed by the heartbeat check

    # the report lists all five, names the reasons and draws the sampled points
    assert report_main(["--study", name, "--studies-dir", str(tmp_path)]) == 0
    with (tmp_path / name / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["state"] for r in rows] == ["COMPLETE", "FAIL", "PRUNED", "FAIL", "COMPLETE"]
    assert "heartbeat" in rows[3]["fail_reason"] and rows[4]["retry_of"] == "3"
    best = json.loads((tmp_path / name / "best_trial.json").read_text())
    assert best["number"] in (0, 4) and best["value"] == pytest.approx(
        min(trials[0].value, trials[4].value))
    assert (tmp_path / name / "trials_beta_alpha.png").is_file()
    assert not (tmp_path / name / "contour_beta_alpha.png").exists()  # only 2 completed


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["--trials", "-1"], "--trials must be at least 0"),
     (["--seed", "-1"], "--seed must be at least 0"),  # was "cannot open the study storage"
     (["--heartbeat-interval", "0"], "--heartbeat-interval must be at least 1"),
     (["--max-total-trials", "0"], "--max-total-trials must be at least 1"),
     (["--weight-lm", "nan"], "--weight-lm must be a finite number"),
     (["--weight-lm", "-1"], "objective weights must be >= 0"),  # was a traceback
     (["--beta", "1,0"], "low must be <= high"),  # was a traceback
     (["--lr", "0,1"], "log-uniform needs low > 0"),
     (["--enqueue", "gamma=1"], "--enqueue names gamma"),  # was enqueued, then ignored
     (["--study", "a/b"], "must be a non-empty name without '/'")],  # was a traceback
)
def test_bad_sweep_arguments_are_one_line_usage_errors(tmp_path, capsys, argv, expected):
    from sweeps.run import run_sweep

    with pytest.raises(SystemExit) as stop:
        run_sweep(["--trials", "0", "--study", "s", "--studies-dir", str(tmp_path / "st"),
                   *argv])
    assert stop.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("sweeps.run: error:") and expected in err[0], err
    assert not (tmp_path / "st").exists()  # refused before the study folder is made


def test_report_refuses_a_study_name_that_cannot_be_a_folder(tmp_path, capsys):
    assert report_main(["--study", "", "--studies-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sweeps.report: error:") and "non-empty name" in err
