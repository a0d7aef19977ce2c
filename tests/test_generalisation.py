"""Leave-one-factor-out runner: argument building, summary and table by hand, CLI errors, and
one end-to-end run on the tiny preset (two models, three test phantoms)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from planning import generalisation as gen

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


def test_max_time_format():
    assert gen.max_time(30) == "00:00:30:00"
    assert gen.max_time(0.1) == "00:00:00:06"
    assert gen.max_time(61.5) == "00:01:01:30"
    assert gen.max_time(0.0) == "00:00:00:01"


def test_train_args_switch_the_factor_off(tmp_path):
    args = gen.train_args("c.yaml", 2, tmp_path, "metal", ["metal"], "p.yaml", -1)
    assert args[:2] == ["--config", "c.yaml"]
    assert "--trainer.max_time=00:00:02:00" in args and "--trainer.max_epochs=-1" in args
    over = [a for a in args if a.startswith("--data.phantom_overrides=")][0]
    assert json.loads(over.split("=", 1)[1]) == {"factors_off": ["metal"]}
    assert "--data.phantom_config=p.yaml" in args and "--run.name=metal" in args
    assert not any(a.startswith("--seed_everything") for a in args)
    seeded = gen.train_args("c.yaml", 2, tmp_path, "metal", ["metal"], None, -1, seed=7)
    assert "--seed_everything=7" in seeded
    assert not any(a.startswith("--data.phantom_config") for a in seeded)
    more = gen.train_args("c.yaml", 2, tmp_path, "all_on", [], None, -1,
                          extra=["--data.num_train=9"])  # fmt: skip
    assert more[-1] == "--data.num_train=9"  # after the protocol's own: it wins


def test_summarise_and_table_by_hand():
    def row(s, b, t, iou):
        r = {"schoettle": s, "ed_p_blum": b, "ed_p_tmc": t}
        r.update({f"iou_{x}": iou for x in ("femur", "patella", "tibia", "fibula")})
        return r

    on = gen.summarise([row(1.0, 2.0, 3.0, 0.9), row(3.0, math.nan, 5.0, 0.7),
                        row(2.0, 4.0, 4.0, 0.8)])  # fmt: skip
    assert on["schoettle"] == 2.0 and on["ed_p_blum"] == 3.0 and on["ed_p_tmc"] == 4.0
    assert on["iou_femur"] == pytest.approx(0.8)
    off = gen.summarise([row(5.0, 5.0, 5.0, 0.5)])
    md = gen.lofo_table({"all_on": on, "metal": off}, 3, 1.0)
    lines = md.splitlines()
    assert lines[-2].startswith("| (nothing: all on) | 2.00 |  | 3.00 |")
    assert lines[-1].startswith("| metal | 5.00 | +3.00 | 5.00 | +2.00 | 5.00 | +1.00 | 0.500")
    assert lines[-1].endswith("| -0.300 |")
    alone = gen.lofo_table({"metal": off}, 3, 1.0).splitlines()  # all-on trained elsewhere
    assert alone[-1].startswith("| metal | 5.00 |  | 5.00 |  | 5.00 |  | 0.500")
    assert alone[-1].endswith("|  |")


def test_cli_rejects_unknown_factor_and_bad_values(tmp_path, capsys):
    assert gen.main(["--minutes", "1", "--factors", "metal,nope", "--out", str(tmp_path)]) == 2
    assert "unknown factor(s) ['nope']" in capsys.readouterr().err
    assert gen.main(["--minutes", "0", "--factors", "metal", "--out", str(tmp_path)]) == 2
    assert gen.main(["--minutes", "1", "--factors", "metal", "--out", str(tmp_path),
                     "--config", str(tmp_path / "none.yaml")]) == 2  # fmt: skip
    assert "does not exist" in capsys.readouterr().err
    assert gen.main(["--minutes", "1", "--factors", "metal", "--out", str(tmp_path),
                     "--train-args=--run.name='open"]) == 2  # fmt: skip
    assert "--train-args" in capsys.readouterr().err
    assert gen.main(["--minutes", "1", "--factors", "", "--no-all-on", "--out",
                     str(tmp_path)]) == 2  # fmt: skip
    assert "nothing to train" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "value"), [("--minutes", "nan"), ("--test-seed", "-1"),
                                             ("--seed", "-1"), ("--max-epochs", "0")])
def test_cli_rejects_out_of_range_numbers_before_training(tmp_path, capsys, flag, value):
    """NaN minutes and negative seeds were numpy tracebacks; 0 epochs trained nothing and
    reported the untrained models' errors."""
    assert gen.main(["--minutes", "1", "--factors", "metal", "--out", str(tmp_path / "o"),
                     flag, value]) == 2
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_end_to_end_tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "lofo"
    rc = gen.main(["--minutes", "0.2", "--factors", "metal", "--out", str(out), "--config", TINY,
                   "--n-test", "2", "--max-epochs", "1"])  # fmt: skip
    assert rc == 0
    res = json.loads((out / "lofo.json").read_text())
    assert list(res) == ["all_on", "metal"]
    for r in res.values():
        assert set(r) == {"schoettle", "ed_p_blum", "ed_p_tmc", "iou_femur", "iou_patella",
                          "iou_tibia", "iou_fibula"}  # fmt: skip
        assert all(0.0 <= r[f"iou_{b}"] <= 1.0 for b in ("femur", "tibia"))
    md = (out / "lofo.md").read_text()
    assert "| metal |" in md and "2 phantoms with every factor enabled" in md
    cfg = yaml.safe_load(next((out / "runs" / "metal").glob("*/config.yaml")).read_text())
    assert cfg["data"]["phantom_overrides"] == {"factors_off": ["metal"]}
    base = yaml.safe_load(next((out / "runs" / "all_on").glob("*/config.yaml")).read_text())
    assert base["data"]["phantom_overrides"] == {"factors_off": []}
    # one shared test set: both models were evaluated on the same images
    ids = [sorted(p.read_text().splitlines()[1:]) for p in
           sorted((out / "eval").glob("*/per_image.csv"))]  # fmt: skip
    assert len(ids) == 2
    assert [r.split(",")[0] for r in ids[0]] == [r.split(",")[0] for r in ids[1]]


