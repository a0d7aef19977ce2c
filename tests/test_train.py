"""End-to-end training on the tiny config: CSV, PNG, checkpoints, W&B offline, CLI flags."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import cv2
import pytest
import torch
import yaml

from lightning_modules import train
from lightning_modules.module import load_module

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_translate_args_maps_make_flags(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # (no runs/ here: --resume last has no run's config to take)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = train.translate_args(["--data-root", "d", "--devices", "2", "--num-nodes", "3",
                                "--resume", "last", "--wandb-group", "g",
                                "--trainer.max_epochs=3"])
    assert out[:2] == ["--config", str(train.QUICK_CONFIG)]
    assert "no GPU found: using configs/quick.yaml" in capsys.readouterr().out
    assert out[2:] == ["--data.data_root=d", "--trainer.devices=2", "--trainer.num_nodes=3",
                       "--run.resume=last", "--run.wandb_group=g", "--trainer.max_epochs=3"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert train.translate_args([], announce=False) == ["--config", str(train.PAPER_CONFIG)]
    assert train.translate_args(["--config", "a.yaml", "--config", "b.yaml", "--x=1"]) == [
        "--config", "a.yaml", "--config", "b.yaml", "--x=1"]


def test_print_config_resolves_presets(capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(["--config", str(REPO / "configs" / "paper.yaml"), "--model.beta=0.3",
                    "--print_config"])
    assert exc.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["beta"] == 0.3 and cfg["model"]["num_stacks"] == 4
    assert "image_size" not in cfg["model"] and cfg["data"]["size"] == 256  # linked
    assert cfg["data"]["batch_size"] == 2 and cfg["trainer"]["max_epochs"] == 250
    assert cfg["model"]["lr"] == 2.5e-4 and cfg["model"]["gradnorm_lr"] == 0.025
    assert cfg["model"]["lr_step_epochs"] == 60 and cfg["model"]["lr_gamma"] == 0.5
    assert cfg["model"]["alpha"] == 1.0


def test_fit_tiny_two_epochs_writes_everything(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the config's run.wandb_mode (offline)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    args = ["--config", TINY, "--run.root", str(tmp_path / "runs"), "--run.wandb=true",
            "--wandb-group", "grp", "--model.lr_step_epochs=1"]
    with caplog.at_level("INFO"):
        result = train.fit(args)
    # Lightning's info lines still come through, its cloud-logger advert does not (session 31)
    assert "GPU available" in caplog.text and "litlogger" not in caplog.text
    # W&B gets the global seed (runs differing only in it looked alike) and no anonymous=None,
    # which W&B warned about in every run
    from pytorch_lightning.loggers import WandbLogger

    wb = next(lg for lg in result.trainer.loggers if isinstance(lg, WandbLogger))
    assert wb._wandb_init["config"] == {"seed_everything": 0}  # tiny.yaml's seed
    assert "anonymous" not in wb._wandb_init
    run_dir, trainer = result.run_dir, result.trainer
    assert run_dir.parent == tmp_path / "runs" / "tiny"
    # WandbLogger(offline=True) would have set WANDB_MODE process-wide; we must not
    assert "WANDB_MODE" not in os.environ

    # 8 phantoms, batch 2 -> 4 batches per epoch, 2 epochs: global_step counts batches
    assert trainer.global_step == 8 == 2 * len(trainer.train_dataloader)

    rows = _rows(run_dir / "metrics.csv")
    train_rows = [r for r in rows if r["gradnorm/hg0/seg"]]
    assert [int(r["step"]) for r in train_rows] == list(range(8))
    for r in train_rows:
        for l in range(2):
            w = [float(r[f"gradnorm/hg{l}/{t}"]) for t in ("seg", "lm", "roi")]
            assert sum(w) == pytest.approx(3.0, abs=1e-5) and min(w) > 0
            assert all(math.isfinite(float(r[f"train/loss/hg{l}/{t}"]))
                       for t in ("seg", "lm", "roi"))
    # network lr halved after every epoch (lr_step_epochs=1), GradNorm lr fixed
    lrs = {int(r["epoch"]): float(r["lr/net"]) for r in train_rows}
    assert lrs[0] == pytest.approx(2.5e-4) and lrs[1] == pytest.approx(1.25e-4)
    assert all(float(r["lr/gradnorm"]) == pytest.approx(0.025) for r in train_rows)
    val_rows = [r for r in rows if r.get("val/lm_err_px")]
    assert len(val_rows) == 2
    assert set(result.metrics) >= {"val/lm_err_px", "val/lm_err_mm", "val/iou/femur", "val/loss"}
    assert result.first_metrics["val/loss"] == pytest.approx(float(val_rows[0]["val/loss"]))

    png = cv2.imread(str(run_dir / "gradnorm_weights.png"))
    assert png is not None and png.shape[1] > 400 and png.std() > 5
    assert sorted(p.name for p in (run_dir / "val_images").iterdir()) == [
        "epoch_000.png", "epoch_001.png"]
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["model"]["lr_step_epochs"] == 1 and cfg["run"]["wandb_group"] == "grp"

    # checkpoints: last every epoch + best by val landmark error; full state
    ckpts = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(n.startswith("best-epoch") for n in ckpts)
    assert result.best_checkpoint and Path(result.best_checkpoint).is_file()
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert len(state["optimizer_states"]) == 2 and len(state["lr_schedulers"]) == 1
    assert state["lr_schedulers"][0]["last_epoch"] == 1
    assert "gradnorm.log_weights" in state["state_dict"]
    assert state["state_dict"]["gradnorm.initial_losses"].abs().min() > 0
    assert {"torch", "numpy", "python"} <= set(state["kneeplan_rng_states"])
    assert "lr_step_epochs: 1" in state["kneeplan_config"]
    assert state["epoch"] == 1 and state["global_step"] == 8
    module = load_module(run_dir / "checkpoints" / "last.ckpt")
    assert module.image_size == 64
    torch.testing.assert_close(module.gradnorm.weights, result.module.gradnorm.weights)

    # W&B ran offline and left its files in the run folder; the run was finished
    import wandb

    assert wandb.run is None
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))

    # a second fit in the same process gets its own W&B run and run folder
    again = train.fit(args + ["--trainer.max_epochs=1", "--trainer.max_steps=1",
                              "--run.val_images=0"])
    assert again.run_dir != run_dir and again.trainer.global_step == 1
    second = list((again.run_dir / "wandb").glob("offline-run-*"))
    assert len(second) == 1 and second[0].name != offline[0].name
    assert len(list(offline[0].parent.glob("offline-run-*"))) == 1


def test_invalid_dataset_is_refused_with_the_report_and_no_traceback(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / "a.png").write_bytes(b"not a png")
    for wandb in ("false", "true"):  # (W&B offline opened a run that stayed behind: walkthrough)
        root = tmp_path / f"runs_{wandb}"
        with pytest.raises(SystemExit) as exc:
            train.main(["--config", TINY, "--data-root", str(data), "--run.root", str(root),
                        f"--run.wandb={wandb}"])
        assert exc.value.code == 1
        err = capsys.readouterr().err
        ours = err[err.index("train: error:"):]  # (W&B's own warnings may come first)
        assert ours.startswith("train: error: invalid dataset")
        assert err.startswith("train: error:") or wandb == "true"
        assert "a.png: unreadable PNG" in err and "masks: missing folder" in err
        assert "Traceback" not in err
        assert not list(root.rglob("*"))  # no run folder left behind


def test_last_checkpoint_is_refreshed_every_epoch_without_improvement(tmp_path):
    """With lr 0 the monitored metric never improves after epoch 0; last.ckpt must still hold
    the final epoch (Lightning's own save_last only follows the best checkpoint)."""
    res = train.fit(["--config", TINY, "--run.root", str(tmp_path), "--run.wandb=false",
                     "--run.val_images=0", "--trainer.max_epochs=3", "--model.lr=0.0",
                     "--model.gradnorm_lr=0.0", "--data.augment=false",
                     "--trainer.enable_progress_bar=false"])
    ckpts = res.run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best-epoch000.ckpt", "last.ckpt"]
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2 and last["global_step"] == res.trainer.global_step
    assert res.last_checkpoint == str(ckpts / "last.ckpt")
