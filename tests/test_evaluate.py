"""make evaluate: tables against hand computations, reference Schoettle points, the oracle on
phantoms (geometry alone must give near-zero Schoettle errors) and Table 2 with several raters.
"""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.dataset_io import write_sample
from datamodules.phantoms import PhantomConfig, generate_phantom
from datamodules.sample import BONES, RaterAnnotation
from geometry.frame import PadResize
from geometry.plan_geometry import masks_to_original
from planning.evaluate import (
    DEFAULT_PHANTOM_SEED,
    evaluate,
    main,
    phantom_samples,
    read_subset,
)
from planning.predict import NetworkMaps
from planning.references import rater_schoettle
from planning.tables import (
    BootstrapSpec,
    pair_column,
    rater_pairs,
    schoettle_pair_distances,
    summarise_median,
    table1,
)

SPEC = BootstrapSpec(n_boot=500, seed=3)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------ tables
def test_table1_mean_std_and_median_match_numpy():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(9):
        row = {"id": f"im{i}"}
        for bone in BONES:
            row[f"iou_{bone}"] = rng.uniform(0.8, 1.0)
            row[f"asd_{bone}"] = rng.uniform(0.0, 1.0)
            row[f"hd_{bone}"] = rng.uniform(1.0, 5.0)
        row.update(ed_p_blum=rng.uniform(0, 3), ed_p_tmc=rng.uniform(0, 3), line=rng.uniform(0, 1))
        row["schoettle"] = math.nan if i == 0 else float(i)  # one NaN is left out
        rows.append(row)
    text, summary = table1(rows, "mm", SPEC)
    by_target = {r["target"]: r for r in summary}
    for bone in BONES:
        vals = np.array([r[f"hd_{bone}"] for r in rows])
        assert by_target[bone]["hd_mean"] == pytest.approx(vals.mean())
        assert by_target[bone]["hd_std"] == pytest.approx(vals.std(ddof=1))
    sp = by_target["schoettle"]
    assert sp["median"] == pytest.approx(4.5)  # median of 1..8
    assert sp["n"] == 8
    assert sp["ci_low"] <= 4.5 <= sp["ci_high"]
    assert "percentile bootstrap of the median" in text and "seed 3" in text
    assert "| Femur |" in text and "8/9" in text


def test_median_ci_is_stable_for_a_seed_and_degenerate_sample_is_exact():
    vals = [0.3, 1.2, 0.7, 2.5, 0.9, 1.1, 0.4]
    a, b = summarise_median(vals, SPEC), summarise_median(vals, SPEC)
    assert (a.median, a.low, a.high) == (b.median, b.low, b.high)
    assert a.median == pytest.approx(np.median(vals))
    const = summarise_median([1.25] * 6, SPEC)
    assert (const.median, const.low, const.high) == (1.25, 1.25, 1.25)
    assert summarise_median([math.nan], SPEC).text() == "n/a"


def test_schoettle_pair_distances_hand_computed_anisotropic():
    pts = {"model": np.array([0.0, 0.0]), "r1": np.array([3.0, 4.0]), "r2": np.array([0.0, 8.0])}
    d = schoettle_pair_distances(pts, ["r1", "r2"], spacing=(1.0, 2.0))  # row 1 mm, col 2 mm
    assert set(d) == {("r1", "r2"), ("model", "r1"), ("model", "r2"), ("model", "centroid")}
    assert d[("r1", "r2")] == pytest.approx(math.hypot(6.0, 4.0))
    assert d[("model", "r1")] == pytest.approx(math.hypot(6.0, 4.0))
    assert d[("model", "r2")] == pytest.approx(8.0)
    assert d[("model", "centroid")] == pytest.approx(math.hypot(3.0, 6.0))  # centroid (1.5, 6)
    assert rater_pairs(["a"]) == [("model", "a")]


