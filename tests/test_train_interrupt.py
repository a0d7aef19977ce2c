"""Ctrl-C during training (a real SIGINT to a real training process): status 130 and one line
naming the ``last.ckpt`` to resume from, which then resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1",
            "PYTHONUNBUFFERED": "1"}


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_ends_with_130_and_names_last_ckpt_that_resumes(tmp_path):
    root = tmp_path / "runs"
    cmd = [sys.executable, "-m", "lightning_modules.train", "--config", "configs/tiny.yaml",
           "--run.root", str(root), "--run.name", "intr", "--trainer.max_epochs=200",
           "--trainer.enable_progress_bar=false"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(root.glob("intr/*/checkpoints/last.ckpt")):  # one epoch done
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no last.ckpt within 240 s"
            time.sleep(0.2)
        time.sleep(0.5)  # inside the next epoch
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("train: training interrupted in epoch"), last_line
    ckpt = next(root.glob("intr/*/checkpoints/last.ckpt"))
    assert f"--resume {ckpt}" in last_line, last_line

    # the named checkpoint resumes (one more epoch than it holds)
    import torch

    epoch = torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"]
    done = subprocess.run([*cmd[:-2], f"--trainer.max_epochs={epoch + 2}",
                           "--trainer.enable_progress_bar=false", "--resume", str(ckpt)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
