"""Third fuzz round of ``python -m planning.plan`` (model files, outputs, messages): each case
failed before its fix (a silently wrong plan, a hang, blame on the image, or an error of several
lines) and is now one line with the right exit status."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.model_files import REPO, exported_tiny_model, phantom_images, trained_tiny_checkpoint


def plan_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m planning.plan`` in a fresh interpreter; a hang is a TimeoutExpired here."""
    return subprocess.run([sys.executable, "-m", "planning.plan", *map(str, args)], cwd=REPO,
                          capture_output=True, timeout=timeout)


def one_error_line(res: subprocess.CompletedProcess, status: int, *words: bytes) -> None:
    """Exit ``status``, one ``plan: error:`` line naming ``words``, no traceback or warnings."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == status, res.stderr
    assert len(lines) == 1 and lines[0].startswith(b"plan: error: "), res.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def copy_export(tmp_path, tmp_path_factory, name: str, **meta_changes) -> tuple:
    """The tiny export copied to ``tmp_path/name/m.onnx`` with its description changed."""
    src = exported_tiny_model(tmp_path_factory)
    d = tmp_path / name
    d.mkdir()
    shutil.copy(src, d / "m.onnx")
    meta = json.loads(src.with_suffix(".json").read_text())
    meta.update(meta_changes)
    (d / "m.json").write_text(json.dumps(meta))
    return d / "m.onnx", meta


@pytest.mark.parametrize("heatmap_size", [1, 32])
def test_heatmap_size_other_than_the_networks_is_refused(tmp_path_factory, tmp_path,
                                                         heatmap_size):
    """Before: accepted, landmarks decoded at (4877, 13513) in a 250 x 297 image, exit 0."""
    good = phantom_images(tmp_path_factory, n=1)[0]
    base = json.loads(exported_tiny_model(tmp_path_factory).with_suffix(".json").read_text())
    model, _ = copy_export(tmp_path, tmp_path_factory, "hm",
                           codec={**base["codec"], "heatmap_size": heatmap_size})
    one_error_line(plan_cli("--image", good, "--ckpt", model, "--out", tmp_path / "o"), 2,
                   b"heatmap_size", b"m.json")
    ck = torch.load(trained_tiny_checkpoint(tmp_path_factory), weights_only=True)
    ck["hyper_parameters"]["heatmap_codec"]["heatmap_size"] = heatmap_size
    torch.save(ck, tmp_path / "hm.ckpt")
    one_error_line(plan_cli("--image", good, "--ckpt", tmp_path / "hm.ckpt", "--out",
                            tmp_path / "o2"), 2, b"heatmap_size", b"hm.ckpt")


def test_model_that_outputs_nan_is_the_models_fault(tmp_path_factory, tmp_path):
    """Finite but huge weights: before, exit 1 'planning IMAGE failed: ... NaN' (the image
    blamed), and in batch mode every image 'failed'."""
    good = phantom_images(tmp_path_factory, n=2)
    ck = torch.load(trained_tiny_checkpoint(tmp_path_factory), weights_only=True)
    ck["state_dict"] = {k: v * 1e30 if v.is_floating_point() and v.ndim == 4 else v
                        for k, v in ck["state_dict"].items()}
    torch.save(ck, tmp_path / "huge.ckpt")
    one_error_line(plan_cli("--image", good[0], "--ckpt", tmp_path / "huge.ckpt", "--out",
                            tmp_path / "o"), 2, b"unusable model", b"huge.ckpt", b"NaN")
    res = plan_cli("--image", good[0].parent, "--ckpt", tmp_path / "huge.ckpt", "--out",
                   tmp_path / "ob")
    assert res.returncode == 2 and b"Traceback" not in res.stderr
    assert res.stderr.splitlines()[-1].startswith(b"plan: error: unusable model")


def test_model_output_shape_is_checked():
    """A predictor whose maps are not (B, C, S, S): ModelOutputError, not a plan off the image."""
    from planning.predict import ModelOutputError, check_maps

    good = {"seg": np.zeros((1, 4, 8, 8)), "lm": np.zeros((1, 2, 8, 8)),
            "roi": np.zeros((1, 1, 8, 8))}
    assert check_maps(good, 1, 8)["lm"].dtype == np.float32
    with pytest.raises(ModelOutputError, match="'lm' output has shape"):
        check_maps({**good, "lm": np.zeros((1, 2, 4, 4))}, 1, 8)
    with pytest.raises(ModelOutputError, match="no 'roi'"):
        check_maps({k: v for k, v in good.items() if k != "roi"}, 1, 8)
    with pytest.raises(ModelOutputError, match="NaN"):
        check_maps({**good, "seg": np.full((1, 4, 8, 8), np.nan)}, 1, 8)


@pytest.mark.parametrize("name, value, words", [
    ("seg", 10.6, "not probabilities"),  # an export whose sigmoid was removed (logits)
    ("seg", -19.5, "not probabilities"),
    ("roi", 9.75e29, "'roi' output reaches"),  # planned unflagged with roi_peak 1e30 before
    ("lm", -2e3, "'lm' output reaches"),
])
def test_model_outputs_out_of_range_are_the_models_fault(name, value, words):
    """Red-team round 6: only shape and NaN were checked."""
    from planning.predict import ModelOutputError, check_maps

    good = {"seg": np.full((1, 4, 8, 8), 0.5), "lm": np.zeros((1, 2, 8, 8)),
            "roi": np.zeros((1, 1, 8, 8))}
    bad = {**good, name: good[name].copy()}
    bad[name][0, 0, 3, 3] = value
    with pytest.raises(ModelOutputError, match=words):
        check_maps(bad, 1, 8)
    edge = {**good, "seg": np.where(good["seg"] > 0, 1.0 + 5e-4, 0.0), "lm": good["lm"] + 999.0}
    check_maps(edge, 1, 8)  # sigmoid rounding and large but plausible maps pass


def test_pipes_never_block_planning(tmp_path_factory, tmp_path):
    """A FIFO as the export's description, as --ckpt or as --summary: before, the first and the
    last blocked for ever (killed at 60 s)."""
    good = phantom_images(tmp_path_factory, n=2)
    model, _ = copy_export(tmp_path, tmp_path_factory, "fifo")
    (model.with_suffix(".json")).unlink()
    os.mkfifo(model.with_suffix(".json"))
    one_error_line(plan_cli("--image", good[0], "--ckpt", model, "--out", tmp_path / "o",
                            timeout=60), 2, b"not a regular file")
    os.mkfifo(tmp_path / "fifo.ckpt")
    one_error_line(plan_cli("--image", good[0], "--ckpt", tmp_path / "fifo.ckpt", "--out",
                            tmp_path / "o", timeout=60), 2, b"not a regular file")
    one_error_line(plan_cli("--image", good[0], "--ckpt", tmp_path, "--out", tmp_path / "o"), 2,
                   b"is a folder")
    os.mkfifo(tmp_path / "summary.csv")
    one_error_line(plan_cli("--image", good[0].parent, "--ckpt", exported_tiny_model(
        tmp_path_factory), "--summary", tmp_path / "summary.csv", "--out", tmp_path / "ob",
        timeout=60), 2, b"--summary", b"not a regular file")


def test_bad_out_in_single_image_mode_is_a_usage_error_before_the_network(tmp_path_factory,
                                                                          tmp_path):
    """Before: exit 1 'planning IMAGE failed: [Errno 17] File exists', after the network ran."""
    good = phantom_images(tmp_path_factory, n=1)[0]
    model = exported_tiny_model(tmp_path_factory)
    (tmp_path / "afile").write_text("x")
    one_error_line(plan_cli("--image", good, "--ckpt", model, "--out", tmp_path / "afile"), 2,
                   b"is a file, not a folder")
    one_error_line(plan_cli("--image", good, "--ckpt", model, "--out",
                            tmp_path / "afile" / "sub"), 2, b"cannot create the output folder")


def test_newline_in_a_file_name_stays_one_line(tmp_path_factory, tmp_path):
    """Before: the raw name split the message over two lines (and for an unreadable checkpoint
    the reason was lost after the newline)."""
    model = exported_tiny_model(tmp_path_factory)
    good = phantom_images(tmp_path_factory, n=1)[0]
    (tmp_path / "empty\nname.png").write_bytes(b"")
    one_error_line(plan_cli("--image", tmp_path / "empty\nname.png", "--ckpt", model, "--out",
                            tmp_path / "o"), 1, b"empty\\nname.png", b"empty (0 bytes)")
    one_error_line(plan_cli("--image", tmp_path / "no\nsuch.png", "--ckpt", model, "--out",
                            tmp_path / "o"), 1, b"no\\nsuch.png: no such file")
    (tmp_path / "bad\nmodel.ckpt").write_bytes(b"PK\x03\x04 not a zip")
    one_error_line(plan_cli("--image", good, "--ckpt", tmp_path / "bad\nmodel.ckpt", "--out",
                            tmp_path / "o"), 2, b"bad\\nmodel.ckpt", b"not a readable checkpoint")


def test_sha256_null_is_an_absent_hash_and_empty_image_is_a_usage_error(tmp_path_factory,
                                                                        tmp_path):
    """``"sha256": null`` was reported as a damaged graph; ``--image ''`` planned the current
    folder."""
    good = phantom_images(tmp_path_factory, n=1)[0]
    model, _ = copy_export(tmp_path, tmp_path_factory, "nosha", sha256=None)
    res = plan_cli("--image", good, "--ckpt", model, "--out", tmp_path / "o")
    assert res.returncode == 0, res.stderr
    one_error_line(plan_cli("--image", "", "--ckpt", model, "--out", tmp_path / "o"), 2,
                   b"--image is empty")


def test_batch_refuses_a_bad_spacing_once(tmp_path_factory, tmp_path):
    """Before: the same line once per image, none naming the image."""
    good = phantom_images(tmp_path_factory, n=2)
    one_error_line(plan_cli("--image", good[0].parent, "--ckpt", exported_tiny_model(
        tmp_path_factory), "--spacing", "0", "--out", tmp_path / "o"), 2, b"--spacing")


def test_quantized_weights_are_one_line(tmp_path_factory, tmp_path):
    """Before: two multi-line torch warnings, then a line cut before its reason."""
    ck = torch.load(trained_tiny_checkpoint(tmp_path_factory), weights_only=True)
    ck["state_dict"] = {
        k: torch.quantize_per_tensor(v, 0.1, 0, torch.qint8)
        if v.is_floating_point() and v.ndim == 4 else v for k, v in ck["state_dict"].items()}
    torch.save(ck, tmp_path / "q.ckpt")
    one_error_line(plan_cli("--image", phantom_images(tmp_path_factory, n=1)[0], "--ckpt",
                            tmp_path / "q.ckpt", "--out", tmp_path / "o"), 2, b"quantized")


def test_annotation_naming_another_image_gives_no_spacing(tmp_path_factory, tmp_path):
    """``x.dcm`` beside ``x.png`` in ``images/``: the annotation of ``x.png`` (it names that
    file) gave the DICOM its spacing, overruling the DICOM's own PixelSpacing."""
    from planning.plan import annotation_spacing

    src = phantom_images(tmp_path_factory, n=1)[0]
    root = tmp_path / "ds"
    shutil.copytree(src.parent.parent, root)
    png = root / "images" / src.name
    assert annotation_spacing(png) is not None
    other = png.with_suffix(".jpg")
    shutil.copy(png, other)
    assert annotation_spacing(other, warn=False) is None


