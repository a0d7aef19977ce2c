"""End to end: the quick CPU preset (what `make train` runs without a GPU) really learns on
phantoms. Shortened to 3 epochs; the thresholds are far from what a broken pipeline (labels and
images misaligned, GradNorm starving a task, targets in the wrong frame) could reach."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_modules import train

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_preset_learns_landmarks_and_bones(tmp_path):
    res = train.fit(["--config", str(REPO / "configs" / "quick.yaml"), "--run.root", str(tmp_path),
                     "--run.wandb=false", "--run.val_images=0", "--trainer.max_epochs=3",
                     "--trainer.enable_progress_bar=false",
                     # pipeline sanity on the first generator's narrower set; the default
                     # mixture is much broader and needs more than 3 epochs
                     "--data.phantom_config", str(REPO / "configs" / "phantoms" / "classic.yaml")])
    first, last = res.first_metrics, res.metrics
    print({k: (round(first[k], 3), round(last[k], 3))
           for k in ("val/loss", "val/iou_mean", "val/lm_err_px_median", "val/lm_err_mm_median")})
    assert last["val/loss"] < 0.6 * first["val/loss"]
    assert last["val/iou_mean"] > first["val/iou_mean"] + 0.2
    assert last["val/iou/femur"] > 0.85
    # 128 px frame: an untrained network is ~45 px off; learned landmarks are within a few px
    assert last["val/lm_err_px_median"] < 0.5 * first["val/lm_err_px_median"]
    assert last["val/lm_err_px_median"] < 15.0
