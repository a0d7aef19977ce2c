"""A corpus of bad inputs: each gets its one-line error naming the file (or its documented
acceptance), never a traceback and never a silent accept.

Most cases call the readers in-process (fast); a few run the real entry points
(``python -m planning.plan``, ``planning.evaluate``, ``lightning_modules.train``) to show that a
checkpoint carrying a pickle payload is refused before the payload can run.
"""

from __future__ import annotations

import json
import os
import shlex
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import optuna
import pytest
import torch
from dicom_files import write_dicom

from datamodules.annotations import AnnotationError, check_annotation, read_annotation
from datamodules.dataset_io import DatasetError, read_mask, write_sample
from datamodules.image_io import ImageReadError, header_size, load_image
from datamodules.sample import RaterAnnotation, Sample
from datamodules.validate import validate_dataset
from lightning_modules.checkpoints import (
    CheckpointError,
    SameFolderCheckpointIO,
    remove_stale_temporaries,
)
from lightning_modules.module import KneePlanModule, load_module
from lightning_modules.train import RunOptions, resume_checkpoint
from sweeps.run import TrialSeededTPESampler
from tests.small_datasets import annotation

REPO = Path(__file__).resolve().parents[1]
TINY = dict(image_size=64, num_stacks=2, depth=2, c1=4, c2=8, c_star=16,
            net_kwargs={"skip_channels": 4, "refine_channels": 4})  # configs/tiny.yaml


