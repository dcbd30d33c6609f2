"""Samplers: the epoch permutation, sharded training batches, sharded validation.

Sharding without padding: `GlobalBatchSampler` cuts each epoch's permutation into global
batches and hands rank r the r-th slice of each, so no two ranks see the same sample and
every rank runs the same number of steps; the incomplete last global batch is dropped.
`ShardSampler` (validation) gives rank r the indices r, r+W, r+2W, ...: the shards are
disjoint and cover the set exactly, so summed counts over ranks are exact.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

from utils.errors import UserError


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, 0x5A3D]).permutation(n)


class GlobalBatchSampler(Sampler):
    """Per rank, per step, the rank's slice of the step's global batch of (index, epoch).

    Global batch g of an epoch is perm[g*B:(g+1)*B]; rank r gets its r-th 1/W slice.
    `set_epoch(epoch, start_step)` skips already-trained steps without loading them.
    """

    def __init__(self, n: int, global_batch: int, rank: int, world: int, seed: int,
                 shuffle: bool = True):
        if global_batch % world:
            raise UserError(f"--batch_size {global_batch} is not divisible by the "
                            f"{world} processes")
        self.n, self.global_batch, self.rank, self.world = n, global_batch, rank, world
        self.per_rank = global_batch // world
        self.seed, self.shuffle = seed, shuffle
        self.steps_per_epoch = n // global_batch
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = int(epoch), int(start_step)

    def __len__(self) -> int:
        return max(0, self.steps_per_epoch - self.start_step)

    def _perm(self, epoch: int) -> np.ndarray:
        return epoch_permutation(self.n, self.seed, epoch) if self.shuffle else np.arange(self.n)

    def batch_indices(self, epoch: int, step: int) -> list[int]:
        """Dataset indices this rank trains on at `step` of `epoch` (for checks/debugging)."""
        lo = step * self.global_batch + self.rank * self.per_rank
        return [int(i) for i in self._perm(epoch)[lo:lo + self.per_rank]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm = self._perm(self.epoch)
        for step in range(self.start_step, self.steps_per_epoch):
            lo = step * self.global_batch + self.rank * self.per_rank
            yield [(int(i), self.epoch) for i in perm[lo:lo + self.per_rank]]


class ShardSampler(Sampler):
    """Indices rank, rank+W, rank+2W, ...: disjoint shards, no padding, exact cover."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)
