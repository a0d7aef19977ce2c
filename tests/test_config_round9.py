"""Red-team round 9, training side: a config is data. It may name only Lightning's own harmless
callbacks (``config_classes``): a ``class_path`` imported any module (``this`` ran its code), a
``LambdaCallback`` called ``builtins.print`` with the trainer, a profiler wrote outside the run
folder. Worker processes and threads are bounded (``--data.num_workers 10000`` started 668
processes and took 13 GB in 9 s), and trainer values Lightning divides by are checked first."""

from __future__ import annotations

import sys

import pytest
from test_train_config_checks import refused, tiny

from datamodules.config_file import ConfigFileError
from lightning_modules.config_classes import check_argv_classes, trainer_class_problem


@pytest.mark.parametrize(("flag", "words"), [
    ("--data.num_workers=10000", "data.num_workers=10000 must be 0..64"),
    ("--run.cpu_threads=256", "run.cpu_threads=256 must be 1..64"),
    ("--trainer.check_val_every_n_epoch=0", "trainer.check_val_every_n_epoch=0 must be at least 1"),
    ("--trainer.val_check_interval=0", "trainer.val_check_interval=0 must be a positive"),
    ("--trainer.num_nodes=0", "trainer.num_nodes=0 must be at least 1"),
    ("--trainer.gradient_clip_val=1.0", "trainer.gradient_clip_val=1.0 is not used (the module "
                                        "optimises manually): set model.grad_clip_val instead"),
])  # fmt: skip
def test_processes_threads_and_divisors_are_bounded_first(flag, words, tmp_path, capsys,
                                                          monkeypatch):
    line = refused(tiny(tmp_path, flag), capsys, monkeypatch)
    assert words in line, line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("body", [
    "trainer:\n  callbacks:\n  - class_path: this.Whatever\n",
    "trainer:\n  callbacks:\n  - class_path: pytorch_lightning.callbacks.LambdaCallback\n"
    "    init_args: {on_fit_start: builtins.print}\n",
    "trainer:\n  profiler:\n    class_path: pytorch_lightning.profilers.SimpleProfiler\n"
    "    init_args: {dirpath: /tmp, filename: prof}\n",
    "trainer:\n  logger:\n    class_path: pytorch_lightning.loggers.CSVLogger\n"
    "    init_args: {save_dir: /tmp}\n",
    "trainer:\n  callbacks: [LambdaCallback]\n",
    "trainer:\n  strategy: this.Whatever\n",
])  # fmt: skip
def test_a_config_file_naming_code_is_refused_before_it_is_imported(body, tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.delitem(sys.modules, "this", raising=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(body)
    line = refused(tiny(tmp_path, "--config", str(cfg)), capsys, monkeypatch)
    assert f"{cfg}: trainer." in line and "a config may name only Lightning's callbacks" in line
    assert "this" not in sys.modules  # its import prints the Zen of Python: nothing ran
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv", [
    ["--trainer.callbacks+=LambdaCallback"],
    ["--trainer.callbacks+", "pytorch_lightning.callbacks.LambdaCallback"],
    ["--trainer.callbacks+={class_path: this.Whatever}"],
    ["--trainer.callbacks.class_path=this.Whatever"],
    ["--trainer={callbacks: [{class_path: this.Whatever}]}"],
    ["--trainer.profiler", "pytorch_lightning.profilers.AdvancedProfiler"],
    ["--trainer.plugins=[SomePlugin]"],
])  # fmt: skip
def test_command_line_overrides_naming_code_are_refused(argv):
    with pytest.raises(ConfigFileError, match="command line: trainer"):
        check_argv_classes(argv)


@pytest.mark.parametrize("argv", [
    ["--trainer.callbacks+=EarlyStopping", "--trainer.callbacks.monitor=val/loss"],
    ["--trainer.callbacks+={class_path: lightning.pytorch.callbacks.LearningRateMonitor}"],
    ["--trainer.strategy=ddp_spawn", "--trainer.accelerator", "cpu"],
    ["--trainer.profiler=simple", "--trainer.precision=bf16-mixed", "--trainer.logger=false"],
    ["--trainer.max_epochs=3", "--run.name=my.run"],
])  # fmt: skip
def test_lightnings_harmless_callbacks_and_registry_names_pass(argv):
    check_argv_classes(argv)
    assert trainer_class_problem({"callbacks": [
        {"class_path": "pytorch_lightning.callbacks.EarlyStopping",
         "init_args": {"monitor": "val/loss"}}, "Timer"], "strategy": "ddp"}) is None


def test_a_checkpoints_split_file_is_shown_escaped(tmp_path):
    """evaluate printed the checkpoint's ``split_file`` raw: ESC codes cleared the terminal and
    a newline faked an "all images verified OK" line."""
    from planning.evaluate import training_ids

    fake = "/nonexistent\x1b[2J\x1b[1;31m\nevaluate: all images verified OK\x1b[0m"
    training = {"data_root": str(tmp_path), "split_file": fake}
    with pytest.raises(ValueError) as err:
        training_ids(training, tmp_path)
    text = str(err.value)
    assert "\x1b" not in text and "\n" not in text, text
    assert text.startswith("cannot rebuild its split file '/nonexistent\\x1b[2J"), text


@pytest.mark.parametrize("body", ["trainer: t.yaml\n", "model: m.yaml\n", "data: [1, 2]\n"])
def test_a_section_given_as_another_file_is_refused(body, tmp_path, capsys, monkeypatch):
    """Session 29 review: `trainer: t.yaml` made jsonargparse read t.yaml with none of the
    config file checks (a LambdaCallback calling builtins.print in it ran); `make train
    RESUME=` reads the run folder's own config.yaml, so a shared run folder could carry one."""
    (tmp_path / "t.yaml").write_text(
        "callbacks:\n- class_path: pytorch_lightning.callbacks.LambdaCallback\n"
        "  init_args: {on_fit_start: builtins.print}\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(body)
    line = refused(tiny(tmp_path, "--config", str(cfg)), capsys, monkeypatch)
    assert f"{cfg}: " in line and "not as its settings" in line, line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv", [["--trainer", "t.yaml"], ["--model=m.yaml"], ["--data", ""]])
def test_a_section_file_on_the_command_line_is_refused(argv):
    with pytest.raises(ConfigFileError, match="command line: --.* not as its settings"):
        check_argv_classes(argv)
