"""Hostile files handed to the entry points other than planning: ``--config`` YAML (train,
sweep), ``--resume`` checkpoints, review thresholds, evaluate's subset list and phantom config,
and sweep storages. Each is refused in one line naming the file, before it can cost unbounded
time or memory, run code, or delete a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lightning_modules import train
from lightning_modules.checkpoints import CheckpointError, SameFolderCheckpointIO
from lightning_modules.module import KneePlanModule

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
TINY_HP = dict(image_size=64, num_stacks=2, depth=2, c1=4, c2=8, c_star=16,
               net_kwargs={"skip_channels": 4, "refine_channels": 4})
LAST_KEY = ("ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 0, "
            "'every_n_epochs': 1, 'train_time_interval': None}")


def alias_bomb(levels: int, key: str = "a") -> str:
    """A "billion laughs" YAML: ``key`` holds 9**levels strings through nested aliases."""
    lines = [f"{key}:", '  - &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"  - &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def one_line(text: str) -> str:
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got {lines[:5]}"
    assert "Traceback" not in lines[0]
    return lines[0]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------------- --config (train)
def test_config_alias_bomb_and_huge_file_are_refused_unread(tmp_path):
    bomb = _write(tmp_path / "bomb.yaml", alias_bomb(9))  # 9**9 values once expanded
    with pytest.raises(ValueError) as err:
        train.fit(["--config", TINY, "--config", str(bomb)])
    assert str(bomb) in one_line(err.value) and "aliases" in str(err.value)
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as fh:  # sparse: 2 GB on paper, nothing on disk
        fh.truncate(2 * 1024**3)
    with pytest.raises(ValueError) as err:
        train.fit(["--config", str(huge)])
    assert str(huge) in one_line(err.value) and "refused unread" in str(err.value)
    for flags in (["-c", str(bomb)], [f"--config={bomb}"]):  # the other spellings too
        with pytest.raises(ValueError) as err:
            train.fit(["--config", TINY, *flags])
        assert str(bomb) in one_line(err.value) and "aliases" in str(err.value)


CONFIG_CASES = {
    "python_tag": ("model: !!python/object/apply:os.system ['touch {marker}']\n",
                   "could not determine a constructor"),
    "a_list": ("- 1\n- 2\n", "expected a mapping"),
    "string_for_int": ("model:\n  num_stacks: two\n", "model.num_stacks"),
    "unknown_key": ("model:\n  bogus_key: 3\n", "bogus_key"),
}


@pytest.mark.parametrize("kind", sorted(CONFIG_CASES))
def test_bad_config_is_one_line_naming_the_file_with_status_2(kind, tmp_path, capsys):
    text, expected = CONFIG_CASES[kind]
    marker = tmp_path / "PAYLOAD_RAN"
    cfg = _write(tmp_path / f"{kind}.yaml", text.format(marker=marker))
    with pytest.raises(SystemExit) as stop:
        train.main(["--config", TINY, "--config", str(cfg), "--print_config"])
    assert stop.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert str(cfg) in line and expected in line, line
    assert not marker.exists()


@pytest.mark.parametrize(("text", "expected"), [
    ("model:\n  lr: .nan\n", "model.lr=nan must be a finite number"),
    ("data:\n  sigma: .inf\n", "data.sigma=inf must be a finite number"),
    ("model:\n  num_stacks: 100000\n", "num_stacks=100000 is not a whole number"),
    ("data:\n  size: 1000000\n", "image_size=1000000 is not a whole number"),
    # out of range for training (were tracebacks from torch.optim, the DataLoader, the loss or
    # the network): one line, status 2
    ("model:\n  lr: -1\n", "model.lr=-1.0 must be >= 0"),
    ("model:\n  gradnorm_lr: -0.1\n", "model.gradnorm_lr=-0.1 must be >= 0"),
    ("model:\n  beta: -2\n", "model.beta=-2.0 must be >= 0"),
    ("data:\n  batch_size: 0\n", "data.batch_size=0 must be at least 1"),
    ("data:\n  sigma: 0\n", "data.sigma=0.0 must be a positive number"),
    ("data:\n  size: 100\n", "input side 100 does not fit depth 2"),
    ("model:\n  norm: bogus\n", "model.norm='bogus' is not one of instance"),
    ("model:\n  grad_clip_algorithm: l3\n", "model.grad_clip_algorithm='l3' is not one of"),
    ("model:\n  grad_clip_val: -1.0\n", "model.grad_clip_val=-1.0 must be a positive number"),
    ("model:\n  max_nonfinite_steps: 0\n", "model.max_nonfinite_steps=0 must be at least 1"),
    ("model:\n  heatmap_codec: {input_size: 64, heatmap_size: 64, sigma: 9.0}\n",
     "model.heatmap_codec sigma 9.0 differs from data.sigma"),  # trained, then refused at load
    ("data:\n  phantom_overrides: {p_sphere: 2}\n",  # was a traceback at the first batch
     "data.phantom_overrides: PhantomConfig.p_sphere: 2 is a probability"),
])
def test_non_finite_or_unbounded_config_values_are_refused_before_building(
        text, expected, tmp_path, capsys):
    cfg = _write(tmp_path / "values.yaml", text)
    with pytest.raises(SystemExit) as stop:
        train.main(["--config", TINY, "--config", str(cfg), "--run.root", str(tmp_path / "r")])
    assert stop.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert str(cfg) in line and expected in line, line
    assert not (tmp_path / "r").exists()


HUGE = "1" + "0" * 400  # valid YAML and JSON; float() raises OverflowError on it


@pytest.mark.parametrize("kind", ["review thresholds", "phantom config", "config"])
def test_an_integer_too_large_for_a_float_is_one_line_in_every_yaml_file(kind, tmp_path):
    """401 digits crashed jsonargparse (80 lines) and every threshold check (OverflowError in
    ``math.isfinite``); the shared YAML reader refuses it, naming the file."""
    from datamodules.config_file import ConfigFileError, read_yaml

    edge = str(2**1024 - 2**970)  # 309 digits: the smallest integer float() rounds past inf
    assert read_yaml(_write(tmp_path / "below.yaml", f"a: {2**1024 - 2**970 - 1}\n"), kind)
    with pytest.raises(ConfigFileError, match="309 digits"):  # (found by review)
        read_yaml(_write(tmp_path / "edge.yaml", f"a: {edge}\n"), kind)
    path = _write(tmp_path / "huge.yaml", f"a:\n  b: [1, -{HUGE}]\n")
    with pytest.raises(ConfigFileError) as err:
        read_yaml(path, kind)
    line = one_line(str(err.value))
    assert str(path) in line and "401 digits" in line and kind in line
    assert read_yaml(_write(tmp_path / "ok.yaml", "a: 4294967295\nb: 1.0e300\n"), kind)


@pytest.mark.parametrize("args", [
    ["--config", "HUGE_FILE"], [f"--model.lr={HUGE}"], ["--seed_everything=-3"],
    ["--seed_everything=4294967296"],
])
def test_train_refuses_huge_numbers_and_seeds_numpy_cannot_take(args, tmp_path, capsys):
    """Lightning's seed_everything raised a traceback on a seed outside numpy's 0..2^32-1;
    jsonargparse raised OverflowError on a 401-digit lr from the command line."""
    huge = _write(tmp_path / "huge.yaml", f"model:\n  lr: {HUGE}\n")
    argv = [str(huge) if a == "HUGE_FILE" else a for a in args]
    with pytest.raises(SystemExit) as stop:
        train.main(["--config", TINY, *argv, "--run.root", str(tmp_path / "r")])
    assert stop.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("train: error: ") and ("seed_everything" in line or "large" in line)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag", ["--trainer.max_epochs=-5", "--trainer.devices=0"])
def test_trainer_settings_lightning_refuses_are_one_line(flag, tmp_path, capsys):
    """Lightning's MisconfigurationException: one line, status 2 (was a traceback)."""
    with pytest.raises(SystemExit) as stop:
        train.main(["--config", TINY, "--run.root", str(tmp_path / "r"), flag])
    assert stop.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("train: error: trainer settings:"), line


