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
    meta = json.loads(model.with_suffix(".json").read_text())
    meta["codec"] = {**meta["codec"], "input_size": meta["input_size"] * 2}
    onnx.with_suffix(".json").write_text(json.dumps(meta))
    res = plan_cli("--image", str(image), "--ckpt", str(onnx), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and b"(inconsistent)" in res.stderr


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


@pytest.mark.parametrize("hp, size", [
    ({"num_stacks": 4, "depth": 4, "c1": 64, "c2": 128, "c_star": 256}, 256),  # the paper's
    ({"num_stacks": 2, "depth": 2, "c1": 4, "c2": 4, "c_star": 4, "norm": "batch",
      "net_kwargs": {"refine_channels": 4, "skip_channels": 2, "head_channels": 1}}, 64),
    ({"num_stacks": 1, "depth": 2, "c1": 2, "c2": 16, "c_star": 16, "norm": "group",
      "net_kwargs": {"refine_channels": 2, "skip_channels": 1}}, 96),
])
def test_conv_flop_matches_torchs_flop_counter(hp, size):
    """The load-time estimate (a tiny copy's conv output sizes, scaled) against torch's own
    FlopCounterMode on the real network: within 6 % (the counter also counts other ops)."""
    from torch.utils.flop_counter import FlopCounterMode

    from planning.model_io import build_network, conv_flop

    net = build_network(hp).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(torch.zeros(1, 1, size, size))
    assert conv_flop(net, hp, size) == pytest.approx(fc.get_total_flops(), rel=0.06)


def test_checkpoint_hyper_parameters_must_be_consistent_and_affordable(tmp_path_factory,
                                                                       tmp_path):
    """Each once loaded and then failed on every image (blamed on the image, status 1) or ran
    for minutes: half-precision weights now plan like float32 ones; complex weights, an input
    side the network cannot take, a codec for another input size and a network over the FLOP
    budget are refused at load, naming the file."""
    from planning.model_io import load_checkpoint

    src_path = trained_tiny_checkpoint(tmp_path_factory)
    src = torch.load(src_path, weights_only=True)

    def variant(name, hp=None, weights=None):
        ck = {**src, "hyper_parameters": {**src["hyper_parameters"], **(hp or {})},
              "state_dict": {k: (weights(v) if weights else v)
                             for k, v in src["state_dict"].items()}}
        torch.save(ck, tmp_path / name)
        return tmp_path / name

    half = load_checkpoint(variant("half.ckpt", weights=lambda v: v.half()
                                   if v.is_floating_point() else v))
    full = load_checkpoint(src_path)
    x = torch.rand(1, 1, full.image_size, full.image_size,  # (not the global RNG: order)
                   generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = (m.net(x).final["lm"] for m in (full, half))
    assert all(p.dtype == torch.float32 for p in half.net.parameters())
    # the half checkpoint's weights are rounded to 11 bits: close, not equal
    assert float((a - b).abs().mean()) < 5e-3 and float((a - b).abs().max()) < 0.1
    codec = src["hyper_parameters"]["heatmap_codec"]
    bad = {
        "complex.ckpt": ({}, lambda v: v.to(torch.complex64) if v.ndim == 4 else v,
                         "complex64"),
        "size.ckpt": ({"image_size": 40, "heatmap_codec": {**codec, "input_size": 40}}, None,
                      "image_size 40 does not fit its network"),
        "codec.ckpt": ({"heatmap_codec": {**codec, "input_size": 128}}, None,
                       "codec is for 128 px inputs, its network for 64 px"),
        "flop.ckpt": ({"c_star": 2048, "c2": 2048, "image_size": 512,
                       "heatmap_codec": {**codec, "input_size": 512}}, None,
                      "FLOP per 512 px image, more than"),
    }
    for name, (hp, weights, words) in bad.items():
        path = variant(name, hp, weights)
        with pytest.raises(Exception, match=words) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)


def test_plan_arguments_that_name_no_usable_setting(tmp_path_factory):
    image = phantom_images(tmp_path_factory, n=1)[0]
    ckpt = trained_tiny_checkpoint(tmp_path_factory)
    for args, words in ((["--tta", "-5"], b"--tta must be 0..64"),
                        (["--device", "meta"], b"expected cpu, cuda[:N], mps or xpu")):
        res = plan_cli("--image", str(image), "--ckpt", str(ckpt), *args)
        assert res.returncode == 2 and words in res.stderr, res.stderr


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "-5", "abc", "2.5"])
def test_a_bad_pixel_limit_in_the_environment_is_one_usage_line(tmp_path_factory, value):
    """KNEEPLAN_MAX_PIXELS=inf made every image fail ('cannot read the image (OverflowError')."""
    image = phantom_images(tmp_path_factory, n=1)[0]
    env = {**os.environ, "KNEEPLAN_MAX_PIXELS": value}
    res = subprocess.run([sys.executable, "-m", "planning.plan", "--image", str(image), "--ckpt",
                          str(exported_tiny_model(tmp_path_factory))], cwd=REPO, env=env,
                         capture_output=True, timeout=120)
    assert res.returncode == 2 and b"KNEEPLAN_MAX_PIXELS" in res.stderr
    assert res.stderr.count(b"\n") == 1


