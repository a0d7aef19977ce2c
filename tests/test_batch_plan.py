"""Batch planning: a folder (or glob) with one bad image among good ones is planned with one
model load; the bad one is reported and in the summary CSV, the others are planned."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from model_files import exported_tiny_model, phantom_images

from planning.batch import Progress, expand_images, passed_over
from planning.plan import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    good = phantom_images(tmp_path_factory, n=2)
    root = tmp_path_factory.mktemp("batch_in")
    for p in good:
        shutil.copy(p, root / p.name)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)  # truncated PNG
    (root / "notes.txt").write_text("not an image, not listed\n")
    return root


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_expand_images(folder):
    files, many = expand_images(str(folder))
    assert many and [p.name for p in files] == sorted(
        p.name for p in folder.iterdir() if p.suffix == ".png")
    files, many = expand_images(str(folder / "*.png"))
    assert many and len(files) == 3
    files, many = expand_images(str(folder / "broken.png"))
    assert not many and files == [folder / "broken.png"]
    assert expand_images(str(folder / "*.dcm")) == ([], True)
    # a glob takes the kinds a folder takes (session 31: dir/* made notes.txt a failed row)
    assert expand_images(str(folder / "*"))[0] == expand_images(str(folder))[0]
    assert passed_over(str(folder)) == passed_over(str(folder / "*")) == [folder / "notes.txt"]
    assert passed_over(str(folder / "*.png")) == passed_over(str(folder / "broken.png")) == []


def test_dicom_files_of_any_suffix_are_listed_by_folder_and_glob(tmp_path):
    # review of session 31: the glob took only image suffixes, so 'scans/*.IMA' lost its DICOMs
    import numpy as np
    from dicom_files import write_dicom

    for name in ("a.IMA", "b.dicom", "IM0001", "1.2.840.5"):
        write_dicom(tmp_path / name, np.full((40, 40), 100, np.uint16))
    (tmp_path / "notes.IMA").write_text("not DICOM")
    want = [tmp_path / n for n in ("1.2.840.5", "IM0001", "a.IMA", "b.dicom")]
    assert expand_images(str(tmp_path))[0] == want
    assert expand_images(str(tmp_path / "*"))[0] == want
    assert expand_images(str(tmp_path / "*.IMA"))[0] == [tmp_path / "a.IMA"]
    assert passed_over(str(tmp_path)) == [tmp_path / "notes.IMA"]


def test_files_passed_over_are_named(folder, tmp_path_factory, tmp_path, capsys):
    model = exported_tiny_model(tmp_path_factory)
    for spec in (str(folder), str(folder / "*")):
        main(["--image", spec, "--ckpt", str(model), "--out", str(tmp_path / "o"), "--tta", "0"])
        err = capsys.readouterr().err
        assert (f"plan: note: {spec}: 1 file(s) (notes.txt) passed over (not an image type: "
                in err)
        rows = _rows(tmp_path / "o" / "summary.csv")
        assert not [r for r in rows if "notes.txt" in r["image"]]
    assert main(["--image", str(folder / "*.txt"), "--ckpt", str(model), "--out",
                 str(tmp_path / "t")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("found (only 1 file(s) (notes.txt) of other types)"), err


def test_folder_with_one_bad_image(folder, tmp_path_factory, tmp_path, capsys):
    model = exported_tiny_model(tmp_path_factory)
    rc = main(["--image", str(folder), "--ckpt", str(model), "--out", str(tmp_path),
               "--progress-every", "2"])
    out, err = capsys.readouterr()
    assert rc == 1  # some failed
    rows = _rows(tmp_path / "summary.csv")
    assert [r["image"].rsplit("/", 1)[-1] for r in rows] == sorted(
        p.name for p in folder.glob("*.png"))
    bad = [r for r in rows if r["status"] != "ok"]
    assert len(bad) == 1 and "broken.png" in bad[0]["error"]
    assert "plan: error: " in err and "broken.png" in err and "Traceback" not in err
    # not a terminal: one progress line per 2 images and one at the end, no bar
    assert "plan: 2/3 (67 %)" in err and "plan: 3/3 (100 %)" in err and err.count("(1 failed)") == 2
    for r in rows:
        if r["status"] == "ok":
            assert float(r["seconds"]) > 0 and r["spacing_source"] in ("sphere", "unknown")
            assert r["needs_review"] in ("True", "False")
            stem = r["image"].rsplit("/", 1)[-1][:-4]
            assert (tmp_path / f"{stem}_plan.png").is_file()
            assert r["report"].endswith(f"{stem}_plan.json")
            rep = json.loads(Path(r["report"]).read_text())
            # the cell splits back into the report's reasons (a reason may hold "; ")
            assert r["reasons"].split(" | ") == rep["review_reasons"] != []
            assert r["review_codes"].split() == sorted(set(rep["review_codes"]))
    assert "planned 2/3 images" in out


def test_glob_all_good_exits_zero_and_workers(folder, tmp_path_factory, tmp_path, capsys):
    model = exported_tiny_model(tmp_path_factory)
    pattern = str(folder / "phantom_*.png")
    assert len(expand_images(pattern)[0]) == 2
    assert main(["--image", pattern, "--ckpt", str(model), "--out", str(tmp_path / "a")]) == 0
    rows = _rows(tmp_path / "a" / "summary.csv")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    rc = main(["--image", str(folder), "--ckpt", str(model), "--out", str(tmp_path / "b"),
               "--workers", "2"])
    assert rc == 1
    rows2 = _rows(tmp_path / "b" / "summary.csv")
    assert [r["status"] for r in rows2] == ["failed" if "broken" in r["image"] else "ok"
                                            for r in rows2]
    same = {r["image"]: r["schoettle_x_px"] for r in rows}
    for r in rows2:
        if r["image"] in same:
            assert r["schoettle_x_px"] == same[r["image"]]
    capsys.readouterr()


def test_empty_folder_and_progress_on_a_terminal(tmp_path, tmp_path_factory, capsys):
    model = exported_tiny_model(tmp_path_factory)
    assert main(["--image", str(tmp_path), "--ckpt", str(model)]) == 1
    assert "no image files" in capsys.readouterr().err

    class Tty:
        def __init__(self):
            self.text = ""

        def isatty(self):
            return True

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    tty = Tty()
    bar = Progress(3, every=1, stream=tty)
    for ok in (True, False, True):
        bar.update(ok)
    bar.close()
    assert "3/3" in tty.text and "failed=1" in tty.text and "plan: " not in tty.text


def test_background_overlay_writes(folder, tmp_path_factory, tmp_path, monkeypatch):
    """One process writes each overlay in a thread while the next image is planned: the files
    equal a synchronous write's, and a write that fails fails only its own row."""
    import cv2
    import numpy as np

    import planning.plan as plan_mod
    from planning.batch import PlanOptions, plan_many, plan_one
    from planning.predict import load_predictor

    pred = load_predictor(exported_tiny_model(tmp_path_factory))
    good = sorted(folder.glob("phantom_*.png"))
    sync = [plan_one(p, pred, PlanOptions(tmp_path / "sync")) for p in good]
    rows = plan_many(good, PlanOptions(tmp_path / "bg"), predictor=pred)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for a, b in zip(sync, rows, strict=True):
        assert a["schoettle_x_px"] == b["schoettle_x_px"]
        stem = a["image"].rsplit("/", 1)[-1][:-4]
        pa, pb = (cv2.imread(str(tmp_path / d / f"{stem}_plan.png")) for d in ("sync", "bg"))
        assert pa is not None and np.array_equal(pa, pb)

    real = plan_mod.write_overlay

    def flaky(path, rgb):
        if good[0].stem in path.name:
            raise OSError(f"{path}: disk full")
        return real(path, rgb)

    monkeypatch.setattr(plan_mod, "write_overlay", flaky)
    errors = []
    rows = plan_many(good, PlanOptions(tmp_path / "flaky"), predictor=pred, on_error=errors.append)
    assert [r["status"] for r in rows] == ["failed", "ok"]
    assert "disk full" in rows[0]["error"] and good[0].stem in rows[0]["error"]
    assert rows[0]["report"] == ""  # its JSON (naming the missing overlay) went with it
    assert not (tmp_path / "flaky" / f"{good[0].stem}_plan.json").exists()
    assert errors == [rows[0]["error"]]
    assert (tmp_path / "flaky" / f"{good[1].stem}_plan.png").is_file()


