"""Lightning-free loading: a real (one-step) Lightning checkpoint rebuilt as the plain network
with its codec, old checkpoints, refused files, and no Lightning in the planning process."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from model_files import phantom_images, plan_in_subprocess, trained_tiny_checkpoint

from geometry.heatmaps import HeatmapCodec
from planning.model_io import CheckpointError, checkpoint_codec, load_checkpoint, read_checkpoint
from planning.predict import TorchPredictor, predict_images


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return trained_tiny_checkpoint(tmp_path_factory)


def test_checkpoint_rebuilds_network_and_codec(ckpt):
    model = load_checkpoint(ckpt)
    assert model.image_size == 64 and model.net.num_stacks == 2
    assert model.codec == HeatmapCodec(64, 64, 2.0)  # configs/tiny.yaml: size 64, sigma 2
    assert not model.net.training
    saved = read_checkpoint(ckpt)["hyper_parameters"]["heatmap_codec"]
    assert saved == {"input_size": 64, "heatmap_size": 64, "sigma": 2.0}  # plain types
    # same maps as the Lightning module loaded the old way
    from lightning_modules.module import load_module

    module = load_module(ckpt)
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    ref = module.predict_maps(x)
    got = TorchPredictor(model.net, 64, model.codec).predict_maps(x.numpy())
    for k in ("seg", "lm", "roi"):
        np.testing.assert_allclose(got[k], ref[k].numpy(), atol=1e-6)
    assert got["lm_prev"].shape == (2, 2, 64, 64)
    with torch.inference_mode():  # the same (inference) ops as the predictor
        prev = module.net(x).stacks[0]["lm"].numpy()
    np.testing.assert_allclose(got["lm_prev"], prev, atol=1e-6)


def test_old_checkpoints_derive_the_codec(ckpt, tmp_path):
    state = read_checkpoint(ckpt)
    del state["hyper_parameters"]["heatmap_codec"]
    assert checkpoint_codec(state) == HeatmapCodec(64, 64, 2.0)  # DataModule's size and sigma
    state["datamodule_hyper_parameters"] = {}
    assert checkpoint_codec(state).sigma == 2.0  # the run's YAML config
    state["kneeplan_config"] = None
    assert checkpoint_codec(state) == HeatmapCodec(64, 64, 6.0)  # the DataModule default
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    assert load_checkpoint(old).codec.sigma == 6.0


def _one_line(err: Exception) -> str:
    msg = str(err)
    assert "\n" not in msg
    return msg


def test_foreign_and_unsafe_files_are_refused(ckpt, tmp_path):
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": argparse.Namespace(a=1)}, unsafe)
    with pytest.raises(CheckpointError, match="refused") as err:
        load_checkpoint(unsafe)
    assert str(unsafe) in _one_line(err.value)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a kneeplan checkpoint"):
        load_checkpoint(foreign)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as err:
        load_checkpoint(junk)
    assert str(junk) in _one_line(err.value)
    state = read_checkpoint(ckpt)
    state["hyper_parameters"]["c_star"] = 32  # weights of a different network
    other = tmp_path / "other.ckpt"
    torch.save(state, other)
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(other)


def test_predict_images_with_a_torch_predictor(ckpt):
    pred = TorchPredictor.from_checkpoint(ckpt)
    rng = np.random.default_rng(1)
    imgs = [rng.random((90, 70), dtype=np.float32), rng.random((50, 120), dtype=np.float32)]
    maps = predict_images(pred, imgs, batch_size=2)
    assert [m.lm_prev.shape for m in maps] == [(2, 64, 64)] * 2
    single = predict_images(pred, imgs[1:], batch_size=1)[0]
    np.testing.assert_allclose(maps[1].lm, single.lm, rtol=1e-5, atol=1e-5)  # float32, batch 2 vs 1
    assert maps[0].seg.min() >= 0 and maps[0].seg.max() <= 1


def test_planning_with_a_checkpoint_never_imports_lightning(ckpt, tmp_path_factory, tmp_path):
    image = phantom_images(tmp_path_factory)[0]
    res = plan_in_subprocess(image, ckpt, tmp_path)
    assert res["rc"] == 0, res["stderr"]
    assert res["imported"]["torch"]
    for name in ("pytorch_lightning", "lightning", "lightning_fabric", "wandb", "optuna",
                 "torchmetrics"):
        assert not res["imported"][name], name
    assert (tmp_path / f"{image.stem}_plan.json").is_file()


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("num_stacks", 3000, "num_stacks=3000"),  # building 3000 hourglasses takes minutes
        ("depth", 64, "depth=64"),
        ("c_star", 10**6, "c_star=1000000"),
        ("image_size", 10**6, "image_size=1000000"),  # every image resized to 10^6 px
        ("num_stacks", True, "num_stacks=True"),
        ("c1", "64", "c1='64'"),
        ("net_kwargs", {"skip_channels": 10**7}, "net_kwargs.skip_channels=10000000"),
        ("net_kwargs", {"evil": 1}, "unknown key 'evil'"),
        ("net_kwargs", [1, 2], "net_kwargs is not a mapping"),
        ("heatmap_codec", {"input_size": 64, "heatmap_size": 64, "sigma": float("nan")}, "sigma"),
        ("heatmap_codec", {"input_size": 10**7, "heatmap_size": 64, "sigma": 2.0}, "input_size"),
    ],
)
def test_hostile_hyper_parameters_are_refused_before_building(ckpt, tmp_path, key, value, words):
    """A checkpoint's hyper-parameters decide the network's size and the input side: values no
    kneeplan model uses are refused with one line, fast, before anything is built."""
    import time

    state = read_checkpoint(ckpt)
    state["hyper_parameters"][key] = value
    path = tmp_path / "hostile.ckpt"
    torch.save(state, path)
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert time.perf_counter() - start < 5.0
    msg = _one_line(err.value)
    assert str(path) in msg and words in msg, msg


def test_hostile_checkpoint_through_make_plan_is_a_usage_error(ckpt, tmp_path_factory, tmp_path,
                                                              capsys):
    from planning.plan import main

    state = read_checkpoint(ckpt)
    state["hyper_parameters"]["num_stacks"] = 10**6
    path = tmp_path / "hostile.ckpt"
    torch.save(state, path)
    image = phantom_images(tmp_path_factory)[0]
    assert main(["--image", str(image), "--ckpt", str(path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "num_stacks=1000000" in err[0] and str(path) in err[0]


def test_large_files_and_decompression_bombs_are_refused(ckpt, tmp_path, monkeypatch):
    import zipfile

    from lightning_modules import model_limits

    monkeypatch.setattr(model_limits, "MAX_MODEL_BYTES", 10**7)  # 10 MB for the test
    big = tmp_path / "big.ckpt"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", b"\0" * (11 * 10**6))
    with pytest.raises(CheckpointError, match="larger than the 10 MB") as err:
        read_checkpoint(big)
    assert str(big) in _one_line(err.value)
    bomb = tmp_path / "bomb.ckpt"  # 20 MB of zeros deflated to ~20 KB: small on disk
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\0" * (20 * 10**6))
    assert bomb.stat().st_size < 10**6
    with pytest.raises(CheckpointError, match="unpacks to 19 MB") as err:
        read_checkpoint(bomb)
    assert str(bomb) in _one_line(err.value)
    assert load_checkpoint(ckpt).image_size == 64  # the real (small) checkpoint still loads
    monkeypatch.setattr(model_limits, "MAX_PICKLE_BYTES", 10**6)  # structure, not tensors
    state = read_checkpoint(ckpt)
    state["hyper_parameters"]["notes"] = list(range(300_000))  # ~1.5 MB pickled, 10 MB unpickled
    fat = tmp_path / "fat.ckpt"
    torch.save(state, fat)
    with pytest.raises(CheckpointError, match="MB of pickled structure besides the tensors"):
        read_checkpoint(fat)


def _member_data_offset(path, name: str) -> int:
    """Byte offset of a stored zip member's data (after its local header)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    raw = path.read_bytes()
    n, m = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + n + m