def test_batch_names_a_pipe_and_a_dangling_link_among_the_images(tmp_path_factory, tmp_path):
    """Before: a FIFO or a dangling symlink named *.png was skipped without a word."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(phantom_images(tmp_path_factory, n=1)[0], src / "a.png")
    os.mkfifo(src / "b.png")
    (src / "c.png").symlink_to(tmp_path / "gone.png")
    res = plan_cli("--image", src, "--ckpt", exported_tiny_model(tmp_path_factory), "--out",
                   tmp_path / "o", "--tta", "0", timeout=60)
    assert res.returncode == 1 and b"Traceback" not in res.stderr
    assert b"b.png: not a regular file" in res.stderr and b"c.png: no such file" in res.stderr
    rows = (tmp_path / "o" / "summary.csv").read_text().splitlines()
    assert len(rows) == 4 and sum(",ok," in r for r in rows) == 1


@pytest.mark.parametrize(("quality", "lossy"), [(60, True), (101, False)])
def test_webp_named_jpg_is_lossy_unless_lossless(tmp_path, quality, lossy):
    """A lossy WebP saved as .jpg got no lossy-compression warning (only JPEG bytes did)."""
    import cv2

    from datamodules.image_io import load_image

    img = (np.random.default_rng(0).random((64, 80)) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, quality])
    assert ok
    (tmp_path / "x.jpg").write_bytes(buf.tobytes())
    assert load_image(tmp_path / "x.jpg").lossy is lossy