def test_outputs_never_overwrite_each_other_or_an_input(tmp_path_factory, tmp_path, capsys):
    """knee.png and knee.tif in one folder wrote both plans to knee_plan.* (the first lost);
    with --out the input folder, a.png's overlay overwrote an input named a_plan.png."""
    import cv2

    from planning.batch import output_stems

    a, b = (tmp_path / d for d in ("a", "b"))
    assert output_stems([a / "knee.png", a / "knee.tif", b / "knee.png", a / "x.png"]) == [
        "knee_png", "knee_tif", "knee_png-2", "x"]
    model = exported_tiny_model(tmp_path_factory)
    good = phantom_images(tmp_path_factory, n=1)[0]
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(good, src / "knee.png")
    img = cv2.imread(str(good), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(src / "knee.tif"), img[:, ::-1])  # another image, same stem
    assert main(["--image", str(src), "--ckpt", str(model), "--out", str(tmp_path / "o")]) == 0
    rows = _rows(tmp_path / "o" / "summary.csv")
    assert sorted(r["report"].rsplit("/", 1)[-1] for r in rows) == [
        "knee_png_plan.json", "knee_tif_plan.json"]
    assert rows[0]["schoettle_x_px"] != rows[1]["schoettle_x_px"]
    shutil.copy(good, src / "a.png")
    shutil.copy(good, src / "a_plan.png")  # an earlier run's overlay, say
    before = (src / "a_plan.png").read_bytes()
    assert main(["--image", str(src), "--ckpt", str(model), "--out", str(src)]) == 2
    assert "would overwrite input" in capsys.readouterr().err
    assert (src / "a_plan.png").read_bytes() == before


