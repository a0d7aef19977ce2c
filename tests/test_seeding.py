"""datamodules.seeding: one epoch-seed formula for order, main-process and worker augmentation,
DDP shares, and the RNG state that checkpoints carry (weights_only loadable)."""

from __future__ import annotations

import io
import random
from types import SimpleNamespace

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.datamodule import KneeDataModule
from datamodules.sample import RaterAnnotation, Sample
from datamodules.seeding import (
    AUGMENT,
    WORKER,
    EpochSeededSampler,
    epoch_seed,
    epoch_seeded_loader,
    rng_state,
    set_rng_state,
    stream_seed,
)


def sample(i: int) -> Sample:
    """A 40x56 sample with one bone mask, landmarks and a cortex line."""
    masks = np.zeros((4, 40, 56), np.uint8)
    masks[0, 4:30, 8:30] = 1
    annotation = RaterAnnotation(np.array([[20.0 + i, 14.0], [12.0, 22.0]]),
                                 np.array([[10.0, 2.0], [11.0, 20.0]]))
    return Sample(f"s{i}", np.full((40, 56), 0.5, np.float32), masks, [annotation])


class RecordingTransform:
    """Stands in for SampleTransform: remembers the last seed it was given."""

    def __init__(self) -> None:
        self.seed: int | None = None

    def reseed(self, seed: int) -> None:
        self.seed = seed


class RecordingDataset(Dataset):
    """Each item reports the augmentation seed in force where it was loaded, and the worker."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.transform = RecordingTransform()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[int, int, int]:
        info = torch.utils.data.get_worker_info()
        return index, self.transform.seed, -1 if info is None else info.id


def _items(loader) -> list[tuple[int, int, int]]:
    return [(int(i), int(s), int(w)) for batch in loader for i, s, w in zip(*batch, strict=True)]


def test_epoch_and_stream_seeds_match_hand_computed_values():
    assert epoch_seed(0, 0) == 17
    assert epoch_seed(3, 2) == 3 * 1_000_003 + 2 * 7919 + 17 == 3_015_864
    assert stream_seed(3, 2, AUGMENT) == 3_015_865
    assert stream_seed(3, 2, WORKER, rank=1) == 3_015_864 + 3 + 104_729
    assert epoch_seed(5000, 0) == 5000 * 1_000_003 + 17 - 2**32  # wraps to 32 bits
    assert len({epoch_seed(0, e) for e in range(100)}) == 100


def test_main_process_and_workers_use_the_epochs_seed():
    seed = 5
    for epoch in (0, 3):
        main = epoch_seeded_loader(RecordingDataset(6), seed, epoch=epoch, batch_size=2)
        got = _items(main)
        assert {s for _, s, _ in got} == {stream_seed(seed, epoch, AUGMENT)}
        assert sorted(i for i, _, _ in got) == list(range(6))

        workers = epoch_seeded_loader(RecordingDataset(6), seed, epoch=epoch, batch_size=1,
                                      num_workers=2)
        got = _items(workers)
        assert {w for _, _, w in got} == {0, 1}
        for _, s, w in got:
            assert s == stream_seed(seed, epoch, WORKER) + w
        # the order is the epoch's permutation, with or without workers
        expected = torch.randperm(6, generator=torch.Generator().manual_seed(
            epoch_seed(seed, epoch))).tolist()
        assert [i for i, _, _ in got] == expected == [i for i, _, _ in _items(main)]


def test_set_epoch_moves_every_stream_and_a_fresh_loader_at_that_epoch_agrees():
    loader = epoch_seeded_loader(RecordingDataset(6), 1, batch_size=1, num_workers=1)
    loader.sampler.set_epoch(4)
    fresh = epoch_seeded_loader(RecordingDataset(6), 1, epoch=4, batch_size=1, num_workers=1)
    assert _items(loader) == _items(fresh)
    assert {s for _, s, _ in _items(fresh)} == {stream_seed(1, 4, WORKER)}


def test_ddp_ranks_share_one_permutation_and_get_their_own_augmentation():
    data = RecordingDataset(5)
    whole = list(EpochSeededSampler(data, seed=2, epoch=1))
    padded = whole + whole[:1]  # as DistributedSampler: pad to a multiple of the world size
    seeds = set()
    for rank in (0, 1):
        sampler = EpochSeededSampler(data, seed=2, rank=rank, num_replicas=2, epoch=1)
        assert list(sampler) == padded[rank::2] and len(sampler) == 3
        seeds.add(data.transform.seed)
        assert data.transform.seed == stream_seed(2, 1, AUGMENT, rank)
    assert len(seeds) == 2


def test_datamodule_train_loader_starts_at_the_trainers_epoch_and_rank():
    dm = KneeDataModule.from_samples([sample(i) for i in range(4)], [sample(9)], size=32,
                                     seed=7, batch_size=2)
    dm.setup("fit")
    progress = SimpleNamespace(current=SimpleNamespace(processed=3))
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2,
                                 fit_loop=SimpleNamespace(epoch_progress=progress))
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, EpochSeededSampler)
    assert (sampler.seed, sampler.epoch, sampler.rank, sampler.num_replicas) == (7, 3, 1, 2)
    dm.trainer = None
    assert dm.train_dataloader().sampler.epoch == 0


def test_rng_state_round_trips_through_a_weights_only_checkpoint():
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    buffer = io.BytesIO()
    torch.save({"rng": rng_state()}, buffer)
    first = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.testing.assert_close(again[0], first[0], atol=0, rtol=0)
    np.testing.assert_array_equal(again[1], first[1])
    assert again[2] == first[2]
    assert not torch.equal(torch.rand(3), first[0])  # the draws do move the state