def test_evaluate_phantom_config_option(tmp_path, capsys):
    from planning.evaluate import main as evaluate_main

    bad = tmp_path / "bad.yaml"
    bad.write_text("p_nope: 1\n")
    assert evaluate_main(["--oracle", "--phantom-config", str(bad), "--out", str(tmp_path)]) == 2
    assert "bad.yaml: unknown PhantomConfig field(s): ['p_nope']" in capsys.readouterr().err
    good = tmp_path / "good.yaml"
    good.write_text("styles: {physics: 1.0}\nfactors_off: [metal]\n")
    rc = evaluate_main(["--oracle", "--phantom-config", str(good), "--n-phantoms", "1",
                        "--phantom-max-side", "200", "--n-boot", "10", "--image-size", "64",
                        "--out", str(tmp_path / "ev")])  # fmt: skip
    assert rc == 0 and (tmp_path / "ev" / "per_image.csv").is_file()


def test_an_interrupted_run_leaves_its_own_partial_table(tmp_path, monkeypatch, capsys):
    """Ctrl-C midway printed a traceback and left the previous run's lofo.md beside this
    run's eval/ files (session 30 walkthrough)."""
    import lightning_modules.train as train_module

    out = tmp_path / "lofo"
    out.mkdir()
    (out / "lofo.md").write_text("| metal | 45.95 | an earlier run |\n")

    def interrupted(argv, callbacks=None):
        raise train_module.TrainingInterrupted("training interrupted in epoch 0")

    monkeypatch.setattr(train_module, "fit", interrupted)
    rc = gen.main(["--minutes", "1", "--factors", "metal", "--out", str(out), "--config", TINY,
                   "--n-test", "1", "--max-epochs", "1"])
    assert rc == 130
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err[-1].startswith("generalisation: interrupted; ") and "Traceback" not in "".join(err)
    md = (out / "lofo.md").read_text()
    assert md.startswith("**Partial: 0 of 2 models trained") and "45.95" not in md
    assert json.loads((out / "lofo.json").read_text()) == {"_partial": "0 of 2"}


def test_a_stopped_run_continues_with_the_models_it_finished(tmp_path, monkeypatch, capsys):
    """Session 31 (a session-30 walkthrough item): the same command after a stop retrained
    every model. Models finished under the same settings are kept; other settings retrain."""
    import lightning_modules.train as train_module

    real_fit = train_module.fit
    trained = []

    def fit_once_then_stop(argv, callbacks=None):
        name = next(a.split("=", 1)[1] for a in argv if a.startswith("--run.name="))
        if trained and stop["on"]:
            raise train_module.TrainingInterrupted("training interrupted in epoch 0")
        trained.append(name)
        return real_fit(argv, callbacks)

    stop = {"on": True}
    monkeypatch.setattr(train_module, "fit", fit_once_then_stop)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "lofo"
    argv = ["--minutes", "0.2", "--factors", "metal", "--out", str(out), "--config", TINY,
            "--n-test", "1", "--max-epochs", "1"]
    assert gen.main(argv) == 130
    assert trained == ["all_on"]
    first = json.loads((out / "lofo.json").read_text())
    assert first["_partial"] == "1 of 2" and "all_on" in first
    assert "run the same command to continue" in capsys.readouterr().err
    stop["on"] = False
    assert gen.main(argv) == 0
    assert trained == ["all_on", "metal"]  # all_on kept, not trained again
    res = json.loads((out / "lofo.json").read_text())
    assert list(res) == ["all_on", "metal"] and res["all_on"] == first["all_on"]
    assert "== all_on: kept from the earlier run" in capsys.readouterr().out
    # the all-on model alone again: nothing trained, the metal model stays in the tables
    assert gen.main([*argv[:3], "", *argv[4:]]) == 0
    assert trained == ["all_on", "metal"]
    assert list(json.loads((out / "lofo.json").read_text())) == ["all_on", "metal"]
    # another --n-test is another protocol: everything is trained again
    assert gen.main([*argv[:-4], "--n-test", "2", "--max-epochs", "1"]) == 0
    assert trained == ["all_on", "metal", "all_on", "metal"]