def test_a_worker_refuses_a_model_changed_after_the_check(tmp_path_factory, tmp_path,
                                                         monkeypatch):
    """Red-team round 6: each ``--workers`` process reloaded the model file, so one swapped
    after the main process checked it was planned with unchecked (or a traceback per worker
    and "a worker process died" rows, status 1). A worker now loads only the checked bytes,
    and any failure is a model row (status 2)."""
    import planning.batch as batch

    model = tmp_path / "m.onnx"
    shutil.copy(exported_tiny_model(tmp_path_factory), model)
    shutil.copy(exported_tiny_model(tmp_path_factory).with_suffix(".json"),
                model.with_suffix(".json"))
    monkeypatch.setattr(batch, "_WORKER", {})
    import signal

    ctrl_c = signal.getsignal(signal.SIGINT)
    checked = batch.model_digest(model)
    model.write_bytes(model.read_bytes() + b"\0")  # rewritten after the check
    batch._init_worker(str(model), "cpu", checked)
    assert "changed after it was checked" in batch._WORKER["error"]
    opts = batch.PlanOptions(out_dir=tmp_path / "out", checkpoint=str(model))
    row = batch._worker_plan(tmp_path / "knee.png", opts, "knee")
    assert row["status"] == "failed" and batch.model_failed([row]), row
    monkeypatch.setattr(batch, "_WORKER", {})
    batch._init_worker(str(model), "cpu", batch.model_digest(model))  # checked, but damaged:
    assert "damaged" in batch._WORKER["error"] and "\n" not in batch._WORKER["error"]
    shutil.copy(exported_tiny_model(tmp_path_factory), model)
    monkeypatch.setattr(batch, "_WORKER", {})
    batch._init_worker(str(model), "cpu", checked)  # the checked bytes: loaded
    assert "predictor" in batch._WORKER and "error" not in batch._WORKER
    description = model.with_suffix(".json")  # an export's codec and outputs count too
    description.write_text(description.read_text().replace('"seg"', '"seg" '))
    monkeypatch.setattr(batch, "_WORKER", {})
    batch._init_worker(str(model), "cpu", checked)
    assert "changed after it was checked" in batch._WORKER["error"]
    # loading leaves the caller's Ctrl-C alone (only a worker's start ignores it: session 31's
    # CI caught this test leaving pytest, and a training it started, deaf to SIGINT)
    assert signal.getsignal(signal.SIGINT) is ctrl_c


def test_a_worker_start_ignores_ctrl_c_and_loads(tmp_path_factory, tmp_path, monkeypatch):
    import signal

    import planning.batch as batch

    model = exported_tiny_model(tmp_path_factory)
    monkeypatch.setattr(batch, "_WORKER", {})
    monkeypatch.setattr(signal, "signal", lambda *a: seen.append(a))
    seen: list = []
    batch._start_worker(str(model), "cpu", batch.model_digest(model))
    assert seen == [(signal.SIGINT, signal.SIG_IGN)] and "predictor" in batch._WORKER


def test_a_folder_named_like_an_image_gets_its_own_row(tmp_path):
    """A subfolder (or a link to one) named x.png was skipped silently; now it is listed and its
    row says what it is (the dataset validator calls it an error too)."""
    from datamodules.image_io import ImageReadError, load_image

    (tmp_path / "sub.png").mkdir()
    (tmp_path / "link.png").symlink_to(tmp_path / "sub.png")
    (tmp_path / "plain").mkdir()  # no image suffix: not listed
    files, many = expand_images(str(tmp_path))
    assert many and [p.name for p in files] == ["link.png", "sub.png"]
    with pytest.raises(ImageReadError, match="not a regular file"):
        load_image(files[0])
