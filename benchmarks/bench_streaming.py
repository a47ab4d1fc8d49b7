"""Streaming mixture vs a plain h5py map-style Dataset over the same arrays: training examples per second.

Both produce the same all2all examples (Poseidon layout [rho, u, v, p], normalised, stride 2 over 21
snapshots: 66 pairs per trajectory) through a DataLoader with 2 workers. The h5py baseline is
Poseidon's own loader design: an index over (trajectory, t1, t2), two snapshot reads per example from
an HDF5 file chunked per snapshot, opened lazily in each worker. The stream reads each trajectory once
and serves its pairs from a shuffle buffer. A second stream row (1 pair per trajectory) shows the
worst case where every example pays a whole-trajectory decode.

    .venv/bin/python benchmarks/bench_streaming.py [--trajectories 32] [--samples 3000]
"""

from __future__ import annotations

import argparse
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
from data_pipelines.corpus import write_corpus
from data_pipelines.fields import POSEIDON_CHANNELS
from data_pipelines.normalization import Normalizer
from data_pipelines.semigroup import all2all_pairs, make_example
from data_pipelines.streaming import MixtureStream
from data_pipelines.trajectory import Trajectory

T, C, RES = 21, 4, 64


class H5Pairs(torch.utils.data.Dataset):
    """Map-style all2all pairs read from `u[N, T, C, H, W]` in an HDF5 file (opened per worker)."""

    def __init__(self, path: Path, fields: list[str], normalizer: Normalizer, stride: int):
        self.path, self.fields, self.normalizer, self.file = path, fields, normalizer, None
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
        mapped, mask = self.cmap(both, self.fields, self.normalizer)
        return make_example(mapped, mask, 0, 1, lead, None)


def measure(loader, samples: int) -> float:
    start, seen = time.perf_counter(), 0
    for batch in loader:
        seen += batch["pixel_values"].shape[0]
        if seen >= samples:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=32, help="per family (2 families)")
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    trajs = [
        Trajectory(
            u=rng.normal(size=(T, C, RES, RES)), t=np.linspace(0, 1, T), fields=list(POSEIDON_CHANNELS), pde=p
        )
        for p in ("fam_a", "fam_b")
        for _ in range(args.trajectories)
    ]
    write_corpus(work / "corpus", trajs, shard_size=8, progress=False)
    with h5py.File(work / "data.h5", "w") as f:
        f.create_dataset("u", data=np.stack([t.u for t in trajs]), chunks=(1, 1, C, RES, RES))
    del trajs
    stream_all = MixtureStream(
        work / "corpus", POSEIDON_CHANNELS, stride=2, shuffle_buffer=16, pair_buffer=512
    )
    stream_one = MixtureStream(work / "corpus", POSEIDON_CHANNELS, stride=2, pairs_per_trajectory=1)
    h5 = H5Pairs(work / "data.h5", list(POSEIDON_CHANNELS), stream_all.normalizer, stride=2)
    kw = dict(batch_size=32, num_workers=args.workers, persistent_workers=False)
    loaders = {
        "h5py map-style (Poseidon-style pairs)": lambda: torch.utils.data.DataLoader(h5, shuffle=True, **kw),
        "stream, all2all pairs": lambda: torch.utils.data.DataLoader(stream_all, **kw),
        "stream, 1 pair / trajectory": lambda: torch.utils.data.DataLoader(stream_one, **kw),
    }
    caps = {"stream, 1 pair / trajectory": 2 * args.trajectories}
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(args.repeats):
        for name, make in loaders.items():
            rates[name].append(measure(make(), min(args.samples, caps.get(name, args.samples))))
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} torch={torch.__version__}"
    )
    print(
        f"data: 2 families x {args.trajectories} trajectories of [{T},{C},{RES},{RES}] float32, {args.workers} workers"
    )
    base = statistics.median(rates["h5py map-style (Poseidon-style pairs)"])
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"{name:<40} {med:9.1f} samples/s  ({med / base:.2f}x h5py)  runs={[round(v) for v in values]}")


if __name__ == "__main__":
    main()
