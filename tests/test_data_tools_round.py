"""Data tools as a researcher meets them (session 30 walkthrough). ``make phantoms``: an
--out that is a file is one line; a folder made with another seed is refused instead of
silently mixed; Ctrl-C (or a failed write) removes the half-written sample, so the folder stays
valid. A JPEG saved under a mask's .png name is named; a time-limited training says so."""

from __future__ import annotations

import pytest

import datamodules.phantoms.__main__ as phantoms_main
from datamodules.validate import validate_dataset

SMALL = ["--min-side", "128", "--max-side", "160"]


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
    out = tmp_path / "afile"
    out.write_text("x")
    assert phantoms_main.main(["--out", str(out), "--n", "1", *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"phantoms: error: --out {out} is a file, not a folder"]


def test_a_folder_of_another_seed_is_refused_the_same_seed_extends(tmp_path, capsys):
    out = tmp_path / "ph"
    assert phantoms_main.main(["--out", str(out), "--n", "2", "--seed", "0", *SMALL]) == 0
    first = (out / "images" / "phantom_00000.png").read_bytes()
    assert phantoms_main.main(["--out", str(out), "--n", "1", "--seed", "1", *SMALL]) == 2
    assert "already holds phantom_00000 made with another --seed" in capsys.readouterr().err
    assert (out / "images" / "phantom_00000.png").read_bytes() == first  # untouched
    assert phantoms_main.main(["--out", str(out), "--n", "3", "--seed", "0", *SMALL]) == 0
    assert (out / "images" / "phantom_00000.png").read_bytes() == first  # extended
    assert len(list((out / "images").glob("*.png"))) == 3


def test_an_interrupted_write_leaves_a_valid_folder(tmp_path, capsys, monkeypatch):
    out = tmp_path / "ph"
    real = phantoms_main.write_sample
    calls = {"n": 0}

    def interrupted(root, sample):
        calls["n"] += 1
        if calls["n"] == 3:  # Ctrl-C while the third sample's masks are written
            from datamodules.image_io import write_image

            real_write = write_image
            written = {"n": 0}

            def stop_after_two(path, data):
                written["n"] += 1
                if written["n"] > 2:
                    raise KeyboardInterrupt
                return real_write(path, data)

            monkeypatch.setattr("datamodules.image_io.write_image", stop_after_two)
        return real(root, sample)

    monkeypatch.setattr(phantoms_main, "write_sample", interrupted)
    assert phantoms_main.main(["--out", str(out), "--n", "5", *SMALL]) == 130
    err = capsys.readouterr().err
    assert "interrupted: " in err and "holds 2 complete phantoms" in err
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "phantom_00000.png", "phantom_00001.png"]
    assert not list((out / "masks").glob("phantom_00002_*"))
    report = validate_dataset(out)
    assert report.ok, report.format()
    with pytest.raises(SystemExit):
        phantoms_main.main(["--out", str(out), "--n", "-1"])


def test_a_jpeg_saved_as_a_png_mask_is_named(tmp_path):
    """It read as "non-binary mask: values {0, 1, 2, 3, ...}" (session 30 walkthrough)."""
    import cv2
    import numpy as np

    from datamodules.dataset_io import DatasetError, read_mask

    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 255
    path = tmp_path / "x_femur.png"
    path.write_bytes(cv2.imencode(".jpg", mask)[1].tobytes())
    with pytest.raises(DatasetError, match=r"x_femur.png: a JPEG file named .png \(lossy"):
        read_mask(path)


def test_a_time_limited_run_says_so_in_its_first_line(monkeypatch):
    """``training: -1 epochs of 60 steps`` (max_epochs -1: until max_time)."""
    from types import SimpleNamespace

    from lightning_modules.progress import progress_callback

    said = []
    bar = next(c for c in progress_callback({}, []) if hasattr(c, "on_train_start"))
    bar.print = said.append
    monkeypatch.setattr(type(bar), "total_train_batches", property(lambda self: 60))
    for max_epochs, words in ((-1, "training: epochs until the time limit (max_time) of"),
                              (3, "training: 3 epochs of"), (1, "training: 1 epoch of")):
        said.clear()
        trainer = SimpleNamespace(max_epochs=max_epochs, current_epoch=0)
        bar.on_train_start(trainer, None)
        assert said and said[0].startswith(words), said


def test_a_folder_of_another_config_is_refused_the_same_config_extends(tmp_path, capsys):
    # session 31: the seed alone was recorded, so the same seed with another config (or image
    # size) rewrote samples 0..n-1 and left the old set's later samples beside them
    out = tmp_path / "ph"
    assert phantoms_main.main(["--out", str(out), "--n", "2", *SMALL]) == 0
    first = (out / "images" / "phantom_00000.png").read_bytes()
    other = ["--min-side", "130", "--max-side", "160"]
    assert phantoms_main.main(["--out", str(out), "--n", "1", *other]) == 2
    err = capsys.readouterr().err
    assert "already holds phantom_00000 made with another --config" in err
    assert (out / "images" / "phantom_00000.png").read_bytes() == first  # untouched
    assert phantoms_main.main(["--out", str(out), "--n", "3", *SMALL]) == 0
    assert (out / "images" / "phantom_00000.png").read_bytes() == first
    assert validate_dataset(out).ok


def test_a_folder_made_before_digests_were_recorded_still_extends(tmp_path):
    from datamodules.annotations import load_json

    out = tmp_path / "ph"
    assert phantoms_main.main(["--out", str(out), "--n", "1", *SMALL]) == 0
    path = out / "annotations" / "phantom_00000.json"
    data = load_json(path)
    assert len(data["meta"].pop("config_digest")) == 16
    import json

    path.write_text(json.dumps(data))
    assert phantoms_main.main(["--out", str(out), "--n", "2", *SMALL]) == 0
