"""A researcher's sweep walkthrough (session 30): a mistyped DATA is one line before any trial
and makes no study; a study knows its data folder by real path and by its files (images added
or replaced are a changed setting, a trailing slash or a link is not); SQLite in memory and a
read-only study file are one line each; a refused sweep leaves no empty study folder; the
summary says how to train with the best parameters; make passes a study name starting with
"-" as a value."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from sweep_doubles import instant_fit, never_fit

from sweeps.guards import data_problem, folder_digest, training_settings
from sweeps.run import run_sweep
from sweeps.space import SearchSpace

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def _dataset(root: Path, n: int = 2, seed: int = 0) -> Path:
    from datamodules.dataset_io import write_sample
    from datamodules.phantoms import PhantomConfig, generate_phantom

    cfg = PhantomConfig(min_side=128, max_side=160)
    for k in range(n):
        write_sample(root, generate_phantom(seed + k, cfg))
    return root


def _sweep(tmp_path: Path, study: str, *extra: str, fit=instant_fit, trials: str = "1"):
    return run_sweep(["--trials", trials, "--study", study, "--studies-dir",
                      str(tmp_path / "studies"), "--config", str(TINY), "--pruner", "none",
                      *extra], fit=fit)


def test_a_mistyped_data_folder_is_one_line_before_any_trial(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        _sweep(tmp_path, "x2", f"--data-root={tmp_path / 'nodata'}", fit=never_fit)
    assert stop.value.code == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == [f"sweeps.run: error: data.data_root: {tmp_path / 'nodata'}: dataset folder "
                   f"does not exist; see make validate-data DATA={tmp_path / 'nodata'}"]
    assert not (tmp_path / "studies").exists()  # no study: the right folder may use the name
    data = _dataset(tmp_path / "data")
    (data / "masks" / next(iter(sorted((data / "masks").iterdir()))).name).unlink()
    with pytest.raises(SystemExit):
        _sweep(tmp_path, "x2", f"--data-root={data}", fit=never_fit)
    assert "data.data_root: " in capsys.readouterr().err


def test_data_problem_follows_the_validate_switch(tmp_path):
    missing = str(tmp_path / "none")
    assert data_problem({"data": {"data_root": missing}}) is not None
    assert data_problem({"data": {"data_root": missing, "validate": False}}) is None
    assert data_problem({"data": {"data_root": None}}) is None  # phantoms
    assert data_problem({"data": {"test_root": missing}}).startswith("data.test_root: ")


def test_a_study_knows_its_data_by_real_path_and_files(tmp_path, capsys):
    data = _dataset(tmp_path / "data", n=3)
    link = tmp_path / "link"
    link.symlink_to(data)
    space = SearchSpace()
    plain = training_settings({"data": {"data_root": str(data)}}, space)
    for same in (f"{data}/", str(link)):
        assert training_settings({"data": {"data_root": same}}, space) == plain
    digest = folder_digest(data)
    assert len(digest) == 16
    _sweep(tmp_path, "dd", f"--data-root={data}")
    _sweep(tmp_path, "dd", f"--data-root={link}/")  # the same folder, named otherwise
    capsys.readouterr()
    # an image replaced by another of another size, under the same name: another data set
    first = sorted((data / "images").iterdir())[0]
    first.write_bytes(first.read_bytes() + b"\0")
    assert folder_digest(data) != digest
    with pytest.raises(SystemExit) as stop:
        _sweep(tmp_path, "dd", f"--data-root={data}", fit=never_fit)
    assert stop.value.code == 2
    assert "data.data_root files (names and sizes, sha256)" in capsys.readouterr().err
    # images added: refused as well
    first.write_bytes(first.read_bytes()[:-1])
    assert folder_digest(data) == digest
    _dataset(data, n=1, seed=50)
    with pytest.raises(SystemExit):
        _sweep(tmp_path, "dd", f"--data-root={data}", fit=never_fit)


def test_sqlite_in_memory_is_refused_and_leaves_no_folder(tmp_path, capsys):
    for url in ("sqlite://", "sqlite:///:memory:"):
        with pytest.raises(SystemExit) as stop:
            _sweep(tmp_path, "mem", "--storage", url, fit=never_fit)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert "SQLite in memory keeps the study only while this worker runs" in err
        assert not (tmp_path / "studies").exists()


def test_a_read_only_study_file_is_one_line(tmp_path, capsys):
    """A colleague's study.db that may not be written: three tracebacks and Optuna's guess
    "invalid data in the commit" before."""
    db = tmp_path / "ro.db"
    _sweep(tmp_path, "a", "--storage", f"sqlite:///{db}")
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        _sweep(tmp_path, "b", "--storage", f"sqlite:///file:{db}?mode=ro&uri=true",
               fit=never_fit)
    assert stop.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "attempt to write a readonly database" in err[0], err
    assert "Traceback" not in err[0] and not (tmp_path / "studies" / "b").exists()


def test_the_summary_says_how_to_train_with_the_best_parameters(tmp_path, capsys):
    _sweep(tmp_path, "best", "--enqueue", "beta=0.6,alpha=1.25")
    out = capsys.readouterr().out
    assert ('train with them: make train CONFIG=<the sweep\'s> DATA=<the sweep\'s> '
            'ARGS="--model.beta=0.6 --model.alpha=1.25"') in out


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_passes_a_study_name_starting_with_a_dash(tmp_path):
    """``STUDY=-v1`` reached argparse as two words: "expected one argument"."""
    fake = tmp_path / "python"  # stands for .venv's interpreter: prints what make passes
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    stamp = tmp_path / "stamp"
    stamp.touch()  # newer than pyproject.toml: make installs nothing
    res = subprocess.run(["make", "-s", "-C", str(REPO), "sweep", "sweep-report", "STUDY=-v1",
                          "TRIALS=2", f"PY={fake}", f"STAMP={stamp}"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    args = res.stdout.splitlines()
    assert args.count("--study=-v1") == 2 and "--trials=2" in args, args


def test_a_sqlite_file_in_a_missing_folder_is_named(tmp_path, capsys):
    """``sqlite:////nonexistent_dir/x.db`` said only "unable to open database file"."""
    with pytest.raises(SystemExit) as stop:
        _sweep(tmp_path, "m", "--storage", f"sqlite:///{tmp_path / 'nowhere' / 'x.db'}",
               fit=never_fit)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"the folder {tmp_path / 'nowhere'} of the SQLite study file does not exist" in err


