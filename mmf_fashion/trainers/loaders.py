"""Data loaders whose order depends only on (seed, epoch) and can resume mid-epoch.

Cheatsheet::

    sampler = ResumableSampler(len(dataset), seed=1, shuffle=True, rank=0, world_size=1)
    sampler.set_epoch(3); sampler.skip_batches(10, batch_size=32)

MMF rc10 shuffles with the global RNG (and shuffles val under DDP); an exact
resume needs the order of the interrupted epoch, so every rank derives it from
the seed and the epoch and skips what was already consumed.
"""

from __future__ import annotations

import math
from typing import Iterator, List

import torch
from torch.utils.data import DataLoader, Sampler


class ResumableSampler(Sampler):
    def __init__(self, length: int, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1, pad: bool = True):
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        # training pads shards to equal length (every rank steps together);
        # evaluation does not, so no sample is counted twice
        self.pad = pad
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.start = 0

    def skip_batches(self, batches: int, batch_size: int) -> None:
        self.start = batches * batch_size

    def _indices(self) -> List[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 10_007 + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        if self.pad and self.world_size > 1:
            total = math.ceil(self.length / self.world_size) * self.world_size
            order = order + order[: total - self.length]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return max(0, len(self._indices()) - self.start)


def build_loader(
    dataset,
    batch_size: int,
    sampler: ResumableSampler,
    num_workers: int,
    pin_memory: bool,
    drop_last: bool,
    seed: int,
    persistent_workers: bool = False,
) -> DataLoader:
    from mmf.common.batch_collator import BatchCollator

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        collate_fn=BatchCollator(dataset.dataset_name, dataset.dataset_type),
        generator=generator,
        persistent_workers=persistent_workers and num_workers > 0,
    )


def per_rank_batch_size(global_batch: int, world_size: int) -> int:
    if global_batch % world_size != 0:
        raise ValueError(f"training.batch_size={global_batch} is not divisible by the world size {world_size}")
    return global_batch // world_size
