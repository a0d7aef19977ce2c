"""KneeDataModule: split, batch contract, validation in setup, split files, phantoms, workers."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from datamodules.datamodule import KneeDataModule, read_split_file, seeded_split
from datamodules.dataset_io import write_sample
from datamodules.sample import RaterAnnotation, Sample
from datamodules.validate import DatasetValidationError
from geometry.frame import PadResize

H, W, S = 40, 56, 32


def sample(i: int, spacing=(0.3, 0.3)) -> Sample:
    rng = np.random.default_rng(i)
    masks = np.zeros((4, H, W), dtype=np.uint8)
    masks[0, 4:30, 8:30] = 1
    masks[2, 24:40, 10:40] = 1
    masks[1, 8:18, 30:44] = 1
    masks[3, 30:40, 40:50] = 1
    lms = np.array([[20.0 + i, 14.0], [12.0, 22.0 + 0.5 * i]])
    cortex = np.array([[10.0, 2.0], [11.0, 20.0]])
    return Sample(f"k{i:02d}", rng.uniform(0, 1, (H, W)).astype(np.float32), masks,
                  [RaterAnnotation(lms, cortex)], spacing, "annotation")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    test_root = tmp_path_factory.mktemp("test")
    samples = {f"k{i:02d}": sample(i) for i in range(10)}
    for s in samples.values():
        write_sample(root, s)
    for i in (20, 21, 22):
        write_sample(test_root, sample(i))
    return root, test_root, samples


def test_seeded_split_is_reproducible_disjoint_and_80_20():
    ids = [f"k{i}" for i in range(10)]
    train, val = seeded_split(ids, 0.2, seed=0)
    assert len(train) == 8 and len(val) == 2 and set(train) | set(val) == set(ids)
    assert not set(train) & set(val)
    assert seeded_split(ids, 0.2, seed=0) == (train, val)
    assert len({tuple(seeded_split(ids, 0.2, seed=s)[1]) for s in range(6)}) > 1


def test_folder_batches_follow_the_contract(dataset):
    root, test_root, samples = dataset
    dm = KneeDataModule(data_root=str(root), test_root=str(test_root), size=S, sigma=2.0,
                        batch_size=2, augment=False)
    dm.setup("fit")
    assert len(dm.train_set) == 8 and len(dm.val_set) == 2 and len(dm.test_set) == 3
    assert dm.validation_report is not None and dm.validation_report.ok
    batch = next(iter(dm.val_dataloader()))
    b = 2
    shapes = {"image": (b, 1, S, S), "seg": (b, 4, S, S), "lm": (b, 2, S, S), "roi": (b, 1, S, S),
              "lm_visible": (b, 2), "landmarks": (b, 2, 2), "spacing": (b, 2)}
    for key, shape in shapes.items():
        assert tuple(batch[key].shape) == shape, key
    assert batch["image"].dtype == torch.float32 and batch["lm_visible"].dtype == torch.bool
    assert set(batch["frame"]) == {"orig_h", "orig_w", "pad_top", "pad_left", "size"}
    assert batch["frame"]["orig_h"].dtype == torch.int64
    assert len(batch["cortex_points"]) == b and len(batch["id"]) == b
    for j, sid in enumerate(batch["id"]):
        s = samples[sid]
        frame = PadResize(**{k: int(v[j]) for k, v in batch["frame"].items()})
        assert frame == PadResize.from_shape(H, W, S)
        back = frame.to_original(batch["landmarks"][j].numpy().astype(np.float64))
        np.testing.assert_allclose(back, s.landmarks, atol=1e-4)
        cortex = frame.to_original(batch["cortex_points"][j].numpy().astype(np.float64))
        np.testing.assert_allclose(cortex, s.cortex_points, atol=1e-4)
        for c in range(2):  # heat-map peak at the (rounded) network-frame landmark
            r, col = np.unravel_index(int(batch["lm"][j, c].argmax()), (S, S))
            assert abs(col - batch["landmarks"][j, c, 0]) <= 0.5
            assert abs(r - batch["landmarks"][j, c, 1]) <= 0.5
        np.testing.assert_allclose(batch["spacing"][j].numpy(), [0.3, 0.3], rtol=1e-6)
        seg = (frame.apply(np.moveaxis(s.masks, 0, -1).astype(np.float32)) >= 0.5)
        np.testing.assert_array_equal(batch["seg"][j].numpy(), np.moveaxis(seg, -1, 0))
    assert batch["lm_visible"].all()
    test_batch = next(iter(dm.test_dataloader()))
    assert test_batch["id"] == ["k20", "k21"]


def test_invalid_dataset_is_refused_with_the_full_report(dataset, tmp_path):
    root, _, samples = dataset
    for s in list(samples.values())[:3]:
        write_sample(tmp_path, s)
    cv2.imwrite(str(tmp_path / "masks" / "k00_femur.png"), np.full((H, W), 7, np.uint8) *
                (np.arange(W) % 3).astype(np.uint8))
    (tmp_path / "annotations" / "k01.json").unlink()
    dm = KneeDataModule(data_root=str(tmp_path), size=S)
    with pytest.raises(DatasetValidationError) as info:
        dm.setup("fit")
    assert "k00_femur.png" in str(info.value) and "non-binary" in str(info.value)
    assert "k01.json" in str(info.value)


def test_split_file(dataset, tmp_path):
    root, _, samples = dataset
    ids = sorted(samples)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ids[:6], "val": ids[6:8], "test": ids[8:]}))
    dm = KneeDataModule(data_root=str(root), split_file=str(split), size=S, augment=False)
    dm.setup("fit")
    assert dm.train_set.ids == ids[:6] and dm.val_set.ids == ids[6:8]
    assert dm.test_set.ids == ids[8:]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": ids[:6] + ["nope"], "val": ids[5:8]}))
    with pytest.raises(ValueError, match="nope"):
        read_split_file(bad, ids)
    bad.write_text(json.dumps({"train": ids[:6], "val": ids[5:8]}))
    with pytest.raises(ValueError, match="both"):
        read_split_file(bad, ids)


def _phantom_dm(**kw) -> KneeDataModule:
    args = {"num_train": 2, "num_val": 2, "num_test": 1, "size": 64, "min_side": 96,
            "max_side": 128, "batch_size": 2}
    return KneeDataModule(**{**args, **kw})


def test_phantom_val_set_is_fixed_by_seed_and_splits_differ():
    pytest.importorskip("datamodules.phantoms")
    a, b, c = _phantom_dm(), _phantom_dm(), _phantom_dm(seed=1)
    for dm in (a, b, c):
        dm.setup("fit")
    va, vb, vc = (next(iter(dm.val_dataloader())) for dm in (a, b, c))
    assert torch.equal(va["image"], vb["image"]) and va["id"] == vb["id"]
    assert not torch.equal(va["image"], vc["image"])
    train_seeds, val_seeds = set(a.train_set.seeds), set(a.val_set.seeds)
    assert not train_seeds & val_seeds and not val_seeds & set(a.test_set.seeds)
    batch = next(iter(a.train_dataloader()))
    assert batch["image"].shape == (2, 1, 64, 64) and torch.isfinite(batch["spacing"]).all()
    assert batch["seg"].amax(dim=(2, 3)).sum() > 0 and batch["roi"].max() > 0.9


def test_workers_get_different_augmentation_streams():
    same = [sample(0)] * 4
    dm = KneeDataModule.from_samples(
        same, same[:1], size=S, batch_size=1, num_workers=2,
        augment={"p_rotate": 1.0, "rotate_deg": 40.0, "p_scale": 0.0, "p_hflip": 0.0,
                 "p_contrast": 0.0},
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    images = [b["image"] for b, _ in zip(loader, range(2), strict=False)]
    assert not torch.equal(images[0], images[1])  # worker 0 and 1 drew different angles
