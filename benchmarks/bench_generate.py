"""Parallel corpus generation: `pdefm data generate` as 2 processes (RANK/WORLD_SIZE, as torchrun or
accelerate launch set them) against 1 process, same settings, and whether the two corpora hold identical
rows (every shard's sha256 in stats.json equal).

Each process solves with one torch thread (`--threads 1`, the default: solver floats depend on the
thread count, so a corpus is reproducible only at a fixed one; parallelism comes from processes).
Prints `generate_speedup <x>` (goal >= 1.7 with 2 processes on 2 cores) and the machine load, since other
work on the machine slows the parallel run first.

    .venv/bin/python benchmarks/bench_generate.py [--families ns_sines,ns_gauss] [--trajectories 64] [--resolution 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PDEFM = str(Path(sys.executable).with_name("pdefm"))


def run(out: Path, settings: list[str], processes: int) -> tuple[float, float]:
    """Wall seconds for `processes` generate processes (RANK/WORLD_SIZE) writing one corpus into `out`,
    and the CPU seconds they used together."""
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    procs = []
    for rank in range(processes):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(processes)}
        cmd = [PDEFM, "data", "generate", "--out", str(out), *settings]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    for proc in procs:
        stdout, stderr = proc.communicate()
        assert proc.returncode == 0, stderr[-2000:]
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime


def manifest(out: Path) -> dict:
    stats = json.loads((out / "stats.json").read_text())
    return {f: info["shards"] for f, info in stats["families"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="ns_sines,ns_gauss")
    parser.add_argument("--trajectories", type=int, default=64, help="per family")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--snapshots", type=int, default=21)
    parser.add_argument("--shard-size", type=int, default=4, help="rows per shard (jobs = shards)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    settings = [
        "--families",
        args.families,
        "--trajectories",
        str(args.trajectories),
        "--resolution",
        str(args.resolution),
        "--snapshots",
        str(args.snapshots),
        "--shard-size",
        str(args.shard_size),
    ]
    work = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    cpus = os.cpu_count() or 1
    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={cpus} load={os.getloadavg()}")
    print(f"settings: {' '.join(settings)}")
    times: dict[int, list[float]] = {1: [], 2: []}
    cpu: dict[int, list[float]] = {1: [], 2: []}
    manifests = {}
    for _ in range(args.repeats):
        for processes in times:
            out = work / f"{processes}-processes"
            shutil.rmtree(out, ignore_errors=True)
            wall, used = run(out, settings, processes)
            times[processes].append(wall)
            cpu[processes].append(used)
            manifests[processes] = manifest(out)
    for processes, values in times.items():
        print(
            f"{processes} process(es)  {min(values):7.1f} s wall  {min(cpu[processes]):7.1f} s CPU  "
            f"runs={[round(v, 1) for v in values]}"
        )
    print(f"identical_rows {manifests[1] == manifests[2]}   (every shard's sha256)")
    print(f"generate_speedup {min(times[1]) / min(times[2]):.2f}")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
