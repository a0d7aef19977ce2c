"""Epoch-seeded training order and augmentation, so that a resumed run continues exactly.

A DataLoader with ``shuffle=True`` draws each epoch's order from a generator whose state is
not checkpointed, and the augmentation's own random state (in the main process when
``num_workers=0``) is not either: a run resumed after epoch ``e`` would replay epoch 0's order
and augmentations. :class:`EpochSeededSampler` makes both a function of ``(seed, epoch)``:
Lightning calls ``set_epoch`` before every training epoch (also the first epoch of a resumed
run), and the permutation is drawn, and the dataset's ``transform.reseed`` called, lazily when
the epoch's first batch is requested.

Scope: single-process training. Under DDP Lightning installs its own ``DistributedSampler``
(also seeded by epoch); with ``num_workers > 0`` the workers reseed their augmentation from
torch's per-epoch worker seed (``datamodules.datasets.seed_worker``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed for ``(seed, epoch)`` (distinct epochs give distinct seeds)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + 17) % 2**32


class EpochSeededSampler(Sampler[int]):
    """Random permutation of ``range(len(dataset))`` that depends only on ``(seed, epoch)``.

    Args:
        dataset: the training dataset; if it has ``transform.reseed`` the augmentation is
            reseeded with ``epoch_seed(seed, epoch) + 1`` when the epoch starts (in-process data
            loading only; workers have their own copies).
        seed: base seed.
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        s = epoch_seed(self.seed, self.epoch)
        transform = getattr(self.dataset, "transform", None)
        if transform is not None and hasattr(transform, "reseed"):
            transform.reseed((s + 1) % 2**32)
        g = torch.Generator().manual_seed(s)
        yield from torch.randperm(len(self), generator=g).tolist()


def epoch_seeded_loader(loader: DataLoader, seed: int) -> DataLoader:
    """The same DataLoader, but shuffled (and augmented) by :class:`EpochSeededSampler`."""
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=EpochSeededSampler(loader.dataset,
                                                                                  seed),
        num_workers=loader.num_workers, collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory, drop_last=loader.drop_last, timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn, persistent_workers=loader.persistent_workers,
        generator=torch.Generator().manual_seed(int(seed)),
    )


class _ResumableTrainLoader:
    """Picklable replacement of ``datamodule.train_dataloader`` (DDP spawn pickles it)."""

    def __init__(self, datamodule) -> None:
        self.datamodule = datamodule

    def __call__(self) -> DataLoader:
        dm = self.datamodule
        loader = type(dm).train_dataloader(dm)  # the class's method, not this wrapper
        trainer = getattr(dm, "trainer", None)
        if trainer is not None and trainer.world_size > 1:
            return loader
        return epoch_seeded_loader(loader, int(getattr(dm, "seed", 0)))


def make_train_order_resumable(datamodule) -> None:
    """Make a datamodule's training loader epoch-seeded in single-process runs.

    Under DDP (``trainer.world_size > 1``) the original loader is returned and Lightning's
    ``DistributedSampler`` takes over.
    """
    datamodule.train_dataloader = _ResumableTrainLoader(datamodule)
