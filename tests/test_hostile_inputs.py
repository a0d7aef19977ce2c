"""Inputs found by fuzzing `make plan`: each once crashed the process, took GBs, or raised a
traceback; each now gets a plan or one line naming the file and the problem."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from model_files import exported_tiny_model, phantom_images, trained_tiny_checkpoint

from datamodules.image_io import ImageReadError, check_pixel_limit, header_size

REPO = Path(__file__).resolve().parents[1]


def plan_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m planning.plan`` in a fresh interpreter (a crash there is a status here)."""
    return subprocess.run([sys.executable, "-m", "planning.plan", *args], cwd=REPO,
                          capture_output=True, timeout=180)


def test_file_names_that_are_not_utf8(tmp_path_factory, tmp_path):
    """OpenCV's binding crashed the process (SIGSEGV) on a str holding a lone surrogate: in
    the overlay's title and in cv2.imwrite's path; the summary CSV refused to encode it."""
    model = exported_tiny_model(tmp_path_factory)
    good = phantom_images(tmp_path_factory, n=1)[0]
    folder = os.fsencode(tmp_path / "in")
    os.makedirs(folder)
    shutil.copy(good, folder + b"/knee\xff.png")
    with open(folder + b"/bad\xfe.png", "wb") as fh:
        fh.write(b"not a png")
    out = tmp_path / "out"
    one = plan_cli("--image", os.fsdecode(folder + b"/knee\xff.png"), "--ckpt", str(model),
                   "--out", str(out))
    assert one.returncode == 0, one.stderr[-2000:]
    assert os.path.isfile(os.fsencode(out) + b"/knee\xff_plan.png")
    report = json.loads(Path(os.fsdecode(os.fsencode(out) + b"/knee\xff_plan.json")).read_text())
    assert report["schoettle_point"] is not None
    many = plan_cli("--image", os.fsdecode(folder), "--ckpt", str(model), "--out", str(out))
    assert many.returncode == 1 and b"Traceback" not in many.stderr  # one bad image, reported
    rows = (out / "summary.csv").read_text().splitlines()
    assert len(rows) == 3 and any("bad\\udcfe.png" in r and ",failed," in r for r in rows)


def test_jpeg_size_behind_fill_bytes(tmp_path):
    """A legal 0xFF fill byte before the SOF marker hid a 30000^2 size from the header check
    (OpenCV then decoded 2.7 GB from 1.6 kB)."""
    ok, buf = cv2.imencode(".jpg", np.full((16, 16), 128, np.uint8))
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 30000, 30000)
    data[sof:sof] = b"\xff\xff"  # two fill bytes
    path = tmp_path / "bomb.jpg"
    path.write_bytes(bytes(data))
    assert header_size(path) == (30000, 30000, 1)
    with pytest.raises(ImageReadError, match="30000 x 30000 px exceeds the limit"):
        check_pixel_limit(path)


def test_formats_the_header_check_cannot_read_hit_opencvs_cap(tmp_path_factory, tmp_path):
    """A 2 kB WebP of 7000^2 px named .tif (tifffile fails, OpenCV decodes anything): refused
    by OpenCV's own decode cap, set to our limit before cv2 loads, not after decoding it."""
    ok, buf = cv2.imencode(".webp", np.zeros((7000, 7000), np.uint8),
                           [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert ok and len(buf) < 50_000
    path = tmp_path / "knee.tif"
    path.write_bytes(buf.tobytes())
    assert header_size(path) is None
    res = plan_cli("--image", str(path), "--ckpt", str(exported_tiny_model(tmp_path_factory)),
                   "--out", str(tmp_path / "out"))
    err = res.stderr.decode()
    assert res.returncode == 1 and err.count("\n") == 1, err
    assert "knee.tif: the image inside exceeds the limit of 40 megapixels" in err


def test_export_description_must_name_every_output(tmp_path_factory, tmp_path):
    model = exported_tiny_model(tmp_path_factory)
    onnx = tmp_path / "m.onnx"
    shutil.copy(model, onnx)
    meta = json.loads(model.with_suffix(".json").read_text())
    meta["outputs"] = ["seg"]
    onnx.with_suffix(".json").write_text(json.dumps(meta))
    image = phantom_images(tmp_path_factory, n=1)[0]
    res = plan_cli("--image", str(image), "--ckpt", str(onnx), "--out", str(tmp_path / "o"))
    err = res.stderr.decode()
    assert res.returncode == 2 and "'outputs' lacks lm, roi" in err and "Traceback" not in err


def test_thread_and_worker_counts_are_bounded(tmp_path_factory, tmp_path):
    image = phantom_images(tmp_path_factory, n=1)[0]
    model = exported_tiny_model(tmp_path_factory)
    for flag in ("--threads", "--workers"):
        res = plan_cli("--image", str(image), "--ckpt", str(model), flag, "100000")
        assert res.returncode == 2 and b"must be 1..64" in res.stderr


def test_codec_fallbacks_of_a_checkpoint_are_bounded(tmp_path_factory, tmp_path):
    """Without a saved codec, the datamodule's size/sigma and the stored YAML config are the
    fallbacks: bounded like a saved codec, and a huge YAML text is not parsed (8 MB took 62 s)."""
    from planning.model_io import load_checkpoint

    src = torch.load(trained_tiny_checkpoint(tmp_path_factory), weights_only=True)
    del src["hyper_parameters"]["heatmap_codec"]
    del src["datamodule_hyper_parameters"]  # (its size and sigma come first; set per case)
    cases = {
        "huge.ckpt": ({"datamodule_hyper_parameters": {"size": 10**9, "sigma": 5.0}},
                      "input_size=1000000000"),
        "nan.ckpt": ({"datamodule_hyper_parameters": {"size": 64, "sigma": float("nan")}},
                     "sigma=nan"),
        "yaml_nan.ckpt": ({"kneeplan_config": "data:\n  sigma: .nan\n"}, "sigma=nan"),
    }
    for name, (extra, message) in cases.items():
        path = tmp_path / name
        torch.save({**src, **extra}, path)
        with pytest.raises(Exception, match=message) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)
    big = "data:\n  sigma: 3.0\nx: [" + "1, " * 600_000 + "]\n"  # 1.8 MB: not parsed
    torch.save({**src, "kneeplan_config": big}, tmp_path / "big.ckpt")
    assert load_checkpoint(tmp_path / "big.ckpt").codec.sigma == 6.0  # the default
    torch.save({**src, "kneeplan_config": "data:\n  sigma: 3.0\n"}, tmp_path / "small.ckpt")
    assert load_checkpoint(tmp_path / "small.ckpt").codec.sigma == 3.0
