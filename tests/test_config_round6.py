"""Sixth fuzz round, YAML files and run names: integers Python will not convert (more than 4300
digits), base-60 integers that cost quadratic time, values PyYAML's constructors fail on with a
ValueError (``2020-13-45``), and control or bidirectional characters in ``run.name``. Each is one
line naming the file (or the escaped name), status 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from datamodules import config_file
from datamodules.config_file import ConfigFileError, read_yaml
from lightning_modules import train
from lightning_modules.run_folder import run_folder_problem

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")

# what made each of these a traceback or a file-less message before
LONG_INTEGERS = {
    "decimal": "1" * 5000,  # int() refuses more than 4300 digits: ValueError
    "negative": "-1_" + "1" * 5000,  # (underscores are dropped by PyYAML first)
    "hexadecimal": "0x" + "f" * 4000,  # converted, then str() of it failed
    "base60": "1" + ":59" * 2000,  # YAML 1.1 sexagesimal: likewise
    "tagged": "!!int " + "9" * 5000,
}


def one_line(text: str) -> str:
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got {lines[:5]}"
    assert "Traceback" not in lines[0] and "set_int_max_str_digits" not in lines[0]
    return lines[0]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------- read_yaml
@pytest.mark.parametrize("kind", sorted(LONG_INTEGERS))
def test_an_integer_with_too_many_digits_is_one_line_naming_the_file(kind, tmp_path):
    path = _write(tmp_path / f"{kind}.yaml", f"trainer:\n  max_epochs: {LONG_INTEGERS[kind]}\n")
    with pytest.raises(ConfigFileError) as err:
        read_yaml(path)
    line = one_line(err.value)
    assert line.startswith(f"{path}: line 2: ") and "too large to be read as a number" in line
    assert "refused as config" in line, line


def test_a_megabyte_of_base60_digits_is_refused_quickly(tmp_path):
    """A 900 kB base-60 integer spent 45 s in PyYAML's quadratic conversion."""
    path = _write(tmp_path / "b60.yaml", "a: 1" + ":59" * 300_000 + "\n")
    start = time.perf_counter()
    with pytest.raises(ConfigFileError, match="too large to be read as a number"):
        read_yaml(path)
    assert time.perf_counter() - start < 10


def test_integers_a_float_can_hold_in_any_base_are_still_read(tmp_path):
    """The digit bound refuses nothing a float could hold: 2**1023 takes 1024 binary digits."""
    text = (f"bin: 0b1{'0' * 1023}\nhex: 0x{'f' * 255}\ndec: {2**1024 - 2**970 - 1}\n"
            f"b60: 1{':00' * 170}\nsmall: 1:30\n")
    data = read_yaml(_write(tmp_path / "ok.yaml", text))
    assert data["bin"] == 2**1023 and data["hex"] == 16**255 - 1
    assert data["b60"] == 60**170 and data["small"] == 90


def test_the_digits_of_a_huge_integer_are_counted_without_str(tmp_path, monkeypatch):
    """``len(str(big))`` raised ValueError past 4300 digits: the count comes from bit_length.
    (With the digit bound lifted, 16**4000 - 1 reaches the too-large-for-a-float check.)"""
    monkeypatch.setattr(config_file, "MAX_NUMBER_DIGITS", 10**6)
    path = _write(tmp_path / "hex.yaml", f"a: [1, -0x{'f' * 4000}]\n")
    with pytest.raises(ConfigFileError) as err:
        read_yaml(path, what="review thresholds")
    line = one_line(err.value)  # 16**4000 has 4817 decimal digits; 10**4816 <= 16**4000 - 1
    assert line == (f"{path}: a number of 4817 digits (-30194693372...) is too large to be read "
                    "as a number: refused as review thresholds"), line


@pytest.mark.parametrize(("text", "words"), [
    ("a: 2020-13-45\n", "'2020-13-45' cannot be read as a date (month must be in 1..12)"),
    ("a: !!int abc\n", "'abc' cannot be read as an integer"),
    ("a: !!float ''\n", "'' cannot be read as a number"),
    ("a: !!timestamp abc\n", "'abc' cannot be read as a date"),
    ("a: 1" + ":00" * 200 + ".0\n", "cannot be read as a number"),  # OverflowError
])
def test_a_value_pyyaml_cannot_construct_is_one_line_with_its_line(text, words, tmp_path):
    path = _write(tmp_path / "bad.yaml", "b: 1\n" + text)
    with pytest.raises(ConfigFileError) as err:
        read_yaml(path)
    line = one_line(err.value)
    assert line.startswith(f"{path}: line 2: ") and words in line, line


