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
