"""A multi-GPU / cluster researcher's walkthrough on CPU (session 30): Lightning's refusals of
devices, strategies and a SLURM task count are one line (status 2), not 50-line tracebacks;
``NODES=2`` without a cluster launcher is refused instead of waiting for ever; a requeued SLURM
job continues its own folder from its newest checkpoint instead of starting again in
``slurm<id>-1``."""

from __future__ import annotations

import csv
import os
import shutil
import time
from pathlib import Path

import pytest

from lightning_modules import train
from lightning_modules.run_folder import (
    LAUNCHER_VARS,
    RUN_DIR_ENV,
    launcher_problem,
    requeued_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_RESTART_COUNT", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE",
              "SLURM_JOB_NAME", "SLURM_NODEID", "SLURM_PROCID", "SLURM_LOCALID",
              "SLURM_NODELIST", "KNEEPLAN_RUN_STAMP")


@pytest.fixture
def no_cluster(monkeypatch):
    """No launcher variables, and the run-folder variable restored afterwards."""
    for var in {v for group in LAUNCHER_VARS for v in group} | set(SLURM_VARS) | {RUN_DIR_ENV}:
        monkeypatch.setenv(var, "x")  # (recorded: restored, or removed, at teardown)
        monkeypatch.delenv(var)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    return monkeypatch


