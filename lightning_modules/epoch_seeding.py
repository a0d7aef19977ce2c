"""Epoch-seeded training order and augmentation, so that a resumed run continues exactly.

A DataLoader with ``shuffle=True`` draws each epoch's order from a generator whose state is
not checkpointed, and the augmentation's own random state (in the main process when
``num_workers=0``) is not either: a run resumed after epoch ``e`` would replay epoch 0's order
and augmentations. :class:`EpochSeededSampler` makes both a function of ``(seed, epoch)``:
Lightning calls ``set_epoch`` before every training epoch (also the first epoch of a resumed
run), and the permutation is drawn, and the dataset's ``transform.reseed`` called, lazily when
the epoch's first batch is requested.

With ``num_workers > 0`` the workers reseed their augmentation from torch's worker seed
(``datamodules.datasets.seed_worker``), which the DataLoader draws from its ``generator`` when an
epoch's iterator is created: ``set_epoch`` reseeds that generator from ``(seed, epoch)`` too, and
the loader does not keep persistent workers (they would not redraw it), so a resumed run gets the
same worker augmentations as an uninterrupted one.

Scope: single-process training. Under DDP Lightning installs its own ``DistributedSampler``
(also seeded by epoch).
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
        loader_generator: the DataLoader's ``generator``, reseeded with
            ``epoch_seed(seed, epoch) + 2`` by ``set_epoch`` (it seeds the workers).
    """

    def __init__(
        self, dataset: Dataset, seed: int = 0, loader_generator: torch.Generator | None = None
    ) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.loader_generator = loader_generator
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.loader_generator is not None:
            self.loader_generator.manual_seed((epoch_seed(self.seed, self.epoch) + 2) % 2**32)

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
    """The same DataLoader, but shuffled (and augmented) by :class:`EpochSeededSampler`.

    Workers are not persistent here: a persistent worker keeps its augmentation stream across
    epochs, which a resumed run could not reproduce.
    """
    generator = torch.Generator()
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size,
        sampler=EpochSeededSampler(loader.dataset, seed, loader_generator=generator),
        num_workers=loader.num_workers, collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory, drop_last=loader.drop_last, timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn, persistent_workers=False, generator=generator,
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
        loader = epoch_seeded_loader(loader, int(getattr(dm, "seed", 0)))
        # Lightning creates the first epoch's iterator (which, with workers, draws the worker
        # seed and prefetches indices) before it calls set_epoch; on resume that first epoch
        # is the restored one, not 0. The fit loop will call set_epoch with `processed`.
        epoch = trainer.fit_loop.epoch_progress.current.processed if trainer is not None else 0
        loader.sampler.set_epoch(epoch)
        return loader


def make_train_order_resumable(datamodule) -> None:
    """Make a datamodule's training loader epoch-seeded in single-process runs.

    Under DDP (``trainer.world_size > 1``) the original loader is returned and Lightning's
    ``DistributedSampler`` takes over.
    """
    datamodule.train_dataloader = _ResumableTrainLoader(datamodule)
