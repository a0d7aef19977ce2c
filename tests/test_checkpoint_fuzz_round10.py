"""Red-team round 10 (checkpoints): edits that planned wrongly or trained wrongly without a word.

- ``image_size`` (and the codec) edited to 256 or 96 while the DataModule and the stored config
  say 128: the network ran at the edited size, plans 3-10 mm off; ``norm: group`` edited into
  the hyper-parameters alone (same weight names and shapes as instance norm): 5-12 px off.
- the codec's sigma edited with the DataModule's sigma removed or made a string (the round-6
  check compared only a real number): the stored config still said the trained sigma.
- optimiser states sharing their values (two RMSProp running averages over one memory: resume
  trained on silently and saved them shared again) or a view reaching one value twice (a
  traceback at the first step, after the run folder was made).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_files import trained_tiny_checkpoint

from lightning_modules.checkpoint_file import read_checkpoint
from planning.model_io import CheckpointError, load_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return trained_tiny_checkpoint(tmp_path_factory)


def _edited(ckpt: Path, tmp_path: Path, edit) -> Path:
    state = read_checkpoint(ckpt)
    edit(state)
    out = tmp_path / "edited.ckpt"
    torch.save(state, out)
    return out


def _refused(path: Path, words: str, loader=load_checkpoint) -> None:
    with pytest.raises(CheckpointError) as err:
        loader(path)
    line = str(err.value)
    assert "\n" not in line and line.startswith(str(path)) and words in line, line


def _resize(state: dict, size: int) -> None:
    hp = state["hyper_parameters"]
    hp["image_size"] = size
    hp["heatmap_codec"].update(input_size=size, heatmap_size=size)


def test_the_untouched_checkpoint_loads(ckpt):
    assert load_checkpoint(ckpt).image_size == 64


def test_an_edited_image_size_is_refused_by_the_datamodules_record(ckpt, tmp_path):
    bad = _edited(ckpt, tmp_path, lambda s: _resize(s, 128))
    _refused(bad, "its network takes 128 px inputs, its DataModule was trained with size 64")


def test_without_the_datamodules_record_the_stored_config_tells(ckpt, tmp_path):
    def edit(state):
        _resize(state, 128)
        del state["datamodule_hyper_parameters"]

    _refused(_edited(ckpt, tmp_path, edit), "its network takes 128 px inputs, its stored config "
                                            "says size 64")


def test_a_norm_edited_in_the_hyper_parameters_alone_is_refused(ckpt, tmp_path):
    bad = _edited(ckpt, tmp_path, lambda s: s["hyper_parameters"].update(norm="group"))
    _refused(bad, "its hyper-parameters say norm 'group', its stored config says 'instance'")


def test_a_width_that_agrees_as_a_number_is_not_a_disagreement(ckpt, tmp_path):
    ok = _edited(ckpt, tmp_path, lambda s: s["hyper_parameters"].update(
        c1=float(s["hyper_parameters"]["c1"])))
    assert load_checkpoint(ok).image_size == 64


@pytest.mark.parametrize("datamodule_sigma", ["drop", None])
def test_an_edited_codec_sigma_is_refused_by_the_stored_config(ckpt, tmp_path, datamodule_sigma):
    def edit(state):
        state["hyper_parameters"]["heatmap_codec"]["sigma"] = 40.0
        if datamodule_sigma == "drop":
            del state["datamodule_hyper_parameters"]
        else:
            state["datamodule_hyper_parameters"]["sigma"] = None

    _refused(_edited(ckpt, tmp_path, edit), "its heat-map codec has sigma 40, its stored "
                                            "config says sigma 2")


def test_a_datamodule_sigma_that_is_no_number_is_refused(ckpt, tmp_path):
    bad = _edited(ckpt, tmp_path, lambda s: s["datamodule_hyper_parameters"].update(sigma="2.0"))
    _refused(bad, "its DataModule records sigma '2.0', not a number")


def _optimiser_state(state: dict) -> dict:
    return state["optimizer_states"][0]["state"]


def test_optimiser_states_sharing_their_values_are_refused(ckpt, tmp_path):
    def alias(state):
        st = _optimiser_state(state)
        st[2]["square_avg"] = st[1]["square_avg"]

    def overlapping_views(state):
        st = _optimiser_state(state)
        n1, n2 = st[1]["square_avg"].numel(), st[2]["square_avg"].numel()
        base = torch.zeros(max(n1, n2) + 1)
        st[1]["square_avg"] = base[:n1].view_as(st[1]["square_avg"])
        st[2]["square_avg"] = base[1:n2 + 1].view_as(st[2]["square_avg"])

    for edit in (alias, overlapping_views):
        bad = _edited(ckpt, tmp_path, edit)
        _refused(bad, "'optimizer_states.0.state.1.square_avg' and "
                      "'optimizer_states.0.state.2.square_avg' share stored values",
                 loader=read_checkpoint)


def test_a_state_that_reaches_one_value_twice_is_refused(ckpt, tmp_path):
    def edit(state):
        st = _optimiser_state(state)
        shape = st[0]["square_avg"].shape
        flat = torch.zeros(shape.numel())  # room for every value: only the strides are wrong
        strides = (0, *torch.empty(shape[1:]).stride())
        st[0]["square_avg"] = flat.as_strided(shape, strides)

    _refused(_edited(ckpt, tmp_path, edit), "whose strides (0, ", loader=read_checkpoint)


def test_tied_weights_and_a_callbacks_shared_score_still_load(ckpt, tmp_path):
    """Sharing that training itself writes: tied (identical) weights, one score tensor under
    two names of a callback's state."""
    def edit(state):
        sd = state["state_dict"]
        names = [k for k in sd if k.endswith(".weight") and sd[k].dim() == 4]
        a, b = next((x, y) for x in names for y in names
                    if x != y and sd[x].shape == sd[y].shape)
        sd[b] = sd[a]
        score = torch.tensor(0.5)
        state["callbacks"]["probe"] = {"best_model_score": score, "current_score": score}

    assert read_checkpoint(_edited(ckpt, tmp_path, edit))["state_dict"]