def test_sweep_refuses_a_bomb_config_once_before_opening_the_study(tmp_path, capsys):
    from sweeps.run import run_sweep

    bomb = _write(tmp_path / "bomb.yaml", alias_bomb(9))
    with pytest.raises(SystemExit) as stop:
        run_sweep(["--config", str(bomb), "--trials", "0", "--study", "s",
                   "--studies-dir", str(tmp_path / "studies")])
    assert stop.value.code == 2  # a usage/config error (README: exit codes)
    line = one_line(capsys.readouterr().err)
    assert line.startswith("sweeps.run: error:") and str(bomb) in line, line
    assert not (tmp_path / "studies" / "s" / "study.db").exists()


# ------------------------------------------------------------------------- --resume (train)
def _training_ckpt(path: Path, callbacks: dict) -> Path:
    torch.manual_seed(0)
    module = KneePlanModule(**TINY_HP)
    # the optimiser states a resumable checkpoint holds (fresh ones: resume compares them with
    # the network's own optimisers, and none at all cannot be resumed)
    states = [opt.state_dict() for opt in module.configure_optimizers()[0]]
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "epoch": 0, "global_step": 1, "optimizer_states": states, "loops": {},
                "pytorch-lightning_version": "2.6.6", "callbacks": callbacks}, path)
    return path


