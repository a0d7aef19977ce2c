"""Sweep storage and report on hand-edited study files (fuzz round 5, F6 and F7).

A shared study file is data: a SQLite study.db holding a trigger or a view (their SQL runs
whenever Optuna writes or reads; an endless one hung `sweeps.run` before any trial) is refused
with one line, status 2, before Optuna runs a statement on it. `sweeps.report` on rows Optuna
cannot parse (a JSON distribution nested 100 000 deep) is one line, status 2; a NaN parameter
(SQLite stores NULL) and an infinite objective are shown as such instead of a traceback; a user
attribute of millions of values is left out of the reports with one warning instead of a 180 MB
best_trial.json and GBs of memory.

The trials are the test double of `tests/test_sweep_guards.py` (no training); every bad storage
is built here with optuna and sqlite3.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.study import StudyDirection

import sweeps.report
from sweeps.report import main as report_main
from sweeps.run import format_best, run_sweep
from tests.sweep_doubles import instant_fit, never_fit

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
# the trigger of the fuzz report: its recursive query never ends
ENDLESS = ("CREATE TRIGGER hang AFTER INSERT ON studies BEGIN SELECT count(*) FROM (WITH "
           "RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c); END")

optuna.logging.set_verbosity(optuna.logging.WARNING)




def _sweep(tmp_path, *argv, trials=1, fit=instant_fit, study="s"):
    return run_sweep(["--trials", str(trials), "--study", study, "--studies-dir",
                      str(tmp_path / "st"), "--config", str(TINY), "--pruner", "none", *argv],
                     fit=fit)


def _report(tmp_path) -> int:
    return report_main(["--study", "s", "--studies-dir", str(tmp_path / "st")])


def _one_error(capsys, prefix):
    err = [ln for ln in capsys.readouterr().err.splitlines()
           if ln.strip() and not ln.startswith("[I ")]  # (Optuna's own info line)
    assert len(err) == 1 and err[0].startswith(prefix), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture(scope="module")
def base_study(tmp_path_factory) -> Path:
    """A legit two-trial study (studies dir holding `s/study.db`), copied by each test."""
    root = tmp_path_factory.mktemp("base")
    _sweep(root, trials=2)
    return root / "st"


def _edited(base: Path, tmp_path: Path, *statements: tuple) -> Path:
    """A copy of the base study with `statements` (SQL, parameters) run on its study.db."""
    shutil.copytree(base, tmp_path / "st")
    db = tmp_path / "st" / "s" / "study.db"
    con = sqlite3.connect(db)
    for sql, *params in statements:
        con.execute(sql, *params)
    con.commit()
    con.close()
    return db


def _new_db(tmp_path: Path, *statements: str) -> Path:
    """An empty Optuna schema (as a fresh RDBStorage makes it) plus `statements`."""
    db = tmp_path / "st" / "s" / "study.db"
    db.parent.mkdir(parents=True)
    optuna.storages.RDBStorage(f"sqlite:///{db}").engine.dispose()
    con = sqlite3.connect(db)
    for sql in statements:
        con.execute(sql)
    con.commit()
    con.close()
    return db


# ----------------------------------------------------------------- F6: triggers and views
def test_a_trigger_in_the_study_file_is_refused_before_it_runs(tmp_path, capsys):
    # what the check relies on: Optuna's own SQLite schema is tables and indexes only
    con = sqlite3.connect(_new_db(tmp_path / "fresh"))
    assert {kind for (kind,) in con.execute("SELECT type FROM sqlite_master")} == {"table",
                                                                                  "index"}
    con.close()
    db = _new_db(tmp_path, "CREATE TABLE fired (n INTEGER)",
                 "CREATE TRIGGER hang AFTER INSERT ON studies BEGIN "
                 "INSERT INTO fired VALUES (1); END")
    with pytest.raises(SystemExit) as stop:
        _sweep(tmp_path, fit=never_fit)
    assert stop.value.code == 2
    line = _one_error(capsys, "sweeps.run: error:")
    assert str(db) in line and "trigger 'hang'" in line, line
    assert _report(tmp_path) == 2
    line = _one_error(capsys, "sweeps.report: error:")
    assert str(db) in line and "trigger 'hang'" in line, line
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM fired").fetchone() == (0,)  # never ran
    assert con.execute("SELECT count(*) FROM studies").fetchone() == (0,)
    con.close()


def test_an_endless_trigger_does_not_hang_the_storage(tmp_path):
    """The fuzz report's study.db: `open_storage` + creating the study returned never."""
    db = _new_db(tmp_path, ENDLESS)
    code = ("import sys, optuna\n"
            "from sweeps.storage import open_storage\n"
            "try:\n"
            "    optuna.create_study(study_name='s', storage=open_storage(sys.argv[1], 's'))\n"
            "except ValueError as err:\n"
            "    print(err); sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code, f"sqlite:///{db}"], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "trigger 'hang'" in proc.stdout and "Traceback" not in proc.stderr


def test_a_view_named_like_optunas_table_is_refused(base_study, tmp_path, capsys):
    """A view's SQL runs on every read that names it (one with an endless query hangs)."""
    db = _edited(base_study, tmp_path, ("ALTER TABLE trials RENAME TO trials_data",),
                 ("CREATE VIEW trials AS SELECT * FROM trials_data",))
    assert _report(tmp_path) == 2
    line = _one_error(capsys, "sweeps.report: error:")
    assert str(db) in line and "view 'trials'" in line, line
    with pytest.raises(SystemExit) as stop:
        _sweep(tmp_path, fit=never_fit)
    assert stop.value.code == 2
    assert "view 'trials'" in _one_error(capsys, "sweeps.run: error:")


# -------------------------------------------------------------------- F7: odd rows, report
def test_rows_optuna_cannot_parse_are_one_line(base_study, tmp_path, capsys):
    _edited(base_study, tmp_path,
            ("UPDATE trial_params SET distribution_json = ? WHERE param_name = 'beta'",
             ("[" * 100_000 + "]" * 100_000,)))
    assert _report(tmp_path) == 2
    line = _one_error(capsys, "sweeps.report: error:")
    assert "cannot read study 's'" in line and "nested too deeply" in line, line


def test_a_study_of_two_objectives_is_one_line(tmp_path, capsys):
    db = tmp_path / "st" / "s" / "study.db"
    db.parent.mkdir(parents=True)
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{db}",
                                directions=[StudyDirection.MINIMIZE, StudyDirection.MINIMIZE])
    study.add_trial(optuna.trial.create_trial(
        params={"beta": 1.0, "alpha": 1.0}, values=[1.0, 2.0],
        distributions={"beta": optuna.distributions.FloatDistribution(0, 2),
                       "alpha": optuna.distributions.FloatDistribution(0, 3)}))
    assert _report(tmp_path) == 2
    assert "2 objectives" in _one_error(capsys, "sweeps.report: error:")


