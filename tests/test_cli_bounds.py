"""Command-line robustness of evaluate, generalisation, plan and export (red-team round 8): an
unbounded number (--image-size 30000, --n-boot 2e9), an --out that is a file, lies under a file
or has a name too long for the file system, and a --device torch does not know or this machine
lacks are each ONE line `<command>: error: ...` naming the flag and the value, status 2, said
before any long work (the work itself is replaced by a function that fails the test)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

import planning.evaluate as ev
import planning.export as ex
import planning.generalisation as gen
import planning.plan as pl
from planning.devices import device_problem

LONG = "a" * 300  # one path component longer than any file system takes (255 bytes)


def usage_error(main: Callable[[Sequence[str]], int], argv: list[str], capsys,
                *words: str) -> str:
    """Run ``main(argv)``; assert status 2 and exactly one stderr line holding every word."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], err
    for word in words:
        assert word in lines[0], (word, err)
    return lines[0]


def _no_work(*_args, **_kwargs):
    pytest.fail("the long work started before the usage error was said")


@pytest.fixture
def no_evaluation(monkeypatch):
    """Evaluation, phantom generation and model loading fail the test if reached."""
    import planning.predict

    monkeypatch.setattr(ev, "evaluate", _no_work)
    monkeypatch.setattr(ev, "phantom_samples", _no_work)
    monkeypatch.setattr(planning.predict, "load_predictor", _no_work)


# ---- evaluate: numbers -----------------------------------------------------------------------

@pytest.mark.parametrize(("flag", "value", "extra"), [
    ("--image-size", "30000", []),  # a 30000 px oracle network: gigabytes per map
    ("--n-boot", "2000000000", []),  # 16 GB of resampled medians, hours per column
    ("--n-phantoms", "100000", []),
    ("--n-phantoms", "5000", ["--perturb", "all"]),  # every phantom held in memory
    ("--gallery", "1000", []),  # 3N rendered cases held until the end
])
def test_evaluate_numbers_have_upper_bounds(tmp_path, capsys, no_evaluation, flag, value, extra):
    usage_error(ev.main, ["--oracle", "--out", str(tmp_path / "o"), flag, value, *extra],
                capsys, flag, value)
    assert not (tmp_path / "o").exists()


# ---- evaluate: --out -------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["file", "under_file", "too_long"])
def test_evaluate_unusable_out_is_said_before_evaluating(tmp_path, capsys, no_evaluation, where):
    """Before: the whole evaluation ran, then writing table1.md failed (status 1)."""
    (tmp_path / "afile").write_text("x")
    out = {"file": tmp_path / "afile", "under_file": tmp_path / "afile" / "sub",
           "too_long": tmp_path / LONG}[where]
    usage_error(ev.main, ["--oracle", "--n-phantoms", "1", "--out", str(out)], capsys,
                "--out", str(out))


def test_evaluate_out_that_cannot_be_written_in(tmp_path, capsys, no_evaluation, monkeypatch):
    """A folder that exists but takes no file (permissions, a read-only mount; as root only a
    read-only mount refuses, so the probe's failure is simulated)."""
    import tempfile

    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    usage_error(ev.main, ["--oracle", "--out", str(tmp_path)], capsys, "--out", str(tmp_path),
                "cannot write into the output folder (Permission denied)")


# ---- --device (evaluate, plan) ---------------------------------------------------------------

@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_evaluate_bad_device_comes_before_the_checkpoint(tmp_path, capsys, no_evaluation):
    """Before: "cannot load checkpoint ..." (torch's device error blamed on the file); the
    checkpoint here does not even exist, and the device is still what is said."""
    missing = str(tmp_path / "missing.ckpt")
    line = usage_error(ev.main, ["--ckpt", missing, "--device", "bogus"], capsys,
                       "--device bogus", "not a torch device")
    assert "checkpoint" not in line


def test_evaluate_cuda_without_cuda(tmp_path, capsys, no_evaluation, no_cuda):
    usage_error(ev.main, ["--ckpt", str(tmp_path / "missing.ckpt"), "--device", "cuda"], capsys,
                "--device cuda", "CUDA is not available")


