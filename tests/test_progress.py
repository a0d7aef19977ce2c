"""Progress output (issue 14): plain lines without a terminal, Lightning's bar with one."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pytorch_lightning.callbacks import TQDMProgressBar

from datamodules.progress import PROGRESS_ENV, format_duration, progress_iter, use_bar
from lightning_modules.progress import LineProgress, progress_callback

REPO = Path(__file__).resolve().parents[1]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_the_bar_a_file_gets_lines(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    assert use_bar(_Tty()) and not use_bar(io.StringIO())
    assert isinstance(progress_callback({}, [], stream=_Tty())[0], TQDMProgressBar)
    assert isinstance(progress_callback({}, [], stream=io.StringIO())[0], LineProgress)
    # switched off, or a progress bar already chosen by the user: nothing added
    assert progress_callback({"enable_progress_bar": False}, [], stream=_Tty()) == []
    assert progress_callback({"callbacks": [TQDMProgressBar()]}, stream=io.StringIO()) == []
    monkeypatch.setenv(PROGRESS_ENV, "lines")
    assert not use_bar(_Tty())


def test_progress_iter_prints_whole_lines_without_a_terminal(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    out = io.StringIO()
    assert list(progress_iter(range(7), "plan", every=3, stream=out)) == list(range(7))
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # after items 3, 6 and the last (7)
    assert [ln.split(" (")[0] for ln in lines] == ["plan: 3/7", "plan: 6/7", "plan: 7/7"]
    out = io.StringIO()  # unknown total: every 10 and the end
    list(progress_iter(iter(range(12)), "eval", stream=out))
    assert [ln.split(",")[0] for ln in out.getvalue().splitlines()] == ["eval: 10", "eval: 12"]


def test_format_duration():
    assert [format_duration(s) for s in (4.4, 65, 7260)] == ["4 s", "1 min 05 s", "2 h 01 min"]


@pytest.mark.slow
def test_train_into_a_file_writes_no_carriage_return(tmp_path):
    """``make train > file``: one epoch of the tiny preset, stdout and stderr to a file."""
    log = tmp_path / "train.log"
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled",
               OMP_NUM_THREADS="1", KNEEPLAN_PROGRESS_STEPS="2", PYTHONPATH=str(REPO))
    env.pop(PROGRESS_ENV, None)
    with log.open("wb") as fh:
        proc = subprocess.run(
            [sys.executable, "-m", "lightning_modules.train", "--config",
             str(REPO / "configs" / "tiny.yaml"), "--run.root", str(tmp_path / "runs"),
             "--trainer.max_epochs=1"],
            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, env=env,
            timeout=300)
    data = log.read_bytes()
    assert proc.returncode == 0, data.decode(errors="replace")[-3000:]
    assert b"\r" not in data
    text = data.decode()
    # tiny: 8 train images, batch 2 -> 4 steps: lines at steps 2 and 4, then the epoch line
    assert "epoch 0 (1/1) step 2/4: loss " in text and "epoch 0 (1/1) step 4/4" in text
    assert "epoch 0 (1/1) done in" in text and "val/lm_err_px" in text
    assert "training finished in" in text
