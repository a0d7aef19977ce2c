"""ONNX export: the graph agrees with torch on random input (any batch size), the JSON says what
planning needs, a plan through ONNX Runtime equals the plan through the checkpoint, and that
path never imports torch."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from model_files import (
    exported_tiny_model,
    phantom_images,
    plan_in_subprocess,
    trained_tiny_checkpoint,
)

from planning.export import main as export_main
from planning.export import max_difference
from planning.plan import run_plan
from planning.predict import OnnxPredictor, TorchPredictor, load_predictor


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return trained_tiny_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return exported_tiny_model(tmp_path_factory)


def test_export_description(onnx_model, ckpt):
    meta = json.loads(onnx_model.with_suffix(".json").read_text())
    # which checkpoint it came from, by real path and bytes (session 31: only the name, and
    # every run's best checkpoint is best-epochNNN.ckpt)
    import hashlib

    assert meta["checkpoint"] == "last.ckpt" and meta["checkpoint_path"] == str(ckpt.resolve())
    assert meta["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta["format"] == "kneeplan-onnx" and meta["input_size"] == 64
    assert meta["codec"] == {"input_size": 64, "heatmap_size": 64, "sigma": 2.0}
    assert meta["tasks"] == ["seg", "lm", "roi"]
    assert meta["task_channels"] == {"seg": 4, "lm": 2, "roi": 1}
    assert meta["outputs"] == ["seg", "lm", "roi", "lm_prev"]
    pred = load_predictor(onnx_model)
    assert isinstance(pred, OnnxPredictor) and pred.codec.sigma == 2.0


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_runtime_agrees_with_torch(ckpt, onnx_model, batch):
    assert max_difference(ckpt, onnx_model, batch=batch, seed=batch) <= 1e-4
    x = np.random.default_rng(5).random((batch, 1, 64, 64), dtype=np.float32)
    a = TorchPredictor.from_checkpoint(ckpt).predict_maps(x)
    b = OnnxPredictor(onnx_model).predict_maps(x)
    assert set(a) == set(b) == {"seg", "lm", "roi", "lm_prev"}
    for k in a:
        assert a[k].shape == b[k].shape
        np.testing.assert_allclose(b[k], a[k], atol=1e-4)


class _Nudged:
    """``base`` with every map moved by a seeded uniform draw in [-eps, eps] (seg kept in [0, 1]):
    a plan's numerical neighbourhood, as large as the torch / ONNX Runtime difference."""

    takes_numpy = True

    def __init__(self, base, eps: float, seed: int):
        self.base, self.eps, self.rng = base, eps, np.random.default_rng(seed)
        self.image_size, self.codec = base.image_size, base.codec

    def __getattr__(self, name):
        return getattr(self.base, name)

    def predict_maps(self, x: np.ndarray) -> dict[str, np.ndarray]:
        maps = self.base.predict_maps(x)
        out = {k: (v + self.rng.uniform(-self.eps, self.eps, v.shape)).astype(v.dtype)
               for k, v in maps.items()}
        out["seg"] = np.clip(out["seg"], 0.0, 1.0)
        return out


