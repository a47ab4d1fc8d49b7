"""Streaming benchmarks: read amplification per rank x worker layout, throughput per unit against an h5py
map-style reader, and how well the mixture holds its weights.

- `read_amplification <R>x<W> <x>`: R rank processes with W DataLoader workers each stream one epoch;
  every worker reads /proc/self/io `rchar` (bytes its process read) before and after its epoch, after a
  warm-up epoch over a tiny separate corpus (so imports and first-use reads are not counted). The sum
  over units divided by the corpus bytes is the amplification (goal <= 1.10).
- `throughput_per_unit`: examples per second of one DataLoader worker for the stream (all2all pairs,
  stride 2: 66 per trajectory, through a plain DataLoader and through `make_loader`, which snapshots the
  stream state after every batch; and 1 pair per trajectory, where every example pays a
  whole-trajectory read and decode) and for Poseidon's loader design (an index over (trajectory, t1, t2), two snapshot
  reads per example from an HDF5 file chunked per snapshot, opened lazily in the worker).
- `mixture_max_deviation <pp>`: weights 0.5/0.3/0.2 over three families; the largest gap, in percentage
  points, between a family's share and its weight in any window of 500 of the first 5,000 examples.

    .venv/bin/python benchmarks/bench_streaming.py [--units 1x1,2x2,4x2] [--trajectories 16]
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from data_pipelines.channels import ChannelMap
from data_pipelines.corpus import reshard_corpus, write_corpus
from data_pipelines.fields import POSEIDON_CHANNELS
from data_pipelines.normalization import Normalizer
from data_pipelines.semigroup import all2all_pairs, make_example
from data_pipelines.streaming import MixtureStream, make_loader
from data_pipelines.trajectory import Trajectory

T, C, RES = 21, 4, 64
FAMILIES = ("fam_a", "fam_b", "fam_c")
SHARDS = 8  # per family: a multiple of every layout's unit count


def write_trajectories(root: Path, per_family: int, res: int, seed: int) -> list[Trajectory]:
    rng = np.random.default_rng(seed)
    trajs = [
        Trajectory(
            u=rng.normal(size=(T, C, res, res)), t=np.linspace(0, 1, T), fields=list(POSEIDON_CHANNELS), pde=p
        )
        for p in FAMILIES
        for _ in range(per_family)
    ]
    write_corpus(root, trajs, shard_size=1, progress=False)
    reshard_corpus(root, shards=SHARDS, progress=False)
    return trajs


def rchar() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


class RcharProbe(torch.utils.data.IterableDataset):
    """Streams `warm` (not counted), then `stream`, recording this process's rchar around the latter."""

    def __init__(self, stream: MixtureStream, warm: MixtureStream, out: Path):
        self.stream, self.warm, self.out = stream, warm, out

    def __iter__(self):
        for _ in self.warm:
            pass
        info = torch.utils.data.get_worker_info()
        before, examples = rchar(), 0
        for example in self.stream:
            examples += 1
            yield example
        after = rchar()
        name = f"{self.stream.rank}-{info.id if info else 0}.json"
        (self.out / name).write_text(json.dumps({"bytes": after - before, "examples": examples}))


def rank_epoch(corpus: str, warm: str, rank: int, world: int, workers: int, out: str) -> None:
    torch.set_num_threads(1)
    kw = dict(rank=rank, world_size=world, pairs_per_trajectory=1)
    probe = RcharProbe(
        MixtureStream(corpus, POSEIDON_CHANNELS, **kw),
        MixtureStream(warm, POSEIDON_CHANNELS, **kw),
        Path(out),
    )
    for _ in torch.utils.data.DataLoader(probe, batch_size=8, num_workers=workers):
        pass


def read_amplification(corpus: Path, warm: Path, world: int, workers: int, work: Path) -> tuple[int, int]:
    """Bytes all units of the layout read during their epoch, and the examples they yielded."""
    out = Path(tempfile.mkdtemp(dir=work, prefix=f"io-{world}x{workers}-"))
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=rank_epoch, args=(str(corpus), str(warm), r, world, workers, str(out)))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0, f"rank process exited with {p.exitcode}"
    reports = [json.loads(f.read_text()) for f in out.glob("*.json")]
    assert len(reports) == world * workers, f"{len(reports)} unit reports, expected {world * workers}"
    return sum(r["bytes"] for r in reports), sum(r["examples"] for r in reports)


