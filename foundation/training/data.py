"""Map-style training data for the core: each rank takes its slice of every global batch.

The batch order is a function of (seed, epoch) only, so one process and N processes see the same global
batches (the 2-process loss curve matches the 1-process one), and a resumed run fast-forwards to the
exact batch (torchdata's `StatefulDataLoader` stores the position).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader


class RankBatchSampler(Sampler[list[int]]):
    """Shuffled global batches of `batch_size` indices; this rank yields `batch[rank::world_size]`."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        rank: int,
        world_size: int,
        seed: int,
        shuffle: bool,
        drop_last: bool,
    ):
        if world_size > 1 and batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must be a multiple of the {world_size} processes")
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.seed, self.shuffle, self.drop_last, self.epoch = seed, shuffle, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        return torch.randperm(
            self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)
        ).tolist()

    def __iter__(self):
        order = self._order()
        for k in range(len(self)):
            batch = order[k * self.batch_size : (k + 1) * self.batch_size]
            yield batch[self.rank :: self.world_size]

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1


def map_loader(
    data: Dataset,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool | None = None,
    pin_memory: bool = False,
) -> StatefulDataLoader:
    """A resumable loader of this rank's share of `batch_size`-example global batches.

    Several processes drop the last partial batch (each rank needs an equal share); one process keeps it.
    """
    if drop_last is None:
        drop_last = world_size > 1
    batch_size = min(batch_size, len(data)) if not drop_last else batch_size
    sampler = RankBatchSampler(
        len(data),
        batch_size,
        rank=rank,
        world_size=world_size,
        seed=seed,
        shuffle=shuffle,
        drop_last=drop_last,
    )
    if len(sampler) == 0:
        raise ValueError(
            f"{len(data)} training examples make no full batch of {batch_size} for {world_size} processes; "
            "lower --batch-size or add trajectories"
        )
    return StatefulDataLoader(data, batch_sampler=sampler, pin_memory=pin_memory)
