"""Training settings refused before anything trains (red-team round 8): a network plan, evaluate
and export would refuse (too many FLOP or values per image), a negative GradNorm alpha, a
misspelt monitor, empty phantom splits, run folders outside ``run.root`` or that cannot be made,
abbreviated keys. Each is one ``train: error:`` line with exit status 2, before Lightning seeds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from datamodules.config_file import ConfigFileError
from lightning_modules import config_checks, train
from lightning_modules.model_cost import build_network, conv_cost, conv_flop
from lightning_modules.model_limits import MAX_GRAPH_FLOP

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
PAPER = str(REPO / "configs" / "paper.yaml")


def refused(argv: list[str], capsys, monkeypatch, code: int = 2) -> str:
    """Run ``train.main(argv)``, expect exit ``code`` (2: one line, before Lightning seeds; 1:
    a data report, its first line); the stderr line."""
    import pytorch_lightning.cli as pl_cli

    seeded: list = []
    monkeypatch.setattr(pl_cli, "seed_everything", lambda *a, **k: seeded.append(a) or 0)
    with pytest.raises(SystemExit) as stop:
        train.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == code, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and "Traceback" not in err and lines[0].startswith("train: error: "), lines
    if code == 2:
        assert len(lines) == 1, lines[:5]
        assert not seeded, "the refusal came after Lightning seeded ('Seed set to ...')"
    return lines[0]


def tiny(tmp_path: Path, *extra: str) -> list[str]:
    return ["--config", TINY, "--run.root", str(tmp_path / "r"), *extra]


# ------------------------------------------------------------------------- 1. network cost
@pytest.mark.parametrize(("config", "flags", "expected"), [
    (PAPER, ["--data.size=768"], "2.7e+11 FLOP per 768 px image"),  # the paper net at 768
    (TINY, ["--data.size=1024", "--model.c1=4096", "--model.c2=4096", "--model.c_star=4096"],
     "FLOP per 1024 px image"),  # OOM-killed the machine at 23.7 GB
])
def test_a_network_plan_would_refuse_is_not_trained(config, flags, expected, tmp_path, capsys,
                                                    monkeypatch):
    line = refused(["--config", config, "--run.root", str(tmp_path / "r"), *flags], capsys,
                   monkeypatch)
    assert expected in line and f"{MAX_GRAPH_FLOP:.0e} allowed" in line, line
    assert "data.size=" in line and "plan, evaluate and export would refuse" in line, line
    assert not (tmp_path / "r").exists()


def test_conv_cost_matches_torchs_flop_counter_on_a_tiny_network():
    """The analytic estimate (a rank-width copy's conv sizes, scaled) against FlopCounterMode
    on the real network (which also counts a few non-conv ops): within 6 %."""
    from torch.utils.flop_counter import FlopCounterMode

    hp = yaml.safe_load(Path(TINY).read_text())["model"]
    net = build_network(hp).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 1, 64, 64))
    assert conv_flop(net, hp, 64) == pytest.approx(counter.get_total_flops(), rel=0.06)
    with torch.device("meta"):  # what training checks: no weights, the same answer
        meta = build_network(hp)
    assert conv_cost(meta, hp, 64) == conv_cost(net, hp, 64)
    from planning import model_io

    assert model_io.conv_cost is conv_cost and model_io.build_network is build_network


@pytest.mark.parametrize("name", ["paper", "quick", "tiny"])
def test_the_shipped_presets_pass_the_checks(name):
    cfg = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    config_checks.check_config_values(cfg, name)  # (raises ConfigFileError on a problem)
    model = {**cfg["model"], "image_size": cfg["data"]["size"]}
    assert config_checks.model_cost_problem(model) is None


# ----------------------------------------------------------------- 2. alpha, 3. the monitor
def test_negative_gradnorm_alpha_is_refused(tmp_path, capsys, monkeypatch):
    line = refused(tiny(tmp_path, "--model.alpha=-0.5"), capsys, monkeypatch)
    assert "model.alpha=-0.5 must be >= 0" in line, line


@pytest.mark.parametrize("flags", [
    ["--run.monitor=val/lm_err"],
    ["--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=val/lm_err"],
])
def test_a_misspelt_monitor_is_refused_before_the_first_epoch(flags, tmp_path, capsys,
                                                              monkeypatch):
    line = refused(tiny(tmp_path, *flags), capsys, monkeypatch)
    assert "monitor='val/lm_err' is not a metric the module logs" in line, line
    assert "did you mean val/lm_err_px?" in line, line
    assert not (tmp_path / "r").exists()


def test_monitorable_names_are_the_modules_own():
    names = config_checks.logged_metric_names()
    assert {"val/lm_err_px", "val/lm_err_mm_median", "val/iou_mean", "val/loss",
            "val/loss/seg", "train/loss_epoch"} <= names
    assert config_checks.monitor_problem("val/lm_err_mm") is None


# -------------------------------------------------------------------------- 4. empty splits
@pytest.mark.parametrize(("flag", "expected"), [
    ("--data.num_train=0", "data.num_train=0 must be at least 1"),
    ("--data.num_val=0", "data.num_val=0 must be at least 1"),
    ("--data.num_test=-1", "data.num_test=-1 must be at least 0"),
])
def test_empty_phantom_splits_are_a_usage_error(flag, expected, tmp_path, capsys, monkeypatch):
    line = refused(tiny(tmp_path, flag), capsys, monkeypatch)
    assert expected in line, line


def test_no_validation_phantoms_are_allowed_without_validation_and_folders_are_data():
    config_checks.check_config_values(
        {"data": {"num_val": 0}, "trainer": {"limit_val_batches": 0}}, "c")
    config_checks.check_config_values({"data": {"data_root": "d", "num_train": 0}}, "c")  # (unused)
    with pytest.raises(ConfigFileError, match="num_val=0"):
        config_checks.check_config_values({"data": {"num_val": 0}}, "c")


def test_an_empty_data_folder_stays_a_data_error(tmp_path, capsys, monkeypatch):
    (tmp_path / "data").mkdir()
    line = refused(tiny(tmp_path, "--data-root", str(tmp_path / "data"), "--run.wandb=false"),
                   capsys, monkeypatch, code=1)
    assert line.startswith("train: error: invalid dataset"), line


# ------------------------------------------------------------------------ 5., 6. run folder
@pytest.mark.parametrize(("flags", "env", "expected"), [
    (["--run.name", "../../escaped"], None, "run.name='../../escaped' goes up (..) out of"),
    (["--run.name", "/tmp/kneeplan-escaped"], None, "is an absolute path"),
    ([], "../../escaped", "KNEEPLAN_RUN_STAMP='../../escaped' would make the run folder"),
    ([], "..", "KNEEPLAN_RUN_STAMP='..'"),
])
def test_a_run_folder_outside_run_root_is_refused(flags, env, expected, tmp_path, capsys,
                                                  monkeypatch):
    root = tmp_path / "deep" / "er" / "r"
    if env is not None:
        monkeypatch.setenv("KNEEPLAN_RUN_STAMP", env)
    line = refused(["--config", TINY, "--run.root", str(root), *flags], capsys, monkeypatch)
    assert expected in line, line
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not Path("/tmp/kneeplan-escaped").exists()


def test_run_root_that_is_a_file_or_a_name_too_long_is_one_line(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    line = refused(["--config", TINY, "--run.root", str(afile)], capsys, monkeypatch)
    assert f"run.root: {afile} is a file" in line, line
    (tmp_path / "r").mkdir()  # (an existing root: Path.exists raised ENAMETOOLONG)
    line = refused(tiny(tmp_path, "--run.name", "n" * 300), capsys, monkeypatch)
    assert "run.name: the folder name" in line and "300 bytes, longer than the" in line, line
    assert f"(run folder {tmp_path / 'r'}" in line, line
    assert afile.read_text() == "x" and not any((tmp_path / "r").iterdir())


# ------------------------------------------------------------------------------ 7. the CLI
def test_abbreviated_keys_are_refused(tmp_path, capsys, monkeypatch):
    line = refused(tiny(tmp_path, "--trainer.max_ep=3"), capsys, monkeypatch)
    assert "unrecognized arguments: --trainer.max_ep=3" in line, line


def test_a_wandb_mode_typo_is_refused_before_lightning_seeds(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # (it would win over run.wandb_mode)
    line = refused(tiny(tmp_path, "--run.wandb_mode=ofline"), capsys, monkeypatch)
    assert "run.wandb_mode='ofline' is not one of" in line, line


@pytest.mark.parametrize(("flags", "expected"), [
    (["--trainer.limit_train_batches=1"], 1),  # jsonargparse read 1.0: 100 % of the batches
    (["--trainer.limit_train_batches", "1"], 1),
    (["--trainer.limit_train_batches=1.0"], 1.0),
    (["--trainer.limit_train_batches=3"], 3),
])
def test_limit_batches_of_one_on_the_command_line_is_one_batch(flags, expected, tmp_path):
    cli = train.make_cli(tiny(tmp_path, *flags))
    got = cli.trainer.limit_train_batches
    assert got == expected and type(got) is type(expected), got
    assert cli.trainer.limit_val_batches == 1.0 and isinstance(cli.trainer.limit_val_batches,
                                                               float)


def test_an_iou_monitor_keeps_the_highest_iou_checkpoint(tmp_path):
    """The best checkpoint was always chosen with mode="min": `--run.monitor=val/iou_mean`
    (a name the monitor check suggests) kept the WORST-IoU epoch (review, session 16)."""
    from lightning_modules.checkpoints import FiniteModelCheckpoint

    assert config_checks.monitor_mode("val/iou_mean") == "max"
    assert config_checks.monitor_mode("val/iou/femur") == "max"
    assert config_checks.monitor_mode("val/lm_err_px") == "min"
    assert config_checks.monitor_mode("val/loss") == "min"
    result = train.fit(tiny(tmp_path, "--run.monitor=val/iou_mean", "--trainer.max_epochs=1",
                            "--trainer.enable_progress_bar=false"))
    (best,) = [c for c in result.trainer.callbacks
               if isinstance(c, FiniteModelCheckpoint) and c.monitor == "val/iou_mean"]
    assert best.mode == "max"


def test_resuming_a_run_folders_checkpoint_does_not_need_run_root(tmp_path):
    """A resumed checkpoint of a run folder continues in that folder: an unusable run.root
    (here a file) refused it although nothing is written there (review, session 16); without
    --resume the same run.root is refused."""
    root = tmp_path / "root_is_a_file"
    root.write_text("")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    config_checks.check_config_values(
        {"run": {"root": str(root), "resume": str(run / "checkpoints" / "last.ckpt")}}, "c")
    with pytest.raises(ConfigFileError, match="is a file"):
        config_checks.check_config_values({"run": {"root": str(root)}}, "c")
    with pytest.raises(ConfigFileError, match="is a file"):  # last: looked up under run.root
        config_checks.check_config_values({"run": {"root": str(root), "resume": "last"}}, "c")