# ----------------------------------------------------------------------------- references
def test_rater_schoettle_hand_computed_isotropic_and_anisotropic():
    ann = RaterAnnotation(
        landmarks=np.array([[30.0, 40.0], [10.0, 60.0]]),  # p_blum, p_tmc
        cortex_points=np.array([[10.0, 0.0], [10.0, 50.0], [10.0, 100.0]]),
    )
    # LM1 x = 10; feet at y = 60 and 40 -> r = 10, centre 10 px anterior (towards p_blum).
    np.testing.assert_allclose(rater_schoettle(ann, None), [20.0, 50.0], atol=1e-9)
    # row 0.1, col 0.2 mm: in mm LM1 x = 2, p_tmc (2, 6), p_blum (6, 4) -> r = 1, centre (3, 5).
    np.testing.assert_allclose(rater_schoettle(ann, (0.1, 0.2)), [15.0, 50.0], atol=1e-9)


def test_original_masks_map_back_to_original_pixels():
    h, w = 300, 180
    mask = np.zeros((4, h, w), np.uint8)
    mask[0, 40:250, 30:120] = 1
    mask[2, 100:290, 60:170] = 1
    frame = PadResize.from_shape(h, w, 256)
    seg = np.moveaxis(frame.apply(np.moveaxis(mask.astype(np.float32), 0, -1)), -1, 0)
    maps = NetworkMaps(seg, np.zeros((2, 256, 256)), np.zeros((1, 256, 256)), frame)
    back = masks_to_original(maps.seg, maps.frame)
    assert back.shape == (4, h, w)
    for c in (0, 2):
        inter = np.logical_and(back[c], mask[c]).sum()
        union = np.logical_or(back[c], mask[c]).sum()
        assert inter / union > 0.99
    assert not back[1].any() and not back[3].any()


# ------------------------------------------------------------------------------------ oracle
def test_oracle_on_phantoms_gives_near_zero_schoettle_error(tmp_path):
    """Ground-truth maps through the whole geometry: errors must be a small fraction of 1 mm."""
    samples = phantom_samples(5, DEFAULT_PHANTOM_SEED, PhantomConfig())
    res = evaluate(samples, tmp_path, oracle=True, decode="quadratic", spec=SPEC, log=None)
    rows = res.rows
    sch = np.array([r["schoettle"] for r in rows])
    print("oracle Schoettle errors (mm):", np.round(sch, 3))
    assert res.unit == "mm"
    assert np.median(sch) < 1.0 and sch.max() < 1.5
    for name in ("ed_p_blum", "ed_p_tmc"):  # log-quadratic decoding of exact Gaussians
        assert max(r[name] for r in rows) < 0.05
    assert np.median([r["line"] for r in rows]) < 0.5
    for bone in BONES:
        assert min(r[f"iou_{bone}"] for r in rows) > 0.9
    # the reference construction agrees with the phantom's exact Schoettle point
    assert max(r["reference_vs_exact"] for r in rows) < 1e-6
    files = {p.name for p in tmp_path.iterdir()}
    assert {"table1.md", "table1.csv", "per_image.csv"} <= files and "table2.md" not in files
    per_image = _read_csv(tmp_path / "per_image.csv")
    assert [r["id"] for r in per_image] == [r["id"] for r in rows]
    assert float(per_image[0]["schoettle"]) == pytest.approx(rows[0]["schoettle"], rel=1e-5)


def _shifted(ann: RaterAnnotation, shift: np.ndarray, name: str) -> RaterAnnotation:
    return RaterAnnotation(ann.landmarks + shift, ann.cortex_points + shift, name)


