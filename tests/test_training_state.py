"""A resumed checkpoint's optimiser, scheduler and settings are checked before Lightning applies
them (red-team round 6: a negative learning rate, ``maximize`` or a scheduler gamma of -100
trained uphill and exited 0; NaN in RMSProp's running average turned every weight to NaN; a
config with another norm, input size or target sigma resumed silently).

The states are made by torch's own RMSprop and StepLR after a real step, then edited.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from lightning_modules import train
from lightning_modules.checkpoints import CheckpointError
from lightning_modules.module import KneePlanModule
from lightning_modules.training_state import (
    optimizer_state_problem,
    scheduler_state_problem,
    settings_mismatch,
)

TINY_HP = dict(image_size=64, num_stacks=2, depth=2, c1=4, c2=8, c_star=16,
               net_kwargs={"skip_channels": 4, "refine_channels": 4})
DATA_HP = {"size": 64, "sigma": 2.0, "roi_spacing_px": None, "roi_extent": "segment"}


def _states(module: KneePlanModule) -> tuple[list[dict], list[dict]]:
    """Optimiser and scheduler states of ``module`` after one real RMSprop step."""
    (opt_net, opt_gn), (sched,) = module.configure_optimizers()
    for opt, params in ((opt_net, module.net.parameters()), (opt_gn, module.gradnorm.parameters())):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    sched["scheduler"].step()
    return [opt_net.state_dict(), opt_gn.state_dict()], [sched["scheduler"].state_dict()]


@pytest.fixture(scope="module")
def good() -> tuple[KneePlanModule, dict]:
    torch.manual_seed(0)
    module = KneePlanModule(**TINY_HP)
    opts, scheds = _states(module)
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
            "datamodule_hyper_parameters": dict(DATA_HP), "epoch": 1, "global_step": 1,
            "optimizer_states": opts, "lr_schedulers": scheds, "loops": {},
            "pytorch-lightning_version": "2.6.6", "callbacks": {}}
    return module, ckpt


def _resume(tmp_path: Path, module: KneePlanModule, ckpt: dict, data=DATA_HP) -> Path:
    path = tmp_path / "r.ckpt"
    torch.save(ckpt, path)
    return train.resume_checkpoint(train.RunOptions(resume=str(path)), module, data)


def test_a_real_training_state_passes(good, tmp_path):
    module, ckpt = good
    assert optimizer_state_problem(ckpt["optimizer_states"]) is None
    assert scheduler_state_problem(ckpt["lr_schedulers"]) is None
    assert _resume(tmp_path, module, ckpt) == tmp_path / "r.ckpt"


def _edit_group(key, value):
    def edit(c):
        c["optimizer_states"][0]["param_groups"][0][key] = value
    return edit


def _edit_state(key, fill):
    def edit(c):
        first = next(iter(c["optimizer_states"][0]["state"].values()))
        first[key] = torch.full_like(first[key], fill) if key in first else fill
    return edit


def _edit_sched(key, value):
    def edit(c):
        c["lr_schedulers"][0][key] = value
    return edit


@pytest.mark.parametrize("edit, expect", [
    (_edit_group("lr", -0.5), "lr is -0.5"),
    (_edit_group("lr", float("nan")), "lr is nan"),
    (_edit_group("lr", 10**400), "lr is 1000"),  # a Python int beyond float: no OverflowError
    (_edit_group("lr", "0.1"), "lr is '0.1'"),
    (_edit_group("maximize", True), "maximize is True"),
    (_edit_group("alpha", 1.5), "alpha is 1.5"),
    (_edit_group("eps", 0.0), "eps is 0.0"),
    (_edit_state("square_avg", float("nan")), "square_avg holds NaN or inf"),
    (_edit_state("square_avg", -1.0), "square_avg holds negative values"),
    (_edit_sched("gamma", -100.0), "gamma is -100.0"),
    (_edit_sched("step_size", 0), "step_size is 0"),
    (_edit_sched("base_lrs", [float("inf")]), "base_lrs is inf"),
])
def test_out_of_range_training_state_is_refused_in_one_line(good, tmp_path, edit, expect):
    module, ckpt = good
    bad = copy.deepcopy(ckpt)
    edit(bad)
    with pytest.raises(CheckpointError) as err:
        _resume(tmp_path, module, bad)
    line = str(err.value)
    assert "\n" not in line and str(tmp_path / "r.ckpt") in line and expect in line, line


@pytest.mark.parametrize("change", [
    {"norm": "group"},  # same weight names and shapes as instance norm with affine weights
])
def test_config_changing_the_network_is_refused(good, tmp_path, change):
    module, ckpt = good
    other = KneePlanModule(**{**TINY_HP, **change})
    if set(other.state_dict()) != set(module.state_dict()):
        pytest.skip("that norm changes the weight names: check_architecture refuses it")
    with pytest.raises(CheckpointError, match="norm 'instance' -> 'group'"):
        _resume(tmp_path, other, ckpt)


@pytest.mark.parametrize("key, value", [("sigma", 1.0), ("size", 128), ("roi_extent", "line")])
def test_config_changing_the_targets_is_refused(good, tmp_path, key, value):
    module, ckpt = good
    with pytest.raises(CheckpointError, match=f"config changes what this run trains \\({key} "):
        _resume(tmp_path, module, ckpt, {**DATA_HP, key: value})


@pytest.mark.parametrize("key, value", [("lr", 0.5), ("gradnorm_lr", 0.1), ("lr_step_epochs", 3),
                                        ("lr_gamma", 0.9)])
def test_config_changing_the_optimiser_is_refused(good, tmp_path, key, value):
    """The restored optimiser/scheduler state would ignore the new value that config.yaml and
    the checkpoint's hyper-parameters then record as used (red-team round 7)."""
    module, ckpt = good
    other = KneePlanModule(**{**TINY_HP, key: value})
    with pytest.raises(CheckpointError, match=f"config changes the optimiser \\({key} "):
        _resume(tmp_path, other, ckpt)
    _resume(tmp_path, KneePlanModule(**TINY_HP), ckpt)  # its own settings still resume


