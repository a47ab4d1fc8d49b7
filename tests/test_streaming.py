"""Streaming mixture: coverage across DataLoader workers and ranks, equal step counts, pairs, weights,
normalisation, bad input, and a real 2-rank accelerate run."""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipelines.corpus import CorpusError, load_trajectories, write_corpus
from data_pipelines.streaming import MixtureStream
from data_pipelines.trajectory import Trajectory

REPO = Path(__file__).resolve().parents[1]


def _trajs(pde: str, n: int, t: int, seed: int) -> list[Trajectory]:
    rng = np.random.default_rng(seed)
    return [
        Trajectory(
            u=rng.normal(2.0, 3.0, size=(t, 2, 8, 8)), t=np.linspace(0, 1, t), fields=["u", "v"], pde=pde
        )
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def mixture(tmp_path_factory) -> Path:
    """8 trajectories: 5 of 'alpha' (3 shards), 3 of 'beta' (2 shards), 5 snapshots each."""
    out = tmp_path_factory.mktemp("mix") / "c"
    write_corpus(out, _trajs("alpha", 5, 5, 0) + _trajs("beta", 3, 5, 1), shard_size=2, progress=False)
    return out


def _id_to_traj(root: Path) -> dict[str, Trajectory]:
    out = {}
    for fam in ("alpha", "beta"):
        for k, tr in enumerate(load_trajectories(root, families=[fam])):
            out[f"{fam}/{k // 2:05d}/{k % 2:04d}"] = tr
    return out


def test_workers_cover_every_pair_once_with_normalised_values(mixture):
    stream = MixtureStream(mixture, ["rho", "u", "v", "p"], stride=2, shuffle_buffer=4, return_ids=True)
    loader = torch.utils.data.DataLoader(stream, batch_size=5, num_workers=2)
    seen = collections.Counter()
    by_id = _id_to_traj(mixture)
    stats = json.loads((mixture / "stats.json").read_text())["fields"]

    def snapshot(plane, u, c, name):  # which source snapshot, normalised, equals this plane
        z = [(u[s, c] - stats[name]["mean"]) / stats[name]["std"] for s in range(u.shape[0])]
        return [s for s in range(u.shape[0]) if np.allclose(plane.numpy(), z[s], atol=1e-5)]

    for batch in loader:
        for k, row_id in enumerate(batch["id"]):
            u = by_id[row_id].u
            (i,), (j,) = (
                snapshot(batch["pixel_values"][k, 2], u, 1, "v"),
                snapshot(batch["labels"][k, 1], u, 0, "u"),
            )
            assert float(batch["time"][k]) == pytest.approx((j - i) / 4)
            assert batch["pixel_mask"][k].tolist() == [False, False, False, True]
            assert float(batch["pixel_values"][k, 0].mean()) == 1.0  # rho filled with 1 (no rho statistics)
            assert float(batch["labels"][k, 3].abs().max()) == 0.0
            seen[(row_id, i, j)] += 1
    expected = {(r, i, j) for r in by_id for i in (0, 2, 4) for j in (0, 2, 4) if i <= j}
    assert set(seen) == expected and set(seen.values()) == {1}


def test_uneven_split_gives_equal_counts_and_full_coverage(mixture):
    per_rank = []
    for rank in range(3):
        stream = MixtureStream(
            mixture, ["u", "v"], rank=rank, world_size=3, pairs_per_trajectory=2, seed=5, return_ids=True
        )
        per_rank.append([e["id"] for e in stream])
    assert [len(r) for r in per_rank] == [6, 6, 6]  # ceil(8 / 3) = 3 trajectories x 2 pairs per rank
    firsts = [sorted(set(r)) for r in per_rank]
    assert set().union(*firsts) == set(_id_to_traj(mixture))
    assert sum(len(f) for f in firsts) == 8  # disjoint: 3 + 3 + 2 distinct trajectories
    counts = sorted(max(collections.Counter(r).values()) for r in per_rank)
    assert counts == [2, 2, 4]  # the short rank repeats its first trajectory to keep step counts equal
    again = MixtureStream(
        mixture, ["u", "v"], rank=1, world_size=3, pairs_per_trajectory=2, seed=5, return_ids=True
    )
    assert [e["id"] for e in again] == per_rank[1]
    full = MixtureStream(mixture, ["u", "v"], pairs_per_trajectory=1, seed=5, return_ids=True)
    first = [e["id"] for e in full]
    full.set_epoch(1)
    second = [e["id"] for e in full]
    assert sorted(first) == sorted(second) and first != second


def test_weights_order_the_mixture_and_bad_input(mixture, tmp_path):
    stream = MixtureStream(
        mixture,
        ["u", "v"],
        weights={"alpha": 1.0, "beta": 1e-3},
        shuffle_buffer=1,
        pair_buffer=1,
        pairs_per_trajectory=1,
        return_ids=True,
    )
    order = [e["id"].split("/")[0] for e in stream]
    assert order == ["alpha"] * 5 + ["beta"] * 3
    only = MixtureStream(mixture, ["u", "v"], families=["beta"], return_ids=True, normalizer=None)
    assert {e["id"].split("/")[0] for e in only} == {"beta"}
    with pytest.raises(CorpusError, match=r"families \['gamma'\] not found"):
        MixtureStream(mixture, ["u", "v"], families=["gamma"])
    with pytest.raises(CorpusError, match="positive weight"):
        MixtureStream(mixture, ["u", "v"], weights={"alpha": 1.0})
    with pytest.raises(CorpusError, match="stats.json missing"):
        MixtureStream(tmp_path, ["u", "v"])
    other = tmp_path / "long"
    write_corpus(other, _trajs("gamma", 2, 9, 2), progress=False)
    with pytest.raises(CorpusError, match="different numbers of pairs per trajectory"):
        MixtureStream([mixture, other], ["u", "v"], rank=0, world_size=2)
    pooled = MixtureStream([mixture, other], ["u", "v"], rank=0, world_size=2, pairs_per_trajectory=3)
    assert len(list(pooled)) == 5 * 3  # ceil(10 / 2) trajectories on this rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_accelerate_ranks_see_disjoint_complete_data(mixture, tmp_path):
    report = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(REPO / "tests/scripts/ddp_stream_coverage.py"),
        str(mixture),
        str(report),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["world"] == 2
    ranks = [collections.Counter(ids) for ids in data["per_rank"]]
    assert sum(ranks[0].values()) == sum(ranks[1].values()) == 4 * 3  # 4 trajectories x 3 pairs per rank
    assert not set(ranks[0]) & set(ranks[1])
    assert set(ranks[0]) | set(ranks[1]) == set(_id_to_traj(mixture))
    assert all(n == 3 for r in ranks for n in r.values())