def test_resume_refuses_callback_state_that_would_delete_a_file_outside_the_run(tmp_path):
    """Lightning restores ModelCheckpoint's "previous" paths and deletes the previous file
    when it lies under the run's checkpoint folder, a test that ``<dir>/../../x`` passes
    (a crafted checkpoint deleted such a file on resume, checked by hand)."""
    folder = str(tmp_path / "run" / "checkpoints")
    hostile = {LAST_KEY: {"dirpath": folder, "best_model_path": f"{folder}/../../victim.txt"}}
    ckpt = _training_ckpt(tmp_path / "hostile.ckpt", hostile)
    module = KneePlanModule(**TINY_HP)
    with pytest.raises(CheckpointError) as err:
        train.resume_checkpoint(train.RunOptions(resume=str(ckpt)), module)
    line = one_line(err.value)
    assert str(ckpt) in line and "through '..'" in line
    with pytest.raises(CheckpointError, match="through '..'"):
        SameFolderCheckpointIO().load_checkpoint(ckpt)  # what Lightning itself reads
    windows = {LAST_KEY: {"dirpath": "C:\\r\\checkpoints",
                          "best_model_path": "C:\\r\\checkpoints\\..\\..\\victim.txt"}}
    with pytest.raises(CheckpointError, match="through '..'"):
        train.resume_checkpoint(
            train.RunOptions(resume=str(_training_ckpt(tmp_path / "w.ckpt", windows))), module)
    # what Lightning writes passes: a run moved elsewhere (old absolute paths), a run written on
    # Windows, a user callback whose file name has a "/" (a subfolder of its folder)
    moved = "/elsewhere/run/checkpoints"
    fine = {LAST_KEY: {"dirpath": moved, "best_model_path": f"{moved}/last.ckpt",
                       "best_k_models": {f"{moved}/best-epoch000.ckpt": 1.0}},
            "ModelCheckpoint{'monitor': 'val/iou'}": {
                "dirpath": "C:\\runs\\a\\checkpoints",
                "best_model_path": "C:\\runs\\a\\checkpoints\\last.ckpt",
                "last_model_path": f"{moved}/epoch=1/val/iou=0.5.ckpt"}}
    ok = _training_ckpt(tmp_path / "ok.ckpt", fine)
    assert train.resume_checkpoint(train.RunOptions(resume=str(ok)), module) == ok
    assert SameFolderCheckpointIO().load_checkpoint(ok)["callbacks"] == fine


def test_checkpoint_io_reads_back_spawned_weights_but_never_unpickles(tmp_path):
    """The DDP-spawn launcher saves the trained weights as a bare ``state_dict``
    (``.temp.ckpt``) through the checkpoint IO and reads them back through it: that must load
    (CI broke on it), while a file holding a pickled object is still refused."""
    io = SameFolderCheckpointIO()
    weights = {"net.w": torch.arange(6.0).reshape(2, 3)}
    io.save_checkpoint(weights, tmp_path / ".temp.ckpt")
    back = io.load_checkpoint(tmp_path / ".temp.ckpt")
    assert torch.equal(back["net.w"], weights["net.w"])

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"state_dict": weights, "x": Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="refused"):
        io.load_checkpoint(tmp_path / "evil.ckpt")


