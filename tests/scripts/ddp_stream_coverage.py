"""Run under `accelerate launch` with 2 CPU ranks: each rank streams the mixture through a DataLoader with
2 workers; rank 0 checks world size 2, equal step counts and disjoint, complete coverage of the corpus."""

from __future__ import annotations

import json
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object

from data_pipelines.streaming import MixtureStream


def main(corpus: str, report: str) -> None:
    acc = Accelerator()
    assert acc.num_processes == 2, acc.num_processes
    assert acc.distributed_type == DistributedType.MULTI_CPU, acc.distributed_type
    stream = MixtureStream(
        corpus,
        ["u", "v"],
        rank=acc.process_index,
        world_size=acc.num_processes,
        stride=4,
        shuffle_buffer=4,
        seed=3,
        return_ids=True,
    )
    loader = torch.utils.data.DataLoader(stream, batch_size=4, num_workers=2)
    ids, steps = [], 0
    for batch in loader:
        ids += list(batch["id"])
        steps += 1
        torch.distributed.all_reduce(torch.ones(1))  # a DDP-like collective per step: hangs on uneven steps
    per_rank = gather_object([ids])
    if acc.is_main_process:
        with open(report, "w") as f:
            json.dump({"per_rank": per_rank, "world": acc.num_processes}, f)
    acc.end_training()  # tear the process group down on every rank before exit, not in destructors


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