def test_settings_missing_on_either_side_are_not_compared():
    """Checkpoints written before a setting existed still resume."""
    assert settings_mismatch({"a": 1}, {"b": 2}, ("a", "b")) is None
    assert settings_mismatch(None, {"a": 1}, ("a",)) is None
    assert settings_mismatch({"a": 1}, {"a": 2}, ("a",)) == "a 1 -> 2"
    # equivalent forms are the same setting (found by review)
    assert settings_mismatch({"net_kwargs": None}, {"net_kwargs": {}}, ("net_kwargs",)) is None
    assert settings_mismatch({"k": {"a": (1, 2)}}, {"k": {"a": [1, 2]}}, ("k",)) is None
    assert settings_mismatch({"k": {"a": 1}}, {"k": {}}, ("k",)) == "k {'a': 1} -> {}"


def test_dataset_change_lets_moved_data_be_given_anew(tmp_path):
    """A resume may not change the training images, but data that were moved (the recorded
    folder, split file or phantom config no longer exists) may be named where they are now."""
    from lightning_modules.training_state import dataset_change

    gone = {"data_root": "/gone/data", "split_file": "/gone/data/split.json", "seed": 0}
    moved = {"data_root": str(tmp_path), "split_file": str(tmp_path / "split.json"), "seed": 0}
    assert dataset_change(gone, moved) is None
    assert "seed 0 -> 1" in dataset_change(gone, {**moved, "seed": 1})
    (tmp_path / "split.json").write_text("{}")
    (tmp_path / "other.json").write_text("{}")
    here = {**moved}
    assert dataset_change(here, here) is None
    other = {**here, "split_file": str(tmp_path / "other.json")}
    assert "split_file" in dataset_change(here, other)
    assert "data_root" in dataset_change(here, {**here, "data_root": None})
    assert dataset_change({**here, "data_root": "~/x"}, {**here, "data_root": "~/x"}) is None
