"""2-process CPU DDP (gloo, ddp_spawn) fit of the tiny config: both ranks end with identical
GradNorm weights and network parameters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from lightning_modules import train

REPO = Path(__file__).resolve().parents[1]


class SaveRankState(pl.Callback):
    """Each rank writes its GradNorm weights, L(0) and network parameters at the end."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        state = {
            "weights": pl_module.gradnorm.weights.clone(),
            "initial_losses": pl_module.gradnorm.initial_losses.clone(),
            "net": torch.cat([p.detach().flatten() for p in pl_module.net.parameters()]),
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
        }
        torch.save(state, Path(self.folder) / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_two_process_cpu_ddp_keeps_gradnorm_weights_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # children: one thread each on a 2-core box
    args = ["--config", str(REPO / "configs" / "tiny.yaml"), "--run.root", str(tmp_path),
            "--run.wandb=false", "--run.val_images=0", "--trainer.max_epochs=1",
            "--trainer.accelerator=cpu", "--devices", "2", "--trainer.strategy=ddp_spawn",
            "--trainer.enable_progress_bar=false"]
    train.fit(args, callbacks=[SaveRankState(str(tmp_path))])
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert r0["world_size"] == r1["world_size"] == 2
    # 8 phantoms over 2 ranks, batch 2 -> 2 batches per rank
    assert r0["global_step"] == r1["global_step"] == 2
    assert (r0["weights"] - 1).abs().max() > 1e-4  # GradNorm did move the weights
    torch.testing.assert_close(r0["weights"], r1["weights"], atol=0, rtol=0)
    torch.testing.assert_close(r0["initial_losses"], r1["initial_losses"], atol=0, rtol=0)
    torch.testing.assert_close(r0["net"], r1["net"], atol=0, rtol=0)


@pytest.mark.slow
def test_make_train_devices_2_launches_two_ddp_processes(tmp_path):
    """The path `make train DEVICES=2` takes: plain `ddp`, Lightning re-launching the script;
    both ranks join one process group and write one run folder."""
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    cmd = [sys.executable, "-m", "lightning_modules.train", "--config",
           str(REPO / "configs" / "tiny.yaml"), "--devices", "2", "--run.root", str(tmp_path),
           "--run.wandb=false", "--run.val_images=0", "--trainer.max_epochs=1",
           "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log
    runs = [p for p in (tmp_path / "tiny").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs  # both ranks agreed on one run folder
    ckpt = torch.load(runs[0] / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    w = ckpt["state_dict"]["gradnorm.log_weights"].exp()
    torch.testing.assert_close(w.sum(dim=1), torch.full((w.shape[0],), 3.0))
