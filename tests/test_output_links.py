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


def test_a_linked_output_folder_is_replaced_not_entered(tmp_path):
    """Review of fuzz round 5: ``<out>/gallery -> elsewhere`` made the gallery delete the
    ``worst_*.png`` pictures in the link's target before writing its own there."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "worst_01_x.png").write_bytes(b"someone's picture")
    link = tmp_path / "gallery"
    link.symlink_to(elsewhere, target_is_directory=True)
    folder = replace_link(link)
    folder.mkdir()
    assert folder.is_dir() and not folder.is_symlink()
    assert (elsewhere / "worst_01_x.png").read_bytes() == b"someone's picture"


def test_a_link_loop_in_a_run_folder_is_named_not_a_traceback(tmp_path):
    from lightning_modules.run_folder import outside_link

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "x").symlink_to(run / "checkpoints" / "x")
    assert "a link that loops" in outside_link(run)


def test_sweep_report_replaces_links_in_the_shared_study_folder(tmp_path):
    """Review of fuzz round 5: the study folder every sweep worker shares held
    ``trials.md -> ~/notes.txt`` and ``sweeps.report`` overwrote the notes."""
    from sweeps.report import main as report_main
    from sweeps.run import run_sweep
    from tests.sweep_doubles import instant_fit

    config = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    run_sweep(["--trials", "1", "--study", "s", "--studies-dir", str(tmp_path / "st"),
               "--config", str(config), "--pruner", "none"], fit=instant_fit)
    notes, _ = _victim(tmp_path)
    folder = tmp_path / "st" / "s"
    for name in ("trials.md", "trials.csv", "best_trial.json"):
        (folder / name).unlink(missing_ok=True)
        (folder / name).symlink_to(notes)
    assert report_main(["--study", "s", "--studies-dir", str(tmp_path / "st")]) == 0
    assert notes.read_text() == "precious notes"
    assert not any((folder / n).is_symlink() for n in ("trials.md", "trials.csv",
                                                          "best_trial.json"))