def test_table2_with_three_raters_and_subset_via_cli(tmp_path):
    """Rater 2 and 3 are rater 1 translated: their Schoettle points move by the same vector, so
    every rater-pair distance is known exactly; the model (oracle of rater 1) sits on rater 1."""
    root = tmp_path / "data"
    cfg = PhantomConfig(min_side=400, max_side=600).clean()
    s2, s3 = np.array([6.0, -8.0]), np.array([0.0, 12.0])  # px
    ids = []
    for i in range(3):
        smp = generate_phantom(100 + i, cfg)
        a = smp.annotations[0]
        smp.annotations = [
            RaterAnnotation(a.landmarks, a.cortex_points, "A"),
            _shifted(a, s2, "B"),
            _shifted(a, s3, "C"),
        ]
        write_sample(root, smp)
        ids.append(smp.id)
    (tmp_path / "ok.txt").write_text(f"# suitable\n{ids[0]}\n{ids[2]}\n")
    assert read_subset(tmp_path / "ok.txt") == {ids[0], ids[2]}
    out = tmp_path / "out"
    rc = main(["--oracle", "--data-root", str(root), "--out", str(out), "--subset",
               str(tmp_path / "ok.txt"), "--decode", "quadratic", "--n-boot", "200"])
    assert rc == 0
    md = (out / "table2.md").read_text()
    assert "3/3 images" in md and "2/3 images, ok" in md and "Raters' centroid" in md
    summary = {(r["first"], r["second"]): r for r in _read_csv(out / "table2.csv")}
    assert set(summary) == {("A", "B"), ("A", "C"), ("B", "C"), ("model", "A"), ("model", "B"),
                            ("model", "C"), ("model", "centroid")}
    rows = _read_csv(out / "per_image.csv")
    for pair, shift_px in ((("A", "B"), s2), (("A", "C"), s3), (("B", "C"), s3 - s2)):
        expect = [np.hypot(*shift_px) * float(r["row_mm"]) for r in rows]  # square pixels
        got = [float(r[pair_column(*pair)]) for r in rows]
        np.testing.assert_allclose(got, expect, rtol=1e-6)
        assert float(summary[pair]["median"]) == pytest.approx(np.median(expect), rel=1e-5)
    model_a = [float(r[pair_column("model", "A")]) for r in rows]
    np.testing.assert_allclose(model_a, [float(r["schoettle"]) for r in rows], rtol=1e-6)
    assert max(model_a) < 1.5
    assert float(summary[("model", "A")]["subset_n"]) == 2