# ------------------------------------------------------------------- train, plan entries
@pytest.mark.parametrize("kind", ["decimal", "hexadecimal", "base60"])
def test_train_refuses_a_config_with_a_long_integer_in_one_line(kind, tmp_path, capsys):
    cfg = _write(tmp_path / "long.yaml", f"trainer:\n  max_epochs: {LONG_INTEGERS[kind]}\n")
    with pytest.raises(SystemExit) as stop:
        train.main(["--config", TINY, "--config", str(cfg), "--run.root", str(tmp_path / "r")])
    assert stop.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"train: error: {cfg}: line 2: "), line
    assert not (tmp_path / "r").exists()


def test_train_entry_point_with_a_long_integer_exits_2(tmp_path):
    """The real command line (``python -m lightning_modules.train``): was status 1 and a
    traceback from PyYAML's int()."""
    cfg = _write(tmp_path / "long.yaml", f"trainer:\n  max_epochs: {'1' * 5000}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_modules.train", "--config", str(cfg), "--run.root",
         str(tmp_path / "r")], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "WANDB_MODE": "disabled"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = one_line(proc.stderr)
    assert line.startswith(f"train: error: {cfg}: line 2: ") and "5000 digits" in line, line


@pytest.mark.parametrize("kind", ["decimal", "hexadecimal", "base60"])
def test_plan_review_config_with_a_long_integer_names_the_file(kind, tmp_path, capsys):
    """``plan --review-config`` printed Python's "Exceeds the limit (4300 digits)" without the
    file (or a traceback-free but file-less line)."""
    from planning.plan import main

    cfg = _write(tmp_path / "review.yaml", f"min_peak: {LONG_INTEGERS[kind]}\n")
    ckpt = _write(tmp_path / "m.ckpt", "x")  # read after the review config
    argv = ["--image", str(tmp_path / "knee.png"), "--ckpt", str(ckpt), "--out",
            str(tmp_path / "out"), "--review-config", str(cfg)]
    assert main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"plan: error: {cfg}: line 1: "), line
    assert "too large to be read as a number" in line and "Exceeds the limit" not in line


# ----------------------------------------------------------------------------- run.name
RAW_NAME = "tiny\u202e\x1b[31m\n"


def test_a_run_name_with_control_characters_is_refused_escaped(tmp_path, capsys):
    """A run.name holding an escape sequence, a right-to-left override and a newline trained,
    made a folder of that name and printed the raw escape codes."""
    cfg = _write(tmp_path / "name.yaml", 'run: {name: "tiny\\u202e\\x1b[31m\\n"}\n')
    with pytest.raises(SystemExit) as stop:
        train.main(["--config", TINY, "--config", str(cfg), "--run.root", str(tmp_path / "r")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\u202e" not in err
    line = one_line(err)
    assert line.startswith("train: error: run.name='tiny\\u202e\\x1b[31m\\n' holds "), line
    assert "control or bidirectional character" in line, line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", [
    RAW_NAME, "a\tb", "a\x7f", "a\x85", "a\u200bb", "a\u2028b", "a\u2066b\u2069", "a\ufeff",
])
def test_run_folder_problem_refuses_invisible_characters(name, tmp_path):
    problem = run_folder_problem(tmp_path, name)
    assert problem is not None and "control or bidirectional character" in problem
    assert problem.isprintable(), problem


@pytest.mark.parametrize("name", ["tiny", "knie-ü 実験", "run 2 (α=0.5)"])
def test_run_folder_problem_keeps_printable_names(name, tmp_path):
    assert run_folder_problem(tmp_path, name) is None


def test_a_run_stamp_with_control_characters_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("KNEEPLAN_RUN_STAMP", "s\x1b[2J")
    problem = run_folder_problem(tmp_path, "tiny")
    assert problem is not None and "KNEEPLAN_RUN_STAMP='s\\x1b[2J'" in problem
    assert problem.isprintable(), problem
