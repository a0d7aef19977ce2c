"""LightningDataModule over a dataset folder, or over synthetic phantoms when no folder is given.

Folder data (``data_root``): validated in ``setup()`` (an invalid dataset is refused with the
full report of ``datamodules.validate``; with ``strict_validation``, one with any warning too);
split into train/val by a seeded shuffle (``val_fraction``, default 0.2) or by an explicit
``split_file``; the test set is ``test_root`` (a separate folder), else the split file's "test"
ids.

Split file (JSON): ``{"train": ["id", ...], "val": ["id", ...], "test": ["id", ...]}``, "test"
optional; every id must exist in ``data_root`` and no id may be in two lists.

Phantoms (``data_root: null``): ``num_train`` / ``num_val`` / ``num_test`` phantoms with fixed
seeds derived from ``seed`` (disjoint ranges per split: train ``seed*10^7 + i``, val
``+ 10^6``, test ``+ 2*10^6``), so val and test are the same every run and every epoch; training
phantoms are fixed too (variety per epoch comes from augmentation). ``test_root`` may still
point to a folder of real images.

Training batches are augmented (``augment``); validation and test batches never are, so their
``frame`` maps predictions back to the original image pixels.

Training order and augmentation are reseeded every epoch from ``(seed, epoch, rank)`` by the
training loader's own sampler (``datamodules.seeding``), so a resumed run continues exactly; under
DDP each rank takes its share of the same permutation with its own augmentation stream.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from datamodules.annotations import AnnotationError, brief_repr, load_json
from datamodules.dataset_io import DatasetError, list_ids
from datamodules.datasets import (
    FolderDataset,
    InMemoryDataset,
    PhantomDataset,
    SampleDataset,
    TargetConfig,
    collate_batch,
)
from datamodules.decoder_messages import printable
from datamodules.sample import Sample
from datamodules.seeding import AUGMENT, epoch_seeded_loader, stream_seed
from datamodules.transforms import AugmentConfig, SampleTransform
from datamodules.validate import ValidationReport, validate_dataset

log = logging.getLogger(__name__)

_PHANTOM_SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}
SPLIT_KEYS = ("train", "val", "test")


class SplitError(DatasetError):
    """A split that cannot be made (a bad split file or ``val_fraction``): a data error, so
    training answers it in one line like any other (a ValueError, as before)."""


def seeded_split(ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Shuffle ``ids`` with ``seed`` and cut off round(val_fraction * n) (>= 1 if n >= 2 and
    val_fraction > 0) for validation; both lists come back sorted."""
    if not 0.0 <= val_fraction < 1.0:
        raise SplitError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = int(round(val_fraction * len(ids)))
    if val_fraction > 0 and len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return train, val


def folder_split(
    data_root: str | Path, split_file: str | Path | None, val_fraction: float, seed: int
) -> tuple[list[str], list[str], list[str]]:
    """(train, val, test) ids of a dataset folder: the split file's lists, else the seeded
    split (no test ids). Training uses it, and ``make evaluate`` to tell a checkpoint's own
    training images."""
    ids = list_ids(data_root)
    if split_file:
        split = read_split_file(split_file, ids)
        return split["train"], split["val"], split["test"]
    train, val = seeded_split(ids, val_fraction, seed)
    return train, val, []


def read_split_file(path: str | Path, available: list[str]) -> dict[str, list[str]]:
    """Read and check a split JSON against the ids present; errors (SplitError) name the file.

    Read by the annotations' JSON reader (size, nesting, encoding and repeated keys checked);
    a key other than train/val/test is refused, since a typo ("tset") would drop the test set.
    Ids of the folder that no list names are left out of training with a warning that counts
    and names them (leaving images out can be meant; forgetting new ones should not be silent).
    """
    path = Path(path)
    try:
        data = load_json(path)
    except AnnotationError as err:
        raise SplitError(f"split file {err}") from None
    if not isinstance(data, dict) or "train" not in data or "val" not in data:
        raise SplitError(f"{path}: split file needs 'train' and 'val' lists (and optional 'test')")
    unknown = [k for k in data if k not in SPLIT_KEYS]
    if unknown:
        raise SplitError(f"{path}: unknown key {brief_repr(unknown[0])} in the split file "
                         f"(expected {', '.join(SPLIT_KEYS)})")
    known, seen, out = set(available), {}, {}
    for key in SPLIT_KEYS:
        ids = data.get(key, [])
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise SplitError(f"{path}: '{key}' must be a list of id strings")
        missing = sorted(set(ids) - known)
        if missing:
            raise SplitError(f"{path}: '{key}' names ids with no sample: {brief_repr(missing)}")
        for i in ids:
            if i in seen:
                where = (f"twice in '{key}'" if seen[i] == key
                         else f"in both '{seen[i]}' and '{key}'")
                raise SplitError(f"{path}: id {brief_repr(i)} is {where}")
            seen[i] = key
        out[key] = list(ids)
    unused = sorted(known - set(seen))
    if unused:
        log.warning("split file %s: %d of the %d ids in the dataset are in no list and are not "
                    "used: %s", printable(str(path)), len(unused), len(known), brief_repr(unused))
    return out