def test_lightning_restore_errors_become_one_checkpoint_line():
    class Connector:
        def _restore_modules_and_callbacks(self, path, weights_only=None):
            raise KeyError("pytorch-lightning_version")

        def restore_training_state(self):
            raise ValueError("loaded state dict has a different number of parameter groups\n"
                             "second line")

    class Trainer:
        _checkpoint_connector = Connector()

    trainer = Trainer()
    train._refuse_restore_errors(trainer, "/x/bad.ckpt")
    for call in (lambda: trainer._checkpoint_connector._restore_modules_and_callbacks("p"),
                 trainer._checkpoint_connector.restore_training_state):
        with pytest.raises(CheckpointError) as err:
            call()
        assert one_line(err.value).startswith("/x/bad.ckpt: cannot restore the training state")


def test_malformed_rng_state_is_refused_on_resume_and_leaves_the_rng_alone(tmp_path):
    """A malformed saved RNG state is one line when resuming (not a traceback at train start);
    a good one is tried and the current state kept. Loading for inference never applies it
    (a checkpoint mapped to another device must still load)."""
    from datamodules.seeding import RNG_KEY, rng_state

    module = KneePlanModule(**TINY_HP)
    path = _training_ckpt(tmp_path / "rng.ckpt", {})
    ckpt = torch.load(path, weights_only=True)
    ckpt[RNG_KEY] = {"torch": "not a state"}
    torch.save(ckpt, path)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with pytest.raises(CheckpointError) as err:
        train.resume_checkpoint(train.RunOptions(resume=str(path)), module)
    assert "random-number state is unusable" in one_line(err.value)
    assert torch.equal(torch.get_rng_state(), before)
    ckpt[RNG_KEY] = rng_state()
    torch.save(ckpt, path)
    torch.manual_seed(5)
    assert train.resume_checkpoint(train.RunOptions(resume=str(path)), module) == path
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(5).get_state())
    module.on_load_checkpoint({RNG_KEY: {"torch": "not a state"}})  # stored, not applied


# ------------------------------------------------------------------------- review thresholds
def test_review_config_alias_bomb_and_mixed_keys_are_short_lines(tmp_path):
    from planning.review import ReviewConfig

    bomb = _write(tmp_path / "bomb.yaml", alias_bomb(6, key="min_peak"))  # 531441 strings
    with pytest.raises(ValueError) as err:
        ReviewConfig.load(bomb)
    line = one_line(err.value)
    assert str(bomb) in line and "aliases" in line and len(line) < 400
    mixed = _write(tmp_path / "mixed.yaml", "1: 2\nfoo: 3\n")
    with pytest.raises(ValueError) as err:  # was a TypeError from sorted([1, 'foo'])
        ReviewConfig.load(mixed)
    assert "unknown review thresholds" in one_line(err.value)


def test_read_yaml_refuses_fifo_folder_binary_and_deep_nesting(tmp_path):
    from datamodules.config_file import ConfigFileError, read_yaml

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opening it would block until a writer came
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    deep = _write(tmp_path / "deep.yaml", "[" * 20000 + "]" * 20000)
    cases = {fifo: "not a regular file", tmp_path: "a folder", binary: "not UTF-8",
             deep: "nested too deeply", tmp_path / "none.yaml": "cannot read"}
    for path, expected in cases.items():
        with pytest.raises(ConfigFileError) as err:
            read_yaml(path)
        line = one_line(err.value)
        assert str(path) in line and expected in line, line
    assert read_yaml(REPO / "configs" / "tiny.yaml")["model"]["c1"] == 4