def test_a_flipped_byte_in_the_weights_is_refused_not_loaded(ckpt, tmp_path):
    import zipfile

    with zipfile.ZipFile(ckpt) as archive:
        member = max((i for i in archive.infolist() if "/data/" in i.filename),
                     key=lambda i: i.file_size)  # fmt: skip
    raw = bytearray(ckpt.read_bytes())
    raw[_member_data_offset(ckpt, member.filename) + 17] ^= 0x40  # one bit of one weight
    bad = tmp_path / "bitrot.ckpt"
    bad.write_bytes(bytes(raw))
    # torch itself loads it silently, with one tensor changed ...
    def tensors(x):
        if isinstance(x, torch.Tensor):
            return [x]
        items = x.values() if isinstance(x, dict) else x if isinstance(x, list | tuple) else []
        return [t for v in items for t in tensors(v)]

    from lightning_modules.checkpoint_file import _LIGHTNING_TYPES, _AttributeDict

    with torch.serialization.safe_globals([(_AttributeDict, n) for n in _LIGHTNING_TYPES]):
        a, b = (tensors(torch.load(p, weights_only=True, map_location="cpu")) for p in (ckpt, bad))
    assert len(a) == len(b)
    assert sum(not torch.equal(x, y) for x, y in zip(a, b, strict=True)) == 1
    # ... the reader refuses it, naming the damaged record
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(bad)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and f"{member.filename!r} fails its CRC-32" in msg