def test_a_study_recorded_with_a_relative_data_path_continues(tmp_path, monkeypatch):
    """Studies recorded before folders were named by real path hold the text given."""
    from sweeps.guards import settings_problem

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    current = training_settings({"data": {"data_root": "data"}}, SearchSpace())
    assert settings_problem("s", {"data.data_root": "data"}, current) is None
    assert settings_problem("s", {"data.data_root": "./data/"}, current) is None
    assert "data.data_root" in settings_problem("s", {"data.data_root": "other"}, current)


def test_folder_digest_reads_the_top_level_as_training_does(tmp_path):
    data = _dataset(tmp_path / "data", n=2)
    digest = folder_digest(data)
    (data / "images" / "backup").mkdir()
    (data / "images" / "backup" / "old.png").write_bytes(b"x" * 100)
    assert folder_digest(data) == digest  # not read by training: not part of the data
    (data / "annotations" / "extra.json").write_text("{}")
    assert folder_digest(data) != digest


def test_scatter_labels_of_close_trials_do_not_overlap_and_best_is_ringed():
    """Two trials close together hid one label under the other, and four trials' labels read
    "102" with nothing marking the best (walkthrough, session 30)."""
    import optuna
    from optuna.trial import TrialState

    from sweeps.report import scatter_figure

    study = optuna.create_study(study_name="close")
    dist = {"beta": optuna.distributions.FloatDistribution(0, 2),
            "alpha": optuna.distributions.FloatDistribution(0, 3)}
    for beta, alpha, value in ((0.60, 1.60, 101.716), (0.62, 1.62, 107.0), (0.61, 1.58, 102.4),
                               (1.99, 0.1, 110.0)):  # the last at the box's right edge
        study.add_trial(optuna.create_trial(state=TrialState.COMPLETE, value=value,
                                            params={"beta": beta, "alpha": alpha},
                                            distributions=dist))
    fig = scatter_figure(study)
    fig.canvas.draw()
    ax = fig.axes[0]
    texts = [t for t in ax.texts if t.get_text().startswith("#")]
    assert sorted(t.get_text() for t in texts) == ["#0 101.7", "#1 107", "#2 102.4", "#3 110"]
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (texts[i].get_text(), texts[j].get_text())
    frame = ax.get_window_extent(renderer)  # none cut off under the colour bar
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 for b in boxes)
    legend = [t.get_text() for leg in fig.legends + [ax.get_legend()] if leg is not None
              for t in leg.get_texts()]
    assert "best: #0 101.7" in legend, legend


def test_trials_0_on_a_new_study_is_refused_and_leaves_nothing(tmp_path, capsys):
    # session 31 (a session-30 walkthrough item): TRIALS=0 on a new name made an empty study
    with pytest.raises(SystemExit) as stop:
        _sweep(tmp_path, "none0", trials="0", fit=never_fit)
    assert stop.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "study 'none0' does not exist in sqlite:///" in err[0]
    assert "--trials 0 runs nothing" in err[0]
    assert not (tmp_path / "studies").exists()
    # a sqlite file of the user's own: not left behind either (review)
    db = tmp_path / "own.db"
    with pytest.raises(SystemExit):
        _sweep(tmp_path, "none0", "--storage", f"sqlite:///{db}", trials="0", fit=never_fit)
    assert not db.exists()
    # on an existing study, --trials 0 prints its best trial; enqueueing into a new one works
    _sweep(tmp_path, "s0")
    capsys.readouterr()
    study = _sweep(tmp_path, "s0", trials="0", fit=never_fit)
    assert len(study.trials) == 1
    assert "best trial" in capsys.readouterr().out.lower()
    queued = _sweep(tmp_path, "q0", "--enqueue", "beta=0.5,alpha=1", trials="0", fit=never_fit)
    assert len(queued.trials) == 1 and queued.trials[0].state.name == "WAITING"
