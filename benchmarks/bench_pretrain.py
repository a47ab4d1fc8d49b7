"""Pretraining throughput: the whole loop (stream -> model -> optimizer) against the same model and optimizer
fed from batches already in memory, side by side in one process. Target: ratio >= 0.9.

Both arms run `Trainer.train_step` (forward, backward, clipping, AdamW, schedule, loss all-reduce); the
streamed arm pulls its batches from `Trainer.batches()` (parquet stream, decode, channel mapping,
normalisation, all2all pairs, shuffle buffers, DataLoader workers), the in-memory arm from a list of the
same batches collected beforehand. Arms alternate; medians of the repeats are reported.

    python benchmarks/bench_pretrain.py                       # tiny, 64x64, batch 8, 1 DataLoader worker, CPU
    python benchmarks/bench_pretrain.py --corpus org/corpus --preset T --batch-size 32 --workers 4
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _corpus(args, tmp: Path) -> str:
    if args.corpus:
        return args.corpus
    from data_pipelines.corpus import generate_corpus
    from data_pipelines.solvers.registry import resolve_families

    families = resolve_families(args.families)
    generate_corpus(
        tmp / "corpus",
        families,
        args.trajectories,
        args.resolution,
        args.snapshots,
        shard_size=8,
        progress=False,
    )
    return str(tmp / "corpus")


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def _timed(trainer, data, steps: int) -> float:
    """Samples per second of `steps` optimizer steps drawing from `data`."""
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(data)
    elapsed = time.perf_counter() - start
    return steps * trainer.config.batch_size * trainer.config.grad_accum / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", help="corpus folder or Hub dataset id (default: generate one)")
    p.add_argument("--families", default="diffusion,advection,allen_cahn")
    p.add_argument("--trajectories", type=int, default=24, help="per family, when generating")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--snapshots", type=int, default=11)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers of the streamed arm")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per timed repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--mixed-precision", default="auto")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from foundation.pretrain.config import PretrainConfig
    from foundation.pretrain.loop import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        corpus = _corpus(args, Path(tmp))
        config = PretrainConfig(
            corpus=[corpus],
            out=str(Path(tmp) / "out"),
            preset=args.preset,
            model_overrides={"image_size": args.resolution},
            max_steps=10**6,
            batch_size=args.batch_size,
            warmup_steps=10,
            num_workers=args.workers,
            mixed_precision=args.mixed_precision,
            log_with="none",
            progress=False,
        )
        trainer = Trainer(config)
        stream = trainer.batches()
        memory = [next(stream) for _ in range(args.steps)]  # also warms up the stream and the model
        for batch in memory[:3]:
            trainer.train_step(iter([batch]))
        streamed, in_memory = [], []
        for _ in range(args.repeats):
            streamed.append(_timed(trainer, stream, args.steps))
            in_memory.append(_timed(trainer, itertools.cycle(memory), args.steps))
        s, m = statistics.median(streamed), statistics.median(in_memory)
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else _cpu_name()
        print(
            f"machine: {platform.node()} {platform.machine()} {device}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, {trainer.accelerator.num_processes} process(es), "
            f"mixed precision {trainer.accelerator.mixed_precision}"
        )
        print(
            f"setup: preset {args.preset}, {args.resolution}x{args.resolution}, batch {args.batch_size}, "
            f"{len(trainer.channels)} channels, {args.workers} DataLoader worker(s), {args.steps} steps x {args.repeats}"
        )
        print(f"streamed loop : {s:8.1f} samples/s  (repeats {', '.join(f'{x:.1f}' for x in streamed)})")
        print(f"in-memory     : {m:8.1f} samples/s  (repeats {', '.join(f'{x:.1f}' for x in in_memory)})")
        print(f"ratio streamed / in-memory: {s / m:.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