def test_a_damaged_zip_directory_is_one_line(ckpt, tmp_path):
    raw = bytearray(ckpt.read_bytes())
    end = raw.rindex(b"PK\x01\x02")  # the last central-directory entry: its file name
    raw[end + 46] = 0xFF  # not UTF-8 (zipfile decodes names flagged as UTF-8)
    raw[end + 9] |= 0x08  # general-purpose flags (bytes 8-9): bit 11, UTF-8 names
    bad = tmp_path / "directory.ckpt"
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(bad)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and "cannot read the zip archive" in msg, msg


def test_double_weights_beyond_float32_are_refused(ckpt, tmp_path):
    """A float64 weight of 1e300 is finite where the non-finite check ran, and inf once cast to
    float32 (red-team round 6: export wrote an inf bias and reported success)."""
    state = read_checkpoint(ckpt)
    name = next(k for k in state["state_dict"] if k.startswith("net.") and k.endswith("bias"))
    state["state_dict"][name] = torch.full_like(state["state_dict"][name], 1e300,
                                                dtype=torch.float64)
    big = tmp_path / "big.ckpt"
    torch.save(state, big)
    with pytest.raises(CheckpointError, match="beyond float32's range") as err:
        load_checkpoint(big)
    assert str(big) in _one_line(err.value) and name[len("net."):] in str(err.value)
    state["state_dict"][name] = state["state_dict"][name].fill_(0.5)  # in range: loads as before
    torch.save(state, big)
    assert torch.isfinite(load_checkpoint(big).net.state_dict()[name[len("net."):]]).all()


def test_an_old_checkpoints_config_sigma_too_large_for_a_float_is_refused(ckpt, tmp_path):
    """``float()`` of a 401-digit ``data.sigma`` in the stored config was an OverflowError
    traceback in export; now the config files' own parser refuses it in one line (since
    round 8; before, the codec's bounds did, as sigma=inf)."""
    state = read_checkpoint(ckpt)
    del state["hyper_parameters"]["heatmap_codec"]
    state["datamodule_hyper_parameters"] = {}
    state["kneeplan_config"] = "data:\n  sigma: 1" + "0" * 400 + "\n"
    bad = tmp_path / "bad.ckpt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match="stored config .* 401 digits .* too large") as err:
        load_checkpoint(bad)
    assert str(bad) in _one_line(err.value)


def test_a_codec_sigma_other_than_the_trained_one_is_refused(ckpt, tmp_path):
    """Red-team round 6: a saved codec sigma of 256 (trained: 2) decoded landmarks ~9 px off
    with soft-argmax, silently."""
    state = read_checkpoint(ckpt)
    state["hyper_parameters"]["heatmap_codec"] = {"input_size": 64, "heatmap_size": 64,
                                                  "sigma": 256.0}
    bad = tmp_path / "sigma.ckpt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match="codec has sigma 256, its DataModule was trained "
                                              "with sigma 2") as err:
        load_checkpoint(bad)
    assert str(bad) in _one_line(err.value)
