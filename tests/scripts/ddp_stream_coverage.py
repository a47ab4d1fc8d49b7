"""Run under `accelerate launch` with 2 CPU ranks x 2 DataLoader workers: rank 0 resolves the corpus and
broadcasts it; each rank streams one epoch ("full"), then streams a few batches, saves the loader state,
and continues from that state in a fresh loader ("first", "resume"). Every unit logs the shard files it
opens and the byte ranges it reads through the stream's file object, one log per phase, rank and worker.

    accelerate launch ... ddp_stream_coverage.py CORPUS REPORT.json LOG_DIR
"""

from __future__ import annotations

import functools
import io
import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast_object_list, gather_object

from data_pipelines import streaming
from data_pipelines.streaming import MixtureStream, make_loader, resolve_corpus

WORKERS, BATCH, FIRST_BATCHES = 2, 2, 5


class LoggedFile(io.FileIO):
    """A shard file that logs its opening and every byte range read from it."""

    log = None

    def __init__(self, path):
        super().__init__(path, "rb")
        self.path = str(Path(path).resolve())
        self.log.write(f"open {self.path}\n")

    def read(self, size=-1):
        offset = self.tell()
        data = super().read(size)
        self.log.write(f"read {self.path} {offset} {len(data)}\n")
        self.log.flush()
        return data

    def readinto(self, buffer):
        offset = self.tell()
        n = super().readinto(buffer)
        self.log.write(f"read {self.path} {offset} {n}\n")
        self.log.flush()
        return n


def log_reads(log_dir: str, phase: str, rank: int, worker: int) -> None:
    LoggedFile.log = open(Path(log_dir) / f"{phase}-{rank}-{worker}.log", "a")  # noqa: SIM115
    streaming._open_shard = LoggedFile


def loader(stream: MixtureStream, log_dir: str, phase: str):
    init = functools.partial(log_reads, log_dir, phase, stream.rank)
    return make_loader(stream, BATCH, WORKERS, worker_init_fn=init)


def pairs(batch: dict) -> list[list[str]]:
    return [[i, f] for i, f in zip(batch["id"], batch["family"], strict=True)]


def main(corpus: str, report: str, log_dir: str) -> None:
    acc = Accelerator()
    assert acc.num_processes == 2, acc.num_processes
    assert acc.distributed_type == DistributedType.MULTI_CPU, acc.distributed_type
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    sources = [resolve_corpus([corpus]) if acc.is_main_process else None]
    broadcast_object_list(sources)
    stream = MixtureStream(
        sources[0],
        ["u", "v"],
        rank=acc.process_index,
        world_size=acc.num_processes,
        stride=4,
        shuffle_buffer=2,
        seed=3,
        return_ids=True,
    )
    full, steps = [], 0
    for batch in loader(stream, log_dir, "full"):
        full += pairs(batch)
        steps += 1
        torch.distributed.all_reduce(torch.ones(1))  # a DDP-like collective per step: hangs on uneven steps
    first = []
    head = loader(stream, log_dir, "first")
    for k, batch in enumerate(head):
        first += pairs(batch)
        if k + 1 == FIRST_BATCHES:
            break
    buffer = io.BytesIO()
    torch.save(head.state_dict(), buffer)
    del head
    buffer.seek(0)
    resumed = loader(stream, log_dir, "resume")
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    rest = [p for batch in resumed for p in pairs(batch)]
    per_rank = gather_object([{"full": full, "first": first, "rest": rest}])
    if acc.is_main_process:
        with open(report, "w") as f:
            json.dump(
                {"per_rank": per_rank, "world": acc.num_processes, "workers": WORKERS, "steps": steps}, f
            )
    acc.end_training()  # tear the process group down on every rank before exit, not in destructors


if __name__ == "__main__":
    main(*sys.argv[1:4])