# ------------------------------------------------------------------------------ helpers
class Payload:
    """Unpickling this object creates ``marker`` (``open(marker, "w")``): a visible side effect."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def tiny_module(**hp) -> KneePlanModule:
    torch.manual_seed(0)
    return KneePlanModule(**{**TINY, **hp})


def save_ckpt(path: Path, module: KneePlanModule | None = None, **extra) -> Path:
    """A Lightning-like checkpoint of plain types (what training writes, in miniature)."""
    module = module or tiny_module()
    state = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
             "epoch": 0, "global_step": 0, "optimizer_states": [], "loops": {}, **extra}
    torch.save(state, path)
    return path


def one_line(text: str) -> str:
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got {lines}"
    assert "Traceback" not in lines[0]
    return lines[0]


# ------------------------------------------------------------------ checkpoints (bullets 1, 2)
def _write_bad_checkpoint(kind: str, tmp: Path) -> Path:
    p = tmp / f"{kind}.ckpt"
    good = save_ckpt(tmp / "good.ckpt")
    if kind == "missing":
        pass
    elif kind == "folder":
        p.mkdir()
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "fifo":
        os.mkfifo(p)
    elif kind == "random":
        p.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "truncated":
        p.write_bytes(good.read_bytes()[:3000])
    elif kind == "plain_state_dict":
        torch.save(tiny_module().state_dict(), p)
    elif kind == "list":
        torch.save([1, 2, 3], p)
    elif kind == "nan_weights":
        m = tiny_module()
        with torch.no_grad():
            next(m.parameters()).fill_(float("nan"))
        save_ckpt(p, m)
    elif kind == "pickle_payload":
        save_ckpt(p, extra=Payload(tmp / "PAYLOAD_RAN"))
    elif kind == "other_architecture":
        save_ckpt(p, tiny_module(c_star=8))
    return p


CHECKPOINT_CASES = {
    "missing": "no such checkpoint file",
    "folder": "is a folder",
    "empty": "empty (0 bytes)",
    "fifo": "not a regular file",
    "random": "truncated, or not a file written by torch.save",
    "truncated": "truncated, or not a file written by torch.save",
    "plain_state_dict": "plain state_dict",
    "list": "holds a list",
    "nan_weights": "NaN or infinity",
    "pickle_payload": "refused",
}


@pytest.mark.parametrize("kind", sorted(CHECKPOINT_CASES))
def test_bad_checkpoint_is_refused_in_one_line(kind, tmp_path):
    path = _write_bad_checkpoint(kind, tmp_path)
    from planning.model_io import load_checkpoint  # the Lightning-free loader of plan/export

    for load in (load_module, load_checkpoint):
        with pytest.raises(CheckpointError) as err:
            load(path)
        line = one_line(err.value)
        assert str(path) in line and CHECKPOINT_CASES[kind] in line, load.__name__
    assert not (tmp_path / "PAYLOAD_RAN").exists()


def test_checkpoint_of_another_architecture_cannot_resume(tmp_path):
    path = _write_bad_checkpoint("other_architecture", tmp_path)
    with pytest.raises(CheckpointError) as err:
        resume_checkpoint(RunOptions(resume=str(path)), tiny_module())
    line = one_line(err.value)
    assert str(path) in line and "another network architecture" in line
    # the way out (user walkthrough: a paper-preset run resumed with the CPU preset)
    assert line.endswith(f"resume with the run's own settings (make train RESUME={path}, "
                         "without CONFIG or DATA: its config.yaml is used)")


def test_weights_only_checkpoint_cannot_resume_but_loads_for_inference(tmp_path):
    path = save_ckpt(tmp_path / "w.ckpt")
    state = torch.load(path, weights_only=True)
    for key in ("optimizer_states", "loops"):
        del state[key]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="holds no training state"):
        resume_checkpoint(RunOptions(resume=str(path)), tiny_module())
    module = load_module(path)  # documented acceptance: plan/evaluate can use it
    for a, b in zip(module.state_dict().values(), tiny_module().state_dict().values(),
                    strict=True):
        torch.testing.assert_close(a, b)


def test_resume_last_without_any_run_is_one_line(tmp_path):
    with pytest.raises(CheckpointError) as err:
        resume_checkpoint(RunOptions(name="none", root=str(tmp_path), resume="last"),
                          tiny_module())
    assert "--resume last" in one_line(err.value)


def _run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.slow  # three fresh interpreters (~15-25 s each on 2 busy cores); runs in make test
@pytest.mark.parametrize("entry", ["plan", "evaluate", "train"])
def test_pickle_payload_never_runs_through_the_entry_points(entry, tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    ckpt = save_ckpt(tmp_path / "shared model.ckpt", extra=Payload(marker))
    if entry == "plan":
        image = tmp_path / "knee.png"
        cv2.imwrite(str(image), (np.random.default_rng(0).uniform(0, 255, (64, 80))
                                 ).astype(np.uint8))
        res = _run("planning.plan", "--image", str(image), "--ckpt", str(ckpt),
                   "--out", str(tmp_path / "plans"), cwd=tmp_path)
    elif entry == "evaluate":
        res = _run("planning.evaluate", "--ckpt", str(ckpt), "--n-phantoms", "1",
                   "--out", str(tmp_path / "ev"), cwd=tmp_path)
    else:
        res = _run("lightning_modules.train", "--config", str(REPO / "configs" / "tiny.yaml"),
                   "--run.root", str(tmp_path / "runs"), "--resume", str(ckpt), cwd=tmp_path)
    assert not marker.exists(), "the pickle payload ran"
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    naming = [ln for ln in res.stderr.splitlines() if str(ckpt) in ln]
    assert len(naming) == 1 and "refused" in naming[0], res.stderr[-2000:]
    assert not (tmp_path / "runs").exists()  # refused before a run folder was made


# ------------------------------------------------------------------ annotations (bullet 3)
def _ann(**change) -> dict:
    return annotation('k', **change)


ANNOTATION_CASES = {
    "landmark_booleans": (_ann(lm_p_blum=[True, False]), "not a pair of numbers"),
    "landmark_numeric_strings": (_ann(lm_p_tmc=["15", "25"]), "not a pair of numbers"),
    "landmark_nested_lists": (_ann(lm_p_tmc=[[15], [25]]), "not a pair of numbers"),
    "landmark_three_values": (_ann(lm_p_tmc=[1, 2, 3]), "expected [x, y]"),
    "landmark_missing": (_ann(r_landmarks={"p_blum": [1, 2]}), "missing landmark p_tmc"),
    "landmark_outside": (_ann(lm_p_blum=[500, 12]), "outside the 50x40"),
    "cortex_string_point": (_ann(r_cortex_line=[[1, 2], "3,4"]), "expected [x, y]"),
    "cortex_one_point": (_ann(r_cortex_line=[[1, 2]]), "at least two points"),
    "cortex_coincide": (_ann(r_cortex_line=[[1, 2], [1, 2]]), "coincide"),
    "spacing_true": (_ann(pixel_spacing_mm=True), "pixel_spacing_mm"),
    "spacing_string": (_ann(pixel_spacing_mm="0.14"), "pixel_spacing_mm"),
    "spacing_zero": (_ann(pixel_spacing_mm=0), "must be positive"),
    "spacing_negative": (_ann(pixel_spacing_mm=[0.1, -0.1]), "must be positive"),
    "spacing_huge": (_ann(pixel_spacing_mm=1e300), "at most 1000"),
    "spacing_nan": (_ann(pixel_spacing_mm=float("nan")), "must be positive"),
    "spacing_one_element": (_ann(pixel_spacing_mm=[0.1]), "pixel_spacing_mm"),
    "version_true": (_ann(schema_version=True), "unknown schema_version"),
    "id_number": (_ann(id=7), "missing or empty 'id'"),
    "raters_empty": (_ann(raters=[]), "non-empty list"),
    "rater_not_object": (_ann(raters=[[1, 2]]), "must be an object"),
    "side_number": (_ann(side=3), "'side'"),
    "meta_list": (_ann(meta=[1]), "'meta'"),
    "top_level_list": ([1, 2], "top level must be a JSON object"),
}


@pytest.mark.parametrize("case", sorted(ANNOTATION_CASES))
def test_bad_annotation_is_an_error(case, tmp_path):
    data, expected = ANNOTATION_CASES[case]
    check = check_annotation(data, "k", "k.png", shape=(40, 50))
    assert any(expected in e for e in check.errors), check.errors
    path = tmp_path / "k.json"
    path.write_text(json.dumps(data))
    if case != "landmark_outside":  # the reader has no image shape; the validator checks it
        with pytest.raises(AnnotationError) as err:
            read_annotation(path)
        assert one_line(err.value).startswith(str(path))


def test_clean_annotation_passes_the_one_checker():
    assert check_annotation(_ann(), "k", "k.png", shape=(40, 50)).errors == []


@pytest.mark.parametrize("raw", [
    "[" * 100_000 + "]" * 100_000,                       # RecursionError in json
    '{"schema_version": 1, "meta": ' + '{"a":' * 50_000 + "1" + "}" * 50_001,
    "\xff\xfe not utf-8",
    "{not json",
])
def test_unreadable_annotation_json_is_one_line(raw, tmp_path):
    path = tmp_path / "k.json"
    path.write_bytes(raw.encode("latin-1"))
    with pytest.raises(AnnotationError) as err:
        read_annotation(path)
    assert one_line(err.value).startswith(f"{path}: cannot read JSON")


# ------------------------------------------------------------------- masks and images
def _png(path: Path, arr: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), arr)
    return path


def test_masks_one_reader(tmp_path):
    m = np.zeros((40, 50), np.uint8)
    m[5:20, 5:20] = 255
    gray_rgb = _png(tmp_path / "rgb_gray.png", np.dstack([m, m, m]))
    np.testing.assert_array_equal(read_mask(gray_rgb, (40, 50)), m > 0)  # documented accept
    colour = np.dstack([m, m, np.zeros_like(m)])
    bad = {
        "colour": (_png(tmp_path / "colour.png", colour), "colour mask"),
        "nonbinary": (_png(tmp_path / "nb.png", (m // 255) * np.arange(50, dtype=np.uint8)),
                      "non-binary"),
        "size": (_png(tmp_path / "size.png", m[:30]), "differs from its image"),
        "missing": (tmp_path / "none.png", "missing bone mask"),
        "garbage": (tmp_path / "garbage.png", "unreadable or truncated mask"),
    }
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    for name, (path, expected) in bad.items():
        with pytest.raises(DatasetError) as err:
            read_mask(path, (40, 50))
        line = one_line(err.value)
        assert line.startswith(str(path)) and expected in line, name


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG signature and IHDR claiming w x h (what a decompression bomb starts with)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk + b"\0" * 64)
    return path


def test_pixel_limit_is_read_from_the_header_before_decoding(tmp_path, monkeypatch):
    bomb = _png_header_only(tmp_path / "bomb.png", 16000, 16000)
    with pytest.raises(ImageReadError) as err:
        load_image(bomb)
    assert "16000 x 16000 px exceeds the limit of 40 megapixels" in one_line(err.value)
    # every format's header is read without decoding: a small limit refuses small files
    img = (np.arange(40 * 50) % 251).reshape(40, 50).astype(np.uint16)
    import tifffile

    files = {"png": _png(tmp_path / "a.png", img), "jpg": _png(tmp_path / "a.jpg",
                                                                img.astype(np.uint8))}
    tifffile.imwrite(tmp_path / "a.tif", img)
    files["tif"] = tmp_path / "a.tif"
    write_dicom(tmp_path / "a.dcm", img)
    files["dcm"] = tmp_path / "a.dcm"
    monkeypatch.setenv("KNEEPLAN_MAX_PIXELS", "1999")
    for name, path in files.items():
        assert header_size(path)[:2] == (50, 40), name
        if name == "jpg":
            continue  # JPEG decoding is another module's; the header is what matters here
        with pytest.raises(ImageReadError, match="exceeds the limit"):
            load_image(path)
    monkeypatch.setenv("KNEEPLAN_MAX_PIXELS", "2000")
    assert load_image(files["png"]).image.shape == (40, 50)


def test_a_file_larger_than_any_image_within_the_limit_is_not_read(tmp_path, monkeypatch):
    """A small header followed by gigabytes (here a sparse 40 MB file against a 1000 px limit):
    refused from its size, before ``read_bytes`` would load it."""
    big = _png_header_only(tmp_path / "big.png", 20, 20)
    with big.open("r+b") as fh:
        fh.truncate(40 * 1024**2)
    monkeypatch.setenv("KNEEPLAN_MAX_PIXELS", "1000")
    with pytest.raises(ImageReadError) as err:
        load_image(big)
    assert "the file is 40 MB, more than an image within the limit" in one_line(err.value)
    assert str(big) in one_line(err.value)


@pytest.mark.parametrize("kind", ["empty", "random", "folder", "fifo", "missing"])
def test_bad_image_file_is_one_line(kind, tmp_path):
    path = tmp_path / "x.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(1).bytes(500))
    elif kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    assert one_line(err.value).startswith(str(path))


# ------------------------------------------------------------------ whole dataset folders
def _sample(sample_id: str, image: np.ndarray | None = None) -> Sample:
    masks = np.zeros((4, 40, 50), np.uint8)
    masks[0, 5:30, 10:30] = 1  # each bone its own region (identical masks are an error)
    masks[1, 5:12, 32:40] = 1
    masks[2, 31:39, 10:30] = 1
    masks[3, 31:39, 32:40] = 1
    rater = RaterAnnotation(np.array([[20.0, 12.0], [15.0, 25.5]]),
                            np.array([[12.0, 2.0], [13.0, 20.0]]), "r1")
    img = np.random.default_rng(0).uniform(0, 1, (40, 50)) if image is None else image
    return Sample(sample_id, img.astype(np.float32), masks, [rater], (0.2, 0.2), "annotation")


def _messages(report) -> tuple[list[str], list[str]]:
    return [str(i) for i in report.errors], [str(i) for i in report.warnings]


def test_blank_image_is_an_error(tmp_path):
    write_sample(tmp_path, _sample("a"))
    write_sample(tmp_path, _sample("b", np.zeros((40, 50))))
    errors, _ = _messages(validate_dataset(tmp_path))
    assert len(errors) == 1 and "b.png: blank image" in errors[0]


def test_symlink_loop_in_images_is_an_error(tmp_path):
    write_sample(tmp_path, _sample("a"))
    write_sample(tmp_path, _sample("b"))
    loop = tmp_path / "images" / "loop.png"
    os.symlink(loop, loop)
    (tmp_path / "images" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(tmp_path / "images" / "pipe.png")
    errors, _ = _messages(validate_dataset(tmp_path))
    assert any("pipe.png: not a regular file" in e for e in errors), errors
    assert any("loop.png: symlink loop" in e for e in errors), errors
    assert any("dangling.png: broken symlink" in e for e in errors), errors


def test_annotation_with_wrong_types_fails_the_validator(tmp_path):
    write_sample(tmp_path, _sample("a"))
    write_sample(tmp_path, _sample("b"))
    path = tmp_path / "annotations" / "b.json"
    data = json.loads(path.read_text())
    data["pixel_spacing_mm"] = True
    data["raters"][0]["landmarks"]["p_blum"] = [True, False]
    path.write_text(json.dumps(data))
    errors, _ = _messages(validate_dataset(tmp_path))
    assert any("b.json: pixel_spacing_mm" in e for e in errors)
    assert any("b.json: raters[0].landmarks.p_blum: not a pair of numbers" in e for e in errors)


def test_one_image_dataset_warns_and_trains_on_a_fallback_split(tmp_path):
    from datamodules.datamodule import KneeDataModule

    write_sample(tmp_path, _sample("only"))
    errors, warnings = _messages(validate_dataset(tmp_path))
    assert not errors and any("only one image" in w for w in warnings)
    dm = KneeDataModule(data_root=str(tmp_path), size=32, batch_size=1, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_dataloader()) == 1 and len(dm.val_dataloader()) == 1


# --------------------------------------------------------------- commands and small fixes
def test_makefile_passes_paths_with_spaces_and_quotes_as_one_argument():
    name, ckpt = "a b ü.png", "it's here.ckpt"
    out = subprocess.run(["make", "-n", "plan", f"IMAGE={name}", f"CKPT={ckpt}",
                          "ARGS=--decode quadratic"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.replace("\\\n", " ")  # continued recipe lines
    line = next(ln for ln in out.splitlines() if "planning.plan" in ln)
    words = shlex.split(line)
    assert words[words.index("--image") + 1] == name
    assert words[words.index("--ckpt") + 1] == ckpt
    assert words[-2:] == ["--decode", "quadratic"]


@pytest.mark.parametrize("side", [33, 64, 512])
def test_evaluate_phantom_max_side_works_for_any_generator_size(side, tmp_path):
    from planning.evaluate import main

    assert main(["--oracle", "--n-phantoms", "1", "--n-boot", "20", "--phantom-max-side",
                 str(side), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "per_image.csv").is_file()


@pytest.mark.parametrize("side", [1, 32, 6325])  # 6325^2 > 40 MP, the readers' limit
def test_evaluate_phantom_max_side_outside_what_readers_take_is_a_usage_error(side, tmp_path,
                                                                               capsys):
    from planning.evaluate import main

    assert main(["--oracle", "--phantom-max-side", str(side), "--out", str(tmp_path)]) == 2
    assert (f"--phantom-max-side must be 33..6324 (a side the readers take; KNEEPLAN_MAX_PIXELS"
            f" sets the top), got {side}") in one_line(capsys.readouterr().err)


def test_concurrent_sweep_workers_draw_distinct_trials():
    """Two workers on one new study, same seed, asking in turn: all draws differ, and a trial's
    draw depends only on its number (a fresh study's trial 0 is the same)."""
    storage = optuna.storages.InMemoryStorage()
    opts = dict(seed=0, n_startup_trials=10, multivariate=True, constant_liar=True)
    a = optuna.create_study(study_name="s", storage=storage, sampler=TrialSeededTPESampler(**opts))
    b = optuna.load_study(study_name="s", storage=storage, sampler=TrialSeededTPESampler(**opts))
    draws = []
    for study in (a, b, a, b):
        t = study.ask()
        draws.append((t.suggest_float("beta", 0, 2), t.suggest_float("alpha", 0, 3)))
    assert len(set(draws)) == 4
    fresh = optuna.create_study(sampler=TrialSeededTPESampler(**opts)).ask()
    assert (fresh.suggest_float("beta", 0, 2), fresh.suggest_float("alpha", 0, 3)) == draws[0]


def test_checkpoint_temporaries_stay_beside_the_target_and_are_cleaned(tmp_path, monkeypatch):
    import tempfile

    sys_tmp = tmp_path / "systmp"
    sys_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(sys_tmp))
    io = SameFolderCheckpointIO()
    target = tmp_path / "ck" / "last.ckpt"
    io.save_checkpoint({"w": torch.ones(3)}, target)
    assert torch.load(target, weights_only=True)["w"].sum() == 3
    with pytest.raises(Exception):  # noqa: B017 - torch.save of a lambda fails mid-write
        io.save_checkpoint({"w": lambda: 0}, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    assert not list(sys_tmp.iterdir())
    stale = target.parent / ".last.ckpt.999.tmp"  # left by a killed run
    stale.write_bytes(b"partial")
    assert remove_stale_temporaries(target.parent) == [stale] and not stale.exists()


@pytest.mark.parametrize("value", ["0", "-5"])
def test_plan_refuses_progress_every_below_one(tmp_path, capsys, value):
    from planning.plan import main

    image = _png(tmp_path / "knee.png", np.zeros((64, 80), np.uint8))
    good = save_ckpt(tmp_path / "good.ckpt")
    assert main(["--image", str(image), "--ckpt", str(good), "--out", str(tmp_path),
                 "--progress-every", value]) == 2
    assert "--progress-every" in one_line(capsys.readouterr().err)


def test_plan_refuses_nan_checkpoint_and_absurd_spacing_with_status_2(tmp_path, capsys):
    from planning.plan import main

    image = _png(tmp_path / "knee.png",
                 (np.random.default_rng(0).uniform(0, 255, (64, 80))).astype(np.uint8))
    nan = _write_bad_checkpoint("nan_weights", tmp_path)
    assert main(["--image", str(image), "--ckpt", str(nan), "--out", str(tmp_path)]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(nan) in line and "NaN" in line and str(image) not in line
    good = save_ckpt(tmp_path / "good.ckpt")
    assert main(["--image", str(image), "--ckpt", str(good), "--out", str(tmp_path),
                 "--spacing", "1e300"]) == 2  # a bad argument (README: exit codes)
    assert "--spacing" in one_line(capsys.readouterr().err)


REVIEW_CONFIG_CASES = {
    "missing": (None, "cannot read"),
    "not_yaml": ("min_peak: [\n", "not valid YAML"),
    "a_list": ("- 1\n- 2\n", "expected a mapping"),
    "unknown_key": ("min_pek: 0.2\n", "unknown review thresholds"),
    "a_string": ("min_peak: high\n", "must be a finite number"),
    "a_bool": ("min_peak: true\n", "must be a finite number"),
    "nan": ("min_peak: .nan\n", "must be a finite number"),
}


@pytest.mark.parametrize("kind", sorted(REVIEW_CONFIG_CASES))
@pytest.mark.parametrize("entry", ["plan", "evaluate"])
def test_bad_review_config_is_one_line_with_status_2(kind, entry, tmp_path, capsys):
    text, expected = REVIEW_CONFIG_CASES[kind]
    cfg = tmp_path / "review.yaml"
    if text is not None:
        cfg.write_text(text)
    good = save_ckpt(tmp_path / "good.ckpt")
    if entry == "plan":
        from planning.plan import main

        image = _png(tmp_path / "knee.png",
                     (np.random.default_rng(0).uniform(0, 255, (64, 80))).astype(np.uint8))
        argv = ["--image", str(image), "--ckpt", str(good), "--out", str(tmp_path)]
    else:
        from planning.evaluate import main

        argv = ["--ckpt", str(good), "--n-phantoms", "1", "--out", str(tmp_path / "ev")]
    assert main([*argv, "--review-config", str(cfg)]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(cfg) in line and expected in line


def test_damaged_mask_is_one_line_and_prints_nothing(tmp_path, capfd):
    m = np.zeros((40, 50), np.uint8)
    m[5:20, 5:20] = 255
    data = bytearray(_png(tmp_path / "ok.png", m).read_bytes())
    data[data.index(b"IDAT") + 12] ^= 0xFF  # compressed pixels damaged: libpng complains
    bad = tmp_path / "crc.png"
    bad.write_bytes(bytes(data))
    with pytest.raises(DatasetError) as err:
        read_mask(bad, (40, 50))
    line = one_line(err.value)
    assert line.startswith(str(bad)) and "libpng error" in line, line
    assert capfd.readouterr().err == ""


def test_dicom_with_a_tiff_like_preamble_is_held_to_the_pixel_limit(tmp_path):
    """pydicom's own CT_small/MR_small start their 128-byte preamble with II*\\0 (a TIFF magic):
    the header must still be read as DICOM, so the pixel cap applies."""
    import pydicom
    from dicom_files import write_dicom

    path = tmp_path / "big.dcm"
    write_dicom(path, np.zeros((40, 50), np.uint16), bits=12)
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 20000, 20000  # a header that asks for 400 megapixels
    ds.save_as(path, enforce_file_format=True)
    raw = bytearray(path.read_bytes())
    raw[:4] = b"II*\x00"
    path.write_bytes(bytes(raw))
    with pytest.raises(ImageReadError) as err:
        load_image(path)
    assert "20000 x 20000 px exceeds the limit" in one_line(err.value)


@pytest.mark.parametrize(("module", "flag"), [("planning.plan", "--out"),
                                              ("planning.plan", "--ckpt"),
                                              ("planning.plan", "--summary"),
                                              ("planning.evaluate", "--out"),
                                              ("planning.evaluate", "--data-root")])
def test_an_empty_path_flag_is_a_usage_error(tmp_path, capsys, monkeypatch, module, flag):
    """An unset shell variable (``--out "$OUT"``) was the current folder: plans landed there."""
    import importlib

    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(module).main
    argv = {"planning.plan": ["--image", "knee.png", "--ckpt", "m.ckpt"],
            "planning.evaluate": ["--oracle"]}[module]
    with pytest.raises(SystemExit) as stop:
        main([*argv, flag, ""])
    assert stop.value.code == 2
    assert f"argument {flag}: empty path" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
