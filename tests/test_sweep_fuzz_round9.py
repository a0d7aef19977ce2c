"""Sweep storage, red-team round 9: a study file whose schema makes SQLite compute on every read
or write (a generated column of ``zeroblob(3e8)``: 40 s and 1.6 GB per report of 21 trials,
123 s in sweeps.run; DEFAULT and CHECK expressions; expression and partial indexes) is refused
with one line before Optuna reads it. Optuna's own schema (a fresh RDBStorage) passes. A study
name with control characters or too long for a folder, and a too long --out, are one line."""

from __future__ import annotations

import sqlite3

import pytest

from sweeps.report import main as report_main
from sweeps.storage import check_sqlite_file
from tests.sweep_doubles import never_fit
from tests.test_sweep_fuzz_round5 import _edited, _new_db, _one_error, _report, _sweep
from tests.test_sweep_fuzz_round5 import base_study as base_study  # noqa: F401 (round 5's fixture)

GENERATED = [
    "ALTER TABLE trial_values RENAME TO old_values",
    "CREATE TABLE trial_values (trial_value_id INTEGER NOT NULL, trial_id INTEGER NOT NULL, "
    "objective INTEGER NOT NULL, value FLOAT GENERATED ALWAYS AS "
    "(88.0 + 0 * length(hex(zeroblob(1000 + trial_id)))) VIRTUAL, value_type VARCHAR(7) NOT "
    "NULL, PRIMARY KEY (trial_value_id), UNIQUE (trial_id, objective))",
    "INSERT INTO trial_values (trial_value_id, trial_id, objective, value_type) SELECT "
    "trial_value_id, trial_id, objective, value_type FROM old_values",
    "DROP TABLE old_values",
]


def test_a_generated_column_is_refused_before_optuna_reads_it(base_study, tmp_path,  # noqa: F811
                                                            capsys):
    db = _edited(base_study, tmp_path, *[(sql,) for sql in GENERATED])
    assert _report(tmp_path) == 2
    line = _one_error(capsys, "sweeps.report: error:")
    assert str(db) in line and "the generated column 'value' in 'trial_values'" in line, line


@pytest.mark.parametrize(("statement", "words"), [
    ("CREATE TABLE extra (n INTEGER DEFAULT (length(zeroblob(1000))))",
     "a default expression on extra.n"),
    ("CREATE TABLE extra (n INTEGER, CHECK (length(hex(zeroblob(n))) >= 0))",
     "a CHECK expression in the table 'extra'"),
    ("CREATE INDEX heavy ON trials (length(hex(zeroblob(trial_id))))",
     "the expression index 'heavy'"),
    ("CREATE INDEX part ON trials (trial_id) WHERE length(hex(zeroblob(trial_id))) > 0",
     "the partial index 'part'"),
])  # fmt: skip
def test_schema_expressions_are_refused(tmp_path, statement, words):
    db = _new_db(tmp_path, statement)
    with pytest.raises(ValueError, match="the file's schema holds " + words.replace(".", r"\.")):
        check_sqlite_file(f"sqlite:///{db}")


def test_optunas_own_schema_passes(tmp_path):
    db = _new_db(tmp_path)
    check_sqlite_file(f"sqlite:///{db}")  # one CHECK (version_info_id=1), plain indexes
    con = sqlite3.connect(db)
    sql = " ".join(s for (s,) in con.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT "
                                              "NULL"))
    con.close()
    assert "CHECK (version_info_id=1)" in sql


@pytest.mark.parametrize(("name", "words"), [
    ("ev\x1b[2J\x1b[31mil\nline2", "holds a control or bidirectional character ('\\x1b' at "
                                   "position 2): give a plain name"),
    ("a" * 300, "is 300 bytes: a folder name holds at most 255"),
])  # fmt: skip
def test_a_study_name_with_control_characters_or_too_long_is_one_line(name, words, tmp_path,
                                                                      capsys):
    """Both printed raw (ESC cleared the terminal) or a traceback (ENAMETOOLONG)."""
    assert report_main(["--study", name, "--studies-dir", str(tmp_path / "st")]) == 2
    line = _one_error(capsys, "sweeps.report: error: study name ")
    assert words in line and "\x1b" not in line, line
    with pytest.raises(SystemExit) as stop:
        _sweep(tmp_path, study=name, fit=never_fit)
    assert stop.value.code == 2
    assert words in _one_error(capsys, "sweeps.run: error:")
    assert not (tmp_path / "st").exists()


def test_report_out_too_long_is_one_line(base_study, tmp_path, capsys):  # noqa: F811
    out = tmp_path / ("b" * 300)
    assert report_main(["--study", "s", "--studies-dir", str(base_study), "--out",
                        str(out)]) == 2
    assert "File name too long" in _one_error(capsys, "sweeps.report: error: --out ")
