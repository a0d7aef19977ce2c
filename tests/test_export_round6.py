"""Sixth fuzz round, ``python -m planning.export``: an export whose torch vs ONNX Runtime check
fails is one line naming the output, status 2 (a model problem), and leaves nothing behind (a
failed check left a.onnx and a.json, which plan then accepted); the check's tolerance grows for
networks above 256 px, where float32 rounding alone exceeded the fixed 1e-4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import planning.export as export
import planning.predict as predict
from planning.export import main as export_main
from tests.model_files import untrained_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """An untrained tiny checkpoint in Lightning's format (as tests/test_planning.py's)."""
    return untrained_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


def one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines[:5]
    return lines[0]


def left_over(folder: Path) -> list[str]:
    """Everything under ``folder`` (the staging folder must be gone)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_check_that_fails_on_onnx_runtime_outputs_writes_nothing(ckpt, tmp_path, capsys,
                                                                   monkeypatch):
    """ONNX Runtime's maps made to differ by 1e-3 (as a 1024 px network's rounding did): was
    status 1, a line without the file, and a.onnx + a.json left for plan to use."""
    real = predict.OnnxPredictor.predict_maps

    def off(self, x):
        maps = real(self, x)
        return {**maps, "lm": maps["lm"] + np.float32(1e-3)}

    monkeypatch.setattr(predict.OnnxPredictor, "predict_maps", off)
    out = tmp_path / "new" / "deeper" / "a.onnx"
    assert export_main(["--ckpt", str(ckpt), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert line.startswith(f"export: error: {out}: the exported model disagrees with torch "
                           "(max |difference| "), line  # (1e-3 / the lm maps' scale)
    assert "e-04 > 1.0e-04 at 64 px)" in line, line
    assert line.endswith("nothing written"), line
    assert "wrote" not in captured.out
    assert left_over(tmp_path) == []  # the folders made for it are gone too


@pytest.mark.parametrize("failure", ["disagrees", "nan", "refused"])
def test_a_failed_check_keeps_the_previous_export(failure, ckpt, tmp_path, capsys,
                                                  monkeypatch):
    """A failed re-export leaves the earlier a.onnx / a.json as they were (written beside them
    under temporary names, moved into place only after the check)."""
    out = tmp_path / "a.onnx"
    out.write_bytes(b"earlier graph")
    out.with_suffix(".json").write_text("{}")

    def compare(*_args, **_kw):
        if failure == "refused":
            raise predict.ModelOutputError("the model's 'lm' output contains NaN")
        return float("nan") if failure == "nan" else 1.5e-3

    monkeypatch.setattr(export, "max_difference", compare)
    assert export_main(["--ckpt", str(ckpt), "--out", str(out)]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"export: error: {out}: the exported model "), line
    assert out.read_bytes() == b"earlier graph" and out.with_suffix(".json").read_text() == "{}"
    assert left_over(tmp_path) == ["a.json", "a.onnx"]


def test_an_interrupted_export_leaves_nothing(ckpt, tmp_path, monkeypatch):
    def interrupted(*_args, **_kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "max_difference", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_main(["--ckpt", str(ckpt), "--out", str(tmp_path / "a.onnx")])
    assert left_over(tmp_path) == []


def test_a_passing_export_is_moved_into_place_replacing_a_link(ckpt, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    out = tmp_path / "a.onnx"
    out.symlink_to(notes)
    assert export_main(["--ckpt", str(ckpt), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "limit 1.0e-04 at 64 px" in printed and f"wrote {out} and" in printed, printed
    assert notes.read_text() == "mine" and not out.is_symlink()
    assert left_over(tmp_path) == ["a.json", "a.onnx", "notes.txt"]
    assert isinstance(predict.load_predictor(out), predict.OnnxPredictor)


def test_check_tolerance_grows_only_above_256_px():
    """1e-4 where 7e-5 was measured (256 px); at 1024 px the tiny preset's 1.5e-3 (float32
    rounding, a healthy export) passes with room to spare."""
    check_tolerance = export.check_tolerance
    assert check_tolerance(64) == check_tolerance(256) == 1e-4
    assert check_tolerance(257) > 1e-4
    assert check_tolerance(512) >= 2 * 3.2e-4 and check_tolerance(1024) >= 3 * 1.5e-3
    assert check_tolerance(1024) <= 1e-2


def test_a_killed_exports_staging_folder_is_removed_by_the_next_export(tmp_path, capsys):
    """A SIGKILLed export (no ``finally``) left ``.export-*``: the next export into that folder
    removes staging folders named as ours, of a process that no longer runs, untouched for an
    hour and holding only .onnx/.json files; nothing else."""
    import os
    import subprocess
    import sys
    import time

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    old = time.time() - 2 * export.STALE_AFTER_S

    def staged(name: str, files: tuple[str, ...] = ("a.onnx", "a.json"), age: float = old
               ) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for f in files:
            (folder / f).write_bytes(b"half")
        os.utime(folder, (age, age))
        return folder

    stale = staged(f".export-{gone}-ab_c1234")
    kept = [
        staged(f".export-{os.getpid()}-def45678"),  # this process: running
        staged(f".export-{gone}-fresh123", age=time.time()),  # recent: maybe another host's
        staged(f".export-{gone}-notes123", ("a.onnx", "notes.txt")),  # not only our files
        staged(".export-2024-06-backup"),  # not mkdtemp's name
        staged(".export-old_style"),
    ]
    link = tmp_path / f".export-{gone}-link1234"
    link.symlink_to(kept[-1])  # a link is never followed
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert export_main(["--ckpt", str(bad), "--out", str(tmp_path / "a.onnx")]) == 2
    capsys.readouterr()
    assert not stale.exists()
    assert all(folder.is_dir() and any(folder.iterdir()) for folder in kept)
    assert link.is_symlink()
