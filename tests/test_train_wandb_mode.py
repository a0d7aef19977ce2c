"""The W&B mode is checked in one line; offline runs say so to wandb through WANDB_MODE."""

from __future__ import annotations

import pytest

from datamodules.config_file import ConfigFileError
from lightning_modules.train import RunOptions, wandb_mode


def test_wandb_mode_typo_is_one_line(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "ofline")
    with pytest.raises(ConfigFileError, match="WANDB_MODE='ofline' is not one of"):
        wandb_mode(RunOptions())
    monkeypatch.delenv("WANDB_MODE")
    with pytest.raises(ConfigFileError, match="run.wandb_mode='bogus'"):
        wandb_mode(RunOptions(wandb_mode="bogus"))
    assert wandb_mode(RunOptions(wandb_mode="off")) == "disabled"
    assert wandb_mode(RunOptions()) == "offline"


def test_make_train_leaves_the_mode_to_the_config(tmp_path):
    """User walkthrough: the Makefile exported WANDB_MODE=offline, and the variable wins over
    the config, so `make train ARGS="--run.wandb_mode online"` quietly ran offline. The recipe's
    environment (PY replaced by a probe, the install stamp by a new file) has no mode of
    its own now; one the user sets still reaches it."""
    import os
    import subprocess
    from pathlib import Path

    probe = "python3 -c 'import os; print(os.environ.get(\"WANDB_MODE\", \"unset\"))'"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE" and not k.startswith("MAKE")}
    stamp = tmp_path / "stamp"  # newer than pyproject.toml: make installs nothing
    stamp.touch()

    def mode(**extra: str) -> str:
        out = subprocess.run(["make", "-s", "train", f"PY={probe}", f"STAMP={stamp}"],
                             cwd=Path(__file__).resolve().parents[1], env={**env, **extra},
                             capture_output=True, text=True, timeout=60, check=True)
        return out.stdout.strip()

    assert mode() == "unset"
    assert mode(WANDB_MODE="disabled") == "disabled"
