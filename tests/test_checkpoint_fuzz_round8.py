"""Red-team round 8, my share of the checkpoint and sweep findings:

- a checkpoint's stored config (``kneeplan_config``, read for its ``data.sigma`` when the
  checkpoint has no codec) went through bare ``yaml.safe_load``: a 960 kB base-60 integer took
  32 s, and ``!!int ""`` was "string index out of range". It now goes through the config files'
  own guarded parser (``datamodules.config_file.parse_yaml``);
- pricing a network (``model_cost.compute_problem``) ran a forward of a copy with every stack:
  32 stacks at depth 8 took 22-50 s before the refusal; now two stacks stand for all, and a
  lower bound from the weights refuses a huge network at once;
- a study file of 30 000 copied trials made ``sweeps.report`` take 64 s (300 000: minutes); and
  the report, which only reads, created an empty database at a mistyped ``--storage`` path.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import torch

from planning.model_io import checkpoint_codec
from tests.test_sweep_fuzz_round5 import _edited, _one_error, _report, base_study  # noqa: F401


def _codec_from_config(text: str):
    return checkpoint_codec({"hyper_parameters": {"image_size": 64},
                             "datamodule_hyper_parameters": {"sigma": None},
                             "kneeplan_config": text})


@pytest.mark.parametrize("text, expect", [
    ("data:\n  sigma: 1:" + "59:" * 600 + "0\n", "digits"),
    ('data:\n  sigma: !!int ""\n', "line 2"),
    ("data:\n  sigma: !!timestamp abc\n", "line 2"),
    ("data:\n  sigma: 1\n  sigma: 2\n", "given twice"),
])  # fmt: skip
def test_a_stored_config_is_parsed_with_the_config_files_guards(text, expect):
    with pytest.raises(ValueError) as err:
        _codec_from_config(text)
    line = str(err.value)
    assert line.startswith("its stored config (kneeplan_config): ") and expect in line, line
    assert "\n" not in line


def test_a_plain_stored_config_still_gives_its_sigma():
    assert _codec_from_config("data:\n  sigma: 3.5\n").sigma == pytest.approx(3.5)
    assert _codec_from_config("model:\n  depth: 2\n").sigma > 0  # no sigma: the default


def test_two_stacks_price_a_network_of_many_as_a_copy_of_all_did():
    """The per-stack stand-ins give every convolution's output size as the full copy did."""
    import lightning_modules.model_cost as model_cost
    from lightning_modules.model_cost import build_network, conv_cost

    built: list[int] = []
    real_build = model_cost.build_network

    def spy(hp):
        built.append(int(hp.get("num_stacks", 4)))
        return real_build(hp)

    for stacks in (3, 5):
        hp = {"num_stacks": stacks, "depth": 2, "c1": 8, "c2": 16, "c_star": 12}
        with torch.device("meta"):
            net = build_network(hp)
        # reference: each convolution's output pixels from a real forward of the whole network
        with torch.device("cpu"):
            full = build_network({**hp, "norm": "batch"}).eval()
        pixels: dict[str, int] = {}
        hooks = [m.register_forward_hook(
            lambda m, i, o, n=n, seen=pixels: seen.__setitem__(n, o.shape[-2:].numel()))
            for n, m in full.named_modules() if isinstance(m, torch.nn.Conv2d)]
        with torch.no_grad():
            full(torch.zeros(1, 1, 64, 64))
        for h in hooks:
            h.remove()
        # (a convolution the network runs through its weights, not its forward, counts 0 here
        # as in conv_cost: the 1x1 reinjections run as batched products)
        want = sum(2 * m.weight.numel() * pixels.get(n, 0) for n, m in net.named_modules()
                   if isinstance(m, torch.nn.Conv2d))
        built.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(model_cost, "build_network", spy)
            flop, _ = conv_cost(net, hp, 64)
        assert flop == pytest.approx(want, rel=1e-12)
        assert built == [2]  # the forward copy has two stacks, not ``stacks``


def test_a_network_too_large_by_its_weights_alone_is_refused_before_any_forward(monkeypatch):
    import lightning_modules.model_cost as model_cost

    def no_forward(*_a, **_k):
        raise AssertionError("priced by a forward")

    monkeypatch.setattr(model_cost, "conv_cost", no_forward)
    hp = {"num_stacks": 32, "depth": 4, "c1": 1024, "c2": 1024, "c_star": 2048}
    with torch.device("meta"):
        net = model_cost.build_network(hp)
    problem = model_cost.compute_problem(net, hp, 256)
    assert problem is not None and problem.startswith("its network needs at least "), problem


def test_a_study_of_too_many_trials_is_refused_unread(base_study, tmp_path, capsys,  # noqa: F811
                                                      monkeypatch):
    import sweeps.storage as storage

    monkeypatch.setattr(storage, "MAX_TRIALS", 5)
    db = _edited(base_study, tmp_path, *[(
        "INSERT INTO trials(number, study_id, state, datetime_start, datetime_complete) "
        "SELECT number + ?, study_id, state, datetime_start, datetime_complete FROM trials "
        "WHERE trial_id = (SELECT min(trial_id) FROM trials)", (100 + i,)) for i in range(6)])
    assert sqlite3.connect(db).execute("SELECT count(*) FROM trials").fetchone()[0] == 8
    assert _report(tmp_path) == 2
    line = _one_error(capsys, "sweeps.report: error:")
    assert "8 trials (more than 5" in line, line


def test_the_report_does_not_create_a_database_at_a_mistyped_path(tmp_path, capsys):
    from sweeps.report import main as report_main

    missing = tmp_path / "typo" / "studyy.db"
    (tmp_path / "typo").mkdir()
    assert report_main(["--study", "s", "--storage", f"sqlite:///{missing}",
                        "--studies-dir", str(tmp_path / "st")]) == 2
    line = _one_error(capsys, "sweeps.report: error:")
    assert f"no study database {missing}" in line, line
    assert not missing.exists() and not any(Path(tmp_path / "typo").iterdir())