class KneeDataModule(pl.LightningDataModule):
    """Train/val/test data for the multi-task network (see the module docstring).

    Args:
        data_root: dataset folder (images/, masks/, annotations/); None for phantoms.
        test_root: separate test folder (optional).
        split_file: JSON with explicit train/val(/test) ids of ``data_root`` (optional).
        val_fraction: share of ``data_root`` used for validation when there is no split file.
        seed: split shuffle, phantom seeds and the augmentation's random state.
        size: network input side S.
        sigma: heat-map Gaussian sigma in network pixels.
        roi_spacing_px: cortex pseudo-landmark spacing in network pixels (None: 2/3 sigma,
            i.e. 4 px at the paper's sigma = 6).
        roi_extent: "segment" or "image" (datamodules.targets).
        batch_size, num_workers, pin_memory: DataLoader settings.
        persistent_workers: keep validation/test workers alive between epochs (training
            workers are restarted every epoch so that their seeds follow the epoch).
        augment: True (defaults), False (none) or a dict of AugmentConfig fields.
        num_train, num_val, num_test: phantom counts.
        min_side, max_side: phantom image side range (None: PhantomConfig defaults).
        phantom_config: YAML of phantom generator ranges (configs/phantoms/; None: defaults).
        phantom_overrides: PhantomConfig fields to replace, e.g. ``{"p_metal": 0}`` or
            ``{"factors_off": ["metal", "collimation"]}`` (leave-one-factor-out runs).
        cache_phantoms: keep generated phantoms in memory (per worker).
        validate: validate dataset folders in setup() (refuse invalid ones).
        strict_validation: refuse a dataset folder with any validation warning too (e.g. a
            label warning: a patella mask far from the femur), as ``validate --strict``.

    Example:
        >>> dm = KneeDataModule(num_train=4, num_val=2, size=128, min_side=160, max_side=256)
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.train_dataloader()))
        >>> batch["image"].shape, batch["seg"].shape
        (torch.Size([2, 1, 128, 128]), torch.Size([2, 4, 128, 128]))
    """

    def __init__(
        self,
        data_root: str | None = None,
        test_root: str | None = None,
        split_file: str | None = None,
        val_fraction: float = 0.2,
        seed: int = 0,
        size: int = 256,
        sigma: float = 6.0,
        roi_spacing_px: float | None = None,
        roi_extent: str = "segment",
        batch_size: int = 2,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        augment: bool | dict[str, Any] = True,
        num_train: int = 200,
        num_val: int = 20,
        num_test: int = 20,
        min_side: int | None = None,
        max_side: int | None = None,
        cache_phantoms: bool = False,
        validate: bool = True,
        strict_validation: bool = False,
        phantom_config: str | None = None,
        phantom_overrides: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.augment_config = AugmentConfig.from_any(augment)
        self.targets = TargetConfig(sigma, roi_spacing_px, roi_extent)
        # a leading ~ is the home folder (zsh leaves make's DATA=~/x unexpanded)
        self.data_root, self.test_root, self.split_file = (
            None if p is None else os.path.expanduser(p)
            for p in (data_root, test_root, split_file))
        self.val_fraction, self.seed, self.size = val_fraction, int(seed), int(size)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.min_side, self.max_side = min_side, max_side
        self.cache_phantoms, self.validate = cache_phantoms, validate
        self.strict_validation = bool(strict_validation)
        self.phantom_config, self.phantom_overrides = phantom_config, phantom_overrides
        self.train_set: SampleDataset | None = None
        self.val_set: SampleDataset | None = None
        self.test_set: SampleDataset | None = None
        self.validation_report: ValidationReport | None = None
        self._samples: dict[str, list[Sample]] | None = None

    @classmethod
    def from_samples(cls, train: list[Sample], val: list[Sample],
                     test: list[Sample] | None = None, **kwargs: Any) -> KneeDataModule:
        """A DataModule over in-memory samples (tests, notebooks); kwargs as the constructor."""
        dm = cls(**kwargs)
        dm._samples = {"train": list(train), "val": list(val), "test": list(test or [])}
        return dm

    # -- building datasets -------------------------------------------------------------------
    def _placement(self) -> tuple[int, int, int]:
        """(global rank, world size, epoch to start at) of the attached trainer, if any."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1, 0
        epoch = trainer.fit_loop.epoch_progress.current.processed
        return int(trainer.global_rank), int(trainer.world_size), int(epoch)

    def _transform(self, split: str) -> SampleTransform:
        augment = self.augment_config if split == "train" else None
        # reseeded per epoch by the training sampler; this seed serves direct indexing only
        return SampleTransform(self.size, augment, seed=stream_seed(self.seed, 0, AUGMENT,
                                                                    self._placement()[0]))

    def _phantom_config(self) -> Any:
        from datamodules.phantoms import PhantomConfig  # lazy: only phantom runs need it

        kwargs = {k: v for k, v in (("min_side", self.min_side), ("max_side", self.max_side))
                  if v is not None}
        if self.phantom_config:
            return PhantomConfig.from_yaml(self.phantom_config, **kwargs).with_overrides(
                self.phantom_overrides)
        return PhantomConfig(**kwargs).with_overrides(self.phantom_overrides)

    def _phantoms(self, split: str, count: int) -> PhantomDataset:
        base = self.seed * 10_000_000 + _PHANTOM_SPLIT_OFFSET[split]
        return PhantomDataset(range(base, base + count), self._transform(split), self.targets,
                              self._phantom_config(), cache=self.cache_phantoms)

    def _validate_folders(self) -> None:
        if not self.validate or self.validation_report is not None:
            return
        report = ValidationReport()
        for root in (self.data_root, self.test_root):
            if root is not None:
                report.extend(validate_dataset(root))
        self.validation_report = report
        report.raise_if_invalid(self.strict_validation)
        for issue in report.warnings:
            log.warning("dataset: %s", issue)

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets (once); validates dataset folders first."""
        if self.train_set is not None:
            return
        if self._samples is not None:
            s = self._samples
            self.train_set = InMemoryDataset(s["train"], self._transform("train"), self.targets)
            self.val_set = InMemoryDataset(s["val"], self._transform("val"), self.targets)
            self.test_set = InMemoryDataset(s["test"], self._transform("test"), self.targets)
            return
        self._validate_folders()
        split_test: list[str] = []
        if self.data_root is None:
            self.train_set = self._phantoms("train", self.num_train)
            self.val_set = self._phantoms("val", self.num_val)
        else:
            train, val, split_test = folder_split(self.data_root, self.split_file,
                                                  self.val_fraction, self.seed)
            if train and not val:  # e.g. a one-image dataset: validate on the training images
                log.warning("dataset %s: the split leaves no validation image; validating on "
                            "the training images", self.data_root)
                val = list(train)
            self.train_set = FolderDataset(self.data_root, train, self._transform("train"),
                                           self.targets)
            self.val_set = FolderDataset(self.data_root, val, self._transform("val"), self.targets)
        if self.test_root is not None:
            self.test_set = FolderDataset(self.test_root, list_ids(self.test_root),
                                          self._transform("test"), self.targets)
        elif self.data_root is None:
            self.test_set = self._phantoms("test", self.num_test)
        elif split_test:
            self.test_set = FolderDataset(self.data_root, split_test, self._transform("test"),
                                          self.targets)

    # -- loaders -------------------------------------------------------------------------------
    def _dataset(self, split: str) -> SampleDataset:
        if self.train_set is None:
            self.setup()
        dataset = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[split]
        if dataset is None or len(dataset) == 0:
            hint = " (give test_root or a split file with 'test')" if split == "test" else ""
            raise DatasetError(f"{self.data_root or 'phantoms'}: no {split} samples{hint}")
        return dataset

    def _loader(self, split: str) -> DataLoader:
        """Validation/test loader: fixed order, no augmentation."""
        return DataLoader(
            self._dataset(split),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=collate_batch,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented batches seeded by ``(seed, epoch, rank)`` (datamodules.seeding);
        it starts at the trainer's current epoch, so a resumed run continues exactly."""
        rank, world_size, epoch = self._placement()
        return epoch_seeded_loader(
            self._dataset("train"), self.seed, epoch=epoch, rank=rank, num_replicas=world_size,
            batch_size=self.batch_size, num_workers=self.num_workers,
            pin_memory=self.pin_memory, collate_fn=collate_batch,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
