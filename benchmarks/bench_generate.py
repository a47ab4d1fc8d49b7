"""Parallel corpus generation: `pdefm data generate` as 2 processes (RANK/WORLD_SIZE, as torchrun or
accelerate launch set them) against 1 process, same settings, and whether the two corpora hold identical
rows (every shard's sha256 in stats.json equal).

Each process solves with one torch thread (`--threads 1`, the default: solver floats depend on the
thread count, so a corpus is reproducible only at a fixed one; parallelism comes from processes).
Prints `generate_speedup <x>` (wall clock; goal >= 1.7 with 2 processes on 2 cores) and the machine load,
since other work on a shared machine slows the parallel run first, and `cpu_bound_speedup`: the CPU
seconds of the single process over those of the slower of the two parts, which is what the wall-clock
ratio is on an otherwise idle 2-core machine (each part on its own core).

    .venv/bin/python benchmarks/bench_generate.py [--families ns_sines,ns_gauss] [--trajectories 64] [--resolution 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PDEFM = str(Path(sys.executable).with_name("pdefm"))


def run(out: Path, settings: list[str], processes: int) -> tuple[float, list[float]]:
    """Wall seconds for `processes` generate processes (RANK/WORLD_SIZE) writing one corpus into `out`,
    and the CPU seconds each of them used."""
    started = time.perf_counter()
    procs = []
    for rank in range(processes):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(processes)}
        log = open(out.parent / f"{out.name}-{rank}.log", "w")  # noqa: SIM115
        cmd = [PDEFM, "data", "generate", "--out", str(out), *settings]
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    cpu = []
    for proc, log in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        log.close()
        assert status == 0, Path(log.name).read_text()[-2000:]
        cpu.append(usage.ru_utime + usage.ru_stime)
    return time.perf_counter() - started, cpu


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
    cpu: dict[int, list[list[float]]] = {1: [], 2: []}
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
        per_process = [[round(c, 1) for c in run_cpu] for run_cpu in cpu[processes]]
        print(
            f"{processes} process(es)  {min(values):7.1f} s wall  runs={[round(v, 1) for v in values]}  CPU s {per_process}"
        )
    print(f"identical_rows {manifests[1] == manifests[2]}   (every shard's sha256)")
    print(f"generate_speedup {min(times[1]) / min(times[2]):.2f}   (wall clock, on this machine as loaded)")
    one = min(sum(c) for c in cpu[1])
    slowest = min(max(c) for c in cpu[2])
    print(
        f"cpu_bound_speedup {one / slowest:.2f}   (1-process CPU s / slowest part's CPU s: the idle-machine wall ratio)"
    )
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