def test_nan_parameters_and_infinite_objectives_are_shown_not_a_traceback(
        base_study, tmp_path, capsys):
    """SQLite stores a NaN parameter as NULL (Optuna reads None); every objective is inf."""
    db = _edited(base_study, tmp_path,
                 ("UPDATE trial_params SET param_value = ? WHERE param_name = 'beta'",
                  (float("nan"),)),
                 ("UPDATE trial_values SET value = ?", (float("inf"),)))
    assert _report(tmp_path) == 0
    out = capsys.readouterr().out
    assert "with a NaN or infinite beta or alpha not drawn" in out, out
    folder = db.parent
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert [(r["beta"], r["objective"]) for r in rows] == [("nan", "inf")] * 2
    assert "| inf | nan |" in (folder / "trials.md").read_text()
    assert (folder / "trials_beta_alpha.png").stat().st_size > 0
    best = json.loads((folder / "best_trial.json").read_text())
    assert best["number"] == 0 and math.isinf(best["value"]) and math.isnan(best["params"]["beta"])
    # the worker's summary of the same study
    text = format_best(optuna.load_study(study_name="s", storage=f"sqlite:///{db}"))
    assert "best params: beta=nan, alpha=" in text, text


def test_huge_user_attributes_are_left_out_of_the_reports(base_study, tmp_path, capsys):
    big = json.dumps({"a": [1] * 300_000})
    _edited(base_study, tmp_path,
            ("UPDATE trial_user_attributes SET value_json = ? WHERE key = 'metrics'", (big,)),
            ("UPDATE trial_user_attributes SET value_json = ? WHERE key = 'worker'",
             (json.dumps("w" * 1_000_000),)),
            ("UPDATE trial_user_attributes SET value_json = '[1, 2]' "
             "WHERE key = 'objective_metric'",))
    assert _report(tmp_path) == 0
    captured = capsys.readouterr()
    warnings = [ln for ln in captured.err.splitlines() if "left out" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("sweeps.report: warning:"), captured.err
    assert "'metrics'" in warnings[0]
    folder = tmp_path / "st" / "s"
    for name in ("best_trial.json", "trials.csv", "trials.md"):
        assert (folder / name).stat().st_size < 20_000, name
    best = json.loads((folder / "best_trial.json").read_text())
    assert best["metrics"].startswith("<left out: larger than 100 kB")
    assert best["objective_metric"] == [1, 2]  # small: kept as stored


def test_an_attribute_value_of_gigabytes_to_load_is_refused_unread(base_study, tmp_path, capsys):
    """A 20 M-element list took ~1 GB in sweeps.run and 2 GB in sweeps.report: a value over
    10 M characters is refused before Optuna parses anything (a 1 MB one is left out above)."""
    from sweeps.storage import MAX_VALUE_CHARS

    huge = "[" + "1," * (MAX_VALUE_CHARS // 2) + "1]"
    db = _edited(base_study, tmp_path,
                 ("UPDATE trial_user_attributes SET value_json = ? WHERE key = 'worker'",
                  (huge,)))
    assert _report(tmp_path) == 2
    line = _one_error(capsys, "sweeps.report: error:")
    assert str(db) in line and "trial_user_attributes" in line and "'worker'" in line, line
    with pytest.raises(SystemExit) as stop:
        _sweep(tmp_path, fit=never_fit)
    assert stop.value.code == 2
    line = _one_error(capsys, "sweeps.run: error:")
    assert "characters" in line and "refused" in line, line


def test_many_values_just_under_the_cap_are_refused_together(base_study, tmp_path, capsys,
                                                             monkeypatch):
    """Review of session 19: 30 values each just under the per-value cap (300 MB) passed."""
    import sweeps.storage as storage

    monkeypatch.setattr(storage, "MAX_VALUE_CHARS", 3000)  # (the sweep's own settings: ~2 kB)
    monkeypatch.setattr(storage, "MAX_TOTAL_CHARS", 12000)
    rows = [("INSERT INTO trial_user_attributes (trial_id, key, value_json) "
             "SELECT trial_id, ?, ? FROM trials LIMIT 1", (f"pad{i}", json.dumps("x" * 990)))
            for i in range(12)]
    _edited(base_study, tmp_path, *rows)
    assert _report(tmp_path) == 2
    line = _one_error(capsys, "sweeps.report: error:")
    assert "in all" in line and "12,000" in line, line


def test_too_large_looks_at_a_bounded_part():
    _too_large = sweeps.report._too_large
    assert not _too_large({"val/loss": 1.0, "val/iou_mean": 0.5})
    assert _too_large("x" * 200_000)
    assert _too_large([[0] * 1000] * 1000)
    assert _too_large([0] * 5_000_000)  # decided on the length alone
    assert _too_large({f"k{i}": i for i in range(50_000)})


def test_a_sqlite_uri_filename_without_uri_true_is_refused(tmp_path, monkeypatch):
    """Fifth fuzz round: ``sqlite:///file::memory:?cache=shared`` made a file literally named
    ``file::memory:`` in the current folder (SQLite reads URI filenames only with uri=true)."""
    from sweeps.storage import check_sqlite_file

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="URI filename without"):
        check_sqlite_file("sqlite:///file::memory:?cache=shared")
    assert not list(tmp_path.iterdir())
    check_sqlite_file(f"sqlite:///{tmp_path / 'study.db'}")  # a plain path: fine