def test_plan_via_export_equals_plan_via_checkpoint(ckpt, onnx_model, tmp_path_factory,
                                                      tmp_path):
    """Landmarks and Schoettle point agree within 0.01 px on every image. The review is a
    thresholded function of the maps, and the one-step tiny model's probabilities sit near its
    thresholds, so its reasons are compared on the images whose torch plan keeps its reasons when
    the maps move by 1e-4 (the tolerance the two runtimes agree to); at least one must."""
    torch_pred, onnx_pred = load_predictor(ckpt), load_predictor(onnx_model)
    stable = 0
    for i, image in enumerate(phantom_images(tmp_path_factory, n=6)):
        def plan(pred, name, image=image, i=i):
            return run_plan(image, pred, tmp_path / f"{i}_{name}", decode="quadratic").report

        reps = [plan(torch_pred, "pt"), plan(onnx_pred, "onnx")]
        for name in ("p_blum", "p_tmc"):
            a, b = (np.array(r["landmarks"][name]["px"]) for r in reps)
            assert np.abs(a - b).max() <= 0.01, (image.name, name, a, b)
        a, b = (r["schoettle_point"]["px"] for r in reps)
        assert (a is None) == (b is None)
        if a is not None:
            assert np.abs(np.subtract(a, b)).max() <= 0.01
        nudged = [plan(_Nudged(torch_pred, 1e-4, s), f"n{s}")["review_reasons"] for s in (1, 2)]
        if all(r == reps[0]["review_reasons"] for r in nudged):
            stable += 1
            assert reps[1]["review_reasons"] == reps[0]["review_reasons"], image.name
    assert stable >= 1


@pytest.mark.parametrize("kind", ["png", "dicom"])
def test_planning_with_onnx_never_imports_torch(onnx_model, tmp_path_factory, tmp_path, kind):
    image = phantom_images(tmp_path_factory)[0]
    if kind == "dicom":  # the DICOM reader's modules are on the path too
        import cv2
        from dicom_files import write_dicom

        pixels = cv2.imread(str(image), cv2.IMREAD_UNCHANGED) >> 4  # 16 -> 12 bit
        image = tmp_path / "knee.dcm"
        write_dicom(image, pixels, bits=12, pixel_spacing=[0.2, 0.2])
    res = plan_in_subprocess(image, onnx_model, tmp_path)
    assert res["rc"] == 0, res["stderr"]
    assert not any(res["imported"].values()), res["imported"]
    rep = json.loads((tmp_path / f"{image.stem}_plan.json").read_text())
    assert rep["settings"]["network_size"] == 64
    if kind == "dicom":
        assert rep["spacing"]["source"] == "PixelSpacing"


def test_export_cli_refuses_a_bad_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"nothing")
    assert export_main(["--ckpt", str(bad), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("export: error: ") and "bad.ckpt" in err and err.count("\n") == 1
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    "change, words",
    [
        ({"input_size": 10**6}, "input_size=1000000"),  # every image resized to 10^6 px
        ({"input_size": "64"}, "input_size='64'"),
        ({"codec": {"input_size": 64, "heatmap_size": 64, "sigma": -1.0}}, "sigma=-1.0"),
        ({"codec": [64, 64, 2.0]}, "codec is not a mapping"),
        ({"outputs": "seg"}, "'outputs' must be a list"),
        ({"format": "other"}, "not a kneeplan export description"),
    ({"sha256": 12}, "'sha256' must be 64 lower-case hex digits"),
        ({"version": True}, "description version True"),  # was read as version 1
    ],
)
def test_hostile_export_descriptions_are_refused(onnx_model, tmp_path, change, words):
    import shutil

    model = tmp_path / "m.onnx"
    shutil.copy(onnx_model, model)
    meta = json.loads(onnx_model.with_suffix(".json").read_text())
    model.with_suffix(".json").write_text(json.dumps({**meta, **change}))
    with pytest.raises(ValueError) as err:
        load_predictor(model)
    msg = str(err.value)
    assert "\n" not in msg and str(model.with_suffix(".json")) in msg and words in msg, msg


def test_oversized_export_description_is_refused(onnx_model, tmp_path):
    import shutil

    model = tmp_path / "m.onnx"
    shutil.copy(onnx_model, model)
    meta = json.loads(onnx_model.with_suffix(".json").read_text())
    meta["padding"] = "x" * 2 * 1024**2  # 2 MB of nothing: the description may have 1 MB
    model.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="larger than the 1 MB"):
        load_predictor(model)


