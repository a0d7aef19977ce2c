"""The one owner of training randomness: epoch seeds, the training order, augmentation seeds in
the main process and in DataLoader workers, and the RNG state kept in checkpoints.

Every random stream of a training epoch is a function of ``(seed, epoch, rank)``, so a run
resumed at epoch ``e`` draws exactly what an uninterrupted run draws there:

- order (one permutation, shared by all DDP ranks): ``epoch_seed(seed, epoch)``;
- augmentation in the main process (``num_workers=0``): ``stream_seed(..., AUGMENT, rank)``;
- augmentation in DataLoader worker ``w``: ``stream_seed(..., WORKER, rank) + w``;
- torch/numpy/python RNGs of the workers (from the loader's ``generator``):
  ``stream_seed(..., LOADER, rank)``.

:class:`EpochSeededSampler` applies them: Lightning calls its ``set_epoch`` before every
training epoch (also the first one of a resumed run), which reseeds the loader's generator and
the workers' seed (both are read when an epoch's iterator starts its workers); the permutation
is drawn, and the main process's augmentation reseeded, when the epoch's first index is
requested. Workers are not persistent (a persistent worker would keep its augmentation stream
across epochs, which a resumed run could not reproduce).

:func:`rng_state` / :func:`set_rng_state` capture and restore the global torch, numpy, python
(and CUDA) RNGs as plain tensors and tuples, loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info
from torch.utils.data.distributed import DistributedSampler

RNG_KEY = "kneeplan_rng_states"  # checkpoint key of rng_state()
AUGMENT, LOADER, WORKER = 1, 2, 3  # stream offsets from the epoch seed
_RANK_STRIDE = 104_729  # prime: ranks get disjoint streams
_MOD = 2**32


def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed for ``(seed, epoch)`` (distinct epochs give distinct seeds); the order."""
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + 17) % _MOD


def stream_seed(seed: int, epoch: int, stream: int, rank: int = 0) -> int:
    """The 32-bit seed of one stream (``AUGMENT``, ``LOADER``, ``WORKER``) of a rank's epoch."""
    return (epoch_seed(seed, epoch) + int(stream) + _RANK_STRIDE * int(rank)) % _MOD


def reseed_augmentation(dataset: Any, seed: int) -> None:
    """Reseed ``dataset.transform`` (a ``SampleTransform``) when the dataset has one."""
    transform = getattr(dataset, "transform", None)
    if transform is not None and hasattr(transform, "reseed"):
        transform.reseed(int(seed) % _MOD)


class WorkerSeeder:
    """DataLoader ``worker_init_fn``: worker ``w`` reseeds its copy of the augmentation with
    ``base + w``; ``base`` is set per epoch by :class:`EpochSeededSampler` (picklable)."""

    def __init__(self, base: int = 0) -> None:
        self.base = int(base)

    def __call__(self, worker_id: int) -> None:
        info = get_worker_info()
        if info is not None:
            reseed_augmentation(info.dataset, self.base + int(worker_id))


class EpochSeededSampler(DistributedSampler):
    """Random order of ``range(len(dataset))`` that depends only on ``(seed, epoch)``.

    With ``num_replicas > 1`` (DDP) every rank takes every ``num_replicas``-th index of the same
    permutation, padded to equal length as ``DistributedSampler`` does (it is one, so Lightning
    keeps it instead of installing its own).

    Args:
        dataset: the training dataset; its ``transform.reseed`` is called per epoch.
        seed: base seed (the DataModule's ``seed``).
        rank, num_replicas: this process's DDP rank and the world size.
        epoch: the epoch to start at (Lightning calls ``set_epoch`` again before each epoch).

    Attributes:
        generator: pass as the DataLoader's ``generator`` (seeds torch's per-worker RNGs).
        worker_init: pass as the DataLoader's ``worker_init_fn``.
    """

    def __init__(self, dataset: Dataset, seed: int = 0, rank: int = 0, num_replicas: int = 1,
                 epoch: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=int(seed))
        self.generator = torch.Generator()
        self.worker_init = WorkerSeeder()
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select ``epoch``: reseeds the loader generator and the workers' base seed now."""
        self.epoch = int(epoch)
        self.generator.manual_seed(stream_seed(self.seed, self.epoch, LOADER, self.rank))
        self.worker_init.base = stream_seed(self.seed, self.epoch, WORKER, self.rank)

    def __iter__(self) -> Iterator[int]:
        reseed_augmentation(self.dataset, stream_seed(self.seed, self.epoch, AUGMENT, self.rank))
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(len(self.dataset), generator=g).tolist()  # type: ignore[arg-type]
        if self.num_replicas > 1:
            order = (order * (1 + self.total_size // max(len(order), 1)))[: self.total_size]
            order = order[self.rank: self.total_size: self.num_replicas]
        yield from order


def epoch_seeded_loader(dataset: Dataset, seed: int, epoch: int = 0, rank: int = 0,
                        num_replicas: int = 1, **loader_kwargs: Any) -> DataLoader:
    """A training DataLoader whose order and augmentation follow :class:`EpochSeededSampler`.

    ``loader_kwargs`` go to the DataLoader (batch_size, num_workers, collate_fn, ...); the
    sampler, generator, worker_init_fn and persistent_workers are set here.
    """
    sampler = EpochSeededSampler(dataset, seed, rank=rank, num_replicas=num_replicas, epoch=epoch)
    return DataLoader(dataset, sampler=sampler, generator=sampler.generator,
                      worker_init_fn=sampler.worker_init, persistent_workers=False,
                      **loader_kwargs)


def rng_state() -> dict[str, Any]:
    """The global torch, numpy, python (and initialised CUDA) RNG states, in types that
    ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),  # nested tuples of ints (and None)
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32),
                         np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