@pytest.mark.parametrize("text, words", [
    ("min_peak: -1.0e+300\n", "min_peak=-1e+300 must lie in [0, 1000]"),
    ("max_tilt_deg: 1.0e+300\n", "max_tilt_deg=1e+300 must lie in [0, 180]"),
    ("max_tta_failures: 5\n", "max_tta_failures=5 must lie in [0, 1]"),
    ("point_saturation_radius_mm: -3\n", "must lie in (0, 1000]"),
    ("nominal_field_mm: 0\n", "nominal_field_mm=0 must lie in (0, 1000]"),
    ("min_support: 10.9\n", "min_support must be a whole number"),
    ("min_peak: 0.9\nmax_peak: 0.5\n", "min_peak=0.9 is above max_peak=0.5"),
    ("min_peak: 0.3\nmin_peak: -1\n", "'min_peak' is given twice"),  # the last one won
    # YAML 1.1 reads an exponent without a dot as text: say so and how to write it
    ("min_peak: 1e-3\n", "got '1e-3' (text: YAML reads a number with an exponent but no dot as "
                        "text; write 0.001)"),
    ("max_tilt_deg: 1e300\n", "write 1.0e+300"),
])
def test_review_thresholds_out_of_range_or_repeated_are_refused(text, words, tmp_path):
    """Red-team round 6: thresholds of +-1e300, fractions above 1 or a key given twice switched
    checks off silently (a 90-degree-rotated knee passed the gate)."""
    from planning.review import ReviewConfig

    path = _write(tmp_path / "review.yaml", text)
    with pytest.raises(ValueError) as err:
        ReviewConfig.load(path)
    line = one_line(str(err.value))
    assert str(path) in line and words in line, line
    relaxed = _write(tmp_path / "relaxed.yaml", "max_tilt_deg: 180\nmax_tta_failures: 1\n"
                                                "min_separation_mm: 0\nmin_tta: 0\n")
    assert ReviewConfig.load(relaxed).max_tilt_deg == 180  # switching a check off openly
    # a difference of roundness may be set below 0 (stricter), not beyond the ratio bound
    strict = _write(tmp_path / "strict.yaml", "max_tibia_rounder: -0.2\n")
    assert ReviewConfig.load(strict).max_tibia_rounder == -0.2
    with pytest.raises(ValueError, match="max_tibia_rounder=-1000 must lie in"):
        ReviewConfig.load(_write(tmp_path / "bad.yaml", "max_tibia_rounder: -1000\n"))


def test_review_bounds_are_the_planners_own():
    """The review's bounds repeat two constants of modules that import it (no cycle)."""
    from planning.plan import MAX_TTA
    from planning.predict import MAX_MAP_VALUE
    from planning.review import MAX_PEAK, MAX_TTA_COUNT

    assert (MAX_TTA_COUNT, MAX_PEAK) == (MAX_TTA, MAX_MAP_VALUE)


# ------------------------------------------------------------------------------ evaluate
def test_evaluate_subset_list_binary_or_oversized_is_one_line(tmp_path):
    from planning.evaluate import read_subset

    binary = tmp_path / "ids.txt"
    binary.write_bytes(b"\x80\x81\x82 not text")
    with pytest.raises(ValueError) as err:  # was a UnicodeDecodeError without the file
        read_subset(binary)
    assert str(binary) in one_line(str(err.value))
    big = tmp_path / "big.txt"
    with big.open("wb") as fh:
        fh.truncate(64 * 1024**2)  # read whole before
    with pytest.raises(ValueError) as err:
        read_subset(big)
    assert str(big) in one_line(str(err.value)) and "refused unread" in str(err.value)
    ok = _write(tmp_path / "ok.txt", "a\n# note\nb  # why\n\n")
    assert read_subset(ok) == {"a", "b"}


@pytest.mark.parametrize("kind", ["missing", "binary"])
def test_evaluate_bad_subset_list_is_a_usage_error_before_the_model_loads(kind, tmp_path, capsys):
    """A missing or unreadable ``--subset`` list was status 1 (and read after the checkpoint had
    loaded); it is an argument file: one line naming it, status 2, nothing built."""
    from planning.evaluate import main

    ids = tmp_path / "ids.txt"
    if kind == "binary":
        ids.write_bytes(b"\x80\x81 not text")
    ckpt = tmp_path / "never_read.ckpt"  # missing too: the subset is checked first
    rc = main(["--ckpt", str(ckpt), "--subset", str(ids), "--out", str(tmp_path / "out")])
    err = one_line(capsys.readouterr().err)
    assert rc == 2 and err.startswith("evaluate: error: ") and str(ids) in err
    assert str(ckpt) not in err and not (tmp_path / "out").exists()