def test_export_records_the_graph_hash_and_planning_checks_it(onnx_model, tmp_path):
    import hashlib

    meta = json.loads(onnx_model.with_suffix(".json").read_text())
    assert meta["sha256"] == hashlib.sha256(onnx_model.read_bytes()).hexdigest()
    raw = bytearray(onnx_model.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit of the weights: the graph still parses and runs
    model = tmp_path / "bitrot.onnx"
    model.write_bytes(bytes(raw))
    shutil.copy(onnx_model.with_suffix(".json"), model.with_suffix(".json"))
    with pytest.raises(ValueError) as err:
        load_predictor(model)
    msg = str(err.value)
    assert "\n" not in msg and str(model) in msg and "damaged" in msg and "SHA-256" in msg
    older = tmp_path / "older.onnx"  # an export written before the hash existed still loads
    shutil.copy(onnx_model, older)
    older.with_suffix(".json").write_text(json.dumps({k: v for k, v in meta.items()
                                                      if k != "sha256"}))  # fmt: skip
    assert load_predictor(older).image_size == meta["input_size"]


@pytest.mark.parametrize("opset", ["5", "10", "99"])
def test_unsupported_opset_is_a_usage_error(tmp_path, capsys, opset):
    """An opset outside 11..23: one line, status 2 (before: a torch traceback with status 1;
    opset 10 exported a graph the planner refuses)."""
    from planning.export import main

    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(b"not read")
    assert main(["--ckpt", str(ckpt), "--opset", opset]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--opset {opset}" in err
    assert not (tmp_path / "m.onnx").exists()


def test_ckpt_that_names_no_file_is_a_usage_error(capsys):
    """``--ckpt ..`` was a traceback (``Path('..').with_suffix``)."""
    from planning.export import main

    assert main(["--ckpt", ".."]) == 2
    assert "does not name a checkpoint file" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--ckpt", "--out"])
def test_empty_path_flag_is_a_usage_error(flag, tmp_path, capsys):
    """An empty ``--ckpt`` or ``--out`` (an unset shell variable) is one usage line, status 2:
    argparse made it '.', a traceback for --ckpt and '.: must end in .onnx' for --out."""
    from planning.export import main

    args = {"--ckpt": str(tmp_path / "m.ckpt"), "--out": str(tmp_path / "m.onnx"), flag: ""}
    with pytest.raises(SystemExit) as exc:
        main([a for kv in args.items() for a in kv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and f"argument {flag}: empty path" in err[-1]


def test_max_difference_does_not_hide_a_nan_output(monkeypatch):
    """``max()`` over the outputs' differences skipped a NaN after the first output, so the
    export check passed a graph with NaN landmark maps."""
    import planning.export as export
    import planning.predict as predict

    maps = {"seg": np.zeros((1, 4, 8, 8)), "lm": np.full((1, 2, 8, 8), np.nan),
            "roi": np.zeros((1, 1, 8, 8))}

    class Fake:
        image_size, output_names = 8, list(maps)

        @classmethod
        def from_checkpoint(cls, _):
            return cls()

        def __init__(self, *_):
            pass

        def predict_maps(self, x):
            return maps

    monkeypatch.setattr(predict, "TorchPredictor", Fake)
    monkeypatch.setattr(predict, "OnnxPredictor", Fake)
    assert np.isnan(export.max_difference("a.ckpt", "a.onnx"))


def test_output_that_cannot_be_written_is_one_line_before_anything_is_written(ckpt, tmp_path,
                                                                               capsys):
    """An --out that is a folder, whose JSON is a folder, or under a file was a traceback (and
    the .onnx was written before the JSON failed)."""
    (tmp_path / "dir.onnx").mkdir()
    (tmp_path / "j.json").mkdir()
    (tmp_path / "file").write_text("x")
    cases = {tmp_path / "dir.onnx": "is a folder", tmp_path / "j.onnx": "is a folder",
             tmp_path / "file" / "m.onnx": "is a file, not a folder"}
    for out, words in cases.items():
        assert export_main(["--ckpt", str(ckpt), "--out", str(out), "--no-check"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "j.onnx").exists()
