"""A researcher comparing two models (session 31 walkthrough): an evaluation folder records what
it evaluated (``evaluation.json``), so evaluating one checkpoint on other data no longer replaces
its tables (the default folder takes ``-2``; a chosen ``--out`` is refused), and a stale gallery
is cleared; Ctrl-C in evaluate and in a plan batch is one line (the batch writes the summary of
what it finished); the gallery's index splits back into its reasons and its panel wraps whole
words; the plan overlay's legend lists only the bones it outlines."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from model_files import exported_tiny_model, phantom_images

from planning import evaluate as ev
from planning.evaluation_record import difference, free_folder, read_record, write_record

QUICK = ["--oracle", "--n-phantoms", "1", "--phantom-max-side", "200", "--n-boot", "10",
         "--image-size", "64", "--tta", "0"]


def test_difference_and_free_folder(tmp_path):
    rec = {"model": "m", "test_set": "a", "settings": {"tta": 8}}
    assert difference(None, rec) is None and difference(rec, dict(rec)) is None
    assert difference(rec, {**rec, "test_set": "b"}) == "test_set: a -> b"
    assert difference(rec, {**rec, "settings": {"tta": 0}}) == "settings.tta: 8 -> 0"
    base = tmp_path / "e"
    assert free_folder(base, rec) == (base, None)
    write_record(base, rec)
    assert read_record(base) == rec and free_folder(base, rec) == (base, None)
    other = {**rec, "test_set": "b"}
    assert free_folder(base, other) == (tmp_path / "e-2", "test_set: a -> b")
    write_record(tmp_path / "e-2", other)
    assert free_folder(base, other) == (tmp_path / "e-2", "test_set: a -> b")  # its own again
    (base / "evaluation.json").write_text("[1, 2]")  # not a record: nothing to compare
    assert free_folder(base, other) == (base, None)


def test_other_data_goes_to_a_new_folder_and_out_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    default = tmp_path / "runs" / "evaluate" / "oracle"
    assert ev.main([*QUICK, "--gallery", "1"]) == 0
    first = (default / "per_image.csv").read_text()
    assert read_record(default)["model"] == "oracle"
    assert (default / "gallery" / "contact_sheet.png").is_file()
    capsys.readouterr()
    # the same model on another test set: its own folder, the first one untouched
    assert ev.main([*QUICK, "--phantom-seed", "7", "--gallery", "1"]) == 0
    err = capsys.readouterr().err
    assert f"evaluate: note: {default.relative_to(tmp_path)} holds another evaluation " \
           "(test_set: " in err and "writing to runs/evaluate/oracle-2" in err
    assert (default / "per_image.csv").read_text() == first
    assert "seeds 7.." in read_record(tmp_path / "runs/evaluate/oracle-2")["test_set"]
    # the same evaluation again (the gallery is no part of it) replaces its own tables, and
    # --gallery 0 clears the old gallery
    second = tmp_path / "runs/evaluate/oracle-2"
    assert ev.main([*QUICK, "--phantom-seed", "7", "--gallery", "0", "--out", str(second)]) == 0
    assert not list((second / "gallery").glob("*.png"))
    # a chosen --out holding another evaluation is refused, nothing replaced
    assert ev.main([*QUICK, "--tta", "2", "--out", str(default)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"evaluate: error: --out {default} holds another evaluation "
                              "(settings.tta: 0 -> 2)"), err
    assert (default / "per_image.csv").read_text() == first


def test_ctrl_c_in_evaluate_is_one_line(tmp_path, monkeypatch, capsys):
    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "evaluate", stop)
    assert ev.main([*QUICK, "--out", str(tmp_path / "o")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["evaluate: interrupted; nothing was written (the tables are written once "
                   "every image is evaluated)"]


def test_a_broken_image_names_validate_data(tmp_path, capsys):
    from datamodules.dataset_io import write_sample
    from datamodules.phantoms import PhantomConfig, generate_phantom

    data = tmp_path / "d"
    for k in range(2):
        write_sample(data, generate_phantom(k, PhantomConfig(min_side=128, max_side=160)))
    bad = sorted((data / "images").iterdir())[1]
    bad.write_bytes(bad.read_bytes()[:300])
    assert ev.main(["--oracle", "--data-root", str(data), "--out", str(tmp_path / "o"),
                    "--n-boot", "10", "--image-size", "64", "--tta", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert bad.name in err and err.endswith(
        f"; nothing was written: make validate-data DATA={data} names every such file")


def test_ctrl_c_in_a_plan_batch_writes_the_finished_rows(tmp_path_factory, tmp_path,
                                                         monkeypatch, capsys):
    from planning import batch
    from planning.plan import main

    model = exported_tiny_model(tmp_path_factory)
    folder = tmp_path / "in"
    folder.mkdir()
    for i, p in enumerate(phantom_images(tmp_path_factory, n=2) * 2):
        (folder / f"k{i}.png").write_bytes(p.read_bytes())
    real = batch._plan_one
    calls = {"n": 0}

    def stop_at_third(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(batch, "_plan_one", stop_at_third)
    out = tmp_path / "out"
    assert main(["--image", str(folder), "--ckpt", str(model), "--out", str(out),
                 "--tta", "0"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"plan: interrupted after 2 of 4 images; their summary: {out / 'summary.csv'}" in err
    with (out / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["image"].rsplit("/", 1)[-1] for r in rows] == ["k0.png", "k1.png"]


def test_gallery_index_splits_back_and_panel_keeps_whole_words(tmp_path):
    from planning.gallery import info_panel
    from planning.overlay import Style, wrap_text
    from planning.review import REASON_SEPARATOR, reasons_cell

    reasons = ["hardly any patella predicted (0.001 of the femur's width squared, < 0.01): a "
               "lateral knee shows it; image upside down, or not a knee?", "second; reason"]
    cell = reasons_cell(reasons)
    assert len(cell.split(REASON_SEPARATOR)) == 2
    st = Style(400, 300)
    width = max(st.text_size("x" * 34)[0], 150)
    inner = width - 3 * st.pad
    for part in wrap_text("- " + reasons[0], inner - st.pad, st):  # as info_panel wraps now
        assert st.text_size(part)[0] <= inner - st.pad  # put() draws it whole
    row = {"id": "x", "unit": "mm", "schoettle": 3.0, "ed_p_blum": 1.0, "ed_p_tmc": 1.0,
           "line": 1.0, "iou_femur": 0.9}
    assert info_panel(400, "worst #1", row, reasons, st, width).shape == (400, width, 3)


def test_overlay_legend_lists_only_outlined_bones():
    from test_overlay import _plan

    from planning import overlay
    from planning.overlay import draw_plan, panel_text

    plan = _plan(np.array([70.0, 120.0]))
    _, legend = panel_text(plan, ["femur", "tibia"], [], None, None, False, False)
    names = [t for t, _ in legend]
    assert "femur" in names and "tibia" in names
    assert "patella" not in names and "fibula" not in names
    _, everything = panel_text(plan, True, [], None, None, False, False)
    assert {"patella", "fibula"} <= {t for t, _ in everything}
    masks = np.zeros((4, 200, 160), bool)
    masks[0, 20:180, 40:120] = True  # femur only
    seen = {}
    real = overlay.panel_text

    def spy(plan, masks, *a, **k):
        seen["masks"] = masks
        return real(plan, masks, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(overlay, "panel_text", spy)
        draw_plan(np.full((200, 160), 0.4, np.float32), plan, masks)
    assert seen["masks"] == ["femur"]


@pytest.mark.parametrize("errors, note", [([1.0, 2.0, 3.0], False), ([1.0, np.nan, 3.0], True)])
def test_risk_plot_has_a_title_and_says_how_missing_points_count(tmp_path, errors, note,
                                                                monkeypatch):
    import matplotlib.figure

    texts = []
    real = matplotlib.figure.Figure.savefig

    def keep(fig, *a, **k):
        ax = fig.axes[0]
        texts.extend([ax.get_title(), *(t.get_text() for t in ax.texts)])
        assert ax.get_xlim()[0] < 0  # a gate at coverage 0 is not hidden on the axis
        return real(fig, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    ev.plot_risk_coverage(tmp_path / "r.png", errors, [0, 1, 2], [True, True, True], "mm",
                          title="Risk-coverage: model a.ckpt")
    assert texts[0] == "Risk-coverage: model a.ckpt"
    assert any("infinitely wrong" in t for t in texts) == note


def test_a_second_batch_into_one_folder_keeps_the_first_batchs_rows(tmp_path_factory, tmp_path,
                                                                    capsys):
    # walkthrough: summary.csv went from 6 rows to 2 while the folder held 8 plans
    from planning.plan import main

    model = exported_tiny_model(tmp_path_factory)
    imgs = phantom_images(tmp_path_factory, n=2)
    out = tmp_path / "out"

    def summary():
        with (out / "summary.csv").open() as f:
            return [r["image"].rsplit("/", 1)[-1] for r in csv.DictReader(f)]

    assert main(["--image", str(imgs[0]), "--ckpt", str(model), "--out", str(out),
                 "--tta", "0"]) in (0, 1)  # a single image writes no summary
    batch1 = tmp_path / "b1"
    batch1.mkdir()
    (batch1 / "a.png").write_bytes(imgs[0].read_bytes())
    (batch1 / "b.png").write_bytes(imgs[1].read_bytes())
    assert main(["--image", str(batch1), "--ckpt", str(model), "--out", str(out),
                 "--tta", "0"]) == 0
    assert summary() == ["a.png", "b.png"]
    batch2 = tmp_path / "b2"
    batch2.mkdir()
    (batch2 / "c.png").write_bytes(imgs[1].read_bytes())
    assert main(["--image", str(batch2), "--ckpt", str(model), "--out", str(out),
                 "--tta", "0"]) == 0
    assert summary() == ["a.png", "b.png", "c.png"]
    # planned again: one row, the new one; a plan removed by hand leaves the summary
    (out / "a_plan.json").unlink()
    assert main(["--image", str(batch1 / "b*.png"), "--ckpt", str(model), "--out", str(out),
                 "--tta", "0"]) == 0
    assert summary() == ["c.png", "b.png"]
    capsys.readouterr()


def test_the_record_names_the_model_by_real_path_and_compares_its_bytes(tmp_path, monkeypatch):
    # review: the same checkpoint typed as m/x.ckpt and as its absolute path was "another model"
    import argparse

    ckpt = tmp_path / "m" / "x.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    monkeypatch.chdir(tmp_path)
    args = ev.build_parser().parse_args(["--ckpt", "m/x.ckpt"])
    rel = ev._record(args, args.ckpt, None)
    assert rel["model"] == str(ckpt.resolve())
    moved = tmp_path / "y.ckpt"
    moved.write_bytes(b"weights")
    assert difference(rel, ev._record(argparse.Namespace(**vars(args)), moved, None)) is None
    moved.write_bytes(b"other weights")
    assert difference(rel, ev._record(args, moved, None)).startswith("model_sha256: ")


def test_earlier_rows_match_plans_by_name_in_the_plans_folder(tmp_path):
    # review: rows were matched by the path text, relative to the working folder
    from planning.batch import SUMMARY_FIELDS, earlier_rows, write_summary

    out = tmp_path / "out"
    out.mkdir()
    for n in ("a", "b"):
        (out / f"{n}_plan.json").write_text("{}")
    row = dict.fromkeys(SUMMARY_FIELDS, "")
    old = [row | {"image": "in/a.png", "status": "ok", "report": "out/a_plan.json"},
           row | {"image": "in/b.png", "status": "ok", "report": "out/b_plan.json"},
           row | {"image": "in/gone.png", "status": "ok", "report": "out/gone_plan.json"},
           row | {"image": "in/bad.png", "status": "failed", "error": "x"}]
    write_summary(out / "summary.csv", old)
    new = [row | {"image": str(tmp_path / "in/a.png"), "status": "ok",
                  "report": str(out / "a_plan.json")}]
    kept = earlier_rows(out / "summary.csv", new, out)  # (from another working folder)
    assert [r["image"] for r in kept] == ["in/b.png", "in/bad.png"]
    again = [row | {"image": "elsewhere/bad.png", "status": "failed", "error": "y"}]
    assert [r["image"] for r in earlier_rows(out / "summary.csv", again, out)] == [
        "in/a.png", "in/b.png"]