@pytest.mark.parametrize("recorded", ["loop", "nul"])
def test_a_recorded_data_root_that_cannot_be_resolved_is_not_this_folder(tmp_path, recorded):
    """evaluate stopped with "Symlink loop from ..." (or called the folder the training folder
    "and embedded null byte") when the checkpoint's data_root was a link loop or held a NUL."""
    from planning.evaluate import training_ids

    if recorded == "loop":
        loop = tmp_path / "a"
        loop.symlink_to(tmp_path / "b")
        (tmp_path / "b").symlink_to(loop)
        root = str(loop / "x")
    else:
        root = str(tmp_path) + "\x00x"
    folder = tmp_path / "data"
    folder.mkdir()
    assert training_ids({"data_root": root, "val_fraction": 0.2, "seed": 0}, folder) == ([], "")


def test_self_overlap_is_judged_on_values_not_on_strides_alone():
    """Review of round 10: tensors without values (a 0 stride on a size-0 view) were refused;
    transposed, channels-last, sliced and size-1 layouts must pass."""
    from lightning_modules.checkpoint_file import _self_overlapping

    fine = [torch.zeros(1, 0).expand(5, 0), torch.zeros(0).as_strided((3, 0), (0, 1)),
            torch.zeros(4, 6).t(), torch.zeros(2, 3, 5, 5).to(memory_format=torch.channels_last),
            torch.zeros(10)[::3], torch.zeros(4, 1, 3).expand(4, 1, 3), torch.tensor(1.0)]
    assert not any(_self_overlapping(t) for t in fine)
    assert _self_overlapping(torch.zeros(6).as_strided((4, 6), (0, 1)))
    assert _self_overlapping(torch.zeros(8).as_strided((3, 3), (2, 1)))  # rows overlap