def test_launcher_problem(no_cluster):
    assert launcher_problem(1) is None and launcher_problem(None) is None
    assert "no cluster launcher started this process" in launcher_problem(2)
    no_cluster.setenv("MASTER_ADDR", "head")
    assert launcher_problem(2) is not None  # without NODE_RANK: not yet a node of a cluster
    no_cluster.setenv("NODE_RANK", "1")
    assert launcher_problem(2) is None  # Lightning's by-hand launch on each node
    no_cluster.delenv("MASTER_ADDR")
    no_cluster.delenv("NODE_RANK")
    for var in ("SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "LSB_JOBID", "OMPI_COMM_WORLD_SIZE"):
        no_cluster.setenv(var, "2")
        assert launcher_problem(2) is None, var
        no_cluster.delenv(var)


def _main_error(argv, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as stop:
        train.main(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines()
           if ln.strip() and not ln.startswith("Seed set")]
    return stop.value.code, err


@pytest.mark.parametrize("extra, words", [
    (["--devices", "abc"], "should be an int > 0"),
    (["--devices", "-1"], "should be an int > 0"),
    (["--devices", "2", "--trainer.strategy", "fsdp"], "requires a GPU accelerator"),
    (["--num-nodes", "2"], "no cluster launcher started this process"),
])
def test_device_and_node_mistakes_are_one_line(no_cluster, tmp_path, capsys, extra, words):
    code, err = _main_error(["--config", str(TINY), "--run.root", str(tmp_path / "runs"),
                             *extra], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("train: error: trainer settings: "), err
    assert words in err[0]
    assert not (tmp_path / "runs").exists()  # refused before any folder


@pytest.mark.parametrize("extra, source", [
    (["--num-nodes", "abc"], "command line (--trainer.num_nodes): "),
    (["--trainer.max_epochs=x"], "command line (--trainer.max_epochs): "),
])
def test_a_bad_command_line_value_is_not_blamed_on_the_config_file(
        no_cluster, tmp_path, capsys, extra, source):
    # session 30 walkthrough: NODES=abc said "config (configs/tiny.yaml): ..."
    code, err = _main_error(["--config", str(TINY), *extra], capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"train: error: {source}Parser key "), err


def test_a_bad_value_in_the_file_still_names_the_file(no_cluster, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epochs: zz\n")
    code, err = _main_error(["--config", str(TINY), "--config", str(bad),
                             "--trainer.max_epochs", "3"], capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"train: error: config ({TINY}, {bad}): "), err


def test_slurm_task_count_mismatch_is_one_line(no_cluster, tmp_path, capsys):
    """Lightning checked ``--ntasks-per-node`` against ``devices`` only inside fit: a
    traceback, status 1."""
    for var, value in (("SLURM_JOB_ID", "777"), ("SLURM_NTASKS", "1"),
                       ("SLURM_NTASKS_PER_NODE", "1"), ("SLURM_JOB_NAME", "knee"),
                       ("SLURM_NODEID", "0"), ("SLURM_PROCID", "0"), ("SLURM_LOCALID", "0"),
                       ("SLURM_NODELIST", "localhost")):
        no_cluster.setenv(var, value)
    code, err = _main_error(["--config", str(TINY), "--run.root", str(tmp_path / "runs"),
                             "--devices", "2"], capsys)
    assert code == 2 and len(err) == 1, err
    assert "ntasks-per-node=1" in err[0] and err[0].startswith("train: error: trainer settings")


def test_requeued_checkpoint_is_the_newest_in_the_jobs_folder(no_cluster, tmp_path):
    folder = tmp_path / "tiny" / "slurm42"
    (folder / "checkpoints").mkdir(parents=True)
    last = folder / "checkpoints" / "last.ckpt"
    last.write_bytes(b"x")
    no_cluster.setenv("SLURM_JOB_ID", "42")
    assert requeued_checkpoint(tmp_path, "tiny") is None  # a first start
    no_cluster.setenv("SLURM_RESTART_COUNT", "1")
    assert requeued_checkpoint(tmp_path, "tiny") == last
    hpc = folder / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"x")
    past = time.time() - 60
    os.utime(last, (past, past))
    assert requeued_checkpoint(tmp_path, "tiny") == hpc  # written at the requeue signal
    assert requeued_checkpoint(tmp_path, "other") is None
    no_cluster.setenv("SLURM_JOB_ID", "43")
    assert requeued_checkpoint(tmp_path, "tiny") is None
    no_cluster.setenv("SLURM_RESTART_COUNT", "zero")
    assert requeued_checkpoint(tmp_path, "tiny") is None


def test_a_requeued_slurm_job_continues_its_own_run(no_cluster, tmp_path):
    """A requeued job (same SLURM_JOB_ID, SLURM_RESTART_COUNT 1) started again from epoch 0 in
    a new folder slurm<id>-1 (walkthrough, session 30)."""
    root = tmp_path / "runs"
    common = ["--config", str(TINY), "--run.root", str(root), "--data.num_train=2",
              "--data.num_val=1", "--run.val_images=0"]
    no_cluster.setenv("SLURM_JOB_ID", "9191")
    first = train.fit([*common, "--trainer.max_epochs=1"])
    assert first.run_dir.name == "slurm9191"
    no_cluster.delenv(RUN_DIR_ENV)
    no_cluster.setenv("SLURM_RESTART_COUNT", "1")
    again = train.fit([*common, "--trainer.max_epochs=2"])
    assert again.run_dir == first.run_dir
    assert sorted(p.name for p in (root / "tiny").iterdir()) == ["slurm9191"]
    # requeued by Lightning's SIGUSR1 handler: hpc_ckpt_N.ckpt in the run folder itself (it
    # opened slurm9191-1 before, and a further requeue went back to the stale hpc_ckpt)
    shutil.copy(first.run_dir / "checkpoints" / "last.ckpt", first.run_dir / "hpc_ckpt_1.ckpt")
    no_cluster.delenv(RUN_DIR_ENV)
    no_cluster.setenv("SLURM_RESTART_COUNT", "2")
    third = train.fit([*common, "--trainer.max_epochs=3"])
    assert third.run_dir == first.run_dir
    assert sorted(p.name for p in (root / "tiny").iterdir()) == ["slurm9191"]
    no_cluster.delenv(RUN_DIR_ENV)
    no_cluster.setenv("SLURM_RESTART_COUNT", "3")
    fourth = train.fit([*common, "--trainer.max_epochs=4"])  # last.ckpt now the newer one
    assert fourth.run_dir == first.run_dir
    with (first.run_dir / "metrics.csv").open() as f:
        epochs = sorted({int(r["epoch"]) for r in csv.DictReader(f) if r.get("epoch")})
    assert epochs == [0, 1, 2, 3]  # each start trained on where the last one ended
    with (first.run_dir / "metrics.csv").open() as f:
        rows = [int(r["epoch"]) for r in csv.DictReader(f) if r.get("epoch")]
    assert rows == sorted(rows)  # no epoch trained twice


def test_a_lost_rank_is_one_line_with_the_resume_hint(no_cluster, tmp_path, capsys):
    """When another rank was killed, the survivor printed 150-250 lines of gloo traceback and
    no way to resume, although a valid last.ckpt existed."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    no_cluster.setenv(RUN_DIR_ENV, str(run))
    lost = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed "
                        "by peer [127.0.0.1]:47071")

    def dies(argv):
        raise lost

    no_cluster.setattr(train, "fit", dies)
    code, err = _main_error(["--config", str(TINY)], capsys)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("train: error: another process of this multi-device run ended (")
    assert err[0].endswith(f"resume with --resume {run / 'checkpoints' / 'last.ckpt'} (make "
                           f"train RESUME={run / 'checkpoints' / 'last.ckpt'})")
    other = RuntimeError("some other failure")
    no_cluster.setattr(train, "fit", lambda argv: (_ for _ in ()).throw(other))
    with pytest.raises(RuntimeError, match="some other failure"):  # not ours to reword
        train.main(["--config", str(TINY)])


def test_a_run_stamp_used_again_is_refused_on_the_first_process(no_cluster, tmp_path):
    """KNEEPLAN_RUN_STAMP set by hand twice mixed two runs in one folder (metrics 0,1,0,1,
    best-epoch000-v1.ckpt, config.yaml overwritten)."""
    from datamodules.config_file import ConfigFileError
    from lightning_modules.run_folder import make_run_dir

    no_cluster.setenv("KNEEPLAN_RUN_STAMP", "fixed")
    folder = tmp_path / "tiny" / "fixed"
    assert make_run_dir(tmp_path, "tiny") == folder.resolve()  # nothing there yet
    folder.mkdir(parents=True)
    assert make_run_dir(tmp_path, "tiny") == folder.resolve()  # made by another node: fine
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(ConfigFileError, match="already holds a run.*--resume .*last.ckpt"):
        make_run_dir(tmp_path, "tiny")
    for var in ("NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "RANK"):  # another node's process
        no_cluster.setenv(var, "1")
        assert make_run_dir(tmp_path, "tiny") == folder.resolve(), var
        no_cluster.delenv(var)
    assert make_run_dir(tmp_path, "tiny", reuse=folder) == folder.resolve()  # a resume


def test_launchers_of_other_kinds_and_own_plugins_pass(no_cluster):
    no_cluster.setenv("WORLD_SIZE", "8")  # Kubeflow's PyTorchJob and the like
    no_cluster.setenv("RANK", "0")
    assert launcher_problem(2) is None
    no_cluster.delenv("WORLD_SIZE")
    no_cluster.delenv("RANK")
    assert launcher_problem(2) is not None
    assert launcher_problem(2, plugins=["my.ClusterEnvironment"]) is None  # the user's own


def test_only_lightnings_own_refusals_are_reworded():
    """Errors of our code or a user's callback keep their traceback (review, session 30)."""
    def ours():
        raise ValueError("a bug of ours")

    try:
        ours()
    except ValueError as err:
        assert not train._raised_by_lightning(err)
    from pytorch_lightning.trainer.connectors.accelerator_connector import (
        _AcceleratorConnector,
    )

    try:
        _AcceleratorConnector(devices="abc", accelerator="cpu")
    except (TypeError, ValueError) as err:
        assert train._raised_by_lightning(err)
    else:
        raise AssertionError("Lightning accepted devices='abc'")