class H5Pairs(torch.utils.data.Dataset):
    """Map-style all2all pairs read from `u[N, T, C, H, W]` in an HDF5 file (opened per worker)."""

    def __init__(self, path: Path, normalizer: Normalizer, stride: int):
        self.path, self.normalizer, self.file = path, normalizer, None
        with h5py.File(path, "r") as f:
            n = f["u"].shape[0]
        self.index = [(k, i, j, lead) for k in range(n) for i, j, lead in all2all_pairs(T, stride)]
        self.cmap = ChannelMap(POSEIDON_CHANNELS)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict:
        if self.file is None:
            self.file = h5py.File(self.path, "r")
        k, i, j, lead = self.index[item]
        u = self.file["u"]
        both = np.stack([u[k, i], u[k, j]])
        mapped, mask = self.cmap(both, list(POSEIDON_CHANNELS), self.normalizer)
        return make_example(mapped, mask, 0, 1, lead, None)


def measure(loader, samples: int) -> float:
    start, seen = time.perf_counter(), 0
    for batch in loader:
        seen += batch["pixel_values"].shape[0]
        if seen >= samples:
            break
    return seen / (time.perf_counter() - start)


def throughput(corpus: Path, trajs: list[Trajectory], work: Path, samples: int, repeats: int) -> dict:
    with h5py.File(work / "data.h5", "w") as f:
        f.create_dataset("u", data=np.stack([t.u for t in trajs]), chunks=(1, 1, C, RES, RES))
    stream_all = MixtureStream(corpus, POSEIDON_CHANNELS, stride=2, infinite=True)
    stream_one = MixtureStream(corpus, POSEIDON_CHANNELS, stride=2, pairs_per_trajectory=1, infinite=True)
    h5 = H5Pairs(work / "data.h5", stream_all.normalizer, stride=2)
    kw = dict(batch_size=32, num_workers=1)
    loaders = {
        "h5py map-style (Poseidon-style pairs)": lambda: torch.utils.data.DataLoader(h5, shuffle=True, **kw),
        "stream, all2all pairs": lambda: torch.utils.data.DataLoader(stream_all, **kw),
        "stream, all2all pairs, make_loader": lambda: make_loader(stream_all, 32, 1),
        "stream, 1 pair / trajectory": lambda: torch.utils.data.DataLoader(stream_one, **kw),
    }
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(repeats):
        for name, make in loaders.items():
            rates[name].append(measure(make(), samples))
    return {name: statistics.median(v) for name, v in rates.items()} | {"_runs": rates}


def mixture_deviation(corpus: Path, examples: int, window: int) -> float:
    weights = {"fam_a": 0.5, "fam_b": 0.3, "fam_c": 0.2}
    stream = MixtureStream(
        corpus, POSEIDON_CHANNELS, weights=weights, stride=2, infinite=True, normalizer=None
    )
    families = [e["family"] for _, e in zip(range(examples), stream, strict=False)]
    worst = 0.0
    for start in range(0, examples - window + 1, window):
        counts = collections.Counter(families[start : start + window])
        worst = max(worst, *(abs(counts[f] / window - w) for f, w in weights.items()))
    return 100 * worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", default="1x1,2x2,4x2", help="layouts RANKSxWORKERS, comma-separated")
    parser.add_argument("--trajectories", type=int, default=16, help="per family (3 families)")
    parser.add_argument("--samples", type=int, default=3000, help="examples per throughput run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    trajs = write_trajectories(work / "corpus", args.trajectories, RES, 0)
    write_trajectories(work / "warm", 1 * SHARDS, 8, 1)
    corpus_bytes = sum(p.stat().st_size for p in (work / "corpus").glob("data/*/*.parquet"))
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} torch={torch.__version__}"
    )
    print(
        f"corpus: {len(FAMILIES)} families x {args.trajectories} trajectories of [{T},{C},{RES},{RES}] float32, "
        f"{SHARDS} shards per family, {corpus_bytes / 2**20:.1f} MiB"
    )
    for layout in args.units.split(","):
        world, workers = (int(x) for x in layout.lower().split("x"))
        read, examples = read_amplification(work / "corpus", work / "warm", world, workers, work)
        print(
            f"read_amplification {layout} {read / corpus_bytes:.3f}   ({read / 2**20:.1f} MiB read by "
            f"{world * workers} unit(s) in one epoch of {examples} examples)"
        )
    rates = throughput(work / "corpus", trajs, work, args.samples, args.repeats)
    base = rates["h5py map-style (Poseidon-style pairs)"]
    for name, runs in rates.pop("_runs").items():
        med = rates[name]
        print(
            f"throughput_per_unit {name:<40} {med:8.1f} samples/s ({med / base:.2f}x h5py) runs={[round(v) for v in runs]}"
        )
    print(f"mixture_max_deviation {mixture_deviation(work / 'corpus', 5000, 500):.2f}")


if __name__ == "__main__":
    main()
