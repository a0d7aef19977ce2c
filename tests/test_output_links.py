"""Outputs never write through a symbolic link (fifth fuzz round): an output folder shared with
others held ``<stem>_plan.json -> ~/notes.txt`` and ``make plan`` overwrote the notes. The link
is replaced by the file; its target is left as it was."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from model_files import exported_tiny_model, phantom_images

from datamodules.path_limits import replace_link
from planning.plan import main


def _victim(tmp_path: Path) -> tuple[Path, Path]:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("precious notes")
    (victim / "photo.png").write_bytes(b"precious photo")
    return victim / "notes.txt", victim / "photo.png"


def test_replace_link_removes_the_link_not_its_target(tmp_path):
    notes, _ = _victim(tmp_path)
    link = tmp_path / "out.json"
    link.symlink_to(notes)
    assert replace_link(link) == link and not link.exists()
    assert notes.read_text() == "precious notes"
    dangling = tmp_path / "gone.json"
    dangling.symlink_to(tmp_path / "nowhere")
    assert not replace_link(dangling).is_symlink()
    plain = tmp_path / "plain.txt"
    plain.write_text("kept")
    assert replace_link(plain).read_text() == "kept"  # a file is left for the writer
    assert not replace_link(tmp_path / "absent").exists()


def test_plan_writes_files_in_place_of_links(tmp_path, tmp_path_factory):
    image = phantom_images(tmp_path_factory, n=1)[0]
    model = exported_tiny_model(tmp_path_factory)
    notes, photo = _victim(tmp_path)
    out = tmp_path / "plans"
    out.mkdir()
    (out / f"{image.stem}_plan.json").symlink_to(notes)
    (out / f"{image.stem}_plan.png").symlink_to(photo)
    (out / "summary.csv").symlink_to(notes)
    assert main(["--image", str(image), "--ckpt", str(model), "--out", str(out), "--tta", "0",
                 "--spacing", "0.2"]) == 0
    assert notes.read_text() == "precious notes" and photo.read_bytes() == b"precious photo"
    report = out / f"{image.stem}_plan.json"
    assert not report.is_symlink() and "schoettle_point" in json.loads(report.read_text())
    assert not (out / f"{image.stem}_plan.png").is_symlink()
    # batch mode writes summary.csv too
    assert main(["--image", str(image.parent), "--ckpt", str(model), "--out", str(out),
                 "--tta", "0", "--spacing", "0.2", "--workers", "1"]) in (0, 1)
    assert notes.read_text() == "precious notes"
    with (out / "summary.csv").open() as f:
        assert not (out / "summary.csv").is_symlink() and list(csv.DictReader(f))


def test_an_image_name_too_long_for_its_outputs_writes_nothing(tmp_path, tmp_path_factory,
                                                                capsys):
    """Fifth fuzz round: a 250-byte image name made a 255-byte ``_plan.png`` (written) and a
    256-byte ``_plan.json`` (failed, status 1): an overlay without its report. Now the names
    are checked first: single image a usage error (status 2, one line), batch a failed row."""
    import shutil

    model = exported_tiny_model(tmp_path_factory)
    folder = tmp_path / "in"
    folder.mkdir()
    image = folder / ("k" * 246 + ".png")
    shutil.copy(phantom_images(tmp_path_factory, n=1)[0], image)
    out = tmp_path / "plans"
    capsys.readouterr()
    assert main(["--image", str(image), "--ckpt", str(model), "--out", str(out), "--tta",
                 "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is too long (256 bytes" in err[0], err
    assert not out.exists() or not any(out.iterdir())
    assert main(["--image", str(folder), "--ckpt", str(model), "--out", str(out), "--tta", "0",
                 "--workers", "1"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv"]
    with (out / "summary.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] != "ok" and "too long" in json.dumps(row), row