def test_subset_with_ids_the_data_lacks_is_one_line(tmp_path, capsys):
    """User walkthrough: a subset of typos gave Table 2 "(0/8 images, ...)" and exit 0."""
    root = tmp_path / "data"
    cfg = PhantomConfig(min_side=96, max_side=128)
    ids = []
    for i in range(2):
        write_sample(root, generate_phantom(100 + i, cfg))
        ids.append(generate_phantom(100 + i, cfg).id)
    (tmp_path / "typos.txt").write_text(f"{ids[0]}\nknee_5\nknee-06\n")
    assert main(["--oracle", "--data-root", str(root), "--out", str(tmp_path / "o"),
                 "--subset", str(tmp_path / "typos.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"evaluate: error: {tmp_path / 'typos.txt'}: 2 of its 3 ids are not images "
                   f"of {root}: 'knee-06', 'knee_5'")
    assert not (tmp_path / "o").exists()


def test_cli_without_checkpoint_or_data_fails_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no runs/ here
    assert main([]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["--ckpt", str(tmp_path / "missing.ckpt")]) == 2
    assert main(["--oracle", "--data-root", str(tmp_path)]) == 2
    assert "no images/ folder" in capsys.readouterr().err


def test_evaluate_knows_the_checkpoints_own_training_images(tmp_path, capsys):
    """Evaluated on the folder it trained on, the checkpoint's training images are named
    (warning) or left out (``--held-out``: only its validation images remain, rebuilt by the
    same seeded split as training); on another folder, nothing is left out."""
    from datamodules.datamodule import seeded_split
    from lightning_modules import train
    from planning.evaluate import main

    data, other = tmp_path / "data", tmp_path / "other"
    cfg = PhantomConfig(min_side=160, max_side=200)
    for i in range(5):
        write_sample(data, generate_phantom(300 + i, cfg))
    write_sample(other, generate_phantom(400, cfg))
    train.fit(["--config", str(Path(__file__).parents[1] / "configs" / "tiny.yaml"),
               "--data.data_root", str(data), "--data.val_fraction", "0.4",
               "--data.seed", "7", "--run.root", str(tmp_path / "runs"),
               "--trainer.max_epochs=1", "--run.val_images=0"])
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    ids = sorted(p.stem for p in (data / "images").iterdir())
    train_ids, val_ids = seeded_split(ids, 0.4, 7)
    common = ["--ckpt", str(ckpt), "--tta", "0", "--n-boot", "10", "--gallery", "0"]
    capsys.readouterr()
    assert main([*common, "--data-root", str(data), "--out", str(tmp_path / "all")]) == 0
    out = capsys.readouterr()
    assert f"{len(train_ids)} images of {data} are this checkpoint's training images" in out.err
    assert "the training images its checkpoint records" in out.err
    rows = list(csv.DictReader((tmp_path / "all" / "per_image.csv").open()))
    assert sorted(r["id"] for r in rows) == ids
    assert torch.load(ckpt, weights_only=True)["kneeplan_training_ids"] == train_ids
    assert f"## Evaluation of the model {ckpt};" in (tmp_path / "all" / "table1.md").read_text()

    # images added after training (user walkthrough: the rebuilt split then counted some of
    # them as training images and scored a training image as held out): held out by record
    for i in range(2):
        write_sample(data, generate_phantom(500 + i, cfg))
    added = sorted({p.stem for p in (data / "images").iterdir()} - set(ids))
    assert main([*common, "--data-root", str(data), "--held-out",
                 "--out", str(tmp_path / "held")]) == 0
    rows = list(csv.DictReader((tmp_path / "held" / "per_image.csv").open()))
    assert sorted(r["id"] for r in rows) == sorted(val_ids + added) and len(val_ids) == 2
    capsys.readouterr()
    # a copy of the data elsewhere: its images with recorded ids are named, never left out
    # (another data set numbered alike would lose images: session 29 review)
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    assert main([*common, "--data-root", str(copy), "--out", str(tmp_path / "c")]) == 0
    assert (f"{copy}: {len(train_ids)} of its images have the ids of the checkpoint's training "
            "images") in capsys.readouterr().err
    assert main([*common, "--data-root", str(copy), "--held-out"]) == 2
    err = capsys.readouterr().err
    assert "did not train on" in err and "evaluate the folder it trained on" in err
    assert main([*common, "--data-root", str(other), "--out", str(tmp_path / "o")]) == 0
    assert "training images" not in capsys.readouterr().err
    assert main([*common, "--data-root", str(other), "--held-out"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did not train on" in err


def test_held_out_without_recorded_ids_rebuilds_the_split(tmp_path):
    """Older checkpoints record no training ids: the seeded split is rebuilt from the folder."""
    from datamodules.datamodule import seeded_split
    from planning.evaluate import training_ids

    cfg = PhantomConfig(min_side=96, max_side=128)
    for i in range(5):
        write_sample(tmp_path, generate_phantom(300 + i, cfg))
    ids = sorted(p.stem for p in (tmp_path / "images").iterdir())
    found, how = training_ids({"data_root": str(tmp_path), "val_fraction": 0.4, "seed": 7},
                              tmp_path)
    assert found == seeded_split(ids, 0.4, 7)[0] and "seed 7" in how


def test_held_out_with_an_export_says_it_cannot_tell(tmp_path_factory, tmp_path, capsys):
    from model_files import exported_tiny_model

    from planning.evaluate import main

    write_sample(tmp_path / "d", generate_phantom(401, PhantomConfig(min_side=160, max_side=200)))
    onnx = exported_tiny_model(tmp_path_factory)
    assert main(["--ckpt", str(onnx), "--data-root", str(tmp_path / "d"), "--held-out",
                 "--tta", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs a checkpoint (.ckpt)" in err


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--n-phantoms", "0"), ("--n-boot", "0"), ("--seed", "-1"), ("--phantom-seed", "-4"),
     ("--image-size", "7"), ("--tta", "-1"), ("--tta", "999"), ("--max-unflagged-mm", "nan"),
     ("--max-unflagged-mm", "-1"), ("--gallery", "-2"), ("--perturb", "bogus")],
)
def test_out_of_range_arguments_are_usage_errors(tmp_path, capsys, flag, value):
    """One line naming the argument, status 2 (README: exit codes), before any work (some ran
    silently, some failed later with status 1 or a numpy message)."""
    from planning.evaluate import main

    assert main(["--oracle", "--out", str(tmp_path / "o"), flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err, err
    assert not (tmp_path / "o").exists()


def test_a_model_whose_outputs_overflow_is_a_usage_error_naming_it(tmp_path_factory, tmp_path,
                                                                  capsys):
    """Red-team round 6: evaluate exited 1 with a line that did not name the model (plan already
    exited 2 for a model at fault)."""
    from model_files import trained_tiny_checkpoint

    from planning.model_io import read_checkpoint

    state = read_checkpoint(trained_tiny_checkpoint(tmp_path_factory))
    for key in [k for k in state["state_dict"] if ".heads.roi.refine_full." in k]:
        state["state_dict"][key] = state["state_dict"][key] * 1e37  # finite weights, inf maps
    bad = tmp_path / "overflow.ckpt"
    torch.save(state, bad)
    rc = main(["--ckpt", str(bad), "--n-phantoms", "1", "--tta", "0", "--n-boot", "10",
               "--phantom-max-side", "96", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"evaluate: error: unusable model {bad}: the model's 'roi' output")


def test_default_output_folder_tells_runs_apart(tmp_path):
    """Every run's last.ckpt went to runs/evaluate/last/ (one run's gallery beside another's
    tables, user walkthrough): a checkpoint in a run folder is named by its run."""
    from planning.evaluate import evaluation_name

    for stamp in ("20261207-101010", "20261207-111111"):
        (tmp_path / "runs" / "quick" / stamp / "checkpoints").mkdir(parents=True)
        (tmp_path / "runs" / "quick" / stamp / "config.yaml").write_text("{}")
    names = {evaluation_name(tmp_path / "runs" / "quick" / s / "checkpoints" / "last.ckpt")
             for s in ("20261207-101010", "20261207-111111")}
    assert names == {"quick-20261207-101010-last", "quick-20261207-111111-last"}
    assert evaluation_name(tmp_path / "model.ckpt") == "model"
    assert evaluation_name(tmp_path / "model.onnx") == "model-onnx"  # beside model.ckpt's
    long = tmp_path / "runs" / ("r" * 250) / "20261207-101010"
    (long / "checkpoints").mkdir(parents=True)
    (long / "config.yaml").write_text("{}")
    name = evaluation_name(long / "checkpoints" / "last.ckpt")
    assert len(name) <= 200 and name.endswith("-20261207-101010-last")


def test_missing_annotation_is_one_line_before_any_image_is_evaluated(tmp_path, capsys):
    """User walkthrough: 3 images were scored, then "annotations/knee_05.json: not a regular
    file" stopped the run (exit 1)."""
    root = tmp_path / "data"
    cfg = PhantomConfig(min_side=96, max_side=128)
    ids = []
    for i in range(3):
        sample = generate_phantom(100 + i, cfg)
        write_sample(root, sample)
        ids.append(sample.id)
    (root / "annotations" / f"{ids[2]}.json").unlink()
    assert main(["--oracle", "--data-root", str(root), "--out", str(tmp_path / "o")]) == 1
    out = capsys.readouterr()
    assert out.err.strip() == (
        f"evaluate: error: {root}: 1 image(s) without their annotation or masks: {ids[2]} "
        f"(annotations/{ids[2]}.json) (make validate-data DATA={root} lists every problem)")
    assert "Schoettle" not in out.out  # nothing was evaluated