def test_evaluate_phantom_config_alias_bomb_is_one_line_with_status_2(tmp_path, capsys):
    from planning.evaluate import main

    bomb = _write(tmp_path / "bomb.yaml", alias_bomb(9, key="factors_off"))
    assert main(["--oracle", "--phantom-config", str(bomb), "--out", str(tmp_path)]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(bomb) in line and "aliases" in line


# ------------------------------------------------------------------------ sweep storage
def test_sweep_report_on_a_file_that_is_not_a_database_is_one_line(tmp_path):
    from sweeps.report import load_study

    db = tmp_path / "studies" / "s" / "study.db"
    db.parent.mkdir(parents=True)
    db.write_bytes(os.urandom(8192))
    for storage in (None, f"sqlite:///{db}"):
        with pytest.raises(SystemExit) as stop:
            load_study("s", storage, tmp_path / "studies")
        line = one_line(stop.value.code)
        assert str(db) in line and "not a database" in line


def test_phantom_and_generalisation_configs_are_bounded(tmp_path, capsys):
    """``make phantoms`` / ``PhantomConfig.from_yaml`` and ``make generalisation`` read their
    YAML through the same bounded reader: an alias bomb is one line and status 2."""
    from datamodules.phantoms.__main__ import main as phantoms_main
    from planning.generalisation import main as generalisation_main

    bomb = _write(tmp_path / "bomb.yaml", alias_bomb(9, key="p_sphere"))
    assert phantoms_main(["--out", str(tmp_path / "p"), "--n", "1", "--config", str(bomb)]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(bomb) in line and "aliases" in line
    assert not (tmp_path / "p").exists()
    assert generalisation_main(["--minutes", "1", "--factors", "metal", "--out",
                                str(tmp_path / "g"), "--config", str(bomb)]) == 2  # fmt: skip
    line = one_line(capsys.readouterr().err)
    assert str(bomb) in line and "aliases" in line


@pytest.mark.parametrize("text", ["[]\n", "false\n", "0\n", "- 1\n"])
def test_a_review_or_phantom_config_that_is_not_a_mapping_is_refused(text, tmp_path):
    """Fifth fuzz round: a file holding [], false or 0 planned with the default thresholds
    (and generated default phantoms) without a word; an empty file still means the defaults."""
    from datamodules.phantoms import PhantomConfig
    from planning.review import ReviewConfig

    path = _write(tmp_path / "c.yaml", text)
    with pytest.raises(ValueError, match="mapping") as err:
        ReviewConfig.load(path)
    assert str(path) in one_line(str(err.value))
    with pytest.raises(ValueError, match="mapping"):
        PhantomConfig.from_yaml(path)
    empty = _write(tmp_path / "empty.yaml", "")
    assert ReviewConfig.load(empty).max_tilt_deg == ReviewConfig().max_tilt_deg
    assert PhantomConfig.from_yaml(empty) == PhantomConfig()


@pytest.mark.parametrize("name", ["local:///home/victim/thesis", "file:///home/victim",
                                  "memory://x", "simplecache::/home/victim"])
def test_resume_refuses_callback_names_with_a_protocol(name, tmp_path):
    """Review of fuzz round 5: Lightning treats a "previous best" whose fsspec protocol is not
    plain ``file`` as remote, so it is not confined to the checkpoint folder, and removes it
    recursively: ``local:///home/victim/thesis`` deleted that folder on the first better
    checkpoint after a resume."""
    hostile = {LAST_KEY: {"dirpath": str(tmp_path / "run" / "checkpoints"),
                          "best_k_models": {name: 1.0}}}
    ckpt = _training_ckpt(tmp_path / "hostile.ckpt", hostile)
    with pytest.raises(CheckpointError, match="not a plain file path"):
        train.resume_checkpoint(train.RunOptions(resume=str(ckpt)), KneePlanModule(**TINY_HP))
    with pytest.raises(CheckpointError, match="not a plain file path"):
        SameFolderCheckpointIO().load_checkpoint(ckpt)