def test_when_cv2_came_first_files_of_unknown_size_are_refused_unread(tmp_path):
    """OpenCV reads its decode cap once, at import: a script that imports cv2 before kneeplan
    has none, so a file whose header does not give its size is refused instead of decoded."""
    ok, buf = cv2.imencode(".webp", np.zeros((100, 100), np.uint8))
    (tmp_path / "x.tif").write_bytes(buf.tobytes())
    code = ("import cv2\nimport datamodules\n"
            "from datamodules.pixel_limit import opencv_cap_active\n"
            "from datamodules.image_io import load_image\n"
            "assert not opencv_cap_active()\n"
            f"try:\n    load_image({str(tmp_path / 'x.tif')!r})\n"
            "except OSError as err:\n    print(err)\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    assert "OpenCV's decode cap is off in this process" in res.stdout
    from datamodules.pixel_limit import opencv_cap_active

    assert opencv_cap_active()  # this test process: conftest imports datamodules first


def test_state_dicts_that_are_not_dense_weights_say_what_they_are(tmp_path_factory, tmp_path):
    """A list, a sparse tensor or an extra key: each one line saying so (torch's own first
    line is "Error(s) in loading state_dict for MultiTaskSHGN:", which names nothing)."""
    from planning.model_io import load_checkpoint

    src = torch.load(trained_tiny_checkpoint(tmp_path_factory), weights_only=True)
    first = next(k for k, v in src["state_dict"].items() if v.ndim == 4)
    cases = {
        "list.ckpt": ({"state_dict": list(src["state_dict"].values())}, "is a list, not a mapping"),
        "sparse.ckpt": ({"state_dict": {**src["state_dict"],
                                        first: src["state_dict"][first].to_sparse()}},
                        "is a sparse_coo tensor, not a dense one"),
        "extra.ckpt": ({"state_dict": {**src["state_dict"], "net.extra": torch.zeros(1)}},
                       'Unexpected key\\(s\\) in state_dict: "extra"'),
    }
    for name, (extra, words) in cases.items():
        torch.save({**src, **extra}, tmp_path / name)
        with pytest.raises(Exception, match=words):
            load_checkpoint(tmp_path / name)


def test_second_fuzz_round_files(tmp_path):
    """TIFF pages with 200 samples (49 kB -> 7 GB) or 700 000 pages, the page with the most
    pixels (not values) read, an 'Exif' inside a JPEG comment (not an APP1 segment) ignored,
    and a sphere search on a tiny image (IndexError) all end in a reading or one line."""
    import tifffile

    from datamodules.image_io import load_image
    from geometry.spacing import find_sphere_candidates

    tifffile.imwrite(tmp_path / "s.tif", np.zeros((8, 8, 5), np.uint8), photometric="rgb",
                     planarconfig="contig", extrasamples=[0, 0])
    with pytest.raises(ImageReadError, match="5 samples per pixel"):
        check_pixel_limit(tmp_path / "s.tif")
    with tifffile.TiffWriter(tmp_path / "p.tif") as tw:
        for _ in range(70):
            tw.write(np.zeros((2, 2), np.uint8))
    with pytest.raises(ImageReadError, match="more than 64 pages"):
        load_image(tmp_path / "p.tif")
    gray = np.tile(np.linspace(0, 60000, 50, dtype=np.uint16), (40, 1))
    with tifffile.TiffWriter(tmp_path / "rgb_first.tif") as tw:
        tw.write(np.zeros((25, 25, 3), np.uint16), photometric="rgb")  # 1875 values, 625 px
        tw.write(gray)  # 2000 px
    assert load_image(tmp_path / "rgb_first.tif").image.shape == (40, 50)
    ok, buf = cv2.imencode(".jpg", np.zeros((30, 50), np.uint8))
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack(
        "<HHIHH", 274, 3, 1, 6, 0) + struct.pack("<I", 0)
    fake = b"note " + b"\xff\xe1" + struct.pack(">H", len(tiff) + 8) + b"Exif\x00\x00" + tiff
    data = buf.tobytes()
    (tmp_path / "c.jpg").write_bytes(data[:2] + b"\xff\xfe" + struct.pack(">H", len(fake) + 2)
                                     + fake + data[2:])
    loaded = load_image(tmp_path / "c.jpg")
    assert loaded.image.shape == (30, 50) and loaded.notes == []
    noise = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    assert isinstance(find_sphere_candidates(noise), list)


def test_checkpoint_computing_too_many_values_is_refused(tmp_path_factory, tmp_path):
    """32 stacks of width 8 at depth 1 and 1024 px: under the FLOP cap (2e11), but 2.8e9
    values per image (one pass took 17 s and the plan 5.8 GB)."""
    from planning.model_io import load_checkpoint

    src = torch.load(trained_tiny_checkpoint(tmp_path_factory), weights_only=True)
    codec = {**src["hyper_parameters"]["heatmap_codec"], "input_size": 1024}
    hp = {**src["hyper_parameters"], "num_stacks": 32, "depth": 1, "c1": 8, "c2": 8,
          "c_star": 8, "image_size": 1024, "heatmap_codec": codec, "net_kwargs": {}}
    torch.save({**src, "hyper_parameters": hp}, tmp_path / "v.ckpt")
    with pytest.raises(Exception, match="values per 1024 px image, more than"):
        load_checkpoint(tmp_path / "v.ckpt")


def test_batch_outputs_are_checked_before_planning(tmp_path_factory, tmp_path):
    """--summary onto an input or a plan, a --summary folder, an --out that is a file, and a
    refused model with --workers 2: one line and status 2, before any image is planned."""
    model = exported_tiny_model(tmp_path_factory)
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "b.png"):
        shutil.copy(phantom_images(tmp_path_factory, n=1)[0], src / name)
    (tmp_path / "file").write_text("x")
    bad_model = tmp_path / "bad.onnx"
    bad_model.write_bytes(b"not onnx")
    bad_model.with_suffix(".json").write_text("{}")
    cases = [
        (["--summary", str(src / "b.png")], b"would overwrite an input image or a plan"),
        (["--summary", str(tmp_path / "o" / "a_plan.json"), "--out", str(tmp_path / "o")],
         b"would overwrite an input image or a plan"),
        (["--summary", str(src)], b"is a folder"),
        (["--out", str(tmp_path / "file")], b"is a file, not a folder"),
    ]
    for extra, words in cases:
        res = plan_cli("--image", str(src), "--ckpt", str(model), *extra)
        assert res.returncode == 2 and words in res.stderr and b"Traceback" not in res.stderr
    assert (src / "b.png").read_bytes()[:4] == b"\x89PNG"
    res = plan_cli("--image", str(src), "--ckpt", str(bad_model), "--workers", "2",
                   "--out", str(tmp_path / "w"))
    assert res.returncode == 2 and b"Traceback" not in res.stderr
    assert res.stderr.count(b"plan: error:") == 1
