"""A run interrupted after epoch 1 and resumed from last.ckpt ends exactly like an uninterrupted
run (CPU, deterministic, augmentation on, shuffled; data workers or not)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch

from datamodules.datamodule import KneeDataModule
from datamodules.seeding import EpochSeededSampler
from lightning_modules import train

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


@pytest.mark.parametrize("workers", [0, 1])
def test_resumed_epoch_gets_the_same_batches_with_and_without_workers(workers):
    """Epoch 2's first batch (order and augmentation) is the same whether the loader ran
    epochs 0-1 before or starts at epoch 2, as after a resume; workers included."""
    dm = KneeDataModule(num_train=4, num_val=2, size=32, min_side=64, max_side=80, batch_size=4,
                        num_workers=workers, cache_phantoms=True)
    dm.setup("fit")

    def first_batch_images(epochs: range) -> list[torch.Tensor]:
        loader = dm.train_dataloader()  # epoch-seeded with the DataModule's seed (0)
        out = []
        for e in epochs:
            loader.sampler.set_epoch(e)
            out.append(next(iter(loader))["image"])
        return out

    uninterrupted = first_batch_images(range(3))
    resumed = first_batch_images(range(2, 3))
    torch.testing.assert_close(resumed[-1], uninterrupted[-1], atol=0, rtol=0)
    assert not torch.equal(uninterrupted[0], uninterrupted[-1])  # epochs do differ


def _args(root: Path, epochs: int, *extra: str) -> list[str]:
    return ["--config", str(REPO / "configs" / "tiny.yaml"), "--run.root", str(root),
            "--run.wandb=false", "--run.val_images=0", f"--trainer.max_epochs={epochs}",
            "--trainer.deterministic=true", "--trainer.enable_progress_bar=false",
            *extra]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_resume_after_epoch_one_matches_uninterrupted(tmp_path, workers):
    w = f"--data.num_workers={workers}"
    full = train.fit(_args(tmp_path / "full", 2, w))
    part = train.fit(_args(tmp_path / "part", 1, w))
    assert part.trainer.global_step == 4
    resumed = train.fit(_args(tmp_path / "part", 2, w, "--resume", "last"))
    assert resumed.run_dir == part.run_dir  # a resumed run continues its folder (issue 12)
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


def test_resume_continues_the_run_folder_and_keeps_the_best_score(tmp_path):
    """lr 0: no epoch after the first improves, so the resumed run must keep best-epoch000 (a
    new folder, or a forgotten best score, would write a new best-epoch file)."""
    frozen = ("--model.lr=0.0", "--model.gradnorm_lr=0.0", "--data.num_train=2",
              "--data.num_val=2", "--data.augment=false")
    part = train.fit(_args(tmp_path, 1, *frozen))
    resumed = train.fit(_args(tmp_path, 3, *frozen, "--resume", "last"))
    assert resumed.run_dir == part.run_dir
    assert sorted(p.name for p in (part.run_dir / "checkpoints").iterdir()) == [
        "best-epoch000.ckpt", "last.ckpt"]
    assert resumed.best_checkpoint == part.best_checkpoint
    best = resumed.trainer.checkpoint_callback.best_model_score
    assert float(best) == pytest.approx(part.metrics["val/lm_err_px"])
    last = torch.load(part.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2
    import csv

    with (part.run_dir / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    epochs = {int(float(r["epoch"])) for r in rows if r.get("epoch")}
    # one metrics.csv for both parts: Lightning deleted the first part's rows on resume
    assert epochs == {0, 1, 2}, epochs
    assert any(r.get("val/lm_err_px") for r in rows if r.get("epoch") in ("0", "0.0"))


def test_diverging_training_stops_with_status_3_and_no_nan_checkpoint(tmp_path, capsys):
    """lr 1e6 on the tiny preset: non-finite steps are skipped and counted, five in a row stop
    the run with one clear line and exit status 3; no checkpoint on disk holds NaN/inf."""
    with pytest.raises(SystemExit) as stop:
        train.main(_args(tmp_path, 6, "--model.lr=1e6", "--data.num_train=4",
                         "--data.num_val=2"))
    assert stop.value.code == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("train: error:")]
    assert len(lines) == 1 and "5 consecutive steps with a NaN/infinite loss" in lines[0]
    for ckpt in tmp_path.rglob("*.ckpt"):
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    csv = next(tmp_path.rglob("metrics.csv")).read_text().splitlines()
    header = csv[0].split(",")
    counted = [r.split(",")[header.index("train/nonfinite_steps")] for r in csv[1:]]
    assert max(float(c) for c in counted if c) >= 4  # the fifth is logged, not yet flushed


def test_resume_alone_continues_on_the_runs_own_data(tmp_path, monkeypatch):
    """User walkthrough: `make train DATA=own`, then `make train RESUME=last` trained its second
    epoch on the preset's phantoms and rewrote config.yaml with data_root null, without a word.
    Without --config a resume now takes the run's own config.yaml (so RESUME alone continues
    on the same data and settings); a config that changes the data is refused in one line."""
    from datamodules.dataset_io import write_sample
    from datamodules.phantoms import PhantomConfig, generate_phantom
    from lightning_modules.checkpoint_file import CheckpointError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = tmp_path / "own"
    for seed in range(5):
        write_sample(data, generate_phantom(40 + seed, PhantomConfig(min_side=96, max_side=128)))
    args = ["--run.wandb=false", "--run.val_images=0", "--trainer.enable_progress_bar=false",
            "--run.name", "own"]
    part = train.fit(["--config", str(REPO / "configs" / "tiny.yaml"), "--data-root", str(data),
                      "--trainer.max_epochs=1", *args])
    resumed = train.fit(["--resume", "last", "--trainer.max_epochs=2", *args])
    assert resumed.run_dir == part.run_dir and resumed.trainer.current_epoch == 2
    assert resumed.trainer.datamodule.data_root == str(data)
    saved = (part.run_dir / "config.yaml").read_text()
    assert f"data_root: {data}" in saved and "c_star: 16" in saved  # tiny's, not quick's

    with pytest.raises(CheckpointError, match=r"data_root .* -> None.*RESUME=") as err:
        train.fit(["--config", str(REPO / "configs" / "tiny.yaml"), "--resume", "last",
                   "--trainer.max_epochs=3", *args])
    assert "\n" not in str(err.value)
    other = tmp_path / "other"
    shutil.copytree(data, other)
    with pytest.raises(CheckpointError, match="data_root"):
        train.fit(["--resume", "last", "--data-root", str(other), "--trainer.max_epochs=3",
                   *args])
    # the data moved (the recorded folder is gone): the new folder may be given
    shutil.rmtree(data)
    moved = train.fit(["--resume", "last", "--data-root", str(other), "--trainer.max_epochs=3",
                       *args])
    assert moved.trainer.current_epoch == 3


def test_resuming_a_finished_run_says_there_is_nothing_to_train(tmp_path):
    """User walkthrough: it printed an empty first-vs-last table and started another W&B run."""
    from lightning_modules.checkpoint_file import CheckpointError

    on = ("--data.num_train=2", "--data.num_val=2", "--run.wandb=true")  # (after _args' false)
    part = train.fit(_args(tmp_path, 1, *on))
    before = sorted((part.run_dir / "wandb").glob("offline-run-*"))
    assert len(before) == 1
    with pytest.raises(CheckpointError, match=r"nothing to train: the run has finished its 1 "
                       r"epochs \(trainer.max_epochs 1\); raise it"):
        train.fit(_args(tmp_path, 1, *on, "--resume", "last"))
    assert sorted((part.run_dir / "wandb").glob("offline-run-*")) == before  # no new W&B run


def test_resume_alone_checks_the_run_folders_config_like_any_config(tmp_path, monkeypatch):
    """Session 29 review: RESUME= without CONFIG reads the run folder's config.yaml, which a
    shared folder may have edited: it is checked as any --config (a section given as another
    file, read unchecked, is refused), and it does not turn W&B online by itself."""
    import yaml

    from datamodules.config_file import ConfigFileError

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    part = train.fit(_args(tmp_path, 1, "--data.num_train=2", "--data.num_val=2"))
    last = part.run_dir / "checkpoints" / "last.ckpt"
    saved = part.run_dir / "config.yaml"
    cfg = yaml.safe_load(saved.read_text())
    cfg["run"]["wandb_mode"] = "online"
    saved.write_text(yaml.safe_dump(cfg))
    assert train.translate_args(["--resume", str(last)], announce=False)[-1] == (
        "--run.wandb_mode=offline")
    assert train.translate_args(["--resume", str(last), "--run.wandb_mode", "online"],
                                announce=False)[-2:] == ["--run.wandb_mode", "online"]
    (part.run_dir / "t.yaml").write_text("max_epochs: 5\n")
    cfg["trainer"] = "t.yaml"
    saved.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigFileError, match="trainer is given as 't.yaml', not as its settings"):
        train.fit(["--resume", str(last), "--trainer.max_epochs=2"])


def test_resume_of_a_moved_run_folder_keeps_the_best_score(tmp_path):
    """A run folder moved (or copied) elsewhere, e.g. from a cluster's scratch disk: Lightning
    forgot its best score ("The dirpath has changed"), so the resumed run's first epoch, however
    bad, was written as a new best checkpoint next to the real one. Saved paths now move with
    the folder: as without the move, only best-epoch000 and last remain."""
    frozen = ("--model.lr=0.0", "--model.gradnorm_lr=0.0", "--data.num_train=2",
              "--data.num_val=2", "--data.augment=false")
    part = train.fit(_args(tmp_path / "scratch", 1, *frozen))
    moved_root = tmp_path / "home"
    shutil.move(tmp_path / "scratch", moved_root)
    run = moved_root / part.run_dir.relative_to(tmp_path / "scratch")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = train.fit(_args(moved_root, 3, *frozen, "--resume",
                                  str(run / "checkpoints" / "last.ckpt")))
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    assert resumed.run_dir == run.resolve()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best-epoch000.ckpt", "last.ckpt"]
    callback = resumed.trainer.checkpoint_callback
    assert float(callback.best_model_score) == pytest.approx(part.metrics["val/lm_err_px"])
    assert Path(callback.best_model_path) == run.resolve() / "checkpoints" / "best-epoch000.ckpt"


def test_moved_checkpoint_state_moves_only_plain_names_of_the_saved_folder(tmp_path):
    from lightning_modules.checkpoints import moved_checkpoint_state

    new = tmp_path / "new"
    new.mkdir()
    (new / "best-epoch003.ckpt").write_bytes(b"x")
    state = {"dirpath": "/old/ck", "best_model_path": "/old/ck/best-epoch003.ckpt",
             "last_model_path": "/old/ck/last.ckpt", "kth_best_model_path": "/elsewhere/a.ckpt",
             "best_k_models": {"/old/ck/best-epoch003.ckpt": 1.5, "/old/ck/.x.ckpt": 2.0},
             "best_model_score": 1.5}
    out = moved_checkpoint_state(state, str(new))
    assert out["dirpath"] == str(new) and out["best_model_score"] == 1.5
    assert out["best_model_path"] == str(new / "best-epoch003.ckpt")
    assert out["last_model_path"] == str(new / "last.ckpt")
    assert out["kth_best_model_path"] == "/elsewhere/a.ckpt"  # not of the saved folder
    assert out["best_k_models"] == {str(new / "best-epoch003.ckpt"): 1.5, "/old/ck/.x.ckpt": 2.0}
    # the best checkpoint is not in the new folder (moved without it): left to Lightning
    assert moved_checkpoint_state(dict(state, best_model_path="/old/ck/best-epoch009.ckpt"),
                                  str(new))["dirpath"] == "/old/ck"
    assert moved_checkpoint_state(dict(state, dirpath=str(new)), str(new))["dirpath"] == str(new)
    assert moved_checkpoint_state({"dirpath": "/old/ck", "best_model_path": ""}, str(new)) == {
        "dirpath": "/old/ck", "best_model_path": ""}


def test_resume_refuses_a_run_folder_with_links_out_of_it(tmp_path):
    """Fifth fuzz round: a shared run folder whose metrics.csv, or a folder inside checkpoints/,
    was a link out of it made the resumed run overwrite the link's target (metrics.csv) or
    delete a file through it (the restored "previous best" checkpoint). Links inside the
    folder (W&B's latest-run) are fine."""
    from lightning_modules.checkpoint_file import CheckpointError
    from lightning_modules.run_folder import outside_link

    part = train.fit(_args(tmp_path, 1, "--data.num_train=2", "--data.num_val=2"))
    run = part.run_dir
    (run / "wandb").mkdir()
    (run / "wandb" / "run-1").mkdir()
    (run / "wandb" / "latest-run").symlink_to("run-1")
    assert outside_link(run) is None
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("precious")
    for link, target in ((run / "checkpoints" / "sub", victim),
                         (run / "metrics.csv", victim / "notes.txt")):
        saved = run / "saved"
        if link.exists():
            link.rename(saved)
        link.symlink_to(target)
        assert str(link) in outside_link(run)
        with pytest.raises(CheckpointError, match="holds a link out of it"):
            train.fit(_args(tmp_path, 2, "--data.num_train=2", "--data.num_val=2",
                            "--resume", "last"))
        link.unlink()
        if saved.exists():
            saved.rename(link)
    assert (victim / "notes.txt").read_text() == "precious"


def test_resume_of_a_run_logged_to_wandb_offline(tmp_path, monkeypatch):
    """`make train` logs to W&B offline by default, and W&B links its run's
    ``logs/debug-core.log`` to a file in the home folder: `RESUME=last` refused every such run
    ("holds a link out of it") until links inside an earlier W&B run's folder were passed over.
    The resumed run gets a W&B run folder of its own; a link out of the folder elsewhere (here
    the ``wandb`` folder's own log link) is still refused."""
    from lightning_modules.checkpoint_file import CheckpointError

    monkeypatch.delenv("WANDB_MODE", raising=False)  # the config's run.wandb_mode (offline)
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = [a for a in _args(tmp_path, 1, "--data.num_train=2", "--data.num_val=2")
            if a != "--run.wandb=false"] + ["--run.wandb=true"]
    run = train.fit(args).run_dir
    old = list((run / "wandb").glob("offline-run-*"))
    assert len(old) == 1
    home = tmp_path / "home"
    home.mkdir()
    (home / "core-debug.log").write_text("W&B's own log")
    core = old[0] / "logs" / "debug-core.log"  # as W&B makes it (whether or not it did here)
    if not core.is_symlink():
        core.parent.mkdir(exist_ok=True)
        core.unlink(missing_ok=True)
        core.symlink_to(home / "core-debug.log")
    assert not core.resolve().is_relative_to(run.resolve())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = train.fit([a.replace("max_epochs=1", "max_epochs=2") for a in args]
                            + ["--resume", "last"])
    # the restored scheduler catches up one epoch before the first step: not a skipped lr
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    assert resumed.run_dir == run and resumed.trainer.current_epoch == 2
    assert len(list((run / "wandb").glob("offline-run-*"))) == 2
    assert (home / "core-debug.log").read_text() == "W&B's own log"

    outside = run / "wandb" / "debug.log"
    outside.unlink(missing_ok=True)
    outside.symlink_to(home / "core-debug.log")
    with pytest.raises(CheckpointError, match="holds a link out of it"):
        train.fit([a.replace("max_epochs=1", "max_epochs=3") for a in args]
                  + ["--resume", "last"])