def test_evaluate_missing_cuda_index(tmp_path, capsys, no_evaluation, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    usage_error(ev.main, ["--ckpt", str(tmp_path / "m.ckpt"), "--device", "cuda:7"], capsys,
                "--device cuda:7", "1 CUDA device")


def test_plan_cuda_without_cuda(tmp_path, capsys, no_cuda, monkeypatch):
    monkeypatch.setattr(pl, "load_model", _no_work)
    usage_error(pl.main, ["--image", str(tmp_path / "x.png"), "--ckpt",
                          str(tmp_path / "missing.ckpt"), "--device", "cuda"],
                capsys, "--device cuda", "CUDA is not available")


def test_device_names():
    assert device_problem("cpu") is None and device_problem("cpu:0") is None
    assert device_problem("cuda", check_available=False) is None
    for bad in ("bogus", "cuda:x", "cuda:-1", "", " cpu", "gpu\n"):
        why = device_problem(bad)
        assert why is not None and why.startswith("--device ") and "\n" not in why, bad


# ---- generalisation ---------------------------------------------------------------------------

@pytest.mark.parametrize(("flag", "value"), [
    ("--minutes", "20000"),  # 1e300 overflowed Lightning's max_time (a traceback)
    ("--n-test", "100000"),  # the test set is held in memory
    ("--seed", str(2**40)),  # Lightning's seed_everything refuses it (a traceback)
])
def test_generalisation_numbers_have_upper_bounds(tmp_path, capsys, monkeypatch, flag, value):
    monkeypatch.setattr(gen, "run", _no_work)
    args = {"--minutes": "1", "--factors": "metal", "--out": str(tmp_path / "o"), flag: value}
    usage_error(gen.main, [x for kv in args.items() for x in kv], capsys, flag, value)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", ["file", "under_file", "too_long"])
def test_generalisation_unusable_out(tmp_path, capsys, monkeypatch, where):
    """Before: a FileExistsError / 'File name too long' traceback."""
    monkeypatch.setattr(gen, "run", _no_work)
    (tmp_path / "afile").write_text("x")
    out = {"file": tmp_path / "afile", "under_file": tmp_path / "afile" / "sub",
           "too_long": tmp_path / LONG}[where]
    usage_error(gen.main, ["--minutes", "1", "--factors", "metal", "--out", str(out)], capsys,
                "--out", str(out))


# ---- plan (batch mode) and export: names too long --------------------------------------------

@pytest.fixture
def image_folder(tmp_path_factory):
    from model_files import phantom_images

    return phantom_images(tmp_path_factory, n=2)[0].parent


@pytest.mark.parametrize("flag", ["--out", "--summary"])
def test_plan_batch_name_too_long(tmp_path, capsys, monkeypatch, image_folder, flag):
    """Before: an OSError traceback ('File name too long') from Path.exists."""
    monkeypatch.setattr(pl, "load_model", _no_work)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read before the outputs are checked")
    value = str(tmp_path / (LONG + (".csv" if flag == "--summary" else "")))
    args = {"--out": str(tmp_path / "plans"), flag: value}
    usage_error(pl.main, ["--image", str(image_folder), "--ckpt", str(model),
                          *[x for kv in args.items() for x in kv]], capsys, flag, value)


@pytest.mark.parametrize("out", [LONG + ".onnx", LONG + "/m.onnx"])
def test_export_name_too_long(tmp_path, capsys, out):
    """Before: an OSError traceback from Path.is_dir; the checkpoint (missing here) was never
    reached, so the output is checked first."""
    value = str(tmp_path / out)
    line = usage_error(ex.main, ["--ckpt", str(tmp_path / "missing.ckpt"), "--out", value],
                       capsys, "--out", value)
    # the name that is too long is named as what it is (was "the file name" for a folder too)
    assert ("the folder name" if "/" in out else "the file name") in line, line


@pytest.mark.parametrize("module", ["planning.plan", "planning.export", "planning.evaluate",
                                    "datamodules.validate", "sweeps.run", "sweeps.report"])
def test_argparse_usage_errors_are_one_line(module, capsys):
    """Fifth fuzz round: argparse printed its whole usage block (up to 20 lines) before the
    line that says what is wrong; every other error of these commands is one line."""
    import importlib

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as stop:
        main(["--no-such-flag"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and "see --help" in err[0], err


def test_an_enqueued_parameter_given_twice_is_refused(capsys):
    """Was: ``--enqueue beta=1,alpha=1,beta=2`` ran with beta=2 without a word."""
    from sweeps.run import run_sweep

    with pytest.raises(SystemExit) as stop:
        run_sweep(["--trials", "0", "--study", "s", "--enqueue", "beta=1,alpha=1,beta=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "beta twice" in err[0], err


def test_references_that_contradict_their_own_point_are_named():
    """Fifth fuzz round: an annotation with a landmark at (-0, -0) was scored 27 mm off
    without a word; its constructed reference lay 26 mm from the point it states."""
    from planning.evaluate import MAX_REFERENCE_MM, self_contradicting

    rows = [{"id": "ok", "reference_vs_exact": 1e-14}, {"id": "bad", "reference_vs_exact": 25.7},
            {"id": "edge", "reference_vs_exact": MAX_REFERENCE_MM},
            {"id": "nan", "reference_vs_exact": float("nan")}, {"id": "none"}]
    assert self_contradicting(rows) == ["bad"]
