"""``make phantoms`` as a researcher meets it (session 30 walkthrough): an --out that is a file
is one line; a folder made with another seed is refused instead of silently mixed; Ctrl-C
(or a failed write) removes the half-written sample, so the folder stays valid."""

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
