"""A run interrupted after epoch 1 and resumed from last.ckpt ends exactly like an uninterrupted
run (CPU, deterministic, num_workers=0, augmentation on, shuffled)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_modules import train
from lightning_modules.epoch_seeding import EpochSeededSampler

REPO = Path(__file__).resolve().parents[1]


def test_epoch_seeded_sampler_depends_only_on_seed_and_epoch():
    data = list(range(10))
    a, b = EpochSeededSampler(data, seed=3), EpochSeededSampler(data, seed=3)
    a.set_epoch(0)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    b.set_epoch(1)
    assert sorted(first) == data and first != second and list(b) == second


def _args(root: Path, epochs: int, *extra: str) -> list[str]:
    return ["--config", str(REPO / "configs" / "tiny.yaml"), "--run.root", str(root),
            "--run.wandb=false", "--run.val_images=0", f"--trainer.max_epochs={epochs}",
            "--trainer.deterministic=true", "--trainer.enable_progress_bar=false",
            "--data.num_workers=0", *extra]


@pytest.mark.slow
def test_resume_after_epoch_one_matches_uninterrupted(tmp_path):
    full = train.fit(_args(tmp_path / "full", 2))
    part = train.fit(_args(tmp_path / "part", 1))
    assert part.trainer.global_step == 4
    resumed = train.fit(_args(tmp_path / "part", 2, "--resume", "last"))
    assert resumed.run_dir != part.run_dir
    assert resumed.trainer.global_step == full.trainer.global_step == 8
    assert resumed.trainer.current_epoch == full.trainer.current_epoch

    a, b = full.module.state_dict(), resumed.module.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0, msg=f"{k} differs")
    # both optimisers' states and the scheduler continue exactly too
    oa, ob = full.trainer.optimizers, resumed.trainer.optimizers
    for x, y in zip(oa, ob, strict=True):
        sa, sb = x.state_dict()["state"], y.state_dict()["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            for key in sa[i]:
                torch.testing.assert_close(sb[i][key], sa[i][key], atol=1e-6, rtol=0)
    assert (full.trainer.lr_scheduler_configs[0].scheduler.state_dict()
            == resumed.trainer.lr_scheduler_configs[0].scheduler.state_dict())
    # the validation of the last epoch agrees as well
    assert resumed.metrics["val/loss"] == pytest.approx(full.metrics["val/loss"], abs=1e-6)
    # the resumed run keeps the first epoch's metrics from the checkpoint
    assert resumed.first_metrics["val/loss"] == pytest.approx(part.metrics["val/loss"])
